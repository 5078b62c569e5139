"""Packed rows without cross-talk: an example packed with others trains exactly as it would alone."""

import numpy as np
import pytest
import torch

from tunesmith.batch import IGNORE
from tunesmith.data.blocks import documents_apart
from tunesmith.data.examples import ExampleWriter, Examples, PackedExamples, pack_rows
from tunesmith.tasks.loss import forward
from tunesmith.models.weights import keeps_packed_apart
from tunesmith.tasks.classify import PackedClassifier


def written_examples(directory, lengths, vocab, pad_id=0, classes=None, use_classes=False):
    rng = np.random.default_rng(0)
    writer = ExampleWriter(directory, "train", np.uint16)
    for number, length in enumerate(lengths):
        ids = rng.integers(5, vocab, length)
        mask = np.arange(length) >= length // 2  # the second half carries loss, as an assistant turn would
        writer.write(ids, mask, classes[number] if classes else -1)
    writer.close()
    return Examples(directory, "train", np.uint16, pad_id, use_classes=use_classes)


def test_rows_hold_every_example_once_within_capacity():
    lengths = [int(n) for n in np.random.default_rng(1).integers(3, 60, 500)]
    rows = pack_rows(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert sum(lengths) / (64 * len(rows)) > 0.9  # few rows are left part empty


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_an_examples_logits_inside_a_packed_row_equal_its_logits_alone(kind, tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models[kind], dtype=torch.float32).eval()
    assert keeps_packed_apart(model)
    examples = written_examples(tmp_path, [9, 14, 5, 20, 11, 7], model.config.vocab_size)
    packed = PackedExamples(examples, 32)
    assert len(packed) < len(examples)
    batch = packed.batch(list(range(len(packed))))
    with torch.no_grad():
        logits = forward(model, batch)
        for r, row in enumerate(packed.rows):
            at = 0
            for example in row:
                alone = examples.batch([example])
                expected = forward(model, alone)[0]
                got = logits[r, at : at + examples.length(example)]
                assert torch.allclose(got, expected, atol=1e-4), (kind, example, (got - expected).abs().max())
                targets = batch.labels[r, at : at + examples.length(example)]
                assert targets[0] == IGNORE  # no target across the boundary
                assert torch.equal(targets[1:], alone.labels[0, 1:])
                at += examples.length(example)


def test_a_packed_classifier_reads_each_example_at_its_own_end(tiny_models, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["llama"], num_labels=3, dtype=torch.float32).eval()
    model.config.pad_token_id = 0
    lengths = [6, 13, 9, 4, 17]
    examples = written_examples(tmp_path, lengths, model.config.vocab_size, classes=[0, 1, 2, 1, 0], use_classes=True)
    packed = PackedExamples(examples, 24)
    batch = packed.batch(list(range(len(packed))))
    with torch.no_grad():
        logits = forward(PackedClassifier(model), batch)
        members = [e for row in packed.rows for e in row]
        for position, example in enumerate(members):
            alone = forward(model, examples.batch([example]))[0]
            assert torch.allclose(logits[position], alone, atol=1e-4)
    assert batch.classes.tolist() == [[0, 1, 2, 1, 0][e] for e in members]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_documents_apart_in_a_block_match_each_document_alone(kind, tiny_models):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models[kind], dtype=torch.float32).eval()
    eos = 1
    first, second = torch.randint(5, model.config.vocab_size, (10,)), torch.randint(5, model.config.vocab_size, (12,))
    block = torch.cat([first, torch.tensor([eos]), second])[None]
    batch = documents_apart(block, eos)
    assert batch.position_ids[0].tolist() == list(range(11)) + list(range(12))
    assert batch.labels[0, 11] == IGNORE and (batch.labels[0, :11] != IGNORE).all()
    with torch.no_grad():
        logits = forward(model, batch)[0]
        alone = model(input_ids=second[None]).logits[0]
    assert torch.allclose(logits[11:], alone, atol=1e-4)


def test_auto_pads_for_a_model_that_cannot_keep_packed_examples_apart_and_an_explicit_choice_is_refused():
    from tunesmith.config import load_config
    from tunesmith.errors import ConfigError
    from tunesmith.tasks import TASKS

    chat_kind, lm_kind = TASKS["chat"], TASKS["lm"]

    messages = []
    chat = chat_kind.settle(load_config(None, [("task", "chat")]), False, messages.append)
    assert chat_kind.packing_of(chat) == "padded" and "padding each example instead" in messages[0]
    with pytest.raises(ConfigError, match="use data.packing: padded"):
        chat_kind.settle(load_config(None, [("task", "chat"), ("data.packing", "documents")]), False)
    with pytest.raises(ConfigError, match="use data.packing: joined"):
        lm_kind.settle(load_config(None, [("data.packing", "documents")]), False)
    with pytest.raises(ConfigError, match="does not apply to task lm"):
        lm_kind.check(load_config(None, [("data.packing", "padded")]))

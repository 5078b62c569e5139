"""Tiny models built in-process (a 2-layer GPT-2 and a 2-layer Llama with tokenizers trained on the spot), saved as HF directories."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

WORDS = (
    "the lamp glows when you press the button twice and the app shows a green light "
    "reset the hub by holding power for ten seconds then pair it again with the phone "
    "battery lasts about six months and the charger uses a standard cable "
    "if the light blinks red the sensor needs cleaning with a dry cloth"
).split()


def make_corpus(n_docs: int, seed: int = 0, words_per_doc: int = 40) -> list[str]:
    """Documents drawn from a small vocabulary with repeated phrases: easy for a tiny model to learn."""
    rng = random.Random(seed)
    sentences = [" ".join(WORDS[i : i + 8]) for i in range(0, len(WORDS) - 8, 4)]
    docs = []
    for i in range(n_docs):
        picked = [rng.choice(sentences) for _ in range(max(1, words_per_doc // 8))]
        docs.append(f"Article {i}. " + ". ".join(picked) + ".")
    return docs


def cut_run(source: Path, target: Path, last_step: int) -> Path:
    """A copy of a finished run as if it had been killed after the checkpoint at `last_step`."""
    import shutil

    shutil.copytree(source, target)
    for checkpoint in (target / "checkpoints").iterdir():
        if int(checkpoint.name.split("-")[1]) > last_step:
            shutil.rmtree(checkpoint)
    for name in ("final", "final-adapter", "summary.json"):
        path = target / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return target


def finished_run(model: Path, root: Path, **train_settings) -> tuple[Path, Path]:
    """A finished tiny run, with its own corpus and cache under `root`, for a module's tests to share."""
    from tunesmith import train
    from test_train import run_config

    data = write_jsonl(root / "corpus.jsonl", make_corpus(120))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNESMITH_HOME", str(root / "home"))
        train(run_config(model, data, root / "run", **train_settings))
    return root / "run", data


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: d}) + "\n" for d in docs))
    return path


def _train_tokenizer(kind: str, corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>"] if kind == "gpt2" else ["<s>", "</s>", "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    if kind == "gpt2":
        return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_tiny_model(kind: str, directory: Path, extra_corpus: list[str] | None = None) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    corpus = make_corpus(200, seed=1) + ["Hello world, a paragraph of plain English text for the tokenizer."] + (extra_corpus or [])
    tokenizer = _train_tokenizer(kind, corpus)
    vocab = len(tokenizer)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=2,
                            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    else:
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: build_tiny_model(kind, root / kind) for kind in ("gpt2", "llama")}


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_models) -> Path:
    return tiny_models["gpt2"]


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch) -> Path:
    """Each test gets its own cache, so prepared data never leaks between tests."""
    home = tmp_path / "home"
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", make_corpus(120))


@pytest.fixture(scope="session")
def embedded_run(tmp_path_factory):
    """The embedded default fine-tuned for two steps (full, micro-batch 2 of 128 tokens), with the measured peak of its
    tensor memory; shared by the tests of memory estimates and of GGUF export, since one run costs about a minute."""
    from types import SimpleNamespace

    from tunesmith.api import prepare
    from tunesmith.config import load_config
    from tunesmith.planning.measure import peak_tensor_bytes
    from tunesmith.training import train_run
    from tunesmith.runtime import pick_device

    from tunesmith.quickstart import EXAMPLE_CORPUS

    root = tmp_path_factory.mktemp("embedded")
    corpus = Path(str(EXAMPLE_CORPUS))  # English text: a model's perplexity on it is not oversensitive to rounding
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNESMITH_HOME", str(root / "home"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        cfg = load_config(None, [("model.name", "smollm2-135m"), ("data.train", [str(corpus)]), ("data.block_size", 128),
                                 ("train.micro_batch_size", 2), ("train.max_steps", 2), ("train.eval_every", 2),
                                 ("train.eval_max_blocks", 8), ("monitor.sample_count", 0), ("monitor.tensorboard", False),
                                 ("output.dir", str(root / "run"))])
        prepare(cfg)  # the one-time conversion and the tokenizing stay outside the measured run
        _, peak = peak_tensor_bytes(lambda: train_run(cfg), pick_device("auto"))
    return SimpleNamespace(run=root / "run", corpus=corpus, peak=peak, micro_batch=2, block_size=128)

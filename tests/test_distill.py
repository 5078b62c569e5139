"""Distillation: the divergences against their formulas and torchtune's, the student made from the teacher, the
teacher's checks, and distilled runs (lm and classify; resume)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tunesmith import train
from tunesmith.batch import IGNORE, Batch
from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.distill import divergence, kept_blocks, make_student, read_record, topk_divergence
from tunesmith.distill.losses import masked_mean
from tunesmith.errors import ConfigError, UserError
from tunesmith.models import ResolvedModel

from helpers import classify_config, cut_run, labelled, losses, make_corpus, run_config, train_tokenizer, write_jsonl

# ---------------------------------------------------------------- the divergences


def by_hand(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    """Each position's divergence written out term by term, in float64."""
    out = []
    for s_row, t_row in zip(student.double().tolist(), teacher.double().tolist()):
        s = [x / temperature for x in s_row]
        t = [x / temperature for x in t_row]
        zs, zt = math.log(sum(math.exp(x) for x in s)), math.log(sum(math.exp(x) for x in t))
        p = [math.exp(x - zt) for x in t]  # teacher
        q = [math.exp(x - zs) for x in s]  # student
        kl = lambda a, b: sum(ai * math.log(ai / bi) for ai, bi in zip(a, b) if ai > 0)  # noqa: E731
        if kind == "forward_kl":
            value = kl(p, q)
        elif kind == "reverse_kl":
            value = kl(q, p)
        else:
            m = [(pi + qi) / 2 for pi, qi in zip(p, q)]
            value = (kl(p, m) + kl(q, m)) / 2
        out.append(value * temperature**2)
    return torch.tensor(out, dtype=torch.float64)


def fixed_logits(positions=7, vocab=11, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(positions, vocab, generator=generator) * 3, torch.randn(positions, vocab, generator=generator) * 3


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_divergences_equal_their_formulas_with_masked_positions(kind, temperature):
    student, teacher = fixed_logits()
    labels = torch.tensor([3, IGNORE, 5, 1, IGNORE, IGNORE, 2])
    weights = (labels != IGNORE).float()
    ours = masked_mean(divergence(student, teacher, kind, temperature), weights)
    expected = (by_hand(student, teacher, kind, temperature) * weights.double()).sum() / weights.sum()
    assert abs(ours.item() - expected.item()) < 1e-6
    assert divergence(teacher, teacher, kind, temperature).abs().max() < 1e-6  # zero when the student matches


def torchtune_losses():
    """torchtune's KD losses, read from the installed package's file (its package root imports torchao, which this
    test does not need)."""
    found = importlib.util.find_spec("torchtune")
    assert found is not None, "torchtune is installed by `make test` (pip install --no-deps torchtune==0.6.1)"
    path = Path(found.submodule_search_locations[0]) / "modules" / "loss" / "kd_losses.py"
    spec = importlib.util.spec_from_file_location("torchtune_kd_losses", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_forward_kl_matches_torchtune():
    """torchtune's ForwardKLLoss is the teacher-student cross-entropy, KL plus the teacher's entropy (a constant for
    the student): the value differs by that entropy and the gradients are the same."""
    kd = torchtune_losses()
    student, teacher = fixed_logits(positions=9, vocab=13, seed=1)
    labels = torch.tensor([[3, IGNORE, 5, 1, IGNORE, 0, 2, IGNORE, 7]])
    weights = (labels.flatten() != IGNORE).float()
    ours_in = student.clone().requires_grad_(True)
    theirs_in = student.clone().requires_grad_(True)
    ours = masked_mean(divergence(ours_in, teacher, "forward_kl"), weights)
    theirs = kd.ForwardKLLoss()(theirs_in, teacher, labels)
    teacher_logp = teacher.log_softmax(-1)
    entropy = masked_mean(-(teacher_logp.exp() * teacher_logp).sum(-1), weights)
    assert abs(ours.item() - (theirs - entropy).item()) < 1e-6
    ours.backward()
    theirs.backward()
    assert torch.allclose(ours_in.grad, theirs_in.grad, atol=1e-7)
    reverse = kd.ReverseKLLoss()(student, teacher, labels)
    assert abs(masked_mean(divergence(student, teacher, "reverse_kl"), weights).item() - reverse.item()) < 1e-6


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_topk_divergence(kind):
    """With k the whole vocabulary the top-k divergence is the full one; with a smaller k it is the formula over the
    teacher's top k tokens and the rest of the vocabulary as one outcome, at the temperature of the cached log-probs."""
    student, teacher = fixed_logits(positions=5, vocab=10, seed=2)
    logprobs, ids = teacher.log_softmax(-1).topk(10, -1)
    assert torch.allclose(topk_divergence(student, ids, logprobs, kind), divergence(student, teacher, kind), atol=1e-6)
    logprobs, ids = (teacher / 2.0).log_softmax(-1).topk(4, -1)
    ours = topk_divergence(student, ids, logprobs, kind, temperature=2.0)
    student_p, teacher_p = (student / 2.0).softmax(-1), (teacher / 2.0).softmax(-1)

    def buckets(p):  # the k tokens, then the rest
        kept = p.gather(-1, ids)
        return torch.cat([kept, 1 - kept.sum(-1, keepdim=True)], -1).double().log()

    # by_hand takes logits at temperature 1 and multiplies by T^2: hand it log-probabilities and scale by 4 here
    expected = by_hand(buckets(student_p), buckets(teacher_p), kind, 1.0) * 4
    assert torch.allclose(ours.double(), expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_topk_divergence_stays_below_the_full_one_for_a_confident_teacher(kind):
    """Grouping the vocabulary's tail into one outcome can only lose information (the data-processing inequality): the
    top-k divergence stays at or below the full one, and finite, when the teacher puts nearly all its mass on its top k."""
    student, teacher = fixed_logits(positions=6, vocab=40, seed=3)
    teacher = teacher * 8  # confident: its top 3 hold more than 1 - 1e-6 at most positions
    logprobs, ids = teacher.log_softmax(-1).topk(3, -1)
    assert (logprobs.exp().sum(-1) > 1 - 1e-6).sum() >= 3
    ours = topk_divergence(student, ids, logprobs, kind)
    full = divergence(student, teacher, kind)
    assert torch.isfinite(ours).all() and (ours <= full + 1e-4).all()


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("multiple", [1, 8])
def test_the_loss_through_chunks_of_the_output_layer_equals_the_whole_one(kind, cached, multiple, monkeypatch):
    """Loss and gradients of hidden states and output weight, over several chunks (the last one short), with label
    smoothing, class weights, output rows past the tokenizer's (a padded embedding), and the output rows padded for
    the matmuls (as on CUDA)."""
    from tunesmith.config import DistillConfig
    from tunesmith.distill import fused
    from tunesmith.distill.loss import DistillLoss

    monkeypatch.setattr(fused, "CHUNK_BYTES", 3 * 4 * 22)  # 3 positions of the 22-row output layer
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(10, 6, generator=generator).requires_grad_()
    weight = torch.randn(22, 6, generator=generator).requires_grad_()
    targets, weights = torch.randint(0, 20, (10,), generator=generator), torch.rand(10, generator=generator) + 0.5
    teacher = torch.randn(10, 22, generator=generator) * 3
    logprobs, ids = (teacher[:, :20] / 2.0).log_softmax(-1).topk(5, -1)
    side = (None, ids, logprobs) if cached else (teacher, None, None)
    loss = DistillLoss(None, None, DistillConfig(teacher="t", alpha=0.6, temperature=2.0, loss=kind), vocab=20, label_smoothing=0.1)

    whole = masked_mean(loss.position_losses(hidden @ weight.T, targets, *side), weights)
    expected = [whole.item(), *torch.autograd.grad(whole, [hidden, weight])]

    def score(logits, start, end):
        return loss.position_losses(logits, targets[start:end], *[None if x is None else x[start:end] for x in side])

    chunked = fused.chunked_output_loss(hidden, weight, weights, score, multiple)
    got = [chunked.item(), *torch.autograd.grad(chunked, [hidden, weight])]
    assert got[0] == pytest.approx(expected[0], abs=1e-6)
    assert torch.allclose(got[1], expected[1], atol=1e-6) and torch.allclose(got[2], expected[2], atol=1e-6)


# ---------------------------------------------------------------- the student made from the teacher


def test_kept_blocks():
    assert kept_blocks(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert kept_blocks(4, 2) == [0, 3]
    assert kept_blocks(4, 1) == [3]
    assert kept_blocks(6, [4, 1]) == [1, 4]
    assert kept_blocks(30, 10, "bottom") == list(range(10))
    with pytest.raises(ConfigError, match="the teacher has only 4 blocks"):
        kept_blocks(4, 5, "bottom")
    with pytest.raises(ConfigError, match="keeping all 4"):
        kept_blocks(4, 4, "bottom")
    with pytest.raises(ConfigError, match="keeping all 4 of the teacher's blocks copies the teacher"):
        kept_blocks(4, 4)
    with pytest.raises(ConfigError, match="keeping all 4"):
        kept_blocks(4, [3, 1, 0, 2])
    with pytest.raises(ConfigError, match="the teacher has only 4 blocks"):
        kept_blocks(4, 5)
    with pytest.raises(ConfigError, match="12, 13, 14, 15, 16 and 95 more are not among them"):
        kept_blocks(12, list(range(112)))
    with pytest.raises(ConfigError, match="blocks 0 to 3"):
        kept_blocks(4, [1, 4])


def test_student_config_cuts_every_per_block_list():
    from transformers import LlamaConfig

    from tunesmith.distill.student import student_config

    config = LlamaConfig(num_hidden_layers=4, hidden_size=32, intermediate_size=64, num_attention_heads=2, vocab_size=50)
    config.no_rope_layers = [1, 0, 1, 0]
    kept = student_config(config, [1, 3])
    assert kept.num_hidden_layers == 2 and kept.no_rope_layers == [0, 0]


def deep_llama(directory: Path, layers: int = 4) -> Path:
    """A tiny Llama with `layers` blocks (the shared fixtures have 2)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = train_tokenizer("llama", make_corpus(200, seed=1))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    return deep_llama(tmp_path_factory.mktemp("teacher") / "llama4")


def test_student_forward_is_the_teachers_kept_blocks(teacher_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    teacher = ResolvedModel(str(teacher_dir), str(teacher_dir), True)
    student_path = Path(make_student(teacher, [0, 2], tmp_path, log=lambda _: None).path)
    assert make_student(teacher, [0, 2], tmp_path, log=lambda _: None).path == str(student_path)  # made once, reused
    weights = student_path / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])  # a cut-short cache entry is made again, not loaded
    said = []
    assert make_student(teacher, [0, 2], tmp_path, log=said.append).path == str(student_path)
    assert any("is damaged" in line for line in said) and weights.read_bytes() == whole
    student = AutoModelForCausalLM.from_pretrained(student_path).eval()
    assert student.config.num_hidden_layers == 2
    reference = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    ids = torch.randint(0, reference.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = reference.model.embed_tokens(ids)
        positions = torch.arange(ids.shape[1])[None].expand_as(ids)
        rotary = reference.model.rotary_emb(hidden, positions)
        mask = torch.full((12, 12), float("-inf")).triu(1)[None, None]
        for index in (0, 2):  # the teacher's blocks one by one
            hidden = reference.model.layers[index](hidden, attention_mask=mask, position_ids=positions, position_embeddings=rotary)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        expected = reference.lm_head(reference.model.norm(hidden))
        got = student(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert json.loads((student_path / "tunesmith_student.json").read_text())["kept"] == [0, 2]


class Rows:
    """A dataset of fixed token rows, as the measure reads one."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices: list[int]) -> Batch:
        return Batch(input_ids=self.ids[indices])


def test_the_measured_pick_removes_the_run_of_blocks_that_changes_least(teacher_dir):
    from transformers import AutoModelForCausalLM

    from tunesmith.distill.pick import least_change_run

    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    rows = Rows(torch.randint(0, model.config.vocab_size, (10, 16), generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():  # blocks 1 and 2 add nothing to the residual stream: removing both changes nothing
        for block in model.model.layers[1:3]:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
    pick = least_change_run(model, model, rows, 2, torch.device("cpu"), "fp32")
    assert pick.kept == [0, 3] and pick.distance == pytest.approx(0.0, abs=1e-3) and pick.tokens == 160
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight.normal_()
    assert least_change_run(model, model, rows, 3, torch.device("cpu"), "fp32").kept == [0, 2, 3]  # block 1 alone is a no-op
    assert not any(block._forward_pre_hooks or block._forward_hooks for block in model.model.layers)


# ---------------------------------------------------------------- checks


def test_config_checks(tiny_llama, corpus_file, tmp_path):
    from tunesmith.tasks import task_kind

    def check(*overrides):
        cfg = load_config(None, [("model.name", str(tiny_llama)), ("data.train", str(corpus_file)), *overrides])
        task_kind(cfg).check(cfg)

    with pytest.raises(ConfigError, match=r"distill: a student made from the teacher \(distill.student\) needs distill.teacher"):
        check(("distill.student", {"from_teacher": {"keep_layers": 1}}))
    with pytest.raises(ConfigError, match="distillation applies to tasks lm, chat and classify, not preference"):
        check(("task", "preference"), ("distill.teacher", str(tiny_llama)))
    with pytest.raises(ConfigError, match="distill.cache: topk applies to a language model"):
        check(("task", "classify"), ("distill.teacher", str(tiny_llama)), ("distill.cache", "topk"))
    with pytest.raises(ConfigError, match="keep_layers"):
        check(("distill.teacher", str(tiny_llama)), ("distill.student", {"from_teacher": {"keep_layers": 0}}))
    with pytest.raises(ConfigError, match="pick: similar chooses the blocks itself"):
        check(("distill.teacher", str(tiny_llama)), ("distill.student", {"from_teacher": {"keep_layers": [0], "pick": "similar"}}))
    with pytest.raises(ConfigError, match="pick: bottom chooses the blocks itself"):
        check(("distill.teacher", str(tiny_llama)), ("distill.student", {"from_teacher": {"keep_layers": [0], "pick": "bottom"}}))
    check(("distill.teacher", str(tiny_llama)))


def test_teacher_with_another_tokenizer_is_refused(tiny_llama, tiny_gpt2, corpus_file, tmp_path, capsys):
    code = main(["train", "--model", str(tiny_llama), "--data", str(corpus_file), "--out", str(tmp_path / "run"),
                 "--set", f"distill.teacher={tiny_gpt2}", "--set", "train.max_steps=2", "--set", "data.block_size=32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert "distill.teacher" in err[-1] and "tokenizer is not the student's (token " in err[-1]


def test_a_teacher_whose_context_is_shorter_than_the_block_is_refused_before_the_run_folder(tiny_llama, corpus_file, tmp_path,
                                                                                             capsys):
    short = tmp_path / "short"
    shutil.copytree(tiny_llama, short)
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 16}))
    for student in ([], ["--set", "distill.student={from_teacher: {keep_layers: 1}}"]):  # a student cut from it: its context too
        code = main(["train", "--model", str(tiny_llama), "--data", str(corpus_file), "--out", str(tmp_path / "run"),
                     "--set", f"distill.teacher={short}", "--set", "train.max_steps=2", "--set", "data.block_size=32", *student])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert "its context is 16 tokens, shorter than data.block_size 32" in err[0] or "above the model's context of 16" in err[0]
        assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- distilled runs


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def lm_teacher(teacher_dir, tmp_path_factory):
    """The 4-block Llama fine-tuned on the corpus: the language-model teacher."""
    root = tmp_path_factory.mktemp("lm-teacher")
    data = write_jsonl(root / "corpus.jsonl", make_corpus(120))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNESMITH_HOME", str(root / "home"))
        train(run_config(teacher_dir, data, root / "run", max_steps=16, eval_every=8))
    return root / "run", data


def distill_config(teacher_run: Path, data: Path, out: Path, train_settings: dict | None = None, **distill):
    settings = {"teacher": str(teacher_run), "alpha": 1.0, "student": {"from_teacher": {"keep_layers": 2}}, **distill}
    trained = {"lr": 1e-2, "max_steps": 12, "eval_every": 4, "micro_batch_size": 4, "warmup_steps": 2, "precision": "fp32",
               "patience": None, **(train_settings or {})}
    return load_config(None, [("data.train", str(data)), ("data.block_size", 32), ("output.dir", str(out)),
                              *[(f"train.{k}", v) for k, v in trained.items()],
                              *[(f"distill.{k}", v) for k, v in settings.items()]])


@pytest.fixture(scope="module")
def fresh_student(tmp_path_factory) -> Path:
    """A 2-block tiny Llama with the teacher's tokenizer and weights of its own: a student that starts far from the teacher."""
    return deep_llama(tmp_path_factory.mktemp("student") / "llama2", layers=2)


def test_distillation_closes_the_gap_to_the_teacher(lm_teacher, fresh_student, tmp_path):
    teacher_run, data = lm_teacher
    run = tmp_path / "student"
    cfg = distill_config(teacher_run, data, run, student=None)
    summary = train(cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": str(fresh_student)})}))
    gaps = [row["teacher_gap"] for row in rows_of(run) if "teacher_gap" in row]
    assert gaps[-1] < gaps[0] / 2
    distilled = summary["distill"]
    assert distilled["teacher"] == str(teacher_run) and "student_from" not in distilled
    assert distilled["gap_loss"] == pytest.approx(distilled["student_val"]["val_loss"] - distilled["teacher_val"]["val_loss"])
    assert json.loads((run / "teacher.json").read_text())["val"]["val_loss"] == distilled["teacher_val"]["val_loss"]


def test_student_made_from_the_teacher(lm_teacher, tmp_path):
    teacher_run, data = lm_teacher
    run = tmp_path / "student"
    summary = train(distill_config(teacher_run, data, run))
    distilled = summary["distill"]
    assert distilled["student_from"]["kept"] == [0, 3]
    assert distilled["student_parameters"] < distilled["teacher_parameters"]
    assert json.loads((run / "final" / "config.json").read_text())["num_hidden_layers"] == 2
    assert Path(summary["model"]).is_dir() and (Path(summary["model"]) / "tunesmith_student.json").is_file()
    assert "sampled from the teacher" in summary["forgetting"]["probe"]  # the cut student's own samples are not language yet
    from tunesmith.evaluation.forgetting import model_key
    from tunesmith.models import load_tokenizer, resolve_model, tunesmith_home

    teacher = resolve_model(str(teacher_run))
    assert (tunesmith_home() / "probes" / f"{model_key(teacher, load_tokenizer(teacher))}.json").is_file()
    report = (run / "report.md").read_text()
    assert "## Teacher and student" in report and "made from the teacher, blocks 0, 3" in report
    from fastapi.testclient import TestClient

    from tunesmith.ui import create_app

    client = TestClient(create_app(tmp_path, port=7860), base_url="http://127.0.0.1:7860")
    page = client.get("/runs/student").text
    assert 'id="distill"' in page and "made from the teacher, blocks 0, 3" in page


def test_a_student_whose_blocks_are_measured_keeps_what_the_measure_picks(lm_teacher, tmp_path, capsys):
    teacher_run, data = lm_teacher
    run = tmp_path / "student"
    summary = train(distill_config(teacher_run, data, run, student={"from_teacher": {"keep_layers": 2, "pick": "similar"}},
                                   train_settings={"max_steps": 2, "eval_every": 2}))
    out = capsys.readouterr().out
    kept = summary["distill"]["student_from"]["kept"]
    assert len(kept) == 2 and "whose input and output differ least" in out
    record = json.loads((Path(summary["model"]) / "tunesmith_student.json").read_text())
    assert record["kept"] == kept
    assert json.loads((run / "final" / "config.json").read_text())["num_hidden_layers"] == 2
    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0  # the card names the teacher, not model.name
    card = (tmp_path / "hf" / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["base_model"] == record["teacher"]
    assert f"cut from that teacher: 2 of its {record['teacher_blocks']} blocks (blocks {kept[0]}, {kept[1]})" in card


def test_a_student_trained_further_pairs_its_blocks_with_those_it_was_cut_from(lm_teacher, tmp_path, capsys):
    """A task after general distillation: the cut student's final/ given as model.name keeps its record, where evenly
    spaced pairs would be 0<-0, 1<-3."""
    teacher_run, data = lm_teacher
    short = {"max_steps": 2, "eval_every": 2}
    first = train(distill_config(teacher_run, data, tmp_path / "cut", student={"from_teacher": {"keep_layers": 2, "pick": "bottom"}},
                                 train_settings=short))
    assert json.loads((tmp_path / "cut" / "final" / "tunesmith_student.json").read_text())["kept"] == [0, 1]
    assert first["distill"]["student_from"]["this_teacher"] is True
    further = distill_config(teacher_run, data, tmp_path / "further", student=None, alpha=0.5, hidden=1.0, train_settings=short)
    summary = train(further.model_copy(update={"model": further.model.model_copy(update={"name": str(tmp_path / "cut" / "final")})}))
    assert "teacher's blocks 0<-0, 1<-1" in capsys.readouterr().out
    assert summary["distill"]["student_from"]["kept"] == [0, 1]
    assert "sampled from the model it was cut from" in summary["forgetting"]["probe"]
    assert "made from the teacher, blocks 0, 1" in (tmp_path / "further" / "report.md").read_text()


def test_eval_compares_the_student_with_its_teacher_and_their_speed(lm_teacher, tmp_path, capsys):
    teacher_run, data = lm_teacher
    run = tmp_path / "student"
    train(distill_config(teacher_run, data, run, train_settings={"max_steps": 4}))
    capsys.readouterr()
    assert main(["eval", str(run), "--compare", str(teacher_run)]) == 0
    out = capsys.readouterr().out
    assert f"{run}: " in out and "new tokens/s (generate, " in out
    assert f"{run} runs at " in out and f"x the speed of {teacher_run}" in out


@pytest.mark.parametrize("kind", ["reverse_kl", "jsd"])
def test_each_divergence_trains(lm_teacher, fresh_student, tmp_path, kind):
    teacher_run, data = lm_teacher
    run = tmp_path / kind
    cfg = distill_config(teacher_run, data, run, loss=kind, temperature=2.0, student=None)
    train(cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": str(fresh_student)})}))
    gaps = [row["teacher_gap"] for row in rows_of(run) if "teacher_gap" in row]
    assert gaps[-1] < gaps[0] / 2


@pytest.mark.parametrize("method", ["lora", "freeze"])
def test_lora_and_freeze_students_learn_from_the_teacher(lm_teacher, fresh_student, tmp_path, method):
    teacher_run, data = lm_teacher
    run = tmp_path / method
    cfg = fresh_student_config(teacher_run, data, run, fresh_student)
    extra = {"lora_rank": 8} if method == "lora" else {"train_last_layers": 1}
    train(cfg.model_copy(update={"model": cfg.model.model_copy(update={"method": method, **extra})}))
    gaps = [row["teacher_gap"] for row in rows_of(run) if "teacher_gap" in row]
    assert gaps[-1] < gaps[0]


def test_distilled_run_resumes_exactly(lm_teacher, tmp_path):
    teacher_run, data = lm_teacher
    whole = tmp_path / "whole"
    train(distill_config(teacher_run, data, whole, alpha=0.5))
    resumed = cut_run(whole, tmp_path / "resumed", last_step=8)
    cfg = distill_config(teacher_run, data, resumed, alpha=0.5)
    from tunesmith.training import train_run

    with pytest.raises(UserError, match="--resume: distill.hidden is 1.0 here but 0.0"):
        train_run(distill_config(teacher_run, data, resumed, alpha=0.5, hidden=1.0), resume=True)
    swapped = cut_run(resumed, tmp_path / "swapped", last_step=8)  # as if the teacher's folder now held other weights
    record = json.loads((swapped / "teacher.json").read_text())
    record["identity"], record["val"]["val_loss"] = ["elsewhere"], record["val"]["val_loss"] + 0.5
    (swapped / "teacher.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="the teacher .* is not the one this run started with"):
        train_run(distill_config(teacher_run, data, swapped, alpha=0.5), resume=True)
    (swapped / "teacher.json").write_text("")  # the record gone, a changed teacher could not be told
    with pytest.raises(UserError, match="teacher.json is missing or damaged, so the teacher cannot be checked"):
        train_run(distill_config(teacher_run, data, swapped, alpha=0.5), resume=True)
    train_run(cfg, resume=True)
    assert losses(resumed) == pytest.approx(losses(whole), abs=1e-6)


def test_classifier_student_learns_from_a_classifier_teacher(tiny_llama, tmp_path, capsys):
    data = write_jsonl(tmp_path / "unused.jsonl", [])
    data.write_text("".join(json.dumps(row) + "\n" for row in labelled(120)))
    teacher_run = tmp_path / "teacher"
    train(classify_config(tiny_llama, data, teacher_run, "head"))
    cfg = classify_config(tiny_llama, data, tmp_path / "student", "head", epochs=2)
    cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"teacher": str(teacher_run), "alpha": 0.7,
                                                                           "temperature": 2.0, "hidden": 0.5})})
    summary = train(cfg)  # with hidden states too: the packed classifier's padded rows, through its wrapper
    assert "the teacher's blocks 0<-0, 1<-1" in capsys.readouterr().out
    assert summary["distill"]["teacher_val"]["accuracy"] >= 0.5
    assert "accuracy" in summary["distill"]["student_val"]
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "student"), "--compare", str(teacher_run), "--json"]) == 0
    speeds = [result["speed"] for result in json.loads(capsys.readouterr().out)["results"]]
    assert [s["use"] for s in speeds] == ["predict", "predict"] and all(s["per_s"] > 0 and s["unit"] == "rows" for s in speeds)
    picked = classify_config(tiny_llama, data, tmp_path / "picked", "head", max_steps=2, eval_every=2)
    student = {"from_teacher": {"keep_layers": 1, "pick": "similar"}}  # measured through the packed classifier's wrapper
    distill = type(picked.distill).model_validate({**picked.distill.model_dump(), "teacher": str(teacher_run), "student": student})
    picked = picked.model_copy(update={"distill": distill})
    summary = train(picked)
    assert "whose input and output differ least" in capsys.readouterr().out and len(summary["distill"]["student_from"]["kept"]) == 1
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**row, "sentiment": "good" if row["sentiment"] == "positive" else "bad"}) + "\n"
                             for row in labelled(120)))
    code = main(["train", "--task", "classify", "--model", str(tiny_llama), "--data", str(other), "--out", str(tmp_path / "refused"),
                 "--set", "data.text_field=review", "--set", "data.label_field=sentiment", "--set", f"distill.teacher={teacher_run}"])
    assert code == 2


# ---------------------------------------------------------------- the top-k cache


def fresh_student_config(teacher_run, data, out, student, **distill):
    cfg = distill_config(teacher_run, data, out, student=None, **distill)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": str(student)})})


def test_topk_cache_is_written_once_reused_and_recomputed_when_damaged(lm_teacher, fresh_student, tmp_path, capsys):
    teacher_run, data = lm_teacher
    train(fresh_student_config(teacher_run, data, tmp_path / "a", fresh_student, cache="topk", topk=16))
    assert "computing the teacher's top-16" in capsys.readouterr().out
    folders = list((tmp_path / "home" / "data").glob("*/distill/topk-*"))
    assert len(folders) == 1 and json.loads((folders[0] / "meta.json").read_text())["k"] == 16
    train(fresh_student_config(teacher_run, data, tmp_path / "b", fresh_student, cache="topk", topk=16))
    assert "top-16 log-probabilities read from" in capsys.readouterr().out
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    ids = folders[0] / "ids.npy"
    ids.write_bytes(ids.read_bytes()[:-8] + b"\x00" * 8)  # damaged
    train(fresh_student_config(teacher_run, data, tmp_path / "c", fresh_student, cache="topk", topk=16))
    assert "computing the teacher's top-16" in capsys.readouterr().out
    assert losses(tmp_path / "c") == losses(tmp_path / "a")
    shutil.rmtree(folders[0])
    (tmp_path / "mine").mkdir()
    folders[0].symlink_to(tmp_path / "mine")  # a link in its place: replaced, nothing written into the folder it names
    train(fresh_student_config(teacher_run, data, tmp_path / "d", fresh_student, cache="topk", topk=16))
    assert losses(tmp_path / "d") == losses(tmp_path / "a") and not folders[0].is_symlink()
    assert not list((tmp_path / "mine").iterdir())
    gaps = [row["teacher_gap"] for row in rows_of(tmp_path / "a") if "teacher_gap" in row]
    assert gaps[-1] < gaps[0] / 2


def test_topk_over_the_whole_vocabulary_trains_as_the_teacher_beside(lm_teacher, fresh_student, tmp_path):
    """k = the vocabulary: the cache holds the teacher's whole distribution, so the run follows the one with the
    teacher beside it (to the bf16-free fp32 rounding of a stored log-probability)."""
    teacher_run, data = lm_teacher
    vocab = json.loads((fresh_student / "config.json").read_text())["vocab_size"]
    train(fresh_student_config(teacher_run, data, tmp_path / "beside", fresh_student))
    train(fresh_student_config(teacher_run, data, tmp_path / "cached", fresh_student, cache="topk", topk=vocab))
    beside, cached = losses(tmp_path / "beside"), losses(tmp_path / "cached")
    assert cached[1] == pytest.approx(beside[1], abs=2e-3)
    assert cached[12] == pytest.approx(beside[12], abs=2e-2)


@pytest.mark.parametrize("cache", ["none", "topk"])
def test_distillation_through_the_fused_output_layer_trains_as_through_whole_logits(lm_teacher, fresh_student, tmp_path, cache,
                                                                                    monkeypatch):
    from tunesmith.distill import fused, loss

    teacher_run, data = lm_teacher
    monkeypatch.setattr(fused, "CHUNK_BYTES", 4 * 4 * 256)  # 3 positions of the tokenizer's 300 a chunk: many a batch
    calls = []
    monkeypatch.setattr(loss, "chunked_output_loss", lambda *args: calls.append(len(args[0])) or fused.chunked_output_loss(*args))
    runs = {}
    for fused_loss in (True, False):
        cfg = fresh_student_config(teacher_run, data, tmp_path / f"{cache}-{fused_loss}", fresh_student, alpha=0.5, cache=cache, topk=8)
        train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"fused_loss": fused_loss})}))
        runs[fused_loss] = losses(tmp_path / f"{cache}-{fused_loss}")
        assert bool(calls) == fused_loss and all(positions > 3 for positions in calls)
        calls.clear()
    assert runs[True] == pytest.approx(runs[False], abs=1e-4)


# ---------------------------------------------------------------- diagnosis


def test_gap_stalled_finding():
    from tunesmith.diagnose.findings import RunFacts
    from tunesmith.diagnose.rules import diagnose

    facts = RunFacts(lr=1e-4, distill_hidden=0.0, distill_keep=10)
    stalled = [{"step": 10 * i, "val_loss": 3.0, "teacher_gap": gap} for i, gap in enumerate([1.0, 0.6, 0.45, 0.45, 0.46, 0.45])]
    found = {f.kind: f for f in diagnose(stalled, facts)}["gap_stalled"]
    assert found.evidence["gap"] == 0.45 and found.evidence["start_gap"] == 1.0

    def advised(facts):
        return [(a.key, a.value) for a in {f.kind: f for f in diagnose(stalled, facts)}["gap_stalled"].advice]

    keep = ("distill.student.from_teacher.keep_layers", 15)
    assert advised(facts) == [("", None), ("train.lr", 2e-3), keep]  # more text, a cut student's rate, more blocks
    assert "More text than the teacher read" in found.advice[0].why
    assert advised(RunFacts(lr=2e-3, distill_keep=10)) == [("", None), keep]
    own_student = {f.kind: f for f in diagnose(stalled, RunFacts(lr=1e-4))}["gap_stalled"].advice
    assert [a.key for a in own_student] == ["", ""] and "larger student model" in own_student[1].why
    classifier = RunFacts(lr=3e-4, distill_hidden=0.0, distill_keep=10, student_writes_text=False)
    assert advised(classifier) == [("", None), ("distill.hidden", 1.0), keep]  # general distillation first, hidden states
    assert advised(RunFacts(lr=3e-4, distill_hidden=1.0, distill_keep=10, student_writes_text=False)) == [("", None), keep]
    narrowing = [{**row, "teacher_gap": 1.0 - 0.15 * i} for i, row in enumerate(stalled)]
    closed = [{**row, "teacher_gap": gap} for row, gap in zip(stalled, [0.5, 0.1, 0.01, 0.011, 0.01, 0.012])]
    cut_from_teacher = [{**row, "teacher_gap": gap} for row, gap in zip(stalled, [4.9, 0.64, 0.51, 0.46, 0.43, 0.42])]
    for history in (narrowing, closed, stalled[:4], cut_from_teacher):
        assert "gap_stalled" not in {f.kind for f in diagnose(history, facts)}
    reopened = [{**row, "teacher_gap": gap} for row, gap in zip(stalled, [0.5, 0.2, -0.5, -0.495, 0.1, 0.3])]
    assert "gap_stalled" in {f.kind for f in diagnose(reopened, facts)}


def test_a_teacher_that_scores_with_a_head_is_refused_before_a_student_is_cut(lm_teacher, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher_run, data = lm_teacher
    scorer = tmp_path / "scorer"
    AutoModelForSequenceClassification.from_pretrained(teacher_run / "final", num_labels=1).save_pretrained(scorer)
    AutoTokenizer.from_pretrained(teacher_run / "final").save_pretrained(scorer)
    capsys.readouterr()
    for command in (["train", "--out", str(tmp_path / "student"), "--max-steps", "2"], ["prepare"]):
        assert main([*command, "--data", str(data), "--block-size", "32", "--set", f"distill.teacher={scorer}",
                     "--set", "distill.student={from_teacher: {keep_layers: 2}}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "a model with a scoring head (LlamaForSequenceClassification) cannot teach" in err[0], err
    assert not (tmp_path / "home" / "students").exists()


def test_prepare_counts_the_cut_students_parameters(lm_teacher, tmp_path):
    from tunesmith.models import count_parameters, load_model_config
    from tunesmith.preparation import tokenizer_model, trained_model_config

    teacher_run, data = lm_teacher
    cfg = distill_config(teacher_run, data, tmp_path / "run")
    teacher = tokenizer_model(cfg)
    student = trained_model_config(cfg, teacher)
    assert student.num_hidden_layers == 2 and count_parameters(student) < count_parameters(load_model_config(teacher))


def test_user_errors_of_a_distilled_run_are_one_line(lm_teacher, tmp_path, capsys):
    """A run that has not finished, a student without a teacher, an empty teacher, a resume with another teacher."""
    teacher_run, data = lm_teacher
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    base = ["train", "--data", str(data), "--block-size", "32", "--max-steps", "2", "--set", "train.precision=fp32"]
    cases = [
        ([*base, "--out", str(tmp_path / "a"), "--set", f"distill.teacher={unfinished}"], "this run has not finished"),
        ([*base, "--out", str(tmp_path / "b"), "--set", "distill.student={from_teacher: {keep_layers: 2}}"], "needs distill.teacher"),
        ([*base, "--out", str(tmp_path / "c"), "--set", "distill.teacher=' '"], "distill.teacher: empty"),
        ([*base, "--out", str(tmp_path / "d"), "--set", "distill.student={from_teacher: {keep_layer: 2}}",
          "--set", f"distill.teacher={teacher_run}"], "allowed: keep_layers"),
        (["prepare", *base[1:], "--set", f"distill.teacher={teacher_run}", "--set", "distill.student={from_teacher: {keep_layers: 9}}"],
         "the teacher has only"),
        ([*base, "--out", str(tmp_path / "e"), "--set", "distill.teacher=runs/nope"], "no folder of that name here"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert expected in err[-1] and "Traceback" not in "\n".join(err), (argv, err[-3:])
    run = tmp_path / "resumed"
    train(distill_config(teacher_run, data, run, train_settings={"max_steps": 4}))
    assert main(["train", "--out", str(run), "--resume", "--set", f"distill.teacher={teacher_run / 'final'}"]) == 2
    assert "--resume: distill.teacher is" in capsys.readouterr().err


def test_a_hub_teacher_is_known_by_the_commit_of_its_cached_files(tmp_path, monkeypatch):
    """A teacher from the hub has no folder here: its cache and measurement are keyed by the snapshot its files came
    from, so a new revision is not read from an old cache; a local teacher is keyed by its files alone."""
    import huggingface_hub.constants

    from tunesmith.distill.teacher import hub_commit

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--tiny"

    def cached(commit: str) -> None:
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    assert hub_commit("org/tiny") is None
    cached("aaa111")
    assert hub_commit("org/tiny") == "aaa111"
    cached("bbb222")
    assert hub_commit("org/tiny") == "bbb222"
    assert hub_commit(str(tmp_path / "a local folder")) is None


# ---------------------------------------------------------------- hidden states


def test_hidden_distance_is_one_minus_the_cosine_over_real_tokens():
    from tunesmith.distill.hidden import hidden_distance

    generator = torch.Generator().manual_seed(0)
    student = {0: torch.randn(2, 5, 8, generator=generator), 1: torch.randn(2, 5, 8, generator=generator)}
    teacher = {1: torch.randn(2, 5, 8, generator=generator), 3: torch.randn(2, 5, 8, generator=generator)}
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    by_hand = []
    for ours, theirs in ((0, 1), (1, 3)):
        cosines = [float(student[ours][b, t] @ teacher[theirs][b, t] / (student[ours][b, t].norm() * teacher[theirs][b, t].norm()))
                   for b in range(2) for t in range(5) if mask[b, t]]
        by_hand.append(sum(1 - c for c in cosines) / len(cosines))
    got = hidden_distance(student, teacher, [(0, 1), (1, 3)], mask)
    assert float(got) == pytest.approx(sum(by_hand) / 2, abs=1e-6)
    assert float(hidden_distance(student, {1: student[0] * 3.0}, [(0, 1)], None)) == pytest.approx(0.0, abs=1e-6)


def test_hidden_pairs_follow_the_kept_blocks_and_other_widths_are_refused(teacher_dir, tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tunesmith.distill.hidden import block_pairs

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    made = make_student(ResolvedModel(str(teacher_dir), str(teacher_dir), True), [1, 3], tmp_path, log=lambda _: None).path
    assert block_pairs(AutoModelForCausalLM.from_pretrained(made), teacher, read_record(made)) == [(0, 1), (1, 3)]
    assert block_pairs(AutoModelForCausalLM.from_pretrained(tiny_llama), teacher, read_record(tiny_llama)) == [(0, 0), (1, 3)]
    assert block_pairs(teacher, teacher, None) == [(i, i) for i in range(4)]
    wide = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=teacher.config.vocab_size, hidden_size=48, intermediate_size=64,
                                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ConfigError, match="the student's hidden states have 48 channels and the teacher's 32"):
        block_pairs(wide, teacher, None)


def test_hidden_state_distillation_brings_the_students_blocks_to_the_teachers(lm_teacher, fresh_student, tmp_path):
    """A student with weights of its own: its block outputs move toward the teacher blocks they stand for, further than
    with the divergence alone."""
    from transformers import AutoModelForCausalLM

    from tunesmith.distill.hidden import BlockOutputs, hidden_distance

    teacher_run, data = lm_teacher
    teacher = AutoModelForCausalLM.from_pretrained(teacher_run / "final").eval()
    ids = torch.randint(0, teacher.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))

    def distance(student_dir: Path) -> float:
        student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
        ours, theirs = BlockOutputs(student, [0, 1]), BlockOutputs(teacher, [0, 3])
        ours.armed = theirs.armed = True
        with torch.no_grad():
            student(input_ids=ids)
            teacher(input_ids=ids)
        return float(hidden_distance(ours.take(), theirs.take(), [(0, 0), (1, 3)], None))

    distances = {}
    for weight in (0.0, 1.0):
        run = tmp_path / f"hidden-{weight}"
        cfg = distill_config(teacher_run, data, run, student=None, hidden=weight, alpha=0.5)
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": str(fresh_student)})})
        train(cfg)
        distances[weight] = distance(run / "final")
    assert distances[1.0] < distance(fresh_student) and distances[1.0] < distances[0.0]


def test_hidden_state_settings_are_checked(tiny_llama, corpus_file):
    from tunesmith.tasks import task_kind

    def check(*overrides):
        cfg = load_config(None, [("model.name", str(tiny_llama)), ("data.train", str(corpus_file)), ("distill.teacher", str(tiny_llama)),
                                 ("distill.hidden", 1.0), *overrides])
        task_kind(cfg).check(cfg)

    with pytest.raises(ConfigError, match="the top-k cache holds the teacher's log-probabilities, not its hidden states"):
        check(("distill.cache", "topk"))
    with pytest.raises(ConfigError, match="hooks that catch each block's output do not compile"):
        check(("train.compile", True))
    check()
    with pytest.raises(ConfigError, match=r"hidden-state distillation \(distill.hidden\) needs distill.teacher"):
        load_config(None, [("model.name", str(tiny_llama)), ("data.train", str(corpus_file)), ("distill.hidden", 1.0)])


def test_packed_rows_padding_is_not_a_real_token():
    from tunesmith.batch import Batch

    ids = torch.zeros((2, 5), dtype=torch.long)
    assert Batch(ids, lengths=torch.tensor([3, 5])).real_tokens().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert Batch(ids, attention_mask=torch.ones_like(ids)).real_tokens().sum() == 10 and Batch(ids).real_tokens() is None


@pytest.mark.parametrize("damaged", ["{not json", "[0, 3]", '{"teacher": "t", "teacher_blocks": 4}',
                                     '{"teacher": "t", "teacher_blocks": 4, "kept": [0, 7]}',
                                     '{"teacher": "t", "teacher_blocks": 4, "kept": [-1, 3]}',
                                     '{"teacher": "t", "teacher_blocks": 4, "kept": [3, 3]}',
                                     '{"teacher": "t", "teacher_blocks": 4, "kept": [true, 3]}',
                                     '{"teacher": "t", "teacher_blocks": "4", "kept": [0, 1]}',
                                     '{"teacher": "t", "teacher_blocks": 4, "kept": [0, 1, 2]}'])
def test_a_damaged_student_record_is_refused_in_one_line(tmp_path, damaged):
    (tmp_path / "tunesmith_student.json").write_text(damaged)
    with pytest.raises(UserError) as refused:
        read_record(tmp_path, depth=2)
    assert "tunesmith_student.json" in str(refused.value) and "delete it" in str(refused.value)
    assert "\n" not in str(refused.value)
    (tmp_path / "tunesmith_student.json").write_text('{"teacher": "t", "teacher_blocks": 4, "kept": [0, 3]}')
    assert read_record(tmp_path, depth=2)["kept"] == [0, 3] and read_record(tmp_path / "elsewhere") is None


def test_hidden_pairs_come_from_a_record_of_this_teacher_only_and_a_failed_pass_lets_go(teacher_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunesmith.distill.hidden import HiddenMatch

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    made = Path(make_student(ResolvedModel(str(teacher_dir), str(teacher_dir), True), [1, 2], tmp_path, log=lambda _: None).path)
    student = AutoModelForCausalLM.from_pretrained(made)
    assert HiddenMatch(student, teacher, read_record(made)).pairs == [(0, 1), (1, 2)]
    record = json.loads((made / "tunesmith_student.json").read_text())
    (made / "tunesmith_student.json").write_text(json.dumps({**record, "teacher_blocks": 8}))  # another teacher's record
    match = HiddenMatch(student, teacher, read_record(made))
    assert match.pairs == [(0, 0), (1, 3)] and "0<-0, 1<-3" in match.describe()
    with pytest.raises(RuntimeError, match="out of memory"):
        with match.catching():
            student(input_ids=torch.tensor([[1, 2, 3]]))
            raise RuntimeError("out of memory")
    assert match.student.outputs == {} and not match.student.armed
    with torch.no_grad():
        student(input_ids=torch.tensor([[1, 2, 3]]))
    assert match.student.outputs == {}  # not armed outside a step: evaluation is not caught

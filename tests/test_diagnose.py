"""Each finding from a synthetic history made for it; none from a healthy one; overfitting in a real tiny run."""

import json
import math

import pytest

from tunesmith.cli import main
from tunesmith.diagnose.rules import RunFacts, diagnose, diagnose_run

from helpers import BILLION_LAUGHS, WORDS, run_config, write_jsonl



def history(train_losses, val_losses, eval_every=10, skipped=()):
    rows = [{"step": 0, "val_loss": val_losses[0]}]
    for step, loss in enumerate(train_losses, 1):
        row = {"step": step, "train_loss": loss, "lr": 1e-4}
        if step in skipped:
            row.update(train_loss=float("nan"), skipped=True)
        if step % eval_every == 0 and step // eval_every < len(val_losses):
            row["val_loss"] = val_losses[step // eval_every]
        rows.append(row)
    return rows


def kinds(findings, severity=None):
    return [f.kind for f in findings if severity is None or f.severity == severity]


FACTS = RunFacts(steps_per_epoch=20, lr=1e-4, weight_decay=0.01, dropout=0.1)
FALLING = [3.0 - 1.5 * (1 - math.exp(-s / 30)) for s in range(1, 101)]


def test_a_healthy_run_yields_no_warnings():
    findings = diagnose(history(FALLING, [3.0, 2.6, 2.3, 2.1, 2.0, 1.95, 1.9, 1.88, 1.87, 1.86, 1.85]), FACTS)
    assert kinds(findings) == ["transfer_gain"] and findings[0].severity == "info"
    assert findings[0].evidence["relative_change"] == pytest.approx(math.exp(1.85) / math.exp(3.0) - 1)


def test_overfitting_names_the_best_step_and_what_to_change():
    findings = diagnose(history(FALLING, [3.0, 2.5, 2.2, 2.1, 2.2, 2.35, 2.5, 2.7]), FACTS)
    finding = next(f for f in findings if f.kind == "overfitting")
    assert finding.evidence["best_step"] == 30 and finding.evidence["last_val_loss"] == 2.7
    advice = {a.key: a.value for a in finding.advice}
    assert advice["train.epochs"] == 1.5 and advice["model.dropout"] == 0.2 and advice["model.method"] == "lora"


def test_underfitting_when_both_losses_stay_high_and_flat():
    flat = [3.0 + 0.01 * math.sin(s) for s in range(1, 101)]
    findings = diagnose(history(flat, [3.0, 3.0, 2.99, 3.0, 2.995]), FACTS)
    assert "underfitting" in kinds(findings, "warning") and "lr_too_low" not in kinds(findings)


def test_learning_rate_too_low_when_the_loss_hardly_moves_at_a_tiny_lr():
    flat = [3.0 - 0.0001 * s for s in range(1, 101)]
    findings = diagnose(history(flat, [3.0, 3.0, 2.999]), RunFacts(lr=1e-7))
    finding = next(f for f in findings if f.kind == "lr_too_low")
    assert finding.advice[0].key == "train.lr" and finding.advice[0].value == pytest.approx(1e-6)
    assert "underfitting" not in kinds(findings)


def test_instability_from_spikes_and_non_finite_steps():
    spiky = list(FALLING)
    spiky[50] = 9.0
    assert "instability" in kinds(diagnose(history(spiky, [3.0, 2.0]), FACTS), "warning")
    finding = next(f for f in diagnose(history(FALLING, [3.0, 2.0], skipped=(40, 41)), FACTS) if f.kind == "instability")
    assert finding.severity == "error" and finding.evidence["non_finite_steps"] == 2
    noisy = [0.05 + 0.1 * (step % 3 == 0) for step in range(100)]  # a classifier's small losses, doubling by noise
    assert "instability" not in kinds(diagnose(history(noisy, [0.7, 0.2]), FACTS))


def test_too_little_data_in_tokens_per_parameter():
    findings = diagnose(history(FALLING, [3.0, 2.0]), RunFacts(train_tokens=20_000, trainable_parameters=135_000_000))
    finding = next(f for f in findings if f.kind == "too_little_data")
    assert finding.evidence["tokens_per_parameter"] == pytest.approx(20_000 / 135_000_000)


def test_diagnose_reads_a_run_directory(tiny_gpt2, corpus_file, tmp_path, capsys):
    from tunesmith import train

    summary = train(run_config(tiny_gpt2, corpus_file, tmp_path / "run", max_steps=10, eval_every=5))
    capsys.readouterr()
    assert main(["diagnose", str(tmp_path / "run"), "--json"]) == 0
    findings = {f["kind"]: f for f in json.loads(capsys.readouterr().out)["findings"]}
    assert findings["transfer_gain"]["evidence"]["best_val_ppl"] == pytest.approx(summary["best_val_ppl"])
    (tmp_path / "run" / "summary.json").unlink()  # as after a crash: the metric history alone still diagnoses
    assert "transfer_gain" in [f.kind for f in diagnose_run(tmp_path / "run")]
    damaged_configs = (b"train: [lr: \xff", b"train: [lr: 1", b"- a list, not a mapping\n", b"train:\nmodel: gpt2\ngrpo: 3\n",
                       b"train: {lr: !!float abc}\n", b"train: {x: !!timestamp notadate}\n",
                       b"train: {x: !!bool maybe, y: !!int ''}\n", BILLION_LAUGHS.encode(),
                       b"train: " + b"[" * 900 + b"]" * 900 + b"\n")
    for damaged in damaged_configs:  # a damaged saved config, or a section of it, is read as nothing
        (tmp_path / "run" / "config.yaml").write_bytes(damaged)
        (tmp_path / "run" / "summary.json").write_text("{torn")
        assert "transfer_gain" in [f.kind for f in diagnose_run(tmp_path / "run")]
        assert main(["report", str(tmp_path / "run")]) == 0
    (tmp_path / "run" / "summary.json").write_text('{"steps": "abc", "epochs": "x", "data_dir": 5, "task": ["x"]}')  # wrong kinds
    (tmp_path / "run" / "data_report.json").unlink()
    assert "transfer_gain" in [f.kind for f in diagnose_run(tmp_path / "run")]
    assert main(["report", str(tmp_path / "run")]) == 0
    with (tmp_path / "run" / "metrics.jsonl").open("a") as metrics:  # rows added by hand: no step, values of other kinds
        metrics.write('{"val_loss": 1.0}\n{"step": "9", "train_loss": 1}\n{"step": true}\n{"step": 11, "val_loss": "low", "lr": [1]}\n')
    (tmp_path / "run" / "samples.jsonl").write_text('{"prompt": "a"}\n{"step": 0, "prompt": ["a"], "text": "b"}\n')
    assert "transfer_gain" in [f.kind for f in diagnose_run(tmp_path / "run")]
    assert main(["report", str(tmp_path / "run")]) == 0
    with (tmp_path / "run" / "metrics.jsonl").open("a") as metrics:  # as the trainer marks non-finite steps; no summary says so
        metrics.write('{"step": 12, "train_loss": NaN, "skipped": true}\n{"step": 13, "train_loss": NaN, "skipped": true}\n')
    unstable = {f.kind: f for f in diagnose_run(tmp_path / "run")}["instability"]
    assert unstable.evidence["non_finite_steps"] == 2
    (tmp_path / "run" / "summary.json").write_text('{"base_val_loss": "abc", "best_val_loss": [1], "lr": {}, "skipped_steps": "x"}')
    (tmp_path / "run" / "config.yaml").write_text("model: {method: [lora]}\ndistill: {teacher: t, alpha: x, student: [1]}\n")
    assert "transfer_gain" in [f.kind for f in diagnose_run(tmp_path / "run")]
    assert main(["report", str(tmp_path / "run")]) == 0


def test_diagnose_needs_a_run_directory(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"step": "x"}\nnot json\n')
    assert main(["diagnose", str(tmp_path)]) == 0
    assert "no findings" in capsys.readouterr().out


def test_validation_too_small_gives_the_uncertainty_and_the_tokens_needed():
    findings = diagnose(history(FALLING, [3.0, 2.0]), RunFacts(val_tokens=2_500, val_loss_std=2.5))
    finding = next(f for f in findings if f.kind == "validation_too_small")
    assert finding.evidence["relative_error"] == pytest.approx(0.05)
    assert finding.evidence["tokens_needed"] == 15_625
    assert "validation_too_small" not in kinds(diagnose(history(FALLING, [3.0, 2.0]), RunFacts(val_tokens=100_000, val_loss_std=2.5)))


def test_memory_near_the_limit_and_room_for_a_larger_batch():
    rows = history(FALLING, [3.0, 2.0])
    for row in rows:
        row["rss_mb"] = 7_600.0
    tight = next(f for f in diagnose(rows, RunFacts(micro_batch_size=8, memory_before_training_mb=2_000, device_memory_mb=8_000))
                 if f.kind == "memory")
    assert tight.severity == "warning" and tight.advice[0].key == "train.micro_batch_size" and tight.advice[0].value == 6
    roomy = next(f for f in diagnose(rows, RunFacts(micro_batch_size=4, memory_before_training_mb=2_000, device_memory_mb=80_000))
                 if f.kind == "memory")
    assert roomy.severity == "info" and roomy.evidence["micro_batch_that_fits"] == int((0.85 * 80_000 - 2_000) // 1_400)
    accumulating = RunFacts(micro_batch_size=4, grad_accum=8, memory_before_training_mb=2_000, device_memory_mb=80_000)
    assert next(f for f in diagnose(rows, accumulating) if f.kind == "memory").advice[0].value == 32  # the batch, not past it
    whole_batch = RunFacts(micro_batch_size=4, grad_accum=1, memory_before_training_mb=2_000, device_memory_mb=80_000)
    assert not [f for f in diagnose(rows, whole_batch) if f.kind == "memory"]  # a larger micro-batch would be a larger batch


def test_memory_figures_damaged_in_a_runs_files_say_nothing_rather_than_crash():
    rows = history(FALLING, [3.0, 2.0])
    for row in rows:
        row["rss_mb"] = math.nan
    assert "memory" not in kinds(diagnose(rows, RunFacts(micro_batch_size=8, memory_before_training_mb=2_000, device_memory_mb=8_000)))
    for row in rows:
        row["rss_mb"] = 7_600.0
    for facts in (RunFacts(micro_batch_size=8, memory_before_training_mb=math.nan, device_memory_mb=8_000),
                  RunFacts(micro_batch_size=8, memory_before_training_mb=2_000, device_memory_mb=math.inf)):
        assert "memory" not in kinds(diagnose(rows, facts))



def test_a_real_run_made_to_overfit_is_caught_stopped_early_and_keeps_its_best_step(tiny_gpt2, tmp_path):
    """Word salad: the order of words carries nothing to learn, so once the model knows which words are common,
    every further step memorizes the few training documents and the validation loss climbs."""
    import random

    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.data import prepare_data
    from tunesmith.models import load_tokenizer, resolve_model, tunesmith_home
    from tunesmith.tasks.loss import validation_loss


    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(16)]
    data = write_jsonl(tmp_path / "salad.jsonl", docs)
    cfg = run_config(tiny_gpt2, data, tmp_path / "run", lr=1e-2, epochs=400, max_steps=None, eval_every=5, patience=8,
                     micro_batch_size=8, warmup_steps=5, weight_decay=0.0)
    cfg.data.val_fraction = 0.25
    cfg.clean.dedup_near = False
    from tunesmith import train

    summary = train(cfg)
    assert summary["stopped_because"] == "early_stop"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    assert summary["best_step"] == min(evals, key=evals.get) and summary["best_step"] < summary["steps"]
    assert evals[summary["steps"]] > evals[summary["best_step"]]

    findings = {f.kind: f for f in diagnose_run(tmp_path / "run")}
    assert "overfitting" in findings and findings["overfitting"].severity == "warning"
    assert findings["overfitting"].evidence["best_step"] == summary["best_step"]

    resolved = resolve_model(str(tmp_path / "run"))
    prepared = prepare_data(cfg.data, cfg.clean, load_tokenizer(resolved), tunesmith_home())
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    measured = validation_loss(final, prepared.split("val"), 4, torch.device("cpu"), "fp32")
    assert measured.loss == pytest.approx(evals[summary["best_step"]], abs=1e-4)  # final/ is the best step, not the last


def test_run_files_an_editor_saved_with_a_byte_order_mark_still_read(tmp_path):
    from tunesmith.rundir.folder import read_json_object, read_metric_rows, read_yaml_object

    bom = b"\xef\xbb\xbf"
    (tmp_path / "summary.json").write_bytes(bom + b'{"best_step": 4}')
    (tmp_path / "metrics.jsonl").write_bytes(bom + b'{"step": 0, "val_loss": 5.7}\n{"step": 4, "val_loss": 5.1}\n')
    (tmp_path / "config.yaml").write_bytes(bom + b"train:\n  lr: 0.001\n")
    assert read_json_object(tmp_path / "summary.json") == {"best_step": 4}
    assert [row["step"] for row in read_metric_rows(tmp_path / "metrics.jsonl")] == [0, 4]
    assert read_yaml_object(tmp_path / "config.yaml") == {"train": {"lr": 0.001}}


def test_run_files_that_are_not_regular_files_read_as_absent(tmp_path):
    """A FIFO would block a reader for ever, and a link to /dev/zero never ends."""
    import os

    from tunesmith.rundir.folder import read_json_object, read_yaml_object

    os.mkfifo(tmp_path / "config.yaml")
    (tmp_path / "summary.json").symlink_to("/dev/zero")
    assert read_yaml_object(tmp_path / "config.yaml") == {} and read_json_object(tmp_path / "summary.json") == {}

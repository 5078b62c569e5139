"""Tracking: metrics.jsonl fields, TensorBoard event files, sample generations; trackers that are not installed."""

import json

from tunesmith import train
from tunesmith.cli import main

from helpers import run_config



def test_metrics_tensorboard_and_samples(tiny_llama, corpus_file, tmp_path):
    run = tmp_path / "run"
    train(run_config(tiny_llama, corpus_file, run, max_steps=8, eval_every=4))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"train_loss", "lr", "grad_norm", "tokens_per_s", "rss_mb"} <= set(rows[1])
    assert 0 <= rows[0]["val_accuracy"] <= 1 and "val_accuracy" in rows[4]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert {"train_loss", "val_loss", "val_ppl", "grad_norm", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val_loss")] == [0, 4, 8]

    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert sorted({s["step"] for s in samples}) == [0, 4, 8]
    prompts = [s["prompt"] for s in samples if s["step"] == 0]
    assert len(prompts) == 3 and prompts == [s["prompt"] for s in samples if s["step"] == 8]


def test_configured_prompts_and_no_tensorboard(tiny_gpt2, corpus_file, tmp_path):
    cfg = run_config(tiny_gpt2, corpus_file, tmp_path / "run", max_steps=2)
    cfg.monitor.tensorboard = False
    cfg.monitor.sample_prompts = ["reset the hub"]
    train(cfg)
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert {s["prompt"] for s in samples} == {"reset the hub"} and not (tmp_path / "run" / "tb").exists()


def test_an_enabled_tracker_that_is_not_installed_is_a_config_error(tiny_gpt2, corpus_file, tmp_path, capsys):
    code = main(["train", "--model", str(tiny_gpt2), "--data", str(corpus_file), "--block-size", "32", "--out", str(tmp_path / "r"),
                 "--set", "monitor.wandb=true", "--max-steps", "1"])
    assert code == 2 and "monitor.wandb: the wandb package is not installed" in capsys.readouterr().err

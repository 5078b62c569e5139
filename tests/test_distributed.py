"""DDP under torchrun with 2 CPU processes (gloo): the same training as one process with twice the micro-batch, and resume."""

import json
import os
import subprocess
import sys

from pathlib import Path

import pytest

from helpers import cut_run, losses, make_corpus, write_jsonl



def _launch(processes: int, model, data, out, micro: int, steps: int, *extra: str, cwd: Path | None = None) -> None:
    """Runs in the shared cache next to the run directories, so the two launches prepare the data once.

    With `out` None the run takes its default directory under `cwd`/runs."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "tunesmith", "train"] if processes > 1 else [sys.executable, "-m", "tunesmith", "train"]
    command += ["--out", str(out)] if out is not None else []
    command += ["--model", str(model), "--data", str(data), "--block-size", "32", "--lr", "3e-3",
                "--batch-size", str(micro), "--max-steps", str(steps), "--set", "train.precision=fp32", "--set", "model.dropout=0.0",
                "--set", "train.eval_every=3", "--set", "train.patience=null", "--set", "train.keep_last=10", *extra]
    env = dict(os.environ, TUNESMITH_HOME=str((Path(out).parent if out is not None else cwd) / "home"))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("(report.html, summary.json)") == 1  # one process speaks for the run


@pytest.fixture(scope="module")
def ddp_run(tiny_models, tmp_path_factory):
    """One 2-process run shared by the tests below (process start-up dominates their cost).

    It takes the default run directory: rank 0 names it and both ranks use it, so one folder holds the whole run.
    """

    root = tmp_path_factory.mktemp("ddp")
    data = write_jsonl(root / "corpus.jsonl", make_corpus(120))
    _launch(2, tiny_models["llama"], data, None, 2, 8, cwd=root)
    runs = list((root / "runs").iterdir())
    assert len(runs) == 1 and all((runs[0] / name).exists() for name in ("summary.json", "final", "report.html"))
    runs[0].rename(root / "ddp")
    return root, data


def test_two_processes_match_one_process_with_twice_the_micro_batch(ddp_run, tiny_models):
    root, data = ddp_run
    _launch(1, tiny_models["llama"], data, root / "single", 4, 8)
    assert losses(root / "ddp") == pytest.approx(losses(root / "single"), abs=1e-5)
    ddp_rows = [json.loads(line) for line in (root / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len(ddp_rows) == 9, "rank 0 alone writes metrics"
    assert (root / "ddp" / "final" / "config.json").is_file()


def test_a_ddp_run_resumes_exactly(ddp_run, tiny_models):
    root, data = ddp_run
    cut = cut_run(root / "ddp", root / "cut", last_step=3)
    assert sorted(p.name for p in (cut / "checkpoints" / "step-0000003").iterdir()) == [
        "rng-rank0.pt", "rng-rank1.pt", "state.json", "trainable.safetensors", "training_state.pt"]
    _launch(2, tiny_models["llama"], data, cut, 2, 8, "--resume")
    assert losses(cut) == pytest.approx(losses(root / "ddp"), abs=1e-6)


def test_fsdp_two_processes_match_one_process(ddp_run, tiny_models):
    """FSDP2 shards every block's parameters across the 2 processes; the updates are the same as unsharded."""
    root, data = ddp_run
    _launch(2, tiny_models["llama"], data, root / "fsdp", 2, 8, "--set", "train.distributed=fsdp")
    if not (root / "single").exists():
        _launch(1, tiny_models["llama"], data, root / "single", 4, 8)
    assert losses(root / "fsdp") == pytest.approx(losses(root / "single"), abs=1e-5)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(root / "fsdp" / "final") is not None
    cut = cut_run(root / "fsdp", root / "fsdp-cut", last_step=3)
    _launch(2, tiny_models["llama"], data, cut, 2, 8, "--set", "train.distributed=fsdp", "--resume")
    assert losses(cut) == pytest.approx(losses(root / "fsdp"), abs=1e-6)


def test_dpo_under_ddp_matches_one_process(tiny_models, tmp_path):
    from test_preference import ordered_pairs, write_rows

    data = write_rows(tmp_path / "pairs.jsonl", ordered_pairs(60))
    extra = ("--task", "preference", "--set", "data.block_size=128")
    _launch(2, tiny_models["llama"], data, tmp_path / "ddp", 2, 6, *extra)
    _launch(1, tiny_models["llama"], data, tmp_path / "single", 4, 6, *extra)
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), abs=1e-5)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["task"] == "preference" and summary["processes"] == 2


def test_grpo_under_ddp_matches_one_process(tiny_models, tmp_path):
    """Each rank samples its prompts' groups with the prompts' own seeds: the same completions, the same update."""
    from test_grpo import prompt_file

    data = prompt_file(tmp_path / "prompts.txt")
    extra = ("--task", "grpo", "--set", "data.block_size=64", "--set", "grpo.max_new_tokens=8", "--set", "grpo.group_size=4",
             "--set", "grpo.rewards=[{regex: e}, {length: 4}]", "--set", "monitor.general_probe=none",
             "--set", "grpo.target_kl=0.0001", "--set", "grpo.kl_horizon=8")  # the penalty adapts to the KL of both ranks' completions
    _launch(2, tiny_models["llama"], data, tmp_path / "ddp", 2, 4, *extra)
    _launch(1, tiny_models["llama"], data, tmp_path / "single", 4, 4, *extra)
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), abs=1e-5)
    betas = lambda run: [row["beta"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "beta" in row]  # noqa: E731
    assert len(betas(tmp_path / "ddp")) == 4 and betas(tmp_path / "ddp") == pytest.approx(betas(tmp_path / "single"), rel=1e-5)
    rounds = lambda run: [{k: row[k] for k in ROUND_METRICS} for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                          if "reward" in row]
    ddp, single = rounds(tmp_path / "ddp"), rounds(tmp_path / "single")
    assert len(ddp) == len(single) == 4
    for two, one in zip(ddp, single):
        assert two == pytest.approx(one, rel=1e-6)  # both ranks' groups, not rank 0's
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["task"] == "grpo" and summary["processes"] == 2


ROUND_METRICS = ("reward", "reward/regex", "reward/length", "reward_std", "equal_groups", "completion_length")


def test_distillation_under_ddp_matches_one_process(tiny_models, tmp_path):
    """Each rank's frozen teacher scores that rank's rows: the same divergences, the same update."""
    from helpers import finished_run

    (tmp_path / "teacher").mkdir()
    teacher, data = finished_run(tiny_models["llama"], tmp_path / "teacher")
    extra = ("--set", f"distill.teacher={teacher}", "--set", "distill.alpha=0.7", "--set", "distill.temperature=2.0")
    _launch(2, tiny_models["llama"], data, tmp_path / "ddp", 2, 6, *extra)
    _launch(1, tiny_models["llama"], data, tmp_path / "single", 4, 6, *extra)
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), abs=1e-5)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["distill"]["teacher"] == str(teacher)

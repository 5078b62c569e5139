import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith import load_config, train
from tunesmith.errors import UserError
from tunesmith.training.optim import lr_factor

from helpers import cut_run, losses, make_corpus, run_config, write_jsonl



@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_loss_falls_and_final_model_loads_in_plain_transformers(kind, tiny_models, corpus_file, tmp_path):
    summary = train(run_config(tiny_models[kind], corpus_file, tmp_path / "run", max_steps=30, eval_every=10))
    assert summary["best_val_loss"] < summary["base_val_loss"] - 0.5
    assert summary["steps"] == 30 and summary["stopped_because"] == "max_steps"
    for key in ("base_val_ppl", "best_val_ppl", "best_step", "tokens_seen", "train_seconds", "eval_seconds", "tokens_per_s"):
        assert key in summary
    assert summary["tokens_seen"] == 30 * 4 * 32
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "epoch", "train_loss", "lr", "tokens_per_s"} <= set(rows[1])
    assert [r["step"] for r in rows if "val_ppl" in r] == [0, 10, 20, 30]
    final = tmp_path / "run" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert (final / "model.safetensors").is_file() and (final / "generation_config.json").is_file()
    ids = tokenizer("reset the hub", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == model.config.vocab_size


def test_runs_repeat_exactly_on_cpu(tiny_gpt2, corpus_file, tmp_path):
    train(run_config(tiny_gpt2, corpus_file, tmp_path / "a", max_steps=5))
    train(run_config(tiny_gpt2, corpus_file, tmp_path / "b", max_steps=5))
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_epochs_and_max_steps_whichever_ends_first(tiny_gpt2, corpus_file, tmp_path):
    summary = train(run_config(tiny_gpt2, corpus_file, tmp_path / "run", max_steps=1000, epochs=1))
    assert summary["stopped_because"] == "epochs" and summary["epochs"] == 1.0


def test_early_stop_after_patience(tiny_gpt2, corpus_file, tmp_path):
    summary = train(run_config(tiny_gpt2, corpus_file, tmp_path / "run", lr=0.5, grad_clip=None, max_steps=60, eval_every=2, patience=2))
    assert summary["stopped_because"] == "early_stop" and summary["steps"] < 60


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    factors = [lr_factor(s, 4, 20, 0.1) for s in range(20)]
    assert factors[0] < factors[3] < factors[4] == 1.0
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert factors[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 15 / 16)).item()))


def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_run(tiny_gpt2, corpus_file, tmp_path):
    """Across an epoch boundary, with gradient accumulation and dropout (GPT-2 has dropout on)."""
    settings = {"max_steps": 16, "eval_every": 3, "grad_accum": 2, "keep_last": 10}
    whole = tmp_path / "whole"
    train(run_config(tiny_gpt2, corpus_file, whole, **settings))
    cut = cut_run(whole, tmp_path / "cut", last_step=6)  # as if killed at step 8, after the checkpoint at step 6
    cfg = run_config(tiny_gpt2, corpus_file, cut, **settings)
    summary = train(cfg, resume=True)
    expected, got = losses(whole), losses(cut)
    assert summary["steps"] == 16 and sorted(got) == list(range(1, 17))
    assert got == pytest.approx(expected, abs=1e-6)
    drift = {key: json.loads((key / "summary.json").read_text())["forgetting"]["best_drift_nats"] for key in (whole, cut)}
    assert drift[cut] == pytest.approx(drift[whole], abs=1e-6) and drift[whole] != 0.0  # the base's probe figures come back


def test_resume_without_checkpoint_and_rerun_into_a_used_dir_are_user_errors(tiny_gpt2, corpus_file, tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        train(run_config(tiny_gpt2, corpus_file, tmp_path / "none"), resume=True)
    train(run_config(tiny_gpt2, corpus_file, tmp_path / "run", max_steps=2))
    with pytest.raises(UserError, match="already holds a run"):
        train(run_config(tiny_gpt2, corpus_file, tmp_path / "run", max_steps=2))


def _cli(*args):
    return [sys.executable, "-m", "tunesmith", *map(str, args)]


def _train_args(model, data, out, steps):
    return ["train", "--model", model, "--data", data, "--out", out, "--block-size", 32, "--max-steps", steps, "--lr", 3e-3,
            "--set", "train.precision=fp32", "--set", "train.eval_every=50", "--set", "train.save_every=5", "--set", "train.patience=null"]


def _wait_for_checkpoint(process, run_dir, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if any((run_dir / "checkpoints").glob("step-*/state.json")):
            return True
        time.sleep(0.005)
    return False


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tiny_llama, corpus_file, tmp_path):
    steps = 150
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_cli(*_train_args(tiny_llama, corpus_file, whole, steps)), check=True, capture_output=True)
    process = subprocess.Popen(_cli(*_train_args(tiny_llama, corpus_file, killed, steps)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait_for_checkpoint(process, killed), "the run ended before a checkpoint could be awaited"
    time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(losses(killed))
    assert done_before < steps
    subprocess.run(_cli(*_train_args(tiny_llama, corpus_file, killed, steps), "--resume"), check=True, capture_output=True)
    assert losses(killed) == pytest.approx(losses(whole), abs=1e-6)


def test_sigterm_saves_a_checkpoint_and_exits_143(tiny_llama, corpus_file, tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(_cli(*_train_args(tiny_llama, corpus_file, run_dir, 100000)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert _wait_for_checkpoint(process, run_dir)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 143
    assert "--resume" in output
    state = json.loads(sorted((run_dir / "checkpoints").glob("step-*/state.json"))[-1].read_text())
    assert state["step"] == max(losses(run_dir))


def test_sigterm_before_the_first_checkpoint_says_to_start_again(tiny_llama, corpus_file, tmp_path, monkeypatch, capsys):
    """Stopped during the base evaluation: no checkpoint to resume from, one line saying so, and the same command runs."""
    from tunesmith.cli import main
    from tunesmith.training.evaluator import Evaluator

    evaluate = Evaluator.evaluate

    def terminated(self, state):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs between bytecodes, inside this call
        return evaluate(self, state)

    monkeypatch.setattr(Evaluator, "evaluate", terminated)
    command = [str(a) for a in _train_args(tiny_llama, corpus_file, tmp_path / "run", 6)]
    with pytest.raises(SystemExit) as stopped:
        main(command)
    assert stopped.value.code == 143  # as a SIGTERM during training exits
    output = capsys.readouterr()
    assert "stopped before the first checkpoint, so there is nothing to resume" in output.out and not output.err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert main(["train", "--out", str(tmp_path / "run"), "--resume"]) == 2  # the hint printed at set-up, followed
    assert "no checkpoint in" in capsys.readouterr().err
    monkeypatch.setattr(Evaluator, "evaluate", evaluate)
    assert main(command) == 0


def test_the_last_steps_tokens_per_second_counts_its_training_time_only(tiny_llama, corpus_file, tmp_path, monkeypatch, capsys):
    """Evaluation, samples and checkpoints at the last step are timed apart, not charged to its tokens/s."""
    import time

    from tunesmith.training.evaluator import Evaluator

    slow = Evaluator.evaluate

    def evaluate_slowly(self, state):
        time.sleep(0.5)
        return slow(self, state)

    monkeypatch.setattr(Evaluator, "evaluate", evaluate_slowly)
    train(run_config(tiny_llama, corpus_file, tmp_path / "run", max_steps=6, eval_every=3, log_every=1))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    speeds = [row["tokens_per_s"] for row in rows if "tokens_per_s" in row]
    assert speeds[-1] > 0.2 * sorted(speeds)[len(speeds) // 2]  # half a second of evaluation would cut it a hundredfold
    last_line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step 6/6")][-1]
    assert f"{speeds[-1]:,.0f} tok/s" in last_line


def test_a_second_trainer_in_a_live_run_folder_is_refused_naming_the_pid(tiny_llama, corpus_file, tmp_path):
    """Two trainers would write the same checkpoints and metrics.jsonl; a killed holder leaves the folder free."""
    run_dir = tmp_path / "run"
    endless = [*_train_args(tiny_llama, corpus_file, run_dir, 100000), "--epochs", 10000]  # still training when the second starts
    first = subprocess.Popen(_cli(*endless), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for_checkpoint(first, run_dir)
        second = subprocess.run(_cli(*endless, "--resume"), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"training process {first.pid}" in lines[0], second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    from tunesmith.rundir.process import RunLock, lock_holder

    assert lock_holder(run_dir) is None
    with RunLock(run_dir):
        assert lock_holder(run_dir) == os.getpid()


def test_a_resume_from_another_folder_reads_the_runs_relative_paths_where_it_started(tiny_gpt2, tiny_llama, tmp_path, monkeypatch):
    """Weighted data, validation file, probe file and a local model, all relative; the folder resumed from holds a
    different model under the same relative name, which must not be picked up."""
    import shutil

    from tunesmith.rundir.process import read_process

    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    shutil.copytree(tiny_gpt2, start / "models" / "tiny")
    shutil.copytree(tiny_llama, elsewhere / "models" / "tiny")
    docs = make_corpus(160)
    write_jsonl(start / "corpus.jsonl", docs[:100])
    write_jsonl(start / "more.jsonl", docs[100:140])
    write_jsonl(start / "val.jsonl", docs[140:])
    write_jsonl(start / "probe.jsonl", make_corpus(30, seed=7, words_per_doc=16))  # pieces within the tiny context
    overrides = [("model.name", "models/tiny"), ("data.train", [{"path": "corpus.jsonl", "weight": 0.7}, {"path": ["more.jsonl"], "weight": 0.3}]),
                 ("data.val", "val.jsonl"), ("monitor.general_probe", "probe.jsonl"), ("data.block_size", 32),
                 ("train.lr", 3e-3), ("train.max_steps", 8), ("train.eval_every", 4), ("train.keep_last", 10),
                 ("train.precision", "fp32"), ("train.patience", None)]
    monkeypatch.chdir(start)
    train(load_config(None, overrides + [("output.dir", str(tmp_path / "whole"))]))
    cut = cut_run(tmp_path / "whole", tmp_path / "cut", last_step=4)
    monkeypatch.chdir(elsewhere)
    summary = train(load_config(cut / "config.yaml", [("output.dir", str(cut))]), resume=True)
    assert summary["steps"] == 8
    assert losses(cut) == pytest.approx(losses(tmp_path / "whole"), abs=1e-6)
    assert os.path.samefile(read_process(cut)["cwd"], start)
    again = cut_run(tmp_path / "whole", tmp_path / "again", last_step=4)
    start.rename(tmp_path / "moved")
    with pytest.raises(UserError, match=f"started in {start} \\(as {again / 'process.json'} records\\).*gone.*by absolute path"):
        train(load_config(again / "config.yaml", [("output.dir", str(again))]), resume=True)


def test_the_run_lock_names_its_holder_and_dies_with_it(tmp_path):
    from tunesmith.rundir.folder import LOCK
    from tunesmith.rundir.process import RunLock, lock_holder

    run_dir = tmp_path / "runs" / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom tunesmith.rundir.process import RunLock\n"
                               f"lock = RunLock(Path({str(run_dir)!r}))\nlock.acquire()\nprint('held', flush=True)\ntime.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"training process {holder.pid} is training in it"):
            RunLock(run_dir).acquire()
        assert lock_holder(run_dir) == holder.pid
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(run_dir) is None and (run_dir / LOCK).is_file()
    with RunLock(run_dir):  # the killed holder's file is still there, but the kernel let its lock go
        assert lock_holder(run_dir) == os.getpid()
    shutil.rmtree(tmp_path / "runs")
    with RunLock(run_dir):  # a folder the lock made for a run that never began is taken away with it
        assert (run_dir / LOCK).is_file()
    assert not (tmp_path / "runs").exists()


def test_a_link_a_folder_or_a_pipe_in_place_of_the_lock_file_is_refused_and_left_alone(tmp_path):
    from tunesmith.rundir.folder import LOCK
    from tunesmith.rundir.process import RunLock

    precious = tmp_path / "precious.txt"
    precious.write_text("a user's own file\n")
    for name, make in (("link", lambda path: path.symlink_to(precious)), ("pipe", os.mkfifo),
                       ("dangling", lambda path: path.symlink_to(tmp_path / "nothing")), ("hard", lambda path: os.link(precious, path)),
                       ("folder", lambda path: path.mkdir())):
        run_dir = tmp_path / name
        run_dir.mkdir()
        make(run_dir / LOCK)
        with pytest.raises(UserError, match=f"^{run_dir / LOCK} is not the lock file tunesmith writes .*remove it and run again$"):
            RunLock(run_dir).acquire()
    assert precious.read_text() == "a user's own file\n" and not (tmp_path / "nothing").exists()

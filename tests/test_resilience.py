"""The loop survives: non-finite steps, divergence, out-of-memory, and a crash in the middle of a checkpoint write."""

import json

import pytest
import torch

import tunesmith.training.checkpoint as checkpoint_module
import tunesmith.tasks.loss as loss_module
import tunesmith.training.step as step_module
from tunesmith import train
from tunesmith.errors import UserError
from tunesmith.training.checkpoint import list_checkpoints

from helpers import cut_run, losses, run_config



def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class StepCounter:
    """Counts optimizer steps through forward_backward calls (one micro-batch per step in these runs)."""

    def __init__(self, monkeypatch, make_loss):
        self.calls = 0
        original = step_module.forward_backward

        def counted(loss):
            def patched(batch):
                self.calls += 1
                return make_loss(self.calls, loss(batch))
            patched.module = loss.module
            return patched

        monkeypatch.setattr(step_module, "forward_backward", lambda loss, *args: original(counted(loss), *args))


def test_non_finite_steps_are_skipped_and_counted(tiny_gpt2, corpus_file, tmp_path, monkeypatch):
    StepCounter(monkeypatch, lambda call, loss: loss * float("nan") if call in (3, 5) else loss)
    summary = train(run_config(tiny_gpt2, corpus_file, tmp_path / "run", max_steps=8))
    assert summary["skipped_steps"] == 2 and summary["steps"] == 8
    assert [r["step"] for r in rows(tmp_path / "run") if r.get("skipped")] == [3, 5]


def test_bad_steps_in_a_row_roll_back_with_half_the_learning_rate(tiny_gpt2, corpus_file, tmp_path, monkeypatch, capsys):
    StepCounter(monkeypatch, lambda call, loss: loss * float("nan") if 6 <= call <= 8 else loss)
    summary = train(run_config(tiny_gpt2, corpus_file, tmp_path / "run", max_steps=10, eval_every=4, max_bad_steps=3, warmup_steps=0))
    assert "rolled back to step 4 with the learning rate halved" in capsys.readouterr().out
    assert summary["rollbacks"] == 1 and summary["steps"] == 10
    metric_rows = rows(tmp_path / "run")
    assert [r["step"] for r in metric_rows if "train_loss" in r] == list(range(1, 11))
    before = {r["step"]: r["lr"] for r in rows(tmp_path / "run") if "lr" in r}
    plain = tmp_path / "plain"
    monkeypatch.undo()
    train(run_config(tiny_gpt2, corpus_file, plain, max_steps=10, eval_every=4, warmup_steps=0))
    reference = {r["step"]: r["lr"] for r in rows(plain) if "lr" in r}
    assert before[5] == pytest.approx(reference[5] / 2) and before[3] == pytest.approx(reference[3])
    from tunesmith.training import train_run

    cut = cut_run(tmp_path / "run", tmp_path / "cut", last_step=8)  # its schedule holds the halved rate
    resumed = train_run(run_config(tiny_gpt2, corpus_file, cut, max_steps=10, eval_every=4, max_bad_steps=3, warmup_steps=0),
                        resume=True)
    assert resumed["steps"] == 10 and resumed["rollbacks"] == 1


def test_a_run_that_keeps_diverging_stops_after_its_roll_backs(tiny_gpt2, corpus_file, tmp_path, monkeypatch):
    StepCounter(monkeypatch, lambda call, loss: loss * float("nan") if call > 4 else loss)
    with pytest.raises(UserError, match="diverged again after 8 roll-backs"):
        train(run_config(tiny_gpt2, corpus_file, tmp_path / "run", max_steps=10, eval_every=4, max_bad_steps=2, warmup_steps=0))
    assert (tmp_path / "run" / "checkpoints").is_dir()


def test_rollback_before_any_checkpoint_is_a_clear_error(tiny_gpt2, corpus_file, tmp_path, monkeypatch):
    StepCounter(monkeypatch, lambda call, loss: loss * float("inf"))
    with pytest.raises(UserError, match="before the first checkpoint; lower train.lr"):
        train(run_config(tiny_gpt2, corpus_file, tmp_path / "run", max_steps=10, eval_every=8, max_bad_steps=2))


def test_loss_watchdog_aborts_a_diverging_run(tiny_gpt2, corpus_file, tmp_path, monkeypatch):
    StepCounter(monkeypatch, lambda call, loss: loss * (10.0 if call > 2 else 1.0))
    with pytest.raises(UserError, match="stayed above 3x its first value"):
        train(run_config(tiny_gpt2, corpus_file, tmp_path / "run", max_steps=60, eval_every=100))


def test_out_of_memory_halves_the_micro_batch_with_the_same_math(tiny_llama, corpus_file, tmp_path, monkeypatch, capsys):
    settings = {"max_steps": 6, "micro_batch_size": 4, "grad_accum": 2}
    train(run_config(tiny_llama, corpus_file, tmp_path / "plain", **settings))
    original = step_module.forward_backward
    calls = {"n": 0}

    def fault(model, batch, *args):
        calls["n"] += 1
        if calls["n"] > 5 and batch.size > 1:  # from the third step on, only micro-batches of 1 fit
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(model, batch, *args)

    monkeypatch.setattr(step_module, "forward_backward", fault)
    summary = train(run_config(tiny_llama, corpus_file, tmp_path / "oom", **settings))
    out = capsys.readouterr().out
    assert "retrying the step with micro-batch 2" in out and "retrying the step with micro-batch 1" in out
    assert summary["micro_batch_size"] == 1
    assert losses(tmp_path / "oom") == pytest.approx(losses(tmp_path / "plain"), abs=1e-5)


def test_out_of_memory_at_micro_batch_1_lists_the_options(tiny_llama, corpus_file, tmp_path, monkeypatch):
    def always(*args):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(step_module, "forward_backward", always)
    with pytest.raises(UserError, match="gradient_checkpointing=true, use model.method=lora"):
        train(run_config(tiny_llama, corpus_file, tmp_path / "run", max_steps=2))


def test_evaluation_falls_back_to_a_smaller_batch(tiny_llama, corpus_file, tmp_path, monkeypatch, capsys):
    reference = train(run_config(tiny_llama, corpus_file, tmp_path / "plain", max_steps=2))
    original = loss_module.validation_loss

    def fault(model, blocks, batch_size, *args):
        if batch_size > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(model, blocks, batch_size, *args)

    monkeypatch.setattr(loss_module, "validation_loss", fault)
    summary = train(run_config(tiny_llama, corpus_file, tmp_path / "run", max_steps=2))
    assert "retrying with evaluation batch 1" in capsys.readouterr().out
    assert summary["base_val_loss"] == pytest.approx(reference["base_val_loss"], abs=1e-5)


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tiny_gpt2, corpus_file, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    original = checkpoint_module.save_plain
    saves = {"n": 0}

    def crash_in_second_checkpoint(obj, path):
        saves["n"] += 1
        if saves["n"] == 4:  # each checkpoint saves an RNG file, then the training state
            with open(path, "wb") as handle:
                handle.write(b"half a file")
            raise KeyboardInterrupt("killed mid-write")
        return original(obj, path)

    monkeypatch.setattr(checkpoint_module, "save_plain", crash_in_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(run_config(tiny_gpt2, corpus_file, run_dir, max_steps=12, eval_every=4, keep_last=5))
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-0000004"]
    assert (run_dir / "checkpoints" / "step-0000008.partial").exists()
    summary = train(run_config(tiny_gpt2, corpus_file, run_dir, max_steps=12, eval_every=4, keep_last=5), resume=True)
    assert summary["steps"] == 12
    assert not (run_dir / "checkpoints" / "step-0000008.partial").exists()


def test_deferred_step_records_skips_and_bad_streaks():
    """On a GPU results are read every log_every steps; the accounting must match reading them one by one."""
    from tunesmith.config import RunConfig
    from tunesmith.training.loop import LoopState, account
    from tunesmith.training.run_files import PendingSteps

    pending = PendingSteps()
    outcomes = [(2.0, True), (float("nan"), False), (1.9, True), (float("nan"), False), (float("inf"), False), (float("nan"), False), (1.5, True)]
    for step, (loss, applied) in enumerate(outcomes, 1):
        pending.add({"step": step}, torch.tensor(loss), torch.tensor(applied), torch.tensor(1.0), 100)
    rows = pending.flush()
    assert [r["step"] for r in rows if r.get("skipped")] == [2, 4, 5, 6]
    assert rows[0]["train_loss"] == 2.0 and rows[0]["tokens_per_s"] > 0
    logged, state = [], LoopState()
    cfg = RunConfig.model_validate({"train": {"max_bad_steps": 3}})
    assert account(rows, state, cfg, logged.append) is True
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6] and state.skipped_steps == 4 and state.bad_in_a_row == 3
    assert pending.flush() == []
    assert pending.flush() == []


def test_out_of_memory_is_recognized_in_each_form_it_takes():
    from tunesmith.errors import is_out_of_memory

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory")) and is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("MPS backend out of memory")) and not is_out_of_memory(RuntimeError("shape mismatch"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                                         "you tried to allocate 6710886400 bytes. Error code 12 (Cannot allocate memory)"))

"""Never lose a user's work, never run code from a checkpoint, never show a traceback for what a user can cause."""

import errno
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tunesmith.training.checkpoint as checkpoint_module
from tunesmith import train
from tunesmith.cli import main
from tunesmith.errors import UserError
from tunesmith.rundir.folder import MARKER
from tunesmith.training.checkpoint import list_checkpoints

from helpers import cut_run, losses, make_corpus, one_error_line, run_config, write_jsonl



def cli_args(model, data, *extra):
    return ["--model", str(model), "--data", str(data), "--block-size", "32", "--lr", "3e-3", "--set", "train.precision=fp32",
            "--set", "monitor.sample_count=0", "--set", "monitor.tensorboard=false", *extra]


def resume_args(run_dir):
    return ["train", "--out", str(run_dir), "--resume"]


# --- the default run directory --------------------------------------------------------------------------------------

def test_a_run_without_out_uses_one_directory_to_the_end(tiny_gpt2, corpus_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *cli_args(tiny_gpt2, corpus_file, "--max-steps", "4", "--set", "train.eval_every=2")]) == 0
    printed = capsys.readouterr().out
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and f"run: {Path('runs') / runs[0].name} " in printed
    for name in ("summary.json", "final", "report.html", MARKER):
        assert (runs[0] / name).exists(), name
    assert json.loads((runs[0] / "summary.json").read_text())["run_dir"] == str(Path("runs") / runs[0].name)


# --- work that must not be lost -------------------------------------------------------------------------------------

def test_out_holding_the_users_own_files_is_refused_unless_forced(tiny_gpt2, corpus_file, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes\n")
    (mine / "report.md").write_text("# my report\n")
    args = ["train", *cli_args(tiny_gpt2, corpus_file, "--max-steps", "2", "--out", str(mine))]
    assert main(args) == 2
    one_error_line(capsys, str(mine), "not a tunesmith run", "--force")
    assert (mine / "config.yaml").read_text() == "my own notes\n" and not (mine / MARKER).exists()
    assert main([*args, "--force"]) == 0
    assert (mine / MARKER).is_file() and (mine / "summary.json").is_file()


def test_out_overlapping_the_data_folder_is_refused_even_when_forced(tiny_gpt2, tmp_path, capsys):
    """The run's metrics and samples would be read as training text the next time the data folder is."""
    data = tmp_path / "notes"
    data.mkdir()
    write_jsonl(data / "corpus.jsonl", make_corpus(40))
    for given, out in ((data, data), (data, data / "run"), (data / "**" / "*.jsonl", data / "run"),
                       (data / "*" / "*.jsonl", data / "run"), (data / "*.jsonl", data)):
        assert main(["train", *cli_args(tiny_gpt2, given, "--max-steps", "2", "--out", str(out), "--force")]) == 2
        one_error_line(capsys, "and the data", "overlap", "pick an --out outside the data")
    assert sorted(p.name for p in data.iterdir()) == ["corpus.jsonl"]
    from tunesmith.rundir.folder import check_apart_from_data

    check_apart_from_data(data / "run", [str(data / "*.jsonl")])  # a glob of one level in the folder above reads none of it
    check_apart_from_data(tmp_path / "runs" / "x", ["*.jsonl", str(data / "corpus.jsonl")])


def test_out_naming_a_file_is_refused_before_anything_loads(tiny_gpt2, corpus_file, tmp_path, monkeypatch, capsys):
    import tunesmith.training.loop as loop_module

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model and data were loaded")

    monkeypatch.setattr(loop_module, "Recipe", must_not_run)
    monkeypatch.setattr(loop_module, "settle", must_not_run)
    target = tmp_path / "results.txt"
    target.write_text("keep me\n")
    assert main(["train", *cli_args(tiny_gpt2, corpus_file, "--out", str(target))]) == 2
    one_error_line(capsys, str(target), "is a file")
    assert target.read_text() == "keep me\n"


def test_a_finished_run_is_not_started_over(finished_run, tmp_path, capsys):
    run, data, model = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["train", *cli_args(model, data, "--out", str(copy))]) == 2
    one_error_line(capsys, "already holds a run", "--resume")


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tiny_gpt2, corpus_file, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    original, saves = checkpoint_module.save_file, {"n": 0}

    def full_disk_in_the_second_checkpoint(tensors, path, *args, **kwargs):
        if "checkpoints" in str(path):
            saves["n"] += 1
            if saves["n"] == 2:
                with open(path, "wb") as handle:
                    handle.write(b"\0" * 100)
                raise OSError(errno.ENOSPC, "No space left on device", path)
        return original(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk_in_the_second_checkpoint)
    cfg = run_config(tiny_gpt2, corpus_file, run_dir, max_steps=12, eval_every=4)
    with pytest.raises(UserError, match="No space left on device") as caught:
        train(cfg)
    assert "step-0000004 is intact" in str(caught.value) and "--resume" in str(caught.value)
    monkeypatch.undo()
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-0000004"]  # no .partial left behind
    summary = train(cfg, resume=True)
    assert summary["steps"] == 12


def test_a_file_size_limit_mid_run_is_one_line_and_exit_2(tiny_gpt2, corpus_file, tmp_path):
    """`ulimit -f`: the best weights (about 160 kB) fit under 200 kB, the optimizer state (about 320 kB) does not."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200 * 1024, 200 * 1024))

    command = [sys.executable, "-m", "tunesmith", "train", *cli_args(tiny_gpt2, corpus_file, "--max-steps", "4", "--out",
                                                                     str(tmp_path / "run"), "--set", "train.eval_every=2")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot write checkpoint")
    assert not any(p.name.endswith(".partial") for p in (tmp_path / "run" / "checkpoints").iterdir())


def test_checkpoint_files_and_folders_are_synced_around_the_rename(tmp_path, monkeypatch):
    from tunesmith.rundir import durable

    events = []
    real_fsync, real_rename = os.fsync, Path.rename
    monkeypatch.setattr(durable.os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                         real_fsync(fd)))
    monkeypatch.setattr(Path, "rename", lambda self, target: (events.append(("rename", str(target))), real_rename(self, target))[1])
    partial = tmp_path / "step.partial"
    partial.mkdir()
    (partial / "state.json").write_text("{}")
    durable.replace_dir(partial, tmp_path / "step")
    rename = events.index(("rename", str(tmp_path / "step")))
    synced_before = {path for kind, path in events[:rename] if kind == "fsync"}
    assert {str(partial / "state.json"), str(partial)} <= synced_before
    assert ("fsync", str(tmp_path)) in events[rename:]


@pytest.mark.parametrize("damaged", ["trainable.safetensors", "training_state.pt", "state.json"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(damaged, finished_run, tmp_path, capsys):
    run, _, _ = finished_run
    cut = cut_run(run, tmp_path / "cut", last_step=8)
    path = cut / "checkpoints" / "step-0000008" / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert main(resume_args(cut)) == 0
    out = capsys.readouterr().out
    assert f"step-0000008 is damaged: {damaged}" in out and "resumed from" in out and "step-0000004 at step 4" in out
    assert losses(cut) == pytest.approx(losses(run), abs=1e-6)
    assert (cut / "checkpoints" / "step-0000008.damaged").is_dir()


@pytest.mark.parametrize("damage", ["state_types", "shape", "rng"])
def test_a_checkpoint_not_as_tunesmith_writes_it_is_named(damage, finished_run, tmp_path, capsys):
    """Readable files that hold the wrong things: a state of other types, a tensor of another shape, a missing RNG state."""
    from safetensors.torch import load_file, save_file

    run, _, _ = finished_run
    cut = cut_run(run, tmp_path / "cut", last_step=8)
    newest = cut / "checkpoints" / "step-0000008"
    if damage == "state_types":
        (newest / "state.json").write_text('{"step": "twenty", "foo": [1, 2]}')
    elif damage == "rng":
        (newest / "rng-rank0.pt").unlink()
    else:
        tensors = load_file(str(newest / "trainable.safetensors"))
        name = next(iter(tensors))
        save_file({**tensors, name: tensors[name].reshape(-1)[:3].clone()}, str(newest / "trainable.safetensors"))
        assert main(resume_args(cut)) == 2
        one_error_line(capsys, "does not fit this model", f"{name} has shape (3,)", "move that checkpoint aside")
        return
    assert main(resume_args(cut)) == 0
    out = capsys.readouterr().out
    assert "step-0000008 is damaged" in out and "step-0000004 at step 4" in out
    assert losses(cut) == pytest.approx(losses(run), abs=1e-6)


def test_a_saved_config_never_switches_on_a_models_own_code(finished_run, tmp_path, capsys):
    """A run folder may come from anyone: its config.yaml's trust_remote_code needs the command's own --set."""
    run, _, _ = finished_run
    cut = cut_run(run, tmp_path / "cut", last_step=8)
    saved = cut / "config.yaml"
    saved.write_text(saved.read_text().replace("trust_remote_code: false", "trust_remote_code: true"))
    assert main(["eval", str(cut)]) == 2
    one_error_line(capsys, "sets model.trust_remote_code: true", "--set model.trust_remote_code=true")
    assert main(resume_args(cut)) == 2
    one_error_line(capsys, "never run a model's own code")


def test_an_edited_learning_rate_in_the_runs_config_is_refused(finished_run, tmp_path, capsys):
    """The checkpoint restores the schedule: a rate changed in config.yaml would be ignored while the file showed it."""
    run, _, _ = finished_run
    cut = cut_run(run, tmp_path / "cut", last_step=8)
    saved = cut / "config.yaml"
    text = saved.read_text()
    lr = re.search(r"\n  lr: (\S+)\n", text).group(1)
    saved.write_text(text.replace(f"\n  lr: {lr}\n", "\n  lr: 0.5\n"))
    assert main(resume_args(cut)) == 2
    one_error_line(capsys, "train.lr is 0.5 here but the run that saved", f"started at {float(lr):g}", "in the run's config.yaml")
    decay = re.search(r"\n  weight_decay: (\S+)\n", text).group(1)
    saved.write_text(text.replace(f"\n  weight_decay: {decay}\n", "\n  weight_decay: 0.9\n"))
    assert main(resume_args(cut)) == 2
    one_error_line(capsys, "train.weight_decay is 0.9 here but", "in the optimizer state")


def test_with_every_checkpoint_damaged_resume_is_one_line(finished_run, tmp_path, capsys):
    run, _, _ = finished_run
    cut = cut_run(run, tmp_path / "cut", last_step=8)
    for checkpoint in list_checkpoints(cut):
        (checkpoint / "state.json").write_text('{"step": ')
    assert main(resume_args(cut)) == 2
    one_error_line(capsys, "every checkpoint", "damaged")


def test_a_torn_last_metrics_line_is_dropped_and_counted(finished_run, tmp_path, capsys):
    run, _, _ = finished_run
    cut = cut_run(run, tmp_path / "cut", last_step=8)
    with (cut / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 9, "train_lo')
    assert main(resume_args(cut)) == 0
    assert "dropped 1 torn line" in capsys.readouterr().out
    assert losses(cut) == pytest.approx(losses(run), abs=1e-6)


def test_resume_with_another_method_names_the_setting(finished_run, tmp_path, capsys):
    run, _, _ = finished_run
    cut = cut_run(run, tmp_path / "cut", last_step=8)
    assert main([*resume_args(cut), "--set", "model.method=lora"]) == 2
    one_error_line(capsys, "model.method is 'lora' here but 'full'", "config.yaml")
    assert main([*resume_args(cut), "--lr", "0.5"]) == 2  # the checkpoint's schedule would keep the old rate unsaid
    one_error_line(capsys, "train.lr is 0.5 here", "the learning-rate schedule")
    assert main([*resume_args(cut), "--set", "train.betas=[0.5, 0.6]"]) == 2  # the optimizer's state would keep the old ones
    one_error_line(capsys, "train.betas is [0.5, 0.6] here", "how AdamW steps")


def test_a_setting_of_the_loss_or_the_best_step_is_refused_on_resume_even_edited_into_config_yaml(finished_run, tmp_path,
                                                                                                capsys):
    """classify.metric changed midway compares scores on two scales (the trained model lost to the base model's best),
    preference.beta rescales the loss the best step is chosen by; each checkpoint records them as the run started."""
    import yaml

    from tunesmith.training.resume import check_checkpoint_settings

    run, _, _ = finished_run
    cut = cut_run(run, tmp_path / "cut", last_step=8)
    assert main([*resume_args(cut), "--set", "classify.metric=val_loss"]) == 2
    one_error_line(capsys, "classify.metric is 'val_loss' here but 'macro_f1'", "which evaluation is the best step")
    assert main([*resume_args(cut), "--set", "preference.beta=5"]) == 2
    one_error_line(capsys, "preference.beta is 5.0 here but 0.1", "what the loss is")
    saved = yaml.safe_load((cut / "config.yaml").read_text())
    saved["preference"]["method"] = "orpo"
    (cut / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert main(resume_args(cut)) == 2
    one_error_line(capsys, "preference.method is orpo here but was dpo when", "set it back to dpo")
    state = json.loads((cut / "checkpoints" / "step-0000008" / "state.json").read_text())
    assert "model.name" not in state["decided"]  # a moved project names its model anew in config.yaml
    with pytest.raises(UserError, match="state.json is damaged"):
        check_checkpoint_settings(saved, {**state, "decided": ["dpo"]}, cut / "checkpoints" / "step-0000008")


@pytest.mark.parametrize("changed", ["data.val_fraction=0.3", "train.eval_max_blocks=1"])
def test_resume_on_other_validation_text_is_refused_before_the_run_is_touched(finished_run, tmp_path, capsys, changed):
    """A setting changed on resume that shapes the validation text would score the later evaluations on other text."""
    run, _, _ = finished_run
    cut = cut_run(run, tmp_path / "cut", last_step=8)
    report, record = (cut / "data_report.json").read_bytes(), (cut / "process.json").read_bytes()
    assert main([*resume_args(cut), "--set", changed]) == 2
    one_error_line(capsys, "the validation text is not the one", "set them back")
    assert (cut / "data_report.json").read_bytes() == report
    assert (cut / "process.json").read_bytes() == record  # refused, not crashed: the run is as it was


def test_a_longer_run_asked_for_on_resume_is_kept_by_the_next_resume(finished_run, tmp_path, capsys):
    """--max-steps raised on resume goes into config.yaml: a crash after it, then a plain --resume, still ends there."""
    import yaml

    run, _, _ = finished_run
    cut = cut_run(run, tmp_path / "cut", last_step=8)
    before = yaml.safe_load((cut / "config.yaml").read_text())
    assert main([*resume_args(cut), "--max-steps", "16"]) == 0
    assert "resume: train.max_steps changed since the run started" in capsys.readouterr().out
    after = yaml.safe_load((cut / "config.yaml").read_text())
    assert after["train"]["max_steps"] == 16
    after["train"]["max_steps"] = before["train"]["max_steps"]
    assert after == before  # nothing else rewritten
    again = cut_run(cut, tmp_path / "again", last_step=12)
    assert main(resume_args(again)) == 0
    assert json.loads((again / "summary.json").read_text())["steps"] == 16


def test_a_finished_run_trained_on_keeps_its_earlier_end_apart(finished_run, tmp_path, capsys):
    """Once a resume trains past the end a run reached, the old final/ and summary are not the run's: left in place,
    eval would score the old model (before and after a crash) as the run's; they are moved aside, not lost."""
    import shutil

    run, _, _ = finished_run
    whole = tmp_path / "whole"
    shutil.copytree(run, whole)
    old_weights = (whole / "final" / "model.safetensors").read_bytes()
    assert main(resume_args(whole)) == 0  # nothing left to train: the end is written again where it was
    assert not list(whole.glob("ended-at-step-*"))
    assert main([*resume_args(whole), "--max-steps", "16"]) == 0
    kept = whole / "ended-at-step-12"
    assert f"resume: the run's earlier end (its final model, summary and report) moved to {kept}" in capsys.readouterr().out
    assert (kept / "final" / "model.safetensors").read_bytes() == old_weights
    assert json.loads((kept / "summary.json").read_text())["steps"] == 12 and (kept / "report.html").is_file()
    assert json.loads((whole / "summary.json").read_text())["steps"] == 16 and (whole / "final" / "config.json").is_file()


def test_an_earlier_end_moved_aside_in_part_is_finished_and_never_overwritten(tmp_path):
    from tunesmith.rundir.folder import set_aside_end

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "summary.json").write_text('{"steps": 7}')
    (run / "ended-at-step-7").mkdir()  # a move cut short after the summary went
    (run / "ended-at-step-7" / "summary.json").write_text('{"steps": 7, "first": true}')
    assert set_aside_end(run, step=5) == run / "ended-at-step-7-2"
    assert json.loads((run / "ended-at-step-7" / "summary.json").read_text())["first"]
    assert sorted(p.name for p in (run / "ended-at-step-7-2").iterdir()) == ["final", "summary.json"]
    (run / "final").mkdir()
    assert set_aside_end(run, step=5) == run / "ended-at-step-5"  # no summary: the checkpoint's step names it
    assert set_aside_end(run, step=5) is None


def test_resume_with_another_preference_objective_is_refused(tmp_path):
    """DPO resumed as ORPO would pick its best step across losses on two scales."""
    from tunesmith.config import build_config
    from tunesmith.errors import UserError
    from tunesmith.training.resume import check_resume_settings

    (tmp_path / "config.yaml").write_text("task: preference\nmodel:\n  name: smollm2-135m\npreference:\n  method: dpo\n")
    resumed = build_config({"task": "preference", "model": {"name": "smollm2-135m"}, "preference": {"method": "orpo"}})
    with pytest.raises(UserError, match="preference.method is 'orpo' here but 'dpo'"):
        check_resume_settings(resumed.model_dump(mode="json"), tmp_path)


def test_resume_with_another_distillation_cache_is_refused_as_another_loss(tmp_path):
    from tunesmith.config import build_config
    from tunesmith.training.resume import check_resume_settings

    (tmp_path / "config.yaml").write_text("model:\n  name: smollm2-135m\ndistill:\n  teacher: t\n  cache: topk\n  topk: 8\n")
    resumed = build_config({"model": {"name": "smollm2-135m"}, "distill": {"teacher": "t", "cache": "topk", "topk": 4}})
    with pytest.raises(UserError, match="distill.topk is 4 here but 8 .* it decides what the loss is"):
        check_resume_settings(resumed.model_dump(mode="json"), tmp_path)


def test_a_run_that_has_not_finished_is_named_with_how_to_finish_it(finished_run, tmp_path, capsys):
    run, _, _ = finished_run
    cut = cut_run(run, tmp_path / "cut", last_step=8)
    for command in (["eval", str(cut)], ["generate", str(cut), "--prompt", "the lamp"]):
        assert main(command) == 2
        one_error_line(capsys, "this tunesmith run has not finished", f"tunesmith train --out {cut} --resume")


def test_a_path_under_home_is_one_setting_written_either_way(tmp_path, monkeypatch):
    """A run started with `model.name: ~/m` resumes with the path spelled out, and the other way round."""
    from tunesmith.rundir.folder import resolve_run_paths

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "m").mkdir(parents=True)
    spelled = {"model": {"name": str(tmp_path / "home" / "m")}, "data": {"train": [str(tmp_path / "home" / "d.txt")]}}
    short = {"model": {"name": "~/m"}, "data": {"train": ["~/d.txt"]}}
    start = tmp_path / "elsewhere"
    assert resolve_run_paths(short, start)["model"] == resolve_run_paths(spelled, start)["model"] == spelled["model"]
    assert resolve_run_paths(short, start)["data"]["train"] == spelled["data"]["train"]
    assert resolve_run_paths({"model": {"name": "~/not-there"}}, start)["model"]["name"] == "~/not-there"  # a hub id stays
    (start / "teacher-run").mkdir(parents=True)
    relative = {"distill": {"teacher": "teacher-run"}, "model": {"name": "org/hub-model"}}
    assert resolve_run_paths(relative, start)["distill"]["teacher"] == str(start / "teacher-run")  # read where it started
    assert resolve_run_paths(relative, start)["model"]["name"] == "org/hub-model"
    from tunesmith.config import build_config
    assert build_config({"output": {"dir": "~/runs/x"}}).run_dir == tmp_path / "home" / "runs" / "x"  # not ./~/runs/x


def test_a_run_reading_only_home_paths_resumes_when_its_start_folder_is_gone(tmp_path, monkeypatch):
    import json

    from tunesmith.config import build_config
    from tunesmith.rundir.folder import as_started
    from tunesmith.training.resume import RECORDED, check_checkpoint_settings

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "process.json").write_text(json.dumps({"cwd": str(tmp_path / "gone")}))
    home = build_config({"data": {"train": ["~/d.txt"]}, "monitor": {"general_probe": "~/p.txt"}, "output": {"dir": str(run)}})
    resumed = as_started(home)
    assert resumed.data.train == [str(tmp_path / "home" / "d.txt")]
    # a checkpoint saved when `~` was recorded as written is the same setting as its expansion
    recorded = {key: None for key in RECORDED} | {"monitor.general_probe": "~/p.txt"}
    check_checkpoint_settings(resumed.model_dump(mode="json"), {"settings": recorded}, run / "checkpoints" / "step-1")
    relative = build_config({"data": {"train": ["d.txt"]}, "output": {"dir": str(run)}})
    with pytest.raises(UserError, match="that folder is gone"):
        as_started(relative)


# --- code that must not run -----------------------------------------------------------------------------------------

class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("file", ["training_state.pt", "rng-rank0.pt"])
def test_a_checkpoint_holding_a_pickle_payload_is_refused_and_never_runs(file, finished_run, tmp_path, capsys):
    import torch

    run, _, _ = finished_run
    cut = cut_run(run, tmp_path / "cut", last_step=8)
    marker = tmp_path / "payload-ran"
    torch.save({"optimizer": Payload(marker), "scheduler": {}, "scaler": None}, cut / "checkpoints" / "step-0000008" / file)
    assert main(resume_args(cut)) == 2
    one_error_line(capsys, file, "refused")
    assert not marker.exists()


# --- one line and exit 2 --------------------------------------------------------------------------------------------

def test_a_config_that_is_not_utf8(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_bytes("train:\n  lr: 1e-4  # d\xe9j\xe0 vu\n".encode("latin-1"))
    assert main(["prepare", str(config)]) == 2
    one_error_line(capsys, str(config), "not UTF-8")


def test_a_truncated_gz(tiny_gpt2, tmp_path, capsys):

    packed = gzip.compress("".join(json.dumps({"text": d}) + "\n" for d in make_corpus(200)).encode())
    data = tmp_path / "corpus.jsonl.gz"
    data.write_bytes(packed[: len(packed) // 2])
    assert main(["prepare", "--model", str(tiny_gpt2), "--data", str(data), "--block-size", "32"]) == 2
    one_error_line(capsys, str(data), "damaged or cut short")


def test_a_model_with_a_truncated_weights_file(tiny_gpt2, tmp_path, capsys):
    broken = tmp_path / "model"
    shutil.copytree(tiny_gpt2, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["generate", str(broken), "--prompt", "hello"]) == 2
    one_error_line(capsys, "damaged or cut short")


@pytest.mark.parametrize("prompt_words, new_tokens", [(200, 10), (2, 500)])
def test_generate_past_the_context_says_how_long_it_is(prompt_words, new_tokens, tiny_gpt2, capsys):
    prompt = " ".join(["lamp"] * prompt_words)
    assert main(["generate", str(tiny_gpt2), "--prompt", prompt, "--max-new-tokens", str(new_tokens)]) == 2
    one_error_line(capsys, "context of 128 tokens")


@pytest.mark.parametrize("flags, named", [(["--generate", "-3"], "--generate takes a number of prompts of at least 1"),
                                          (["--generate", "0"], "--generate takes a number of prompts of at least 1"),
                                          (["--generate", "2", "--max-new-tokens", "100000"], "context of 128 tokens")])
def test_eval_generate_counts_that_mean_nothing_are_refused(flags, named, finished_run, capsys):
    run, data, _ = finished_run
    assert main(["eval", str(run), "--data", str(data), *flags]) == 2
    one_error_line(capsys, named)


def test_an_os_error_anywhere_is_one_line_with_the_path(tmp_path, capsys):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert main(["init", str(folder), "--force"]) == 2
    one_error_line(capsys, str(folder), "folder")


def test_an_unexpected_exception_keeps_its_traceback_under_a_bug_line(monkeypatch, capsys):
    import tunesmith.cli as cli

    monkeypatch.setitem(cli.HANDLERS, "doctor", lambda args: 1 / 0)
    assert main(["doctor"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert err.strip().splitlines()[-1].startswith("error: the traceback above is a bug in tunesmith")


# --- bounded memory on hostile input --------------------------------------------------------------------------------

def test_one_huge_line_in_a_gz_is_dropped_without_being_held(tmp_path):
    """A 60 MB line compresses to about 60 kB; reading it holds at most the byte limit (12 MB at the default)."""
    import tracemalloc

    from tunesmith.config import CleanConfig, DataConfig
    from tunesmith.data.read import DocumentReader
    from tunesmith.data.report import DataReport

    data = tmp_path / "hostile.jsonl.gz"
    with gzip.open(data, "wb", compresslevel=1) as handle:
        handle.write(b'{"text": "first"}\n{"text": "' + b"a" * (60 << 20) + b'"}\n{"text": "last"}\n')
    report = DataReport()
    reader = DocumentReader.for_data(DataConfig(), CleanConfig(), report)
    tracemalloc.start()
    texts = list(reader.read([data]))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert texts == ["first", "last"]
    assert report.removed == {"too_long_chars": 1} and "62,914,5" in report.examples["too_long_chars"][0]
    assert peak < 40 << 20, f"peak {peak / 2**20:.0f} MB"


def test_a_long_text_document_over_the_limit_is_dropped_in_a_txt(tmp_path):
    from tunesmith.config import CleanConfig, DataConfig
    from tunesmith.data.read import DocumentReader
    from tunesmith.data.report import DataReport

    data = tmp_path / "notes.txt"
    data.write_text("short one\n\n" + ("many words here\n" * 6000) + "\nshort two\n")
    report = DataReport()
    reader = DocumentReader.for_data(DataConfig(), CleanConfig(max_chars=100), report)
    assert list(reader.read([data])) == ["short one\n", "short two\n"]
    assert report.removed == {"too_long_chars": 1}


# --- cleaning that keeps what is not markup -------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["the <unk> sat", "a<x>c", "List<String>", "Map<String, List<Integer>>", "mail <EMAIL> now",
                                  "I <3 you", "if a<b && c>d", "List<Map>"])
def test_text_that_is_not_html_survives(text):
    from tunesmith.data.clean import strip_markup

    assert strip_markup(text) == text


@pytest.mark.parametrize("text, cleaned", [("<div class=\"x\">hi</div>", " hi "), ("line<br/>next", "line next"),
                                           ("a <!-- x --> b", "a   b"), ("Tom &amp; Jerry", "Tom & Jerry"),
                                           ("<!DOCTYPE html><P>Hi</P>", "  Hi "), ("a<b>c</b>", "a c ")])
def test_html_is_removed(text, cleaned):
    from tunesmith.data.clean import strip_markup

    assert strip_markup(text) == cleaned


def test_an_unclosed_comment_cleans_in_linear_time():
    import time

    from tunesmith.data.clean import strip_markup

    text = "<!--" * 250_000  # 1 MB
    started = time.perf_counter()
    assert strip_markup(text) == text
    assert time.perf_counter() - started < 1.0


def test_a_head_on_an_architecture_without_one_is_one_line(tmp_path):
    """transformers lists hundreds of architectures when it has no classification head for one; the user reads one line."""
    from transformers import MambaConfig, MambaForCausalLM

    from tunesmith.models.load import load_model
    from tunesmith.models.resolve import resolve_model

    MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, state_size=4)).save_pretrained(tmp_path / "mamba")
    with pytest.raises(UserError) as raised:
        load_model(resolve_model(str(tmp_path / "mamba")), classifier=True, num_labels=2)
    assert "no classification head" in str(raised.value) and "classify.method=generative" in str(raised.value)
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 300


LOAD_THEN_OVERWRITE = """
import sys
from pathlib import Path
from tunesmith.models import load_model, resolve_model
model = load_model(resolve_model(sys.argv[1]))
weights = Path(sys.argv[1]) / "model.safetensors"
weights.write_bytes(weights.read_bytes()[:100])  # truncated in place, as `cp` over it begins
print(sum(float(p.double().sum()) for p in model.parameters()))
"""


def test_a_loaded_model_outlives_its_weights_file_overwritten_in_place(tiny_llama, tmp_path):
    """A page or a run holding a model must not die (SIGBUS) when the file it was read from is rewritten."""
    copy = tmp_path / "model"
    shutil.copytree(tiny_llama, copy)
    done = subprocess.run([sys.executable, "-c", LOAD_THEN_OVERWRITE, str(copy)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])

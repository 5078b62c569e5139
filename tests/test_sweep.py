"""`tunesmith sweep`: the space and its errors, trials as runs, pruning, a crashed trial, an interrupted study continued,
two objectives, and two worker processes sharing one study in SQLite and in a real PostgreSQL."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from helpers import BILLION_LAUGHS, free_port
from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.errors import UserError
from tunesmith.sweep.space import Space, check_points, parse_space
from tunesmith.sweep.plan import plan_sweep
from tunesmith.sweep.run import run_sweep
from tunesmith.sweep.study import SweepSettings


def write_base(tmp_path: Path, model: Path, corpus: Path, **train) -> Path:
    settings = {"max_steps": 6, "eval_every": 2, "micro_batch_size": 4, "lr": 3e-3, "warmup_steps": 0, "patience": None,
                "precision": "fp32", **train}
    config = {"model": {"name": str(model), "method": "lora"}, "data": {"train": [str(corpus)], "block_size": 32},
              "train": settings, "monitor": {"sample_count": 0, "tensorboard": False, "general_probe": "none"}}
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def settings_for(tmp_path: Path, base: Path, space: Path, trials: int, **more) -> SweepSettings:
    name = more.pop("name", "s")
    return SweepSettings(name=name, folder=tmp_path / "sweeps" / name, config=base, overrides=(), space=space, trials=trials,
                         **more)


def results(folder: Path) -> dict:
    return json.loads((folder / "sweep.json").read_text())


def test_each_pruner_judges_at_the_evaluations(tmp_path):
    """Successive halving (the default), Hyperband and the median rule take their first rung at the runs' first evaluation;
    two objectives are never pruned (Optuna prunes single-objective studies only)."""
    import optuna

    from tunesmith.sweep.study import pruner_for

    def made(pruner, objectives=("headline",)):
        return pruner_for(settings_for(tmp_path, tmp_path / "c.yaml", tmp_path / "s.yaml", 16, pruner=pruner, objectives=objectives), 5)

    default = pruner_for(settings_for(tmp_path, tmp_path / "c.yaml", tmp_path / "s.yaml", 16), 5)
    assert isinstance(default, optuna.pruners.SuccessiveHalvingPruner) and default._min_resource == 5
    assert isinstance(made("hyperband"), optuna.pruners.HyperbandPruner) and made("hyperband")._min_resource == 5
    assert isinstance(made("halving"), optuna.pruners.SuccessiveHalvingPruner) and made("halving")._min_resource == 5
    assert isinstance(made("median"), optuna.pruners.MedianPruner)
    assert isinstance(made("halving", ("headline", "drift")), optuna.pruners.NopPruner)


def test_a_study_keeps_the_pruner_it_was_started_with(tmp_path):
    """The pruner is recorded in the study: continuing without --pruner keeps it, another is refused (their rung records do
    not mix); a study from before the record continues with Hyperband, then the default; two objectives are never pruned."""
    import optuna

    from tunesmith.sweep.study import Objective, open_study

    one = [Objective("headline", "val_ppl", "val perplexity", False)]

    def opened(pruner=None, objectives=one, name="s"):
        settings = settings_for(tmp_path, tmp_path / "c.yaml", tmp_path / "s.yaml", 4, pruner=pruner, name=name)
        return open_study(settings, objectives, "stamp", 5, create=True)

    assert isinstance(opened().pruner, optuna.pruners.SuccessiveHalvingPruner)
    opened().enqueue_trial({})
    assert isinstance(opened(None).pruner, optuna.pruners.SuccessiveHalvingPruner)
    with pytest.raises(UserError, match="prunes with halving; continue it with --pruner halving"):
        opened("hyperband")
    assert isinstance(opened("hyperband", name="h").pruner, optuna.pruners.HyperbandPruner)
    assert isinstance(opened(None, name="h").pruner, optuna.pruners.HyperbandPruner)

    legacy = opened(name="old")
    legacy.enqueue_trial({})
    legacy.set_user_attr("pruner", None)  # as a study started before the record
    assert isinstance(opened(name="old").pruner, optuna.pruners.HyperbandPruner)
    legacy.set_user_attr("pruner", "asha")
    with pytest.raises(UserError, match="records an unknown pruner 'asha'"):
        opened(name="old")

    two = one + [Objective("drift", "drift_nats", "drift", False)]
    assert isinstance(opened(objectives=two, name="pareto").pruner, optuna.pruners.NopPruner)


def test_the_first_of_two_machines_starting_one_study_sets_its_pruner(tmp_path):
    """Two commands starting one new study in a shared database at once: the one whose create wins records the pruner
    before the fingerprint, the other waits for the records and refuses another pruner instead of writing its own."""
    import threading

    import optuna

    from tunesmith.sweep.study import Objective, open_study

    one = [Objective("headline", "val_ppl", "val perplexity", False)]
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.storages.RDBStorage(url)  # the database exists, as a shared server's does; the study does not
    outcomes = {}

    def start(pruner):
        settings = settings_for(tmp_path / pruner, tmp_path / "c.yaml", tmp_path / "s.yaml", 4, pruner=pruner, storage=url)
        try:
            outcomes[pruner] = type(open_study(settings, one, "stamp", 5, create=True).pruner).__name__
        except UserError as exc:
            outcomes[pruner] = str(exc)

    threads = [threading.Thread(target=start, args=(name,)) for name in ("median", "hyperband")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    recorded = optuna.load_study(study_name="s", storage=url).user_attrs["pruner"]
    loser = "hyperband" if recorded == "median" else "median"
    assert outcomes[recorded] in ("MedianPruner", "HyperbandPruner")
    assert f"this study prunes with {recorded}" in outcomes[loser]


# --- the space ---------------------------------------------------------------------------------------------------

def test_space_reads_ranges_and_choices():
    dims = {d.key: d for d in parse_space({"train.lr": {"log": ["1e-5", 3e-3]}, "model.lora_rank": [8, 16],
                                           "train.warmup_steps": {"int": [0, 20], "step": 5}, "model.method": ["lora", "full"]})}
    assert dims["train.lr"].log and dims["train.lr"].low == 1e-5  # YAML 1.1 reads 1e-5 as text: taken as the number
    assert dims["model.lora_rank"].choices == (8, 16)
    assert dims["train.warmup_steps"].points() == [0, 5, 10, 15, 20]
    assert parse_space({"train.lr": ["3e-3", 1e-4]})[0].choices == (3e-3, 1e-4)
    assert list(parse_space({"train.lr": [1e-4], "model.method": ["lora"]}))[0].key == "model.method"  # the method first


@pytest.mark.parametrize("raw, words", [
    ({"train.lrr": [1e-4]}, "did you mean train.lr"),
    ({"lr": [1e-4]}, "not a config key"),
    ({"train.lr": {"log": [3e-3, 1e-5]}}, "reversed or equal"),
    ({"train.lr": {"log": [0, 1e-3]}}, "positive bounds"),
    ({"train.lr": {"log": [-1e-3, 1e-3]}}, "positive bounds"),
    ({"model.lora_rank": []}, "choice list is empty"),
    ({"model.lora_rank": [8, 8]}, "listed twice"),
    ({"model.lora_targets": [["q_proj"]]}, "single values"),
    ({"train.epochs": {"int": [1]}}, "two bounds"),
    ({"train.epochs": {"between": [1, 3]}}, "write a range as"),
    ({"train.lr": "1e-4"}, "expected a list of choices or a range"),
    ({"output.dir": ["a", "b"]}, "own folder"),
    ({"data.template": ["{title}", "{body}"]}, "decides the validation text"),
    ({"clean.dedup_near": [True, False]}, "decides the validation text"),
    ({"train.warmup_steps": {"int": [0, 10], "step": 0.5}}, "whole for an int range"),
    ({"train.warmup_steps": {"int": [1, 1e30]}}, "whole bounds"),
    ({"model.lora_dropout": {"float": [0, 0.2], "step": 0.03}}, "does not divide"),
    ({"model.lora_dropout": {"float": [0, 0.2], "log": True}}, "drop log: true"),
    ({"train.lr": {"float": [1e-4, 1e-3], "step": 1e-300}}, "too small for the range"),
    ({"train.lr": {"float": [0, 1e308], "step": 1e-308}}, "too small for the range"),
    ({"train.warmup_steps": {"int": [0, 10], "step": 100}}, "too large for the range"),
    ({"model.lora_dropout": {"float": [0.1, 0.2], "log": "yes"}}, "true or false"),
])
def test_space_errors_name_the_key_and_the_fix(raw, words):
    with pytest.raises(UserError) as caught:
        parse_space(raw)
    assert words in caught.value.lines()[0] and len(caught.value.lines()) == 1


def test_keys_of_another_method_are_drawn_only_with_it():
    import optuna

    space = Space(parse_space({"model.method": ["lora", "full"], "model.lora_rank": [4, 8], "train.lr": {"log": [1e-4, 1e-2]}}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [space.sample(study.ask()) for _ in range(12)]
    assert {p["model.method"] for p in drawn} == {"lora", "full"}
    assert all(("model.lora_rank" in p) == (p["model.method"] == "lora") for p in drawn)
    points = space.finite_points()
    assert points is None  # a continuous range: its ends are checked instead
    corners = space.corner_points()
    assert {"model.method": "full", "train.lr": 1e-4} in corners


def test_a_key_another_method_reads_is_refused_unless_the_method_varies():
    from tunesmith.sweep.space import build_space

    full = load_config(None, [("model.method", "full")])
    with pytest.raises(UserError, match="read only by another training method"):
        build_space({"model.lora_rank": [4, 8]}, full)
    assert build_space({"model.lora_rank": [4, 8], "model.method": ["lora", "full"]}, full).keys[0] == "model.method"


def test_a_key_the_task_never_reads_is_refused():
    from tunesmith.sweep.space import build_space

    lm = load_config(None, [("task", "lm")])
    with pytest.raises(UserError, match="grpo.group_size is read only by another task, and the config trains task lm"):
        build_space({"grpo.group_size": [2, 4]}, lm)
    with pytest.raises(UserError, match="distill.temperature is read only with a teacher"):
        build_space({"distill.temperature": [1, 2]}, lm)
    assert build_space({"distill.temperature": [1, 2]}, load_config(None, [("distill.teacher", "t")])).keys == ["distill.temperature"]
    assert build_space({"chat.system_prompt": ["a", "b"]}, load_config(None, [("task", "grpo")])).keys == ["chat.system_prompt"]


def test_a_key_given_twice_is_refused_in_a_space_and_in_a_config(tmp_path):
    from tunesmith.config import parse_override
    from tunesmith.errors import ConfigError
    from tunesmith.sweep.space import read_space

    (tmp_path / "space.yaml").write_text("train.lr: [1e-3]\ntrain.lr: [1e-4]\n")
    with pytest.raises(UserError, match="the key 'train.lr' is given twice \\(line 2\\)"):
        read_space(tmp_path / "space.yaml")
    (tmp_path / "run.yaml").write_text("train:\n  lr: 1e-3\n  epochs: 2\n  lr: 1e-4\n")
    with pytest.raises(ConfigError, match="the key 'lr' is given twice \\(line 4\\)"):
        load_config(tmp_path / "run.yaml")
    with pytest.raises(ConfigError, match="the key 'keep_layers' is given twice"):
        parse_override("distill.student={from_teacher: {keep_layers: 2, keep_layers: 9}}")
    for bad, said in (("train.lr: !!float abc\n", "not valid YAML text"), (BILLION_LAUGHS, "expand to more than 100,000 values")):
        (tmp_path / "space.yaml").write_text(bad)
        with pytest.raises(UserError, match=f"--space .*space.yaml: .*{said}"):
            read_space(tmp_path / "space.yaml")
    for deep in (BILLION_LAUGHS.replace("\n", ", ").join("{}"), "[" * 900 + "]" * 900):
        with pytest.raises(ConfigError, match="--set data.train: its YAML aliases .* or it nests deeper than 100 levels"):
            parse_override("data.train=" + deep)


def test_a_value_the_config_refuses_ends_the_sweep_before_any_trial(tmp_path, tiny_gpt2, corpus_file, capsys):
    base = write_base(tmp_path, tiny_gpt2, corpus_file)
    space = Space(parse_space({"train.lr": [1e-3, -1.0], "model.lora_rank": [4, 8]}))
    with pytest.raises(UserError, match=r"train.lr=-1.0.*refused by the config"):
        check_points(space, base, [], lambda cfg: None)
    write_space(tmp_path, "train.lr: [1e-3, -1.0]\n")
    code = main(["sweep", str(base), "--space", str(tmp_path / "space.yaml"), "--trials", "2", "--sweeps", str(tmp_path / "sweeps")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "refused by the config" in err[0]
    assert not list((tmp_path / "sweeps").glob("*/trial-*"))


def test_a_space_over_models_that_tokenize_apart_is_refused_before_any_trial(tmp_path, tiny_models, corpus_file, capsys):
    """Perplexities over different tokens do not rank models; the same tokenizer in two folders does."""
    import shutil

    from tunesmith.sweep.run import check_tokenizers

    base = write_base(tmp_path, tiny_models["gpt2"], corpus_file)
    write_space(tmp_path, f"model.name: [{tiny_models['gpt2']}, {tiny_models['llama']}]\n")
    code = main(["sweep", str(base), "--space", str(tmp_path / "space.yaml"), "--trials", "2", "--sweeps", str(tmp_path / "sweeps")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "have different tokenizers" in err[0] and "eval RUN --compare" in err[0]
    assert not list((tmp_path / "sweeps").glob("*/trial-*"))
    copy = shutil.copytree(tiny_models["gpt2"], tmp_path / "copy")
    space = write_space(tmp_path, f"model.name: [{tiny_models['gpt2']}, {copy}]\n")
    check_tokenizers(plan_sweep(settings_for(tmp_path, base, space, 2)))


@pytest.mark.parametrize("args, words", [
    (["--trials", "0"], "--trials must be at least 1"),
    (["--trials", "2", "--workers", "0"], "--workers must be at least 1"),
    (["--trials", "2", "--study", "../x"], "--study"),
    (["--trials", "2", "--out", "elsewhere"], "drop --out"),
    (["--trials", "2", "--objectives", "drift"], "--objectives"),
    (["--trials", "2", "--objectives", "headline,drift"], "needs the forgetting probe"),
    (["--trials", "2", "--objectives", "headline,drift", "--pruner", "hyperband"], "prunes single-objective studies only"),
    (["--trials", "2", "--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open the study's database"),
    (["--trials", "2", "--storage", "nonsense://x"], "--storage"),
    (["--trials", "2", "--storage", "sqlite:///TMP/damaged.db"], "move it aside to start the study anew"),
    (["--trials", "2", "--storage", "sqlite:///TMP/app.db"], "holds tables of something other than an Optuna study (orders)"),
    (["--trials", "2", "--storage", "sqlite+pysqlite:///TMP/app.db"], "other than an Optuna study (orders)"),
])
def test_bad_sweep_input_is_one_line(tmp_path, tiny_gpt2, corpus_file, capsys, args, words):
    import sqlite3

    base = write_base(tmp_path, tiny_gpt2, corpus_file)
    (tmp_path / "damaged.db").write_text("not a database")
    with closing(sqlite3.connect(tmp_path / "app.db")) as app:  # another program's: left as it was
        app.execute("CREATE TABLE orders (id INTEGER)")
        app.commit()
    space = write_space(tmp_path, "train.lr: {log: [1e-4, 1e-2]}\n")
    args = [arg.replace("TMP", str(tmp_path)) for arg in args]
    code = main(["sweep", str(base), "--space", str(space), "--sweeps", str(tmp_path / "sweeps"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    with closing(sqlite3.connect(tmp_path / "app.db")) as app:
        assert [row[0] for row in app.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["orders"]


# --- trials ----------------------------------------------------------------------------------------------------

def test_trials_are_runs_a_crash_is_recorded_and_a_bad_trial_is_pruned(tmp_path, tiny_gpt2, corpus_file, monkeypatch):
    """Two good learning rates, one that fails, then one too small to learn: the median rule prunes it at its first
    evaluation, the failure is a failed trial with its first line, and the best config is a good one's."""
    import tunesmith.api

    base = write_base(tmp_path, tiny_gpt2, corpus_file)
    space = write_space(tmp_path, "train.lr: [3e-3, 2e-3, 1e-3, 1e-9]\n")
    settings = settings_for(tmp_path, base, space, trials=4, pruner="median")
    plan = plan_sweep(settings)
    study = plan.study(create=True)
    for lr in (3e-3, 2e-3, 1e-3, 1e-9):
        study.enqueue_trial({"train.lr": lr})
    real_train = tunesmith.api.train

    def failing(cfg, **kwargs):
        if cfg.train.lr == 1e-3:
            raise RuntimeError("the disk caught fire\nsecond line")
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(tunesmith.api, "train", failing)
    found = run_sweep(settings, say=lambda line: None)
    states = {row["params"]["train.lr"]: row for row in found["trials"]}
    assert states[3e-3]["state"] == states[2e-3]["state"] == "complete"
    assert states[1e-3]["state"] == "failed" and states[1e-3]["error"] == "the disk caught fire"
    assert states[1e-9]["state"] == "pruned" and states[1e-9]["steps"] == 2
    pruned_run = Path(states[1e-9]["run_dir"])
    assert json.loads((pruned_run / "summary.json").read_text())["stopped_because"] == "pruned"
    assert (pruned_run / "checkpoints").is_dir() and (pruned_run / "report.html").is_file()
    from tunesmith.rundir.process import run_state

    assert run_state(pruned_run) == "pruned"
    best = found["best"]
    assert best["params"]["train.lr"] in (3e-3, 2e-3)
    assert best["headline"] == min(states[3e-3]["headline"], states[2e-3]["headline"])
    kept = load_config(settings.folder / "best.yaml")
    assert kept.train.lr == best["params"]["train.lr"] and kept.output.dir is None
    assert "trial" in (settings.folder / "trials.md").read_text() and (settings.folder / "report.html").is_file()
    assert {"history", "parallel coordinates"} <= set(json.loads((settings.folder / "figures.json").read_text()))

    from fastapi.testclient import TestClient

    from tunesmith.ui import create_app

    page = TestClient(create_app(tmp_path / "sweeps", port=7860), base_url="http://127.0.0.1:7860")
    assert 'href="/sweeps/s"' in page.get("/sweeps").text
    shown = page.get("/sweeps/s").text
    assert "the disk caught fire" in shown and 'href="/runs/s/trial-000"' in shown and "Plotly.newPlot" in shown
    assert page.get("/runs/s/trial-003").status_code == 200  # the trials are runs the page lists too
    assert page.get("/sweeps/..%2F..").status_code in (403, 404)
    assert page.get("/api/sweep/s").json()["results"]["counts"]["pruned"] == 1
    (tmp_path / "sweeps" / "bad").mkdir()
    (tmp_path / "sweeps" / "bad" / "sweep.json").write_text('{"trials": "x", "best": "y", "objectives": ["z"]}')
    listed = page.get("/sweeps")
    assert listed.status_code == 200 and "sweep.json is damaged" in listed.text and 'href="/sweeps/s"' in listed.text
    assert page.get("/sweeps/bad").status_code == 404 and page.get("/api/sweep/bad").status_code == 404
    (settings.folder / "figures.json").unlink()
    os.mkfifo(settings.folder / "figures.json")  # read, it would hold the request's thread until something writes to it
    assert page.get("/api/sweep/s").json()["figures"] == {}


def test_an_interrupted_study_continues_its_trial_from_the_checkpoint(tmp_path, tiny_gpt2, corpus_file, monkeypatch):
    """Ctrl-C at the first trial's first evaluation: the run saves its checkpoint and the sweep stops; the same sweep
    again, its folder moved meanwhile, continues that trial in its own folder and completes the study."""
    from dataclasses import replace

    from tunesmith.sweep import trial as trial_module

    base = write_base(tmp_path, tiny_gpt2, corpus_file, max_steps=8)
    space = write_space(tmp_path, "train.lr: {log: [1e-3, 5e-3]}\n")
    settings = settings_for(tmp_path, base, space, trials=2, pruner="none")  # every trial to its end: the counts are exact
    real_call = trial_module.Reporter.__call__

    def interrupt_once(self, step, row):
        if not getattr(interrupt_once, "done", False):
            interrupt_once.done = True
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would: the loop finishes the step, saves and exits
        return real_call(self, step, row)

    monkeypatch.setattr(trial_module.Reporter, "__call__", interrupt_once)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(settings, say=lambda line: None)
    first = results(settings.folder)["trials"]
    assert [t["state"] for t in first] == ["interrupted"]
    assert list((Path(first[0]["run_dir"]) / "checkpoints").glob("step-*"))
    shutil.move(tmp_path / "sweeps", tmp_path / "moved")
    settings = replace(settings, folder=tmp_path / "moved" / settings.name)
    run_dir = settings.folder / Path(first[0]["run_dir"]).name
    found = run_sweep(settings, say=lambda line: None)
    trials = found["trials"]
    assert trials[0]["state"] == "interrupted" and trials[0]["continued_by"] == 1 and trials[0]["run_dir"] == str(run_dir)
    assert trials[1]["continues"] == 0 and trials[1]["run_dir"] == str(run_dir) and trials[1]["state"] == "complete"
    assert trials[1]["params"] == trials[0]["params"]
    assert found["counts"]["complete"] == 2
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 8  # resumed, not restarted


def test_two_objectives_give_a_pareto_front_and_its_knee(tmp_path, tiny_gpt2, corpus_file):
    base = write_base(tmp_path, tiny_gpt2, corpus_file)
    config = yaml.safe_load(base.read_text())
    config["monitor"]["general_probe"] = "auto"
    base.write_text(yaml.safe_dump(config))
    space = write_space(tmp_path, "train.lr: [1e-4, 3e-3, 1e-2]\n")
    settings = settings_for(tmp_path, base, space, trials=3, objectives=("headline", "drift"))
    study = plan_sweep(settings).study(create=True)
    for lr in (1e-4, 3e-3, 1e-2):
        study.enqueue_trial({"train.lr": lr})
    found = run_sweep(settings, say=lambda line: None)
    complete = [t for t in found["trials"] if t["state"] == "complete"]
    assert len(complete) == 3 and all(t["drift"] is not None for t in complete)
    front = found["pareto_front"]
    assert front and found["best"]["number"] in front
    def dominated(a, b):  # a beats b: no worse on both, better on one
        return a["headline"] <= b["headline"] and a["drift"] <= b["drift"] and (a["headline"], a["drift"]) != (b["headline"], b["drift"])

    for trial in complete:
        assert (trial["number"] in front) == (not any(dominated(other, trial) for other in complete))
    assert found["headline_best"]["headline"] == min(t["headline"] for t in complete)
    assert "pareto front" in json.loads((settings.folder / "figures.json").read_text())


def test_a_changed_space_does_not_continue_a_study(tmp_path, tiny_gpt2, corpus_file, capsys):
    base = write_base(tmp_path, tiny_gpt2, corpus_file, max_steps=2)
    space = write_space(tmp_path, "train.lr: [1e-3]\n")
    args = ["sweep", str(base), "--space", str(space), "--trials", "1", "--sweeps", str(tmp_path / "sweeps")]
    assert main(args) == 0
    write_space(tmp_path, "train.lr: [1e-3, 2e-3]\n")
    assert main(args) == 2
    assert "started with another config, space" in capsys.readouterr().err


# --- workers sharing a study ------------------------------------------------------------------------------------

def _two_workers(tmp_path, tiny_gpt2, corpus_file, storage: list[str]):
    base = write_base(tmp_path, tiny_gpt2, corpus_file, max_steps=4)
    space = write_space(tmp_path, "train.lr: {log: [1e-4, 1e-2]}\nmodel.lora_rank: [4, 8]\n")
    started = time.perf_counter()
    code = main(["sweep", str(base), "--space", str(space), "--trials", "4", "--workers", "2", "--study", "pair",
                 "--sweeps", str(tmp_path / "sweeps"), "--pruner", "none", *storage])
    assert code == 0
    found = results(tmp_path / "sweeps" / "pair")
    assert [t["number"] for t in found["trials"]] == [0, 1, 2, 3] and found["counts"]["complete"] == 4
    assert len({t["run_dir"] for t in found["trials"]}) == 4
    import optuna

    from tunesmith.sweep.study import open_storage

    url = storage[1] if storage else f"sqlite:///{tmp_path / 'sweeps' / 'pair' / 'study.db'}"
    trials = optuna.load_study(study_name="pair", storage=open_storage(url)).get_trials()
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both workers took trials
    return time.perf_counter() - started


def test_two_local_workers_share_one_sqlite_study(tmp_path, tiny_gpt2, corpus_file):
    _two_workers(tmp_path, tiny_gpt2, corpus_file, [])


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


@pytest.fixture
def postgres():
    """A PostgreSQL server of its own: initdb in a temporary folder, pg_ctl on a free port, stopped afterwards."""
    binaries = _pg_bin()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql)")
    root = Path(tempfile.mkdtemp(prefix="tunesmith-pg-"))  # not under pytest's folder, which only its owner may enter
    data, port = root / "data", free_port()
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the postgres user Debian's package creates
        as_user = ["runuser", "-u", "postgres", "--"]
        root.chmod(0o755)
        data.mkdir()
        shutil.chown(data, "postgres", "postgres")
    subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(data), "-U", "tunesmith", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    socket_dir = data  # a socket beside the data: /var/run/postgresql may not exist or be writable
    subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"),
                    "-o", f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        subprocess.run([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tunesmith", "sweeps"],
                       check=True, capture_output=True)
        yield f"postgresql://tunesmith@127.0.0.1:{port}/sweeps"
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_local_workers_share_one_postgresql_study(tmp_path, tiny_gpt2, corpus_file, postgres):
    _two_workers(tmp_path, tiny_gpt2, corpus_file, ["--storage", postgres])

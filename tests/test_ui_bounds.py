"""`tunesmith ui` within its bounds: nothing outside the runs folder, ever (the form's paths on the validated config,
every file a data folder or glob yields, a run's own files, a run unpacked from an archive with links out, the
token's redirect, names too long for the file system), a request body counted as it arrives, and trainings
within the machine's share (a cap, one process per Resume however many presses, a command-line run resumed
where it was started)."""

import json
import os
import shutil
import threading
import time

import pytest
import yaml
from fastapi.testclient import TestClient

from tunesmith.errors import ConfigError, UserError
from tunesmith.ui import create_app
from tunesmith.ui.launcher import Draft, Launcher
from tunesmith.ui.runs import RunsFolder

from helpers import cut_run, finished_run, make_corpus, write_jsonl


SECRET = "TOP SECRET"
FORM_RUN = {"run_name": "from-form", "model.name": "models/gpt2", "data.train": "data/corpus.jsonl", "data.block_size": "32",
            "train.max_steps": "10", "train.precision": "fp32", "monitor.tensorboard": "false"}


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, tiny_gpt2):
    """A runs folder holding one finished run, `lr-high`."""
    base = tmp_path_factory.mktemp("bounds")
    run, _ = finished_run(tiny_gpt2, base)
    root = base / "runs"
    root.mkdir()
    shutil.move(run, root / "lr-high")
    return root


@pytest.fixture
def form_root(tmp_path, tiny_gpt2):
    """A fresh runs folder with a model and data for the form, beside a folder of files it must never show."""
    root = tmp_path / "runs"
    (root / "data").mkdir(parents=True)
    shutil.copytree(tiny_gpt2, root / "models" / "gpt2")
    write_jsonl(root / "data" / "corpus.jsonl", make_corpus(120))
    outside = tmp_path / "outside"
    outside.mkdir()
    write_jsonl(outside / "secret.jsonl", [f"{SECRET} number {i}" for i in range(40)])
    (outside / "secret.txt").write_text(f"{SECRET}\n")
    (outside / "metrics.jsonl").write_text('{"step": 1, "train_loss": 4242.5}\n')
    shutil.copytree(tiny_gpt2, outside / "model")
    return root


def client_of(root, **settings) -> TestClient:
    return TestClient(create_app(root, port=7860, **settings), base_url="http://127.0.0.1:7860")


def test_every_local_path_of_a_form_is_checked_on_the_validated_config(form_root):
    launcher, outside = Launcher(RunsFolder(form_root)), form_root.parent / "outside"
    secret = outside / "secret.txt"
    for key, value in [("data.train", f"{{path: {secret}, weight: 1}}"),
                       ("data.train", f"[{{path: [data/corpus.jsonl, {secret}], weight: 1}}]"),
                       ("data.train", f"[data/corpus.jsonl, {secret}]"),
                       ("data.val", f"{secret}"), ("data.val", "[../outside/secret.txt]"),
                       ("model.name", str(outside / "model")), ("model.name", "../outside/model"), ("model.name", "~/model.gguf"),
                       ("monitor.general_probe", str(secret)),
                       ("monitor.mlflow_uri", (outside / "mlruns").as_uri()), ("monitor.mlflow_uri", str(outside / "mlruns")),
                       ("monitor.mlflow_uri", "../outside/mlruns"), ("monitor.mlflow_uri", f"sqlite:///{outside}/mlflow.db"),
                       ("monitor.mlflow_uri", "postgresql://localhost/mlflow"),
                       ("monitor.benchmarks", f"[{outside / 'task.yaml'}]"), ("monitor.benchmarks", "[data/task.yaml]"),
                       ("monitor.benchmarks", "[data]"), ("model.trust_remote_code", "true"),
                       ("grpo.rewards", f"[{{run: {outside / 'runs' / 'sentiment'}, label: positive}}]"),
                       ("grpo.rewards", "[{python: data/rewards.py:score}]"),
                       ("distill.teacher", str(outside / "runs" / "teacher"))]:
        with pytest.raises(ConfigError, match=f"^{key}: .*(outside|not taken from the page)") as refused:
            launcher.config(Draft.from_form({**FORM_RUN, key: value}))
        assert len(refused.value.problems) == 1, (key, value)
    client = client_of(form_root)
    for action in ("check", "preview", "start"):
        answer = client.post(f"/api/new/{action}", json={**FORM_RUN, "run_name": "escape", "data.train": f"{{path: {secret}, weight: 1}}"})
        assert answer.status_code == 400 and "outside the runs folder" in answer.json()["error"] and SECRET not in answer.text
    assert not (form_root / "escape").exists()
    cfg = launcher.config(Draft.from_form({**FORM_RUN, "data.train": "{path: data/corpus.jsonl, weight: 1}", "monitor.mlflow_uri": "mlruns",
                                           "monitor.general_probe": "data/corpus.jsonl"}))
    assert cfg.data.train[0].path == str(form_root / "data" / "corpus.jsonl")  # absolute, as it was checked
    assert cfg.monitor.general_probe == str(form_root / "data" / "corpus.jsonl")
    assert cfg.monitor.mlflow_uri == (form_root / "mlruns").as_uri()
    assert launcher.config(Draft.from_form({**FORM_RUN, "monitor.mlflow_uri": "http://mlflow.internal:5000"})).monitor.mlflow_uri == \
        "http://mlflow.internal:5000"  # a tracking server elsewhere names no file here


def test_data_folders_and_globs_holding_a_link_out_are_refused(form_root):
    outside = form_root.parent / "outside"
    (form_root / "mixed").mkdir()
    write_jsonl(form_root / "mixed" / "good.jsonl", make_corpus(20))
    (form_root / "mixed" / "leak.jsonl").symlink_to(outside / "secret.jsonl")
    (form_root / "nested" / "deep").mkdir(parents=True)
    write_jsonl(form_root / "nested" / "deep" / "good.jsonl", make_corpus(20))
    (form_root / "nested" / "out").symlink_to(outside, target_is_directory=True)
    launcher, client = Launcher(RunsFolder(form_root)), client_of(form_root)
    for value in ("mixed", "mixed/", "mixed/*.jsonl", "mixed/**/*", "{path: mixed, weight: 1}", "nested/*/*.jsonl", "[data/corpus.jsonl, mixed]"):
        with pytest.raises(ConfigError, match="leads outside"):
            launcher.config(Draft.from_form({**FORM_RUN, "data.train": value}))
        preview = client.post("/api/new/preview", json={**FORM_RUN, "data.train": value})
        assert preview.status_code == 400 and "leads outside" in preview.json()["error"] and SECRET not in preview.text, value
    with pytest.raises(ConfigError, match="leads outside"):
        launcher.config(Draft.from_form({**FORM_RUN, "monitor.general_probe": "mixed"}))
    assert launcher.config(Draft.from_form({**FORM_RUN, "data.train": "nested/deep"})).data.train == [str(form_root / "nested" / "deep")]
    from tunesmith.data.read import expand_paths  # `**` does not descend into the linked folder, so reads nothing outside

    assert expand_paths([str(form_root / "nested" / "**" / "*.jsonl")], "data.train") == [form_root / "nested" / "deep" / "good.jsonl"]


def test_a_runs_own_files_that_lead_outside_are_never_read(runs_root, tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "secret.txt").write_text(f"train:\n  lr: {SECRET}\n")
    (secrets / "metrics.jsonl").write_text('{"step": 1, "train_loss": 4242.5}\n')
    (secrets / "samples.jsonl").write_text(json.dumps({"step": 0, "prompt": SECRET, "text": SECRET}) + "\n")
    (secrets / "report.json").write_text(json.dumps({"warnings": [SECRET]}))
    run = runs_root / "linked-files"
    shutil.copytree(runs_root / "lr-high", run)
    try:
        for name, target in [("config.yaml", "secret.txt"), ("console.log", "secret.txt"), ("metrics.jsonl", "metrics.jsonl"),
                             ("samples.jsonl", "samples.jsonl"), ("data_report.json", "report.json"), ("summary.json", "report.json")]:
            (run / name).unlink(missing_ok=True)
            (run / name).symlink_to(secrets / target)
        folder, client = RunsFolder(runs_root), client_of(runs_root)
        detail = folder.detail("linked-files")
        assert detail["config"] == "" and detail["samples"] == [] and detail["data_warnings"] == [] and detail["findings"] == []
        assert folder.log_tail("linked-files") == "" and folder.metrics(run) == []
        (run / "console.log").unlink()
        os.mkfifo(run / "console.log")  # read, it would hold the request's thread until something writes to it
        assert folder.log_tail("linked-files") == ""
        for path in ("/", "/api/runs", "/fragments/runs", "/runs/linked-files", "/api/run/linked-files/metrics",
                     "/fragments/run/linked-files/findings", "/compare?run=linked-files&run=lr-high",
                     "/api/compare/metrics?run=linked-files&run=lr-high", "/files/linked-files/config.yaml"):
            answer = client.get(path)
            assert answer.status_code == (403 if path.startswith("/files/") else 200), path  # the file is refused, the pages show the rest
            assert SECRET not in answer.text and "4242.5" not in answer.text, path
    finally:
        shutil.rmtree(run)


def test_a_body_past_the_limit_is_refused_while_it_is_read(runs_root):
    import asyncio

    client = client_of(runs_root)
    refused = client.post("/api/new/check", content=b"[" + b"1," * 1_000_000 + b"1]", headers={"Content-Type": "application/json"})
    assert refused.status_code == 413 and "send at most 1,000,000" in refused.json()["error"]
    assert client.post("/api/new/check", json={**FORM_RUN, "train.lr": "fast"}).status_code == 400  # a form is far below it
    chunks, sent = 40, []  # 4 MB in chunks of 100 kB, with no Content-Length: only counting while reading stops it

    async def receive():
        sent.append(1)
        return {"type": "http.request", "body": b" " * 100_000, "more_body": len(sent) < chunks}

    answer = []

    async def send(message):
        answer.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/new/check", "raw_path": b"/api/new/check", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1:7860"), (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 7860)}
    asyncio.run(create_app(runs_root, port=7860)(scope, receive, send))
    assert answer[0]["status"] == 413 and len(sent) <= 11


@pytest.fixture
def fake_trainer(monkeypatch):
    """A stand-in for the `tunesmith train` process the launcher starts: each start takes a moment, as a real one
    does, and is counted; setting a stand-in's `returncode` ends it."""
    started = []

    class Trainer:
        def __init__(self, arguments, **settings):
            self.cwd = settings["cwd"]
            time.sleep(0.2)
            self.pid, self.returncode = 4_000_000 + len(started), None
            started.append(self)

        def poll(self):
            return self.returncode

        def kill(self):
            self.returncode = -9

    monkeypatch.setattr("tunesmith.ui.launcher.subprocess.Popen", Trainer)
    return started


def test_a_run_that_recorded_its_stop_leaves_room_while_its_process_exits(form_root, fake_trainer):
    """Stop, then Resume at once: the stopped trainer may still be exiting (Python tearing down), and must not count."""
    from tunesmith.rundir.folder import PROCESS

    client = client_of(form_root, max_runs=1)
    assert client.post("/api/new/start", json={**FORM_RUN, "run_name": "first"}).status_code == 200
    assert client.post("/api/new/start", json={**FORM_RUN, "run_name": "second"}).status_code == 429  # first is starting
    (form_root / "first" / PROCESS).write_text(json.dumps({"pid": fake_trainer[0].pid, "process_started": 0.0,
                                                           "ended": time.time(), "outcome": "stopped"}))
    assert fake_trainer[0].poll() is None
    assert client.post("/api/new/start", json={**FORM_RUN, "run_name": "second"}).status_code == 200


def test_the_page_trains_at_most_max_runs_at_once(form_root, fake_trainer):
    import os

    from tunesmith.cli.parser import build_parser

    import psutil

    from tunesmith.rundir.folder import PROCESS, mark_run_dir

    from_command_line = form_root / "from-command-line"  # trains too, started by `tunesmith train`: it counts
    mark_run_dir(from_command_line)
    (from_command_line / PROCESS).write_text(json.dumps({"pid": os.getpid(), "process_started": psutil.Process().create_time()}))
    client = client_of(form_root, max_runs=3)
    answers = [client.post("/api/new/start", json={**FORM_RUN, "run_name": f"press-{i}"}) for i in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 429, 429, 429] and len(fake_trainer) == 2
    assert answers[2].json()["error"] == ("from-command-line, press-0, press-1 are training, as many as this page lets train at "
                                          "once (tunesmith ui --max-runs 3); wait for one to end, or stop one")
    assert not (form_root / "press-2").exists()
    fake_trainer[0].returncode = 0  # one run ends: room for the next
    assert client.post("/api/new/start", json={**FORM_RUN, "run_name": "press-5"}).status_code == 200
    cores = len(os.sched_getaffinity(0))
    assert Launcher(RunsFolder(form_root)).max_running == max(1, cores // 4)
    assert build_parser().parse_args(["ui", "--max-runs", "3"]).max_runs == 3


def reading_inside(runs_root, root):
    """A stopped run, `cut`, in `root`, whose model and data were moved into `root`: one the page may resume."""
    cut = cut_run(runs_root / "lr-high", root / "cut", last_step=8)
    settings = yaml.safe_load((cut / "config.yaml").read_text())
    shutil.copytree(settings["model"]["name"], root / "models" / "gpt2")
    (root / "data").mkdir()
    write_jsonl(root / "data" / "corpus.jsonl", make_corpus(120))
    settings["model"]["name"], settings["data"]["train"] = str(root / "models" / "gpt2"), [str(root / "data" / "corpus.jsonl")]
    (cut / "config.yaml").write_text(yaml.safe_dump(settings))
    return cut


def test_simultaneous_resume_presses_start_one_process(runs_root, tmp_path, fake_trainer):
    root = tmp_path / "runs"
    reading_inside(runs_root, root)
    launcher = Launcher(RunsFolder(root))
    launcher.max_running = 8  # the cap is not what stops the second
    presses, outcomes = threading.Barrier(8), []

    def press():
        presses.wait()
        try:
            launcher.resume("cut")
            outcomes.append("resumed")
        except UserError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=press) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake_trainer) == 1 and outcomes.count("resumed") == 1
    assert outcomes.count("cut is running; stop it before resuming it") == 7
    assert launcher.processes["cut"] is fake_trainer[0]  # the one started is the one the page follows


def test_page_resume_checks_what_the_run_reads_where_it_was_started(runs_root, tmp_path, fake_trainer, monkeypatch):
    root, outside = tmp_path / "runs", tmp_path / "outside"
    cut = reading_inside(runs_root, root)
    (outside / "tasks").mkdir(parents=True)
    (outside / "tasks" / "task.yaml").write_text("task: t\nprocess_docs: !function utils.run_me\n")
    settings, record = yaml.safe_load((cut / "config.yaml").read_text()), json.loads((cut / "process.json").read_text())
    launcher = Launcher(RunsFolder(root))
    monkeypatch.chdir(tmp_path)
    for key, value, refused in [("monitor.benchmarks", ["tasks"], "task files and folders are not taken from the page"),
                                ("monitor.mlflow_uri", "sqlite:///mlflow.db", "outside the runs folder"),
                                ("monitor.mlflow_uri", "mlruns", "outside the runs folder")]:
        section, name = key.split(".")
        (cut / "config.yaml").write_text(yaml.safe_dump({**settings, section: {**settings[section], name: value}}))
        (cut / "process.json").write_text(json.dumps({**record, "cwd": str(outside)}))  # started there
        with pytest.raises(UserError, match=f"^cut: {key}: .*{refused}.*resume this one from the command line"):
            launcher.resume("cut")
    (cut / "config.yaml").write_text("train: [unclosed\n")  # the run's own settings, named as such
    with pytest.raises(UserError, match=r"^cut: the run's saved settings .*config.yaml are damaged \(not valid YAML at line 2\)"):
        launcher.resume("cut")
    assert not fake_trainer
    (cut / "config.yaml").write_text(yaml.safe_dump(settings))
    (cut / "process.json").write_text(json.dumps({**record, "cwd": "outside"}))  # a relative folder is not one a run records
    launcher.resume("cut")
    assert fake_trainer[0].cwd == root
    shutil.copytree(root / "models" / "gpt2", outside / "model")
    with pytest.raises(UserError, match=f"model {root / 'outside' / 'model'}: no such directory"):  # read in the runs folder, not the page's own
        launcher.preview(Draft.from_form({**FORM_RUN, "model.name": "outside/model", "data.train": "data/corpus.jsonl"}))


def test_resuming_from_the_page_a_run_started_on_the_command_line_elsewhere(tiny_gpt2, tiny_llama, tmp_path, monkeypatch):
    """`tunesmith train --data corpus.jsonl --out ../base` in a project's work/ folder, then Resume on a page over the
    project: the data and the model are read where the command line read them, not from the page's folder (where a
    model of the same name is a different one); a run that read outside the page's folder is resumed only from the
    command line."""
    from tunesmith.cli import main

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "work").mkdir(parents=True)
    write_jsonl(project / "work" / "corpus.jsonl", make_corpus(120))
    shutil.copytree(tiny_gpt2, project / "work" / "models" / "gpt2")
    shutil.copytree(tiny_llama, project / "models" / "gpt2")  # the same relative name in the page's folder: another model
    shutil.copytree(project / "work", elsewhere)
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(project / "work")
    settings = ["train.lr=0.003", "train.eval_every=4", "train.warmup_steps=2", "train.precision=fp32", "train.patience=null",
                "monitor.tensorboard=false"]
    assert main(["train", "--data", "corpus.jsonl", "--model", "models/gpt2", "--out", "../base", "--max-steps", "12",
                 "--block-size", "32", *[f"--set={s}" for s in settings]]) == 0
    run = project / "base"
    for checkpoint in (run / "checkpoints").iterdir():  # as if killed after step 8's checkpoint
        if int(checkpoint.name.split("-")[1]) > 8:
            shutil.rmtree(checkpoint)
    shutil.rmtree(run / "final")
    (run / "summary.json").unlink()
    monkeypatch.chdir(tmp_path)  # the page may be started from anywhere
    client = client_of(project)
    record = json.loads((run / "process.json").read_text())
    (run / "process.json").write_text(json.dumps({**record, "cwd": str(elsewhere)}))
    refused = client.post("/api/run/base/resume", json={})
    assert refused.status_code == 400 and "outside the runs folder" in refused.json()["error"]
    assert f"tunesmith train --out {run} --resume" in refused.json()["error"] and "base" not in client.app.app.state.launcher.processes
    (run / "process.json").write_text(json.dumps({**record, "cwd": str(tmp_path / "gone")}))
    refused = client.post("/api/run/base/resume", json={})
    assert refused.status_code == 400 and "that folder is gone" in refused.json()["error"]
    (run / "process.json").write_text(json.dumps(record))
    assert client.post("/api/run/base/resume", json={}).status_code == 200
    process = client.app.app.state.launcher.processes["base"]
    process.wait(timeout=300)
    log = (run / "console.log").read_text()
    assert process.returncode == 0, log
    assert json.loads((run / "summary.json").read_text())["steps"] == 12 and "resumed from" in log


def test_the_token_address_leads_only_to_this_site(runs_root):
    app = create_app(runs_root, port=7860, token="s3cret")
    for path, target in [("//evil.example", "/"), ("/%2F/evil.example", "/"), ("/%5Cevil.example", "/"), ("/%09/evil.example", "/"),
                         ("/\\evil.example", "/"), ("/runs/lr-high", "/runs/lr-high")]:
        client = TestClient(app, base_url="http://127.0.0.1:7860")  # a fresh browser: no cookie yet
        opened = client.get(f"http://127.0.0.1:7860{path}?token=s3cret", follow_redirects=False)
        assert opened.status_code == 303 and opened.headers["location"] == target, path


def test_a_query_value_of_another_kind_is_answered_in_the_pages_own_shape(runs_root):
    answer = client_of(runs_root).get("/api/run/lr-high/metrics?offset=abc")
    assert answer.status_code == 400 and "query.offset" in answer.json()["error"]


def test_a_path_too_long_for_the_file_system_is_not_found(runs_root):
    client = TestClient(create_app(runs_root, port=7860), base_url="http://127.0.0.1:7860", raise_server_exceptions=False)
    for path in ("/files/" + "a/" * 3000, "/files/" + "b" * 300, "/runs/" + "a/" * 3000, "/api/run/" + "c" * 300 + "/metrics"):
        answer = client.get(path)
        assert answer.status_code == 404 and "no such file or run" in answer.text, path[:20]


def test_a_run_unpacked_from_an_archive_shows_nothing_outside(runs_root, tmp_path):
    """A new user's folder: a run from a colleague's archive, some of its files links, a few of them out of the folder."""
    import tarfile

    secrets = tmp_path / "elsewhere"
    secrets.mkdir()
    (secrets / "secret.txt").write_text(f"{SECRET}\n")
    (secrets / "metrics.jsonl").write_text('{"step": 1, "train_loss": 4242.5, "val_loss": 4242.5}\n')
    shutil.copytree(runs_root / "lr-high" / "final", secrets / "final")
    packed = tmp_path / "packed"
    shutil.copytree(runs_root / "lr-high", packed / "shared-run")
    links = {"config.yaml": secrets / "secret.txt", "console.log": "../../elsewhere/secret.txt", "metrics.jsonl": secrets / "metrics.jsonl",
             "samples.jsonl": secrets / "secret.txt", "report.html": secrets / "secret.txt", "final": secrets / "final",
             "notes.txt": "../../elsewhere/secret.txt", "process-copy.json": "process.json"}
    (packed / "shared-run" / "summary.json").unlink()  # it stopped before the end: Resume is offered
    for name, target in links.items():
        path = packed / "shared-run" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        path.symlink_to(target)
    with tarfile.open(tmp_path / "shared-run.tar", "w") as archive:
        archive.add(packed / "shared-run", arcname="shared-run")
    root = tmp_path / "runs"
    root.mkdir()
    with tarfile.open(tmp_path / "shared-run.tar") as archive:
        archive.extractall(root, filter="fully_trusted")  # as `tar xf` unpacks it: links kept
    client = client_of(root)
    listing = client.get("/files/shared-run/")
    entries = [href.split('"')[0] for href in listing.text.split('href="/files/')[1:]]
    paths = ["/", "/api/runs", "/fragments/runs", "/runs/shared-run", "/api/run/shared-run/metrics", "/fragments/run/shared-run/findings",
             "/api/compare/metrics?run=shared-run", "/files/shared-run/", *[f"/files/{entry}" for entry in entries]]
    assert "/files/shared-run/notes.txt" in paths and "/files/shared-run/final/" in paths
    for path in paths:
        answer = client.get(path)
        assert SECRET not in answer.text and "4242.5" not in answer.text, path
    assert client.get("/files/shared-run/process-copy.json").status_code == 200  # a link that stays inside is fine
    page = client.get("/runs/shared-run").text
    assert 'id="report-link"' not in page and 'id="try"' not in page  # the report and the model lie elsewhere
    resumed = client.post("/api/run/shared-run/resume", json={})
    assert resumed.status_code == 400 and "leads outside the runs folder" in resumed.json()["error"]
    for kind, body in (("generate", {"prompt": "hi"}), ("chat", {"text": "hi"}), ("classify", {"text": "hi"})):
        tried = client.post(f"/api/run/shared-run/{kind}", json=body)  # the model behind the link is never loaded
        assert tried.status_code == 403 and "final model leads outside" in tried.json()["error"], kind


def test_the_page_refuses_what_the_task_refuses_before_a_run_folder_is_made(form_root):
    launcher = Launcher(RunsFolder(form_root))
    with pytest.raises(ConfigError, match="data.packing: padded does not apply to task lm"):
        launcher.config(Draft.from_form({**FORM_RUN, "data.packing": "padded"}))
    with pytest.raises(ConfigError, match="data.block_size: 100000 is above the model's context of 128 tokens"):
        launcher.start(Draft.from_form({**FORM_RUN, "data.block_size": "100000"}))
    assert not (form_root / "from-form").exists()


def test_a_run_whose_figures_are_not_finite_is_listed_with_nulls(runs_root, tmp_path):
    """A diverged run (NaN or infinite figures in its summary and metrics) reads as nulls, never a 500."""
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "lr-high", root / "diverged")
    summary_path = root / "diverged" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**summary, "best_val_ppl": float("nan"), "best_val_loss": float("inf")}))
    with (root / "diverged" / "metrics.jsonl").open("a") as metrics:
        metrics.write(json.dumps({"step": 99, "train_loss": float("nan"), "val_loss": float("inf")}) + "\n")
    with client_of(root) as client:
        for path in ("/api/runs", "/api/run/diverged/metrics"):
            response = client.get(path)
            assert response.status_code == 200, (path, response.text)
            assert "NaN" not in response.text and "Infinity" not in response.text
        row = next(r for r in client.get("/api/runs").json()["runs"] if r["name"] == "diverged")
        assert row is not None

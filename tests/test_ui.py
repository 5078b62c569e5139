"""`tunesmith ui`: the run states it reads, the guard, the form's config, and the pages driven in a real browser
(Debian's chromium through Playwright): the runs table, one run's curves and findings, a comparison, a run started
from the form, stopped and resumed, a chat with a finished chat run, and nothing outside the runs folder."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient

from tunesmith import train
from tunesmith.config import load_config
from tunesmith.errors import ConfigError, UserError
from tunesmith.rundir.folder import mark_run_dir
from tunesmith.rundir.process import ProcessRecord, run_state
from tunesmith.ui import create_app
from tunesmith.ui.launcher import Draft, Launcher
from tunesmith.ui.runs import RunsFolder, metrics_since

from helpers import (BILLION_LAUGHS, CHROMIUM, chat_config, classify_config, conversations, free_port, labelled, make_corpus,
                     run_config, write_format, write_jsonl)


FORM_RUN = {"run_name": "from-form", "model.name": "models/gpt2", "data.train": "data/corpus.jsonl", "data.block_size": "32",
            "train.lr": "0.003", "train.epochs": "1000", "train.max_steps": "3000", "train.eval_every": "1000",
            "train.precision": "fp32", "monitor.tensorboard": "false"}


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, tiny_gpt2, tiny_llama):
    """A runs folder with two finished language-model runs that differ in lr alone, a finished chat run, and a model
    and data inside it for the form."""
    base = tmp_path_factory.mktemp("ui")
    root = base / "runs"
    (root / "data").mkdir(parents=True)
    shutil.copytree(tiny_gpt2, root / "models" / "gpt2")
    data = write_jsonl(root / "data" / "corpus.jsonl", make_corpus(120))
    (base / "secret.txt").write_text("TOP SECRET")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNESMITH_HOME", str(base / "home"))
        train(run_config(tiny_gpt2, data, root / "lr-high", lr=3e-3))
        train(run_config(tiny_gpt2, data, root / "lr-low", lr=1e-3))
        chats = write_format("messages", base, conversations(12))
        train(chat_config(tiny_llama, chats, root / "chat"))
    return root


# ---- what the page reads and refuses, without a browser


def test_run_states_follow_the_process_record(tmp_path):
    run = tmp_path / "run"
    mark_run_dir(run)
    assert run_state(run) == "crashed"  # marked, never recorded: a process that died before training
    with ProcessRecord(run) as record:
        record.begin(total_steps=10)
        assert run_state(run) == "running"
    assert run_state(run) == "crashed"  # ended without a summary
    with pytest.raises(SystemExit), ProcessRecord(run):
        raise SystemExit(128 + signal.SIGINT)
    assert run_state(run) == "stopped"
    with pytest.raises(ValueError), ProcessRecord(run):
        raise ValueError("disk on fire\nsecond line")
    assert run_state(run) == "crashed" and json.loads((run / "process.json").read_text())["detail"] == "disk on fire"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import psutil

        (run / "process.json").write_text(json.dumps({"pid": child.pid, "process_started": psutil.Process(child.pid).create_time()}))
        assert run_state(run) == "running"
        child.kill()
        child.wait()
        assert run_state(run) == "crashed"  # killed outright: the record has no end, and its pid is gone
    finally:
        child.kill()
    (run / "summary.json").write_text("{}")
    assert run_state(run) == "finished"


def test_metrics_are_read_from_an_offset_and_redrawn_after_a_rewrite(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "val_loss": 5.0}\n{"step": 1, "train_loss": 4.0}\n{"step": 2, "train_')
    first = metrics_since(path, 0)
    assert [row["step"] for row in first["rows"]] == [0, 1] and not first["reset"]  # the torn last line waits
    with path.open("a") as handle:
        handle.write('loss": 3.5}\n')
    second = metrics_since(path, first["offset"])
    assert second["rows"] == [{"step": 2, "train_loss": 3.5}]
    path.write_bytes(b'\xef\xbb\xbf{"step": 0, "val_loss": 5.0}\n')  # a resume dropped the rows past its checkpoint (an editor's BOM)
    third = metrics_since(path, second["offset"])
    assert third["reset"] and [row["step"] for row in third["rows"]] == [0]
    path.write_text('{"val_loss": 5.0}\n{"step": "1", "val_loss": 4.0}\n{"step": 2, "val_loss": "low", "lr": 0.1, "x": true}\n'
                    '{"step": -5, "lr": 0.1}\n{"step": 99999999999999999999, "lr": 0.1}\n')  # rows edited by hand
    assert metrics_since(path, 0)["rows"] == [{"step": 2, "lr": 0.1}]


def test_the_form_makes_the_same_config_as_the_command_line(runs_root):
    launcher = Launcher(RunsFolder(runs_root))
    cfg = launcher.config(Draft.from_form({**FORM_RUN, "train.weight_decay": "0.0"}))
    assert cfg.data.train == [str(runs_root / "data" / "corpus.jsonl")] and cfg.model.name == str(runs_root / "models" / "gpt2")
    assert cfg.run_dir == runs_root / "from-form" and cfg.train.max_steps == 3000
    with pytest.raises(ConfigError) as from_form:
        launcher.config(Draft.from_form({**FORM_RUN, "train.lr": "fast"}))
    with pytest.raises(ConfigError) as from_cli:
        load_config(None, [("train.lr", "fast")])
    assert from_form.value.problems == from_cli.value.problems
    for outside in ("../secret.txt", "/etc/passwd", "data/../../secret.txt"):
        with pytest.raises(ConfigError, match="outside the runs folder"):
            launcher.config(Draft.from_form({**FORM_RUN, "data.train": outside}))
    with pytest.raises(ConfigError, match="run name"):
        launcher.config(Draft.from_form({**FORM_RUN, "run_name": "../escape"}))
    assert launcher.config(Draft.from_form({**FORM_RUN, "model.name": "HuggingFaceTB/SmolLM2-135M"})).model.name == \
        "HuggingFaceTB/SmolLM2-135M"  # a hub id is a name, not a path
    assert launcher.config(Draft.from_form({**FORM_RUN, "monitor.drift_from": "models/gpt2"})).monitor.drift_from == \
        str(runs_root / "models" / "gpt2")
    with pytest.raises(ConfigError, match="monitor.drift_from: .*outside the runs folder"):
        launcher.config(Draft.from_form({**FORM_RUN, "monitor.drift_from": "/etc"}))


def test_compare_lists_only_the_keys_that_differ(runs_root):
    comparison = RunsFolder(runs_root).compare(["lr-high", "lr-low"])
    assert comparison["differing"] == [("train.lr", [0.003, 0.001])]
    with pytest.raises(UserError):
        RunsFolder(runs_root).compare(["lr-high"])


def test_compare_reads_configs_damaged_into_other_kinds_of_keys(runs_root, tmp_path):
    import shutil

    configs = {"a": "1: x\ntrain: {lr: 0.1, 2: y}\n", "b": "train: {lr: 0.2, x: {1: a, b: c}}\n", "c": BILLION_LAUGHS}
    for name, config in configs.items():
        shutil.copytree(runs_root / "lr-high", tmp_path / name, ignore=shutil.ignore_patterns("checkpoints", "final"))
        (tmp_path / name / "config.yaml").write_text(config)
    differing = dict(RunsFolder(tmp_path).compare(["a", "b"])["differing"])
    assert differing == {"1": ["x", None], "train.2": ["y", None], "train.lr": [0.1, 0.2], "train.x": [None, {1: "a", "b": "c"}]}
    (tmp_path / "c" / "metrics.jsonl").unlink()
    (tmp_path / "c" / "metrics.jsonl").mkdir()  # a folder where a file belongs: that run shows no curves, the rest stand
    client = TestClient(create_app(tmp_path, port=7860), base_url="http://127.0.0.1:7860")
    assert client.get("/compare?run=a&run=b&run=c").status_code == 200  # c's config is read as empty, not walked
    for page in ("/", "/api/runs", "/runs/c"):
        assert client.get(page).status_code == 200, page


def test_the_guard_refuses_other_hosts_origins_forms_and_missing_tokens(runs_root):
    client = TestClient(create_app(runs_root, port=7860), base_url="http://127.0.0.1:7860")
    assert client.get("/").status_code == 200
    assert client.get("/", headers={"Host": "evil.example:7860"}).status_code == 421  # a rebound DNS name
    assert client.post("/api/run/lr-high/stop", content="x", headers={"Content-Type": "text/plain"}).status_code == 415
    foreign = client.post("/api/run/lr-high/stop", json={}, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert client.post("/api/run/lr-high/stop", json={}).json()["error"] == "lr-high is not running"
    same_machine = client.post("/api/run/lr-high/stop", json={}, headers={"Origin": "http://localhost:7860"})
    assert same_machine.status_code == 400  # this server by another of its names: past the guard, and not running
    guarded = TestClient(create_app(runs_root, port=7860, token="s3cret"), base_url="http://127.0.0.1:7860")
    assert guarded.get("/").status_code == 401
    assert guarded.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    opened = guarded.get("/?token=s3cret")  # the address `tunesmith ui` prints: sets the cookie, then the page
    assert opened.status_code == 200 and "lr-high" in opened.text


def test_files_outside_the_runs_folder_are_refused(runs_root):
    client = TestClient(create_app(runs_root, port=7860), base_url="http://127.0.0.1:7860")
    (runs_root / "link-out").symlink_to(runs_root.parent / "secret.txt")
    mark_run_dir(runs_root.parent / "run-outside")
    (runs_root / "linked-run").symlink_to(runs_root.parent / "run-outside")
    try:
        listed = client.get("/")
        assert listed.status_code == 200 and "lr-high" in listed.text and "linked-run" not in listed.text
        for path in ("/files/%2E%2E/secret.txt", "/files/..%2Fsecret.txt", "/files/link-out", "/runs/%2E%2E", "/runs/linked-run",
                     "/api/run/..%2F..%2Fetc/metrics", "/files//etc/passwd"):
            response = client.get(path)
            assert response.status_code in (403, 404), path
            assert "TOP SECRET" not in response.text and "root:" not in response.text
    finally:
        (runs_root / "link-out").unlink()
        (runs_root / "linked-run").unlink()
    report = client.get("/files/lr-high/report.html")
    assert report.headers["content-type"].startswith("text/html") and "script-src" not in report.text
    assert "default-src 'none'" in report.headers["content-security-policy"]


def test_trying_a_classifier_and_a_language_model(runs_root, tiny_gpt2, tmp_path):
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps(row) + "\n" for row in labelled(120)))
    train(classify_config(tiny_gpt2, reviews, runs_root / "sentiment", "head", max_steps=10, eval_every=5))
    try:
        client = TestClient(create_app(runs_root, port=7860), base_url="http://127.0.0.1:7860")
        row = next(r for r in client.get("/api/runs").json()["runs"] if r["name"] == "sentiment")
        assert row["metric"] == "accuracy" and row["higher_is_better"] and 0 <= row["best"] <= 1
        assert 'data-kind="classify"' in client.get("/runs/sentiment").text
        labelled_text = client.post("/api/run/sentiment/classify", json={"text": "the lamp hub great"}).json()
        assert labelled_text["label"] in ("negative", "positive")
        assert abs(sum(p["p"] for p in labelled_text["probabilities"]) - 1) < 1e-3
        generated = client.post("/api/run/lr-high/generate", json={"prompt": "the lamp", "settings": {"temperature": 0,
                                                                                                        "max_new_tokens": 8}})
        assert generated.status_code == 200 and isinstance(generated.json()["text"], str)
        refused = client.post("/api/run/lr-high/classify", json={"text": "the lamp"})
        assert refused.status_code == 400 and "is not a classifier" in refused.json()["error"]
    finally:
        shutil.rmtree(runs_root / "sentiment")


def test_the_command_refuses_a_busy_port_and_a_file_for_a_folder(runs_root, capsys):
    from tunesmith.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["ui", "--runs", str(runs_root), "--port", str(busy.getsockname()[1])]) == 2
    assert "Address already in use; pass another --port" in capsys.readouterr().err
    assert main(["ui", "--runs", str(runs_root / "data" / "corpus.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --runs {runs_root / 'data' / 'corpus.jsonl'} is a file; name the folder that holds your runs"
    assert main(["ui", "--runs", str(runs_root), "--max-runs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-runs 0: the page needs to train at least 1 run at once; pass 1 or more"


# ---- the pages in a real browser

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is installed by make test")


@pytest.fixture(scope="module")
def server(runs_root):
    import uvicorn

    port = free_port()
    app = create_app(runs_root, port=port)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    for process in app.app.state.launcher.processes.values():
        if process.poll() is None:
            process.kill()
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.screenshot(path=str(tmp_path / "last.png"), full_page=True)
    page.close()
    assert not errors, errors


def test_the_runs_page_lists_the_finished_runs(server, page, tmp_path):
    page.goto(server)
    rows = page.locator("#runs-body tr[data-run]")
    states = {rows.nth(i).get_attribute("data-run"): rows.nth(i).get_attribute("data-state") for i in range(rows.count())}
    assert states == {"lr-high": "finished", "lr-low": "finished", "chat": "finished"}
    assert "val perplexity: 300.4" in page.locator("tr[data-run=lr-high]").inner_text()
    page.screenshot(path=str(tmp_path / "runs.png"), full_page=True)


def test_a_run_page_draws_its_curves_and_lists_its_findings(server, page, tmp_path):
    page.goto(f"{server}/runs/lr-high")
    page.wait_for_selector("#plot-loss .scatterlayer .trace")
    assert page.locator("#plot-loss .scatterlayer .trace").count() == 2  # training and validation loss
    assert page.locator("#plot-metric .scatterlayer .trace").count() == 1
    assert int(page.locator("#plot-loss").get_attribute("data-points")) == 12 + 4
    findings = page.locator("#findings > li > b").all_inner_texts()
    assert "transfer_gain" in findings
    assert "learning rate" in page.locator("#plot-lr").inner_text()
    assert "documents: 120 read" in page.locator("#data-report").inner_text()
    assert "lr: 0.003" in page.locator("#config").inner_text()
    assert page.locator("#report-link").get_attribute("href") == "/files/lr-high/report.html"
    page.screenshot(path=str(tmp_path / "run.png"), full_page=True)


def test_comparing_two_runs_shows_only_the_keys_that_differ(server, page, tmp_path):
    page.goto(server)
    page.check("input.pick[value=lr-high]")
    page.check("input.pick[value=lr-low]")
    page.click("#compare")
    page.wait_for_selector("#plot-compare-loss .scatterlayer .trace")
    assert page.locator("#plot-compare-loss .scatterlayer .trace").count() == 4
    assert page.locator("#differing tr[data-key]").evaluate_all("rows => rows.map(r => r.dataset.key)") == ["train.lr"]
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)


def wait_for_state(page, run_dir, state: str, timeout_ms: int) -> None:
    """Wait for the run page to show `state`; on a timeout, say what the page and the run's console showed instead."""
    from playwright.sync_api import TimeoutError as PageTimeout

    try:
        page.wait_for_selector(f"#state.{state}", timeout=timeout_ms)
    except PageTimeout:
        console = (run_dir / "console.log").read_text(errors="replace")[-3000:]
        raise AssertionError(f"the page never showed {state}: it shows {page.locator('#state').inner_text()!r}, problem "
                             f"{page.locator('#action-problem').inner_text()!r}; console.log ends:\n{console}") from None


def test_a_run_started_from_the_form_stops_with_a_checkpoint_and_resumes_to_the_end(server, page, runs_root, tmp_path):
    page.goto(f"{server}/new")
    for key, value in FORM_RUN.items():
        field = page.locator(f"[name='{key}']")
        folded = page.locator(f"details:has([name='{key}'])")
        if folded.count() and not folded.evaluate("d => d.open"):
            folded.locator("summary").click()  # the section's keys fold away until opened
        field.select_option(value) if field.evaluate("f => f.tagName") == "SELECT" else field.fill(value)
    page.fill("[name='train.lr']", "fast")
    page.click("#check")
    page.wait_for_selector("#problems:not([hidden])")
    assert "train.lr: must be a valid number" in page.locator("#problems").inner_text()
    page.fill("[name='train.lr']", "0.003")
    page.click("#check")
    page.wait_for_selector("#valid:not([hidden])")
    assert page.locator("#problems").is_hidden()
    page.click("#preview")
    page.wait_for_selector("#preview-out:not([hidden])", timeout=60_000)
    assert "documents: 120 read" in page.locator("#preview-lines").inner_text()
    page.screenshot(path=str(tmp_path / "new.png"), full_page=True)
    page.click("#start")
    page.wait_for_url(f"{server}/runs/from-form")
    page.wait_for_function("Number(document.getElementById('steps').textContent) > 0", timeout=90_000)
    first = int(page.locator("#steps").inner_text())
    page.wait_for_function(f"Number(document.getElementById('steps').textContent) > {first}", timeout=30_000)
    assert int(page.locator("#plot-loss").get_attribute("data-points")) > 0
    page.screenshot(path=str(tmp_path / "running.png"), full_page=True)
    findings = page.request.get(f"{server}/fragments/run/from-form/findings")  # refreshed while the run trains
    assert findings.ok and "<li" in findings.text()
    page.click("#stop")
    wait_for_state(page, runs_root / "from-form", "stopped", 60_000)
    checkpoints = [int(p.name.split("-")[1]) for p in (runs_root / "from-form" / "checkpoints").iterdir() if "." not in p.name]
    stopped_at = int(page.locator("#steps").inner_text())
    assert stopped_at in checkpoints and stopped_at < 3000
    log = (runs_root / "from-form" / "console.log").read_text()
    assert log.startswith(f"$ tunesmith train {runs_root / 'from-form' / 'launch.yaml'} --out ") and "interrupted at step" in log
    page.click("#resume")
    wait_for_state(page, runs_root / "from-form", "finished", 300_000)
    summary = json.loads((runs_root / "from-form" / "summary.json").read_text())
    assert summary["steps"] == 3000 and "resumed from" in (runs_root / "from-form" / "console.log").read_text()
    page.screenshot(path=str(tmp_path / "finished.png"), full_page=True)


def test_chatting_with_a_finished_chat_run(server, page, tmp_path):
    page.goto(f"{server}/runs/chat")
    page.fill("#try-max-new-tokens", "200")
    page.fill("#chat-input", "how do I reset the hub")
    page.click("#chat-form button[type=submit]")
    page.wait_for_selector("#try-problem:not([hidden])")
    assert "context of 128 tokens" in page.locator("#try-problem").inner_text()  # the tiny model's
    assert page.locator(".message.user").count() == 0 and page.input_value("#chat-input") == "how do I reset the hub"
    page.fill("#try-max-new-tokens", "32")
    page.click("#chat-form button[type=submit]")
    page.wait_for_selector(".message.assistant", timeout=60_000)
    assert page.locator(".message.user").all_inner_texts() == ["how do I reset the hub"]
    assert page.locator("#try-problem").is_hidden()
    page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)


def test_the_browser_reaches_nothing_outside_the_runs_folder(server, page, runs_root):
    page.goto(server)
    for path in ("/files/%2E%2E/secret.txt", "/files/..%2Fsecret.txt", "/runs/..%2F..%2Fetc", "/files/%2Fetc%2Fpasswd"):
        response = page.request.get(server + path)
        assert response.status in (403, 404), path
        assert "TOP SECRET" not in response.text() and "root:" not in response.text()
    refused = page.request.post(f"{server}/api/new/start", data={**FORM_RUN, "run_name": "escape", "data.train": "../secret.txt"})
    assert refused.status == 400 and "outside the runs folder" in refused.json()["error"]
    assert not (runs_root / "escape").exists()

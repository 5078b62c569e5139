"""The web page (`tunesmith ui`): how fast the runs page loads with 100 runs in the folder, how soon a running run's
curve shows a step after it is written, and how the server holds with many clients refreshing at once.

One real run of the embedded default (SmolLM2-135M) on the bundled support corpus is made first; the folder is then
filled with copies of it (its metrics, summary, config, samples, data report and report, not its weights), each
copy's learning rate changed so that no two configs are alike, and with `--logged-steps` rows of metrics each
(the real run's rows repeated with their steps renumbered), so the page reads what a folder of long runs holds.

1. The runs page, in Debian's chromium through Playwright: the navigation's load time (`loadEventEnd`) on a fresh
   server (nothing cached) and then the median of 5 reloads, against the 1 s target.
2. Live curves: one copy is made to look running (its process record names this process), and rows are appended
   to its metrics.jsonl at irregular times while its page is open; printed is the time from each row's write to
   the page's curve showing its step, against the 2 s target.
3. Many clients: 16 threads, each 25 times the runs table's refresh and a run's metrics poll; the latency of each
   request (median, 95th percentile) and the errors.

    python benchmarks/bench_ui.py
    python benchmarks/bench_ui.py --runs 100 --logged-steps 1000 --steps 20
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine import cpu_name

KEPT = ("config.yaml", "summary.json", "samples.jsonl", "data_report.json", "data_meta.json", "report.html", ".tunesmith-run")


def real_run(out: Path, steps: int) -> Path:
    from tunesmith import train
    from tunesmith.config import load_config
    from tunesmith.quickstart import EXAMPLE_CORPUS

    cfg = load_config(None, [("model.name", "smollm2-135m"), ("data.train", [str(EXAMPLE_CORPUS)]), ("data.block_size", 128),
                             ("train.max_steps", steps), ("train.eval_every", max(1, steps // 4)), ("monitor.sample_count", 2),
                             ("monitor.tensorboard", False), ("output.dir", str(out))])
    train(cfg)
    return out


def fill_folder(source: Path, root: Path, count: int, logged_steps: int) -> None:
    import yaml

    rows = [json.loads(line) for line in (source / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if "train_loss" in row]
    evals = [row for row in rows if "val_loss" in row]
    eval_every = max(1, evals[1]["step"] - evals[0]["step"]) if len(evals) > 1 else 10
    for number in range(count):
        run = root / f"run-{number:03d}"
        run.mkdir(parents=True)
        for name in KEPT:
            if (source / name).is_file():
                shutil.copyfile(source / name, run / name)
        config = yaml.safe_load((source / "config.yaml").read_text())
        config["train"]["lr"] = round(config["train"]["lr"] * (1 + number / 10), 8)
        config["output"]["dir"] = str(run)
        (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        with (run / "metrics.jsonl").open("w") as handle:
            handle.write(json.dumps(evals[0]) + "\n")
            for step in range(1, logged_steps + 1):
                handle.write(json.dumps({**train_rows[(step - 1) % len(train_rows)], "step": step}) + "\n")
                if step % eval_every == 0:
                    handle.write(json.dumps({**evals[min(len(evals) - 1, step // eval_every)], "step": step}) + "\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path):
    import uvicorn

    from tunesmith.ui import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(root, port=port), host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{port}"


def load_time(page, url: str) -> float:
    page.goto(url, wait_until="load")
    return page.evaluate("() => { const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd - n.startTime; }") / 1000


def live_latency(page, base: str, run: Path, rows: int) -> list[float]:
    import psutil

    (run / "process.json").write_text(json.dumps({"pid": psutil.Process().pid, "process_started": psutil.Process().create_time(),
                                                  "started": time.time(), "total_steps": 10_000}))
    (run / "summary.json").unlink(missing_ok=True)
    metrics = run / "metrics.jsonl"
    step = max(json.loads(line)["step"] for line in metrics.read_text().splitlines())
    page.goto(f"{base}/runs/{run.name}")
    page.wait_for_function(f"Number(document.getElementById('plot-loss').dataset.lastStep) >= {step}")
    latencies, rng = [], random.Random(0)
    for _ in range(rows):
        time.sleep(rng.uniform(0.2, 1.8))
        step += 1
        with metrics.open("a") as handle:
            handle.write(json.dumps({"step": step, "lr": 1e-4, "train_loss": 2.0, "tokens_per_s": 1000.0}) + "\n")
            handle.flush()
            written = time.perf_counter()
        page.wait_for_function(f"Number(document.getElementById('plot-loss').dataset.lastStep) >= {step}", polling=10)
        latencies.append(time.perf_counter() - written)
    return latencies


def many_clients(base: str, run_name: str, clients: int, rounds: int) -> tuple[list[float], int]:
    import httpx2 as httpx

    latencies, errors, lock = [], 0, threading.Lock()

    def client(_):
        nonlocal errors
        with httpx.Client(base_url=base, timeout=30) as http:
            for _ in range(rounds):
                for path in ("/fragments/runs", f"/api/run/{run_name}/metrics?offset=0"):
                    began = time.perf_counter()
                    ok = http.get(path).status_code == 200
                    with lock:
                        latencies.append(time.perf_counter() - began)
                        errors += not ok

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--logged-steps", type=int, default=1000, help="metric rows per run in the folder")
    parser.add_argument("--steps", type=int, default=20, help="steps of the one real run")
    parser.add_argument("--rows", type=int, default=10, help="rows appended to the running run")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    try:
        print(f"CPU: {cpu_name()}; {args.runs} runs of {args.logged_steps} logged steps each")
        source = real_run(work / "source", args.steps)
        root = work / "runs"
        fill_folder(source, root, args.runs, args.logged_steps)
        server, base = start_server(root)
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            cold = load_time(page, base)
            warm = statistics.median(load_time(page, base) for _ in range(5))
            shown = page.locator("#runs-body tr[data-run]").count()
            print(f"runs page, {shown} runs: {cold:.3f} s on a fresh server, {warm:.3f} s warm (median of 5); target under 1 s")
            latencies = live_latency(page, base, root / "run-000", args.rows)
            print(f"live curve: a written step shows in {statistics.median(latencies):.2f} s (median), {max(latencies):.2f} s "
                  f"(worst of {len(latencies)}); target under 2 s")
            browser.close()
        requests, errors = many_clients(base, "run-001", 16, 25)
        requests.sort()
        print(f"16 clients x 25 rounds (runs table + metrics): {len(requests)} requests, median {statistics.median(requests) * 1000:.0f} ms, "
              f"95th percentile {requests[int(0.95 * len(requests))] * 1000:.0f} ms, {errors} errors")
        server.should_exit = True
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

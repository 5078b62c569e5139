"""Standard benchmarks through lm-evaluation-harness: tunesmith's figures beside stock lm-eval's, and what they cost.

1. LAMBADA (lm-eval's lambada_openai over ../shared/data/bench-lambada) on the embedded default: `tunesmith eval
   --benchmarks` against stock `lm_eval --model hf --model_args pretrained=DIR` on the same weights (the converted
   plain directory), both in fp32, batch 16: accuracy, perplexity and wall time (each a fresh process).
2. A LoRA run on the quickstart corpus, scored unmerged (the run) and merged (its final/).
3. Its GGUF Q8_0 export, scored as a .gguf file, against the run's own figure.
4. The quickstart run and one at 10x its learning rate, each with monitor.benchmarks: LAMBADA base -> tuned beside
   the drift from the base model's own text.
5. The cost of monitor.benchmarks (benchmark_limit 200) in a run's wall time on the quickstart corpus, beside the same run
   without benchmarks: the quickstart's settings (40 steps, an evaluation every 10), or with --settings default
   tunesmith's own defaults (`tunesmith train --model smollm2-135m --data CORPUS`: 3 epochs, an evaluation every 50 steps).

    python benchmarks/bench_benchmarks.py --data ../shared/data --limit 1000
    python benchmarks/bench_benchmarks.py --data ../shared/data --parts 1 --limit 200   # a quick check
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


CPU_SECONDS: list[float] = []  # each timed command's CPU time (user + system), which other load on the machine leaves alone


def timed(command: list[str]) -> float:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SECONDS.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return time.perf_counter() - started


def lambada_of(results: dict) -> tuple[float, float]:
    figures = results["results"]["lambada_openai"]
    return figures["acc,none"], figures["perplexity,none"]


def tunesmith_eval(model: str, task: Path, out: Path, limit: int | None, precision: str = "fp32") -> tuple[float, float, float]:
    """(accuracy, perplexity, seconds) of `tunesmith eval MODEL --benchmarks TASK`."""
    command = [str(BIN / "tunesmith"), "eval", model, "--benchmarks", str(task), "--output", str(out), "--batch-size", "16",
               "--set", f"train.precision={precision}"] + (["--limit", str(limit)] if limit else [])
    seconds = timed(command)
    return (*lambada_of(json.loads(out.read_text())), seconds)


def stock_eval(directory: str, task: Path, out: Path, limit: int | None) -> tuple[float, float, float]:
    command = [str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={directory},dtype=float32", "--device", "cpu",
               "--batch_size", "16", "--tasks", str(task), "--output_path", str(out)] + (["--limit", str(limit)] if limit else [])
    seconds = timed(command)
    written = sorted(glob.glob(str(out / "**" / "results_*.json"), recursive=True))[-1]
    return (*lambada_of(json.loads(Path(written).read_text())), seconds)


def part_same_as_stock(task: Path, work: Path, limit: int | None, rounds: int = 2) -> list[str]:
    """Both tools on the same weights; with two rounds timed in the order ours, stock, stock, ours, so that a load that
    rises or falls through the measurement weighs on both alike. The figures are each tool's mean over its runs."""
    from tunesmith.models import resolve_model

    directory = resolve_model("smollm2-135m", log=lambda _m: None).path  # converted once; a plain transformers directory
    runs = {"ours": [], "stock": []}
    order = ("ours", "stock", "stock", "ours")[:2 * rounds]
    for index, tool in enumerate(order):
        scored = tunesmith_eval("smollm2-135m", task, work / f"ours-{index}.json", limit) if tool == "ours" else \
            stock_eval(directory, task, work / f"stock-{index}", limit)
        runs[tool].append((*scored, CPU_SECONDS[-1]))
    ours, stock = ([sum(column) / len(rows) for column in zip(*rows)] for rows in (runs["ours"], runs["stock"]))
    return [f"| model | acc | perplexity | wall time (mean of {rounds}) | CPU time (mean of {rounds}) |", "| --- | --- | --- | --- | --- |",
            f"| tunesmith eval smollm2-135m --benchmarks | {ours[0]:.4f} | {ours[1]:.3f} | {ours[2]:.1f} s | {ours[3]:.1f} s |",
            f"| lm_eval --model hf pretrained=DIR | {stock[0]:.4f} | {stock[1]:.3f} | {stock[2]:.1f} s | {stock[3]:.1f} s |",
            f"| difference, ratio | {100 * (ours[0] - stock[0]):+.2f} points | {ours[1] / stock[1] - 1:+.2%} | {ours[2] / stock[2]:.2f}x "
            f"| {ours[3] / stock[3]:.2f}x |",
            "each run's wall time, in order: " + ", ".join(f"{tool} {runs[tool][order[:i].count(tool)][2]:.1f} s"
                                                           for i, tool in enumerate(order))]


def train_run(out: Path, settings: dict, base: str = "quickstart") -> dict:
    """A run on the quickstart corpus with the quickstart's settings, or (base "default") with tunesmith's own defaults."""
    from tunesmith import train
    from tunesmith.config import load_config
    from tunesmith.quickstart import QUICKSTART_SETTINGS

    pairs = [(f"{section}.{key}", value) for section, values in QUICKSTART_SETTINGS.items() for key, value in values.items()]
    if base == "default":
        pairs = [(key, value) for key, value in pairs if key in ("model.name", "data.train")]
    pairs += [("output.dir", str(out)), ("monitor.tensorboard", False), ("monitor.sample_count", 0)] + list(settings.items())
    started = time.perf_counter()
    summary = train(load_config(None, pairs))
    summary["wall_seconds"] = time.perf_counter() - started
    shown = {key: summary.get(key) for key in ("wall_seconds", "base_val_ppl", "best_val_ppl", "best_step", "benchmarks")}
    print(f"run {out.name}: {json.dumps({**shown, 'drift': summary['forgetting'].get('best_drift_nats')})}", flush=True)
    return summary


def part_lora_and_gguf(task: Path, work: Path, limit: int | None) -> list[str]:
    run = work / "lora"
    train_run(run, {"model.method": "lora", "train.lr": 1e-3})
    unmerged = tunesmith_eval(str(run), task, work / "unmerged.json", limit)
    merged = tunesmith_eval(str(run / "final"), task, work / "merged.json", limit)
    timed([str(BIN / "tunesmith"), "export", str(run), "--out", str(work / "gguf"), "--gguf", "--dtype", "q8_0"])
    gguf = next((work / "gguf").glob("*.gguf"))
    quantized = tunesmith_eval(str(gguf), task, work / "gguf.json", limit)
    return ["| LoRA run (quickstart corpus, lr 1e-3) scored as | acc | perplexity |", "| --- | --- | --- |",
            f"| the run: adapters on the base, unmerged | {unmerged[0]:.4f} | {unmerged[1]:.3f} |",
            f"| its final/ (merged) | {merged[0]:.4f} | {merged[1]:.3f} |",
            f"| its GGUF Q8_0 export ({gguf.name}) | {quantized[0]:.4f} | {quantized[1]:.3f} |",
            f"| unmerged - merged; Q8_0 - unmerged | {100 * (unmerged[0] - merged[0]):+.2f} points; "
            f"{100 * (quantized[0] - unmerged[0]):+.2f} points | {unmerged[1] / merged[1] - 1:+.2%}; {quantized[1] / unmerged[1] - 1:+.2%} |"]


def _lambada_scores(summary: dict) -> tuple[float, float, float, float]:
    bench = summary["benchmarks"]
    base = {s["metric"]: s["value"] for s in bench["base"]}
    final = {s["metric"]: s["value"] for s in bench["final"]}
    return base["acc"], final["acc"], base["perplexity"], final["perplexity"]


def part_runs(task: Path, work: Path, bench_limit: int, parts: set[str], base: str = "quickstart") -> list[str]:
    """Part 4's quickstart run with monitor.benchmarks is also part 5's measured run (its base model's scores not kept
    yet: the benchmark cache is emptied first); part 5 adds the same run again (the base's scores kept) and a run
    without benchmarks before and after them, so that the machine's load weighs on both sides alike."""
    import shutil

    from tunesmith.diagnose.rules import diagnose_run
    from tunesmith.models import tunesmith_home

    lines, runs, plain = [], {}, []
    benchmarks = {"monitor.benchmarks": [str(task)], "monitor.benchmark_limit": bench_limit}
    shutil.rmtree(tunesmith_home() / "benchmarks", ignore_errors=True)
    if "5" in parts:
        plain.append(train_run(work / "plain-before", {}, base))
    schedule = [("quickstart", 1e-4), ("quickstart again", 1e-4) if "5" in parts else None,
                ("quickstart, lr x10", 1e-3) if "4" in parts else None]
    for name, lr in [item for item in schedule if item]:
        out = work / name.replace(", ", "-").replace(" ", "-")
        settings = {**benchmarks, "train.lr": lr} if "x10" in name else benchmarks
        runs[name] = (train_run(out, settings, base if name != "quickstart, lr x10" else "quickstart"), out, lr)
    if "4" in parts:
        lines += [f"| run (LAMBADA, first {bench_limit} passages) | acc base -> tuned | perplexity base -> tuned | "
                  "drift (nats) | findings |", "| --- | --- | --- | --- | --- |"]
        for name in ("quickstart", "quickstart, lr x10"):
            summary, out, lr = runs[name]
            acc0, acc1, ppl0, ppl1 = _lambada_scores(summary)
            kinds = sorted({f.kind for f in diagnose_run(out) if f.kind in ("forgetting", "benchmark_regression")})
            lines.append(f"| {name} (lr {lr:g}) | {acc0:.4f} -> {acc1:.4f} | {ppl0:.2f} -> {ppl1:.2f} | "
                         f"{summary['forgetting'].get('best_drift_nats', float('nan')):.3f} | {', '.join(kinds) or 'none'} |")
    if "5" in parts:
        plain.append(train_run(work / "plain-after", {}, base))
        without = sum(run["wall_seconds"] for run in plain) / len(plain)
        lines += ["", f"| run on the quickstart corpus, {base} settings | wall time | benchmark time: set-up + passes | "
                      "its share of a run without | wall time against the runs without |",
                  "| --- | --- | --- | --- | --- |",
                  f"| without monitor.benchmarks (before, after) | {plain[0]['wall_seconds']:.1f} s, {plain[1]['wall_seconds']:.1f} s | | | |"]
        for name, label in (("quickstart", "base's scores computed"), ("quickstart again", "base's scores kept")):
            measured = runs[name][0]
            setup, passes = measured["benchmarks"].get("setup_seconds", 0.0), measured["benchmarks"]["seconds"]
            lines.append(f"| with LAMBADA, benchmark_limit {bench_limit}, {label} | {measured['wall_seconds']:.1f} s | "
                         f"{setup:.1f} + {passes:.1f} s | {(setup + passes) / without:.1%} | {measured['wall_seconds'] / without - 1:+.1%} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--limit", type=int, help="LAMBADA passages for parts 1-3 (default: all 5,153)")
    parser.add_argument("--bench-limit", type=int, default=200, help="monitor.benchmark_limit in parts 4 and 5")
    parser.add_argument("--rounds", type=int, default=2, choices=(1, 2),
                        help="part 1: 1 runs each tool once; 2 times them in the order ours, stock, stock, ours")
    parser.add_argument("--settings", choices=("quickstart", "default"), default="quickstart",
                        help="part 5's runs: the quickstart's settings, or tunesmith's defaults on the quickstart corpus")
    parser.add_argument("--parts", default="1,2,3,4,5", help="which measurements, e.g. 1 or 2,3 (2 and 3 share one run)")
    args = parser.parse_args()
    from tunesmith.harness.lambada import write_lambada_task

    parts = set(args.parts.split(","))
    if args.settings == "default" and "4" in parts:
        parser.error("--settings default measures part 5 alone (part 4 compares learning rates at the quickstart's settings)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-benchmarks-"))
    task = write_lambada_task(args.data / "bench-lambada" / "lambada_test.jsonl", work / "lambada_openai.yaml")
    print(f"CPU: {cpu_name()}; LAMBADA passages for parts 1-3: {args.limit or 'all 5,153'}; work folder {work}", flush=True)
    if "1" in parts:
        print("\n".join(part_same_as_stock(task, work, args.limit, args.rounds)) + "\n", flush=True)
    if parts & {"2", "3"}:
        print("\n".join(part_lora_and_gguf(task, work, args.limit)) + "\n", flush=True)
    if parts & {"4", "5"}:
        print("\n".join(part_runs(task, work, args.bench_limit, parts, args.settings)), flush=True)


if __name__ == "__main__":
    main()

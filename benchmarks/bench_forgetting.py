"""Forgetting: what fine-tuning on one domain costs the model's general text, and what each remedy saves.

The embedded default (SmolLM2-135M-Instruct) is fine-tuned on two books of the KJV (`text-kjv`) for one
epoch, once per setting below. Every run scores, at each evaluation, the forgetting probe (texts sampled
from the base model: `drift_nats`) and DailyDialog's dialogues as the user's general text
(`monitor.general_probe`: `general_ppl`), to show whether the drift tracks a real general corpus.

Settings: the default lr, 10x the default lr, and at 10x also data.replay 0.1 (rehearsing DailyDialog documents
that the probe does not score; and, with no general file, the base model's own samples), LoRA and freezing
the bottom 24 of 30 blocks. Printed: domain (validation) perplexity base -> best, drift and general perplexity at
the best step, whether `diagnose` reports `forgetting`, and the probe's share of the evaluation time.

    python benchmarks/bench_forgetting.py --data ../shared/data
    python benchmarks/bench_forgetting.py --data ../shared/data --steps 6 --runs default,lr10x   # a quick run
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from machine import cpu_name

DEFAULT_LR = 5e-5
RUNS = {
    "default": {"train.lr": DEFAULT_LR},
    "lr10x": {"train.lr": 10 * DEFAULT_LR},
    "lr10x+replay": {"train.lr": 10 * DEFAULT_LR, "data.replay": 0.1},  # rehearsal from DailyDialog documents the probe leaves
    "lr10x+replay-samples": {"train.lr": 10 * DEFAULT_LR, "data.replay": 0.1, "monitor.general_probe": "auto"},  # from base samples
    "lr10x+lora": {"train.lr": 10 * DEFAULT_LR, "model.method": "lora"},
    "lr10x+freeze": {"train.lr": 10 * DEFAULT_LR, "model.method": "freeze", "model.freeze_layers": 24},
}


def general_file(data: Path, work: Path, dialogues: int) -> Path:
    """DailyDialog's dialogues as {"text": ...} records, one turn a line."""
    lines = (data / "chat-dailydialog" / "dialogues_test.txt").read_text(encoding="utf-8").splitlines()[:dialogues]
    path = work / "dailydialog.jsonl"
    with path.open("w") as handle:
        for line in lines:
            turns = [turn.strip() for turn in line.split("__eou__") if turn.strip()]
            handle.write(json.dumps({"text": "\n".join(turns)}) + "\n")
    return path


def run(name: str, settings: dict, data: Path, general: Path, out: Path, args) -> dict:
    from tunesmith import train
    from tunesmith.config import load_config
    from tunesmith.diagnose.rules import diagnose_run

    overrides = [("data.train", str(data / "text-kjv")), ("output.dir", str(out / name)), ("train.epochs", 1.0),
                 ("train.eval_every", args.eval_every), ("train.patience", None), ("monitor.general_probe", str(general)),
                 ("monitor.probe_tokens", args.probe_tokens), ("monitor.sample_count", 0), ("monitor.tensorboard", False)]
    if args.steps:
        overrides.append(("train.max_steps", args.steps))
    overrides += list(settings.items())  # after the defaults above, so a setting's own general_probe wins
    started = time.perf_counter()
    summary = train(load_config(None, overrides))
    shutil.rmtree(out / name / "checkpoints", ignore_errors=True)  # 1.6 GB each; the figures are in the run's files
    findings = {finding.kind: finding for finding in diagnose_run(out / name)}
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if "drift_nats" in row]
    forgetting = summary["forgetting"]
    return {"name": name, "seconds": time.perf_counter() - started, "base_ppl": summary["base_val_ppl"], "best_ppl": summary["best_val_ppl"],
            "best_step": summary["best_step"], "drift": forgetting["best_drift_nats"], "ratio": forgetting["best_retained_ppl_ratio"],
            "general_base": evals[0].get("general_ppl"), "general_best": forgetting.get("best_general_ppl"),
            "final_drift": evals[-1]["drift_nats"], "final_general": evals[-1].get("general_ppl"),
            "fires": "forgetting" in findings, "message": findings["forgetting"].message if "forgetting" in findings else "",
            "probe_share": forgetting["share_of_evaluation"], "curve": [(row["step"], row["val_ppl"], row["drift_nats"],
                                                                           row.get("general_ppl")) for row in evals]}


def _general(base: float | None, best: float | None) -> str:
    return f"{base:.2f} -> {best:.2f} ({best / base - 1:+.1%})" if base else "not scored"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder (text-kjv, chat-dailydialog)")
    parser.add_argument("--runs", default=",".join(RUNS), help="which settings, comma-separated")
    parser.add_argument("--steps", type=int, default=None, help="cap each run at this many steps (default: one epoch)")
    parser.add_argument("--eval-every", type=int, default=21)
    parser.add_argument("--probe-tokens", type=int, default=4096, help="tokens of each probe (the samples, the general file)")
    parser.add_argument("--dialogues", type=int, default=400)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    print(f"machine: {cpu_name()}")
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        general = general_file(args.data, out, args.dialogues)
        results = [run(name, RUNS[name], args.data, general, out, args) for name in args.runs.split(",")]
    print("\n| setting | domain ppl base -> best (step) | drift nats (retained ppl ratio) | DailyDialog ppl base -> best | "
          "at the end: drift, DailyDialog ppl | `forgetting` | probe share of eval time | run s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['name']} | {r['base_ppl']:.2f} -> {r['best_ppl']:.2f} ({r['best_step']}) | {r['drift']:.3f} ({r['ratio']:.3f}) | "
              f"{_general(r['general_base'], r['general_best'])} | "
              f"{r['final_drift']:.3f}, {r['final_general'] or 0:.2f} | {'fires' if r['fires'] else 'silent'} | "
              f"{r['probe_share']:.1%} | {r['seconds']:.0f} |")
    for r in results:
        print(f"\n{r['name']}: step, domain ppl, drift nats, DailyDialog ppl: "
              + "; ".join(f"{s} {p:.2f} {d:.3f} {g or 0:.2f}" for s, p, d, g in r["curve"]))
        if r["message"]:
            print(f"  forgetting: {r['message']}")


if __name__ == "__main__":
    main()

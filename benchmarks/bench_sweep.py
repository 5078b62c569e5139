"""A sweep against the grid it replaces, on the quickstart corpus with the embedded default and LoRA.

    python benchmarks/bench_sweep.py grid      # 16 runs: 4 learning rates x 4 LoRA ranks
    python benchmarks/bench_sweep.py tpe       # tunesmith sweep at its defaults (TPE + successive halving): 16 trials, lr continuous
    python benchmarks/bench_sweep.py pareto    # the same space with --objectives headline,drift (no pruning)
    python benchmarks/bench_sweep.py workers   # the tpe sweep again with --workers 2
    python benchmarks/bench_sweep.py hyperband # the tpe sweep with --pruner hyperband
    python benchmarks/bench_sweep.py replay    # the grid's curves through the sweep's sampler and each pruner, 20 seeds each
    python benchmarks/bench_sweep.py all       # each in turn, then the comparison

Each part keeps its runs under --work (default /tmp/tunesmith-bench-sweep) and prints its figures; `compare` (run by
`all`, or alone once the parts have run) prints the grid's best beside the sweep's best, their training steps, where
the headline's best sits on the Pareto front, and trials per hour for one worker and for two.

`replay` trains nothing: it reads the grid's validation curves (every evaluation of the 16 runs), interpolates them in
log learning rate, and runs 16-trial studies on them with the sweep's own sampler and each of its pruners (built by
tunesmith's `sampler_for` and `pruner_for`), and with TPE at Optuna's default of 24 candidates for contrast, over 20
seeds: the share of the grid's steps each spends and how often its best is within 2% of the grid's. It shows what a
single sweep's figures are one draw of.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from machine import cpu_name

LRS = [3e-5, 1e-4, 3e-4, 1e-3]
RANKS = [4, 8, 16, 32]
TRAIN = {"max_steps": 30, "eval_every": 5, "micro_batch_size": 4, "warmup_steps": 3, "patience": None, "save_every": 1000}


def corpus() -> str:
    from tunesmith.quickstart import EXAMPLE_CORPUS

    return str(EXAMPLE_CORPUS)


def base_config(work: Path) -> Path:
    config = {"model": {"name": "smollm2-135m", "method": "lora"}, "data": {"train": [corpus()], "block_size": 128},
              "train": TRAIN, "monitor": {"sample_count": 0, "tensorboard": False}}
    path = work / "base.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def space_file(work: Path) -> Path:
    path = work / "space.yaml"
    path.write_text(f"train.lr: {{log: [{LRS[0]}, {LRS[-1]}]}}\nmodel.lora_rank: {RANKS}\n")
    return path


def tunesmith(*args: str) -> float:
    print("$ tunesmith " + " ".join(args), flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tunesmith", *args], check=True)
    return time.perf_counter() - started


def grid(work: Path) -> None:
    base = base_config(work)
    started = time.perf_counter()
    for lr in LRS:
        for rank in RANKS:
            out = work / "grid" / f"lr{lr:g}-r{rank}"
            if (out / "summary.json").is_file():
                continue
            shutil.rmtree(out, ignore_errors=True)  # a run this benchmark left unfinished starts again
            tunesmith("train", str(base), "--out", str(out), "--force", "--set", f"train.lr={lr}",
                      "--set", f"model.lora_rank={rank}")
    (work / "grid" / "seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - started}))


def grid_rows(work: Path) -> list[dict]:
    rows = []
    for summary_path in sorted((work / "grid").glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        config = yaml.safe_load((summary_path.parent / "config.yaml").read_text())
        rows.append({"lr": config["train"]["lr"], "rank": config["model"]["lora_rank"], "ppl": summary["best_val_ppl"],
                     "drift": summary["forgetting"].get("best_drift_nats"), "steps": summary["steps"],
                     "seconds": summary["train_seconds"]})
    return rows


def sweep(work: Path, name: str, *extra: str) -> None:
    seconds = tunesmith("sweep", str(base_config(work)), "--space", str(space_file(work)), "--trials", "16", "--study", name,
                        "--sweeps", str(work / "sweeps"), *extra)
    (work / "sweeps" / name / "seconds.json").write_text(json.dumps({"seconds": seconds}))


def sweep_results(work: Path, name: str) -> dict | None:
    path = work / "sweeps" / name / "sweep.json"
    if not path.is_file():
        return None
    found = json.loads(path.read_text())
    found["seconds"] = json.loads((work / "sweeps" / name / "seconds.json").read_text())["seconds"]
    return found


def front_of(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not any(o["ppl"] <= r["ppl"] and o["drift"] <= r["drift"] and o is not r for o in rows)]


def compare(work: Path) -> None:
    print(f"\nmachine: {cpu_name()}; embedded default, LoRA, quickstart corpus, {TRAIN['max_steps']} steps of 4 x 128 tokens, "
          f"evaluated every {TRAIN['eval_every']}")
    rows = grid_rows(work)
    if rows:
        best = min(rows, key=lambda r: r["ppl"])
        steps = sum(r["steps"] for r in rows)
        print(f"\ngrid ({len(rows)} runs): best val perplexity {best['ppl']:.3f} at lr {best['lr']:g}, rank {best['rank']}; "
              f"{steps} training steps; {json.loads((work / 'grid' / 'seconds.json').read_text())['seconds'] / 60:.1f} min")
        print("| lr \\ rank | " + " | ".join(map(str, RANKS)) + " |\n|" + " --- |" * (len(RANKS) + 1))
        for lr in LRS:
            cells = [next((f"{r['ppl']:.3f} ({r['drift']:.3f})" for r in rows if r["lr"] == lr and r["rank"] == rank), "")
                     for rank in RANKS]
            print(f"| {lr:g} | " + " | ".join(cells) + " |")
        print("(val perplexity at the best step, and the drift in nats per token)")
    tpe = sweep_results(work, "tpe")
    for name, label in (("tpe", "TPE + successive halving (the defaults)"), ("hyperband", "TPE + Hyperband")):
        found = sweep_results(work, name)
        if not (found and rows):
            continue
        best_sweep = found["best"]
        gap = best_sweep["headline"] / best["ppl"] - 1
        print(f"\n{label} (16 trials): best val perplexity {best_sweep['headline']:.3f} "
              f"(lr {best_sweep['params']['train.lr']:.3g}, rank {best_sweep['params'].get('model.lora_rank')}), {gap:+.2%} against "
              f"the grid's best; {found['steps']} training steps = {found['steps'] / steps:.0%} of the grid's; "
              f"{found['counts']['pruned']} trials pruned; {found['seconds'] / 60:.1f} min")
    pareto = sweep_results(work, "pareto")
    if pareto:
        trials = {t["number"]: t for t in pareto["trials"]}
        front = [trials[n] for n in pareto["pareto_front"]]
        knee = pareto["best"]
        headline = pareto["headline_best"]
        print(f"\n--objectives headline,drift (16 trials, no pruning): {len(front)} trials on the Pareto front:")
        for t in sorted(front, key=lambda t: t["headline"]):
            mark = " (knee)" if t["number"] == knee["number"] else ""
            print(f"  trial {t['number']}: val perplexity {t['headline']:.3f}, drift {t['drift']:.3f} "
                  f"(lr {t['params']['train.lr']:.3g}, rank {t['params'].get('model.lora_rank')}){mark}")
        print(f"the headline's best (trial {headline['number']}): perplexity {headline['headline']:.3f}, drift {headline['drift']:.3f}; "
              f"the knee: perplexity {knee['headline']:.3f} ({knee['headline'] / headline['headline'] - 1:+.2%}), drift {knee['drift']:.3f} "
              f"({knee['drift'] / headline['drift'] - 1:+.0%}); {pareto['seconds'] / 60:.1f} min")
    if rows:
        grid_front = front_of([r for r in rows if r["drift"] is not None])
        print("the grid's own front (perplexity, drift): " + ", ".join(f"{r['ppl']:.3f}/{r['drift']:.3f}" for r in sorted(grid_front, key=lambda r: r["ppl"])))
    two = sweep_results(work, "workers")
    if tpe and two:
        for label, found in (("1 worker", tpe), ("2 workers", two)):
            done = found["counts"]["complete"] + found["counts"]["pruned"]
            print(f"{label}: {done} trials in {found['seconds'] / 60:.1f} min = {done / found['seconds'] * 3600:.1f} trials/hour, "
                  f"{found['steps'] / found['seconds'] * 3600:.0f} steps/hour; best val perplexity {found['best']['headline']:.3f}")


def replay(work: Path, seeds: int = 20) -> None:
    """The grid's curves through the sweep's own sampler and each pruner, `seeds` studies each."""
    import math
    import warnings

    import numpy as np
    import optuna

    from tunesmith.sweep.study import PRUNERS, SweepSettings, pruner_for, sampler_for

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    curves = {}
    for lr in LRS:
        for rank in RANKS:
            rows = [json.loads(line) for line in (work / "grid" / f"lr{lr:g}-r{rank}" / "metrics.jsonl").read_text().splitlines()]
            curves[rank, lr] = {row["step"]: row["val_ppl"] for row in rows if "val_ppl" in row}
    steps = list(range(TRAIN["eval_every"], TRAIN["max_steps"] + 1, TRAIN["eval_every"]))
    grid_best = min(min(curve[s] for s in steps) for curve in curves.values())

    def ppl(lr: float, rank: int, step: int) -> float:
        return math.exp(np.interp(math.log(lr), [math.log(v) for v in LRS], [math.log(curves[rank, v][step]) for v in LRS]))

    def settings(pruner: str) -> SweepSettings:
        return SweepSettings(name="replay", folder=work, config=None, overrides=(), space=work, trials=16, pruner=pruner)

    def optuna_tpe(seed: int):
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4, multivariate=True, group=True)

    print(f"\nreplay: the grid's curves, 16-trial studies, {seeds} seeds each")
    print("| sampler | pruner | steps, mean (10th-90th percentile) | best within 2% of the grid's | both targets |\n| --- | --- | --- | --- | --- |")
    for sampler_name, make_sampler in (("TPE, 256 candidates (tunesmith's)", lambda seed: sampler_for(settings("none"), seed)),
                                       ("TPE, 24 candidates (Optuna's default)", optuna_tpe)):
        for pruner in PRUNERS:
            shares, gaps = [], []
            for seed in range(seeds):
                study = optuna.create_study(sampler=make_sampler(seed), pruner=pruner_for(settings(pruner), TRAIN["eval_every"]),
                                            study_name=f"replay-{seed}")  # Hyperband's brackets follow the name
                spent, best = 0, math.inf
                for _ in range(16):
                    trial = study.ask()
                    lr, rank = trial.suggest_float("lr", LRS[0], LRS[-1], log=True), trial.suggest_categorical("rank", RANKS)
                    seen = []
                    for step in steps:
                        seen.append(ppl(lr, rank, step))
                        if step == steps[-1]:  # a run's last evaluation is its end, not judged (as in training)
                            break
                        trial.report(seen[-1], step)
                        if trial.should_prune():
                            break
                    spent += step
                    if step < steps[-1]:
                        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    else:
                        study.tell(trial, min(seen))
                        best = min(best, min(seen))
                shares.append(spent / (16 * TRAIN["max_steps"]))
                gaps.append(best / grid_best - 1)
            shares, gaps = np.array(shares), np.array(gaps)
            print(f"| {sampler_name} | {pruner} | {shares.mean():.0%} ({np.percentile(shares, 10):.0%}-{np.percentile(shares, 90):.0%}) | "
                  f"{np.mean(gaps <= 0.02):.0%} of seeds (mean gap {gaps.mean():+.2%}) | {np.mean((gaps <= 0.02) & (shares <= 0.5)):.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("grid", "tpe", "pareto", "workers", "hyperband", "replay", "compare", "all"))
    parser.add_argument("--work", default="/tmp/tunesmith-bench-sweep")
    parser.add_argument("--minutes", type=float, help="workers: stop starting trials after this long (trials per hour still compare)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.part in ("grid", "all"):
        grid(work)
    if args.part in ("tpe", "all"):
        sweep(work, "tpe")
    if args.part in ("pareto", "all"):
        sweep(work, "pareto", "--objectives", "headline,drift")
    if args.part in ("workers", "all"):
        sweep(work, "workers", "--workers", "2", *(["--minutes", str(args.minutes)] if args.minutes else []))
    if args.part == "hyperband":
        sweep(work, "hyperband", "--pruner", "hyperband")
    if args.part != "replay":
        compare(work)
    if args.part in ("replay", "all"):
        replay(work)


if __name__ == "__main__":
    main()

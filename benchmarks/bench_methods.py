"""Peak memory (RSS) and training tokens/s of each method (full, freeze, LoRA) on the embedded default model.

Each method trains in its own process, so its peak RSS is its own. On the bundled example corpus:

    python benchmarks/bench_methods.py [--steps 12] [--batch-size 4] [--block-size 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from peak_rss import run_with_peak_rss

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "src" / "tunesmith" / "examples" / "lumora_support.jsonl"
METHODS = {
    "full": [],
    "freeze (train the last 10 of 30 blocks)": ["--set", "model.method=freeze", "--set", "model.train_last_layers=10"],
    "lora (rank 8, attention + MLP)": ["--set", "model.method=lora", "--set", "train.lr=1e-3"],
}


def run(name: str, extra: list[str], args, out: Path) -> dict:
    command = [sys.executable, "-m", "tunesmith", "train", "--data", str(CORPUS), "--out", str(out),
               "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--block-size", str(args.block_size),
               "--set", f"train.eval_every={args.steps}", "--set", "train.eval_max_blocks=4", "--set", "train.patience=null", *extra]
    returncode, _, stderr, peak_mb = run_with_peak_rss(command, quiet_stdout=True)
    if returncode:
        raise SystemExit(f"{name} failed: {stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_losses = [row["train_loss"] for row in rows if "train_loss" in row]
    return {"peak_rss_mb": peak_mb, "tokens_per_s": summary["tokens_per_s"], "trainable": summary["trainable_parameters"],
            "first_loss": train_losses[0], "last_loss": train_losses[-1], "val_ppl": (summary["base_val_ppl"], summary["best_val_ppl"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=256)
    args = parser.parse_args()
    print(f"embedded default (SmolLM2-135M), CPU, bf16 autocast where supported; {args.steps} steps of "
          f"{args.batch_size}x{args.block_size} tokens")
    print(f"{'method':42} {'trainable':>11} {'peak RSS MB':>12} {'tokens/s':>9} {'train loss first -> last':>25} {'val ppl':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in METHODS.items():
            result = run(name, extra, args, Path(tmp) / name.split()[0])
            base, best = result["val_ppl"]
            print(f"{name:42} {result['trainable'] / 1e6:10.1f}M {result['peak_rss_mb']:12.0f} {result['tokens_per_s']:9.0f} "
                  f"{result['first_loss']:11.3f} -> {result['last_loss']:.3f} {base:7.2f} -> {best:.2f}")


if __name__ == "__main__":
    main()

"""A reward model (`task: reward`, Bradley-Terry) on real pairs, with the embedded default model and LoRA.

    python benchmarks/bench_reward.py --data ../shared/data/chat-dailydialog

The pairs are those `bench_preference.py preference` builds from DailyDialog (its functions, imported): the
context of up to three turns, the true next turn as the chosen answer and a turn of another dialogue as the
rejected one, a fifth of the dialogues held out. It trains a reward model on the training pairs and prints the
pairwise accuracy on the held-out pairs (the share whose chosen answer outscores the rejected one), base (an
untrained head: about chance) against tuned, with the wall time and the machine. One `tunesmith train` in its own process.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import tempfile
from pathlib import Path

from bench_preference import dialogues, held_out, pairs, train, write_jsonl
from machine import cpu_name


def cpu_flags() -> str:
    """Which of the CPU's bf16 paths `lscpu` lists: they decide what bf16 autocast costs here."""
    try:
        flags = next(line for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                     if line.startswith("Flags")).split()
    except (OSError, StopIteration):
        return "flags unknown"
    present = [flag for flag in ("avx512_bf16", "amx_bf16", "amx_tile") if flag in flags]
    return ", ".join(present) if present else "no avx512_bf16 or AMX"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/chat-dailydialog"))
    parser.add_argument("--pairs", type=int, default=0, help="training pairs used (0: all)")
    parser.add_argument("--val-pairs", type=int, default=200, help="held-out pairs scored (0: all 524)")
    parser.add_argument("--steps", type=int, default=200, help="800 of the 2,100 training pairs at the defaults")
    parser.add_argument("--micro-batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--work")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="passed to the run")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="tunesmith-reward-"))
    work.mkdir(parents=True, exist_ok=True)
    train_dialogues, val_dialogues = held_out(dialogues(args.data))
    rng = random.Random(0)
    train_rows, val_rows = pairs(train_dialogues, rng)[: args.pairs or None], pairs(val_dialogues, rng)[: args.val_pairs or None]
    train_file, val_file = write_jsonl(work / "pairs_train.jsonl", train_rows), write_jsonl(work / "pairs_val.jsonl", val_rows)
    print(f"{len(train_rows)} training pairs, {len(val_rows)} held-out pairs (from a fifth of the dialogues)")
    settings = ["task=reward", "model.method=lora", f"train.lr={args.lr}", f"train.max_steps={args.steps}",
                f"train.eval_every={args.steps}", f"train.micro_batch_size={args.micro_batch}", f"data.block_size={args.block_size}",
                "train.patience=null", "monitor.sample_count=0", *args.set]
    s, seconds = train(work, "reward", train_file, val_file, settings)
    print(f"\nreward model, embedded default, LoRA r=8, {args.steps} steps of {args.micro_batch} pairs at lr {args.lr:g}, "
          f"rows of at most {args.block_size} tokens{''.join(' --set ' + x for x in args.set)}")
    print(f"CPU: {cpu_name()} ({cpu_flags()}); {s['device']}, {s['precision']}")
    print("| held-out pairs | pairwise accuracy, base | tuned | points | margin, base -> tuned | chosen reward | rejected reward | wall time |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {s['pairs']} | {s['base_pairwise_accuracy']:.1%} | {s['pairwise_accuracy']:.1%} | "
          f"{100 * (s['pairwise_accuracy'] - s['base_pairwise_accuracy']):+.1f} | {s['base_reward_margin']:.3f} -> {s['reward_margin']:.3f} | "
          f"{s['chosen_reward']:.3f} (std {s['chosen_reward_std']:.3f}) | {s['rejected_reward']:.3f} (std {s['rejected_reward_std']:.3f}) | "
          f"{seconds:.0f} s |")


if __name__ == "__main__":
    main()

"""Instruction tuning and preference tuning on real data, with the embedded default model.

    python benchmarks/bench_preference.py instruction --data ../shared/data
    python benchmarks/bench_preference.py preference --data ../shared/data/chat-dailydialog --methods dpo orpo

`instruction` builds an instruction set in two formats: the UCI review sentences as Alpaca records
("Classify the sentiment ..." -> positive/negative) and DailyDialog turns as prompt/completion records
(a turn -> the reply). A fifth of each is held out as the validation file. It trains one epoch and prints
the held-out answer-token perplexity, base against tuned, without and with NEFTune noise.

`preference` builds pairs from DailyDialog: the context (up to three turns), the true next turn as the
chosen answer and a turn of another dialogue as the rejected one, holding out a fifth of the dialogues.
For each method it trains one epoch with LoRA and prints the likelihood preference accuracy on the
held-out pairs, base against tuned, and the wall time. Each run is a `tunesmith train` in its own process.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name


def dialogues(source: Path) -> list[list[str]]:
    lines = (source / "dialogues_test.txt").read_text(encoding="utf-8").splitlines()
    return [[turn.strip() for turn in line.split("__eou__") if turn.strip()] for line in lines]


def held_out(items: list, seed: int = 0) -> tuple[list, list]:
    """Four fifths to train and one to validate, by a fixed shuffle."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    cut = len(items) // 5
    return [items[i] for i in order[cut:]], [items[i] for i in order[:cut]]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def train(work: Path, name: str, train_file: Path, val_file: Path, settings: list[str]) -> tuple[dict, float]:
    out = work / name
    command = [sys.executable, "-m", "tunesmith", "train", "--data", str(train_file), "--val-data", str(val_file),
               "--out", str(out), "--force"] + [arg for setting in settings for arg in ("--set", setting)]
    print("$ tunesmith " + " ".join(command[3:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return json.loads((out / "summary.json").read_text()), time.perf_counter() - started


def instruction(args) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="tunesmith-instruction-"))
    work.mkdir(parents=True, exist_ok=True)
    reviews = []
    for name in ("amazon_cells_labelled.txt", "imdb_labelled.txt", "yelp_labelled.txt"):
        for line in (args.data / "sentiment-uci" / name).read_text(encoding="utf-8").splitlines():
            text, tab, label = line.rpartition("\t")
            if tab and label.strip() in ("0", "1"):
                reviews.append({"instruction": "Classify the sentiment of this review as positive or negative.", "input": text.strip(),
                                "output": "positive" if label.strip() == "1" else "negative"})
    turns = [{"prompt": d[i], "completion": d[i + 1]} for d in dialogues(args.data / "chat-dailydialog") for i in range(0, len(d) - 1, 2)]
    rng = random.Random(0)
    reviews, turns = rng.sample(reviews, min(args.examples, len(reviews))), rng.sample(turns, min(args.examples, len(turns)))
    review_train, review_val = held_out(reviews)
    turn_train, turn_val = held_out(turns)
    train_file = write_jsonl(work / "instructions_train.jsonl", review_train + turn_train)
    val_file = write_jsonl(work / "instructions_val.jsonl", review_val + turn_val)
    print(f"{len(review_train) + len(turn_train)} training and {len(review_val) + len(turn_val)} held-out instructions "
          f"(reviews in Alpaca form, dialogue turns as prompt/completion)")
    common = ["task=chat", f"train.epochs={args.epochs}", f"train.lr={args.lr}", "train.eval_every=1000", "data.block_size=256",
              "monitor.sample_count=0", *args.set]
    rows = []
    for alpha in args.neftune:
        summary, seconds = train(work, f"neftune-{alpha:g}", train_file, val_file, common + [f"train.neftune_alpha={alpha}"])
        rows.append((alpha, summary, seconds))
    print(f"\ninstruction tuning, embedded default, full fine-tuning, {args.epochs:g} epoch(s) at lr {args.lr:g}; CPU: {cpu_name()}")
    print("| NEFTune alpha | held-out answer-token perplexity, base | tuned | wall time |")
    print("| --- | --- | --- | --- |")
    for alpha, summary, seconds in rows:
        print(f"| {alpha:g} | {summary['base_val_ppl']:.2f} | {summary['best_val_ppl']:.2f} | {seconds:.0f} s |")


def pairs(dialogue_list: list[list[str]], rng: random.Random) -> list[dict]:
    """One pair per dialogue: the context before a turn, that turn (chosen) and a turn of another dialogue (rejected)."""
    rows = []
    for index, turns in enumerate(dialogue_list):
        if len(turns) < 2:
            continue
        at = rng.randrange(1, len(turns))
        messages = [{"role": "assistant" if (at - j) % 2 == 0 else "user", "content": turns[j]} for j in range(max(0, at - 3), at)]
        while messages and messages[0]["role"] != "user":
            messages.pop(0)
        other = dialogue_list[(index + rng.randrange(1, len(dialogue_list))) % len(dialogue_list)]
        rejected = rng.choice(other)
        if rejected != turns[at]:
            rows.append({"prompt": messages, "chosen": turns[at], "rejected": rejected})
    return rows


def preference(args) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="tunesmith-preference-"))
    work.mkdir(parents=True, exist_ok=True)
    train_dialogues, val_dialogues = held_out(dialogues(args.data))
    rng = random.Random(0)
    train_rows, val_rows = pairs(train_dialogues, rng)[: args.pairs or None], pairs(val_dialogues, rng)
    train_file, val_file = write_jsonl(work / "pairs_train.jsonl", train_rows), write_jsonl(work / "pairs_val.jsonl", val_rows)
    print(f"{len(train_rows)} training pairs, {len(val_rows)} held-out pairs (a fifth of the dialogues)")
    results = []
    for method in args.methods:
        settings = ["task=preference", f"preference.method={method}", "model.method=lora", f"train.lr={args.lr}",
                    f"train.epochs={args.epochs}", f"train.eval_every={args.eval_every}", "data.block_size=256",
                    "monitor.sample_count=0", "train.patience=null", *args.set]
        summary, seconds = train(work, method, train_file, val_file, settings)
        results.append((method, summary, seconds))
    print(f"\npreference tuning, embedded default, LoRA r=8, {args.epochs:g} epoch(s) at lr {args.lr:g}"
          f"{''.join(' --set ' + s for s in args.set)}; CPU: {cpu_name()}")
    print("| method | likelihood preference accuracy, base | tuned | points | chosen log-prob base -> tuned | rejected | wall time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for method, s, seconds in results:
        print(f"| {method} | {s['base_likelihood_accuracy']:.1%} | {s['likelihood_accuracy']:.1%} | "
              f"{100 * (s['likelihood_accuracy'] - s['base_likelihood_accuracy']):+.1f} | {s['base_chosen_logp']:.1f} -> {s['chosen_logp']:.1f} | "
              f"{s['base_rejected_logp']:.1f} -> {s['rejected_logp']:.1f} | {seconds:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("instruction")
    one.add_argument("--data", type=Path, default=Path("../shared/data"))
    one.add_argument("--examples", type=int, default=1500, help="reviews and dialogue turns drawn from each source")
    one.add_argument("--epochs", type=float, default=1.0)
    one.add_argument("--lr", type=float, default=5e-5)
    one.add_argument("--neftune", type=float, nargs="+", default=[0.0, 5.0])
    one.add_argument("--work")
    two = commands.add_parser("preference")
    two.add_argument("--data", type=Path, default=Path("../shared/data/chat-dailydialog"))
    two.add_argument("--methods", nargs="+", default=["dpo", "orpo"])
    two.add_argument("--pairs", type=int, default=0, help="training pairs used (0: all)")
    two.add_argument("--epochs", type=float, default=1.0)
    two.add_argument("--lr", type=float, default=5e-4)
    two.add_argument("--eval-every", type=int, default=100)
    two.add_argument("--work")
    for command in (one, two):
        command.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="passed to every run")
    args = parser.parse_args()
    {"instruction": instruction, "preference": preference}[args.command](args)


if __name__ == "__main__":
    main()

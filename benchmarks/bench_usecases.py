"""The two use cases on real data, with the embedded default model: sentiment classification and a chatbot.

    python benchmarks/bench_usecases.py sentiment --data ../shared/data/sentiment-uci
    python benchmarks/bench_usecases.py dialog --data ../shared/data/chat-dailydialog

`sentiment` shuffles the UCI review sentences (amazon, imdb, yelp: 3,000 labelled sentences) with a
fixed seed, trains on two thirds and tests on the rest: a generative zero-shot baseline of the base
model, then a fine-tuned classification head. `dialog` turns DailyDialog (one dialogue per line,
turns separated by __eou__) into "A:/B:" transcripts and learns B's turns; the validation split is
held out by tunesmith. Each prints the command it ran, the wall time and the figures.
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


def run(command: list[str]) -> float:
    print("$ tunesmith " + " ".join(command[3:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def review_rows(source: Path) -> list[dict]:
    """The UCI review sentences as {text, label} rows, shuffled with seed 0."""
    rows = []
    for name in ("amazon_cells_labelled.txt", "imdb_labelled.txt", "yelp_labelled.txt"):
        for line in (source / name).read_text(encoding="utf-8").split("\n"):
            text, tab, label = line.rpartition("\t")
            if tab and label.strip() in ("0", "1"):
                rows.append({"text": text.strip(), "label": "positive" if label.strip() == "1" else "negative"})
    random.Random(0).shuffle(rows)
    return rows


def sentiment_files(source: Path, work: Path) -> tuple[Path, Path]:
    rows = review_rows(source)
    cut = len(rows) * 2 // 3
    train, test = work / "reviews_train.jsonl", work / "reviews_test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:cut]))
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[cut:]))
    print(f"{len(rows)} labelled sentences: {cut} train, {len(rows) - cut} test")
    return train, test


def sentiment(args) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="tunesmith-sentiment-"))
    work.mkdir(parents=True, exist_ok=True)
    train, test = sentiment_files(Path(args.data), work)
    base = [sys.executable, "-m", "tunesmith", "train", "--task", "classify", "--data", str(train), "--val-data", str(test),
            "--block-size", "128", "--set", "train.patience=null", "--set", "clean.dedup_near=false"]
    zero_shot = base + ["--out", str(work / "zero-shot"), "--max-steps", "1", "--lr", "1e-9",
                        "--set", "classify.method=generative", "--set", "classify.prompt='Review: {text}\\nSentiment (positive or negative):'"]
    head = base + ["--out", str(work / "head"), "--epochs", str(args.epochs), "--lr", "5e-5", "--batch-size", "16",
                   "--set", "train.eval_every=100", "--set", "classify.method=head"]
    seconds = run(zero_shot)
    shot = json.loads((work / "zero-shot" / "summary.json").read_text())
    print(f"zero-shot (generative, base model): accuracy {shot['base_accuracy']:.1%}, macro-F1 {shot['base_macro_f1']:.3f} ({seconds:.0f} s)")
    seconds = run(head)
    tuned = json.loads((work / "head" / "summary.json").read_text())
    print(f"fine-tuned head: accuracy {tuned['accuracy']:.1%}, macro-F1 {tuned['macro_f1']:.3f}; majority class "
          f"{tuned['majority_accuracy']:.1%}; wall time {seconds / 60:.1f} min ({tuned['train_seconds']:.0f} s training)")


def dialog_file(source: Path, work: Path) -> Path:
    path = work / "dailydialog.txt"
    conversations = []
    for line in (source / "dialogues_test.txt").read_text(encoding="utf-8").splitlines():
        turns = [t.strip() for t in line.split("__eou__") if t.strip()]
        if len(turns) >= 2:
            conversations.append("\n".join(f"{'AB'[i % 2]}: {t}" for i, t in enumerate(turns)))
    path.write_text("\n\n".join(conversations) + "\n", encoding="utf-8")
    print(f"{len(conversations)} dialogues")
    return path


def dialog(args) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="tunesmith-dialog-"))
    work.mkdir(parents=True, exist_ok=True)
    data = dialog_file(Path(args.data), work)
    command = [sys.executable, "-m", "tunesmith", "train", "--task", "chat", "--data", str(data), "--out", str(work / "run"),
               "--set", "chat.roles={A: user, B: assistant}", "--block-size", "256", "--batch-size", "8", "--lr", "1e-4",
               "--max-steps", str(args.steps), "--set", "train.eval_every=50", "--set", "train.patience=null",
               "--set", "monitor.sample_count=2"]
    seconds = run(command)
    summary = json.loads((work / "run" / "summary.json").read_text())
    change = summary["best_val_ppl"] / summary["base_val_ppl"] - 1
    print(f"held-out assistant-token perplexity {summary['base_val_ppl']:.2f} (base) -> {summary['best_val_ppl']:.2f} "
          f"({change:+.1%}); {summary['val_tokens']:,} assistant tokens; wall time {seconds / 60:.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="case", required=True)
    one = commands.add_parser("sentiment")
    one.add_argument("--data", default="../shared/data/sentiment-uci")
    one.add_argument("--epochs", type=float, default=1.0)
    one.add_argument("--work")
    two = commands.add_parser("dialog")
    two.add_argument("--data", default="../shared/data/chat-dailydialog")
    two.add_argument("--steps", type=int, default=100)
    two.add_argument("--work")
    args = parser.parse_args()
    sentiment(args) if args.case == "sentiment" else dialog(args)


if __name__ == "__main__":
    main()

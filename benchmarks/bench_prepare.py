"""Benchmark: tunesmith `prepare` against the Hugging Face `datasets` recipe of run_clm.py, in one run.

Both tokenize the same >= 50 MB JSONL corpus with the embedded model's tokenizer and pack it into
blocks of the same size with the same number of processes. Each side runs in its own subprocess so
that its peak RSS (summed over its process tree) is measured alone.

    python benchmarks/bench_prepare.py [--mb 50] [--block-size 1024] [--procs 2]

Needs `datasets` (pip install -r requirements/bench.txt) and ../shared/data (or --source DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

from peak_rss import run_with_peak_rss

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data"


def build_corpus(source: Path, target: Path, megabytes: int, seed: int = 0) -> int:
    """Documents of 4-12 sentences drawn at random from every text in `source`: unique, real English."""
    sentences: list[str] = []
    for path in sorted(source.rglob("*")):
        if path.is_file() and path.name != "SOURCE.txt" and path.stat().st_size < 20_000_000:
            text = path.read_text(encoding="utf-8", errors="replace")
            sentences += [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 20 <= len(s.strip()) <= 400]
    rng = random.Random(seed)
    written, docs = 0, 0
    with target.open("w") as handle:
        while written < megabytes * 1_000_000:
            doc = " ".join(rng.choice(sentences) for _ in range(rng.randint(4, 12)))
            line = json.dumps({"text": doc}) + "\n"
            handle.write(line)
            written += len(line.encode())
            docs += 1
    return docs


def run_tunesmith(corpus: Path, block_size: int, procs: int, work: Path) -> dict:
    from tunesmith.config import CleanConfig, DataConfig
    from tunesmith.data import prepare_data
    from tunesmith.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model("smollm2-135m", log=lambda _m: None))
    started = time.perf_counter()
    prepared = prepare_data(DataConfig(train=[str(corpus)], block_size=block_size), CleanConfig(), tokenizer, work)
    seconds = time.perf_counter() - started
    tokens = prepared.meta["train"]["tokens"] + prepared.meta["val"]["tokens"]
    return {"seconds": seconds, "tokens_out": tokens, "documents": prepared.report["documents_read"],
            "near_duplicates": prepared.report.get("leakage", {}).get("near_duplicates_removed", 0)}


def run_datasets(corpus: Path, block_size: int, procs: int, work: Path) -> dict:
    import datasets
    from datasets import load_dataset

    datasets.disable_progress_bars()

    from tunesmith.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model("smollm2-135m", log=lambda _m: None))
    started = time.perf_counter()
    raw = load_dataset("json", data_files=str(corpus), split="train", cache_dir=str(work))

    def tokenize(batch):
        return tokenizer(batch["text"])

    tokenized = raw.map(tokenize, batched=True, num_proc=procs, remove_columns=["text"])

    def group_texts(examples):
        concatenated = {k: sum(examples[k], []) for k in examples}
        total = (len(concatenated["input_ids"]) // block_size) * block_size
        result = {k: [t[i : i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    grouped = tokenized.map(group_texts, batched=True, num_proc=procs)
    seconds = time.perf_counter() - started
    tokens = sum(len(ids) for ids in tokenized["input_ids"])
    return {"seconds": seconds, "tokens_out": tokens, "blocks": len(grouped)}


def measure(side: str, corpus: Path, block_size: int, procs: int) -> dict:
    """Run one side in a subprocess, sampling the RSS of its whole process tree."""
    with tempfile.TemporaryDirectory() as work:
        env = dict(os.environ, TUNESMITH_HOME=os.environ.get("TUNESMITH_HOME", str(Path.home() / ".cache" / "tunesmith")))
        returncode, output, _, peak_mb = run_with_peak_rss(
            [sys.executable, __file__, "--side", side, "--corpus", str(corpus), "--block-size", str(block_size),
             "--procs", str(procs), "--work", work], env=env)
        if returncode:
            raise SystemExit(f"{side} failed with exit code {returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mb"] = peak_mb
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--side", choices=["tunesmith", "datasets"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:
        os.environ.setdefault("HF_DATASETS_CACHE", str(args.work))
        runner = run_tunesmith if args.side == "tunesmith" else run_datasets
        print(json.dumps(runner(args.corpus, args.block_size, args.procs, args.work)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        docs = build_corpus(args.source, corpus, args.mb)
        size_mb = corpus.stat().st_size / 1e6
        print(f"corpus: {size_mb:.1f} MB, {docs:,} documents; block size {args.block_size}; {args.procs} processes; cpu count {os.cpu_count()}")
        reference = measure("datasets", corpus, args.block_size, args.procs)
        ours = measure("tunesmith", corpus, args.block_size, args.procs)
    tokens = reference["tokens_out"]  # the corpus's token count; tunesmith writes fewer where it drops duplicates
    rows = [("datasets recipe (load_dataset + map tokenize + map group_texts)", reference),
            ("tunesmith prepare (clean, exact + near dedup, split, pack)", ours)]
    print(f"{'':64} {'seconds':>8} {'Mtok/s':>8} {'peak RSS MB':>12}")
    for name, result in rows:
        print(f"{name:64} {result['seconds']:8.1f} {tokens / result['seconds'] / 1e6:8.3f} {result['peak_rss_mb']:12.0f}")
    print(f"tunesmith / datasets: {reference['seconds'] / ours['seconds']:.2f}x tokens/s, "
          f"{ours['peak_rss_mb'] / reference['peak_rss_mb']:.2f}x peak RSS "
          f"(targets: >= 3x tokens/s, <= 0.5x RSS, >= 0.75 Mtok/s)")
    print(f"tunesmith kept {ours['tokens_out']:,} of {tokens:,} tokens ({ours['near_duplicates']} near-duplicates removed)")


if __name__ == "__main__":
    main()

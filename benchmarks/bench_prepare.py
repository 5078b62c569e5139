"""Benchmark: tunesmith `prepare` against the Hugging Face `datasets` recipe of run_clm.py, in one run.

Both tokenize the same corpus with the embedded model's tokenizer and pack it into blocks of the same
size with the same number of processes. Each side runs in its own subprocess, timed as a whole process
(interpreter start-up, imports and tokenizer loading included) with the peak RSS of its process tree.

    python benchmarks/bench_prepare.py [--corpus paragraphs|jsonl] [--mb 50] [--block-size 1024] [--procs 2]
    python benchmarks/bench_prepare.py --corpus paragraphs --profile    # where tunesmith's time goes
    python benchmarks/bench_prepare.py --chat-mb 50 200                  # peak memory preparing chat JSONL

`paragraphs` is a .txt of long English paragraphs, one per line with blank lines between, read by the
recipe with load_dataset("text"); `jsonl` is short documents, read with load_dataset("json").
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

STARTED = time.perf_counter()  # noqa: E402  the whole process's clock starts at the top of the file

import numpy as np  # noqa: E402
from peak_rss import run_with_peak_rss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data"


def _sentences(source: Path) -> list[str]:
    sentences: list[str] = []
    for path in sorted(source.rglob("*")):
        if path.is_file() and path.name != "SOURCE.txt" and path.stat().st_size < 20_000_000:
            text = path.read_text(encoding="utf-8", errors="replace")
            sentences += [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text) if 20 <= len(s.strip()) <= 400]
    return sentences


def build_corpus(source: Path, target: Path, megabytes: int, kind: str, seed: int = 0) -> int:
    """Documents drawn at random from every text in `source`: unique, real English.

    jsonl: 4-12 sentences each, one JSON object per line; paragraphs: 20-60 sentences each (2-8 KB),
    one paragraph per line of a .txt with a blank line between.
    """
    sentences = _sentences(source)
    rng = random.Random(seed)
    low, high = (4, 12) if kind == "jsonl" else (20, 60)
    written, docs = 0, 0
    with target.open("w") as handle:
        while written < megabytes * 1_000_000:
            doc = " ".join(rng.choice(sentences) for _ in range(rng.randint(low, high)))
            line = json.dumps({"text": doc}) + "\n" if kind == "jsonl" else doc + "\n\n"
            handle.write(line)
            written += len(line.encode())
            docs += 1
    return docs


def build_chat_corpus(source: Path, target: Path, megabytes: int, seed: int = 0) -> int:
    """Conversations of 4-12 turns drawn from the DailyDialog utterances, as OpenAI-style messages lines."""
    utterances = [u.strip() for path in sorted((source / "chat-dailydialog").glob("dialogues_*.txt")) if "topic" not in path.name
                  for line in path.read_text(encoding="utf-8").splitlines() for u in line.split("__eou__") if u.strip()]
    rng = random.Random(seed)
    written, conversations = 0, 0
    with target.open("w") as handle:
        while written < megabytes * 1_000_000:
            turns = rng.randint(4, 12)
            messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": rng.choice(utterances)} for i in range(turns)]
            line = json.dumps({"messages": messages}) + "\n"
            handle.write(line)
            written += len(line.encode())
            conversations += 1
    return conversations


def run_tunesmith(corpus: Path, block_size: int, procs: int, work: Path, task: str = "lm") -> dict:
    from tunesmith.config import RunConfig
    from tunesmith.data import prepare_data
    from tunesmith.models import resolve_model
    from tunesmith.tasks import task_kind

    cfg = RunConfig.model_validate({"task": task, "data": {"train": [str(corpus)], "block_size": block_size}})
    kind = task_kind(cfg)
    tokenizer = kind.tokenizer(resolve_model("smollm2-135m", log=lambda _m: None), log=lambda _m: None)
    started = time.perf_counter()
    prepared = prepare_data(cfg.data, cfg.clean, tokenizer, work, task=kind.preparer(cfg))
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
    loader = "text" if corpus.suffix == ".txt" else "json"
    raw = load_dataset(loader, data_files=str(corpus), split="train", cache_dir=str(work))

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


def measure(side: str, corpus: Path, block_size: int, procs: int, task: str = "lm", profile: bool = False) -> dict:
    """Run one side in a subprocess, timing the whole process and sampling the RSS of its process tree."""
    with tempfile.TemporaryDirectory() as work:
        env = dict(os.environ, TUNESMITH_HOME=os.environ.get("TUNESMITH_HOME", str(Path.home() / ".cache" / "tunesmith")))
        command = [sys.executable, __file__, "--side", side, "--corpus-path", str(corpus), "--block-size", str(block_size),
                   "--procs", str(procs), "--work", work, "--task", task] + (["--profile"] if profile else [])
        started = time.perf_counter()
        returncode, output, errors, peak_mb = run_with_peak_rss(command, env=env)
        process_seconds = time.perf_counter() - started
        if returncode:
            raise SystemExit(f"{side} failed with exit code {returncode}:\n{errors[-2000:]}")
    lines = output.strip().splitlines()
    result = json.loads(lines[-1])
    result.update(peak_rss_mb=peak_mb, process_seconds=process_seconds, printed=lines[:-1])
    return result


def stage_times(corpus: Path, block_size: int, work: Path, started: float) -> list[str]:
    """Each stage of `prepare` run alone over the whole corpus, in order; wall seconds, as the user waits for them."""
    from tunesmith.config import CleanConfig, DataConfig
    from tunesmith.data.clean import transforms
    from tunesmith.data.dedup import NearDuplicateIndex
    from tunesmith.data.pipeline import batched, boilerplate_set, count_lines, encode_batch, without_boilerplate
    from tunesmith.data.read import DocumentReader
    from tunesmith.data.report import DataReport
    from tunesmith.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model("smollm2-135m", log=lambda _m: None))
    rows = [("start-up: interpreter, imports, tokenizer load", time.perf_counter() - started)]

    def timed(name, work):
        begun = time.perf_counter()
        value = work()
        rows.append((name, time.perf_counter() - begun))
        return value

    data, clean = DataConfig(train=[str(corpus)], block_size=block_size), CleanConfig()
    texts = timed("reading and decoding the file", lambda: list(DocumentReader.for_data(data, clean, DataReport()).read([corpus])))
    for name, transform in transforms(clean):
        texts = timed(f"clean: {name.replace('_', ' ')}" + (" (ftfy)" if name == "fix_unicode" else ""),
                      lambda: [transform(text) for text in texts])
    counts, documents = timed("boilerplate: counting lines", lambda: count_lines(texts))
    texts = timed("boilerplate: dropping lines", lambda: list(without_boilerplate(texts, boilerplate_set(counts, documents, clean),
                                                                                   counts, DataReport())))
    ids = timed("tokenizer (Rust, all cores)", lambda: [np.asarray(row, dtype=np.int64) for batch in batched(texts, 1024)
                                                        for row in encode_batch(tokenizer, batch)])
    index = NearDuplicateIndex(clean.near_threshold)
    signatures = timed("MinHash signatures", lambda: [sig for batch in batched(ids, 1024) for sig in index.hasher.signatures(batch)])

    def lsh():
        for key, signature in enumerate(signatures):
            minhash = index.minhash(signature)
            index.match(minhash)
            index.add(key, minhash)
    timed("LSH index: query and insert (datasketch)", lsh)
    total = sum(seconds for _, seconds in rows)
    return [f"{name:52} {seconds:7.1f} s {seconds / total:6.1%}" for name, seconds in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", dest="kind", choices=["paragraphs", "jsonl"], default="paragraphs")
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--profile", action="store_true", help="profile tunesmith's side instead of comparing")
    parser.add_argument("--chat-mb", type=int, nargs="+", help="measure peak memory preparing chat JSONL of these sizes")
    parser.add_argument("--side", choices=["tunesmith", "datasets"], help=argparse.SUPPRESS)
    parser.add_argument("--task", default="lm", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--corpus-path", dest="corpus_path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:
        os.environ.setdefault("HF_DATASETS_CACHE", str(args.work))
        if args.profile:
            print("\n".join(stage_times(args.corpus_path, args.block_size, args.work, STARTED)))
            print(json.dumps({}))
            return
        runner = run_tunesmith if args.side == "tunesmith" else run_datasets
        extra = {"task": args.task} if args.side == "tunesmith" else {}
        print(json.dumps(runner(args.corpus_path, args.block_size, args.procs, args.work, **extra)))
        return
    if args.chat_mb:
        return chat_memory(args)

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / ("corpus.txt" if args.kind == "paragraphs" else "corpus.jsonl")
        docs = build_corpus(args.source, corpus, args.mb, args.kind)
        size_mb = corpus.stat().st_size / 1e6
        print(f"corpus ({args.kind}): {size_mb:.1f} MB, {docs:,} documents; block size {args.block_size}; {args.procs} processes; "
              f"cpu count {os.cpu_count()}")
        if args.profile:
            result = measure("tunesmith", corpus, args.block_size, args.procs, profile=True)
            print("tunesmith prepare, each stage alone over the whole corpus:")
            print("\n".join(result["printed"]))
            return
        reference = measure("datasets", corpus, args.block_size, args.procs)
        ours = measure("tunesmith", corpus, args.block_size, args.procs)
    tokens = reference["tokens_out"]  # the corpus's token count; tunesmith writes fewer where it drops duplicates
    rows = [(f"datasets recipe (load_dataset {'text' if args.kind == 'paragraphs' else 'json'} + map tokenize + map group_texts)",
             reference), ("tunesmith prepare (clean, exact + near dedup, split, pack)", ours)]
    print(f"{'':72} {'process s':>9} {'work s':>7} {'Mtok/s':>7} {'peak RSS MB':>12}")
    for name, result in rows:
        print(f"{name:72} {result['process_seconds']:9.1f} {result['seconds']:7.1f} {tokens / result['process_seconds'] / 1e6:7.3f} "
              f"{result['peak_rss_mb']:12.0f}")
    print(f"tunesmith / datasets, whole processes: {reference['process_seconds'] / ours['process_seconds']:.2f}x speed, "
          f"{ours['peak_rss_mb'] / reference['peak_rss_mb']:.2f}x peak RSS (target: >= 1x speed)")
    print(f"tunesmith kept {ours['tokens_out']:,} of {tokens:,} tokens ({ours['near_duplicates']} near-duplicates removed)")


def chat_memory(args) -> None:
    """Peak RSS of `prepare --task chat` on chat JSONL of each size: flat, apart from the de-duplication index, if it streams."""
    print(f"{'chat JSONL':>10} {'conversations':>14} {'process s':>10} {'peak RSS MB':>12}")
    for megabytes in args.chat_mb:
        with tempfile.TemporaryDirectory() as tmp:
            corpus = Path(tmp) / "chat.jsonl"
            conversations = build_chat_corpus(args.source, corpus, megabytes)
            result = measure("tunesmith", corpus, args.block_size, args.procs, task="chat")
        print(f"{megabytes:>7} MB {conversations:>14,} {result['process_seconds']:>10.1f} {result['peak_rss_mb']:>12.0f}")


if __name__ == "__main__":
    main()

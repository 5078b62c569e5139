"""Distillation on real data with the embedded default as the teacher's base: a smaller student that keeps its skill.

    python benchmarks/bench_distill.py sentiment --data ../shared/data/sentiment-uci
    python benchmarks/bench_distill.py language --data ../shared/data/text-kjv/kjv_genesis_exodus.txt

`sentiment`: the UCI review sentences, two thirds to train on and one third held out (never seen in training). The
teacher is a classifier fine-tuned from the embedded default (a head, 30 blocks); the student keeps a third of its
blocks (the first 10: `--pick bottom`, its default here) and is distilled from it on the same training sentences for 8
epochs at lr 3e-4; the ablation is the same student, from the same weights, trained on the labels alone. `tunesmith eval STUDENT --compare TEACHER` measures each one's
accuracy on the held-out sentences and its `predict` rows per second on this machine.

`language`: the KJV's Genesis and Exodus. The teacher is the embedded default fine-tuned on it; the student keeps half
of its blocks (15) and is distilled on the same text, once with the teacher beside it and once from the top-k cache;
the ablation is the same student trained on the text alone. Each is measured on the teacher run's held-out chapters:
perplexity, and `generate`'s new tokens per second; the top-k cache's cost is the teacher's probability mass outside
its top k on the training positions, and the perplexity and training time against the full distribution.

`sentiment --augment N` adds N variants of each training sentence (an n-gram, or words dropped and swapped), labelled by
the teacher, to the distilled student's data, with a tenth of the sentences held out for its validation. `--heal FILE`
(either part, repeatable; `--heal-epochs`, `--heal-lr`) first distills the student, as a language model, from the base
model on that general text (its distributions and block outputs: general distillation, then the task's), and every
student starts from it. `language
--no-beside` keeps only the top-k cache's student, `--no-ablation` skips the text-alone one. `language --samples N` gives
every student more text than the teacher was fine-tuned on: N texts sampled from the teacher, each begun by a training
verse (sequence-level distillation); `--transfer FILE` adds any other text. The students then train on the teacher
run's training documents and that text, and all are measured on its held-out documents, written out as files.

Each part keeps its runs under --work, named by their settings, and reuses a finished one.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from machine import cpu_name
from tunesmith.config import DEFAULT_MODEL
from tunesmith.rundir.durable import write_atomically
from tunesmith.rundir.fingerprint import file_sha256

sys.path.insert(0, str(Path(__file__).parent))
from bench_usecases import sentiment_files  # noqa: E402


def tunesmith(*args: str) -> float:
    print("$ tunesmith " + " ".join(args), flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tunesmith", *args], check=True)
    return time.perf_counter() - started


def train_once(run: Path, *args: str) -> dict:
    """The run's summary, training it first unless it finished before."""
    if not (run / "summary.json").is_file():
        tunesmith("train", "--out", str(run), "--force", *args)
    return json.loads((run / "summary.json").read_text())


def compare(student: Path, teacher: Path, *data: str) -> list[dict]:
    """`eval STUDENT --compare TEACHER --json`: both results, each with its speed."""
    out = subprocess.run([sys.executable, "-m", "tunesmith", "eval", str(student), "--compare", str(teacher), *data, "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["results"]


AUGMENT_DROP, AUGMENT_SWAP, AUGMENT_NGRAM = 0.1, 0.1, 0.25


def variant(words: list[str], vocabulary: list[str], rng: random.Random) -> str:
    """One augmented sentence (Tang et al., 2019, without the tagger): an n-gram of 1-5 words with p 0.25, else each
    word dropped with p 0.1 or swapped for a random word of the training sentences with p 0.1."""
    if rng.random() < AUGMENT_NGRAM:
        n = rng.randint(1, min(5, len(words)))
        start = rng.randrange(len(words) - n + 1)
        return " ".join(words[start : start + n])
    kept = []
    for word in words:
        draw = rng.random()
        if draw < AUGMENT_DROP:
            continue
        kept.append(rng.choice(vocabulary) if draw < AUGMENT_DROP + AUGMENT_SWAP else word)
    return " ".join(kept)


def augmented_split(train: Path, work: Path, copies: int, teacher: Path) -> tuple[Path, Path]:
    """A tenth of the training sentences held out for validation, and the rest with `copies` variants of each that
    the teacher labels (`tunesmith predict`): a larger transfer set made from the training sentences alone."""
    rows = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]
    rng = random.Random(0)
    held = set(rng.sample(range(len(rows)), len(rows) // 10))
    kept = [r for i, r in enumerate(rows) if i not in held]
    val = work / "reviews_val.jsonl"
    val.write_text("".join(json.dumps(rows[i]) + "\n" for i in sorted(held)))
    out = work / f"reviews_train_aug{copies}.jsonl"
    if out.is_file():
        return out, val
    vocabulary = [w for r in kept for w in r["text"].split()]
    seen = {r["text"] for r in kept}
    texts = []
    for row in kept:
        for _ in range(copies):
            text = variant(row["text"].split(), vocabulary, rng)
            if text and text not in seen:
                seen.add(text)
                texts.append({"text": text})
    unlabelled, labelled = work / "augment_in.jsonl", work / "augment_out.jsonl"
    unlabelled.write_text("".join(json.dumps(t) + "\n" for t in texts))
    tunesmith("predict", str(teacher), "--input", str(unlabelled), "--output", str(labelled))
    predicted = [json.loads(line) for line in labelled.read_text(encoding="utf-8").splitlines()]
    rows_out = kept + [{"text": r["text"], "label": r["prediction"]} for r in predicted]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows_out))
    print(f"augmented: {len(kept)} training sentences and {len(predicted)} variants labelled by the teacher; {len(held)} held out for validation")
    return out, val


def general_text(source: Path, work: Path) -> Path:
    """The healing text as JSONL documents: a DailyDialog file (utterances ending in __eou__) as one dialogue per document,
    its utterances on lines of their own; any other file as it is."""
    lines = source.read_text(encoding="utf-8").splitlines()
    if not any("__eou__" in line for line in lines[:10]):
        return source
    out = work / f"{source.stem}-{file_sha256(source)[:8]}.jsonl"
    if not out.is_file():
        dialogues = ["\n".join(u.strip() for u in line.split("__eou__") if u.strip()) for line in lines]
        write_atomically(out, "".join(json.dumps({"text": d}) + "\n" for d in dialogues if d))
    return out


def cut(args) -> str:
    """distill.student for a copy of the teacher with --keep of its blocks, chosen as --pick says."""
    return f"{{from_teacher: {{keep_layers: {args.keep}, pick: {args.pick}}}}}"


def picked(args) -> str:
    """The run-name part that says how the blocks were chosen (none for the default, evenly spaced)."""
    return "" if args.pick == "spaced" else f"-{args.pick}"


def student_flags(args, work: Path) -> tuple[list[str], str]:
    """Where every student starts, as train flags, and the run-name part that says so: the healed student (with --heal),
    or a copy of the teacher with --keep of its blocks."""
    if not args.heal:
        return ["--set", f"distill.student={cut(args)}"], ""
    healed, name = healed_student(args, work.parent / "heal")
    return ["--model", str(healed)], name


def healed_student(args, work: Path) -> tuple[Path, str]:
    """General distillation before the task's (TinyBERT's two stages): the student cut from the base model learns, as a
    language model, the base model's distributions and block outputs on general text, so it regains what the removed
    blocks did before it learns the task. The healed student and its run-name part."""
    work.mkdir(parents=True, exist_ok=True)
    files = [Path(f) for f in dict.fromkeys(args.heal)]
    data = [flag for f in files for flag in ("--data", str(general_text(f, work)))]
    source = "-".join(f"{f.stem}-{file_sha256(f)[:8]}" for f in files) + (f"-lr{args.heal_lr:g}" if args.heal_lr != 3e-4 else "")
    run = work / f"heal-{args.keep}{picked(args)}-{source}-e{args.heal_epochs:g}"
    summary = train_once(run, "--task", "lm", *data, "--block-size", "128", "--batch-size", "16",
                         "--set", "train.patience=null", "--set", "train.eval_every=50", "--epochs", str(args.heal_epochs),
                         "--lr", str(args.heal_lr), "--set", f"distill.teacher={DEFAULT_MODEL}", "--set", "distill.alpha=0.5",
                         "--set", "distill.hidden=1.0",
                         "--set", f"distill.student={cut(args)}")
    print(f"healed student: {summary['train_seconds'] / 60:.1f} min on {summary['tokens_seen']:,} tokens of "
          f"{', '.join(args.heal)}; validation perplexity {summary['base_val_ppl']:.1f} -> {summary['best_val_ppl']:.2f} "
          f"(the base model's {summary['distill']['teacher_val']['val_ppl']:.2f})")
    return run / "final", f"-heal{args.heal_epochs:g}-{source}"


def sentiment(args) -> None:
    work = Path(args.work) / "sentiment"
    work.mkdir(parents=True, exist_ok=True)
    train, test = sentiment_files(Path(args.data), work)
    common = ["--task", "classify", "--block-size", "64", "--batch-size", "16",
              "--set", "train.patience=null", "--set", "clean.dedup_near=false", "--set", "train.eval_every=50"]
    teacher = work / "teacher"
    summary = train_once(teacher, *common, "--data", str(train), "--epochs", "1", "--lr", "5e-5")
    print(f"teacher: {summary['train_seconds'] / 60:.1f} min training")
    keep = args.keep
    student = f"student-{keep}{picked(args)}"

    def settings(epochs: float) -> str:
        return f"-e{epochs:g}-lr{args.lr:g}-a{args.alpha:g}-t{args.temperature:g}"

    made, heal_name = student_flags(args, work)
    distilled = work / (student + settings(args.epochs) + (f"-h{args.hidden:g}" if args.hidden else "")
                        + (f"-aug{args.augment}" if args.augment else "") + heal_name)
    student_settings = [*common, "--epochs", str(args.epochs), "--lr", str(args.lr)]
    distilled_data = ["--data", str(train)]  # --data adds a file: each run names its own
    if args.augment:
        augmented, val = augmented_split(train, work, args.augment, teacher)
        distilled_data = ["--data", str(augmented), "--val-data", str(val)]
    summary = train_once(distilled, *student_settings, *distilled_data, "--set", f"distill.teacher={teacher}", "--set", f"distill.alpha={args.alpha}",
                         "--set", f"distill.temperature={args.temperature}", "--set", f"distill.hidden={args.hidden}", *made)
    student_init = summary["model"]
    print(f"distilled student ({keep} blocks, from {student_init}): {summary['train_seconds'] / 60:.1f} min training")
    epochs = args.epochs if args.labels_epochs is None else args.labels_epochs
    alone = work / f"{student}{settings(epochs)}{heal_name}-labels"
    summary = train_once(alone, *common, "--data", str(train), "--epochs", str(epochs), "--lr", str(args.lr), "--model", student_init)
    print(f"the same student on the labels alone: {summary['train_seconds'] / 60:.1f} min training")
    held_out = ["--data", str(test), "--set", "clean.dedup_near=false"]
    student_result, teacher_result = compare(distilled, teacher, *held_out)
    alone_result, _ = compare(alone, teacher, *held_out)
    accuracy = {name: r["metrics"]["accuracy"] for name, r in (("teacher", teacher_result), ("distilled", student_result),
                                                                ("labels", alone_result))}
    speed = {name: r["speed"]["per_s"] for name, r in (("teacher", teacher_result), ("distilled", student_result))}
    a = accuracy["teacher"]
    print(f"\nmachine: {cpu_name()}; {teacher_result['tokens']:,} held-out label tokens")
    print("| model | blocks | held-out accuracy | of the teacher's | predict rows/s |\n| --- | --- | --- | --- | --- |")
    print(f"| teacher | 30 | {a:.1%} | 100% | {speed['teacher']:.1f} |")
    print(f"| student, distilled | {keep} | {accuracy['distilled']:.1%} | {accuracy['distilled'] / a:.1%} | {speed['distilled']:.1f} "
          f"({speed['distilled'] / speed['teacher']:.2f}x) |")
    print(f"| student, labels alone | {keep} | {accuracy['labels']:.1%} | {accuracy['labels'] / a:.1%} | (same network) |")
    print(f"distillation adds {accuracy['distilled'] - accuracy['labels']:+.1%} accuracy over the labels alone")


def topk_mass(run: Path) -> float | None:
    """The teacher's mean probability mass on its top k over the training positions, from the run's cache."""
    summary = json.loads((run / "summary.json").read_text())
    for folder in Path(summary["data_dir"]).glob("distill/topk-*"):
        logprobs = np.load(folder / "logprobs.npy", mmap_mode="r")
        return float(np.exp(np.asarray(logprobs, dtype=np.float64)).sum(-1).mean())
    return None


def teacher_documents(teacher: Path, work: Path) -> tuple[Path, Path]:
    """The teacher run's training and held-out documents as JSONL files, decoded from its prepared token files, so a
    student that reads more text than the teacher did is trained and measured on the same documents."""
    files = work / "teacher_train.jsonl", work / "teacher_val.jsonl"
    if all(f.is_file() for f in files):
        return files
    from transformers import AutoTokenizer

    data_dir = Path(json.loads((teacher / "summary.json").read_text())["data_dir"])
    meta = json.loads((data_dir / "meta.json").read_text())
    if json.loads((data_dir / "data_report.json").read_text()).get("mix"):
        sys.exit("the teacher's training text was mixed (weights or data.replay): its token file is not its documents in order")
    tokenizer = AutoTokenizer.from_pretrained(teacher / "final")
    for split, path in zip(("train", "val"), files):
        ids = np.fromfile(data_dir / f"{split}.bin", dtype=meta["dtype"])
        ends = np.flatnonzero(ids == meta["eos_token_id"])
        if ids[-1] != meta["eos_token_id"] or len(ends) != meta[split]["documents"]:
            sys.exit(f"the teacher's {split} tokens do not split into its {meta[split]['documents']} documents at end-of-text")
        starts = np.concatenate([[0], ends[:-1] + 1])
        rows = [{"text": tokenizer.decode(ids[a:b], clean_up_tokenization_spaces=False)} for a, b in zip(starts, ends)]
        write_atomically(path, "".join(json.dumps(r) + "\n" for r in rows))
        print(f"{split}: {len(rows)} documents, {len(ids):,} tokens -> {path}")
    return files


SAMPLE_PART = 400  # texts sampled by one `generate` call, each part with its own seed, so a larger --samples reuses parts


def teacher_samples(teacher: Path, documents: Path, work: Path, count: int, new_tokens: int) -> Path:
    """`count` texts sampled from the teacher (temperature 1, no top-k or top-p cut: its own distribution), each begun
    by the first words of a training verse: in-domain text for sequence-level distillation (Kim and Rush, 2016).

    They are sampled in parts of SAMPLE_PART prompts, part i with seed 42 + its first index, so the same count always
    gives the same texts, and a larger count reuses the parts a smaller one made (a seeded draw of the verses begins
    with a smaller draw's verses; a part whose prompts differ is refused rather than reused)."""
    out = work / f"teacher_samples_{count}x{new_tokens}.jsonl"
    if out.is_file():
        return out
    texts = [json.loads(line)["text"] for line in documents.read_text(encoding="utf-8").splitlines()]
    verses = [line.strip() for text in texts for line in text.splitlines() if len(line.split()) > 8]
    if count > len(verses):
        sys.exit(f"--samples {count}: the teacher's training documents have only {len(verses)} verse lines to begin samples with")
    prompts = [" ".join(verse.split()[:6]) for verse in random.Random(0).sample(verses, count)]
    parts = [_generated(teacher, work, prompts, first, min(first + SAMPLE_PART, count), new_tokens)
             for first in range(0, count, SAMPLE_PART)]
    rows = [row for path, _ in parts for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())
            if row["finish_reason"] != "error"]
    write_atomically(out, "".join(json.dumps({"text": r["prompt"] + r["generated"]}) + "\n" for r in rows))
    print(f"teacher samples: {len(rows)} texts")
    for path, reused in parts:
        made = json.loads(path.with_name(path.stem + ".summary.json").read_text())
        timed = "made by an earlier run" if reused else (f"{made['seconds'] / 60:.1f} min at {made['tokens_per_second']:.0f} "
                                                         "tokens/s")
        resumed = f"; {made['resumed_rows']} rows from an interrupted run, not timed" if made["resumed_rows"] else ""
        print(f"  {path.name}: {made['rows']} rows, {made['generated_tokens']:,} new tokens, {timed}{resumed}; "
              f"ended at the token limit: {made['finish_reasons'].get('length', 0)}")
    return out


def _generated(teacher: Path, work: Path, prompts: list[str], first: int, end: int, new_tokens: int) -> tuple[Path, bool]:
    """The teacher's continuations of prompts[first:end], one row each, from `tunesmith generate` (resumed from its
    own journal when interrupted), and whether an earlier run made them."""
    generated = work / f"teacher_generated_{f'{first}-' if first else ''}{end}x{new_tokens}.jsonl"
    if generated.is_file():
        if [json.loads(line)["prompt"] for line in generated.read_text(encoding="utf-8").splitlines()] != prompts[first:end]:
            sys.exit(f"{generated}: its prompts are not this draw's {first} to {end}; move it aside to sample them again")
        return generated, True
    asked = work / f"sample_prompts_{generated.stem.removeprefix('teacher_generated_')}.jsonl"
    asked.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts[first:end]))
    tunesmith("generate", str(teacher), "--input", str(asked), "--output", str(generated), "--temperature", "1", "--top-k", "0",
              "--top-p", "1", "--max-new-tokens", str(new_tokens), "--max-batch", "32", "--seed", str(42 + first))
    return generated, False


def more_text(args, teacher: Path, work: Path) -> tuple[list[str], list[str], str]:
    """With --samples or --transfer: the students' data flags (the teacher's training documents and the added text,
    its held-out documents as validation), the held-out flags for eval, and the run-name part that names the text."""
    if not (args.samples or args.transfer):
        return ["--data", args.data], [], ""
    train, val = teacher_documents(teacher, work)
    added = [str(teacher_samples(teacher, train, work, args.samples, args.sample_tokens))] if args.samples else []
    added += args.transfer
    data = ["--data", str(train), *(flag for f in added for flag in ("--data", f)), "--val-data", str(val)]
    name = (f"-s{args.samples}x{args.sample_tokens}" if args.samples else "") + "".join(
        f"-x{Path(f).stem}-{file_sha256(Path(f))[:8]}" for f in args.transfer)
    return data, ["--data", str(val)], name


def language(args) -> None:
    work = Path(args.work) / "language"
    work.mkdir(parents=True, exist_ok=True)
    shape = ["--block-size", "256", "--batch-size", "8", "--set", "train.patience=null", "--set", "train.eval_every=20"]
    teacher = work / "teacher"
    summary = train_once(teacher, "--data", args.data, *shape, "--epochs", "1", "--lr", "1e-4")
    print(f"teacher: {summary['train_seconds'] / 60:.1f} min training; held-out perplexity {summary['best_val_ppl']:.2f}")
    data, held_out, more = more_text(args, teacher, work)
    common = [*data, *shape]
    keep = args.keep
    made, heal_name = student_flags(args, work)
    plain = f"{keep}{picked(args)}-e{args.epochs:g}-lr{args.lr:g}{more}{heal_name}"  # what the text alone shares
    tag = plain + (f"-a{args.alpha:g}" if args.alpha != 0.5 else "") + (f"-t{args.temperature:g}" if args.temperature != 1 else "")
    student_settings = [*common, "--epochs", str(args.epochs), "--lr", str(args.lr)]
    distill = ["--set", f"distill.teacher={teacher}", "--set", f"distill.alpha={args.alpha}", "--set",
               f"distill.temperature={args.temperature}", *made]
    hidden = ["--set", f"distill.hidden={args.hidden}"] if args.hidden else []
    folders = {"distilled": work / (f"student-{tag}" + (f"-h{args.hidden:g}" if args.hidden else "")),
               "top-k cache": work / f"student-{tag}-top{args.topk}", "text alone": work / f"student-{plain}-text"}
    runs = {}
    if args.beside:
        runs["distilled"] = train_once(folders["distilled"], *student_settings, *distill, *hidden)
    else:
        del folders["distilled"]
    if args.topk:
        runs["top-k cache"] = train_once(folders["top-k cache"], *student_settings, *distill,
                                         "--set", "distill.cache=topk", "--set", f"distill.topk={args.topk}")
    else:
        del folders["top-k cache"]
    if args.ablation:
        runs["text alone"] = train_once(folders["text alone"], *student_settings, "--model", next(iter(runs.values()))["model"])
    else:
        del folders["text alone"]
    results = {}
    for name, folder in folders.items():
        student_result, teacher_result = compare(folder, teacher, *held_out)
        results[name] = student_result
    teacher_ppl = teacher_result["perplexity"]
    print(f"\nmachine: {cpu_name()}; held-out: the teacher run's validation chapters ({teacher_result['tokens']:,} tokens)")
    print("| model | blocks | held-out perplexity | against the teacher's | generate new tokens/s | training |\n"
          "| --- | --- | --- | --- | --- | --- |")
    print(f"| teacher | 30 | {teacher_ppl:.2f} | - | {teacher_result['speed']['per_s']:.1f} | "
          f"{json.loads((teacher / 'summary.json').read_text())['train_seconds'] / 60:.1f} min |")
    for name, result in results.items():
        summary = runs[name]
        print(f"| student, {name} | {keep} | {result['perplexity']:.2f} | {result['perplexity'] / teacher_ppl - 1:+.1%} | "
              f"{result['speed']['per_s']:.1f} ({result['speed']['per_s'] / teacher_result['speed']['per_s']:.2f}x) | "
              f"{summary['train_seconds'] / 60:.1f} min ({summary['tokens_per_s']:.0f} tokens/s) |")
    mass = topk_mass(folders["top-k cache"]) if args.topk else None
    if mass is not None:
        against = (f"; held-out perplexity {results['top-k cache']['perplexity'] / results['distilled']['perplexity'] - 1:+.1%} "
                   "against the full distribution") if "distilled" in results else ""
        print(f"top-{args.topk} cache: the teacher's top {args.topk} tokens hold {mass:.1%} of its probability on the training "
              f"positions (temperature {args.temperature}){against}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = parser.add_subparsers(dest="part", required=True)
    one = parts.add_parser("sentiment")
    one.add_argument("--data", default="../shared/data/sentiment-uci")
    one.add_argument("--keep", type=int, default=10, help="the student's blocks (the teacher has 30)")
    one.add_argument("--epochs", type=float, default=8)
    one.add_argument("--lr", type=float, default=3e-4)
    one.add_argument("--alpha", type=float, default=0.5)
    one.add_argument("--temperature", type=float, default=2.0)
    one.add_argument("--hidden", type=float, default=0.0, help="distill.hidden: the weight of the hidden-state term")
    one.add_argument("--augment", type=int, default=0,
                     help="variants of each training sentence, labelled by the teacher, added to the distilled student's data")
    one.add_argument("--labels-epochs", type=float, help="the labels-alone student's epochs (default: --epochs)")
    two = parts.add_parser("language")
    two.add_argument("--data", default="../shared/data/text-kjv/kjv_genesis_exodus.txt")
    two.add_argument("--keep", type=int, default=15)
    two.add_argument("--epochs", type=float, default=2)
    two.add_argument("--lr", type=float, default=2e-4)
    two.add_argument("--alpha", type=float, default=0.5)
    two.add_argument("--temperature", type=float, default=1.0)
    two.add_argument("--topk", type=int, default=32, help="the top-k cache's k (0: no top-k run)")
    two.add_argument("--hidden", type=float, default=0.0, help="distill.hidden for the student with the teacher beside it")
    two.add_argument("--no-ablation", dest="ablation", action="store_false", help="skip the student trained on the text alone")
    two.add_argument("--no-beside", dest="beside", action="store_false",
                     help="skip the student distilled with the teacher beside it (the top-k cache's student only)")
    two.add_argument("--samples", type=int, default=0,
                     help="texts sampled from the teacher, begun by training verses, added to every student's training text")
    two.add_argument("--sample-tokens", type=int, default=256, help="with --samples: new tokens per text")
    two.add_argument("--transfer", action="append", default=[], metavar="FILE",
                     help="more text for every student (the teacher labels it for the distilled ones; repeatable)")
    for sub in (one, two):
        sub.add_argument("--heal", metavar="FILE", action="append", default=[],
                         help="general text on which the student first learns the base model as a language model (general "
                         "distillation) before it learns the task; repeatable")
        sub.add_argument("--heal-epochs", type=float, default=1.0, help="with --heal: passes over its text")
        sub.add_argument("--heal-lr", type=float, default=3e-4, help="with --heal: its learning rate")
        sub.add_argument("--work", default="/tmp/tunesmith-bench-distill")
        sub.add_argument("--pick", choices=["spaced", "similar", "bottom"], default="spaced",
                         help="distill.student.from_teacher.pick (bottom: the teacher's first --keep blocks)")
    one.set_defaults(pick="bottom")
    args = parser.parse_args()
    if args.part == "language" and not args.beside and not args.topk:
        parser.error("--no-beside needs the top-k cache (--topk above 0)")
    if args.part == "language" and (args.samples < 0 or args.sample_tokens < 1):
        parser.error("--samples must be 0 or more and --sample-tokens at least 1")
    missing = [f"--{flag} {f}" for flag, files in (("transfer", getattr(args, "transfer", [])), ("heal", args.heal))
               for f in files if not Path(f).is_file()]
    if missing:
        parser.error(f"{missing[0]}: no such file")
    if args.heal_epochs <= 0:
        parser.error("--heal-epochs must be above 0")
    if (args.heal_epochs != 1.0 or args.heal_lr != 3e-4) and not args.heal:
        parser.error("--heal-epochs and --heal-lr need --heal FILE")
    if args.heal_lr <= 0:
        parser.error("--heal-lr must be above 0")
    if args.part == "language" and not args.beside and args.hidden:
        parser.error("--hidden applies to the student with the teacher beside it, which --no-beside skips")
    {"sentiment": sentiment, "language": language}[args.part](args)


if __name__ == "__main__":
    main()

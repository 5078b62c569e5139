"""GRPO on real data with the embedded default model: steering a generator with a classifier, and speed against TRL.

    python benchmarks/bench_grpo.py steer --data ../shared/data/sentiment-uci
    python benchmarks/bench_grpo.py speed --steps 10

`steer` splits the UCI review sentences in two halves. On the first, tunesmith trains a sentiment classifier (a
head on the embedded default); its log-odds of `positive` (or with `--scale probability` its probability) is GRPO's
reward, and the openings (first four words)
of the first half's sentences are the training prompts. On the second half an independent judge is trained inside
the benchmark (TF-IDF + logistic regression; never the reward model), and the openings of its sentences are the
held-out prompts. The judge reads the base model's completions of the held-out prompts and the GRPO model's (one
seeded sample each, the training temperature): the share it calls positive, before and after, with the drift from
the base model (nats per token on its own text), distinct-2 of the completions, the reward curve and samples. A
second judge that learned nothing from this data reads the same texts: VADER's general sentiment lexicon
(`pip install vaderSentiment`, in requirements/bench.txt), so that words missing from the TF-IDF judge's 1,500 training
sentences still count. `--run NAME --reuse` judges the finished run in that folder again. `steer`'s
defaults are the settings of the latest runs in RESULTS.md (LoRA, lr 1.5e-3, a KL target of 0.7, 48 new tokens, 110
steps: about 25 minutes on 2 cores). The classifier is trained once per --work, for `--classifier-epochs` epochs (1 by
default; a folder whose classifier trained otherwise is refused). `--classifiers N` makes the reward the mean of N
classifiers trained alike with their own seeds (an ensemble, against a policy that exploits one classifier's quirks);
`--warm-start E` first fine-tunes the policy on the classifier's half as plain text for E epochs (TRL's sentiment
example starts from a GPT-2 fine-tuned on reviews), so GRPO steers a model that already writes reviews; the run's
own drift is then measured from the warm model, and the benchmark also measures the drift of the warm model and of
the GRPO model from the embedded default, each saved model loaded in bf16 and in fp32 (bf16 rounds away part of a
small full fine-tuning change, which the run's frozen weights do too). `--max-drift D` holds the GRPO run's best step to evaluations that
drifted at most D (`monitor.max_drift`); the drift is measured on `--probe-tokens` tokens (4096) at each evaluation,
from the warm model, or with `--drift-from-default` from the embedded default (`monitor.drift_from`), so that the
budget holds the warm start and GRPO together.

`speed` runs TRL's GRPOTrainer and tunesmith at the same settings (LoRA r 8, G = 8, 4 prompts per step, 32 new
tokens, bf16, the same length reward, beta 0.04, one iteration) for `--steps` steps each, in this process's
machine one after the other, and prints completions per second with each one's split of its time.

It ends by checking tunesmith's GRPO loss against TRL's own `_compute_loss` on fixed log-probs and advantages.
TRL is installed for this benchmark only: `pip install --target /tmp/trl-site --no-deps trl==1.16.0`, then
`PYTHONPATH=/tmp/trl-site python benchmarks/bench_grpo.py speed`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import cpu_name

sys.path.insert(0, str(Path(__file__).parent))
from bench_usecases import review_rows  # noqa: E402

EMBEDDED = "smollm2-135m"  # the embedded default: the base model, and with --drift-from-default the drift's zero
OPENING_WORDS = 4


def tunesmith(*args: str) -> float:
    command = [sys.executable, "-m", "tunesmith", *args]
    print("$ tunesmith " + " ".join(args), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def openings(rows: list[dict]) -> list[str]:
    """The first words of sentences long enough to continue, each opening once."""
    seen = {" ".join(r["text"].split()[:OPENING_WORDS]) for r in rows if len(r["text"].split()) > OPENING_WORDS + 2}
    return sorted(seen)


def train_judge(rows: list[dict]):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    judge = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True), LogisticRegression(max_iter=2000, C=4.0))
    judge.fit([r["text"] for r in rows], [r["label"] == "positive" for r in rows])
    return judge


LEXICON_POSITIVE = 0.05  # VADER's own cut for a positive compound score (Hutto and Gilbert, 2014)


def lexicon_judge():
    """A second judge that learned nothing from this data: VADER's 7,500-entry general sentiment lexicon with its rules
    (negation, intensifiers, "but"), so words the TF-IDF judge never saw in its 1,500 sentences still count."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return lambda texts: [analyzer.polarity_scores(t)["compound"] >= LEXICON_POSITIVE for t in texts]


def unseen_share(judge, rows: list[dict]) -> float:
    """The share of the completions' words that the TF-IDF judge's vocabulary lacks (they weigh nothing in its verdict)."""
    vectorizer = judge.named_steps["tfidfvectorizer"]
    words = [w for row in rows for w in vectorizer.build_tokenizer()(row["generated"].lower())]
    return sum(w not in vectorizer.vocabulary_ for w in words) / max(1, len(words))


def lexicon_overrules(judge, lexicon, texts: list[str]) -> str:
    """Of the texts the TF-IDF judge calls negative, how many the lexicon judge reads positive."""
    negative = [t for t, verdict in zip(texts, judge.predict(texts)) if not verdict]
    return f"{sum(lexicon(negative))} of {len(negative)}"


def share(verdicts: list[bool]) -> float:
    return sum(verdicts) / max(1, len(verdicts))


def distinct_2(texts: list[str]) -> float:
    bigrams = [tuple(w[i : i + 2]) for t in texts for w in [t.split()] for i in range(len(w) - 1)]
    return len(set(bigrams)) / max(1, len(bigrams))


GENERATE_SEED = 7


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def made_with(out: Path, prompts: Path, settings: dict) -> bool:
    """Whether `out` holds finished completions of exactly these prompts at these settings (`tunesmith generate` writes
    its summary, with the settings, after the completions)."""
    summary = out.with_name(out.stem + ".summary.json")
    if not (out.is_file() and summary.is_file()):
        return False
    made = json.loads(summary.read_text()).get("settings", {})
    return (all(made.get(key) == value for key, value in settings.items())
            and [row["prompt"] for row in read_jsonl(out)] == [row["prompt"] for row in read_jsonl(prompts)])


GENERATE_DEFAULTS = {"temperature": 0.7, "top_p": 0.95, "top_k": 50}  # `tunesmith generate`'s, as its summary records them


def completions(model: str, prompts: Path, out: Path, new_tokens: int, temperature: float | None, reuse: bool = False) -> list[dict]:
    """One seeded completion per prompt: at `temperature` with nothing cut (how GRPO samples), or with None at
    `tunesmith generate`'s own defaults (how a user generates). With `reuse`, the file `out` (named after the model's
    run) is read instead when an earlier judging made it of the same prompts at the same settings (the seed makes it
    the same)."""
    sampling = {"temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature is not None else {}
    if reuse and made_with(out, prompts, {"max_new_tokens": new_tokens, "seed": GENERATE_SEED, **(sampling or GENERATE_DEFAULTS)}):
        return read_jsonl(out)
    for stale in (out, out.with_name(out.stem + ".summary.json")):
        stale.unlink(missing_ok=True)
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in sampling.items()]
    tunesmith("generate", model, "--input", str(prompts), "--output", str(out), "--max-new-tokens", str(new_tokens),
              *flags, "--seed", str(GENERATE_SEED))
    return read_jsonl(out)


def trained_as_flagged(run: Path, work: Path, args) -> None:
    """A reused run must have sampled as the flags say, or "as in training" would judge it at other settings."""
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    grpo, train = config["grpo"], config["train"]
    differs = {name: (made, flagged) for name, made, flagged in (("--new-tokens", grpo["max_new_tokens"], args.new_tokens),
                                                                 ("--temperature", grpo["temperature"], args.temperature),
                                                                 ("--warm-start (the policy's start)", config["model"]["name"],
                                                                  str(warm_folder(args, work)) if args.warm_start else EMBEDDED),
                                                                 ("--classifiers", sum("run" in r for r in grpo["rewards"]), args.classifiers),
                                                                 ("--max-drift", config["monitor"].get("max_drift"), args.max_drift),
                                                                 ("--probe-tokens", config["monitor"].get("probe_tokens"), args.probe_tokens),
                                                                 ("--drift-from-default", config["monitor"].get("drift_from") == EMBEDDED,
                                                                  args.drift_from_default))
               if made != flagged}
    if differs:
        sys.exit(f"{run} was trained at other settings than the flags: "
                 + ", ".join(f"{name} {made} (run) against {flagged}" for name, (made, flagged) in differs.items()))
    print(f"judging {run}: train.seed {train['seed']}, lr {train['lr']}, min_lr_ratio {train['min_lr_ratio']}, "
          f"{train['max_steps']} steps, grpo.target_kl {grpo['target_kl']}, rewards {grpo['rewards']}")


def drift_from_default(model_dirs: list[Path], tokens: int, precision: str) -> list[float]:
    """Each saved model's drift from the embedded default, the way training's probe measures it (its mean NLL on texts
    the embedded default sampled, minus the embedded default's own), on `tokens` tokens, every model loaded in
    `precision` (bf16: weights and arithmetic in bf16, as the run's frozen weights; fp32: full precision, which keeps
    what bf16 rounds away of a small fine-tuning change)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.config import MonitorConfig
    from tunesmith.evaluation.forgetting import BaseSampler, build_probe
    from tunesmith.models import resolve_model

    device, dtype = torch.device("cpu"), {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    base = resolve_model(EMBEDDED)
    sampler = BaseSampler(base, device, "bf16")  # the texts the run's probe scores (sampled once, cached)
    probe = build_probe(MonitorConfig(probe_tokens=tokens), sampler, sampler.tokenizer, 0)

    def nll(path: str) -> float:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        with torch.no_grad():
            return probe.measure(lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits, 16, device, precision)["samples"]

    base_nll = nll(base.path)
    return [nll(str(path)) - base_nll for path in model_dirs]


def judged(judge, rows: list[dict]) -> tuple[float, list[str]]:
    texts = [row["prompt"] + row["generated"] for row in rows]
    return float(judge.predict(texts).mean()), texts


def warm_folder(args, work: Path) -> Path:
    return work / (f"warm-e{args.warm_start:g}" + (f"-r{args.warm_replay:g}" if args.warm_replay else ""))


def warm_start(args, work: Path) -> Path:
    """The policy's start with --warm-start: the embedded default fine-tuned on the classifier's half as plain text (the
    review sentences, labels unused) for that many epochs, as TRL's sentiment example starts from a GPT-2 fine-tuned on
    reviews, with --warm-replay that share of its tokens the embedded default's own text (`data.replay`), which keeps
    its general language; trained once per --work, epochs and replay. Its run folder."""
    run = warm_folder(args, work)
    if not (run / "summary.json").is_file():
        seconds = tunesmith("train", "--task", "lm", "--data", str(work / "reviews.jsonl"), "--out", str(run), "--force",
                            "--block-size", "64", "--epochs", str(args.warm_start), "--lr", "5e-5", "--batch-size", "16",
                            "--set", "train.patience=null", "--set", "clean.dedup_near=false",
                            "--set", f"data.replay={args.warm_replay}")
        print(f"warm start: {run} ({seconds / 60:.1f} min)")
    return run


def train_grpo(args, work: Path, classifiers: list[Path], start: Path | None, run: Path) -> float:
    """GRPO from `start` (the embedded default when None) on the training openings with the classifiers' mean `positive`
    as the reward (and with --length-weight, a built-in length reward at --new-tokens), at the flags' settings; its
    seconds."""
    rewards = [{"run": str(c), "label": "positive", "scale": args.scale, "weight": 1 / len(classifiers)} for c in classifiers]
    if args.length_weight:
        rewards.append({"length": args.new_tokens, "weight": args.length_weight})
    rewards = json.dumps(rewards)
    return tunesmith("train", "--task", "grpo", "--data", str(work / "prompts.txt"), "--val-data", str(work / "val_prompts.txt"),
                     "--out", str(run), "--force", "--block-size", "64", "--max-steps", str(args.steps), "--lr", str(args.lr),
                     "--batch-size", str(args.prompts), "--set", "model.method=lora", "--set", f"grpo.rewards={rewards}",
                     "--set", f"grpo.max_new_tokens={args.new_tokens}", "--set", "grpo.group_size=8",
                     "--set", f"grpo.temperature={args.temperature}", "--set", f"train.eval_every={args.eval_every}",
                     "--set", "train.patience=null", "--set", "train.warmup_steps=5", "--set", f"train.min_lr_ratio={args.min_lr_ratio}",
                     "--set", f"grpo.beta={args.beta}",
                     "--set", f"train.seed={args.seed}",
                     *(["--model", str(start)] if start else []),
                     *(["--set", f"monitor.max_drift={args.max_drift}"] if args.max_drift is not None else []),
                     *(["--set", f"monitor.drift_from={EMBEDDED}"] if args.drift_from_default else []),
                     "--set", f"monitor.probe_tokens={args.probe_tokens}",
                     *(["--set", f"grpo.target_kl={args.target_kl}", "--set", f"grpo.kl_horizon={args.kl_horizon}"]
                       if args.target_kl else []))


def reward_classifier(args, work: Path, mine: list[dict], member: int) -> Path:
    """The ensemble's `member`-th sentiment classifier on the first half (train.seed 42 + member: its head's start and the
    order it reads the rows in; the validation split is the same), trained once per --work; a folder trained for other
    epochs is refused."""
    classifier = work / ("sentiment" if member == 0 else f"sentiment-{member}")
    if (classifier / "config.yaml").is_file():
        import yaml

        trained = yaml.safe_load((classifier / "config.yaml").read_text())["train"]["epochs"]
        if trained != args.classifier_epochs:
            sys.exit(f"{classifier} trained for {trained} epochs, not --classifier-epochs {args.classifier_epochs}: pick another --work")
    if not (classifier / "final").is_dir():
        seconds = tunesmith("train", "--task", "classify", "--data", str(write_jsonl(work / "reviews.jsonl", mine)), "--out", str(classifier),
                            "--force", "--block-size", "64", "--epochs", str(args.classifier_epochs), "--lr", "5e-5", "--batch-size", "16",
                            "--set", "train.eval_every=1000", "--set", "train.patience=null", "--set", "clean.dedup_near=false",
                            "--set", f"train.seed={42 + member}")
        accuracy = json.loads((classifier / "summary.json").read_text())["accuracy"]
        print(f"classifier {classifier.name}: held-out accuracy {accuracy:.1%} ({seconds / 60:.1f} min)")
    return classifier


def steer(args) -> None:
    if args.drift_from_default and not args.warm_start:
        sys.exit("--drift-from-default counts the drift from the embedded default across a warm start: add --warm-start")
    work = Path(args.work or tempfile.mkdtemp(prefix="tunesmith-grpo-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = review_rows(Path(args.data))
    half = len(rows) // 2
    mine, theirs = rows[:half], rows[half:]
    judge, lexicon = train_judge(theirs), lexicon_judge()
    mine_positive = [r["label"] == "positive" for r in mine]
    lexicon_accuracy = share([a == b for a, b in zip(lexicon([r["text"] for r in mine]), mine_positive)])
    print(f"{len(rows)} review sentences: {half} for the classifier and the training prompts, {len(theirs)} for the judge and the "
          f"held-out prompts; on the classifier's half the judge is {judge.score([r['text'] for r in mine], mine_positive):.1%} "
          f"accurate, the lexicon judge (VADER) {lexicon_accuracy:.1%}")
    classifiers = [reward_classifier(args, work, mine, member) for member in range(args.classifiers)]
    train_prompts = openings(mine)
    held_out = openings(theirs)[: args.held_out]
    (work / "prompts.txt").write_text("\n".join(train_prompts) + "\n", encoding="utf-8")
    (work / "val_prompts.txt").write_text("\n".join(held_out[: args.val_prompts]) + "\n", encoding="utf-8")
    held = write_jsonl(work / "held_out.jsonl", [{"prompt": p} for p in held_out])
    base = completions(EMBEDDED, held, work / "base.jsonl", args.new_tokens, args.temperature, args.reuse)
    base_share, base_texts = judged(judge, base)
    print(f"base model: the judge calls {base_share:.1%} of {len(base)} held-out completions positive; distinct-2 {distinct_2(base_texts):.3f}")
    base_default = completions(EMBEDDED, held, work / "base_default.jsonl", args.new_tokens, None, args.reuse)
    base_default_share, base_default_texts = judged(judge, base_default)
    print(f"base model at generate's defaults: {base_default_share:.1%} positive; distinct-2 {distinct_2(base_default_texts):.3f}")
    start = warm_start(args, work) if args.warm_start else None
    if start:
        warm, name = str(start), start.name
        warm_trained, _ = judged(judge, completions(warm, held, work / f"{name}.jsonl", args.new_tokens, args.temperature, args.reuse))
        warm_rows = completions(warm, held, work / f"{name}_default.jsonl", args.new_tokens, None, args.reuse)
        warm_share, warm_default_texts = judged(judge, warm_rows)
        print(f"warm start ({name}): the judge calls {warm_trained:.1%} positive as in training, {warm_share:.1%} at generate's defaults; distinct-2 "
              f"{distinct_2(warm_default_texts):.3f}; completion tokens {np.mean([r['tokens'] for r in warm_rows]):.1f}")
    run = work / args.run
    reused = args.reuse and (run / "summary.json").is_file()
    if reused:
        trained_as_flagged(run, work, args)
        seconds = json.loads((run / "summary.json").read_text())["train_seconds"]
    elif args.reuse and run.exists():
        sys.exit(f"{run} holds no finished run: move it aside, or leave out --reuse to train into it")
    else:
        seconds = train_grpo(args, work, classifiers, start, run)
    summary = json.loads((run / "summary.json").read_text())
    tuned = completions(str(run), held, work / f"{args.run}.tuned.jsonl", args.new_tokens, args.temperature, reused)
    tuned_share, texts = judged(judge, tuned)
    tuned_default = completions(str(run), held, work / f"{args.run}.tuned_default.jsonl", args.new_tokens, None, reused)
    default_share, default_texts = judged(judge, tuned_default)
    drift = summary["forgetting"].get("best_drift_nats")
    print(f"\nmachine: {cpu_name()}")
    print(f"GRPO: {summary['steps']} steps in {seconds / 60:.1f} min ({summary['train_seconds'] / 60:.1f} min training); "
          f"held-out reward {summary['base_reward']:.3f} -> {summary['reward']:.3f} (best step {summary['best_step']})")
    print(f"| | base (the embedded default{', not the warm start' if args.warm_start else ''}) | GRPO (best step) |\n| --- | --- | --- |\n"
          f"| judge: share positive, sampled as in training (temperature {args.temperature}, no cut) | {base_share:.1%} | {tuned_share:.1%} |\n"
          f"| judge: share positive, generate's defaults (temperature 0.7, top-p 0.95, top-k 50) | {base_default_share:.1%} | {default_share:.1%} |")
    alone = {name: float(judge.predict([row["generated"] for row in rows_]).mean())
             for name, rows_ in (("base", base), ("tuned", tuned), ("base_default", base_default), ("tuned_default", tuned_default))}
    print(f"| judge on the completions alone (no opening), as in training / at generate's defaults | {alone['base']:.1%} / "
          f"{alone['base_default']:.1%} | {alone['tuned']:.1%} / {alone['tuned_default']:.1%} |")
    print(f"| lexicon judge (VADER, compound >= {LEXICON_POSITIVE}), as in training / at generate's defaults | "
          f"{share(lexicon(base_texts)):.1%} / {share(lexicon(base_default_texts)):.1%} | "
          f"{share(lexicon(texts)):.1%} / {share(lexicon(default_texts)):.1%} |")
    print(f"| TF-IDF judge: words of the completions (defaults) it never saw | {unseen_share(judge, base_default):.1%} | "
          f"{unseen_share(judge, tuned_default):.1%} |\n"
          f"| TF-IDF judge: texts (defaults) it calls negative that VADER reads positive | "
          f"{lexicon_overrules(judge, lexicon, base_default_texts)} | {lexicon_overrules(judge, lexicon, default_texts)} |")
    print(f"| distinct-2, as in training | {distinct_2(base_texts):.3f} | {distinct_2(texts):.3f} |\n"
          f"| distinct-2, generate's defaults | {distinct_2(base_default_texts):.3f} | {distinct_2(default_texts):.3f} |\n"
          f"| completion tokens, mean (generate's defaults) | {np.mean([r['tokens'] for r in base_default]):.1f} | "
          f"{np.mean([r['tokens'] for r in tuned_default]):.1f} |\n"
          f"| drift (nats per token{', from the embedded default' if args.drift_from_default else ''}) | 0 | {drift} |")
    if start:
        for precision in ("bf16", "fp32"):
            from_default = drift_from_default([start / "final", run / "final"], args.probe_tokens, precision)
            print(f"| drift of the saved models from the embedded default, warm start / after GRPO, loaded in {precision} "
                  f"({args.probe_tokens} probe tokens) | 0 | {from_default[0]:.3f} / {from_default[1]:.3f} |")
    print("\ncurve (step: train reward / held-out reward, drift at each evaluation):")
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "val_reward" in row or row.get("step", 0) % 10 == 0:
            drifted = f", drift {row['drift_nats']:.3f}" if "drift_nats" in row else ""
            print(f"  {row['step']}: {row.get('reward', float('nan')):.3f} / {row.get('val_reward', float('nan')):.3f}{drifted}")
    print("\nsamples at generate's defaults (base | GRPO):")
    for b, t in list(zip(base_default, tuned_default))[:6]:
        print(f"- {b['prompt']!r}: {b['generated']!r} | {t['generated']!r}")

SPEED_PROMPTS = ["The food at this place", "I bought this phone because", "The movie started with", "Our waiter was",
                 "The battery of this", "This restaurant is", "The plot of the film", "I would not recommend"]
LENGTH_TARGET = 16


def length_score(completion_ids, **_) -> list[float]:
    """The reward both trainers use: 1 at LENGTH_TARGET tokens, falling to 0 at none or twice as many (tunesmith's {length: 16})."""
    return [max(0.0, 1 - abs(len(ids) - LENGTH_TARGET) / LENGTH_TARGET) for ids in completion_ids]


def trl_speed(model_dir: str, steps: int, work: Path) -> dict:
    """TRL's GRPOTrainer at the benchmark's settings, with its generation, reward and loss passes timed."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from tunesmith.methods.adapters import LORA_TARGETS

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompts = Dataset.from_dict({"prompt": SPEED_PROMPTS * (steps * 4 // len(SPEED_PROMPTS) + 1)})
    args = GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=32, num_generations=8, max_completion_length=32,
                      learning_rate=1e-4, beta=0.04, bf16=True, use_cpu=True, max_steps=steps, logging_steps=1, report_to=[],
                      save_strategy="no", temperature=1.0, top_p=1.0, num_iterations=1, loss_type="grpo", seed=0,
                      dataloader_num_workers=0)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS["llama"], task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=[length_score], args=args, train_dataset=prompts, processing_class=tokenizer,
                          peft_config=lora)
    spent = {"generation": 0.0, "log-prob passes (reference, policy)": 0.0}

    def timed(name, function):
        def wrapper(*a, **k):
            started = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                spent[name] += time.perf_counter() - started
        return wrapper
    trainer._generate = timed("generation", trainer._generate)
    trainer._get_per_token_logps_and_entropies = timed("log-prob passes (reference, policy)", trainer._get_per_token_logps_and_entropies)
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    return {"seconds": total, "completions": steps * 32, "spent": spent, "trainer": trainer}


def tunesmith_speed(steps: int, work: Path) -> dict:
    (work / "speed_prompts.txt").write_text("\n".join(SPEED_PROMPTS * 8) + "\n", encoding="utf-8")
    run = work / "tunesmith-speed"
    tunesmith("train", "--task", "grpo", "--data", str(work / "speed_prompts.txt"), "--val-data", str(work / "speed_prompts.txt"),
              "--out", str(run), "--force", "--block-size", "64", "--max-steps", str(steps), "--lr", "1e-4", "--batch-size", "4",
              "--set", "model.method=lora", "--set", "train.precision=bf16", "--set", f"grpo.rewards=[{{length: {LENGTH_TARGET}}}]",
              "--set", "grpo.max_new_tokens=32", "--set", "grpo.group_size=8", "--set", "grpo.beta=0.04", "--set", "train.eval_every=100000",
              "--set", "train.warmup_steps=0", "--set", "clean.dedup_exact=false", "--set", "clean.dedup_near=false",
              "--set", "monitor.general_probe=none", "--set", "train.compile=false", "--set", "grpo.eval_completions=1")
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps_rows = [r for r in rows if "sample_seconds" in r]
    spent = {"generation": sum(r["sample_seconds"] for r in steps_rows), "rewards": sum(r["reward_seconds"] for r in steps_rows),
             "log-prob passes (reference)": sum(r.get("reference_seconds", 0.0) for r in steps_rows)}
    return {"seconds": summary["train_seconds"], "completions": steps * 32, "spent": spent}


def speed(args) -> None:
    from tunesmith.models import resolve_model

    work = Path(args.work or tempfile.mkdtemp(prefix="tunesmith-grpo-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model(EMBEDDED, log=lambda _m: None).path
    ours = tunesmith_speed(args.steps, work)
    theirs = trl_speed(model_dir, args.steps, work)
    print(f"\nmachine: {cpu_name()}; {args.steps} steps of 4 prompts x 8 completions, 32 new tokens, LoRA r 8, bf16, beta 0.04")
    print("| trainer | completions/s | step time | where the time goes |\n| --- | --- | --- | --- |")
    for name, result in (("tunesmith", ours), ("TRL GRPOTrainer", theirs)):
        rest = result["seconds"] - sum(result["spent"].values())
        split = ", ".join(f"{key} {value / result['seconds']:.0%}" for key, value in result["spent"].items())
        print(f"| {name} | {result['completions'] / result['seconds']:.2f} | {result['seconds'] / args.steps:.1f} s | {split}, "
              f"the rest (training forward and backward, optimizer) {rest / result['seconds']:.0%} |")
    print(f"tunesmith / TRL: {ours['completions'] / ours['seconds'] / (theirs['completions'] / theirs['seconds']):.2f}x the completions per second")
    objective(theirs["trainer"])


def objective(trainer) -> None:
    """tunesmith's GRPO loss against TRL's `_compute_loss`, on fixed log-probs, old and reference log-probs and advantages."""
    import torch

    from tunesmith.tasks.grpo.objective import grpo_loss

    generator = torch.Generator().manual_seed(0)
    n, width = 8, 6
    logps = -torch.rand(n, width, generator=generator) * 3
    old = logps + 0.3 * torch.randn(n, width, generator=generator)
    ref = logps + 0.5 * torch.randn(n, width, generator=generator)
    mask = torch.ones(n, width, dtype=torch.long)
    mask[1, 4:] = 0
    advantages = torch.randn(n, generator=generator)
    trainer.model.train()
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
    inputs = {"prompt_ids": torch.zeros(n, 1, dtype=torch.long), "prompt_mask": torch.ones(n, 1, dtype=torch.long),
              "completion_ids": torch.zeros(n, width, dtype=torch.long), "completion_mask": mask, "advantages": advantages,
              "old_per_token_logps": old, "ref_per_token_logps": ref, "num_items_in_batch": mask.sum()}
    # TRL 1.x weights the KL term by the importance ratio by default (use_bias_correction_kl); with one iteration per batch
    # (grpo.iterations 1, the default of both) the ratio is exactly 1 and the two agree. Compared both ways; without the
    # correction (the DeepSeekMath objective) they must agree to 1e-6 whatever the ratio:
    unequal = []
    for correction in (False, True):
        trainer.args.use_bias_correction_kl = correction
        for kind in ("grpo", "dr_grpo"):
            trainer.loss_type = kind
            theirs = float(trainer._compute_loss(trainer.model, inputs)) * trainer.current_gradient_accumulation_steps
            ours = float(grpo_loss(logps, old, ref, advantages, mask, kind, trainer.epsilon_low, trainer.beta,
                                   trainer.max_completion_length)[0])
            print(f"objective {kind} (TRL use_bias_correction_kl={correction}): tunesmith {ours:.9f}, TRL {theirs:.9f}, "
                  f"difference {abs(ours - theirs):.2e}")
            if not correction and abs(ours - theirs) > 1e-6:
                unequal.append(kind)
    if unequal:
        raise SystemExit(f"tunesmith's {' and '.join(unequal)} loss differs from TRL's by more than 1e-6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="part", required=True)
    one = commands.add_parser("steer")
    one.add_argument("--data", default="../shared/data/sentiment-uci")
    one.add_argument("--work")
    one.add_argument("--steps", type=int, default=110)
    one.add_argument("--lr", type=float, default=1.5e-3)
    one.add_argument("--min-lr-ratio", type=float, default=0.1, help="train.min_lr_ratio: where the cosine decay ends (1: a constant lr)")
    one.add_argument("--beta", type=float, default=0.05)
    one.add_argument("--target-kl", type=float, default=0.7,
                     help="grpo.target_kl: hold the KL near it, --beta the starting weight and floor (0: a fixed --beta)")
    one.add_argument("--kl-horizon", type=int, default=64, help="grpo.kl_horizon, with --target-kl")
    one.add_argument("--eval-every", type=int, default=20)
    one.add_argument("--new-tokens", type=int, default=48)
    one.add_argument("--prompts", type=int, default=4, help="prompts per step (each with 8 completions)")
    one.add_argument("--run", default="grpo", help="the GRPO run's folder under --work (a plain name)")
    one.add_argument("--reuse", action="store_true",
                     help="judge the finished GRPO run in --work/--run instead of training it again (trained if the folder is "
                          "absent), and read the completions an earlier judging made at the same settings")
    one.add_argument("--temperature", type=float, default=1.0)
    one.add_argument("--seed", type=int, default=42, help="train.seed of the GRPO run (its sampling and its LoRA init)")
    one.add_argument("--scale", choices=["probability", "log_odds"], default="log_odds",
                     help="the reward: the classifier's probability of positive, or its log-odds")
    one.add_argument("--classifier-epochs", type=int, default=1, help="the reward classifier's epochs (trained once per --work)")
    one.add_argument("--warm-start", type=float, default=0,
                     help="first fine-tune the policy on the classifier's half as plain text for this many epochs (0: none)")
    one.add_argument("--warm-replay", type=float, default=0.0,
                     help="with --warm-start: data.replay of the warm start, the share of its tokens that rehearse the embedded "
                          "default's own text (0: none)")
    one.add_argument("--classifiers", type=int, default=1,
                     help="the reward is the mean of this many classifiers, each trained on the same half with its own seed")
    one.add_argument("--length-weight", type=float, default=0.0,
                     help="add the built-in length reward (1 at --new-tokens, falling to 0 at none) with this weight (0: none)")
    one.add_argument("--max-drift", type=float, default=None,
                     help="monitor.max_drift: the best step is chosen among evaluations that drifted at most this far (default: any)")
    one.add_argument("--probe-tokens", type=int, default=4096,
                     help="monitor.probe_tokens: the tokens the drift is measured on at each evaluation (GRPO's own default "
                          "follows its few validation tokens, 256)")
    one.add_argument("--drift-from-default", action="store_true",
                     help="with --warm-start: monitor.drift_from the embedded default, so the run's drift (and --max-drift) counts "
                          "the warm start too")
    one.add_argument("--held-out", type=int, default=200)
    one.add_argument("--val-prompts", type=int, default=32)
    two = commands.add_parser("speed")
    two.add_argument("--steps", type=int, default=10)
    two.add_argument("--work")
    args = parser.parse_args()
    if args.part == "steer" and (Path(args.run).name != args.run or args.run in ("", ".", "..") or args.run.startswith("sentiment")):
        parser.error(f"--run {args.run!r}: give a plain folder name not starting with 'sentiment' (the classifiers' runs)")
    if args.part == "steer" and args.classifiers < 1:
        parser.error("--classifiers: give 1 or more")
    if args.part == "steer" and args.warm_replay and not args.warm_start:
        parser.error("--warm-replay is the warm start's data.replay: add --warm-start")
    if args.part == "steer" and (args.warm_start < 0 or args.run.startswith("warm-")):
        parser.error("--warm-start must be 0 or more, and --run not start with 'warm-' (the warm start's runs)")
    {"steer": steer, "speed": speed}[args.part](args)


if __name__ == "__main__":
    main()

"""The `tunesmith` command line: its parser, and the config built from a config file, flags and --set."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import load_config, parse_override
from ..config.run import typed_text
from ..errors import UserError
from ..rundir.folder import CONFIG_FILE, check_saved_config
from ..sweep.study import DEFAULT_PRUNER, PRUNERS

# flag -> config key; every command takes these
COMMON_FLAGS: dict[str, tuple[str, type]] = {
    "--task": ("task", str),
    "--model": ("model.name", str),
    "--data": ("data.train", str),
    "--val-data": ("data.val", str),
    "--out": ("output.dir", str),
    "--lr": ("train.lr", float),
    "--epochs": ("train.epochs", float),
    "--max-steps": ("train.max_steps", int),
    "--batch-size": ("train.micro_batch_size", int),
    "--block-size": ("data.block_size", int),
    "--seed": ("train.seed", int),
}


def _add_common(parser: argparse.ArgumentParser, with_config: bool = True) -> None:
    if with_config:
        parser.add_argument("config", nargs="?", help="YAML run config (optional: flags alone make a run)")
    group = parser.add_argument_group("settings (override the config file)")
    for flag, (key, kind) in COMMON_FLAGS.items():
        many = flag in ("--data", "--val-data")
        group.add_argument(flag, dest=key, type=kind, action="append" if many else "store", help=f"sets {key}")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="set any config key, e.g. --set train.grad_accum=4")


def _add_benchmark_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("standard benchmarks (lm-evaluation-harness)")
    group.add_argument("--benchmarks", metavar="NAMES", help="lm-eval task or group names, comma-separated (piqa,arc_easy,"
                       "hellaswag,lambada_openai), or task YAML files or folders of them; instead of --data")
    group.add_argument("--limit", type=int, metavar="N", help="with --benchmarks: at most N items of each benchmark")
    group.add_argument("--num-fewshot", type=int, metavar="K", help="with --benchmarks: K solved examples before each item")
    group.add_argument("--output", metavar="FILE", help="with --benchmarks: write lm-eval's results and the model's description as JSON")
    group.add_argument("--chat-template", action="store_true", help="with --benchmarks: wrap each item in the model's chat template")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunesmith", description="Fine-tune pre-trained GPT-style language models on your own text.")
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="write a commented starter config")
    init.add_argument("path", nargs="?", default="tunesmith.yaml")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    prepare = commands.add_parser("prepare", help="read, clean, split, tokenize and pack the data")
    _add_common(prepare)
    prepare.add_argument("--show", type=int, default=0, metavar="N", help="print N prepared training examples, trained spans marked")

    train = commands.add_parser("train", help="fine-tune a model")
    _add_common(train)
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its latest intact checkpoint")
    train.add_argument("--force", action="store_true", help="write the run into an --out folder that holds other files")

    evaluate = commands.add_parser("eval", help="loss and perplexity of a model or run on a data file")
    evaluate.add_argument("model_or_run")
    evaluate.add_argument("--compare", metavar="OTHER", help="a second model or run to put side by side")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--generate", type=int, nargs="?", const=64, default=None, metavar="N",
                          help="also continue N validation prompts (64) greedily and score them against the data (ROUGE-L, chrF); "
                               "for a run, its report shows the figures")
    evaluate.add_argument("--max-new-tokens", type=int, default=64, help="with --generate: tokens per continuation")
    _add_benchmark_flags(evaluate)
    _add_common(evaluate, with_config=False)

    generate = commands.add_parser("generate", help="continue a prompt, or every prompt of a file, with a model or run")
    generate.add_argument("model_or_run")
    source = generate.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", type=typed_text)
    source.add_argument("--input", help="a .jsonl, .csv or .tsv file of prompts, or .txt with prompts separated by blank lines")
    generate.add_argument("--output", help="a new .jsonl, .csv or .tsv file: every input row with its completions")
    generate.add_argument("--prompt-field", default="prompt", help="the input's column that holds the prompt")
    generate.add_argument("--reference-field", help="a column to score the completions against (ROUGE-L, chrF)")
    generate.add_argument("--n", type=int, default=1, help="samples per prompt")
    generate.add_argument("--stop", action="append", default=[], type=typed_text, help="end the text before this string (repeatable)")
    generate.add_argument("--max-new-tokens", type=int, default=100)
    generate.add_argument("--temperature", type=float, default=0.7, help="0 means greedy")
    generate.add_argument("--top-k", type=int, default=50)
    generate.add_argument("--top-p", type=float, default=0.95)
    generate.add_argument("--repetition-penalty", type=float, default=1.0, help="above 1 discourages tokens already present")
    generate.add_argument("--no-repeat-ngram", type=int, default=0, metavar="N", help="never repeat an N-gram")
    generate.add_argument("--max-batch", type=int, default=16, help="sequences decoded together")
    generate.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    _add_common(generate, with_config=False)

    chat = commands.add_parser("chat", help="talk with a chat model or run in the terminal (/reset, /system TEXT, /exit)")
    chat.add_argument("model_or_run")
    chat.add_argument("--system", type=typed_text, help="system prompt")
    chat.add_argument("--max-new-tokens", type=int, default=200)
    chat.add_argument("--temperature", type=float, default=0.7, help="0 means greedy")
    chat.add_argument("--top-k", type=int, default=50)
    chat.add_argument("--top-p", type=float, default=0.95)
    chat.add_argument("--device", default="auto")
    chat.add_argument("--seed", type=int, default=0)

    predict = commands.add_parser("predict", help="label each row of a CSV/TSV/JSONL file with a trained classifier, or score it with a reward model")
    predict.add_argument("model_or_run")
    predict.add_argument("--input", required=True, help="CSV, TSV or JSONL with a text column (for a reward model: prompt and completion columns, or a text column)")
    predict.add_argument("--output", required=True, help="CSV, TSV or JSONL: the input columns plus prediction and p_<label> (a classifier) or reward (a reward model)")
    predict.add_argument("--text-field", help="the column that holds the text (default: the one a classifier was trained on; a "
                                               "reward model scores prompt + completion, or else the text column; with this "
                                               "flag it scores this column as it stands)")
    predict.add_argument("--batch-size", type=int, default=16)
    predict.add_argument("--device", default="auto")

    export = commands.add_parser("export", help="a finished run as a plain Hugging Face directory (or a GGUF file) with a model card")
    export.add_argument("run")
    export.add_argument("--out", help="a new, empty folder (with --push-to-hub, by default a temporary one)")
    export.add_argument("--dtype", default="bf16", help="bf16, fp16 or fp32; with --gguf also q8_0, q5_0 or q4_0 (quantized)")
    export.add_argument("--gguf", action="store_true", help="one GGUF file for llama.cpp-family runtimes (Llama-family, Qwen2, Qwen3 and GPT-2 models)")
    export.add_argument("--push-to-hub", metavar="OWNER/NAME", help="upload the export with its model card to the Hugging Face Hub")
    export.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository as private")
    export.add_argument("--hub-endpoint", metavar="URL", help="a Hub mirror or private Hub (default: huggingface.co, or HF_ENDPOINT)")

    serve = commands.add_parser("serve", help="an OpenAI-compatible HTTP API for a model or run")
    serve.add_argument("model_or_run")
    serve.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (this machine only) unless you mean to expose it")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="require `Authorization: Bearer KEY` on every request (or set TUNESMITH_API_KEY)")
    serve.add_argument("--max-tokens", type=int, default=512, help="the most tokens one request may ask for")
    serve.add_argument("--max-prompt-tokens", type=int, default=2048)
    serve.add_argument("--max-body-bytes", type=int, default=1_000_000)
    serve.add_argument("--max-n", type=int, default=4, help="the most choices (n) one request may ask for")
    serve.add_argument("--max-batch", type=int, default=16, help="sequences decoded together; requests join between steps")
    serve.add_argument("--queue-size", type=int, default=64, help="requests that may wait; past it the answer is 503")
    serve.add_argument("--request-timeout", type=float, default=300.0, metavar="SECONDS", help="time limit of one request")
    serve.add_argument("--device", default="auto")

    ui = commands.add_parser("ui", help="a local web page: every run in a folder, live curves, comparisons, new runs, and trying a model")
    ui.add_argument("--runs", default="runs", help="the runs folder; the page reads and writes only inside it (default: runs)")
    ui.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (this machine only) unless you mean to expose it")
    ui.add_argument("--port", type=int, default=7860)
    ui.add_argument("--token", help="require this token (the printed address carries it once; or set TUNESMITH_UI_TOKEN)")
    ui.add_argument("--device", default="auto", help="where a model tried on the page runs")
    ui.add_argument("--max-runs", type=int, metavar="N", help="trainings the page runs at once; more are refused until one ends "
                    "(default: one per four CPU cores, at least one)")

    doctor = commands.add_parser("doctor", help="the environment on one screen: versions, device, memory, disk, hub, embedded model")
    doctor.add_argument("--json", action="store_true", help="print one JSON object")

    recommend = commands.add_parser("recommend", help="the model, method, batch and epochs that fit your data, memory and time; writes a config")
    recommend.add_argument("config", nargs="?", help="YAML run config for the data settings (optional)")
    recommend.add_argument("--data", dest="data.train", action="append", metavar="FILE", help="the training data (repeatable)")
    recommend.add_argument("--task", dest="task", help="what the run will learn (default lm; the tasks are in `tunesmith init`'s file)")
    recommend.add_argument("--block-size", dest="data.block_size", type=int, metavar="N", help="tokens per training sequence")
    recommend.add_argument("--memory", help="memory to plan for, e.g. 24GB (default: the GPU's, or the free RAM)")
    recommend.add_argument("--hours", type=float, default=1.0, help="time budget for training (default 1)")
    recommend.add_argument("--candidate", action="append", default=[], metavar="MODEL",
                           help="also consider this model: a local directory, run, .gguf file or hub id (repeatable)")
    recommend.add_argument("--only", action="store_true", help="consider the --candidate models alone, not the built-in ones")
    recommend.add_argument("--write", default="recommended.yaml", metavar="PATH", help="where to write the config")
    recommend.add_argument("--force", action="store_true", help="overwrite --write if it exists")
    recommend.add_argument("--json", action="store_true", help="print one JSON object")
    recommend.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")

    diagnose = commands.add_parser("diagnose", help="findings about a run: overfitting, underfitting, instability, ...")
    diagnose.add_argument("run")
    diagnose.add_argument("--json", action="store_true", help="print the findings as one JSON object")

    report = commands.add_parser("report", help="write report.md and report.html for a run")
    report.add_argument("run")

    sweep = commands.add_parser("sweep", help="search hyperparameters by training trials (Optuna): pruning, two objectives, "
                                "shared studies; the best config, the trials' table and plots")
    _add_common(sweep)
    sweep.add_argument("--space", required=True, metavar="FILE", help="YAML: config keys and their ranges, e.g. "
                       "'train.lr: {log: [1e-5, 3e-3]}' and 'model.lora_rank: [8, 16, 32]'")
    sweep.add_argument("--trials", type=int, required=True, metavar="N", help="trials the study holds when done (a rerun continues it)")
    sweep.add_argument("--minutes", type=float, metavar="M", help="start no trial after M minutes")
    sweep.add_argument("--study", metavar="NAME", help="the study and its folder SWEEPS/NAME (default: the config file's name, or sweep)")
    sweep.add_argument("--storage", metavar="URL", help="a database Optuna's RDB storage takes (postgresql://user:pw@host/db) "
                       "that workers on several machines share (default: a SQLite file in the sweep folder)")
    sweep.add_argument("--workers", type=int, default=1, metavar="K", help="local worker processes, each with its share of the cores")
    sweep.add_argument("--objectives", default="headline", help="headline (the task's headline metric), or headline,drift "
                       "(also the forgetting drift: the result is the Pareto front)")
    sweep.add_argument("--pruner", choices=PRUNERS,
                       help=f"stops poor trials at an evaluation (one objective only; default: the study's own, {DEFAULT_PRUNER} for a "
                       "new study); halving: successive halving, a third of the trials at each rung go on; hyperband: also "
                       "brackets that judge later, a hedge for hundreds of trials")
    sweep.add_argument("--sweeps", default="sweeps", metavar="DIR", help="where sweep folders go (default: sweeps)")

    quickstart = commands.add_parser("quickstart", help="fine-tune the embedded model on the bundled example corpus")
    _add_common(quickstart, with_config=False)
    return parser


def overrides_of(args: argparse.Namespace) -> list[tuple[str, Any]]:
    pairs = [(key, getattr(args, key)) for key, _ in COMMON_FLAGS.values() if getattr(args, key, None) is not None]
    return pairs + [parse_override(text) for text in args.overrides]


def _saved_config(run_dir: Path) -> Path:
    """The run's own config.yaml, which --resume continues from."""
    path = run_dir / CONFIG_FILE
    if not path.exists() and not path.is_symlink():
        raise UserError(f"--resume: {path} not found; is {run_dir} a tunesmith run directory?")
    check_saved_config(run_dir, "--resume")
    return path


def saved_run_config(path: Path, overrides: list[tuple[str, Any]]):
    """A run's saved config.yaml with the command's flags. A run folder may come from anyone: its own
    `model.trust_remote_code: true` never runs a model's code unless this command's --set says so too."""
    cfg = load_config(path, overrides)
    if cfg.model.trust_remote_code and not any(key == "model.trust_remote_code" for key, _ in overrides):
        raise UserError(f"{path} sets model.trust_remote_code: true, and a run's saved settings never run a model's own "
                        f"code; if you trust {cfg.model.name}, add --set model.trust_remote_code=true to this command")
    return cfg


def config_of(args: argparse.Namespace, base: dict[str, Any] | None = None):
    """Config file (or, for --resume, the run's saved config), then flags, then --set, in that order."""
    path = getattr(args, "config", None)
    overrides = overrides_of(args)
    base_pairs = [(f"{section}.{key}", value) for section, values in (base or {}).items() for key, value in values.items()]
    if getattr(args, "resume", False) and not path:
        out = dict(overrides).get("output.dir")
        if not out:
            raise UserError("--resume needs --out RUN_DIR (the run to continue)")
        cfg = saved_run_config(_saved_config(Path(out)), base_pairs + overrides)
    else:
        cfg = load_config(path, base_pairs + overrides)
    from ..tasks import task_kind  # the task registry imports torch: only once a command has a config to run

    task_kind(cfg)  # a task the registry does not hold is refused with the others' names, before anything runs
    return cfg

"""The `tunesmith` command: parse arguments, build the config, call the library, turn user errors into exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .config import load_config, parse_override, starter_yaml
from .errors import UserError

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
    _add_common(evaluate, with_config=False)

    generate = commands.add_parser("generate", help="continue a prompt with a model or run")
    generate.add_argument("model_or_run")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--max-new-tokens", type=int, default=100)
    generate.add_argument("--temperature", type=float, default=0.7, help="0 means greedy")
    generate.add_argument("--top-k", type=int, default=50)
    generate.add_argument("--top-p", type=float, default=0.95)
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    _add_common(generate, with_config=False)

    chat = commands.add_parser("chat", help="talk with a chat model or run in the terminal (/reset, /system TEXT, /exit)")
    chat.add_argument("model_or_run")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--max-new-tokens", type=int, default=200)
    chat.add_argument("--temperature", type=float, default=0.7, help="0 means greedy")
    chat.add_argument("--top-k", type=int, default=50)
    chat.add_argument("--top-p", type=float, default=0.95)
    chat.add_argument("--device", default="auto")
    chat.add_argument("--seed", type=int, default=0)

    predict = commands.add_parser("predict", help="label each row of a CSV/TSV/JSONL file with a trained classifier")
    predict.add_argument("model_or_run")
    predict.add_argument("--input", required=True, help="CSV, TSV or JSONL with a text column")
    predict.add_argument("--output", required=True, help="CSV, TSV or JSONL: the input columns plus prediction and p_<label>")
    predict.add_argument("--text-field", help="the column that holds the text (default: the one the run was trained on)")
    predict.add_argument("--batch-size", type=int, default=16)
    predict.add_argument("--device", default="auto")

    export = commands.add_parser("export", help="a finished run as a plain Hugging Face directory (or a GGUF file) with a model card")
    export.add_argument("run")
    export.add_argument("--out", required=True, help="a new, empty folder")
    export.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    export.add_argument("--gguf", action="store_true", help="one GGUF file for llama.cpp-family runtimes (Llama-family models)")

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

    doctor = commands.add_parser("doctor", help="the environment on one screen: versions, device, memory, disk, hub, embedded model")
    doctor.add_argument("--json", action="store_true", help="print one JSON object")

    recommend = commands.add_parser("recommend", help="the model, method, batch and epochs that fit your data, memory and time; writes a config")
    recommend.add_argument("config", nargs="?", help="YAML run config for the data settings (optional)")
    recommend.add_argument("--data", dest="data.train", action="append", metavar="FILE", help="the training data (repeatable)")
    recommend.add_argument("--task", dest="task", choices=["lm", "chat", "classify"], help="what the run will learn (default lm)")
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

    quickstart = commands.add_parser("quickstart", help="fine-tune the embedded model on the bundled example corpus")
    _add_common(quickstart, with_config=False)
    return parser


def _overrides(args: argparse.Namespace) -> list[tuple[str, Any]]:
    pairs = [(key, getattr(args, key)) for key, _ in COMMON_FLAGS.values() if getattr(args, key, None) is not None]
    return pairs + [parse_override(text) for text in args.overrides]


def _config(args: argparse.Namespace, base: dict[str, Any] | None = None):
    """Config file (or, for --resume, the run's saved config), then flags, then --set, in that order."""
    path = getattr(args, "config", None)
    overrides = _overrides(args)
    if getattr(args, "resume", False) and not path:
        out = dict(overrides).get("output.dir")
        if not out:
            raise UserError("--resume needs --out RUN_DIR (the run to continue)")
        path = Path(out) / "config.yaml"
        if not path.is_file():
            raise UserError(f"--resume: {path} not found; is {out} a tunesmith run directory?")
    base_pairs = [(f"{section}.{key}", value) for section, values in (base or {}).items() for key, value in values.items()]
    return load_config(path, base_pairs + overrides)


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, markup=False)


def _run_init(args) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        raise UserError(f"{path} exists; pass --force to overwrite it")
    path.write_text(starter_yaml())
    print(f"wrote {path}; edit it, then run: tunesmith train {path}")
    return 0


def _run_prepare(args) -> int:
    from .api import prepare, preview

    cfg = _config(args)
    prepared = prepare(cfg)
    for line in prepared.summary_lines():
        print(line)
    print(f"token files and data_report.json (with doc_lengths.png): {prepared.directory}")
    if args.show:
        print("\ntrained spans are marked ⟦like this⟧:")
        for number, text in enumerate(preview(cfg, prepared, args.show), 1):
            print(f"--- example {number}\n{text}")
    return 0


def _run_train(args) -> int:
    from .api import train

    summary = train(_config(args), resume=args.resume, console=_console(), force=args.force)
    scope = "assistant-token " if summary.get("task") == "chat" else ""
    print(f"{scope}validation perplexity {summary['base_val_ppl']:.2f} (base) -> {summary['best_val_ppl']:.2f} "
          f"(best, step {summary['best_step']}); stopped: {summary['stopped_because']}")
    if summary.get("task") == "classify":
        print(f"accuracy {summary['accuracy']:.1%}, macro-F1 {summary['macro_f1']:.3f} "
              f"(baseline, {summary['baseline']}: accuracy {summary['base_accuracy']:.1%}, macro-F1 {summary['base_macro_f1']:.3f})")
    print(f"run: {summary['run_dir']} (report.html, summary.json); model: {summary['final_dir']}")
    return 0


def _run_eval(args) -> int:
    from .evaluation import evaluate_model

    cfg = _config(args)
    if not cfg.data.train:
        raise UserError("eval needs --data FILE")
    log = (lambda _msg: None) if args.json else print
    results = [evaluate_model(spec, cfg.data.train, cfg, log=log) for spec in [args.model_or_run, args.compare] if spec]
    if args.json:
        payload = results[0].as_dict() if len(results) == 1 else {"results": [r.as_dict() for r in results]}
        print(json.dumps(payload))
        return 0
    for result in results:
        scope = {"chat": "assistant-token ", "classify": "label-token "}.get(result.task, "")
        print(f"{result.model}: {scope}loss {result.loss:.4f}  perplexity {result.perplexity:.2f}  "
              f"accuracy {result.accuracy:.1%}  ({result.tokens:,} tokens)")
        if result.classification:
            print(f"  classification: accuracy {result.classification['accuracy']:.1%}, "
                  f"macro-F1 {result.classification['macro_f1']:.3f}")
    if len(results) == 2:
        change = results[1].perplexity / results[0].perplexity - 1
        print(f"perplexity change from {results[0].model} to {results[1].model}: {change:+.1%}")
    return 0


def _run_generate(args) -> int:
    from .generation import SamplingOptions, generate_text, load_generator

    cfg = _config(args)
    model, tokenizer = load_generator(args.model_or_run, cfg.train.device, cfg.model.trust_remote_code)
    options = SamplingOptions(args.max_new_tokens, args.temperature, args.top_k, args.top_p, cfg.train.seed, args.chat)
    print(generate_text(model, tokenizer, args.prompt, options))
    return 0


def _run_chat(args) -> int:
    from .generation import ChatSession, SamplingOptions, load_generator

    model, tokenizer = load_generator(args.model_or_run, args.device)
    options = SamplingOptions(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    session = ChatSession(model, tokenizer, options, args.system)
    if not sys.stdin.isatty():  # a pipe: one user message per line in, one reply per line out
        for line in sys.stdin:
            if line.strip():
                try:
                    print(" ".join(session.reply(line.strip()).split("\n")), flush=True)
                except UserError as exc:
                    print(f"error: {exc}", file=sys.stderr, flush=True)
        return 0
    from transformers import TextStreamer

    print("chat: type a message; /reset clears the history, /system TEXT sets the system prompt, /exit quits")
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            session.reset()
            print("(history cleared)")
        elif line.startswith("/system"):
            session.system = line.removeprefix("/system").strip() or None
            session.reset()
            print(f"(system prompt {'set' if session.system else 'cleared'}; history cleared)")
        elif line:
            print("bot> ", end="", flush=True)
            try:
                session.reply(line, streamer)
            except UserError as exc:
                print(f"\nerror: {exc}")


def _run_predict(args) -> int:
    from .predict import predict_file

    count = predict_file(args.model_or_run, Path(args.input), Path(args.output), args.text_field, args.batch_size, args.device)
    print(f"wrote {count:,} rows with predictions to {args.output}")
    return 0


def _run_export(args) -> int:
    from .export import export_run

    written = export_run(Path(args.run), Path(args.out), args.dtype, gguf=args.gguf)
    loads = "llama.cpp-family runtimes and transformers (gguf_file=...)" if args.gguf else "transformers' from_pretrained"
    print(f"wrote {written} ({args.dtype}): loads in {loads}; model card in {Path(args.out) / 'README.md'}")
    return 0


def _run_serve(args) -> int:
    import os

    from .serve import API_KEY_VARIABLE, Limits, create_app, load_for_serving, run_server

    if args.max_batch < args.max_n:
        raise UserError(f"--max-batch {args.max_batch} is below --max-n {args.max_n}: a request's choices must fit one batch")
    limits = Limits(args.max_tokens, args.max_prompt_tokens, args.max_body_bytes, args.max_n, args.max_batch, args.queue_size,
                    args.request_timeout)
    served = load_for_serving(args.model_or_run, args.device)
    key = args.api_key or os.environ.get(API_KEY_VARIABLE)
    print(f"serving {served.name} on http://{args.host}:{args.port}/v1 ({'API key required' if key else 'no API key'}; "
          f"up to {limits.max_batch} sequences decoded together)", flush=True)
    run_server(create_app(served, limits, key), args.host, args.port)
    return 0


def _run_doctor(args) -> int:
    from .doctor import run_checks

    report = run_checks()
    if args.json:
        print(json.dumps(report.as_dict()))
        return 0
    width = max(len(check.name) for check in report.checks)
    for check in report.checks:
        mark = "ok " if check.ok else "!! "
        print(f"{mark}{check.name:<{width}}  {check.value}")
        if check.hint:
            print(f"   {'':<{width}}  {check.hint}")
    return 0


def _run_recommend(args) -> int:
    import yaml

    from .planning.candidates import candidate, default_candidates
    from .planning.recommend import make_plan, parse_size, plan_dict, recommended_config, summary_lines, table_lines

    write = Path(args.write)
    if write.exists() and not args.force:
        raise UserError(f"{write} exists; pass --force to overwrite it or --write another path")
    if args.only and not args.candidate:
        raise UserError("--only needs at least one --candidate MODEL")
    cfg = _config(args)
    candidates = ([] if args.only else default_candidates()) + [candidate(spec) for spec in args.candidate]
    log = (lambda _msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    plan = make_plan(cfg, candidates, parse_size(args.memory) if args.memory else None, args.hours, log)
    raw = recommended_config(plan, cfg)
    write.write_text(yaml.safe_dump(raw, sort_keys=False))
    if args.json:
        print(json.dumps({**plan_dict(plan), "config": str(write)}))
        return 0
    print("\n".join(summary_lines(plan) + [""] + table_lines(plan) + [""]))
    chosen = plan.chosen
    print(f"recommended: {chosen.candidate.name}, method {chosen.method}, micro-batch {plan.micro_batch} x {plan.grad_accum} "
          f"accumulated, {plan.epochs:g} epochs")
    for reason in plan.reasons:
        print(f"  - {reason}")
    print(f"wrote {write}; run: tunesmith train {write}")
    return 0


def _run_diagnose(args) -> int:
    from .diagnose import diagnose_run

    findings = diagnose_run(Path(args.run))
    if args.json:
        print(json.dumps({"run": args.run, "findings": [f.as_dict() for f in findings]}))
        return 0
    for finding in findings:
        print(f"[{finding.severity}] {finding.kind}: {finding.message}")
        for advice in finding.advice:
            setting = f"set {advice.key}={advice.value}: " if advice.key and advice.value is not None else ""
            print(f"    - {setting}{advice.why}")
    return 0


def _run_report(args) -> int:
    from .report import write_report

    markdown, page = write_report(Path(args.run))
    print(f"wrote {markdown} and {page}")
    return 0


def _run_quickstart(args) -> int:
    from .quickstart import QUICKSTART_SETTINGS, run_quickstart

    run_quickstart(_config(args, base=QUICKSTART_SETTINGS), console=_console())
    return 0


OUT_OF_MEMORY = "out of memory; lower --batch-size (raise train.grad_accum to keep the batch) or --block-size"

HANDLERS = {
    "init": _run_init,
    "prepare": _run_prepare,
    "train": _run_train,
    "eval": _run_eval,
    "generate": _run_generate,
    "chat": _run_chat,
    "predict": _run_predict,
    "export": _run_export,
    "serve": _run_serve,
    "doctor": _run_doctor,
    "recommend": _run_recommend,
    "diagnose": _run_diagnose,
    "report": _run_report,
    "quickstart": _run_quickstart,
}


def _quiet_libraries() -> None:
    """Library progress bars and advisory warnings would bury tunesmith's own lines."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _os_error_line(exc: OSError) -> str:
    """One line for a failed file operation: the path, what the OS said, and what usually fixes it."""
    import errno

    path = f"{exc.filename}: " if exc.filename else ""
    reason = exc.strerror or str(exc)
    fix = {errno.ENOSPC: "free some space or write to another disk", errno.EFBIG: "the file size limit (ulimit -f) was reached",
           errno.EDQUOT: "the disk quota is full; free some space", errno.EACCES: "check the permissions, or pick another path",
           errno.EPERM: "check the permissions, or pick another path", errno.EISDIR: "that path is a folder; name a file",
           errno.ENOTDIR: "part of that path is a file, not a folder", errno.ENOENT: "check the path",
           errno.EROFS: "that file system is read-only; pick another path"}.get(exc.errno, "check the path and the disk")
    return f"{path}{reason}; {fix}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "init":
        _quiet_libraries()
    try:
        return HANDLERS[args.command](args)
    except UserError as exc:
        for line in exc.lines():
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from .durable import as_os_error

        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
            print(f"error: {OUT_OF_MEMORY}", file=sys.stderr)
            return 2
        if as_os_error(exc) is not None:  # an OSError, or one a library wrapped (a full disk under safetensors)
            print(f"error: {_os_error_line(as_os_error(exc))}", file=sys.stderr)
            return 2
        import traceback

        traceback.print_exc()
        print(f"error: the traceback above is a bug in tunesmith, not a problem with your input ({type(exc).__name__}); "
              "please report it on the tunesmith issue tracker with the traceback and the output of `tunesmith doctor`",
              file=sys.stderr)
        return 1

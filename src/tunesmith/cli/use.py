"""The commands that put models to use: generate, chat, predict, export, serve, and the web page that starts and tries runs."""

from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path

from ..errors import UserError
from ..config.run import typed_text
from .parser import config_of


def _run_generate(args) -> int:
    from ..inference.generate_file import check_paths, generate_file, summary_lines
    from ..inference.generation import SamplingOptions, check_max_batch, generate_completions, load_generator

    cfg = config_of(args)
    options = SamplingOptions(args.max_new_tokens, args.temperature, args.top_k, args.top_p, cfg.train.seed, args.chat, args.n,
                              tuple(args.stop), args.repetition_penalty, args.no_repeat_ngram)
    options.check()
    check_max_batch(args.max_batch)
    if args.input:
        if not args.output:
            raise UserError("--input needs --output, a new .jsonl, .csv or .tsv file for the completions")
        check_paths(Path(args.input), Path(args.output))
    model, tokenizer = load_generator(args.model_or_run, cfg.train.device, cfg.model.trust_remote_code)
    if not args.input:
        completions = generate_completions(model, tokenizer, args.prompt, options)
        for index, completion in enumerate(completions):
            print(completion.text if len(completions) == 1 else f"--- sample {index} ({completion.finish_reason})\n{completion.text}")
        return 0
    summary = generate_file(model, tokenizer, Path(args.input), Path(args.output), options, args.prompt_field, args.reference_field,
                            args.max_batch, show_progress=sys.stderr.isatty(), model_name=args.model_or_run)
    print("\n".join(summary_lines(summary)))
    return 0


def _piped_lines():
    """stdin's lines as UTF-8 whatever the locale, bytes that are not UTF-8 replaced by U+FFFD."""
    raw = getattr(sys.stdin, "buffer", None)
    return map(typed_text, io.TextIOWrapper(raw, encoding="utf-8", errors="replace") if raw is not None else sys.stdin)


def _chat_command(session, line: str) -> str | None:
    """Carry out /reset or /system TEXT and say what it did; None for a line that is a message, not a command."""
    if line == "/reset":
        session.reset()
        return "(history cleared)"
    if line == "/system" or line.startswith("/system "):
        session.system = line.removeprefix("/system").strip() or None
        session.reset()
        return f"(system prompt {'set' if session.system else 'cleared'}; history cleared)"
    return None


def _run_chat(args) -> int:
    from ..inference.generation import ChatSession, SamplingOptions, load_generator

    model, tokenizer = load_generator(args.model_or_run, args.device, device_setting="--device")
    options = SamplingOptions(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    session = ChatSession(model, tokenizer, options, args.system)
    if not sys.stdin.isatty():
        return _chat_piped(session)
    def show(piece: str) -> None:
        print(piece, end="", flush=True)

    print("chat: type a message; /reset clears the history, /system TEXT sets the system prompt, /exit quits")
    while True:
        try:
            line = typed_text(input("you> ")).strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        except UnicodeDecodeError:  # a terminal whose locale is not UTF-8's
            print("(that line is not UTF-8 text; type it again)")
            continue
        if line in ("/exit", "/quit"):
            return 0
        done = _chat_command(session, line)
        if done:
            print(done)
        elif line:
            print("bot> ", end="", flush=True)
            try:
                session.reply(line, show)
                print()
            except UserError as exc:
                print(f"\nerror: {exc}")


def _chat_piped(session) -> int:
    """One line out per message line in, an empty one where a message failed (its error on stderr), so that line N
    answers message N; the commands act, and say so on stderr. Exit code 2 when any message failed."""
    failed = 0
    for line in (line.strip() for line in _piped_lines()):
        if line in ("/exit", "/quit"):
            break
        done = _chat_command(session, line) if line else None
        if done:
            print(done, file=sys.stderr, flush=True)
        elif line:
            try:
                print(" ".join(session.reply(line).splitlines()), flush=True)  # \r, U+2028 and the like end lines too
            except UserError as exc:
                failed += 1
                print(flush=True)
                print(f"error: {exc}", file=sys.stderr, flush=True)
    if failed:
        print(f"error: {failed} message{'s' if failed != 1 else ''} got no reply (an empty line in its place)", file=sys.stderr)
    return 2 if failed else 0


def _run_predict(args) -> int:
    from ..inference.predict import predict_file

    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: rows scored together must be at least 1; use 16, or 1 for one at a time")
    count = predict_file(args.model_or_run, Path(args.input), Path(args.output), args.text_field, args.batch_size, args.device)
    print(f"wrote {count:,} row{'s' if count != 1 else ''} with predictions to {args.output}")
    return 0


def _run_export(args) -> int:
    from ..export.hf import export_line, export_run
    from ..export.hub import export_and_push

    if args.push_to_hub:
        url = export_and_push(Path(args.run), args.push_to_hub, Path(args.out) if args.out else None, args.dtype, args.gguf,
                              args.private, args.hub_endpoint)
        print(f"pushed to {args.push_to_hub}{' (private)' if args.private else ''}: {url}")
        return 0
    if not args.out:
        raise UserError("export needs --out (a new, empty folder) or --push-to-hub OWNER/NAME")
    written = export_run(Path(args.run), Path(args.out), args.dtype, gguf=args.gguf)
    print(export_line(written, args.dtype, args.gguf, Path(args.out)))
    return 0


def _run_serve(args) -> int:
    from ..decoding.rules import N_MAX
    from ..runtime import check_address, http_address
    from ..serve import API_KEY_VARIABLE, Limits, create_app, load_for_serving, run_server

    if args.api_key is not None and not args.api_key.strip():
        raise UserError("--api-key is empty (an unset variable?): the server would take every request; give the key, or leave "
                        "the flag out to serve without one")
    key = args.api_key or os.environ.get(API_KEY_VARIABLE)
    if key and not (key.isascii() and key.isprintable() and key == key.strip()):
        raise UserError("the API key holds a character an HTTP header cannot carry (letters beyond ASCII, a control character, "
                        "a space at either end), "
                        "so no client could send it; use printable ASCII, such as the output of `openssl rand -hex 24`")
    if not args.host.strip():
        raise UserError("--host is empty, which would listen on every address of this machine; name one, e.g. 127.0.0.1")
    for flag in ("max_tokens", "max_prompt_tokens", "max_body_bytes", "max_n", "max_batch", "queue_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: every request would be refused; pass 1 or more")
    if not math.isfinite(args.request_timeout) or args.request_timeout <= 0:
        raise UserError(f"--request-timeout {args.request_timeout}: pass a finite number of seconds above 0")
    if args.max_n > N_MAX:
        raise UserError(f"--max-n {args.max_n}: a request may ask for at most {N_MAX:,} choices; pass at most that")
    if args.max_batch < args.max_n:
        raise UserError(f"--max-batch {args.max_batch} is below --max-n {args.max_n}: a request's choices must fit one batch")
    check_address(args.host, args.port)
    limits = Limits(args.max_tokens, args.max_prompt_tokens, args.max_body_bytes, args.max_n, args.max_batch, args.queue_size,
                    args.request_timeout)
    served = load_for_serving(args.model_or_run, args.device)
    print(f"serving {served.name} on {http_address(args.host, args.port)}/v1 ({'API key required' if key else 'no API key'}; "
          f"up to {limits.max_batch} sequences decoded together)", flush=True)
    run_server(create_app(served, limits, key), args.host, args.port)
    return 0


def _run_ui(args) -> int:
    from ..runtime import check_address, http_address
    from ..ui import TOKEN_VARIABLE, create_app, run_ui

    root = Path(args.runs)
    if root.exists() and not root.is_dir():
        raise UserError(f"--runs {root} is a file; name the folder that holds your runs")
    if args.max_runs is not None and args.max_runs < 1:
        raise UserError(f"--max-runs {args.max_runs}: the page needs to train at least 1 run at once; pass 1 or more")
    check_address(args.host, args.port)
    root.mkdir(parents=True, exist_ok=True)
    token = args.token or os.environ.get(TOKEN_VARIABLE)
    address = f"{http_address(args.host, args.port)}/" + (f"?token={token}" if token else "")
    print(f"tunesmith ui: {address}  (runs folder {root.resolve()}; Ctrl-C stops the page, not the runs it started)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(f"warning: --host {args.host} without --token: anyone who can reach this machine can start runs here", flush=True)
    run_ui(create_app(root, args.host, args.port, token, args.device, args.max_runs), args.host, args.port)
    return 0


USE_HANDLERS = {
    "generate": _run_generate,
    "chat": _run_chat,
    "predict": _run_predict,
    "export": _run_export,
    "serve": _run_serve,
    "ui": _run_ui,
}

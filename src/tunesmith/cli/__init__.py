"""The `tunesmith` command: parse arguments, build the config, call the library, turn user errors into exit code 2.

`parser.py` defines the flags and builds the config; `commands.py` holds one function per command, and `use.py` those
that put models to use.
"""

from __future__ import annotations

import sys

from ..errors import UserError, is_out_of_memory
from .commands import HANDLERS
from .parser import build_parser

OUT_OF_MEMORY = "out of memory; lower --batch-size (raise train.grad_accum to keep the batch) or --block-size"


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
        from ..rundir.durable import as_os_error

        if is_out_of_memory(exc):
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

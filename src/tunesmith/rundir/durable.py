"""Writing files so that a crash or a full disk never leaves one half-written in place.

Each file is written beside its target, flushed to disk with fsync, then renamed over it; the folder is
synced after the rename, so the rename itself survives a power cut. A rename is atomic on POSIX file systems.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk; a no-op where the OS refuses folders (Windows)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        handle = os.open(path, flags)
    except (IsADirectoryError, PermissionError):
        return
    try:
        os.fsync(handle)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(handle)


def fsync_tree(root: Path) -> None:
    """Every file under `root`, then every folder, deepest first."""
    folders = [root]
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            folders.append(path)
        else:
            fsync_path(path)
    for folder in reversed(folders):
        fsync_path(folder)


def write_atomically(path: Path, content: str | bytes) -> None:
    """`content` (text as UTF-8) in place of `path`, from a partial file of this writer's own (a new name, never a
    link followed), so that two processes writing one file each put a whole one in place, and a link at `path` is
    replaced, never written through: a folder from someone else may hold `report.html -> ~/notes.txt`. An error is
    raised naming `path`."""
    import secrets

    partial = path.with_name(f"{path.name}.partial-{os.getpid()}-{secrets.token_hex(3)}")
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(partial, flags, 0o666), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(path)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    fsync_path(path.parent)


def _host() -> str:
    """This machine's name and, where the system says, its pid namespace's number: two containers sharing a hostname
    and a cache folder do not share pids, so neither may take the other's pids for its own."""
    import socket

    name = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
    try:
        return f"{name}.{re.sub(r'[^0-9]', '', os.readlink('/proc/self/ns/pid'))}"
    except OSError:  # not Linux
        return name


def own_partial(target: Path) -> Path:
    """`<target>.partial-<host>-<pid>`, this process's name for the folder it writes `target` into before putting it in
    place, removed if there; what killed processes left beside it goes first (`sweep_partials`)."""
    sweep_partials(target.parent)
    partial = target.with_name(f"{target.name}.partial-{_host()}-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    return partial


def sweep_partials(folder: Path) -> None:
    """Remove the partial folders in `folder` that a process of this machine left when it was killed (its pid gone): a
    kill costs no disk for good. Another machine's or container's (a cache shared over the network or mounted into
    several containers) are never touched."""
    import glob

    import psutil

    mark = f".partial-{_host()}-"
    if not folder.is_dir():
        return
    for left in folder.glob(f"*{glob.escape(mark)}*"):
        pid = left.name.rpartition(mark)[2]
        if pid.isdigit() and int(pid) != os.getpid() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(left, ignore_errors=True)


def fresh_partial(target: Path) -> Path:
    """An empty `<target>.partial` folder to write into before `replace_dir`."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def replace_dir(partial: Path, target: Path) -> None:
    """Put the finished folder `partial` in place of `target`, synced before and after the renames."""
    fsync_tree(partial)
    old = target.with_name(target.name + ".old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    partial.rename(target)
    fsync_path(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def as_os_error(exc: BaseException | None) -> OSError | None:
    """The OSError inside a library's own exception, so that a full disk reads as one: safetensors says
    `SafetensorError(... I/O error: No space left on device (os error 28))`, and torch.save into a Python file
    raises a RuntimeError whose context is the file's OSError."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError):
            return exc
        found = re.search(r"I/O error: (.*?) \(os error (\d+)\)", str(exc))
        if found:
            return OSError(int(found.group(2)), found.group(1))
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None

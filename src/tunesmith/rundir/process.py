"""The process training in a run directory: its lock (one trainer per folder) and its record (`process.json`: the pid
while it runs, how it ended once it has), and the run's state read from both."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

from ..errors import UserError, first_line
from .folder import LOCK, PROCESS, START_CWD, is_run_dir, read_json_object, run_start_dir


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class ProcessRecord:
    """`process.json`: that this process trains in the run directory, and on the way out how it ended.

    It is written on entering when the folder is already a run (a resume, or a run the web page launched), else by
    `begin` once training has marked the folder, so a refused config leaves no folder behind. A stop signal
    (exit 128 + SIGINT or SIGTERM) or Ctrl-C ends it `stopped`; any other exception `crashed`, with its first
    line. A process killed outright leaves it without an end, which `run_state` reads as crashed once the pid
    is gone or belongs to a later process. A resume refused before training began (a UserError) puts back the record it
    found: the run is as it was, not crashed.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, resumed: bool = False):
        self.run_dir, self.enabled, self.resumed, self.record = run_dir, enabled, resumed, None
        self.found, self.training = None, False

    def begin(self, **facts) -> None:
        """Write the record, with `facts` added (the run's total steps, once they are known).

        The start folder (`cwd`) is the one a fresh start ran in: a resume from elsewhere keeps it, so the run's
        relative paths keep their meaning (`resolve_run_paths`).
        """
        from .durable import write_atomically

        if not self.enabled:
            return
        if self.record is None:
            self.record = {"pid": os.getpid(), "process_started": _process_started(os.getpid()), "started": time.time(),
                           START_CWD: self._start_dir()}
        self.record.update(facts)
        self.training = self.training or bool(facts)
        write_atomically(self.run_dir / PROCESS, json.dumps(self.record) + "\n")

    def _start_dir(self) -> str:
        kept = run_start_dir(self.run_dir) if self.resumed else None
        return str(kept) if kept else os.getcwd()

    def __enter__(self) -> "ProcessRecord":
        if self.enabled and self.resumed:
            self.found = read_process(self.run_dir) or None
        if is_run_dir(self.run_dir):
            self.begin()
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        from .durable import write_atomically

        if self.record is None:
            return
        if isinstance(exc, UserError) and self.found and not self.training:
            with contextlib.suppress(OSError):
                write_atomically(self.run_dir / PROCESS, json.dumps(self.found) + "\n")
            return
        outcome, detail = "finished", ""
        if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and exc.code in (128 + signal.SIGINT, 128 + signal.SIGTERM)):
            outcome = "stopped"
        elif exc is not None:
            outcome, detail = "crashed", first_line(exc)
        with contextlib.suppress(OSError):
            write_atomically(self.run_dir / PROCESS, json.dumps({**self.record, "ended": time.time(), "outcome": outcome,
                                                                  "detail": detail}) + "\n")


def read_process(run_dir: Path) -> dict:
    return read_json_object(run_dir / PROCESS)


def training_pid(record: dict) -> int | None:
    """The pid of the process the record names, while that very process still runs (a reused pid does not count)."""
    pid, started = record.get("pid"), record.get("process_started")
    if "ended" in record or not isinstance(pid, int) or not isinstance(started, (int, float)):
        return None
    now = _process_started(pid)
    return pid if now is not None and abs(now - started) < 1.0 else None


def run_state(run_dir: Path, record: dict | None = None) -> str:
    """running, finished, pruned (stopped early by a sweep), stopped (by a signal, with its checkpoint) or crashed (an
    error, or a process killed outright)."""
    record = read_process(run_dir) if record is None else record
    if training_pid(record) is not None:
        return "running"
    if (run_dir / "summary.json").is_file():
        return "pruned" if read_json_object(run_dir / "summary.json").get("stopped_because") == "pruned" else "finished"
    return "stopped" if record.get("outcome") == "stopped" else "crashed"


class RunLock:
    """One trainer per run folder: an exclusive `flock` on `<run>/.tunesmith-lock`, held for the trainer's whole life.

    The kernel drops the lock when its holder's process ends, however it ends, so a killed trainer never leaves the
    folder locked; the pid written into the file only names the holder to the one refused. A folder that never
    became a run (a refused config) is left as it was found: the lock file, and the folder if the lock made it, go.
    """

    def __init__(self, run_dir: Path):
        self.run_dir, self.handle, self.made = run_dir, None, []

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or raise a UserError naming the live trainer that holds it."""
        import fcntl

        if self.run_dir.exists() and not self.run_dir.is_dir():
            return  # check_run_dir names this problem
        self.made = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        path = self.run_dir / LOCK
        while self.handle is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            handle = _open_lock(path)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise UserError(_busy_message(self.run_dir)) from None
            if _same_file(handle, path):
                self.handle = handle
            else:
                handle.close()  # the holder removed the file as it let go: lock the one now in its place
        self.handle.truncate(0)
        self.handle.write(json.dumps({"pid": os.getpid(), "process_started": _process_started(os.getpid())}) + "\n")
        self.handle.flush()

    def release(self) -> None:
        if self.handle is None:
            return
        with contextlib.suppress(OSError):
            self.handle.truncate(0)  # no pid left to name once the lock is free
            if not is_run_dir(self.run_dir):
                (self.run_dir / LOCK).unlink()
                for folder in self.made:
                    folder.rmdir()
        self.handle.close()
        self.handle = None


def _open_lock(path: Path):
    """The lock file itself, never what a link in its place leads to (truncating it would destroy another file)."""
    import stat

    refused = (f"{path} is not the lock file tunesmith writes (a link, a folder or a special file is in its place); "
               "remove it and run again")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        raise UserError(refused if os.path.islink(path) or os.path.isdir(path) else
                        f"{path}: cannot open the run's lock file ({exc.strerror}); check the folder's permissions") from None
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode) or found.st_nlink > 1:  # a hard link's other name is someone's file
        os.close(fd)
        raise UserError(refused)
    return os.fdopen(fd, "r+", encoding="utf-8")


def _same_file(handle, path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the live trainer holding the run folder's lock, read without touching the lock (so a page that polls
    it can never refuse a trainer that is starting); None when no trainer holds it."""
    return training_pid(read_json_object(run_dir / LOCK))


def _busy_message(run_dir: Path) -> str:
    for _ in range(20):  # the holder writes its pid just after taking the lock
        pid = lock_holder(run_dir)
        if pid is not None:
            break
        time.sleep(0.05)
    who = f"training process {pid}" if pid is not None else "another training process"
    return (f"{run_dir} is in use: {who} is training in it; wait for it to end, or stop it"
            f"{f' (kill -INT {pid})' if pid is not None else ''}, then run this again")

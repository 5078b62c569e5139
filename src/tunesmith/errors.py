"""Errors a user can cause and fix: the CLI prints them as plain lines and exits with code 2."""


class UserError(Exception):
    """A problem in the user's input (config, data, model spec, hardware) with the fix in its message."""

    exit_code = 2

    def lines(self) -> list[str]:
        return [str(self)]


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed: torch's OutOfMemoryError (CUDA, MPS), a CPU's MemoryError, or a backend's RuntimeError
    saying so (torch's CPU allocator: "can't allocate memory"). Read by name, so that a caller need not import torch to
    ask."""
    message = str(exc).lower() if isinstance(exc, RuntimeError) else ""
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or "out of memory" in message or "can't allocate memory" in message)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """What a failed run is remembered by: the error's first line (a user error's first problem), or its type's name."""
    if is_out_of_memory(exc):
        return "out of memory"
    lines = exc.lines() if isinstance(exc, UserError) else str(exc).strip().splitlines()
    return (lines[0] if lines and lines[0] else type(exc).__name__)[:limit]


class ConfigError(UserError):
    """One or more invalid config values; each problem names its key and what is allowed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))

    def lines(self) -> list[str]:
        return list(self.problems)

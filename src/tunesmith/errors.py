"""Errors a user can cause and fix: the CLI prints them as plain lines and exits with code 2."""


class UserError(Exception):
    """A problem in the user's input (config, data, model spec, hardware) with the fix in its message."""

    exit_code = 2

    def lines(self) -> list[str]:
        return [str(self)]


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed: torch's OutOfMemoryError (CUDA, MPS), a CPU's MemoryError, or a backend's RuntimeError
    saying so. Read by name, so that a caller need not import torch to ask."""
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()))


class ConfigError(UserError):
    """One or more invalid config values; each problem names its key and what is allowed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))

    def lines(self) -> list[str]:
        return list(self.problems)

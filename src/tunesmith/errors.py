"""Errors a user can cause and fix: the CLI prints them as plain lines and exits with code 2."""


class UserError(Exception):
    """A problem in the user's input (config, data, model spec, hardware) with the fix in its message."""

    exit_code = 2

    def lines(self) -> list[str]:
        return [str(self)]


class ConfigError(UserError):
    """One or more invalid config values; each problem names its key and what is allowed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))

    def lines(self) -> list[str]:
        return list(self.problems)

"""The few exception types the CLI knows how to print as one line.

Anything raised as a SafetuneError is a user-facing problem (bad recipe, missing file,
failed gate); anything else is a bug and keeps its traceback.
"""


class SafetuneError(Exception):
    """A problem the user can fix; printed as one line, exit code `exit_code`."""

    exit_code = 1


class UsageError(SafetuneError):
    """Bad command-line input or recipe (exit code 2, like typer/click usage errors)."""

    exit_code = 2


class RecipeError(UsageError):
    """A recipe failed validation; carries every problem at once."""

    def __init__(self, problems: list[str], source: str = "recipe"):
        self.problems = problems
        self.source = source
        super().__init__("\n".join(problems))


class GateFailed(SafetuneError):
    """A safety gate failed (exit code 3, so CI can tell it from an error)."""

    exit_code = 3


class Interrupted(SafetuneError):
    """Ctrl-C or SIGTERM (exit code 130, the shell's convention for SIGINT)."""

    exit_code = 130

"""User-facing errors.

A ``WorkbenchError`` is something the *user* did wrong (a missing file, a bad key, a
shape mismatch). The CLI prints it as one line, ``error: ...``, and exits with code 2.
Anything else is a bug and keeps its traceback.
"""


class WorkbenchError(Exception):
    """An error in the user's input, said in one line a person can act on."""

    exit_code = 2


class CheckpointError(WorkbenchError):
    """A checkpoint directory is missing, incomplete or unreadable."""


class ConfigError(WorkbenchError):
    """A configuration file or option is invalid."""


class DataError(WorkbenchError):
    """A data file is invalid."""


def did_you_mean(word: str, choices) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""

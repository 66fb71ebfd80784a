"""Errors a user can fix: the CLI prints their message alone, without a traceback."""


class ResexpError(Exception):
    """A problem with the user's input or environment; the message says what to do."""

    exit_code = 2


class ConfigError(ResexpError, ValueError):
    """A setting is invalid (a depth that is not 6n+2, an unknown device, ...)."""


class DataError(ResexpError):
    """A data set cannot be found, downloaded, read or decoded."""


def one_line(error: BaseException) -> str:
    """``Type: first line of the message`` (cut at 200 characters), or ``Type`` alone for an
    empty message: an exception worth quoting inside a one-line error or warning."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__

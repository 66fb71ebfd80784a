"""Errors a user can fix: the CLI prints their message alone, without a traceback."""


class ResexpError(Exception):
    """A problem with the user's input or environment; the message says what to do."""

    exit_code = 2


class ConfigError(ResexpError):
    """A setting is invalid (a depth that is not 6n+2, an unknown device, ...)."""


class DataError(ResexpError):
    """A data set cannot be found, downloaded, read or decoded."""

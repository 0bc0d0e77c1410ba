"""Exceptions with messages meant for the person running the pipeline."""


class MbsnetError(Exception):
    """Base class: the command line prints the message and exits non-zero, no traceback."""


class ConfigError(MbsnetError, ValueError):
    """A config value is missing or wrong; the message names the key path."""


class DataError(MbsnetError):
    """Input audio or a dataset tree is missing, unreadable or inconsistent; names the files."""

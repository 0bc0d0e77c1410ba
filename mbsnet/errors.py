"""Exceptions with messages meant for the person running the pipeline."""


class MbsnetError(Exception):
    """Base class: the command line prints the message and exits non-zero, no traceback."""


class ConfigError(MbsnetError, ValueError):
    """A config value is missing or wrong; the message names the key path."""


class UsageError(MbsnetError):
    """The command line was used wrongly (an option's value or a combination of options);
    exit status 2, like argparse's own usage errors. Every other MbsnetError exits 1."""


class DataError(MbsnetError):
    """Input audio or a dataset tree is missing, unreadable or inconsistent; names the files."""

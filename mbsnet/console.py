"""What the `mbsnet` command line shows: the package's log records, as plain lines.

Modules log with ``logging.getLogger(__name__)``; the command line installs one
:class:`ConsoleHandler` on the ``mbsnet`` logger for the length of a command. INFO and DEBUG
records go to stdout and WARNING and above to stderr, each as its bare message, so the
output reads as it did when the messages were printed. A record can name its stream instead
(``extra=TO_STDERR`` or ``extra=TO_STDOUT``): progress lines go to stderr so that stdout
keeps a command's results, and a few warnings stay on stdout, the stream users of the
command line know them from.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TextIO

#: The logger every module of the package logs under.
ROOT = "mbsnet"
#: ``extra=`` for a record shown on stderr whatever its level.
TO_STDERR = {"console_stream": "stderr"}
#: ``extra=`` for a record shown on stdout whatever its level.
TO_STDOUT = {"console_stream": "stdout"}

QUIET, NORMAL, VERBOSE = logging.WARNING, logging.INFO, logging.DEBUG


class ConsoleHandler(logging.Handler):
    """Each record's message on stdout (below WARNING) or stderr, flushed at once.

    The streams are looked up when a record is written unless given here, so a
    redirection of ``sys.stdout``/``sys.stderr`` made after set-up still applies.
    """

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        super().__init__()
        self._stdout, self._stderr = stdout, stderr
        self.setFormatter(logging.Formatter("%(message)s"))

    def stream_for(self, record: logging.LogRecord) -> TextIO:
        named = getattr(record, "console_stream", None)
        to_stderr = named == "stderr" or (named is None and record.levelno >= logging.WARNING)
        if to_stderr:
            return self._stderr or sys.stderr
        return self._stdout or sys.stdout

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.stream_for(record)
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def level_for(quiet: bool = False, verbose: bool = False) -> int:
    """The level of ``-q`` (warnings and errors), ``-v`` (debug too) or neither (INFO)."""
    return QUIET if quiet else VERBOSE if verbose else NORMAL


@contextlib.contextmanager
def console(level: int = NORMAL, stdout: TextIO | None = None,
            stderr: TextIO | None = None) -> Iterator[None]:
    """Show the package's records of ``level`` and above while the block runs; the
    logger is left as it was found afterwards (tests run many commands in one process).
    ``stdout``: where INFO/DEBUG lines go instead of ``sys.stdout`` (a child process
    whose stdout carries data sends them to stderr)."""
    logger = logging.getLogger(ROOT)
    handler = ConsoleHandler(stdout, stderr)
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)

"""Progress output (tqdm on a terminal, plain lines otherwise) and an order-keeping process
pool, for the long steps of data preparation and scoring. Progress lines are INFO records
shown on stderr, so that -q hides them and stdout keeps a command's results."""

from __future__ import annotations

import logging
import multiprocessing
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from tqdm import tqdm

from .console import TO_STDERR
from .workers import die_with_parent

logger = logging.getLogger(__name__)

T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str, lines: int = 10) -> Iterator[T]:
    """Yield ``items``, showing a tqdm bar on a terminal or about ``lines`` plain lines
    (neither when INFO records are not shown)."""
    shown = logger.isEnabledFor(logging.INFO)
    if shown and sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, unit="utt", leave=False)
        logger.info(f"{desc}: {total} done", extra=TO_STDERR)
        return
    every = max(1, total // lines)
    done = 0
    for done, item in enumerate(items, 1):
        if done % every == 0 or done == total:
            logger.info(f"{desc}: {done}/{total}", extra=TO_STDERR)
        yield item
    if done == 0:
        logger.info(f"{desc}: nothing to do", extra=TO_STDERR)


def parallel_map(fn: Callable[[Any], T], items: Sequence[Any], workers: int, desc: str,
                 initializer: Callable[..., None] | None = None,
                 initargs: tuple = ()) -> list[T]:
    """``[fn(x) for x in items]`` in ``workers`` processes (in order), with progress.

    ``initializer(*initargs)`` runs once per worker process (or once here when
    ``workers <= 1``): the place to hand large shared inputs to the workers. The workers
    die with this process, even when it is killed.
    """
    if workers <= 1 or len(items) <= 1:
        if initializer is not None:
            initializer(*initargs)
        return list(progress(map(fn, items), len(items), desc))
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    chunk = max(1, len(items) // (workers * 8))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                             initializer=_start_worker,
                             initargs=(initializer, initargs)) as pool:
        return list(progress(pool.map(fn, items, chunksize=chunk), len(items), desc))


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    die_with_parent()
    if initializer is not None:
        initializer(*initargs)

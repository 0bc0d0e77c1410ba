"""The training batches: which items every step of an epoch reads, and a DataLoader that
reads them in worker processes, into pinned memory when the run is on CUDA.

The batches depend on ``(seed, epoch)`` only (:func:`epoch_batches`) and each item's crop
on ``(seed, epoch, item)`` only (:class:`~mbsnet.data.datasets.TrainDataset`), so any
number of workers, none included, gives the same batches, and a resumed run continues
with the batch it stopped before. A run of several processes shares every global batch
out: process ``rank`` of ``world`` reads the ``rank``-th contiguous slice of each, so the
position in an epoch is the same for any number of processes.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from ..data.datasets import TrainDataset
from ..workers import exit_with


def epoch_batches(n_items: int, batch_size: int, steps: int, seed: int,
                  epoch: int) -> list[list[int]]:
    """The item indices of every batch of an epoch: shuffled passes over the training set
    (as many as ``steps`` batches need), fixed by ``seed`` and ``epoch`` alone."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order += torch.randperm(n_items, generator=generator).tolist()
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """The batches of one epoch from one step on (:meth:`start`), as lists of
    ``(epoch, item)`` keys of a TrainDataset; with ``shard=(rank, world)`` the rank-th of
    ``world`` equal slices of each (``batch_size`` is the global batch, divisible by
    ``world``)."""

    def __init__(self, n_items: int, batch_size: int, steps: int, seed: int,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self.n_items, self.batch_size, self.steps, self.seed = n_items, batch_size, steps, seed
        rank, world = shard
        if batch_size % world or not 0 <= rank < world:
            raise ValueError(f"cannot take share {rank} of {world} of a batch of {batch_size}")
        self.share = slice(rank * batch_size // world, (rank + 1) * batch_size // world)
        self.epoch, self.step = 0, 0

    def start(self, epoch: int, step: int) -> None:
        """Let the next pass yield ``epoch``'s batches ``step``, ``step + 1``, ..."""
        self.epoch, self.step = epoch, step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches = epoch_batches(self.n_items, self.batch_size, self.steps, self.seed, self.epoch)
        for batch in batches[self.step:]:
            yield [(self.epoch, item) for item in batch[self.share]]

    def __len__(self) -> int:
        return self.steps - self.step


class TrainBatches:
    """``(clean, noisy)`` batches ``[B, samples]`` of any epoch, from any step, read by
    ``workers`` processes (0: in this process); with ``shard=(rank, world)`` this
    process's share of each, ``[B / world, samples]``.

    The workers start with the first epoch and live until :meth:`close` (or the end of a
    ``with`` block), or until this process ends, even killed. On CUDA the batches
    arrive in pinned memory, so that ``tensor.to(device, non_blocking=True)`` overlaps the
    copy with the GPU's work.
    """

    def __init__(self, dataset: TrainDataset, *, batch_size: int, steps: int, seed: int,
                 workers: int, device: torch.device, shard: tuple[int, int] = (0, 1)) -> None:
        self.steps = steps
        self.sampler = EpochBatchSampler(len(dataset), batch_size, steps, seed, shard)
        self.loader = DataLoader(
            dataset, batch_sampler=self.sampler, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            worker_init_fn=functools.partial(_worker_init, os.getpid()) if workers else None,
            # the loader draws its workers' base seed from this generator, not from the
            # global RNG, whose stream (dropout, ...) must not depend on the worker count
            generator=torch.Generator().manual_seed(seed))
        self._iterator: Iterator | None = None

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` from step ``start`` to its end."""
        self.sampler.start(epoch, start)
        self._iterator = iter(self.loader)
        return self._iterator

    def close(self) -> None:
        """Stop the worker processes now rather than when the loader is garbage."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)  # multi-process iterators only
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> TrainBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _worker_init(trainer: int, _worker_id: int) -> None:
    """In each worker: end with the trainer, and leave SIGTERM and SIGINT to it."""
    exit_with(trainer)
    # A job's SIGTERM (or a terminal's Ctrl-C) reaches every process: the trainer
    # checkpoints at the next step boundary and then stops the workers; a worker ending
    # first would fail that step.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)

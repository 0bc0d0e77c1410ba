"""A whole training run: epochs, validation, logging, checkpoints, resume, final outputs.

Layout of one run directory ``OUT`` (docs/results.md):

- ``OUT/checkpoint/last.pt`` full checkpoint, written at every epoch end and every
  ``training.checkpoint_minutes``; a rerun resumes from it. ``OUT/checkpoint/best.pt``:
  the generator of the best epoch (``model.pt`` format). ``OUT/checkpoint/train_log.jsonl``:
  the live log. None of these are workflow outputs, so a failed job keeps them.
- ``OUT/model.pt``, ``OUT/train_log.jsonl``, ``OUT/train_summary.json``: written atomically
  once the last epoch is done.

In the log and summary, epochs are counted from 1 and ``step`` is the number of training
steps done in the whole run (so the first step is 1).

A data-parallel run (``training.devices`` > 1, :mod:`.distributed`) calls :func:`train` in
every process; they keep the same run state, validate a share of the utterances each,
and only rank 0 writes files and reports progress (:mod:`.progress`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import check_writable, write_json, write_text
from ..audio import stft
from ..config import ablation_config, config_hash
from ..data.datasets import EvalDataset, TrainDataset
from ..device import peak_memory_mb, reset_peak_memory, set_threads
from ..errors import ConfigError, DataError, MbsnetError
from ..evaluation.enhance import enhance_with_spectrum, pad_hop
from ..models import count_parameters, save_model
from ..models.spec import scan_used
from . import tensorboard
from .batches import TrainBatches
from .checkpoint import RunState, load_checkpoint, save_checkpoint, set_rng_state
from .distributed import Layout, Processes, joined, launch_for
from .gan import EnhancementGan, first_metric_epoch
from .losses import reconstruction_loss
from .numerics import numerics
from .paths import RunPaths, steps_per_epoch
from .progress import Progress, fmt
from .records import JsonlLog, NoLog
from .signals import TerminationRequest

#: Training keys that do not change the recipe: a checkpoint stays valid across them (the
#: device, determinism and TF32 change CUDA's rounding only; the batches are the same for
#: any number of data workers; processes and micro-batches divide the same global batch).
OPERATIONAL_KEYS = ("checkpoint_minutes", "pesq_workers", "max_bad_steps", "device",
                    "data_workers", "deterministic", "tf32", "devices", "accumulate",
                    "tensorboard")
#: At most about this many step lines per epoch in the log and the plain progress output.
STEP_LINES_PER_EPOCH = 50

StepCallback = Callable[[RunState], None]

_log = logging.getLogger(__name__)


def train(config: Mapping[str, Any], ablation: str, seed: int, out_dir: str | Path,
          manifest: str | Path, *, threads: int | None = None,
          on_step: StepCallback | None = None) -> dict[str, Any]:
    """Train one ablation with one seed into ``out_dir``, resuming from its checkpoint if
    there is one; returns the summary written to train_summary.json.

    ``on_step`` is called with the run state after every step (and after any checkpoint
    that step triggered); tests use it to interrupt a run.

    With ``training.devices`` N > 1 this is one of N processes started by torchrun or srun
    (:func:`.distributed.launch_for` says how when it is not).
    """
    ablation_cfg = ablation_config(config, ablation)
    settings = ablation_cfg["training"]
    layout = Layout.of(settings, ablation)
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DataError(f"data manifest {manifest} does not exist; run `mbsnet prepare` first "
                        "(or pass --data)")
    if seed < 0:
        raise ConfigError(f"seed must be an integer >= 0 (as in config.yaml's seeds), got {seed}")
    launch = launch_for(layout, settings["device"])
    tensorboard.wanted(settings)  # set true without the package: stop before any work
    paths = RunPaths(out_dir)
    check_writable(paths.checkpoint_dir)
    if launch is None or launch.rank == 0:
        for stale in paths.remove_stale_temporaries():
            _log.info(f"removed {stale}, left half-written by an interrupted run")

    train_set = TrainDataset(manifest, split="train", crop_seconds=settings["crop_seconds"],
                             seed=seed)
    valid_set = EvalDataset(manifest, split=settings["validate_on"])
    identity = config_hash({"ablation": ablation_cfg["name"], "model": ablation_cfg["model"],
                            "training": {k: v for k, v in settings.items()
                                         if k not in OPERATIONAL_KEYS},
                            "seed": seed, "data": _file_digest(manifest)})
    # before the first CUDA call: cuBLAS reads its workspace setting once
    with numerics(settings["deterministic"], settings["tf32"]), \
            joined(launch, settings["device"]) as processes:
        device = processes.device(settings["device"])
        set_threads(threads if threads is not None else config["resources"]["threads"])
        seed_everything(seed)
        with EnhancementGan(ablation_cfg, config, device, processes) as gan, \
                TrainBatches(train_set, batch_size=settings["batch_size"],
                             steps=steps_per_epoch(settings, len(train_set)), seed=seed,
                             workers=settings["data_workers"], device=device,
                             shard=(processes.rank, processes.world)) as batches, \
                TerminationRequest() as stop:
            run = _Run(gan, ablation_cfg, config, seed, paths, identity, batches,
                       valid_set, on_step, stop)
            return run.execute()


def seed_everything(seed: int) -> None:
    """Seed the torch (CPU and CUDA), numpy and python RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class _Run:
    """The state and steps of one call of :func:`train`: it drives ``gan`` through the
    epochs, validates it, and writes the log, checkpoints and outputs."""

    def __init__(self, gan: EnhancementGan, ablation_cfg: dict[str, Any],
                 config: Mapping[str, Any], seed: int, paths: RunPaths, identity: str,
                 batches: TrainBatches, valid_set: EvalDataset,
                 on_step: StepCallback | None, stop: TerminationRequest) -> None:
        self.gan, self.ablation_cfg, self.config = gan, ablation_cfg, config
        self.settings = ablation_cfg["training"]
        self.layout = Layout.of(self.settings)
        self.processes: Processes = gan.processes
        self.main = self.processes.is_main
        self.name = ablation_cfg["name"]
        self.seed, self.paths, self.identity = seed, paths, identity
        self.batches, self.valid_set = batches, valid_set
        self.on_step, self.stop = on_step, stop
        self.epochs = self.settings["epochs"]
        self.steps = batches.steps
        self.log_every = max(1, self.steps // STEP_LINES_PER_EPOCH)
        self.run = RunState()
        self.saved_at: tuple[int, int] | None = None  # (epoch, global step) of last.pt
        self.progress = Progress(f"{self.name} seed{seed}", self.steps, self.log_every,
                                 quiet=not self.main)
        # The discriminator only serves the generator's MetricGAN term: with no epoch
        # using it, it is not trained (the generator's updates are the same either way).
        self.metric_from = first_metric_epoch(self.settings)
        self.tensorboard_on = self.main and tensorboard.wanted(self.settings)
        self.tb: tensorboard.TensorboardLog | None = None

    # -- the run ----------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        try:
            return self._execute()
        finally:
            if self.tb is not None:
                self.tb.close()

    def _execute(self) -> dict[str, Any]:
        self._resume_or_start()
        self.session_start = time.monotonic()
        self.wall_before = self.run.wall_seconds
        self.last_save_time = self.session_start
        if self.gan.autocast_dtype is None and self.settings["precision"] != "fp32":
            self.progress.warn(f"precision {self.settings['precision']} needs CUDA; "
                               f"training in float32 on {self.gan.device.type}")
        scan = self._scan()
        self.devices = self.processes.describe_all(self.gan.device)
        where = (self.devices[0] if not self.processes.distributed else
                 f"{self.processes.world} processes ({', '.join(dict.fromkeys(self.devices))})")
        self.progress.note(f"training {self.name} seed {self.seed} on {where}"
                           f"{f' ({scan} scan)' if scan else ''}: {self.epochs} epochs x "
                           f"{self.steps} steps, {self.layout.describe()}")
        if self.metric_from is None:
            self.progress.note(f"training.metricgan_from {self.settings['metricgan_from']}: "
                               "no epoch uses the MetricGAN term, so the discriminator is "
                               "not trained")
        while self.run.epoch < self.epochs:
            self._train_epoch()
        return self._write_outputs()

    def _resume_or_start(self) -> None:
        if self.paths.last.is_file():
            checkpoint = load_checkpoint(self.paths.last)
            if checkpoint["identity"] == self.identity:
                self.gan.load_state_dict(checkpoint["trainer"])
                set_rng_state(checkpoint["rng"], self.gan.device)
                self.run = checkpoint["run"]
                self.run.resumed += 1
                self.saved_at = (self.run.epoch, self.run.global_step)
                self.log = self._open_log(truncate_to=self.run.log_bytes)
                self.log.write({"kind": "resume", "epoch": self.run.epoch + 1,
                                "step": self.run.global_step, "from": str(self.paths.last)})
                self._open_tensorboard(resume_step=self.run.global_step)
                where = (f"all {self.epochs} epochs done, writing the outputs"
                         if self.run.epoch >= self.epochs else
                         f"epoch {self.run.epoch + 1} of {self.epochs}, step {self.run.step} "
                         f"of {self.steps} ({self.run.global_step} steps done)")
                self.progress.note(f"resuming from {self.paths.last}: {where}")
                return
            self.progress.warn(f"{self.paths.last} was written with other settings, seed or "
                               "data; starting from scratch")
        if self.main:
            self.paths.best.unlink(missing_ok=True)
            shutil.rmtree(self.paths.tensorboard, ignore_errors=True)  # another run's events
        self.log = self._open_log(truncate_to=0)
        self._open_tensorboard(resume_step=None)

    def _open_tensorboard(self, resume_step: int | None) -> None:
        """TensorBoard's event files (rank 0, training.tensorboard), from ``resume_step``."""
        if self.tensorboard_on:
            self.tb = tensorboard.TensorboardLog(self.paths.tensorboard, resume_step)

    def _open_log(self, truncate_to: int) -> JsonlLog | NoLog:
        """The live log (rank 0's; the other processes log nothing)."""
        return JsonlLog(self.paths.live_log, truncate_to) if self.main else NoLog()

    def _train_epoch(self) -> None:
        run, gan = self.run, self.gan
        if run.step == 0:
            run.start_epoch()
            reset_peak_memory(gan.device)
        self.epoch_start = time.monotonic()
        use_metric_loss = self.metric_from is not None and run.epoch >= self.metric_from
        self.progress.start_epoch(run.epoch, self.epochs, run.step)
        for clean, noisy in self.batches.epoch(run.epoch, start=run.step):
            started = time.monotonic()
            result = gan.train_step(clean, noisy, use_metric_loss,
                                    train_discriminator=self.metric_from is not None)
            self._record_step(result, time.monotonic() - started)
            stop = self._stop_signal()
            if run.step < self.steps:  # the epoch end checkpoints anyway
                if self._checkpoint_due() or stop:
                    self._save_last()
                self._stop_if(stop)
            if self.on_step is not None:
                self.on_step(run)
        self.progress.end_epoch()
        self._end_epoch(use_metric_loss)
        self._stop_if(self._stop_signal())

    def _stop_signal(self) -> signal.Signals | None:
        """The SIGTERM or SIGINT received since the run started, by this process or any
        other of the run (all of them then stop after the same step)."""
        number = int(self.processes.max([self.stop.signal or 0])[0])
        return signal.Signals(number) if number else None

    def _stop_if(self, stop: signal.Signals | None) -> None:
        """After a SIGTERM, stop at a step boundary, right after a checkpoint (rank 0 wrote
        it before every process gets here)."""
        if stop is not None:
            self.progress.end_epoch()
            self.processes.barrier()
            raise MbsnetError(f"stopped by {stop.name} after step {self.run.global_step}; "
                              f"saved {self.paths.last}, the same command resumes from it")

    def _record_step(self, result: dict[str, Any], seconds: float) -> None:
        run = self.run
        run.step += 1
        run.global_step += 1
        run.train_seconds += seconds
        run.timed_steps += 1
        if result["skipped"]:
            run.skipped_steps += 1
            run.epoch_skipped += 1
            run.bad_streak += 1
        else:
            run.bad_streak = 0
            run.epoch_loss_sum += result["gen_loss"]
            run.epoch_loss_count += 1
            if result["disc_loss"] is None and self.metric_from is not None:
                run.disc_skipped_steps += 1
                run.epoch_disc_skipped += 1
        line = {"kind": "step", "epoch": run.epoch + 1, "step": run.global_step,
                "gen_loss": _finite_or_none(result["gen_loss"]), "disc_loss": result["disc_loss"],
                "lr": self.gan.lr, "step_seconds": round(seconds, 4),
                "skipped": result["skipped"]}
        reason = result["reason"] or result["disc_reason"]
        if reason:
            line["reason"] = reason
        if result["skipped"] or run.step % self.log_every == 0 or run.step == self.steps:
            self.log.write(line)
        self.progress.step(line)
        if self.tb is not None:
            self.tb.step(line)
        if run.bad_streak >= self.settings["max_bad_steps"]:
            raise MbsnetError(self._bad_streak_message(result["reason"]))

    def _bad_streak_message(self, reason: str) -> str:
        run = self.run
        where = (f"{self.paths.last} (epoch {self.saved_at[0] + 1}, after step "
                 f"{self.saved_at[1]}); a rerun resumes from it" if self.saved_at else
                 "none: no checkpoint was written before the failure")
        return (f"training stopped at epoch {run.epoch + 1}, step {run.global_step}: "
                f"{run.bad_streak} consecutive steps had a non-finite loss or gradient "
                f"(training.max_bad_steps = {self.settings['max_bad_steps']}; last: {reason}). "
                f"Last good checkpoint: {where}. Consider a lower training.lr or "
                "precision: fp32.")

    def _end_epoch(self, use_metric_loss: bool) -> None:
        run, gan = self.run, self.gan
        val_loss, val_pesq = validate(gan, self.valid_set, self.processes)
        peak = round(self.processes.max([peak_memory_mb(gan.device)])[0], 1)
        run.peak_memory_mb = max(run.peak_memory_mb, peak)
        train_loss = (run.epoch_loss_sum / run.epoch_loss_count
                      if run.epoch_loss_count else None)
        line = {"kind": "epoch", "epoch": run.epoch + 1, "gen_loss": train_loss,
                "val_loss": _finite_or_none(val_loss), "val_pesq": _finite_or_none(val_pesq),
                "lr": gan.lr, "seconds": round(time.monotonic() - self.epoch_start, 3),
                "peak_memory_mb": peak,
                "skipped_steps": run.epoch_skipped, "disc_skipped": run.epoch_disc_skipped,
                "metric_loss": use_metric_loss}
        self.log.write(line)
        if self.tb is not None:
            self.tb.epoch(line, run.global_step)
        self.progress.epoch_line(line)
        gan.end_epoch()
        score = val_pesq if self.settings["best_key"] == "val_pesq" else val_loss
        if _better(score, run.best_score, higher=self.settings["best_key"] == "val_pesq"):
            run.best_score, run.best_epoch = score, run.epoch + 1
            if self.main:
                self._save_model(self.paths.best)
        run.epoch += 1
        run.step = 0
        self._save_last()

    # -- files ------------------------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        return time.monotonic() - self.last_save_time >= self.settings["checkpoint_minutes"] * 60

    def _save_last(self) -> None:
        self.run.wall_seconds = self.wall_before + time.monotonic() - self.session_start
        self.run.log_bytes = self.log.size()
        if self.tb is not None:
            self.tb.flush()  # the events up to the checkpoint are on disk with it
        if self.main:  # every process holds the same state
            save_checkpoint(self.paths.last, identity=self.identity,
                            trainer_state=self.gan.state_dict(), run=self.run,
                            device=self.gan.device)
        self.saved_at = (self.run.epoch, self.run.global_step)
        self.last_save_time = time.monotonic()

    def _scan(self) -> str | None:
        """The selective scan the Mamba blocks ran (None: the model has none)."""
        return scan_used(self.ablation_cfg["model"], self.gan.device)

    def _save_model(self, path: Path) -> None:
        save_model(path, self.gan.generator, ablation=self.name,
                   model_cfg=self.ablation_cfg["model"], config=self.config)

    def _write_outputs(self) -> dict[str, Any]:
        run, layout = self.run, self.layout
        summary = {
            "ablation": self.name, "seed": self.seed, "epochs": run.epoch,
            "steps": run.global_step,
            "wall_seconds": round(self.wall_before + time.monotonic() - self.session_start, 3),
            "skipped_steps": run.skipped_steps, "disc_skipped_steps": run.disc_skipped_steps,
            "best_epoch": run.best_epoch, "best_key": self.settings["best_key"],
            "best_score": run.best_score, "device": self.devices[0], "scan": self._scan(),
            "precision": "fp32" if self.gan.autocast_dtype is None else "bf16",
            "deterministic": self.settings["deterministic"], "tf32": self.settings["tf32"],
            "data_workers": self.settings["data_workers"],
            "peak_memory_mb": run.peak_memory_mb, "resumed": run.resumed,
            "params": count_parameters(self.gan.generator)["total"],
            "processes": self.processes.world, "process_devices": self.devices,
            "batch_size": layout.batch_size, "accumulate": layout.accumulate,
            "micro_batch": layout.micro_batch,
            "utterances_per_second": (round(run.timed_steps * layout.batch_size
                                            / run.train_seconds, 3)
                                      if run.train_seconds > 0 else None),
        }
        if not self.main:
            return summary
        self._save_model(self.paths.model)
        write_text(self.paths.log, self.paths.live_log.read_text())
        write_json(self.paths.summary, summary)
        self.progress.note(f"done: {run.global_step} steps, best {summary['best_key']} "
                           f"{fmt(run.best_score)} at epoch {run.best_epoch}; wrote "
                           f"{self.paths.model}")
        return summary


@torch.no_grad()
def validate(gan: EnhancementGan, dataset: EvalDataset,
             processes: Processes | None = None) -> tuple[float, float]:
    """Mean reconstruction loss and mean wide-band PESQ over whole utterances.

    One forward pass per utterance, as the evaluation enhances it (padded by a hop on both
    sides, float32): PESQ is of its waveform, averaged over the utterances where PESQ
    succeeds (NaN if it fails for all); the loss is of its spectrum against the padded
    clean one, without the MetricGAN term so that epochs before and after it is switched
    on compare. Several ``processes``
    each score every world-th utterance and the figures are gathered in utterance order,
    so the means are those of one process.
    """
    processes = processes or Processes()
    gan.generator.eval()
    indices = range(processes.rank, len(dataset), processes.world)
    losses, cleans, enhanced = [], [], []
    for index in indices:
        item = dataset[index]
        clean = torch.as_tensor(item["clean"], dtype=torch.float32, device=gan.device)
        noisy = torch.as_tensor(item["noisy"], dtype=torch.float32, device=gan.device)
        wave, est_spec = enhance_with_spectrum(gan.generator, noisy[None])
        clean_spec = stft(pad_hop(clean[None]))
        losses.append(reconstruction_loss(est_spec, clean_spec, gan.loss_cfg).item())
        cleans.append(clean.cpu().numpy())
        enhanced.append(wave[0].cpu().numpy())
    pesq = gan.pesq.scores(cleans, enhanced)
    if processes.distributed:
        mine = list(zip(indices, losses, pesq, strict=True))
        scored = sorted(row for rows in processes.gather(mine) for row in rows)
        losses, pesq = [row[1] for row in scored], np.array([row[2] for row in scored])
    finite = pesq[np.isfinite(pesq)]
    return float(np.mean(losses)), float(finite.mean()) if finite.size else math.nan


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _better(score: float | None, best: float | None, *, higher: bool) -> bool:
    if score is None or not math.isfinite(score):
        return False
    return best is None or (score > best if higher else score < best)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


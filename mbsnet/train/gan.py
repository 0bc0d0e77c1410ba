"""The enhancement GAN of one ablation (generator, discriminator, optimizers, schedulers)
and one full training step of the BSRNN/MetricGAN recipe; :mod:`.loop` runs it."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..audio import istft, stft
from ..models import Discriminator, build_model
from .discriminator_targets import PesqScorer, metric_targets
from .distributed import Layout, Processes
from .losses import (
    compressed_magnitude,
    discriminator_loss,
    metric_generator_loss,
    reconstruction_loss,
)
from .microbatches import BatchRows, Piece, Rewind, pieces, use_global_batch_dropout


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``training.precision``: bf16 on CUDA only, else None (fp32).

    Under bf16 autocast the matrix products and convolutions run in bf16; the STFT, the
    complex masks, the losses, the Mamba scan and the LSTM recurrences stay float32. There
    is no fp16: it would need loss scaling, and cuDNN's LSTMs under autocast are fp16 only.
    """
    if precision == "fp32":
        return None
    if device.type != "cuda":
        warnings.warn(f"training.precision: {precision} is used on CUDA only; "
                      f"training in float32 on {device.type}", stacklevel=2)
        return None
    return torch.bfloat16


class EnhancementGan:
    """What one ablation trains, built from its resolved settings
    (:func:`mbsnet.config.ablation_config`): the generator (the enhancement model), the
    MetricGAN discriminator, their Adam optimizers and step learning-rate schedulers, the
    bf16 autocast, the data-parallel wrapping of both networks, and :meth:`train_step`, one
    optimisation step of both. It does not run a training: :func:`.loop.train` drives it
    through the epochs, validates, logs and checkpoints it.

    Seed the global RNGs before constructing it: the initial weights come from them.
    PESQ for the discriminator targets runs in ``training.pesq_workers`` processes;
    call :meth:`close` (or use ``with``) to stop them.

    With several ``processes`` (:mod:`.distributed`) each step trains on this process's
    share of the batch and the gradients are averaged over the processes; with
    ``training.accumulate`` the share is taken in micro-batches (:mod:`.microbatches`).
    ``generator`` and ``discriminator`` are always the plain networks.
    """

    def __init__(self, ablation_cfg: Mapping[str, Any], config: Mapping[str, Any],
                 device: torch.device, processes: Processes | None = None) -> None:
        self.settings = ablation_cfg["training"]
        self.loss_cfg = self.settings["loss"]
        self.config = config
        self.device = device
        self.processes = processes or Processes()
        self.micro_batch = Layout.of(self.settings).micro_batch
        self.generator = build_model(
            ablation_cfg["model"],
            gradient_checkpointing=self.settings["gradient_checkpointing"],
            cpu_lstm_kernel=self.settings["cpu_lstm_kernel"]).to(device)
        self.discriminator = Discriminator(self.settings["discriminator_ndf"]).to(device)
        self.autocast_dtype = autocast_dtype(self.settings["precision"], device)
        # In pieces, the discriminator's dropout masks follow the global batch's rows.
        self.rows: BatchRows | None = None
        if self.processes.distributed or self.settings.get("accumulate", 1) > 1:
            self.rows = BatchRows()
            use_global_batch_dropout(self.discriminator, self.rows)
        # What the training steps run: DistributedDataParallel on several processes, told
        # to look for generator parameters outside the graph where there are some.
        self._gen = self.processes.wrap(
            self.generator, device,
            find_unused_parameters=self.processes.distributed and self._has_unused_parameters())
        self._disc = self.processes.wrap(self.discriminator, device)
        self.gen_optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.settings["lr"])
        self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(),
                                               lr=self.settings["disc_lr"])
        self.gen_scheduler = self._step_lr(self.gen_optimizer)
        self.disc_scheduler = self._step_lr(self.disc_optimizer)
        self.pesq = PesqScorer(self.settings["pesq_workers"])

    def _has_unused_parameters(self) -> bool:
        """Whether some generator parameters get no gradient (the as-coded scan leaves the
        Mamba blocks' D out), found by one backward pass of a short input."""
        spec = stft(torch.ones(1, 2048, device=self.device))
        self._enhance(self.generator, spec).real.sum().backward()
        unused = any(p.grad is None for p in self.generator.parameters() if p.requires_grad)
        self.generator.zero_grad(set_to_none=True)
        return unused

    def _step_lr(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.StepLR:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.settings["decay_epoch"],
                                               gamma=self.settings["lr_gamma"])

    # -- the step ---------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA when configured, otherwise nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def enhance_spec(self, noisy_spec: torch.Tensor) -> torch.Tensor:
        """The generator's complex estimate (complex64) for a noisy STFT."""
        return self._enhance(self.generator, noisy_spec)

    def _enhance(self, generator: torch.nn.Module, noisy_spec: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            est = generator(noisy_spec)
        return est.to(torch.complex64)

    def generator_loss(self, clean_spec: torch.Tensor, est_spec: torch.Tensor,
                       use_metric_loss: bool) -> torch.Tensor:
        """Reconstruction loss, plus the weighted MetricGAN term when ``use_metric_loss``."""
        loss = reconstruction_loss(est_spec, clean_spec, self.loss_cfg)
        if use_metric_loss:
            power = self.loss_cfg["compress"]
            clean_mag = compressed_magnitude(clean_spec, power)
            est_mag = compressed_magnitude(est_spec, power)
            with self.autocast():
                score = self.discriminator(clean_mag, est_mag)
            loss = loss + self.loss_cfg["metric_weight"] * metric_generator_loss(score)
        return loss

    def train_step(self, clean: torch.Tensor, noisy: torch.Tensor, use_metric_loss: bool,
                   train_discriminator: bool = True) -> dict[str, Any]:
        """One generator update and one discriminator update on waveforms [B, S]: the
        batch, or with several processes this process's share of it, taken in
        micro-batches of at most ``micro_batch`` items. ``train_discriminator`` False: the
        generator update only (a run whose generator never uses the MetricGAN term).

        Returns ``gen_loss`` (float, the batch's mean over every process), ``disc_loss``
        (float, or None when the discriminator step was skipped), ``skipped`` (True:
        non-finite generator loss or gradient on any process, no update at all on any),
        ``reason`` (why the step was skipped) and ``disc_reason`` (why the discriminator
        step was skipped: PESQ failed, non-finite loss/gradient).
        """
        self.generator.train()
        self.discriminator.train()
        # non-blocking: from pinned memory (TrainBatches on CUDA) the copy overlaps the GPU
        clean = clean.to(self.device, torch.float32, non_blocking=True)
        noisy = noisy.to(self.device, torch.float32, non_blocking=True)
        shares = pieces(clean.shape[0], self.micro_batch, self.processes.rank,
                        self.processes.world)
        parts = ([_Part(shares[0], clean, noisy)] if len(shares) == 1 else
                 [_Part(piece, clean[piece.items], noisy[piece.items]) for piece in shares])

        self.gen_optimizer.zero_grad(set_to_none=True)
        losses, est_specs = [], []
        for part, rewind in self._in_turn(parts):
            with self._each(self._gen, part, rewind):
                est_spec = self._enhance(self._gen, part.noisy_spec)
                loss = self.generator_loss(part.clean_spec, est_spec, use_metric_loss)
                losses.append(self._backward(loss, part.piece.weight))
            est_specs.append(est_spec.detach())
        gen_loss, reason = self._update(losses, self.generator, self.gen_optimizer)
        result: dict[str, Any] = {"gen_loss": gen_loss, "disc_loss": None, "skipped": False,
                                  "reason": None, "disc_reason": None}
        if reason is not None:
            result.update(skipped=True, reason=f"generator: {reason}",
                          disc_reason="generator step skipped")
            return result
        if not train_discriminator:
            return result

        disc_loss, disc_reason = self._discriminator_step(parts, est_specs)
        result.update(disc_loss=disc_loss, disc_reason=disc_reason)
        return result

    def _discriminator_step(self, parts: list[_Part], est_specs: list[torch.Tensor]
                            ) -> tuple[float | None, str | None]:
        ests = [istft(e, length=p.clean.shape[-1]) for p, e in zip(parts, est_specs, strict=True)]
        clean, est, noisy = (t[0] if len(parts) == 1 else torch.cat(t) for t in
                             ([p.clean for p in parts], ests, [p.noisy for p in parts]))
        targets = metric_targets(self.pesq, clean, est, noisy)
        if self.processes.any(targets is None):  # the recipe skips the step for the batch
            return None, "PESQ failed for the batch"
        assert targets is not None  # any() above holds whenever this process's is None
        target_est, target_noisy = targets
        power = self.loss_cfg["compress"]
        self.disc_optimizer.zero_grad(set_to_none=True)
        losses = []
        for (part, rewind), est_spec in zip(self._in_turn(parts), est_specs, strict=True):
            clean_mag, est_mag, noisy_mag = (compressed_magnitude(s, power)
                                             for s in (part.clean_spec, est_spec, part.noisy_spec))
            items = part.piece.items
            with self._each(self._disc, part, rewind):
                with self.autocast():
                    loss = discriminator_loss(self._disc, clean_mag, est_mag, noisy_mag,
                                              target_est[items], target_noisy[items])
                losses.append(self._backward(loss, part.piece.weight))
        disc_loss, reason = self._update(losses, self.discriminator, self.disc_optimizer)
        if reason is not None:
            return None, f"discriminator: {reason}"
        return disc_loss, None

    def _in_turn(self, parts: list[_Part]) -> list[tuple[_Part, Rewind | None]]:
        """The parts of a step with, after the first, what must be put back before each."""
        rewind = Rewind(self.discriminator, self.device) if len(parts) > 1 else None
        return [(part, rewind if index else None) for index, part in enumerate(parts)]

    @contextlib.contextmanager
    def _each(self, network: torch.nn.Module, part: _Part, rewind: Rewind | None):
        """Around one part's forward and backward: the RNG and the discriminator's buffers
        put back, the dropout rows set, and the gradients averaged over the processes only
        with the last part."""
        if rewind is not None:
            rewind()
        if self.rows is not None:
            self.rows.piece = part.piece
        last = part.piece.stop == part.piece.share
        sync = getattr(network, "no_sync", None)
        with contextlib.nullcontext() if last or sync is None else sync():
            yield

    def _backward(self, loss: torch.Tensor, weight: float) -> tuple[float, float]:
        """Accumulate ``weight`` x the gradient of ``loss``; returns (loss, weight). A
        non-finite loss has no backward on a lone process; with several, every one runs
        its backward (their gradient averaging must meet) and the non-finite gradient then
        skips the step everywhere."""
        value = loss.item()
        if math.isfinite(value) or self.processes.distributed:
            (loss if weight == 1 else loss * weight).backward()
        return value, weight

    def _update(self, losses: Sequence[tuple[float, float]], module: nn.Module,
                optimizer: torch.optim.Optimizer) -> tuple[float, str | None]:
        """The batch's mean loss over every process (``losses``: each part's loss and
        weight), and the update of ``module`` from the accumulated gradients: clipped and
        stepped unless a loss or the averaged gradient is non-finite anywhere; else no
        update, the gradients cleared, and the reason."""
        bad = [value for value, _ in losses if not math.isfinite(value)]
        bad_count: float  # summed over the processes as a float
        if len(losses) == 1 and not self.processes.distributed:
            mean, bad_count = losses[0][0], len(bad)
        else:
            total, bad_count = self.processes.sum([
                sum(w * v for v, w in losses if math.isfinite(v)), len(bad)])
            mean = total / self.processes.world if not bad_count else math.nan
        if bad_count:
            optimizer.zero_grad(set_to_none=True)
            return mean, f"non-finite loss ({bad[0] if bad else mean})"
        norm = torch.nn.utils.clip_grad_norm_(module.parameters(),
                                              self.settings["grad_clip"]).item()
        if not math.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            return mean, f"non-finite gradient norm ({norm})"
        optimizer.step()
        return mean, None

    # -- epochs and state -------------------------------------------------------------

    @property
    def lr(self) -> float:
        """The generator's current learning rate."""
        return self.gen_optimizer.param_groups[0]["lr"]

    def end_epoch(self) -> None:
        """Advance both learning-rate schedules by one epoch."""
        self.gen_scheduler.step()
        with warnings.catch_warnings():  # a run without the MetricGAN term never steps it
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step",
                                    UserWarning)
            self.disc_scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """Both networks', optimizers' and schedulers' states, as a checkpoint stores them."""
        return {name: getattr(self, name).state_dict() for name in _STATEFUL}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in _STATEFUL:
            getattr(self, name).load_state_dict(state[name])

    def close(self) -> None:
        """Stop the PESQ worker processes."""
        self.pesq.close()

    def __enter__(self) -> EnhancementGan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def first_metric_epoch(settings: Mapping[str, Any]) -> int | None:
    """The first epoch (counted from 0) whose generator loss has the MetricGAN term
    (``metricgan_from`` x ``epochs`` on); None when no epoch of the run has it."""
    first = math.ceil(settings["metricgan_from"] * settings["epochs"])
    return first if first < settings["epochs"] else None


#: The attributes in :meth:`EnhancementGan.state_dict`, each under its own name: these are
#: the keys of a checkpoint's ``trainer`` entry, so a renamed attribute must keep its key
#: (or saved checkpoints stop loading).
_STATEFUL = ("generator", "discriminator", "gen_optimizer", "disc_optimizer",
             "gen_scheduler", "disc_scheduler")


class _Part:
    """One micro-batch of a step: its :class:`~.microbatches.Piece`, waveforms and STFTs."""

    def __init__(self, piece: Piece, clean: torch.Tensor, noisy: torch.Tensor) -> None:
        self.piece, self.clean, self.noisy = piece, clean, noisy
        self.clean_spec, self.noisy_spec = stft(clean), stft(noisy)

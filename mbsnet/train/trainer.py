"""One ablation's training state (generator, discriminator, optimizers, schedulers) and
one full training step of the BSRNN/MetricGAN recipe."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..audio import istft, stft
from ..models import Discriminator, build_model
from .discriminator_targets import PesqScorer, metric_targets
from .losses import (
    compressed_magnitude,
    discriminator_loss,
    metric_generator_loss,
    reconstruction_loss,
)


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


class Trainer:
    """Models, optimizers and schedulers of one ablation, built from its resolved settings
    (:func:`mbsnet.config.ablation_config`); :meth:`train_step` runs one step.

    Seed the global RNGs before constructing it: the initial weights come from them.
    PESQ for the discriminator targets runs in ``training.pesq_workers`` processes;
    call :meth:`close` (or use ``with``) to stop them.
    """

    def __init__(self, ablation_cfg: Mapping[str, Any], config: Mapping[str, Any],
                 device: torch.device) -> None:
        self.settings = ablation_cfg["training"]
        self.loss_cfg = self.settings["loss"]
        self.config = config
        self.device = device
        self.generator = build_model(
            ablation_cfg["model"],
            gradient_checkpointing=self.settings["gradient_checkpointing"],
            cpu_lstm_kernel=self.settings["cpu_lstm_kernel"]).to(device)
        self.discriminator = Discriminator(self.settings["discriminator_ndf"]).to(device)
        self.gen_optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.settings["lr"])
        self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(),
                                               lr=self.settings["disc_lr"])
        self.gen_scheduler = self._step_lr(self.gen_optimizer)
        self.disc_scheduler = self._step_lr(self.disc_optimizer)
        self.autocast_dtype = autocast_dtype(self.settings["precision"], device)
        self.pesq = PesqScorer(self.settings["pesq_workers"])

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
        with self.autocast():
            est = self.generator(noisy_spec)
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

    def train_step(self, clean: torch.Tensor, noisy: torch.Tensor,
                   use_metric_loss: bool) -> dict[str, Any]:
        """One generator update and one discriminator update on waveforms [B, S].

        Returns ``gen_loss`` (float), ``disc_loss`` (float, or None when the discriminator
        step was skipped), ``skipped`` (True: non-finite generator loss or gradient, no
        update at all), ``reason`` (why the step was skipped) and ``disc_reason`` (why
        the discriminator step was skipped: PESQ failed, non-finite loss/gradient).
        """
        self.generator.train()
        self.discriminator.train()
        # non-blocking: from pinned memory (TrainBatches on CUDA) the copy overlaps the GPU
        clean = clean.to(self.device, torch.float32, non_blocking=True)
        noisy = noisy.to(self.device, torch.float32, non_blocking=True)
        clean_spec, noisy_spec = stft(clean), stft(noisy)

        est_spec = self.enhance_spec(noisy_spec)
        loss = self.generator_loss(clean_spec, est_spec, use_metric_loss)
        gen_loss = loss.item()
        result: dict[str, Any] = {"gen_loss": gen_loss, "disc_loss": None, "skipped": False,
                                  "reason": None, "disc_reason": None}
        reason = _update(loss, self.generator, self.gen_optimizer, self.settings["grad_clip"])
        if reason is not None:
            result.update(skipped=True, reason=f"generator: {reason}",
                          disc_reason="generator step skipped")
            return result

        disc_loss, disc_reason = self._discriminator_step(clean, noisy, clean_spec,
                                                          noisy_spec, est_spec.detach())
        result.update(disc_loss=disc_loss, disc_reason=disc_reason)
        return result

    def _discriminator_step(self, clean: torch.Tensor, noisy: torch.Tensor,
                            clean_spec: torch.Tensor, noisy_spec: torch.Tensor,
                            est_spec: torch.Tensor) -> tuple[float | None, str | None]:
        est = istft(est_spec, length=clean.shape[-1])
        targets = metric_targets(self.pesq, clean, est, noisy)
        if targets is None:
            return None, "PESQ failed for the batch"
        power = self.loss_cfg["compress"]
        mags = [compressed_magnitude(s, power) for s in (clean_spec, est_spec, noisy_spec)]
        with self.autocast():
            loss = discriminator_loss(self.discriminator, *mags, *targets)
        reason = _update(loss, self.discriminator, self.disc_optimizer,
                         self.settings["grad_clip"])
        if reason is not None:
            return None, f"discriminator: {reason}"
        return loss.item(), None

    # -- epochs and state -------------------------------------------------------------

    @property
    def lr(self) -> float:
        """The generator's current learning rate."""
        return self.gen_optimizer.param_groups[0]["lr"]

    def end_epoch(self) -> None:
        """Advance both learning-rate schedules by one epoch."""
        self.gen_scheduler.step()
        self.disc_scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).state_dict() for name in _STATEFUL}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in _STATEFUL:
            getattr(self, name).load_state_dict(state[name])

    def close(self) -> None:
        """Stop the PESQ worker processes."""
        self.pesq.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_STATEFUL = ("generator", "discriminator", "gen_optimizer", "disc_optimizer",
             "gen_scheduler", "disc_scheduler")


def _update(loss: torch.Tensor, module: nn.Module, optimizer: torch.optim.Optimizer,
            max_norm: float) -> str | None:
    """Backward, clip and step unless the loss or the gradient is non-finite; returns
    the reason for skipping (no update made, gradients cleared) or None."""
    optimizer.zero_grad(set_to_none=True)
    value = loss.item()
    if not math.isfinite(value):
        return f"non-finite loss ({value})"
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm).item()
    if not math.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return f"non-finite gradient norm ({norm})"
    optimizer.step()
    return None

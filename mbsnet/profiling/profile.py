"""One ablation's pre-flight profile (results/{ablation}/profile.json) and its memory budget.

:func:`profile_ablation` builds the ablation's :class:`~mbsnet.train.gan.EnhancementGan` on
the training device, at the configured batch size and crop length, and measures parameters,
inference FLOPs, the peak memory and median time of full training steps (generator and
discriminator, MetricGAN term on, PESQ targets in worker processes) and the inference
real-time factor. :func:`check_budget` fails fast when the peak exceeds
``resources.gpu_memory_gb``.

A training of several processes (``training.devices``) or micro-batches
(``training.accumulate``) is measured as one of its processes: a step on that process's
share of the batch, in its micro-batches, so the peak is that of one micro-batch (the
memory each GPU needs). Over the budget, the profile also measures a step of a single
item and suggests the ``accumulate`` that would fit.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..audio import SAMPLE_RATE
from ..config import ablation_config
from ..device import describe
from ..errors import MbsnetError
from ..models import count_parameters
from ..models.spec import scan_used
from ..train.distributed import Layout
from ..train.numerics import numerics
from .flops import METHOD as FLOPS_METHOD
from .flops import FlopCount, count_inference_flops
from .memory import MemoryReading, measure_step_memory, training_state
from .timing import inference_rtf, median_seconds

NEAR_BUDGET = 0.8
"""Fraction of the budget above which the profile carries a warning."""

PROBE_SNR_DB = 5.0

_log = logging.getLogger(__name__)


class MemoryBudgetError(MbsnetError):
    """An ablation's measured training-step peak exceeds ``resources.gpu_memory_gb``."""


@dataclass(frozen=True)
class ProfileOptions:
    """How much to run: warm-up steps (on a batch of one), timed full-size steps, and
    timed inference runs. One more full-size step is always run to measure memory."""

    warmup_steps: int = 1
    steps: int = 1
    inference_runs: int = 3

    def __post_init__(self) -> None:
        for name, least in (("warmup_steps", 0), ("steps", 1), ("inference_runs", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"{name} must be at least {least}, got {getattr(self, name)}")


@contextlib.contextmanager
def _phase(phases: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall-clock seconds of one phase of the profile."""
    start = time.perf_counter()
    yield
    phases[name] = time.perf_counter() - start


def probe_batch(batch: int, seconds: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic (clean, noisy) batch ``[batch, samples]`` that PESQ accepts as speech:
    voiced harmonics with a drifting pitch and a syllable-rate envelope, plus white noise
    at 5 dB SNR. Random noise alone would make PESQ fail and skip the discriminator step."""
    rng = np.random.default_rng(seed)
    samples = round(seconds * SAMPLE_RATE)
    t = np.arange(samples) / SAMPLE_RATE
    harmonics = np.arange(1, 31)[:, None]
    clean = np.empty((batch, samples))
    for b in range(batch):
        f0 = rng.uniform(100, 200) * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 7)))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        voiced = (np.sin(harmonics * phase) / harmonics).sum(0)
        envelope = np.sqrt(np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 7)), 0, None))
        clean[b] = voiced * envelope
    clean *= 0.1 / np.sqrt(np.mean(clean**2, axis=1, keepdims=True) + 1e-12)
    noise = rng.standard_normal(clean.shape)
    noise *= np.sqrt(np.mean(clean**2, axis=1, keepdims=True) / 10 ** (PROBE_SNR_DB / 10))
    return (torch.as_tensor(clean, dtype=torch.float32),
            torch.as_tensor(clean + noise, dtype=torch.float32))


def _build_gan(ablation_cfg: dict, config: Mapping[str, Any], device: torch.device):
    from ..train.gan import EnhancementGan  # imported late: it pulls in PESQ and the workers

    return EnhancementGan(ablation_cfg, config, device)


def _optimizers(gan: object) -> list[torch.optim.Optimizer]:
    return [v for v in vars(gan).values() if isinstance(v, torch.optim.Optimizer)]


@dataclass(frozen=True)
class Measurements:
    """What :func:`measure_ablation` measured of one ablation, before it is put in the
    shape of profile.json (:func:`assemble_profile`)."""

    device: str
    """The measuring device, described (:func:`mbsnet.device.describe`)."""
    scan: str | None
    params: dict[str, Any]
    """:func:`mbsnet.models.count_parameters` of the generator."""
    flops: FlopCount
    memory: MemoryReading
    """The full-size training step's peak."""
    one_item_peak_mb: float | None
    """A one-item step's peak: measured only over the budget, with micro-batches > 1."""
    step_seconds: float
    """Median of the timed full-size training steps."""
    inference_rtf: float
    step_outcomes: list[dict]
    """What every training step run returned (warm-up, memory and timed steps)."""
    phases: dict[str, float]
    """Wall-clock seconds of each phase, in the order they ran."""
    threads: int


def profile_ablation(config: Mapping[str, Any], name: str, device: torch.device,
                     options: ProfileOptions = ProfileOptions(),
                     make_trainer: Callable = _build_gan,
                     log: Callable[[str], None] = _log.info) -> dict[str, Any]:
    """Measure one ablation (see the module docstring); returns the profile.json dict.

    ``make_trainer(ablation_cfg, config, device)`` builds what is measured (an
    :class:`~mbsnet.train.gan.EnhancementGan`); ``log`` gets the progress lines.
    """
    training = ablation_config(config, name)["training"]
    # the training's numerics (deterministic kernels, TF32): they change a CUDA step's time
    with numerics(training["deterministic"], training["tf32"]):
        measured = measure_ablation(config, name, device, options, make_trainer, log)
    return assemble_profile(config, name, measured, options)


def measure_ablation(config: Mapping[str, Any], name: str, device: torch.device,
                     options: ProfileOptions = ProfileOptions(),
                     make_trainer: Callable = _build_gan,
                     log: Callable[[str], None] = _log.info) -> Measurements:
    """Build the ablation's training on ``device`` and measure it.

    Order: FLOPs (batch 1), warm-up steps on a batch of one (they start the PESQ workers
    and create the optimizer state, so the measured steps see the steady state), one
    full-size step under memory measurement (it also warms the full-size kernels), over the
    budget one step of a single item (for :func:`suggest_accumulate`), the timed full-size
    steps, then the inference real-time factor.
    """
    ablation = ablation_config(config, name)
    layout = Layout.of(ablation["training"], name)
    batch, crop = layout.process_batch, ablation["training"]["crop_seconds"]
    budget_mb = float(config["resources"]["gpu_memory_gb"]) * 1024
    phases: dict[str, float] = {}
    torch.manual_seed(0)
    with _phase(phases, "build"):
        gan = make_trainer(ablation, config, device)
    try:
        generator = gan.generator
        params = count_parameters(generator)
        scan = scan_used(ablation["model"], device)
        log(f"[{name}] {params['total']:,} parameters on {describe(device)}"
            f"{f', {scan} scan' if scan else ''}; counting FLOPs")
        with _phase(phases, "flops"):
            flops = count_inference_flops(generator, crop, device)

        outcomes: list[dict] = []

        def step_on(clean: torch.Tensor, noisy: torch.Tensor) -> Callable[[], None]:
            return lambda: outcomes.append(gan.train_step(clean, noisy, use_metric_loss=True))

        with _phase(phases, "warmup"):
            warmup = step_on(*(t.to(device) for t in probe_batch(1, crop, seed=1)))
            for _ in range(options.warmup_steps):
                warmup()
        clean, noisy = (t.to(device) for t in probe_batch(batch, crop))
        step = step_on(clean, noisy)
        log(f"[{name}] measuring the memory of one training step ({layout.describe()}, "
            f"{crop:g} s crops)")
        live = training_state([generator, gan.discriminator], _optimizers(gan))
        with _phase(phases, "memory_step"):
            memory = measure_step_memory(step, device, live + [clean, noisy])
        log(f"[{name}] peak training-step memory {memory.peak_mb:,.0f} MB "
            f"({phases['memory_step']:.1f} s)")
        one_item_peak_mb = None
        if memory.peak_mb > budget_mb and layout.micro_batch > 1:
            one = [t.to(device) for t in probe_batch(1, crop, seed=2)]
            with _phase(phases, "memory_step_one_item"):
                one_item_peak_mb = measure_step_memory(step_on(*one), device, live + one).peak_mb
        with _phase(phases, "timed_steps"):
            step_seconds = median_seconds(step, device, options.steps)
        log(f"[{name}] median training step {step_seconds:.2f} s over {options.steps}")
        with _phase(phases, "inference"):
            rtf = inference_rtf(generator, crop, device, runs=options.inference_runs)
        log(f"[{name}] inference real-time factor {rtf:.3f}")
    finally:
        close = getattr(gan, "close", None)
        if close is not None:
            close()
    return Measurements(device=describe(device), scan=scan, params=params, flops=flops,
                        memory=memory, one_item_peak_mb=one_item_peak_mb,
                        step_seconds=step_seconds, inference_rtf=rtf, step_outcomes=outcomes,
                        phases=phases, threads=torch.get_num_threads())


def assemble_profile(config: Mapping[str, Any], name: str, measured: Measurements,
                     options: ProfileOptions = ProfileOptions()) -> dict[str, Any]:
    """The profile.json dict of ``measured``: the figures beside the settings they were
    measured with, the accumulate that would fit an over-budget step, and the warnings."""
    ablation = ablation_config(config, name)
    training = ablation["training"]
    layout = Layout.of(training, name)
    budget_gb = float(config["resources"]["gpu_memory_gb"])
    memory, params = measured.memory, measured.params
    claimed = ablation.get("claimed_params")
    suggestion = (None if measured.one_item_peak_mb is None else
                  suggest_accumulate(layout, memory.peak_mb, measured.one_item_peak_mb,
                                     budget_gb * 1024))
    warnings = _step_warnings(measured.step_outcomes)
    share = memory.peak_mb / (budget_gb * 1024)
    if NEAR_BUDGET < share <= 1:
        warnings.append(f"peak training memory {memory.peak_mb:,.0f} MB is {share:.0%} of the "
                        f"{budget_gb:g} GB budget (resources.gpu_memory_gb)")
    return {
        "ablation": name,
        "device": measured.device,
        "scan": measured.scan,
        "params": {"total": params["total"], "per_module": params["per_module"],
                   "claimed": claimed,
                   "ratio": params["total"] / claimed if claimed else None},
        "macs_per_second": measured.flops.macs_per_second,
        "flops_per_second": measured.flops.flops_per_second,
        "flops_method": FLOPS_METHOD,
        "flops_per_second_by_source": measured.flops.as_dict(),
        "peak_train_memory_mb": memory.peak_mb,
        "memory_method": memory.method,
        "memory_details": memory.details,
        "train_step_seconds": measured.step_seconds,
        "inference_rtf": measured.inference_rtf,
        "batch_size": layout.batch_size,
        "processes": layout.devices,
        "accumulate": layout.accumulate,
        "micro_batch": layout.micro_batch,
        "utterances_per_second": layout.process_batch / measured.step_seconds,
        "suggested_accumulate": suggestion,
        "crop_seconds": training["crop_seconds"],
        "budget_gb": budget_gb,
        "within_budget": share <= 1,
        "precision": training["precision"],
        "gradient_checkpointing": training["gradient_checkpointing"],
        "cpu_lstm_kernel": training["cpu_lstm_kernel"],
        "threads": measured.threads,
        "warmup_steps": options.warmup_steps,
        "timed_steps": options.steps,
        "profile_seconds": sum(measured.phases.values()),
        "phase_seconds": measured.phases,
        "warnings": warnings,
    }


def suggest_accumulate(layout: Layout, peak_mb: float, one_item_mb: float,
                       budget_mb: float) -> dict[str, Any] | None:
    """The smallest ``training.accumulate`` whose micro-batch fits ``budget_mb``, from the
    step's peak at the configured micro-batch and at one item (the memory grows by the same
    amount per item: activations; the rest is weights, gradients and optimizer state).
    None when not even one item fits."""
    per_item = (peak_mb - one_item_mb) / (layout.micro_batch - 1)
    share = layout.process_batch
    for micro in range(layout.micro_batch - 1, 0, -1):
        estimate = one_item_mb + per_item * (micro - 1)
        if share % micro == 0 and estimate <= budget_mb:
            return {"accumulate": share // micro, "micro_batch": micro,
                    "estimated_peak_mb": estimate}
    return None


def _step_warnings(outcomes: list[dict]) -> list[str]:
    """Steps that did not run in full make the memory and time figures too low: say so."""
    warnings = []
    skipped = [o.get("reason") for o in outcomes if o.get("skipped")]
    if skipped:
        warnings.append(f"{len(skipped)} of {len(outcomes)} profiled training steps were "
                        f"skipped ({skipped[0]}); figures may be too low")
    no_disc = [o.get("disc_reason") for o in outcomes
               if not o.get("skipped") and o.get("disc_loss") is None]
    if no_disc:
        warnings.append(f"the discriminator step was skipped in {len(no_disc)} of "
                        f"{len(outcomes)} profiled steps ({no_disc[0]}); figures may be too low")
    return warnings


def check_budget(profile: Mapping[str, Any]) -> None:
    """Raise :class:`MemoryBudgetError` when the profile's peak exceeds its budget."""
    peak_mb, budget_gb = profile["peak_train_memory_mb"], profile["budget_gb"]
    if peak_mb <= budget_gb * 1024:
        return
    name = profile["ablation"]
    on_cpu = not str(profile["device"]).startswith("cuda")
    where = (f"measured on the CPU ({profile['device']}): no GPU here, so the budget check "
             "uses the CPU measurement of the same step's tensor memory"
             if on_cpu else f"measured on {profile['device']}")
    fits = profile.get("suggested_accumulate")
    lead = (f"To fit with the same recipe, set training.accumulate: {fits['accumulate']} "
            f"(the same global batch in micro-batches of {fits['micro_batch']}: estimated "
            f"{fits['estimated_peak_mb'] / 1024:.2f} GB). Else l" if fits else "To fit, l")
    remedies = []
    if not profile.get("gradient_checkpointing"):
        remedies.append("set training.gradient_checkpointing: true (each layer recomputes its "
                        "activations in backward: less memory, more time)")
    if (on_cpu and profile.get("cpu_lstm_kernel") == "onednn"
            and profile["flops_per_second_by_source"].get("lstm", 0) > 0):
        remedies.append("set training.cpu_lstm_kernel: native (oneDNN's LSTM allocates about "
                        "twice the memory it uses)")
    micro = profile.get("micro_batch", profile["batch_size"])
    pieces = (f" (micro-batches of {micro} on each of {profile.get('processes', 1)} "
              "process(es))" if micro != profile["batch_size"] else "")
    raise MemoryBudgetError(
        f"ablation '{name}' needs {peak_mb / 1024:.2f} GB ({peak_mb:,.0f} MB) of memory for "
        f"one training step at batch_size {profile['batch_size']}{pieces} and crop_seconds "
        f"{profile['crop_seconds']:g}, but resources.gpu_memory_gb allows {budget_gb:g} GB "
        f"({where}). {lead}ower training.batch_size or training.crop_seconds (for this "
        f"ablation only: ablations.{name}.training.batch_size / crop_seconds)"
        f"{''.join(', or ' + r for r in remedies)}; or raise resources.gpu_memory_gb if "
        "the training GPU is larger. "
        "No profile was written and training was not started.")

"""The report's figures (matplotlib, no pyplot state) and audio, as self-contained data URIs.

Line and bar charts are SVG (sharp when pasted into a paper); spectrograms are PNG.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .. import stats
from ..metrics.registry import METRIC_SPECS
from . import steps
from .costs import COST_SPECS
from .loading import NOISY, Missing
from .tables import HeadlineRow

NOISY_COLOR = "#7f7f7f"
#: audio players play at most this much of the example utterance
AUDIO_SECONDS = 6.0
#: spectrogram colour range below the loudest bin
DYNAMIC_RANGE_DB = 80.0


def system_colors(names: list[str]) -> dict[str, str]:
    """One fixed colour per system, the same in every figure."""
    palette = matplotlib.color_sequences["tab10"]
    colors, i = {}, 0
    for name in names:
        if name == NOISY:
            colors[name] = NOISY_COLOR
        else:
            colors[name] = matplotlib.colors.to_hex(palette[i % len(palette)])
            i += 1
    return colors


def figure_uri(fig: Figure, fmt: str = "svg") -> str:
    """Render a figure to a ``data:`` URI (deterministic bytes for the same figure)."""
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "mbsnet-report"}):
        fig.savefig(buf, format=fmt, dpi=110,
                    metadata={"Date": None} if fmt == "svg" else {"Software": None})
    mime = "image/svg+xml" if fmt == "svg" else f"image/{fmt}"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"


def audio_uri(wave: np.ndarray, sample_rate: int, seconds: float = AUDIO_SECONDS) -> str:
    """A 16-bit PCM WAV ``data:`` URI of the first ``seconds`` of ``wave``."""
    import soundfile

    buf = io.BytesIO()
    clip = np.clip(wave[: int(seconds * sample_rate)], -1.0, 1.0)
    soundfile.write(buf, clip, sample_rate, format="WAV", subtype="PCM_16")
    return f"data:audio/wav;base64,{base64.b64encode(buf.getvalue()).decode()}"


def training_curves(curves: dict[str, list[pd.DataFrame]],
                    colors: dict[str, str]) -> Figure | Missing:
    """Generator loss and validation PESQ per epoch, every ablation (and seed) on one axis."""
    if not curves:
        return Missing("no train_log.jsonl has epoch lines")
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    for key, ax, title in [("gen_loss", axes[0], "Generator loss (train mean)"),
                           ("val_pesq", axes[1], "Validation PESQ-WB")]:
        for name, frames in curves.items():
            for i, frame in enumerate(frames):
                if key not in frame:
                    continue
                y = pd.to_numeric(frame[key], errors="coerce")
                ax.plot(frame["epoch"], y, marker="o", ms=3, color=colors[name],
                        alpha=1.0 if i == 0 else 0.55, label=name if i == 0 else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].legend(fontsize=8, loc="best")
    return fig


def metric_bars(rows: list[HeadlineRow], colors: dict[str, str]) -> Figure | Missing:
    """One small bar chart per metric: the mean of every system with its 95 % CI."""
    scored = [r for r in rows if r.seeds]
    if not scored:
        return Missing("no system has metrics")
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    axes = fig.subplots(math.ceil(len(METRIC_SPECS) / 4), 4).ravel()
    x = np.arange(len(scored))
    # four panels a row: the last row's panels beyond the metrics stay empty, hence not strict
    for ax, spec in zip(axes, METRIC_SPECS.values(), strict=False):
        est = [r.metrics[spec.name] for r in scored]
        means = [e.mean if not isinstance(e, Missing) else math.nan for e in est]
        cis = [e.ci95 if not isinstance(e, Missing) and math.isfinite(e.ci95) else 0.0 for e in est]
        ax.bar(x, means, yerr=cis, capsize=3, color=[colors[r.system] for r in scored])
        ax.set_title(spec.label, fontsize=10)
        ax.set_xticks(x, [r.system for r in scored], rotation=45, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        lows = [m - c for m, c in zip(means, cis, strict=True) if math.isfinite(m)]
        if lows and min(lows) > 0:   # positive scales (PESQ, STOI): zoom in on the differences
            ax.set_ylim(bottom=min(lows) * 0.9)
    return fig


def metric_vs_snr(scores: dict[str, pd.DataFrame], colors: dict[str, str]) -> Figure | Missing:
    """The metrics with an SNR panel (registry) against input SNR, one line per system."""
    if not scores:
        return Missing("no system has metrics")
    if all(frame["snr"].isna().all() for frame in scores.values()):
        return Missing("the test set has no SNR labels (snr is NaN, e.g. VoiceBank-DEMAND)")
    panels = [spec for spec in METRIC_SPECS.values() if spec.snr_panel]
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, spec in zip(axes, panels, strict=True):
        for name, frame in scores.items():
            by_snr = frame.dropna(subset=["snr"]).groupby("snr")[spec.name].mean()
            ax.plot(by_snr.index, by_snr.values, marker="o", ms=3, color=colors[name], label=name,
                    linestyle="--" if name == NOISY else "-")
        ax.set_title(f"{spec.label} vs input SNR", fontsize=10)
        ax.set_xlabel("SNR (dB)")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8, loc="best")
    return fig


def efficiency(rows: list[HeadlineRow], colors: dict[str, str]) -> Figure | Missing:
    """The efficiency figure's quality metric (PESQ-WB) against each of its costs
    (parameter count, peak training memory)."""
    quality = next(spec for spec in METRIC_SPECS.values() if spec.efficiency_axis)
    costs = [spec for spec in COST_SPECS.values() if spec.efficiency_panel]
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(costs)))
    plotted = 0
    for ax, cost in zip(axes, costs, strict=True):
        before = plotted
        for row in rows:
            est, x = row.metrics[quality.name], row.costs[cost.name]
            if isinstance(est, Missing) or not isinstance(x, float):
                continue
            x = x / cost.axis_divisor
            ax.errorbar([x], [est.mean], yerr=[est.ci95 if math.isfinite(est.ci95) else 0],
                        fmt="o", color=colors[row.system], capsize=3)
            ax.annotate(row.system, (x, est.mean), textcoords="offset points", xytext=(5, 5),
                        fontsize=8)
            plotted += 1
        ax.set_xlabel(cost.axis_label)
        ax.set_ylabel(quality.axis_label)
        ax.xaxis.get_major_locator().set_params(nbins=5)
        ax.margins(x=0.15, y=0.1)
        if plotted == before:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, "missing: no ablation has both\nPESQ and this measurement",
                    transform=ax.transAxes, ha="center", va="center", color="#8a4b00")
        ax.grid(alpha=0.3)
    if not plotted:
        return Missing("no ablation has both PESQ and profile data")
    return fig


def spectrograms(signals: dict[str, np.ndarray], sample_rate: int) -> Figure:
    """Log-magnitude spectrograms (dB), one panel per signal, on a shared colour scale."""
    from scipy import signal as sps

    from ..audio import HOP, N_FFT

    fig = Figure(figsize=(11, 1.5 * len(signals) + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(signals), 1, sharex=True))
    specs = {}
    for label, wave in signals.items():
        freqs, times, spec = sps.stft(wave, fs=sample_rate, nperseg=N_FFT,
                                      noverlap=N_FFT - HOP, window="hann")
        specs[label] = (times, freqs / 1000, 20 * np.log10(np.abs(spec) + 1e-10))
    top = max(float(db.max()) for _, _, db in specs.values())
    images = []
    for ax, (label, (times, khz, db)) in zip(axes, specs.items(), strict=True):
        images.append(ax.pcolormesh(times, khz, db, shading="auto", cmap="magma",
                                    vmin=top - DYNAMIC_RANGE_DB, vmax=top, rasterized=True))
        ax.set_ylabel("kHz")
        ax.set_title(label, fontsize=9, loc="left")
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(images[-1], ax=list(axes), label="dB", fraction=0.02, pad=0.01)
    return fig


GAIN_COLOR, LOSS_COLOR, ROOT_COLOR = "#2e8b57", "#c0392b", "#555555"


@dataclass(frozen=True)
class _Panel:
    """One panel of the step figure: a metric or a cost."""

    key: str
    label: str
    scale: float                            # values are drawn times this
    quality: bool                           # a metric (the steps' tests apply), else a cost
    better: Callable[[float], bool]         # of a difference: is it an improvement


def _step_panels() -> tuple[list[_Panel], list[_Panel]]:
    """The step figure's rows: the metrics, then the costs, with a step panel (registries)."""
    metrics = sorted((s for s in METRIC_SPECS.values() if s.step_panel),
                     key=lambda s: s.step_panel)
    costs = sorted((s for s in COST_SPECS.values() if s.step_panel), key=lambda s: s.step_panel)
    return ([_Panel(s.name, s.axis_label, 1.0, True, s.better) for s in metrics],
            [_Panel(s.name, s.axis_label, 1 / s.axis_divisor, False, s.better) for s in costs])


def _levels(rows: list[HeadlineRow], panel: _Panel) -> dict[str, float]:
    """Each system's mean metric or cost, where it has one."""
    out = {}
    for row in rows:
        value = row.metrics[panel.key] if panel.quality else row.costs.get(panel.key)
        value = value.mean if isinstance(value, stats.Estimate) else value
        if isinstance(value, float) and math.isfinite(value):
            out[row.system] = value
    return out


def step_waterfall(table: steps.StepTable, rows: list[HeadlineRow]) -> Figure | Missing:
    """The lineage as floating bars, one per step from the parent's level to the child's,
    on the metrics (SI-SDR, PESQ-WB) and costs (parameters, MACs/s) with a step panel; each
    root's level first, a dotted line where a chain continues."""
    if not table.steps:
        return Missing("the lineage has no steps")
    children = {step.child for step in table.steps}
    items: list[str | steps.Step] = []     # a root's name, or a step
    for step in table.steps:
        if step.parent not in children and step.parent not in items:
            items.append(step.parent)
        items.append(step)
    panels = _step_panels()
    fig = Figure(figsize=(11, 6.4), layout="constrained")
    axes = fig.subplots(len(panels), max(map(len, panels)), sharex=True, squeeze=False)
    for row_axes, row_panels in zip(axes, panels, strict=True):
        # a row with fewer panels than the widest leaves its last axes empty: not strict
        for ax, panel in zip(row_axes, row_panels, strict=False):
            levels = {k: v * panel.scale for k, v in _levels(rows, panel).items()}
            _draw_steps(ax, items, levels, panel)
            ax.set_title(panel.label, fontsize=10)
            ax.grid(axis="y", alpha=0.3)
            ax.use_sticky_edges = False     # a floating bar's base must not pin the axis limit
            ax.margins(y=0.12)
    names = [item if isinstance(item, str) else f"{item.parent} → {item.child}"
             for item in items]
    for ax in axes[-1]:
        ax.set_xticks(range(len(items)), names, rotation=30, ha="right", fontsize=8)
    return fig


def _draw_steps(ax, items: list, levels: dict[str, float], panel: _Panel) -> None:
    end: str | None = None                  # the system the previous item ends at
    for x, item in enumerate(items):
        if isinstance(item, str):
            if item in levels:
                ax.hlines(levels[item], x - 0.4, x + 0.4, color=ROOT_COLOR, lw=3)
            end = item
            continue
        start, stop = levels.get(item.parent), levels.get(item.child)
        if start is None or stop is None:
            ax.text(x, 0.5, "missing", transform=ax.get_xaxis_transform(), rotation=90,
                    ha="center", va="center", fontsize=8, color="#8a4b00")
            end = None
            continue
        if end == item.parent:
            ax.hlines(start, x - 1.4, x - 0.4, color=ROOT_COLOR, lw=0.8, linestyles=":")
        if panel.quality:
            cell = item.metrics[panel.key]
            clear = cell.significant
        else:
            clear = abs(stop / start - 1) > steps.COST_CHANGE if start else True
        color = GAIN_COLOR if panel.better(stop - start) else LOSS_COLOR
        ax.bar(x, stop - start, bottom=start, width=0.6, color=color,
               alpha=1.0 if clear else 0.3, edgecolor=color)
        if panel.quality and isinstance(cell.utterances, stats.Comparison) \
                and math.isfinite(cell.utterances.ci95):
            ax.errorbar([x], [start + cell.utterances.mean_diff * panel.scale],
                        yerr=[cell.utterances.ci95 * panel.scale], color="black", capsize=3,
                        lw=1)
        note = f"{stop - start:+.2f}" if panel.quality else \
            f"×{stop / start:.2f}" if start else ""
        ax.annotate(note, (x, max(start, stop)), textcoords="offset points", xytext=(0, 3),
                    ha="center", fontsize=7)
        end = item.child

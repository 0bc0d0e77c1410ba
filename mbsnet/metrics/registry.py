"""What each metric is, beyond its value: the one place that names the metrics' columns,
labels, precision and direction, and where the report shows them.

:mod:`mbsnet.metrics` computes the values under these names (a test holds the two
together); the report reads everything else about a metric from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its metrics.tsv column and how the report treats it."""

    name: str                       # the column in eval/metrics.tsv and summary.tsv
    label: str                      # shown in tables and figures
    resolution: float               # a difference commonly reported as an improvement
    decimals: int = 2               # of means, differences and CIs
    unit: str = ""                  # written after values and in axis labels ("" for none)
    higher_is_better: bool = True
    tested: bool = False            # tested against the baseline (Holm-corrected together)
    per_noise: bool = False         # tabulated per noise type
    snr_panel: bool = False         # a panel of the metric-vs-input-SNR figure
    step_panel: int = 0             # its place in the step figure's quality row; 0: none
    efficiency_axis: bool = False   # the quality axis of the efficiency figure

    @property
    def axis_label(self) -> str:
        """``SI-SDR (dB)``: the label with the unit, for a figure's axis."""
        return f"{self.label} ({self.unit})" if self.unit else self.label

    def better(self, difference: float) -> bool:
        """Whether ``difference`` (new minus old) is an improvement."""
        return difference > 0 if self.higher_is_better else difference < 0


#: every metric, in the column order of eval/metrics.tsv
METRIC_SPECS: dict[str, MetricSpec] = {spec.name: spec for spec in (
    MetricSpec("pesq_wb", "PESQ-WB", 0.1, tested=True, per_noise=True, snr_panel=True,
               step_panel=2, efficiency_axis=True),
    MetricSpec("csig", "CSIG", 0.1),
    MetricSpec("cbak", "CBAK", 0.1),
    MetricSpec("covl", "COVL", 0.1),
    MetricSpec("ssnr", "SSNR", 0.5, unit="dB"),
    MetricSpec("stoi", "STOI", 0.01, decimals=3, snr_panel=True),
    MetricSpec("estoi", "ESTOI", 0.01, decimals=3),
    MetricSpec("si_sdr", "SI-SDR", 0.5, unit="dB", tested=True, per_noise=True,
               snr_panel=True, step_panel=1),
)}

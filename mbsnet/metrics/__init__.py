"""Speech-enhancement metrics: PESQ-WB, CSIG/CBAK/COVL, segmental SNR, STOI, ESTOI, SI-SDR.

``score_pair`` scores one (clean, degraded) pair with all of them; ``score_many`` scores
many in worker processes. Signals are float in [-1, 1] at 16 kHz. ``METRIC_SPECS`` says
what each metric is (label, precision, direction) under the column names scoring writes.
"""

from .composite import composite_scores, segmental_snr
from .registry import METRIC_SPECS, MetricSpec
from .score import METRICS, iter_scores, score_many, score_pair
from .standard import MetricFailure, pesq_wb, pesq_wb_checked, pesq_wb_strict, si_sdr, stoi

__all__ = [
    "METRICS", "METRIC_SPECS", "MetricFailure", "MetricSpec", "composite_scores", "iter_scores",
    "pesq_wb", "pesq_wb_checked", "pesq_wb_strict", "score_many", "score_pair", "segmental_snr",
    "si_sdr", "stoi",
]

"""The comparison report: the results tree -> report.html, summary.tsv and summary.md.

:mod:`.loading` reads the tree into a ``Results``; :mod:`.tables`, :mod:`.steps`,
:mod:`.health`, :mod:`.placements` and :mod:`.example` turn it into the sections;
:mod:`.render` and :mod:`.summary` write them. What each metric is comes from
:mod:`mbsnet.metrics.registry`, what each cost is from :mod:`.costs`.
"""

from .render import build_report, write_report

__all__ = ["build_report", "write_report"]

"""The comparison report: the results tree -> report.html, summary.tsv and summary.md."""

from .render import build_report, write_report

__all__ = ["build_report", "write_report"]

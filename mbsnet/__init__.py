"""mbsnet: an ablation pipeline for band-split speech enhancement."""

__version__ = "0.1.0"

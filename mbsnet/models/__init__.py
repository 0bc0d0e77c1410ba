"""The networks: one configurable band-split model for every ablation, and the
MetricGAN discriminator."""

from .bandsplit import BAND_WIDTHS, N_BANDS, BandSplit
from .decoder import MaskDecoder, apply_mask, decoder_expansions
from .discriminator import Discriminator
from .io import load_model, save_model
from .layers import BiMambaLayer, FeatureMLPLayer, LSTMLayer, MambaLayer
from .mamba import MambaBlock
from .network import BandSplitNet, build_model
from .params import count_parameters, parameter_report
from .spec import BlockSpec, ModelSpec, parse_model_config

__all__ = [
    "BAND_WIDTHS", "N_BANDS", "BandSplit", "BandSplitNet", "BiMambaLayer", "BlockSpec",
    "Discriminator", "FeatureMLPLayer", "LSTMLayer", "MambaBlock", "MambaLayer", "MaskDecoder",
    "ModelSpec", "apply_mask", "build_model", "count_parameters", "decoder_expansions",
    "load_model", "parameter_report", "parse_model_config", "save_model",
]

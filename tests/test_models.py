"""The networks: fidelity (parameter counts), shapes, masks, causality, gradients, configs, I/O."""

from __future__ import annotations

import collections
import copy
import dataclasses
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import mbsnet.config
from mbsnet.audio import HOP, N_BINS, SAMPLE_RATE, stft
from mbsnet.cli import main
from mbsnet.config import load_config, validate_config
from mbsnet.errors import ConfigError, MbsnetError
from mbsnet.models import (
    BAND_WIDTHS,
    BiMambaLayer,
    BlockSpec,
    Discriminator,
    FeatureMLPLayer,
    LSTMLayer,
    MambaBlock,
    MambaLayer,
    ModelSpec,
    apply_mask,
    build_model,
    count_parameters,
    decoder_expansions,
    load_model,
    parse_model_config,
    save_model,
)
from mbsnet.models.params import format_table
from mbsnet.models.scan import SCAN_MODES

from .helpers import ROOT

CONFIG = ROOT / "config.yaml"

# Parameter counts of the original implementations, measured by building them (b42e05f).
ORIGINAL_PARAMS = {
    "bsrnn": 2_963_024,
    "abl1": 3_858_448,
    "abl2": 4_008_592,
    "abl3": 3_201_424,
    "optimized": 2_139_920,
}
# Every ablation of config.yaml: the as-coded twin has its model's parameters (and names).
CONFIG_PARAMS = {**ORIGINAL_PARAMS, "optimized_as_coded": ORIGINAL_PARAMS["optimized"]}

# Every kind of layer, on both axes, at a size that keeps the slow reference scan quick.
TINY = {
    "channels": 8,
    "decoder": "adaptive",
    "final_norm": True,
    "stages": [
        {"blocks": [{"type": "lstm", "axis": "time", "bidirectional": False},
                    {"type": "lstm", "axis": "band", "bidirectional": True}]},
        {"repeat": 2, "blocks": [{"type": "mamba", "axis": "time", "d_state": 4}]},
        {"blocks": [{"type": "mamba", "axis": "band", "bidirectional": True, "d_state": 4},
                    {"type": "mlp", "axis": "band"}]},
    ],
}


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config(CONFIG)


def frames(samples: int) -> int:
    return samples // HOP + 1


def noisy_spec(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return stft(torch.randn(batch, samples, generator=generator))


# --- fidelity -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONFIG_PARAMS))
def test_parameter_counts_match_the_original_implementations(config, name):
    model = build_model(config["ablations"][name]["model"])
    counts = count_parameters(model)
    assert counts["total"] == CONFIG_PARAMS[name]
    assert sum(counts["per_module"].values()) == counts["total"]
    assert set(counts["per_module"]) >= {"band_split", "layers", "decoder"}


def test_discriminator_parameter_count():
    assert count_parameters(Discriminator(ndf=16))["total"] == 181_650


def test_bsrnn_runs_all_time_layers_before_the_band_layers(config):
    """Original BSRNN forward: num_layer temporal LSTM blocks, then num_layer band BLSTMs."""
    layers = build_model(config["ablations"]["bsrnn"]["model"]).layers
    order = [(type(layer).__name__, layer.axis, layer.rnn.bidirectional) for layer in layers]
    assert order == [("LSTMLayer", "time", False)] * 5 + [("LSTMLayer", "band", True)] * 5, (
        "config.yaml's bsrnn stages must be 5 x time LSTM, then 5 x band BLSTM "
        "(two stages), not 5 x [time, band] interleaved")


def test_stages_unroll_in_order_with_repeats():
    layers = build_model(TINY).layers
    kinds = [(type(layer).__name__, getattr(layer, "axis", None)) for layer in layers]
    assert kinds == [("LSTMLayer", "time"), ("LSTMLayer", "band"), ("MambaLayer", "time"),
                     ("MambaLayer", "time"), ("BiMambaLayer", "band"), ("FeatureMLPLayer", None)]


def test_decoder_expansions_per_band():
    assert decoder_expansions("uniform") == (4,) * 31
    assert decoder_expansions("lightweight") == (2,) * 31
    adaptive = decoder_expansions("adaptive")
    assert len(adaptive) == len(BAND_WIDTHS) == 31
    # 2 on the 11 narrow bands (2 and 3 bins), 3 on the 8-bin bands, 4 on the widest
    by_width = collections.defaultdict(set)
    for expansion, width in zip(adaptive, BAND_WIDTHS, strict=True):
        by_width[width].add(expansion)
    assert by_width == {2: {2}, 3: {2}, 8: {3}, 16: {4}, 17: {4}}


# --- shapes ---------------------------------------------------------------------------

@pytest.mark.parametrize("samples", [SAMPLE_RATE, 2 * SAMPLE_RATE, 38 * HOP + 5])
def test_output_shape_follows_the_input(samples):
    model = build_model(TINY).eval()
    spec = noisy_spec(1, samples)
    assert spec.shape == (1, N_BINS, frames(samples))
    with torch.no_grad():
        out = model(spec)
    assert out.shape == spec.shape
    assert out.dtype == torch.complex64
    assert torch.isfinite(torch.view_as_real(out)).all()
    if samples == 38 * HOP + 5:
        assert out.shape[-1] == 39  # an odd frame count


@pytest.mark.parametrize("decoder", ["uniform", "lightweight", "adaptive"])
def test_every_decoder_gives_a_complex_mask_per_bin(decoder):
    cfg = {"channels": 4, "decoder": decoder,
           "stages": [{"blocks": [{"type": "mlp", "axis": "band"}]}]}
    model = build_model(cfg).eval()
    spec = noisy_spec(2, 6 * HOP)
    with torch.no_grad():
        mask = model.decoder(model.encode(spec))
    assert mask.shape == (2, N_BINS, spec.shape[-1], 3)
    assert mask.dtype == torch.complex64


def test_band_split_feature_shape():
    model = build_model(TINY)
    z = model.band_split(noisy_spec(3, 10 * HOP))
    assert z.shape == (3, 8, 11, 31)


def test_rejects_a_real_input():
    with pytest.raises(ValueError, match="complex STFT"):
        build_model(TINY)(torch.randn(1, N_BINS, 5))


# --- the 3-tap mask -------------------------------------------------------------------

def test_mask_0_1_0_is_the_identity():
    spec = noisy_spec(2, 20 * HOP)
    mask = torch.zeros(*spec.shape, 3, dtype=torch.complex64)
    mask[..., 1] = 1
    assert torch.equal(apply_mask(spec, mask), spec)


def test_mask_is_a_three_tap_filter_over_time():
    torch.manual_seed(0)
    spec = noisy_spec(1, 6 * HOP)
    mask = torch.randn(*spec.shape, 3, dtype=torch.complex64)
    T = spec.shape[-1]
    expected = torch.zeros_like(spec)
    for t in range(T):
        for tap, source in enumerate((t - 1, t, t + 1)):
            if 0 <= source < T:
                expected[..., t] += mask[..., t, tap] * spec[..., source]
    torch.testing.assert_close(apply_mask(spec, mask), expected)


def test_mask_tap_0_delays_by_one_frame():
    spec = noisy_spec(1, 8 * HOP)
    mask = torch.zeros(*spec.shape, 3, dtype=torch.complex64)
    mask[..., 0] = 1
    out = apply_mask(spec, mask)
    assert torch.equal(out[..., 1:], spec[..., :-1])
    assert torch.equal(out[..., 0], torch.zeros_like(out[..., 0]))


# --- causality ------------------------------------------------------------------------

def _perturbed_at(x: torch.Tensor, t: int, dim: int) -> torch.Tensor:
    y = x.clone()
    y.select(dim, t).add_(torch.randn_like(y.select(dim, t)))
    return y


def test_unidirectional_mamba_block_is_causal():
    torch.manual_seed(0)
    block = MambaBlock(channels=8, d_state=4).eval()
    x = torch.randn(2, 12, 8)
    t = 5
    with torch.no_grad():
        y, y2 = block(x), block(_perturbed_at(x, t, dim=1))
    torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=0, atol=1e-6)
    assert (y2[:, t:] - y[:, t:]).abs().amax(dim=(0, 2)).min() > 1e-6


def test_reversed_direction_of_a_bidirectional_layer_is_anti_causal():
    torch.manual_seed(0)
    layer = BiMambaLayer(channels=8, axis="time", d_state=4, expand=1).eval()
    with torch.no_grad():
        layer.forward_block.out_proj.weight.zero_()   # leave only the reversed block's mixing
    z = torch.randn(2, 8, 12, 3)                      # [B, N, T, K]
    t = 6
    with torch.no_grad():
        y, y2 = layer(z), layer(_perturbed_at(z, t, dim=2))
    torch.testing.assert_close(y2[:, :, t + 1:], y[:, :, t + 1:], rtol=0, atol=1e-6)
    assert (y2[:, :, :t + 1] - y[:, :, :t + 1]).abs().amax(dim=(0, 1, 3)).min() > 1e-6


@pytest.mark.parametrize("axis", ["time", "band"])
def test_mamba_layer_runs_along_its_axis(axis):
    """A unidirectional layer is causal along its own axis and independent across the other."""
    torch.manual_seed(0)
    layer = MambaLayer(channels=8, axis=axis, d_state=4, expand=1).eval()
    z = torch.randn(2, 8, 7, 5)                       # [B, N, T=7, K=5]
    frame, band = 3, 2
    z2 = z.clone()
    z2[:, :, frame, band] += torch.randn(2, 8)
    with torch.no_grad():
        changed = (layer(z2) - layer(z)).abs().amax(dim=(0, 1)) > 1e-6   # [T, K]
    expected = torch.zeros(7, 5, dtype=torch.bool)
    if axis == "time":
        expected[frame:, band] = True                 # later frames of the same band
    else:
        expected[frame, band:] = True                 # higher bands of the same frame
    assert torch.equal(changed, expected)


# --- gradients ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ORIGINAL_PARAMS))
def test_forward_backward_of_every_variant_gives_finite_gradients(config, name):
    torch.manual_seed(0)
    model = build_model(config["ablations"][name]["model"]).train()
    spec = noisy_spec(2, 7 * HOP)   # 8 frames: every path runs, and it stays quick on CPU
    out = model(spec)
    loss = (out - spec).abs().mean()
    loss.backward()
    assert torch.isfinite(loss)
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.layers.parameters())


CHECKPOINTED = {"channels": 8, "decoder": "lightweight", "stages": [{"blocks": [
    {"type": "mamba", "axis": "time", "d_state": 4},
    {"type": "mamba", "axis": "band", "bidirectional": True, "d_state": 4},
    {"type": "lstm", "axis": "time", "bidirectional": False},
    {"type": "mlp", "axis": "band"}]}]}


def test_as_coded_variant_trains_without_its_unused_skip_parameter(config):
    """As coded, the learned D is never used (the skip gain is d_inner): every other
    parameter gets a finite gradient, D none at all."""
    torch.manual_seed(0)
    model = build_model(config["ablations"]["optimized_as_coded"]["model"]).train()
    spec = noisy_spec(2, 7 * HOP)
    (model(spec) - spec).abs().mean().backward()
    without_grad = sorted(name for name, p in model.named_parameters() if p.grad is None)
    assert without_grad == [f"layers.{i}.block.D" for i in range(4)]
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("scan", ["exact", "as_coded"])
def test_gradient_checkpointing_gives_the_same_gradients(scan):
    torch.manual_seed(0)
    cfg = {**CHECKPOINTED, "scan": scan}
    plain = build_model(cfg).train()
    ckpt = build_model(cfg, gradient_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    spec = noisy_spec(2, 8 * HOP)
    for model in (plain, ckpt):
        model(spec).abs().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        if scan == "as_coded" and name.endswith(".D"):
            assert p.grad is None, name
            assert q.grad is None, name
        else:
            torch.testing.assert_close(q.grad, p.grad, msg=name)


@pytest.mark.parametrize("block", CHECKPOINTED["stages"][0]["blocks"],
                         ids=lambda b: f"{b['type']}-{b['axis']}")
def test_gradient_checkpointing_lowers_the_step_memory_of_every_layer_type(block):
    from mbsnet.profiling import measure_step_memory

    cfg = {"channels": 16, "decoder": "lightweight", "stages": [{"repeat": 6, "blocks": [block]}]}
    spec = noisy_spec(2, 63 * HOP)
    peaks = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg, gradient_checkpointing=checkpointing).train()

        def step(model=model):
            model(spec).abs().mean().backward()

        step()   # warm-up: lazily created state is not part of the comparison
        peaks[checkpointing] = measure_step_memory(step, torch.device("cpu")).peak_mb
    assert peaks[True] < 0.75 * peaks[False], peaks


LSTM_CFG = {"channels": 8, "decoder": "lightweight", "stages": [{"blocks": [
    {"type": "lstm", "axis": "time", "bidirectional": False},
    {"type": "lstm", "axis": "band", "bidirectional": True}]}]}


def _onednn_flag_seen_by_lstms(model, run) -> list[bool]:
    """``torch.backends.mkldnn.enabled`` as every nn.LSTM of ``model`` saw it in ``run()``."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda *_: seen.append(torch.backends.mkldnn.enabled))
             for m in model.modules() if isinstance(m, nn.LSTM)]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize(("kernel", "training_flag"), [("native", False), ("onednn", True)])
def test_cpu_lstm_kernel_applies_to_cpu_training_only(kernel, training_flag):
    model = build_model(LSTM_CFG, cpu_lstm_kernel=kernel)
    spec = noisy_spec(1, 4 * HOP)
    assert torch.backends.mkldnn.enabled
    assert _onednn_flag_seen_by_lstms(model, lambda: model(spec)) == [training_flag] * 2
    with torch.no_grad():   # inference keeps oneDNN whatever the training kernel
        assert _onednn_flag_seen_by_lstms(model, lambda: model(spec)) == [True, True]
    assert torch.backends.mkldnn.enabled   # restored


def test_cpu_lstm_kernels_give_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    native = build_model(LSTM_CFG, cpu_lstm_kernel="native")
    onednn = build_model(LSTM_CFG, cpu_lstm_kernel="onednn")
    onednn.load_state_dict(native.state_dict())
    spec = noisy_spec(2, 8 * HOP)
    outs = [model(spec) for model in (native, onednn)]
    for out in outs:
        out.abs().mean().backward()
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-4)
    for (name, p), q in zip(native.named_parameters(), onednn.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_unknown_cpu_lstm_kernel_is_refused():
    with pytest.raises(ValueError, match="cpu_kernel must be one of"):
        build_model(LSTM_CFG, cpu_lstm_kernel="cudnn")


def test_bf16_autocast_keeps_stft_and_mask_float32():
    model = build_model(TINY).eval()
    spec = noisy_spec(1, 8 * HOP)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mask = model.decoder(model.encode(spec))
        out = model(spec)
    assert mask.dtype == torch.complex64
    assert out.dtype == torch.complex64
    assert torch.isfinite(torch.view_as_real(out)).all()


# --- initialisation -------------------------------------------------------------------

def test_bsrnn_initialisation():
    model = build_model({"channels": 8, "decoder": "uniform", "stages": [{"blocks": [
        {"type": "lstm", "axis": "band", "bidirectional": True}]}]})
    layer = model.layers[0]
    assert isinstance(layer, LSTMLayer)
    for name, p in layer.rnn.named_parameters():
        if name.startswith("bias"):
            assert torch.equal(p, torch.zeros_like(p))
        elif name.startswith("weight_hh"):   # [4H, H], orthogonal columns
            torch.testing.assert_close(p.T @ p, torch.eye(p.shape[1]), atol=1e-5, rtol=0)
        else:                                 # xavier-uniform bound sqrt(6 / (fan_in + fan_out))
            assert p.abs().max() <= math.sqrt(6 / sum(p.shape))
    linears = [layer.proj, model.band_split.projections[0], model.decoder.heads[30].fc2]
    for linear in linears:
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
        assert linear.weight.abs().max() <= math.sqrt(6 / sum(linear.weight.shape))


def test_mamba_initialisation():
    torch.manual_seed(0)
    block = MambaBlock(channels=32, d_state=6)
    assert block.dt_rank == 2
    dt = F.softplus(block.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5)
    assert dt.max() <= 1e-1 * (1 + 1e-5)
    assert dt.max() / dt.min() > 10          # spread log-uniformly, not constant
    torch.testing.assert_close(block.A_log, torch.arange(1., 7.).log().expand(32, 6))
    assert torch.equal(block.D, torch.ones(32))
    assert block.conv.groups == 32
    assert block.conv.kernel_size == (4,)
    assert block.conv.bias is not None
    assert block.in_proj.bias is None
    assert block.x_proj.bias is None
    assert block.out_proj.bias is None


# abl1's network: N=128, one bidirectional time Mamba layer (two blocks).
MAMBA_128 = {"channels": 128, "decoder": "uniform", "stages": [{"blocks": [
    {"type": "mamba", "axis": "time", "bidirectional": True, "d_state": 16}]}]}
ORIGINAL_INIT_KEYS = ("in_proj.weight", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
                      "out_proj.weight")


def _mamba_statistics(init: str) -> tuple[float, float]:
    """(mean softplus(dt_proj.bias), in_proj weight std) over the Mamba blocks of MAMBA_128."""
    torch.manual_seed(0)
    blocks = build_model({**MAMBA_128, "init": init}).mamba_blocks()
    dt = torch.cat([F.softplus(b.dt_proj.bias) for b in blocks])
    in_proj = torch.cat([b.in_proj.weight.flatten() for b in blocks])
    return dt.mean().item(), in_proj.std().item()


def test_original_initialisation_statistics_at_128_channels():
    """The original's Xavier pass zeroes the dt bias: dt starts at ln 2 = 0.693, not at
    1e-3..1e-1 (mean about 0.022), and in_proj's std is Xavier's sqrt(2 / (128 + 256))."""
    dt_mamba, std_mamba = _mamba_statistics("mamba")
    dt_original, std_original = _mamba_statistics("original")
    assert dt_original == pytest.approx(math.log(2), abs=1e-6)
    assert 0.018 < dt_mamba < 0.03
    assert std_original == pytest.approx(math.sqrt(2 / 384), rel=0.03)       # 0.072
    assert std_mamba == pytest.approx(1 / math.sqrt(3 * 128), rel=0.03)      # 0.051


def test_original_initialisation_redraws_only_the_linears_of_the_mamba_blocks():
    states = {}
    for init in ("mamba", "original"):
        torch.manual_seed(0)
        model = build_model({**TINY, "init": init})
        states[init] = model.state_dict()
    assert list(states["original"]) == list(states["mamba"])     # parameter names unchanged
    changed = {k for k in states["mamba"] if not torch.equal(states["mamba"][k],
                                                             states["original"][k])}
    blocks = [name for name, m in model.named_modules() if isinstance(m, MambaBlock)]
    assert len(blocks) == 4
    assert changed == {f"{b}.{key}" for b in blocks for key in ORIGINAL_INIT_KEYS}
    for block in model.mamba_blocks():   # conv, A_log, D as Mamba's; biases zero
        assert torch.equal(block.dt_proj.bias, torch.zeros_like(block.dt_proj.bias))
        assert torch.equal(block.D, torch.ones_like(block.D))


def test_original_initialisation_gives_x_proj_the_fan_out_of_each_original_projection():
    """x_proj stacks the original's x_proj_dt (8 rows), B_proj and C_proj (16 each): each
    part is Xavier-uniform with its own bound sqrt(6 / (128 + rows))."""
    torch.manual_seed(0)
    block = build_model({**MAMBA_128, "init": "original"}).mamba_blocks()[0]
    parts = block.x_proj.weight.split([8, 16, 16])
    bounds = [math.sqrt(6 / (128 + rows)) for rows in (8, 16, 16)]
    for part, bound in zip(parts, bounds, strict=True):
        assert bound * 0.98 < part.abs().max() <= bound
    assert parts[0].abs().max() > bounds[1]   # one bound for the stacked matrix would be lower


def test_scan_and_init_refuse_a_model_without_mamba_blocks():
    with pytest.raises(ConfigError, match=r"^model\.scan: 'as_coded' selects the scan of Mamba"):
        build_model({**LSTM_CFG, "scan": "as_coded"})
    with pytest.raises(ConfigError, match=r"^model\.init: 'original' changes Mamba blocks only"):
        build_model({**LSTM_CFG, "init": "original"})
    build_model({**LSTM_CFG, "scan": "exact", "init": "mamba"})   # the defaults are fine


def test_scan_mode_reaches_every_mamba_block(monkeypatch):
    """The model's scan goes to selective_scan from every block: in training, in inference
    and in the forward that gradient checkpointing recomputes during backward."""
    import mbsnet.models.mamba as mamba

    modes = []
    exact_scan = mamba.selective_scan

    def recording_scan(*args, mode="exact"):
        modes.append(mode)
        return exact_scan(*args)   # the arithmetic does not matter here

    monkeypatch.setattr(mamba, "selective_scan", recording_scan)
    model = build_model({**CHECKPOINTED, "scan": "as_coded"}, gradient_checkpointing=True)
    assert [b.scan_mode for b in model.mamba_blocks()] == ["as_coded"] * 3
    spec = noisy_spec(1, 6 * HOP)
    model.train()(spec).abs().mean().backward()
    assert modes == ["as_coded"] * 6            # 3 blocks forward, 3 recomputed in backward
    modes.clear()
    with torch.no_grad():
        model.eval()(spec)
    assert modes == ["as_coded"] * 3
    assert [b.scan_mode for b in build_model(CHECKPOINTED).mamba_blocks()] == ["exact"] * 3


def test_unknown_scan_mode_of_a_block_is_refused():
    with pytest.raises(ValueError, match="scan_mode must be one of"):
        MambaBlock(channels=8, scan_mode="fast")


def test_feature_mlp_layer_is_residual_linear_norm_gelu():
    torch.manual_seed(0)
    layer = FeatureMLPLayer(channels=6)
    z = torch.randn(2, 6, 4, 3)
    x = z.permute(0, 2, 3, 1)
    expected = x + F.gelu(F.layer_norm(layer.fc(x), (6,), layer.norm.weight, layer.norm.bias))
    torch.testing.assert_close(layer(z), expected.permute(0, 3, 1, 2))


# --- discriminator --------------------------------------------------------------------

def test_discriminator_scores_in_range_and_accepts_both_layouts():
    torch.manual_seed(0)
    disc = Discriminator(ndf=4).eval()
    clean, est = torch.rand(3, N_BINS, 33), torch.rand(3, N_BINS, 33)
    score = disc(clean, est)
    assert score.shape == (3, 1)
    assert ((score > 0) & (score < 1.2)).all()
    torch.testing.assert_close(disc(clean.unsqueeze(1), est.unsqueeze(1)), score)
    with pytest.raises(ValueError, match="magnitude"):
        disc(clean.unsqueeze(0), est.unsqueeze(0))


# --- configuration errors -------------------------------------------------------------

def _set(cfg: dict, path: list, value) -> dict:
    cfg = copy.deepcopy(cfg)
    node = cfg
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return cfg


@pytest.mark.parametrize(("path", "value", "key"), [
    (["decoder"], "fancy", "model.decoder"),
    (["channels"], KeyError, "model.channels"),
    (["channels"], 0, "model.channels"),
    (["stages"], [], "model.stages"),
    (["stages", 0, "repeat"], 0, "model.stages[0].repeat"),
    (["stages", 0, "blocks", 1, "type"], "gru", "model.stages[0].blocks[1].type"),
    (["stages", 0, "blocks", 0, "axis"], "freq", "model.stages[0].blocks[0].axis"),
    (["stages", 0, "blocks", 0, "axis"], KeyError, "model.stages[0].blocks[0].axis"),
    (["stages", 2, "blocks", 0, "d_state"], 0, "model.stages[2].blocks[0].d_state"),
    (["stages", 2, "blocks", 0, "d_state"], -3, "model.stages[2].blocks[0].d_state"),
    (["stages", 1, "blocks", 0, "expand"], 1.5, "model.stages[1].blocks[0].expand"),
    (["stages", 2, "blocks", 0, "bidirectional"], "yes", "model.stages[2].blocks[0].bidirectional"),
    (["stages", 2, "blocks", 1, "bidirectional"], True, "model.stages[2].blocks[1].bidirectional"),
    (["stages", 1, "blocks", 0, "d_sate"], 4, "model.stages[1].blocks[0].d_sate"),
    (["stages", 0, "blocks"], "lstm", "model.stages[0].blocks"),
    (["scan"], "approximate", "model.scan"),
    (["init"], "xavier", "model.init"),
])
def test_bad_model_settings_name_the_key(path, value, key):
    with pytest.raises(ConfigError) as excinfo:
        build_model(_set(TINY, path, value))
    assert str(excinfo.value).startswith(key + ":")


@pytest.mark.parametrize(("key", "value"), [("scan", "fast"), ("init", "xavier")])
def test_config_schema_names_a_bad_scan_or_init(key, value):
    raw = yaml.safe_load(CONFIG.read_text())
    raw["ablations"]["abl1"]["model"][key] = value
    with pytest.raises(ConfigError, match=rf"ablations\.abl1\.model\.{key}: '{value}' is not one"):
        validate_config(raw)


def test_model_settings_must_be_a_mapping():
    with pytest.raises(ConfigError, match="^model: expected a mapping"):
        build_model(["channels", 8])


MINIMAL = {"channels": 8, "decoder": "uniform",
           "stages": [{"blocks": [{"type": "mamba", "axis": "time"}]}]}


def test_model_defaults_exist_only_in_the_schema(monkeypatch):
    """The spec takes its defaults from the config schema: change one there and the spec
    follows; the dataclasses have none of their own."""
    spec = parse_model_config(MINIMAL)
    assert (spec.final_norm, spec.scan, spec.init) == (False, "exact", "mamba")
    assert spec.layers == (BlockSpec("mamba", "time", bidirectional=False, d_state=16,
                                     expand=1),)
    schema = mbsnet.config.load_schema()
    schema["$defs"]["block"]["properties"]["d_state"]["default"] = 7
    schema["$defs"]["stage"]["properties"]["repeat"]["default"] = 3
    schema["$defs"]["model"]["properties"]["scan"]["enum"] = ["as_coded", "exact"]
    monkeypatch.setattr(mbsnet.config, "load_schema", lambda: copy.deepcopy(schema))
    spec = parse_model_config(MINIMAL)
    assert [layer.d_state for layer in spec.layers] == [7, 7, 7]
    assert spec.scan == "as_coded"          # absent: the schema's first value
    for kind in (BlockSpec, ModelSpec):
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(kind)), kind


def test_spec_fields_are_the_schemas_keys():
    definitions = mbsnet.config.load_schema()["$defs"]
    assert [f.name for f in dataclasses.fields(BlockSpec)] == list(
        definitions["block"]["properties"])
    model_keys = set(definitions["model"]["properties"]) - {"stages"} | {"layers"}
    assert {f.name for f in dataclasses.fields(ModelSpec)} == model_keys
    # every scan the config may name is one the scan implements
    assert tuple(definitions["model"]["properties"]["scan"]["enum"]) == SCAN_MODES


def test_parsing_leaves_the_settings_as_they_were():
    settings = copy.deepcopy(MINIMAL)
    parse_model_config(settings)
    assert settings == MINIMAL


# --- model.pt -------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    path = tmp_path / "abl" / "model.pt"
    save_model(path, model, ablation="tiny", model_cfg=TINY, config={"ablations": {"tiny": {}}})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]   # no temporary left behind
    loaded, info = load_model(path)
    assert not loaded.training
    assert info == {"ablation": "tiny", "model": TINY, "params": count_parameters(model)["total"],
                    "config": {"ablations": {"tiny": {}}}, "mbsnet_version": info["mbsnet_version"]}
    assert info["mbsnet_version"]
    spec = noisy_spec(1, 6 * HOP)
    with torch.no_grad():
        torch.testing.assert_close(loaded(spec), model(spec), rtol=0, atol=0)


def test_saved_model_keeps_its_scan_mode(tmp_path):
    """model.pt carries the model settings, scan included; files saved before the key
    existed (no scan) load with the exact scan."""
    cfg = {**TINY, "scan": "as_coded", "init": "original"}
    for settings, mode in ((cfg, "as_coded"), (TINY, "exact")):
        model = build_model(settings)
        path = tmp_path / f"{mode}.pt"
        save_model(path, model, ablation="tiny", model_cfg=settings, config={})
        loaded, info = load_model(path)
        assert info["model"] == settings
        assert [b.scan_mode for b in loaded.mamba_blocks()] == [mode] * 4
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(MbsnetError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(MbsnetError, match="corrupt.pt is not a readable model file"):
        load_model(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(MbsnetError, match="missing ablation"):
        load_model(other)
    mismatch = tmp_path / "mismatch.pt"
    save_model(mismatch, build_model(TINY), ablation="tiny",
               model_cfg=_set(TINY, ["channels"], 4), config={})
    with pytest.raises(MbsnetError, match="weights do not match") as caught:
        load_model(mismatch)
    message = str(caught.value)
    assert "\n" not in message
    assert len(message) < 600
    assert re.search(r"\d+ shape differs: \S+ \(\d+(, \d+)*\) vs \(\d+(, \d+)*\)", message)
    with pytest.raises(MbsnetError, match="is a folder; expected a model file"):
        load_model(tmp_path)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(MbsnetError, match=r"empty.pt is empty \(0 bytes\), not a model file"):
        load_model(empty)


# --- mbsnet params --------------------------------------------------------------------

def test_params_command_lists_every_count(capsys):
    assert main(["params", "--config", str(CONFIG), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert {name: r["total"] for name, r in counts["ablations"].items()} == CONFIG_PARAMS
    assert counts["ablations"]["bsrnn"]["claimed"] == 2_400_000
    assert counts["ablations"]["bsrnn"]["ratio"] == pytest.approx(2_963_024 / 2_400_000)
    assert counts["discriminator"]["total"] == 181_650
    table = format_table(counts)
    assert "optimized: 2,139,920 parameters" in table
    assert "181,650" in table

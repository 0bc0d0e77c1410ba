"""mbsnet profile: FLOP counts against independent counts, the CPU memory accounting, the
assembled profile.json of a tiny config, the memory budget check and the ablations benchmark."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import mbsnet.models.mamba
import mbsnet.models.spec
import mbsnet.profiling.profile
from mbsnet.audio import HOP, SAMPLE_RATE
from mbsnet.cli import main
from mbsnet.config import load_config
from mbsnet.models import N_BANDS, build_model, count_parameters
from mbsnet.models.scan import scan_implementation
from mbsnet.models.spec import scan_used
from mbsnet.profiling import (
    FlopCount,
    Measurements,
    MemoryReading,
    ProfileOptions,
    assemble_profile,
    count_inference_flops,
    lstm_flops,
    measure_step_memory,
    probe_batch,
    profile_ablation,
    scan_flops,
)
from mbsnet.profiling.memory import tensor_bytes
from mbsnet.profiling.profile import MemoryBudgetError, check_budget

from .helpers import ROOT, TINY_CONFIG

MAMBA_MODEL = {"channels": 4, "decoder": "lightweight", "stages": [{"blocks": [
    {"type": "mamba", "axis": "time", "bidirectional": True, "d_state": 3},
    {"type": "mamba", "axis": "band", "bidirectional": False, "d_state": 2}]}]}
LSTM_MODEL = {"channels": 4, "decoder": "lightweight", "stages": [{"blocks": [
    {"type": "lstm", "axis": "time", "bidirectional": False},
    {"type": "lstm", "axis": "band", "bidirectional": True}]}]}
SECONDS = 0.25
FRAMES = round(SECONDS * SAMPLE_RATE) // HOP + 1


def tiny_config(tmp_path, budget_gb: float = 12) -> str:
    config = {
        "data": {"source": "synthetic"},
        "ablations": {"mamba": {"claimed_params": 1000, "model": MAMBA_MODEL},
                      "lstm": {"model": LSTM_MODEL}},
        "training": {"batch_size": 2, "crop_seconds": 0.5, "pesq_workers": 1,
                     "discriminator_ndf": 4, "device": "cpu"},
        "resources": {"threads": 1, "gpu_memory_gb": budget_gb},
    }
    path = tmp_path / f"config_{budget_gb:g}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def profile_cli(config: str, out, *extra: str) -> int:
    return main(["profile", "--config", config, "--ablation", "mamba", "--out", str(out),
                 "--inference-runs", "1", *extra])


# --- FLOPs -----------------------------------------------------------------------------

def test_lstm_flops_match_the_counted_gate_matmuls_of_an_explicit_cell():
    lstm = nn.LSTM(5, 7, batch_first=True, bidirectional=True, num_layers=2)
    x = torch.randn(3, 6, 5)

    def explicit(inputs, weight_ih, weight_hh):
        h = inputs.new_zeros(inputs.shape[0], weight_hh.shape[1])
        c = torch.zeros_like(h)
        outs = []
        for t in range(inputs.shape[1]):
            i, f, g, o = (F.linear(inputs[:, t], weight_ih) + F.linear(h, weight_hh)).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, 1)

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer_in = x
        for layer in range(2):
            w = [getattr(lstm, f"weight_{k}_l{layer}{s}") for s in ("", "_reverse")
                 for k in ("ih", "hh")]
            forward = explicit(layer_in, w[0], w[1])
            backward = explicit(layer_in.flip(1), w[2], w[3]).flip(1)
            layer_in = torch.cat([forward, backward], -1)
    assert lstm_flops(lstm, batch=3, steps=6) == counter.get_total_flops()


def test_scan_flops_count_every_operation():
    # per (b, t, d, n): exp(dA) 2, dx*B 1, state FMA 2, C.h 2; per (b, t, d): dx 1, D skip 2
    assert scan_flops(2, 3, 4, 5) == 7 * 2 * 3 * 4 * 5 + 3 * 2 * 3 * 4
    assert scan_flops(1, 1, 1, 1) == 10


def test_mamba_flops_are_the_counter_without_the_scan_plus_the_analytic_scan(monkeypatch):
    model = build_model(MAMBA_MODEL)
    count = count_inference_flops(model, SECONDS)

    time_calls = [(N_BANDS, FRAMES, 4, 3)] * 2          # bidirectional: two blocks
    band_calls = [(FRAMES, N_BANDS, 4, 2)]
    assert sorted(count.scan_calls) == sorted(time_calls + band_calls)
    assert count.scan == sum(scan_flops(*c) for c in time_calls + band_calls) > 0
    assert count.lstm == 0

    # the rest must equal what the counter sees with the scan replaced by a free stand-in
    monkeypatch.setattr(mbsnet.models.mamba, "selective_scan",
                        lambda x, delta, A, B, C, D, mode="exact": x * D)
    spec = torch.randn(1, 257, FRAMES, dtype=torch.complex64)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(spec)
    assert count.counter == counter.get_total_flops() > 0
    assert count.flops_per_second == pytest.approx(count.total / SECONDS)
    assert count.macs_per_second == pytest.approx(count.flops_per_second / 2)


def test_lstm_model_flops_are_counted_analytically():
    model = build_model(LSTM_MODEL)
    count = count_inference_flops(model, SECONDS)
    time_lstm, band_lstm = (layer.rnn for layer in model.layers)
    assert count.lstm == (lstm_flops(time_lstm, N_BANDS, FRAMES)
                          + lstm_flops(band_lstm, FRAMES, N_BANDS)) > 0
    assert count.scan == 0
    assert count.counter > 0


# --- memory ----------------------------------------------------------------------------

def test_cpu_step_memory_is_the_live_tensors_plus_the_step_peak():
    MiB = 2**20
    kept = torch.ones(MiB // 4)                                # 1 MiB alive before the step

    def step():
        a = torch.ones(8 * MiB // 4)                           # 8 MiB ...
        b = a * 2                                              # ... + 8 MiB at the peak
        del a
        return b.sum()

    reading = measure_step_memory(step, torch.device("cpu"), [kept, kept[:10]])
    assert reading.details["tensors_before_step_mb"] == pytest.approx(1.0)
    assert 17.0 <= reading.peak_mb < 17.1
    assert "profiler" in reading.method


def test_tensor_bytes_counts_shared_storage_once():
    base = torch.zeros(100)
    assert tensor_bytes([base, base[10:], base.view(10, 10)]) == 400


# --- the whole profile -----------------------------------------------------------------

@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("profile")
    out = tmp / "mamba" / "profile.json"
    assert profile_cli(tiny_config(tmp), out) == 0
    return json.loads(out.read_text()), load_config(tiny_config(tmp))


def test_profile_json_has_every_key_with_sane_values(profile):
    data, config = profile
    expected = {"ablation", "device", "scan", "params", "macs_per_second", "flops_per_second",
                "flops_method", "peak_train_memory_mb", "memory_method", "train_step_seconds",
                "inference_rtf", "batch_size", "crop_seconds", "budget_gb", "within_budget"}
    assert expected <= set(data)
    assert data["ablation"] == "mamba"
    assert data["device"] == "cpu"
    assert data["scan"] == scan_implementation(torch.device("cpu"), "exact")
    counted = count_parameters(build_model(MAMBA_MODEL))
    assert data["params"] == {"total": counted["total"], "per_module": counted["per_module"],
                              "claimed": 1000, "ratio": counted["total"] / 1000}
    assert data["macs_per_second"] == pytest.approx(data["flops_per_second"] / 2)
    assert data["flops_per_second_by_source"]["scan"] > 0
    assert data["flops_per_second_by_source"]["counter"] > 0
    assert "analytic" in data["flops_method"]
    # at least the weights, their gradients and both Adam moments of the two networks
    assert data["memory_details"]["tensors_before_step_mb"] > 0
    assert data["peak_train_memory_mb"] > data["memory_details"]["tensors_before_step_mb"]
    assert data["train_step_seconds"] > 0
    assert data["inference_rtf"] > 0
    assert (data["batch_size"], data["crop_seconds"]) == (2, 0.5)
    assert data["budget_gb"] == 12
    assert data["within_budget"] is True
    assert data["warnings"] == []                  # the discriminator step ran every time


def test_profile_names_the_scan_of_the_mamba_blocks_on_the_device(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert scan_used(MAMBA_MODEL, cpu) == scan_implementation(cpu, "exact")
    asked = []
    monkeypatch.setattr(mbsnet.models.spec, "scan_implementation",
                        lambda device, mode: asked.append((device, mode)) or f"{mode} scan")
    assert scan_used(LSTM_MODEL, cuda) is None          # no Mamba block: no scan at all
    assert scan_used(MAMBA_MODEL, cuda) == "exact scan"
    assert scan_used({**MAMBA_MODEL, "scan": "as_coded"}, cuda) == "as_coded scan"
    assert asked == [(cuda, "exact"), (cuda, "as_coded")]


def test_tiny_budget_fails_with_a_clear_message_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert profile_cli(tiny_config(tmp_path, budget_gb=0.001), out, "--warmup-steps", "0") == 1
    message = capsys.readouterr().err
    assert "ablation 'mamba'" in message
    assert "resources.gpu_memory_gb allows 0.001 GB" in message
    assert "measured on the CPU" in message
    for remedy in ("batch_size", "crop_seconds", "gradient_checkpointing"):
        assert remedy in message
    assert not out.exists()
    assert list(tmp_path.glob("*.json*")) == []


@pytest.mark.parametrize(("kernel", "lstm_flops", "hinted"),
                         [("onednn", 1e9, True), ("native", 1e9, False), ("onednn", 0.0, False)])
def test_over_budget_cpu_profile_suggests_the_native_lstm_kernel_only_where_it_helps(
        kernel, lstm_flops, hinted):
    over = {"ablation": "bsrnn", "device": "cpu", "peak_train_memory_mb": 6400.0,
            "budget_gb": 4, "batch_size": 6, "crop_seconds": 2.0,
            "gradient_checkpointing": False, "cpu_lstm_kernel": kernel,
            "flops_per_second_by_source": {"lstm": lstm_flops, "scan": 0.0}}
    with pytest.raises(MemoryBudgetError, match="ablation 'bsrnn' needs 6.25 GB") as caught:
        check_budget(over)
    assert ("training.cpu_lstm_kernel: native" in str(caught.value)) is hinted
    check_budget({**over, "budget_gb": 7})   # within budget: no error


def test_unknown_ablation_is_a_config_error(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["profile", "--config", tiny_config(tmp_path), "--ablation", "nope",
                 "--out", str(out)]) == 1
    assert "unknown ablation 'nope'; configured: lstm, mamba" in capsys.readouterr().err
    assert not out.exists()


def test_bad_step_count_is_a_config_error(tmp_path, capsys):
    assert profile_cli(tiny_config(tmp_path), tmp_path / "p.json", "--steps", "0") == 2
    assert "steps must be at least 1" in capsys.readouterr().err


# --- with a stand-in trainer: warnings -------------------------------------------------

class StandInTrainer:
    """The EnhancementGan API the profile uses; every step allocates 16 MiB and skips the
    discriminator step (as when PESQ fails)."""

    def __init__(self, ablation_cfg, config, device):
        self.generator = build_model(ablation_cfg["model"])
        self.discriminator = nn.Linear(2, 1)
        self.optimizer = torch.optim.Adam(self.generator.parameters())
        self.closed = False

    def train_step(self, clean, noisy, use_metric_loss):
        assert use_metric_loss
        assert clean.shape == noisy.shape
        scratch = torch.ones(4 * 2**20)
        return {"gen_loss": float(scratch.sum()), "disc_loss": None, "skipped": False,
                "reason": None, "disc_reason": "PESQ failed for the batch"}

    def close(self):
        self.closed = True


def test_skipped_discriminator_steps_and_a_near_budget_peak_are_warned(tmp_path):
    config = load_config(tiny_config(tmp_path, budget_gb=0.0175))      # 17.9 MB
    trainers = []

    def make(*args):
        trainers.append(StandInTrainer(*args))
        return trainers[0]

    data = profile_ablation(config, "mamba", torch.device("cpu"),
                            ProfileOptions(warmup_steps=1, steps=1, inference_runs=1),
                            make_trainer=make, log=lambda line: None)
    assert trainers[0].closed
    assert 16 < data["peak_train_memory_mb"] < 17.9
    assert data["within_budget"]
    assert any("discriminator step was skipped in 3 of 3" in w for w in data["warnings"])
    assert any("of the 0.0175 GB budget" in w for w in data["warnings"])


def test_profile_json_is_assembled_from_the_measurements_and_the_settings(tmp_path):
    """Over the budget at micro-batch 2, the one-item peak gives the accumulate that fits;
    the figures per second, the parameter ratio and the warnings come from the measurements."""
    config = load_config(tiny_config(tmp_path, budget_gb=250 / 1024))     # 250 MB
    measured = Measurements(
        device="cpu (test)", scan="chunked", params={"total": 1500, "per_module": {"a": 1500}},
        flops=FlopCount(seconds=0.5, counter=100, scan=20),
        memory=MemoryReading(peak_mb=300.0, method="test", details={"x": 1}),
        one_item_peak_mb=200.0, step_seconds=0.5, inference_rtf=0.1,
        step_outcomes=[{"skipped": True, "reason": "generator: non-finite loss (nan)"},
                       {"skipped": False, "disc_loss": 1.0}],
        phases={"build": 1.0, "flops": 2.0}, threads=3)
    data = assemble_profile(config, "mamba", measured, ProfileOptions(warmup_steps=2, steps=3))
    assert list(data) == [
        "ablation", "device", "scan", "params", "macs_per_second", "flops_per_second",
        "flops_method", "flops_per_second_by_source", "peak_train_memory_mb", "memory_method",
        "memory_details", "train_step_seconds", "inference_rtf", "batch_size", "processes",
        "accumulate", "micro_batch", "utterances_per_second", "suggested_accumulate",
        "crop_seconds", "budget_gb", "within_budget", "precision", "gradient_checkpointing",
        "cpu_lstm_kernel", "threads", "warmup_steps", "timed_steps", "profile_seconds",
        "phase_seconds", "warnings"]
    assert data["params"] == {"total": 1500, "per_module": {"a": 1500}, "claimed": 1000,
                              "ratio": 1.5}
    assert (data["flops_per_second"], data["macs_per_second"]) == (240.0, 120.0)
    assert data["flops_per_second_by_source"] == {"total": 240.0, "counter": 200.0,
                                                  "scan": 40.0, "lstm": 0.0}
    assert (data["batch_size"], data["micro_batch"], data["utterances_per_second"]) == (2, 2, 4.0)
    assert data["suggested_accumulate"] == {"accumulate": 2, "micro_batch": 1,
                                            "estimated_peak_mb": 200.0}
    assert not data["within_budget"]
    assert data["crop_seconds"] == 0.5
    assert (data["threads"], data["warmup_steps"], data["timed_steps"]) == (3, 2, 3)
    assert data["profile_seconds"] == 3.0
    assert data["phase_seconds"] == measured.phases
    assert data["warnings"] == ["1 of 2 profiled training steps were skipped (generator: "
                                "non-finite loss (nan)); figures may be too low"]
    no_item = assemble_profile(config, "mamba",
                               dataclasses.replace(measured, one_item_peak_mb=None))
    assert no_item["suggested_accumulate"] is None


def test_probe_batch_is_speech_at_5_db_snr():
    from mbsnet.metrics import pesq_wb

    clean, noisy = probe_batch(2, 0.5)
    assert clean.shape == noisy.shape == (2, 8000)
    snr = 10 * torch.log10((clean**2).sum(1) / ((noisy - clean) ** 2).sum(1))
    assert torch.allclose(snr, torch.full((2,), 5.0), atol=0.5)
    assert 1.0 <= pesq_wb(clean[0].numpy(), noisy[0].numpy()) < 4.6


def test_cuda_step_memory_resets_the_peak_before_the_step_and_reads_it_after(monkeypatch):
    calls = []
    fake = {"synchronize": lambda device=None: calls.append("sync"),
            "reset_peak_memory_stats": lambda device=None: calls.append("reset"),
            "memory_allocated": lambda device=None: 3 * 2**20,
            "max_memory_allocated": lambda device=None: calls.append("peak") or 96 * 2**20,
            "max_memory_reserved": lambda device=None: 128 * 2**20}
    for name, fn in fake.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    reading = measure_step_memory(lambda: calls.append("step"), torch.device("cuda", 0))
    assert calls == ["sync", "reset", "step", "sync", "peak"]
    assert reading.peak_mb == 96
    assert reading.details == {"allocated_before_step_mb": 3, "reserved_peak_mb": 128}
    assert "max_memory_allocated" in reading.method


# --- the ablations benchmark -------------------------------------------------------------

def test_ablations_benchmark_profiles_each_ablation_at_the_requested_size(tmp_path):
    out = tmp_path / "ablations.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ablations.py"),
         "--config", str(TINY_CONFIG), "--batch-size", "1",
         "--crop-seconds", "0.5", "--threads", "1", "--warmup-steps", "0", "--steps", "1",
         "--inference-runs", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {row["ablation"]: row for row in report["rows"]}
    assert set(rows) == {"bsrnn", "mamba"}
    for row in rows.values():
        assert (row["batch_size"], row["crop_seconds"]) == (1, 0.5)
        assert row["peak_train_memory_mb"] > 0
        assert row["train_step_seconds"] > 0
    assert rows["mamba"]["step_vs_baseline"] == pytest.approx(
        rows["mamba"]["train_step_seconds"] / rows["bsrnn"]["train_step_seconds"])
    assert rows["bsrnn"]["cpu_lstm_kernel"] == "native"
    assert report["comparable_to_original"] is False
    assert "memory target is not checked" in proc.stdout
    assert [line.split()[0] for line in proc.stdout.splitlines()[2:4]] == ["bsrnn", "mamba"]


def test_the_profile_measures_under_the_trainings_numerics(tmp_path):
    """training.tf32 and training.deterministic hold while the steps are measured (they
    change a CUDA step's time), and are restored afterwards."""
    path = tiny_config(tmp_path)
    raw = yaml.safe_load(open(path))
    raw["training"].update(tf32=True, deterministic=True)
    changed = tmp_path / "numerics.yaml"
    changed.write_text(yaml.safe_dump(raw))
    config = load_config(changed)
    seen = []

    class Recording(StandInTrainer):
        def train_step(self, clean, noisy, use_metric_loss):
            seen.append((torch.backends.cuda.matmul.fp32_precision,
                         torch.are_deterministic_algorithms_enabled()))
            return super().train_step(clean, noisy, use_metric_loss)

    before = (torch.backends.cuda.matmul.fp32_precision,
              torch.are_deterministic_algorithms_enabled())
    profile_ablation(config, "mamba", torch.device("cpu"),
                     ProfileOptions(warmup_steps=1, steps=1, inference_runs=1),
                     make_trainer=Recording, log=lambda line: None)
    assert seen
    assert set(seen) == {("tf32", True)}
    assert (torch.backends.cuda.matmul.fp32_precision,
            torch.are_deterministic_algorithms_enabled()) == before

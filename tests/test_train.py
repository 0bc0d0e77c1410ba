"""Training: losses, the EnhancementGan step, checkpoints and exact resume, NaN safety, outputs,
and clear errors on bad input. Tiny models and a tiny generated corpus keep it fast."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mbsnet import cli
from mbsnet.audio import stft
from mbsnet.config import ablation_config, validate_config
from mbsnet.data.datasets import EvalDataset, TrainDataset
from mbsnet.device import peak_memory_mb, select_device
from mbsnet.errors import ConfigError, DataError, MbsnetError
from mbsnet.evaluation.enhance import enhance_waveform
from mbsnet.metrics import pesq_wb
from mbsnet.models import load_model
from mbsnet.models import mamba as mamba_module
from mbsnet.models import network as network_module
from mbsnet.models.mamba import MambaBlock
from mbsnet.models.scan import scan_implementation
from mbsnet.train import batches, loop
from mbsnet.train import checkpoint as ckpt
from mbsnet.train import gan as gan_module
from mbsnet.train import tensorboard as tensorboard_module
from mbsnet.train.discriminator_targets import PesqScorer, metric_targets, normalised_pesq
from mbsnet.train.gan import EnhancementGan, autocast_dtype, first_metric_epoch
from mbsnet.train.losses import compressed_magnitude, discriminator_loss, reconstruction_loss

from .tiny_training import MAMBA_B, MAMBA_T, STRUCTURES, fixed_batch, read_log, tiny_config

LOSS = {"ri_weight": 0.5, "mag_weight": 0.5, "compress": 0.3, "metric_weight": 1.0}

pytestmark = pytest.mark.usefixtures("one_thread")


def make_trainer(name: str = "bsrnn", **training) -> EnhancementGan:
    config = tiny_config(**training)
    torch.manual_seed(0)
    return EnhancementGan(ablation_config(config, name), config, torch.device("cpu"))


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def run_training(config: dict, manifest: Path, out: Path, name: str = "bsrnn", **kwargs):
    return loop.train(config, name, 0, out, manifest, threads=1, **kwargs)


@pytest.fixture
def logged(caplog):
    """The package's log records from INFO on (what the command line shows)."""
    caplog.set_level(logging.INFO, logger="mbsnet")
    return caplog


class Interrupt(Exception):
    """Stands in for a kill (SLURM time limit, Ctrl-C) in the resume tests."""


def interrupt_at(epoch: int, step: int):
    def on_step(run: ckpt.RunState) -> None:
        if (run.epoch, run.step) == (epoch, step):
            raise Interrupt
    return on_step


# -- losses ---------------------------------------------------------------------------

def test_reconstruction_loss_matches_hand_computation():
    est = torch.tensor([[[3 + 4j, 0j]]], dtype=torch.complex64)
    clean = torch.tensor([[[0j, 1 + 0j]]], dtype=torch.complex64)
    ri = (5.0 + 1.0) / 2  # mean modulus of the complex difference
    mag = (abs((5 + 1e-10) ** 0.3 - 1e-10 ** 0.3) + abs(1e-10 ** 0.3 - (1 + 1e-10) ** 0.3)) / 2
    got = reconstruction_loss(est, clean, LOSS)
    assert got.item() == pytest.approx(0.5 * ri + 0.5 * mag, rel=1e-5)


def test_compressed_magnitude_has_finite_gradient_at_zero():
    spec = torch.zeros(1, 2, 2, dtype=torch.complex64, requires_grad=True)
    (compressed_magnitude(spec, 0.3).sum()).backward()
    assert torch.isfinite(torch.view_as_real(spec.grad)).all()


def test_discriminator_loss_targets():
    def discriminate(a, b):  # a fake discriminator: 1 for equal pairs, else 0.5
        return torch.where((a == b).all(dim=(1, 2)), 1.0, 0.5)[:, None]

    clean, est, noisy = (torch.full((2, 3, 4), v) for v in (1.0, 2.0, 3.0))
    target = torch.tensor([0.5, 0.7])
    loss = discriminator_loss(discriminate, clean, est, noisy, target, target)
    # (clean, clean) -> 1 exactly; the two others score 0.5 against the targets
    assert loss.item() == pytest.approx(2 * ((0.0 ** 2 + 0.2 ** 2) / 2))
    assert normalised_pesq(np.array([-0.5, 4.5])).tolist() == [0.0, 1.0]


def test_metric_targets_none_when_pesq_fails():
    clean, noisy = fixed_batch(2, 0.5)
    silent = torch.zeros_like(clean)
    with PesqScorer(0) as scorer:
        assert metric_targets(scorer, clean, silent, silent) is None
        target_est, target_noisy = metric_targets(scorer, clean, noisy, clean)
    # PESQ(clean, est) and PESQ(est, noisy), normalised; here both pairs are (clean, noisy)
    pairs = list(zip(clean.numpy(), noisy.numpy(), strict=True))
    expected = [(pesq_wb(c, n) + 0.5) / 5 for c, n in pairs]
    assert target_est.tolist() == pytest.approx(expected)
    assert target_noisy.tolist() == pytest.approx([(pesq_wb(n, c) + 0.5) / 5 for c, n in pairs])
    assert 0.3 < min(expected)
    assert target_est.dtype == torch.float32


def test_pesq_workers_match_in_process_scores():
    clean, noisy = fixed_batch(3, 0.5)
    refs, degs = list(clean.numpy()), list(noisy.numpy())
    with PesqScorer(0) as inline, PesqScorer(2) as pool:
        expected = inline.scores(refs, degs)
        np.testing.assert_array_equal(pool.scores(refs, degs), expected)
        for process in list(pool._pool._processes.values()):  # a job signal kills a worker
            os.kill(process.pid, signal.SIGKILL)
        assert np.isnan(pool.scores(refs, degs)).all()  # a failed batch, not a hang
        np.testing.assert_array_equal(pool.scores(refs, degs), expected)  # a new pool


# -- the EnhancementGan step ----------------------------------------------------------

@pytest.mark.parametrize("name", list(STRUCTURES))
def test_each_ablation_structure_trains(name):
    trainer = make_trainer(name)
    clean, noisy = fixed_batch()
    before_g, before_d = params(trainer.generator), params(trainer.discriminator)
    results = [trainer.train_step(clean, noisy, use_metric_loss=metric) for metric in (False, True)]
    for result in results:
        assert not result["skipped"]
        assert result["reason"] is None
        assert math.isfinite(result["gen_loss"])
        assert math.isfinite(result["disc_loss"])
    for before, network in ((before_g, trainer.generator), (before_d, trainer.discriminator)):
        assert any(not torch.equal(a, b) for a, b in zip(before, params(network), strict=True))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step:UserWarning")
def test_per_ablation_training_overrides_apply():
    config = tiny_config(lr=1e-3, decay_epoch=2)
    config["ablations"]["abl1"]["training"] = {"lr": 5e-4, "loss": {"metric_weight": 0.25}}
    trainer = EnhancementGan(ablation_config(config, "abl1"), config, torch.device("cpu"))
    assert trainer.lr == 5e-4
    assert trainer.disc_optimizer.param_groups[0]["lr"] == 1e-3
    assert trainer.loss_cfg == {**LOSS, "metric_weight": 0.25}
    trainer.end_epoch()
    assert trainer.lr == 5e-4  # StepLR every decay_epoch = 2 epochs
    trainer.end_epoch()
    assert trainer.lr == pytest.approx(5e-4 * 0.98)


def test_loss_goes_down_on_a_fixed_batch():
    trainer = make_trainer("bsrnn", lr=3e-3)
    clean, noisy = fixed_batch()
    losses = [trainer.train_step(clean, noisy, use_metric_loss=False)["gen_loss"]
              for _ in range(12)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_nonfinite_loss_skips_the_whole_step(monkeypatch):
    trainer = make_trainer()
    monkeypatch.setattr(gan_module, "reconstruction_loss",
                        lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    before = params(trainer.generator) + params(trainer.discriminator)
    result = trainer.train_step(*fixed_batch(), use_metric_loss=False)
    assert result["skipped"]
    assert "non-finite loss" in result["reason"]
    assert result["disc_loss"] is None
    after = params(trainer.generator) + params(trainer.discriminator)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not trainer.gen_optimizer.state  # Adam made no step


def test_nonfinite_gradient_skips_the_update():
    trainer = make_trainer()
    first = next(trainer.generator.parameters())
    first.register_hook(lambda grad: grad * float("inf"))
    before = params(trainer.generator)
    result = trainer.train_step(*fixed_batch(), use_metric_loss=False)
    assert result["skipped"]
    assert "non-finite gradient" in result["reason"]
    assert all(torch.equal(a, b) for a, b in zip(before, params(trainer.generator), strict=True))


def test_gradient_checkpointing_gives_the_same_step():
    results = []
    for checkpointing in (False, True):
        trainer = make_trainer("abl1", gradient_checkpointing=checkpointing)
        assert trainer.generator.gradient_checkpointing is checkpointing
        trainer.train_step(*fixed_batch(), use_metric_loss=False)
        results.append(params(trainer.generator))
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_bf16_falls_back_to_fp32_on_cpu():
    with pytest.warns(UserWarning, match="float32 on cpu"):
        assert autocast_dtype("bf16", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cuda")) is torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert autocast_dtype("fp32", torch.device("cuda")) is None


# -- precision ------------------------------------------------------------------------

class ResultDtypes(TorchDispatchMode):
    """The dtypes of the floating-point results of every op, by the labelled part of the
    model (module or function) it ran in; "other" outside them."""

    def __init__(self) -> None:
        super().__init__()
        self.where = ["other"]
        self.seen: dict[str, set[torch.dtype]] = collections.defaultdict(set)

    @contextlib.contextmanager
    def inside(self, label: str):
        self.where.append(label)
        try:
            yield
        finally:
            self.where.pop()

    def label(self, modules, label: str) -> None:
        def enter(*_) -> None:
            self.where.append(label)

        def leave(*_) -> None:
            self.where.pop()

        for module in modules:
            module.register_forward_pre_hook(enter)
            module.register_forward_hook(leave)

    def wrap(self, function, label: str):
        def labelled(*args, **kwargs):
            with self.inside(label):
                return function(*args, **kwargs)
        return labelled

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
                self.seen[self.where[-1]].add(t.dtype)
        return out


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_bf16_autocast_runs_each_part_in_its_dtype(monkeypatch, device):
    """What precision: bf16 computes on CUDA (on the CPU, through the CPU's autocast: the
    same code): the Mamba blocks' Linear layers in bf16; the LSTM recurrences (which cuDNN's
    autocast would run in fp16), the scan, the STFT and the masks in float32."""
    device = torch.device(device)
    lstms = STRUCTURES["bsrnn"]["stages"][0]["blocks"]  # time unidirectional, band bi
    mixed = {"channels": 8, "decoder": "uniform", "stages": [{"blocks": [
        *lstms, MAMBA_T, {**MAMBA_B, "bidirectional": False}, {"type": "mlp", "axis": "band"}]}]}
    config = tiny_config()
    config["ablations"]["mixed"] = {"model": mixed}
    config = validate_config(config)
    torch.manual_seed(0)
    trainer = EnhancementGan(ablation_config(config, "mixed"), config, device)
    trainer.autocast_dtype = torch.bfloat16  # what autocast_dtype() gives on CUDA
    generator = trainer.generator
    mode = ResultDtypes()
    mode.label([m for m in generator.modules() if isinstance(m, torch.nn.LSTM)], "lstm")
    mode.label([linear for m in generator.modules() if isinstance(m, MambaBlock)
                for linear in (m.in_proj, m.x_proj, m.out_proj)], "mamba linear")
    monkeypatch.setattr(mamba_module, "selective_scan",
                        mode.wrap(mamba_module.selective_scan, "scan"))
    monkeypatch.setattr(network_module, "apply_mask", mode.wrap(network_module.apply_mask, "mask"))
    clean, noisy = (t.to(device) for t in fixed_batch())
    with mode:
        with mode.inside("stft"):
            clean_spec, noisy_spec = stft(clean), stft(noisy)
        est = trainer.enhance_spec(noisy_spec)
        trainer.generator_loss(clean_spec, est, use_metric_loss=False).backward()
    assert mode.seen["lstm"] == {torch.float32}
    assert mode.seen["mamba linear"] == {torch.bfloat16}
    assert mode.seen["scan"] == {torch.float32}
    assert mode.seen["stft"] == {torch.float32, torch.complex64}
    assert mode.seen["mask"] == {torch.complex64}
    assert est.dtype == torch.complex64
    grads = [p.grad for p in generator.parameters()]
    assert all(g is not None for g in grads)
    assert {g.dtype for g in grads} == {torch.float32}
    assert all(torch.isfinite(g).all() for g in grads)


# -- devices, batches, checkpoints ----------------------------------------------------

def test_device_selection(monkeypatch):
    assert select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match="training.device: 'cuda'"):
        select_device("cuda")
    # a CUDA device is claimed: tests/test_device.py
    assert peak_memory_mb(torch.device("cpu")) > 0


def test_epoch_batches_are_shuffled_passes_fixed_by_seed_and_epoch():
    epoch = batches.epoch_batches(5, 2, 5, seed=3, epoch=1)
    assert len(epoch) == 5
    assert all(len(b) == 2 for b in epoch)
    flat = sum(epoch, [])
    assert sorted(flat[:5]) == list(range(5))
    assert sorted(flat[5:10]) == list(range(5))
    assert epoch == batches.epoch_batches(5, 2, 5, seed=3, epoch=1)
    assert epoch != batches.epoch_batches(5, 2, 5, seed=3, epoch=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_train_batches_are_the_epochs_items_read_by_any_process(manifest, workers):
    data = TrainDataset(manifest, split="train", crop_seconds=0.25, seed=4)
    with batches.TrainBatches(data, batch_size=2, steps=3, seed=4, workers=workers,
                              device=torch.device("cpu")) as loader:
        for epoch, start in ((1, 0), (1, 2), (0, 1)):  # a resume mid-epoch, an earlier epoch
            got = list(loader.epoch(epoch, start))
            items = batches.epoch_batches(len(data), 2, 3, seed=4, epoch=epoch)[start:]
            assert len(got) == len(items) == 3 - start
            for (clean, noisy), batch in zip(got, items, strict=True):
                expected = [data[(epoch, i)] for i in batch]
                assert torch.equal(clean, torch.stack([c for c, _ in expected]))
                assert torch.equal(noisy, torch.stack([n for _, n in expected]))
    data.set_epoch(1)  # an (epoch, index) key is that epoch's crop
    assert all(torch.equal(data[i][0], data[(1, i)][0]) for i in range(len(data)))
    assert any(not torch.equal(data[(0, i)][0], data[(1, i)][0]) for i in range(len(data)))


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    state = ckpt.rng_state()
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(path, identity="x", trainer_state={}, run=ckpt.RunState(epoch=2))
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    loaded = ckpt.load_checkpoint(path)
    ckpt.set_rng_state(loaded["rng"])
    again = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]
    assert loaded["run"].epoch == 2
    assert state["torch"].numel()


def test_resume_restores_the_runs_cuda_rng_with_fewer_gpus_visible(monkeypatch, tmp_path):
    """A run on cuda:1 of two visible GPUs resumes where only one is visible (cuda:0)."""
    visible = {"count": 2}
    states = {i: torch.full((8,), 10 + i, dtype=torch.uint8) for i in range(2)}
    restored = []

    def index(device) -> int:
        i = device if isinstance(device, int) else torch.device(device).index or 0
        if i >= visible["count"]:
            raise IndexError(f"cuda:{i} with {visible['count']} device(s) visible")
        return i

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible["count"])
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[index(device)])
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device="cuda": restored.append((index(device), state)))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                        lambda: [states[i] for i in range(visible["count"])])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all",
                        lambda all_states: [restored.append((index(i), s))
                                            for i, s in enumerate(all_states)])
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, identity="x", trainer_state={}, run=ckpt.RunState(),
                         device=torch.device("cuda", 1))
    visible["count"] = 1
    state = ckpt.load_checkpoint(path)["rng"]
    ckpt.set_rng_state(state, torch.device("cuda", 0))
    assert [(i, s.tolist()) for i, s in restored] == [(0, [11] * 8)]

    restored.clear()  # older checkpoints: a state per visible device, the run on cuda:0
    ckpt.set_rng_state({**state, "cuda": [states[0], states[1]]}, torch.device("cuda", 0))
    assert [(i, s.tolist()) for i, s in restored] == [(0, [10] * 8)]

    restored.clear()  # a CPU run saves no CUDA state, a run resumed on the CPU restores none
    ckpt.save_checkpoint(path, identity="x", trainer_state={}, run=ckpt.RunState(),
                         device=torch.device("cpu"))
    assert "cuda" not in ckpt.load_checkpoint(path)["rng"]
    ckpt.set_rng_state(state, torch.device("cpu"))
    assert restored == []


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(MbsnetError, match="cannot be read.*delete it"):
        ckpt.load_checkpoint(path)


# -- whole runs -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_run(manifest, tmp_path_factory):
    """One uninterrupted 2-epoch run (MetricGAN loss on in epoch 2)."""
    out = tmp_path_factory.mktemp("reference")
    summary = run_training(tiny_config(), manifest, out)
    return out, summary


def test_run_writes_the_documented_outputs(reference_run):
    out, summary = reference_run
    # tensorboard/: training.tensorboard is absent, and the test extra installs tensorboard
    assert {p.name for p in out.iterdir()} == {"model.pt", "train_log.jsonl",
                                               "train_summary.json", "checkpoint", "tensorboard"}
    assert {p.name for p in (out / "checkpoint").iterdir()} == {"last.pt", "best.pt",
                                                                 "train_log.jsonl"}
    on_disk = json.loads((out / "train_summary.json").read_text())
    assert on_disk == summary
    assert set(summary) == {"ablation", "seed", "epochs", "steps", "wall_seconds",
                            "skipped_steps", "disc_skipped_steps", "best_epoch", "best_key",
                            "best_score", "device", "scan", "precision", "deterministic",
                            "tf32", "data_workers", "peak_memory_mb", "resumed", "params",
                            "processes", "process_devices", "batch_size", "accumulate",
                            "micro_batch", "utterances_per_second"}
    expected = {"epochs": 2, "steps": 4, "resumed": 0, "device": "cpu",
                "scan": None,  # bsrnn has no Mamba block
                "precision": "fp32", "deterministic": False, "tf32": False, "data_workers": 2}
    assert {key: summary[key] for key in expected} == expected
    assert (summary["processes"], summary["process_devices"], summary["batch_size"],
            summary["accumulate"], summary["micro_batch"]) == (1, ["cpu"], 2, 1, 2)
    assert summary["utterances_per_second"] > 0
    assert summary["best_epoch"] in (1, 2)

    log = read_log(out / "train_log.jsonl")
    steps = [line for line in log if line["kind"] == "step"]
    epochs = [line for line in log if line["kind"] == "epoch"]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert [e["metric_loss"] for e in epochs] == [False, True]
    assert not any(s["skipped"] for s in steps)
    assert all(math.isfinite(s["gen_loss"]) for s in steps)
    assert all(math.isfinite(e["val_loss"]) for e in epochs)
    assert all(1.0 <= e["val_pesq"] <= 4.5 for e in epochs), [e["val_pesq"] for e in epochs]
    assert epochs[1]["lr"] == pytest.approx(1e-3 * 0.98)
    assert summary["peak_memory_mb"] == max(e["peak_memory_mb"] for e in epochs) > 0
    best = max(epochs, key=lambda e: e["val_pesq"])
    assert (summary["best_epoch"], summary["best_score"]) == (best["epoch"], best["val_pesq"])

    model, info = load_model(out / "model.pt")
    assert info["ablation"] == "bsrnn"
    assert info["params"] == summary["params"]


def test_resume_after_an_epoch_gives_identical_weights(reference_run, manifest, tmp_path):
    config = tiny_config()
    with pytest.raises(Interrupt):
        run_training(config, manifest, tmp_path, on_step=interrupt_at(1, 1))
    assert not (tmp_path / "model.pt").exists()  # final outputs only at the end
    summary = run_training(config, manifest, tmp_path)
    assert summary["resumed"] == 1
    assert summary["steps"] == 4
    assert_same_run(reference_run[0], tmp_path)
    resume = [line for line in read_log(tmp_path / "train_log.jsonl") if line["kind"] == "resume"]
    assert resume == [{"kind": "resume", "epoch": 2, "step": 2,
                       "from": str(tmp_path / "checkpoint" / "last.pt")}]


def test_mid_epoch_checkpoint_resumes_at_the_right_step(reference_run, manifest, tmp_path):
    config = tiny_config(checkpoint_minutes=1e-9)  # a checkpoint after every step
    with pytest.raises(Interrupt):
        run_training(config, manifest, tmp_path, on_step=interrupt_at(1, 1))
    assert ckpt.load_checkpoint(tmp_path / "checkpoint" / "last.pt")["run"].step == 1
    run_training(config, manifest, tmp_path)
    assert_same_run(reference_run[0], tmp_path)


def test_sigterm_checkpoints_and_stops_then_resumes(reference_run, manifest, tmp_path):
    def terminate(run: ckpt.RunState) -> None:
        if (run.epoch, run.step) == (0, 1):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(MbsnetError, match="stopped by SIGTERM after step 2; saved .*last.pt"):
        run_training(tiny_config(), manifest, tmp_path, on_step=terminate)
    assert ckpt.load_checkpoint(tmp_path / "checkpoint" / "last.pt")["run"].global_step == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    run_training(tiny_config(), manifest, tmp_path)
    assert_same_run(reference_run[0], tmp_path)


def test_data_workers_do_not_change_the_run(reference_run, manifest, tmp_path):
    """The reference run read its batches in 2 worker processes; here in this process."""
    summary = run_training(tiny_config(data_workers=0), manifest, tmp_path)
    assert summary["data_workers"] == 0
    assert_same_run(reference_run[0], tmp_path)


def numeric_settings() -> tuple:
    return (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
            torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
            torch.backends.cudnn.rnn.fp32_precision, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


@pytest.mark.parametrize("tf32", [True, False])
def test_deterministic_and_tf32_hold_during_the_run_only(reference_run, manifest, tmp_path,
                                                          monkeypatch, tf32):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before, during = numeric_settings(), set()
    summary = run_training(tiny_config(deterministic=True, tf32=tf32), manifest, tmp_path,
                           on_step=lambda run: during.add(numeric_settings()))
    precision = "tf32" if tf32 else "ieee"
    assert during == {(True, True, True, False, precision, precision, precision, ":4096:8")}
    assert numeric_settings() == before
    assert (summary["deterministic"], summary["tf32"]) == (True, tf32)
    assert_same_run(reference_run[0], tmp_path)  # neither changes what the CPU computes


def assert_same_run(expected: Path, got: Path) -> None:
    """Bit-identical final weights, and the same losses step by step (resume excluded)."""
    a, b = (torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (expected, got))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

    def losses(directory):
        return [(line["step"], line["gen_loss"], line["disc_loss"])
                for line in read_log(directory / "train_log.jsonl") if line["kind"] == "step"]
    assert losses(expected) == losses(got)


def test_changed_settings_start_from_scratch(manifest, tmp_path, logged):
    config = tiny_config(epochs=1, checkpoint_minutes=1e-9)
    with pytest.raises(Interrupt):
        run_training(config, manifest, tmp_path, on_step=interrupt_at(0, 1))
    assert (tmp_path / "checkpoint" / "last.pt").is_file()
    summary = run_training(tiny_config(epochs=1, lr=2e-3), manifest, tmp_path)
    assert [record.levelname for record in logged.records
            if "starting from scratch" in record.getMessage()] == ["WARNING"]
    assert summary["resumed"] == 0
    assert summary["steps"] == 2
    assert not any(line["kind"] == "resume" for line in read_log(tmp_path / "train_log.jsonl"))


def poison_reconstruction_loss(monkeypatch, is_bad) -> None:
    """Make the generator's reconstruction loss NaN on the calls n (from 1) where is_bad(n)."""
    calls = {"n": 0}
    real = gan_module.reconstruction_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if is_bad(calls["n"]) else loss

    monkeypatch.setattr(gan_module, "reconstruction_loss", poisoned)


def test_nonfinite_step_is_skipped_and_logged(manifest, tmp_path, monkeypatch):
    poison_reconstruction_loss(monkeypatch, lambda n: n == 2)
    summary = run_training(tiny_config(epochs=1, steps_per_epoch=3), manifest, tmp_path)
    steps = [line for line in read_log(tmp_path / "train_log.jsonl") if line["kind"] == "step"]
    assert [s["skipped"] for s in steps] == [False, True, False]
    assert steps[1]["gen_loss"] is None
    assert "non-finite loss" in steps[1]["reason"]
    epoch = [line for line in read_log(tmp_path / "train_log.jsonl") if line["kind"] == "epoch"]
    assert epoch[0]["skipped_steps"] == 1
    assert summary["skipped_steps"] == 1


def test_consecutive_nonfinite_steps_stop_with_a_clear_error(manifest, tmp_path, monkeypatch):
    poison_reconstruction_loss(monkeypatch, lambda n: n >= 2)
    config = tiny_config(epochs=1, steps_per_epoch=6, max_bad_steps=3, checkpoint_minutes=1e-9)
    last = tmp_path / "checkpoint" / "last.pt"
    with pytest.raises(MbsnetError, match=r"stopped at epoch 1, step 4: 3 consecutive") as info:
        run_training(config, manifest, tmp_path)
    assert f"Last good checkpoint: {last} (epoch 1, after step 3)" in str(info.value)
    assert not (tmp_path / "model.pt").exists()


# -- helper processes -----------------------------------------------------------------

def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process from /proc, None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every process below ``root``."""
    stats = {int(p): proc_stat(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    found: dict[int, int] = {}
    parents = [root]
    while parents:
        parent = parents.pop()
        for pid, stat in stats.items():
            if stat is not None and stat[1] == parent and pid not in found:
                found[pid] = stat[2]
                parents.append(pid)
    return found


def still_running(processes: dict[int, int]) -> list[int]:
    """The processes that exist, are the same ones (start time) and are not zombies."""
    return [pid for pid, start in processes.items()
            if (stat := proc_stat(pid)) is not None and stat[2] == start and stat[0] != "Z"]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
def test_helper_processes_end_with_a_killed_training(manifest, tmp_path):
    """kill -9 of a training (OOM killer, hard time limit) leaves none of its data-loader
    workers, PESQ workers, fork server or resource tracker behind."""
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(tiny_config(epochs=20, steps_per_epoch=20, data_workers=2,
                                             pesq_workers=2)))
    out = tmp_path / "out"
    trainer = subprocess.Popen(
        [sys.executable, "-m", "mbsnet", "train", "--config", str(config), "--ablation", "abl1",
         "--seed", "0", "--out", str(out), "--data", str(manifest), "--threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    helpers: dict[int, int] = {}
    try:
        log, deadline = out / "checkpoint" / "train_log.jsonl", time.monotonic() + 180
        while not (log.is_file() and log.read_text().count('"kind": "step"') >= 2):
            if trainer.poll() is not None:
                pytest.fail(f"the training ended: {trainer.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "no two training steps in 180 s"
            time.sleep(0.2)
        # 2 data-loader workers; from the first step on, the PESQ pool's fork server, its
        # resource tracker and 1-2 workers (started as tasks come)
        helpers = descendants(trainer.pid)
        assert len(helpers) >= 5
        trainer.kill()
        trainer.wait()
        deadline = time.monotonic() + 4  # the DataLoader's own watchdog needs up to 5 s
        while still_running(helpers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert still_running(helpers) == []
    finally:
        trainer.kill()
        for pid in still_running(helpers):
            os.kill(pid, signal.SIGKILL)


# -- bad input ------------------------------------------------------------------------

def test_missing_manifest_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="manifest .*missing.tsv does not exist"):
        run_training(tiny_config(), tmp_path / "missing.tsv", tmp_path / "out")


def test_unknown_ablation_is_a_config_error(manifest, tmp_path):
    with pytest.raises(ConfigError, match="unknown ablation 'nope'"):
        run_training(tiny_config(), manifest, tmp_path / "out", name="nope")


def test_unwritable_output_directory_is_a_clear_error(manifest, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(MbsnetError, match=f"cannot write to {blocker / 'run' / 'checkpoint'}"):
        run_training(tiny_config(), manifest, blocker / "run")


def test_cli_trains(manifest, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(tiny_config(epochs=1, steps_per_epoch=1)))
    out = tmp_path / "abl1" / "seed3"
    assert cli.main(["train", "--config", str(config), "--ablation", "abl1", "--seed", "3",
                     "--out", str(out), "--data", str(manifest), "--threads", "1"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["ablation"] == "abl1"
    assert summary["seed"] == 3
    assert summary["steps"] == 1
    assert summary["scan"] == scan_implementation(torch.device("cpu"))  # the CPU's scan
    assert "[abl1 seed3] done: 1 steps" in capsys.readouterr().out


def test_cli_device_overrides_the_ablations_training_device(manifest, tmp_path, monkeypatch,
                                                             capsys):
    """training.device cuda on a machine without CUDA stops; --device cpu trains on the CPU
    (and --config defaults to config.yaml in the working directory)."""
    monkeypatch.chdir(tmp_path)
    config = tiny_config(epochs=1, steps_per_epoch=1)
    config["ablations"]["abl1"]["training"] = {"device": "cuda"}
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    base = ["train", "--ablation", "abl1", "--seed", "0", "--data", str(manifest),
            "--threads", "1"]
    assert cli.main(base + ["--out", "a"]) == 1
    assert "cuda" in capsys.readouterr().err
    assert cli.main(base + ["--out", "b", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "b" / "train_summary.json").read_text())["device"] == "cpu"
    assert cli.main(base + ["--out", "c", "--device", "cpu", "--ablation", "nope"]) == 1
    assert "unknown ablation 'nope'" in capsys.readouterr().err


def test_cli_reports_bad_input_without_traceback(manifest, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(tiny_config()))
    base = ["train", "--config", str(config), "--seed", "0", "--out", str(tmp_path / "out")]
    assert cli.main(base + ["--ablation", "nope", "--data", str(manifest)]) == 1
    assert "unknown ablation 'nope'" in capsys.readouterr().err
    assert cli.main(base + ["--ablation", "bsrnn", "--data", str(tmp_path / "no.tsv")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mbsnet train: error: data manifest")
    assert "Traceback" not in err


def test_negative_seed_and_zero_threads_are_clear_errors(manifest, tmp_path):
    with pytest.raises(ConfigError, match="seed must be an integer >= 0.*got -1"):
        loop.train(tiny_config(), "bsrnn", -1, tmp_path / "a", manifest, threads=1)
    with pytest.raises(ConfigError, match="threads must be at least 1, got 0"):
        loop.train(tiny_config(), "bsrnn", 0, tmp_path / "b", manifest, threads=0)


def test_a_rerun_removes_what_a_killed_run_left_half_written(manifest, tmp_path, logged):
    out = tmp_path / "run"
    litter = [out / ".model.pt.abc123.tmp", out / "checkpoint" / ".last.pt.def456.tmp"]
    for path in litter:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a checkpoint")
    run_training(tiny_config(epochs=1, steps_per_epoch=1), manifest, out)
    assert not any(path.exists() for path in litter)
    assert f"removed {litter[0]}, left half-written by an interrupted run" in logged.messages


def test_resuming_a_finished_run_says_so(manifest, tmp_path, logged):
    out = tmp_path / "run"
    config = tiny_config(epochs=1, steps_per_epoch=1)
    run_training(config, manifest, out)
    (out / "model.pt").unlink()  # as if killed while writing the outputs
    logged.clear()
    run_training(config, manifest, out)
    printed = "\n".join(logged.messages)
    assert "all 1 epochs done, writing the outputs" in printed
    assert "epoch 2" not in printed


# -- the discriminator only where the generator uses it ----------------------------------

@pytest.mark.parametrize(("metricgan_from", "epochs", "first"),
                         [(0.5, 2, 1), (0.5, 3, 2), (0.0, 3, 0), (0.99, 3, None), (1.0, 3, None)])
def test_first_metric_epoch(metricgan_from, epochs, first):
    settings = {"metricgan_from": metricgan_from, "epochs": epochs}
    assert first_metric_epoch(settings) == first
    # the loop's rule: epoch e uses the term when e >= metricgan_from x epochs
    assert [e >= metricgan_from * epochs for e in range(epochs)] == \
        [first is not None and e >= first for e in range(epochs)]


def test_no_metric_term_no_discriminator_training_and_the_same_generator(manifest, tmp_path,
                                                                         monkeypatch, logged):
    """metricgan_from 1.0: the discriminator keeps its initial weights and no step is logged
    as a skipped discriminator step; the generator ends bit-identical to a run that trains
    the discriminator beside it without using it: leaving it untrained saves time and changes
    nothing the generator learns."""
    config = tiny_config(metricgan_from=1.0)
    run_training(config, manifest, tmp_path / "off")
    assert any("the discriminator is not trained" in m for m in logged.messages)
    # the same run training the discriminator every step, the term never used
    monkeypatch.setattr(loop, "first_metric_epoch", lambda settings: settings["epochs"])
    run_training(config, manifest, tmp_path / "on")

    states = {name: torch.load(tmp_path / name / "checkpoint" / "last.pt",
                               weights_only=False)["trainer"] for name in ("off", "on")}
    off, on = states["off"], states["on"]
    assert off["generator"].keys() == on["generator"].keys()
    for key, value in off["generator"].items():
        assert torch.equal(value, on["generator"][key]), key
    assert not off["disc_optimizer"]["state"]
    assert on["disc_optimizer"]["state"]
    changed = [key for key, value in off["discriminator"].items()
               if not torch.equal(value, on["discriminator"][key])]
    assert changed  # the trained one moved; the untrained one is at its initialisation
    logs = {name: read_log(tmp_path / name / "train_log.jsonl") for name in ("off", "on")}
    off_steps = [s for s in logs["off"] if s["kind"] == "step"]
    assert all(s["disc_loss"] is None for s in off_steps)
    assert not any("reason" in s for s in off_steps)
    assert all(s["disc_loss"] is not None for s in logs["on"] if s["kind"] == "step")
    summaries = {name: json.loads((tmp_path / name / "train_summary.json").read_text())
                 for name in ("off", "on")}
    assert summaries["off"]["disc_skipped_steps"] == 0
    assert summaries["off"]["best_score"] == summaries["on"]["best_score"]


def test_validation_scores_the_evaluations_waveform_from_one_forward_pass(manifest,
                                                                          monkeypatch):
    trainer = make_trainer("abl1")
    dataset = EvalDataset(manifest, split="valid")
    calls = []
    forward = trainer.generator.forward
    monkeypatch.setattr(trainer.generator, "forward",
                        lambda spec: calls.append(spec.shape) or forward(spec))
    scored = []
    monkeypatch.setattr(trainer.pesq, "scores",
                        lambda refs, degraded: scored.extend(degraded) or np.full(len(refs), 2.0))
    val_loss, val_pesq = loop.validate(trainer, dataset)
    assert len(calls) == len(dataset) == len(scored) == 1
    monkeypatch.undo()
    noisy = torch.as_tensor(dataset[0]["noisy"], dtype=torch.float32)
    expected = enhance_waveform(trainer.generator, noisy).numpy()
    np.testing.assert_array_equal(scored[0], expected)
    assert val_pesq == 2.0
    assert math.isfinite(val_loss)


# -- TensorBoard -------------------------------------------------------------------------

def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of a run's event files, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def test_tensorboard_shows_the_runs_log_once_after_a_resume(manifest, tmp_path):
    """Events of steps redone after a resume are dropped: each step once, with the values
    of train_log.jsonl; epochs at the step that ended them."""
    config = tiny_config(tensorboard=True)
    with pytest.raises(Interrupt):   # after step 3; the last checkpoint is epoch 1's (step 2)
        run_training(config, manifest, tmp_path, on_step=interrupt_at(1, 1))
    assert [s for s, _ in scalars(tmp_path / "tensorboard")["train/gen_loss"]] == [1, 2, 3]
    run_training(config, manifest, tmp_path)

    series = scalars(tmp_path / "tensorboard")
    log = read_log(tmp_path / "train_log.jsonl")
    steps = [line for line in log if line["kind"] == "step"]
    epochs = [line for line in log if line["kind"] == "epoch"]
    assert series["train/gen_loss"] == [(s["step"], pytest.approx(s["gen_loss"], rel=1e-6))
                                        for s in steps]
    assert [s for s, _ in series["train/lr"]] == [1, 2, 3, 4]
    assert series["train/skipped"] == [(step, 0.0) for step in (1, 2, 3, 4)]
    assert series["epoch/val_pesq"] == [(2 * e["epoch"], pytest.approx(e["val_pesq"], rel=1e-6))
                                        for e in epochs]
    assert {"train/disc_loss", "train/step_seconds", "epoch/val_loss", "epoch/train_loss",
            "epoch/peak_memory_mb", "epoch/seconds", "epoch/skipped_steps"} <= set(series)


def test_tensorboard_off_writes_nothing_and_on_without_the_package_stops(manifest, tmp_path,
                                                                          monkeypatch):
    run_training(tiny_config(epochs=1, steps_per_epoch=1, tensorboard=False), manifest,
                 tmp_path / "off")
    assert not (tmp_path / "off" / "tensorboard").exists()
    monkeypatch.setattr(tensorboard_module, "available", lambda: False)
    with pytest.raises(ConfigError, match="training.tensorboard is true but the tensorboard "
                                          "package is not installed"):
        run_training(tiny_config(tensorboard=True), manifest, tmp_path / "on")
    assert not (tmp_path / "on").exists()
    # absent: on exactly when the package imports
    assert tensorboard_module.wanted({}) is False

"""Device placement, checked without a GPU: every training and inference path runs on the
``meta`` device under a dispatch mode that fails on any op with a tensor argument or
result anywhere else. An op mixing devices, or a tensor made on the CPU by default (a
``torch.zeros(n)`` without ``device=``), would fail on CUDA; here it fails on meta.

Explicit transfers (``.to(device)``, ``.cpu()``, ``torch.as_tensor(..., device=)``) are
allowed and recorded, so the tests can say exactly which ones a path makes. Meta tensors
have no values: ``.item()`` and ``torch.equal`` get stand-ins (recorded as reads, the host
syncs a CUDA run would make), and a meta tensor copied to the CPU arrives as zeros.

Autocast has no meta variant, so the bf16 path runs here as float32; the dtypes it gives
each layer are checked on the CPU (tests/test_train.py, "precision").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mbsnet.audio import stft
from mbsnet.config import ablation_config
from mbsnet.data.datasets import EvalDataset
from mbsnet.evaluation.enhance import enhance_waveform
from mbsnet.train.gan import EnhancementGan
from mbsnet.train.loop import validate
from mbsnet.train.losses import compressed_magnitude, discriminator_loss, reconstruction_loss

from .tiny_training import STRUCTURES, tiny_config

META = torch.device("meta")
aten = torch.ops.aten


class MetaOnly(TorchDispatchMode):
    """Fails on any op with a tensor argument or result off the meta device, except
    explicit transfers (recorded in ``transfers`` as (from, to, shape)) and host code on
    host tensors only; ops that need values return stand-ins (recorded in ``reads``).
    ``suspended()`` lets PyTorch's own code run unchecked (Adam keeps its step counts on
    the CPU by design)."""

    def __init__(self) -> None:
        super().__init__()
        self.transfers: list[tuple[str, str, tuple[int, ...]]] = []
        self.reads: list[str] = []
        self._suspended = False

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        self._suspended, previous = True, self._suspended
        try:
            yield
        finally:
            self._suspended = previous

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._suspended or func is aten.lift_fresh.default:  # host data made a tensor
            return func(*args, **kwargs)
        if func is aten._to_copy.default and "device" in kwargs:
            source, target = args[0].device, torch.device(kwargs["device"])
            if source != target:
                self.transfers.append((source.type, target.type, tuple(args[0].shape)))
                if source.type == "meta":  # no values to copy
                    return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype,
                                       device=target)
                return func(*args, **kwargs)
        devices = {str(t.device) for t in tree_leaves((args, kwargs))
                   if isinstance(t, torch.Tensor)}
        if devices == {"cpu"}:  # host code working on host data (PESQ's inputs, ...)
            return func(*args, **kwargs)
        elsewhere = devices - {"meta"}
        assert not elsewhere, f"{func} got tensors on {sorted(elsewhere)} (all must be on meta)"
        if func is aten._local_scalar_dense.default:  # .item(), bool(tensor)
            self.reads.append("item")
            return True if args[0].dtype == torch.bool else 1
        if func is aten.equal.default:  # in torch.istft: "does the window envelope vanish?"
            self.reads.append("equal")
            return False
        out = func(*args, **kwargs)
        elsewhere = {str(t.device) for t in tree_leaves(out)
                     if isinstance(t, torch.Tensor) and t.device != META}
        assert not elsewhere, f"{func} made tensors on {sorted(elsewhere)} (all must be on meta)"
        return out


def meta_trainer(name: str, **training) -> EnhancementGan:
    config = tiny_config(**training)
    torch.manual_seed(0)
    return EnhancementGan(ablation_config(config, name), config, META)


def waves(batch: int = 2, seconds: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (batch, int(seconds * 16000))
    return torch.empty(shape, device=META), torch.empty(shape, device=META)


def test_the_check_catches_a_cpu_tensor_and_a_device_mix():
    x, on_cpu = torch.empty(3, device=META), torch.ones(3)
    with pytest.raises(AssertionError, match="made tensors on"), MetaOnly():
        torch.zeros(3)
    with pytest.raises(AssertionError, match=r"got tensors on \['cpu'\]"), MetaOnly():
        x + on_cpu
    with MetaOnly() as mode:
        x.cpu()
        torch.as_tensor(np.ones(2), device=META)
        assert x.sum().item() == 1
    assert mode.transfers == [("meta", "cpu", (3,)), ("cpu", "meta", (2,))]
    assert mode.reads == ["item"]


@pytest.mark.parametrize("scan", ["chunked", "parallel"])
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_generator_forward_and_backward_stay_on_the_device(name, scan, monkeypatch):
    monkeypatch.setenv("MBSNET_SCAN", scan)
    trainer = meta_trainer(name)
    clean, noisy = waves()
    with MetaOnly() as mode:
        clean_spec, noisy_spec = stft(clean), stft(noisy)
        est = trainer.enhance_spec(noisy_spec)
        trainer.generator_loss(clean_spec, est, use_metric_loss=True).backward()
    assert est.shape == noisy_spec.shape
    assert est.dtype == torch.complex64
    grads = [p.grad for p in trainer.generator.parameters()]
    assert all(g is not None for g in grads)
    assert {g.device for g in grads} == {META}
    assert mode.transfers == []
    assert mode.reads == []


def test_gradient_checkpointing_stays_on_the_device():
    trainer = meta_trainer("bsrnn", gradient_checkpointing=True)
    clean, noisy = waves()
    with MetaOnly() as mode:
        clean_spec = stft(clean)
        est = trainer.enhance_spec(stft(noisy))
        trainer.generator_loss(clean_spec, est, use_metric_loss=False).backward()
    assert mode.transfers == []
    assert mode.reads == []


def test_discriminator_and_losses_stay_on_the_device():
    trainer = meta_trainer("abl1")
    clean, est, noisy = (torch.empty(2, 257, 33, dtype=torch.complex64, device=META,
                                     requires_grad=True) for _ in range(3))
    targets = torch.empty(2, device=META), torch.empty(2, device=META)
    with MetaOnly() as mode:
        mags = [compressed_magnitude(s, 0.3) for s in (clean, est, noisy)]
        reconstruction_loss(est, clean, trainer.loss_cfg).backward()
        discriminator_loss(trainer.discriminator, *mags, *targets).backward()
    assert mode.transfers == []
    assert mode.reads == []


@pytest.mark.parametrize("name", ["bsrnn", "optimized"])
def test_a_whole_training_step_moves_only_the_pesq_data(name, monkeypatch):
    """The PESQ targets are the one planned round trip: the three waveforms [B, S] go to
    the host for PESQ, the 2B targets come back."""
    trainer = meta_trainer(name)
    monkeypatch.setattr(trainer.pesq, "scores", lambda refs, degs: np.full(len(refs), 2.0))
    clean, noisy = waves()
    mode = MetaOnly()
    for optimizer in (trainer.gen_optimizer, trainer.disc_optimizer):
        monkeypatch.setattr(optimizer, "step", _suspend(mode, optimizer.step))
    with mode:
        result = trainer.train_step(clean, noisy, use_metric_loss=True)
    assert not result["skipped"]
    assert result["disc_reason"] is None
    assert mode.transfers == [("meta", "cpu", tuple(clean.shape))] * 3 + \
        [("cpu", "meta", (2 * clean.shape[0],))]
    assert all(p.device == META for p in trainer.generator.parameters())
    assert all(s["exp_avg"].device == META for s in trainer.gen_optimizer.state.values())


def _suspend(mode: MetaOnly, step):
    def unchecked(*args, **kwargs):
        with mode.suspended():
            return step(*args, **kwargs)
    return unchecked


@pytest.mark.parametrize("name", ["bsrnn", "abl3"])
def test_enhancement_stays_on_the_device(name):
    trainer = meta_trainer(name)
    trainer.generator.eval()
    wave = torch.empty(3000, device=META)
    with MetaOnly() as mode:
        out = enhance_waveform(trainer.generator, wave)
    assert out.shape == wave.shape
    assert out.device == META
    assert mode.transfers == []


def test_validation_moves_each_utterance_in_and_its_result_out(manifest):
    dataset = EvalDataset(manifest, split="valid")
    trainer = meta_trainer("abl2")
    with MetaOnly() as mode:
        validate(trainer, dataset)
    samples = (int(0.7 * 16000),)
    assert mode.transfers == [("cpu", "meta", samples)] * 2 + [("meta", "cpu", samples)] * 2

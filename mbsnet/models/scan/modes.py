"""The arithmetic of one step of the selective scan in each mode, forward and backward, shared
by the implementations of :mod:`mbsnet.models.scan`.

``exact`` is Mamba-1's S6:

    a_t = exp(Δ_t·A)      u_t = Δ_t·x_t·B_t      h_t = a_t·h_{t-1} + u_t
    y_t = C_t·h_t + D·x_t

``as_coded`` is the arithmetic of the original research code, its six clamps included, and
its skip gain: ``B, L, D = x.shape`` there rebinds D to the integer ``dim``, so the learned D
is unused:

    a_t = clamp(exp(clamp(Δ_t·A, -10, 0)), 0, 0.999)
    u_t = clamp(clamp(Δ_t, 0, 1)·B_t, -10, 10)·x_t
    h_t = clamp(a_t·h_{t-1} + u_t, -100, 100)
    y_t = clamp(C_t·h_t + dim·x_t, -50, 50)

Gradients follow torch.clamp's convention: they pass where min <= value <= max and are zero
elsewhere. A clamp that cannot change any value of a call costs nothing: :class:`Clamps`
says which of the four input clamps can (the state clamp is checked by the implementations
as they go: where no state leaves ±100, the clamped recurrence is the unclamped one).

Shapes: Δ, x ``[..., dim]``; A ``[dim, N]``; B, C ``[..., N]``; a, u, h and the adjoint λ
(the gradient reaching u_t) ``[..., dim, N]``, written into caller-owned buffers so that
each implementation decides the memory. Masks of such tensors are float 0/1 tensors: on
the CPU, comparisons into float and products with them are several times faster than with
bool.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

EXACT, AS_CODED = "exact", "as_coded"
SCAN_MODES = (EXACT, AS_CODED)

EXPONENT_MIN = -10.0   # as_coded: Δ·A clamped to [-10, 0] before exp
DECAY_MAX = 0.999      # as_coded: exp(Δ·A) clamped to [0, 0.999]
INPUT_LIMIT = 10.0     # as_coded: clamp(Δ, 0, 1)·B clamped to ±10
STATE_LIMIT = 100.0    # as_coded: h clamped to ±100 after every step
STATE_SAFE = STATE_LIMIT * (1 - 1e-3)  # a bound of |h| below it: rounding cannot reach ±100
OUTPUT_LIMIT = 50.0    # as_coded: y clamped to ±50

SLICE = 1 << 18  # elements a piece when a [batch, length, dim] tensor is processed in pieces

# exp(-0.002) = 0.998002: below it, exp's rounding error (ulps, about 1e-7) cannot reach 0.999
DECAY_SAFE_EXPONENT = -0.002


def check_mode(mode: str) -> None:
    """Raise ValueError unless ``mode`` is one of :data:`SCAN_MODES`."""
    if mode not in SCAN_MODES:
        raise ValueError(f"scan mode must be one of {', '.join(SCAN_MODES)}; got {mode!r}")


class Clamps(NamedTuple):
    """Which input clamps can change a value in one scan call: none in exact mode."""
    exponent: bool = False  # some Δ·A < -10 or > 0
    decay: bool = False     # some Δ·A > -0.002, so exp(Δ·A) may exceed 0.999
    delta: bool = False     # some Δ outside [0, 1]
    input: bool = False     # some |B| > 10 (|clamp(Δ, 0, 1)·B| <= |B|, rounding included)


def binding_clamps(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, mode: str) -> Clamps:
    """The :class:`Clamps` that can bind for these inputs (a clamp flagged may still change
    nothing; one not flagged cannot).

    Δ·A is monotone in Δ for each A[d, n], and so is its rounding: it lies between its values
    at the smallest and the largest Δ.
    """
    if mode == EXACT or delta.numel() == 0:
        return Clamps()
    delta_lo, delta_hi = extremes(delta)
    z_lo, z_hi = extremes(torch.stack((delta_lo * A, delta_hi * A)))
    b_max = max_abs(B)
    return Clamps(exponent=z_lo < EXPONENT_MIN or z_hi > 0.0, decay=z_hi > DECAY_SAFE_EXPONENT,
                  delta=delta_lo < 0.0 or delta_hi > 1.0, input=b_max > INPUT_LIMIT)


# --- forward ---------------------------------------------------------------------------------

def decay(delta: torch.Tensor, A: torch.Tensor, clamps: Clamps,
          out: torch.Tensor) -> torch.Tensor:
    """a = exp(Δ·A) with its clamps, into ``out``."""
    torch.mul(delta[..., None], A, out=out)
    if clamps.exponent:
        out.clamp_(EXPONENT_MIN, 0.0)
    out.exp_()
    return out.clamp_(0.0, DECAY_MAX) if clamps.decay else out


def decay_and_slope(delta: torch.Tensor, A: torch.Tensor, clamps: Clamps, out: torch.Tensor,
                    slope: torch.Tensor | None,
                    scratch: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """a into ``out`` and ∂a/∂(Δ·A) into ``slope``, ``scratch`` being a free buffer like it;
    where no clamp binds, the slope is a itself and the buffers go unused. None for either
    buffer: allocate it if it is needed."""
    if not clamps.exponent:
        e = torch.mul(delta[..., None], A, out=out).exp_()
        if not clamps.decay or extremes(e)[1] <= DECAY_MAX:
            return e, e
        slope = torch.le(e, DECAY_MAX, out=_or_new(slope, out))
    else:
        z = torch.mul(delta[..., None], A, out=_or_new(slope, out))
        e = torch.clamp(z, EXPONENT_MIN, 0.0, out=out).exp_()
        slope = z.ge_(EXPONENT_MIN)  # z > 0 is caught below: there e = exp(0) = 1 > 0.999
        if clamps.decay:
            slope.mul_(torch.le(e, DECAY_MAX, out=_or_new(scratch, out)))
    slope.mul_(e)
    return (e.clamp_(0.0, DECAY_MAX) if clamps.decay else e), slope


def drive(delta: torch.Tensor, x: torch.Tensor, B: torch.Tensor, clamps: Clamps,
          out: torch.Tensor) -> torch.Tensor:
    """u = Δ·x·B with its clamps, into ``out``."""
    p = delta.clamp(0.0, 1.0) if clamps.delta else delta
    if not clamps.input:
        return torch.mul((p * x)[..., None], B[..., None, :], out=out)
    torch.mul(p[..., None], B[..., None, :], out=out)
    return out.clamp_(-INPUT_LIMIT, INPUT_LIMIT).mul_(x[..., None])


def state_growth(delta: torch.Tensor, x: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """min(max|Δ_t|, 1)·max|x_t|·max|B_t| over channels and states, per sequence and step.

    As coded it bounds |u_t| (its clamps only shrink it), and with 0 <= a_t <= 1,
    |h_t| <= |h_{t-1}| + |u_t|: max|h| entering a run of steps plus the run's sum of these
    bounds the run's states (up to rounding: compare with :data:`STATE_SAFE`).
    """
    def max_abs_last(t: torch.Tensor) -> torch.Tensor:
        return torch.maximum(t.amax(-1), t.amin(-1).neg_())  # no temporary as large as t

    # |clamp(Δ, 0, 1)| <= min(|Δ|, 1)
    return max_abs_last(delta).clamp_(max=1.0) * max_abs_last(x) * max_abs_last(B)


def run_sums(growth: torch.Tensor, steps: int) -> list[float]:
    """Per run of ``steps`` steps, the sum over the run of :func:`state_growth`'s maximum
    over the sequences (``growth``: [sequences, length]; zeros on meta tensors)."""
    per_step = growth.amax(0)
    runs = -(-per_step.shape[0] // steps)
    if per_step.is_meta:
        return [0.0] * runs
    padded = per_step.new_zeros(runs * steps)
    padded[:per_step.shape[0]] = per_step
    return padded.view(runs, steps).sum(1).tolist()


def max_abs(t: torch.Tensor) -> float:
    """max|t| (0 on meta tensors)."""
    lo, hi = extremes(t)
    return max(-lo, hi)


def finish_(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor, mode: str) -> torch.Tensor | None:
    """Turn y = C·h into the scan's output in place: add the skip term (and, as coded, clamp).

    Returns what :func:`output_grad` needs: None (exact), or where the output clamp let the
    gradient through (as_coded; bool, a quarter of y's memory).
    """
    if mode == EXACT:
        y.addcmul_(x, D)
        return None
    y.add_(x, alpha=x.shape[-1])
    keep = torch.empty(y.shape, dtype=torch.bool, device=y.device)
    # a float comparison and a cast, slice by slice into one small float buffer: on the CPU
    # several times faster than a comparison into bool
    work = y.new_empty(min(SLICE, y.numel()))
    for y_s, keep_s in zip(y.view(-1).split(SLICE), keep.view(-1).split(SLICE), strict=True):
        keep_s.copy_(torch.abs(y_s, out=work[:y_s.numel()]).le_(OUTPUT_LIMIT))
    y.clamp_(-OUTPUT_LIMIT, OUTPUT_LIMIT)
    return keep


# --- backward --------------------------------------------------------------------------------

def skip_param_grad(gy: torch.Tensor, x: torch.Tensor, mode: str) -> torch.Tensor | None:
    """D's gradient, Σ gy·x over batch and time (None as coded: D is unused there)."""
    return (gy * x).sum((0, 1)) if mode == EXACT else None


def output_grad(gy: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """The gradient reaching y before the output clamp (``keep`` from :func:`finish_`)."""
    # as uint8: on the CPU a product with it is faster than with bool
    return gy if keep is None else gy * keep.view(torch.uint8)


def add_skip_grad_(gx: torch.Tensor, g: torch.Tensor, D: torch.Tensor, mode: str) -> torch.Tensor:
    """gx += the skip term's share of x's gradient (``g`` from :func:`output_grad`)."""
    if mode == EXACT:
        return gx.addcmul_(g, D)
    return gx.add_(g, alpha=gx.shape[-1])


def decay_grads(w: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                work: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of Δ and A from w = the gradient reaching Δ·A (``work``: a free buffer
    shaped like w)."""
    *lead, dim, n = w.shape
    k = math.prod(lead)
    gdelta = torch.mul(w, A, out=work).view(k * dim, n).mv(A.new_ones(n)).view(*lead, dim)
    gA = torch.bmm(delta.reshape(k, dim).t().unsqueeze(1), w.view(k, dim, n).transpose(0, 1))
    return gdelta, gA.squeeze(1)


def drive_grads(lam: torch.Tensor, delta: torch.Tensor, x: torch.Tensor, B: torch.Tensor,
                clamps: Clamps, work: torch.Tensor | None,
                scratch: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Gradients (x, Δ, B) of u from the adjoint λ. Where the input clamp can bind, ``lam``
    is overwritten and ``work`` and ``scratch`` (free buffers like it) are used."""
    p = delta.clamp(0.0, 1.0) if clamps.delta else delta
    if not clamps.input:
        lam_B = over_states(lam, B)
        gx = p * lam_B
    else:
        *lead, dim, n = lam.shape
        b = torch.mul(p[..., None], B[..., None, :], out=work)
        b_free = torch.abs(b, out=scratch).le_(INPUT_LIMIT)
        b.clamp_(-INPUT_LIMIT, INPUT_LIMIT)
        gx = torch.mul(lam, b, out=work).view(-1, n).mv(B.new_ones(n)).view(*lead, dim)
        lam_B = over_states(lam.mul_(b_free), B)
    gdelta = x * lam_B
    if clamps.delta:
        gdelta.mul_(p == delta)
    return gx, gdelta, over_channels(p * x, lam)


# --- contractions over one of the last two axes ----------------------------------------------

def over_states(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Σ_n M[..., d, n] · v[..., n] -> [..., d] (one batched matrix product)."""
    *lead, dim, n = M.shape
    k = math.prod(lead)
    return torch.bmm(v.reshape(k, 1, n), M.view(k, dim, n).transpose(1, 2)).view(*lead, dim)


def over_channels(v: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Σ_d v[..., d] · M[..., d, n] -> [..., n]."""
    *lead, dim, n = M.shape
    k = math.prod(lead)
    return torch.bmm(v.reshape(k, 1, dim), M.view(k, dim, n)).view(*lead, n)


def _or_new(buffer: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(like) if buffer is None else buffer


def extremes(t: torch.Tensor) -> tuple[float, float]:
    """(min, max) of t; (0, 0) on meta tensors, which carry no values (op counting)."""
    if t.is_meta:
        return 0.0, 0.0
    lo, hi = torch.aminmax(t)
    return lo.item(), hi.item()

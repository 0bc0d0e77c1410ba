"""ParallelScan: the selective scan in few, large operations, shaped for a GPU.

The recurrence h_t = a_t·h_{t-1} + u_t is solved over time by a Hillis–Steele prefix scan:
ceil(log2(length)) rounds, each a handful of whole-tensor operations on
[part, length, dim, d_state] (products of decays only, no division, so it is as stable as
the sequential loop). Backward recomputes the states the same way and solves the adjoint
recurrence λ_t = g_t·C_t + a_{t+1}·λ_{t+1} by the same scan run backwards in time; nothing of
size [batch, length, dim, d_state] is saved. The batch is split into as few parts as keep
every work tensor within WORKSET elements.

As coded, the state clamp (±100 after every step) is not associative, but where no state of
the unclamped scan leaves [-100, 100] the clamped recurrence equals it exactly (by induction
over the steps); otherwise that call runs the sequential :mod:`mbsnet.models.scan.chunked` scan.
"""

from __future__ import annotations

import torch

from . import modes as sm
from .chunked import scan_backward, scan_forward

WORKSET = 1 << 26
"""Most elements of one [part, length, dim, d_state] work tensor (256 MiB in float32);
forward holds three such tensors, backward five (six as coded where the 0.999 clamp on the
decay holds, or Δ·A leaves [-10, 0])."""


def _parts(batch: int, per_sequence: int) -> list[slice]:
    """As few equal batch slices as keep part·per_sequence within WORKSET."""
    count = -(-batch * per_sequence // WORKSET)
    size = -(-batch // max(1, count))
    return [slice(b, min(b + size, batch)) for b in range(0, batch, size)]


def prefix_scan_(a: torch.Tensor, u: torch.Tensor, work: torch.Tensor,
                 reverse: bool = False) -> torch.Tensor:
    """Solve u_t <- u_t + a_t·u_{t-1} (reverse: u_t + a_t·u_{t+1}) over dim 1 in place.

    Round k combines every element with the one k steps before it (u += a·u_shifted,
    a *= a_shifted), so after the rounds k = 1, 2, 4, ... each element has absorbed the whole
    prefix. ``a`` is overwritten (with products of decays); ``work`` is scratch shaped like u.
    """
    length = u.shape[1]
    k = 1
    while k < length:
        n = length - k
        into, src = (0, k) if reverse else (k, 0)
        tmp = work.narrow(1, 0, n)
        a_into = a.narrow(1, into, n)
        u.narrow(1, into, n).add_(torch.mul(a_into, u.narrow(1, src, n), out=tmp))
        if 2 * k < length:  # the last round's products would not be used
            a_into.copy_(torch.mul(a_into, a.narrow(1, src, n), out=tmp))
        k *= 2
    return u


def _buffers(x: torch.Tensor, A: torch.Tensor, size: int, count: int) -> list[torch.Tensor]:
    length = x.shape[1]
    return [x.new_empty(size, length, *A.shape) for _ in range(count)]


def parallel_forward(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                     C: torch.Tensor, mode: str, clamps: sm.Clamps) -> torch.Tensor | None:
    """y = C·h for every step (no autograd); None as coded when a state leaves ±100."""
    batch, length, dim = x.shape
    y = x.new_empty(batch, length, dim)
    parts = _parts(batch, length * A.numel())
    a_buf, h_buf, work_buf = _buffers(x, A, parts[0].stop, 3)
    peaks = []
    for p in parts:
        nb = p.stop - p.start
        a, h = sm.decay(delta[p], A, clamps, a_buf[:nb]), h_buf[:nb]
        prefix_scan_(a, sm.drive(delta[p], x[p], B[p], clamps, h), work_buf[:nb])
        if mode == sm.AS_CODED:
            peaks.append(torch.stack(torch.aminmax(h)).abs_().amax())
        y[p] = sm.over_states(h, C[p])
    if peaks:
        _, hi = sm.extremes(torch.stack(peaks))  # one synchronisation per call
        if hi > sm.STATE_LIMIT:
            return None
    return y


def parallel_backward(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                      C: torch.Tensor, D: torch.Tensor, gy: torch.Tensor,
                      keep: torch.Tensor | None, mode: str,
                      clamps: sm.Clamps) -> tuple[torch.Tensor, ...]:
    """Gradients (x, Δ, A, B, C) of the output before its skip term's D (``keep``: see
    :func:`~mbsnet.models.scan.modes.finish_`); as coded only where no state clamp held."""
    grads = [torch.empty_like(t) for t in (x, delta, B, C)]
    gx, gdelta, gB, gC = grads
    gA = torch.zeros_like(A)
    parts = _parts(x.shape[0], x.shape[1] * A.numel())
    bufs = _buffers(x, A, parts[0].stop, 5)
    for p in parts:
        nb = p.stop - p.start
        a_buf, h, shifted, work, lam = (b[:nb] for b in bufs)
        d_p, x_p, B_p = delta[p], x[p], B[p]
        g_p = sm.output_grad(gy[p], None if keep is None else keep[p])
        a, slope = sm.decay_and_slope(d_p, A, clamps, a_buf, None, work)
        sm.drive(d_p, x_p, B_p, clamps, h)
        prefix_scan_(shifted.copy_(a), h, work)
        gC[p] = sm.over_channels(g_p, h)
        # λ_t = g_t·C_t + a_{t+1}·λ_{t+1}: the same scan backwards, over the decays shifted
        torch.mul(g_p[..., None], C[p][..., None, :], out=lam)
        shifted[:, :-1] = a[:, 1:]
        shifted[:, -1] = 0.0
        prefix_scan_(shifted, lam, work, reverse=True)
        # w = λ_t·(∂a_t/∂(Δ_t·A))·h_{t-1}, the gradient reaching Δ_t·A (h_{-1} = 0)
        w = shifted
        torch.mul(slope[:, 1:], h[:, :-1], out=w[:, 1:])
        w[:, 0] = 0.0
        w.mul_(lam)
        gdelta_a, gA_p = sm.decay_grads(w, d_p, A, work=h)
        gA += gA_p
        gx_p, gdelta_u, gB[p] = sm.drive_grads(lam, d_p, x_p, B_p, clamps, h, w)
        gx[p] = sm.add_skip_grad_(gx_p, g_p, D, mode)
        gdelta[p] = gdelta_a.add_(gdelta_u)
    return gx, gdelta, gA, gB, gC


class ParallelScan(torch.autograd.Function):
    """The selective scan, in either mode, with exact gradients, in a few large operations
    per call; saves only
    its inputs and, as coded, where the output clamp held (and the chunk-boundary states
    when the call fell back to the sequential scan).

    apply(x, delta, A, B, C, D, mode); all tensors of one floating dtype, in the layout of
    :func:`mbsnet.models.scan.selective_scan`.
    """

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, mode):
        return scan_forward(ctx, x, delta, A, B, C, D, mode, whole=parallel_forward)

    @staticmethod
    def backward(ctx, gy):
        return scan_backward(ctx, gy, whole=parallel_backward)

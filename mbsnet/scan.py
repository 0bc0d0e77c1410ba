"""The Mamba-1 (S6) selective scan.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * x_t
    y_t = C_t . h_t + D * x_t

Layout (channels last, as the Linear layers produce it):
    x, delta: [batch, length, dim]   (delta already positive, i.e. after softplus)
    A:        [dim, d_state]         (negative: A = -exp(A_log))
    B, C:     [batch, length, d_state]
    D:        [dim]
    returns y [batch, length, dim] in float32.

`selective_scan` is what the Mamba block calls. On CUDA with `mamba_ssm` importable it uses
that package's fused kernel; everywhere else it runs `ChunkedScan`, an exact float32 scan in
plain PyTorch whose memory is O(batch·length·dim) plus O(sub_batch·chunk·dim·d_state): the
[batch, length, dim, d_state] hidden states are never kept, only the state at every chunk
boundary, and backward recomputes the states of one chunk at a time.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math

import torch

CHUNK = 16
"""Time steps per chunk: backward keeps one hidden state per chunk and recomputes inside it."""

WORKSET = 1 << 19
"""Target elements of one [chunk, sub_batch, dim, d_state] work buffer (sized to stay in cache)."""


def selective_scan_reference(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                             B: torch.Tensor, C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Plain sequential scan, step by step: the ground truth for tests (slow)."""
    batch, length, dim = x.shape
    h = x.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, t, :, None] * A)
        h = decay * h + (delta[:, t, :, None] * x[:, t, :, None]) * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1) + x * D


SCAN_MODES = ("exact", "as_coded")


def scan_implementation(device: torch.device, mode: str = "exact") -> str:
    """The name of the scan :func:`selective_scan` runs on ``device`` in ``mode``."""
    if device.type == "cuda" and mode == "exact" and _mamba_ssm_scan() is not None:
        return "mamba_ssm"
    return "chunked"


def selective_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                   B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
                   mode: str = "exact") -> torch.Tensor:
    """The scan the Mamba block calls; always computed in float32, even under autocast."""
    if mode != "exact":
        raise NotImplementedError(f"scan mode {mode!r}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, delta, A, B, C, D = (t.float() for t in (x, delta, A, B, C, D))
        if x.is_cuda and _mamba_ssm_scan() is not None:
            return _cuda_scan(x, delta, A, B, C, D)
        return ChunkedScan.apply(x, delta, A, B, C, D)


@functools.cache
def _mamba_ssm_scan():
    """mamba_ssm's fused `selective_scan_fn`, or None when the package does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or built against another torch/CUDA
        return None
    return selective_scan_fn


def _cuda_scan(x, delta, A, B, C, D):
    """The fused CUDA kernel, in its (batch, dim, length) / (batch, d_state, length) layout."""
    y = _mamba_ssm_scan()(x.transpose(1, 2), delta.transpose(1, 2), A,
                          B.transpose(1, 2), C.transpose(1, 2), D)
    return y.transpose(1, 2).float()


def _sub_batches(batch: int, chunk: int, inner: int) -> list[slice]:
    """Split the batch so one [chunk, sub_batch, dim, d_state] buffer holds about WORKSET
    elements."""
    size = max(1, min(batch, WORKSET // max(1, chunk * inner)))
    return [slice(b, min(b + size, batch)) for b in range(0, batch, size)]


def _over_states(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Σ_n M[t, b, d, n] · v[t, b, n] -> [t, b, d] (one batched matrix product)."""
    steps, nb, dim, n = M.shape
    k = steps * nb
    return torch.bmm(v.reshape(k, 1, n), M.view(k, dim, n).transpose(1, 2)).view(steps, nb, dim)


def _over_channels(v: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Σ_d v[t, b, d] · M[t, b, d, n] -> [t, b, n]."""
    steps, nb, dim, n = M.shape
    k = steps * nb
    return torch.bmm(v.reshape(k, 1, dim), M.view(k, dim, n)).view(steps, nb, n)


class _Chunk:
    """Work buffers for [steps, sub_batch, dim, d_state] chunks, allocated once per thread and
    viewed anew for each sub-batch (the last one may be smaller)."""

    def __init__(self, steps: int, max_batch: int, A: torch.Tensor, with_adjoint: bool):
        self.steps, self.A = steps, A
        self._flat = [A.new_empty(steps * max_batch * A.numel()) for _ in range(3 + with_adjoint)]
        self.adj = None

    def use(self, batch: int) -> _Chunk:
        """Point decay, drive, h (and adj) at [steps, batch, dim, d_state] views."""
        shape = (self.steps, batch, *self.A.shape)
        views = [flat[:math.prod(shape)].view(shape) for flat in self._flat]
        self.decay, self.drive, self.h = views[:3]
        if len(views) > 3:
            self.adj = views[3]
        return self

    def states(self, h0: torch.Tensor, delta: torch.Tensor, x: torch.Tensor,
               B: torch.Tensor) -> int:
        """Fill decay = exp(Δ·A), drive = Δ·x·B and the states h_1..h_T from h0; returns T.

        delta, x: [T, sub_batch, dim]; B: [T, sub_batch, d_state] (time-major views).
        """
        steps = delta.shape[0]
        decay, drive, h = self.decay[:steps], self.drive[:steps], self.h[:steps]
        torch.mul(delta[..., None], self.A, out=decay).exp_()
        torch.mul((delta * x)[..., None], B[:, :, None, :], out=drive)
        prev = h0
        for a_t, u_t, h_t in zip(decay.unbind(0), drive.unbind(0), h.unbind(0)):
            torch.addcmul(u_t, a_t, prev, out=h_t)
            prev = h_t
        return steps

    def adjoints(self, steps: int, g: torch.Tensor, C: torch.Tensor,
                 carry: torch.Tensor | None) -> torch.Tensor:
        """λ_t = g_t·C_t + a_{t+1}·λ_{t+1} (the gradient reaching h_t), backwards in the chunk.

        carry is a_{t+1}·λ_{t+1} from the chunk after this one; returns a_1·λ_1 for the one before.
        """
        lam, decay = self.adj[:steps], self.decay[:steps]
        torch.mul(g[..., None], C[:, :, None, :], out=lam)
        lams, decays = lam.unbind(0), decay.unbind(0)
        if carry is not None:
            lams[-1].add_(carry)
        for t in range(steps - 2, -1, -1):
            torch.addcmul(lams[t], decays[t + 1], lams[t + 1], out=lams[t])
        return decays[0] * lams[0]


def _dispatch_mode_active() -> bool:
    """True inside a TorchDispatchMode (e.g. FlopCounterMode): such modes are per thread,
    so the scan must then stay in the calling thread for the mode to see its ops."""
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode
    except ImportError:
        return True
    return _get_current_dispatch_mode() is not None


def _in_parallel(work, parts: list[slice], new_buffer, device: torch.device) -> list:
    """Run work(part, buffer) for every sub-batch, one buffer = new_buffer() per thread; on
    the CPU, split the parts over torch.get_num_threads() Python threads whose ATen ops run
    single-threaded.

    The scan is thousands of small ops; letting each of them fork and join the intra-op thread
    pool costs a barrier per op, which on a busy machine stalls for a time slice each time.
    One coarse split over sub-batches needs no barrier until the end.
    """
    if not parts:
        return []
    if device.type != "cpu" or _dispatch_mode_active():
        buffer = new_buffer()
        return [work(part, buffer) for part in parts]

    def worker(group: list[slice], buffer: _Chunk) -> list:
        torch.set_num_threads(1)  # this thread's own setting
        with torch.no_grad():  # grad mode is per thread; the Function's own ops need none
            return [work(part, buffer) for part in group]

    threads = min(torch.get_num_threads(), len(parts))
    groups = [parts[i::threads] for i in range(threads)]
    buffers = [new_buffer() for _ in groups]  # allocated here, not in per-thread arenas
    saved = torch.get_num_threads()
    try:
        if threads == 1:
            return worker(parts, buffers[0])
        torch.set_num_threads(1)
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            return [r for rs in pool.map(worker, groups, buffers) for r in rs]
    finally:
        torch.set_num_threads(saved)


class ChunkedScan(torch.autograd.Function):
    """Exact selective scan that saves only its inputs and the state at chunk boundaries.

    All tensors are float32 in the module's layout; internally time-major views
    [length, batch, ...] are walked chunk by chunk, one sub-batch at a time.
    """

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D):
        batch, length, dim = x.shape
        n = A.shape[1]
        xt, dt, Bt, Ct = (t.transpose(0, 1) for t in (x, delta, B, C))
        y = x.new_empty(batch, length, dim)
        yt = y.transpose(0, 1)
        chunks = [slice(t0, t0 + CHUNK) for t0 in range(0, length, CHUNK)]
        boundary = x.new_empty(len(chunks), batch, dim, n)  # the state entering each chunk

        def part(sb: slice, buf: _Chunk) -> None:
            buf.use(sb.stop - sb.start)
            h0 = x.new_zeros(sb.stop - sb.start, dim, n)
            for c, tc in enumerate(chunks):
                boundary[c, sb] = h0
                T = buf.states(h0, dt[tc, sb], xt[tc, sb], Bt[tc, sb])
                yt[tc, sb] = _over_states(buf.h[:T], Ct[tc, sb])
                h0 = buf.h[T - 1]

        parts = _sub_batches(batch, min(CHUNK, length), dim * n)
        with torch.no_grad():
            _in_parallel(part, parts, lambda: _Chunk(min(CHUNK, length), parts[0].stop, A, False),
                         x.device)
            y.addcmul_(x, D)
        ctx.save_for_backward(x, delta, A, B, C, D, boundary)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, delta, A, B, C, D, boundary = ctx.saved_tensors
        batch, length, dim = x.shape
        n = A.shape[1]
        gy = gy.to(x.dtype)
        xt, dt, Bt, Ct, gt = (t.transpose(0, 1) for t in (x, delta, B, C, gy))
        grads = [torch.empty_like(t) for t in (x, delta, B, C)]
        gx, gdelta, gB, gC = (t.transpose(0, 1) for t in grads)
        ones = A.new_ones(n)
        chunks = [slice(t0, t0 + CHUNK) for t0 in range(0, length, CHUNK)]

        def part(sb: slice, buf: _Chunk) -> torch.Tensor:
            """Fill the gradients of one sub-batch; return its share of dA."""
            nb = sb.stop - sb.start
            buf.use(nb)
            gA = torch.zeros_like(A)
            carry = None
            for c in reversed(range(len(chunks))):
                tc = chunks[c]
                d_c, x_c, B_c, g_c = dt[tc, sb], xt[tc, sb], Bt[tc, sb], gt[tc, sb]
                h0 = boundary[c, sb]
                T = buf.states(h0, d_c, x_c, B_c)
                carry = buf.adjoints(T, g_c, Ct[tc, sb], carry)
                decay, h, lam = buf.decay[:T], buf.h[:T], buf.adj[:T]
                gC[tc, sb] = _over_channels(g_c, h)
                gB[tc, sb] = _over_channels(d_c * x_c, lam)
                lam_B = _over_states(lam, B_c)
                gx[tc, sb] = d_c * lam_B
                # w = λ_t·a_t·h_{t-1} is the gradient of Δ_t·A; it reaches Δ_t summed over
                # the states and A summed over batch and time (drive and h are free now)
                w = buf.drive[:T]
                torch.mul(decay[0], h0, out=w[0])
                torch.mul(decay[1:], h[:-1], out=w[1:])
                w.mul_(lam)
                k = T * nb
                wA = torch.mul(w, A, out=h).view(k * dim, n).mv(ones).view(T, nb, dim)
                gdelta[tc, sb] = torch.addcmul(wA, x_c, lam_B)
                gA += torch.bmm(d_c.reshape(k, dim).t().unsqueeze(1),
                                w.view(k, dim, n).transpose(0, 1)).squeeze(1)
            return gA

        parts = _sub_batches(batch, min(CHUNK, length), dim * n)

        def make_chunk() -> _Chunk:
            return _Chunk(min(CHUNK, length), parts[0].stop, A, True)

        shares = _in_parallel(part, parts, make_chunk, x.device)
        gA = sum(shares, torch.zeros_like(A))
        gx.addcmul_(gt, D)
        gD = (gy * x).sum((0, 1))
        return grads[0], grads[1], gA, grads[2], grads[3], gD

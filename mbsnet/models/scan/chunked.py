"""ChunkedScan: the selective scan step by step, sized for a CPU's cache.

Memory is O(batch·length·dim) plus O(sub_batch·chunk·dim·d_state): the
[batch, length, dim, d_state] hidden states are never kept, only the state at every chunk
boundary, and backward recomputes the states of one chunk at a time. Time-major views
[length, batch, ...] are walked chunk by chunk, one cache-sized sub-batch at a time, the
sub-batches spread over Python threads.
"""

from __future__ import annotations

import concurrent.futures
import math

import torch

from . import modes as sm

CHUNK = 16
"""Time steps per chunk: backward keeps one hidden state per chunk and recomputes inside it."""

WORKSET = 1 << 19
"""Target elements of one [chunk, sub_batch, dim, d_state] work buffer (sized to stay in cache)."""


def _sub_batches(batch: int, chunk: int, inner: int) -> list[slice]:
    """Split the batch so one [chunk, sub_batch, dim, d_state] buffer holds about WORKSET
    elements."""
    size = max(1, min(batch, WORKSET // max(1, chunk * inner)))
    return [slice(b, min(b + size, batch)) for b in range(0, batch, size)]


class _Chunk:
    """Work buffers for [steps, sub_batch, dim, d_state] chunks, allocated once per thread and
    viewed anew for each sub-batch (the last one may be smaller).

    decay, drive, h: a_t, u_t, h_t; backward adds adj (the adjoint) and, as coded, slope
    and pre (the states before their clamp, in a chunk where it held); da is ∂a/∂(Δ·A),
    the slope buffer or decay itself where no clamp binds.
    """

    # the views use() points at the buffers named in self.names
    decay: torch.Tensor
    drive: torch.Tensor
    h: torch.Tensor
    adj: torch.Tensor
    slope: torch.Tensor | None
    pre: torch.Tensor | None
    da: torch.Tensor  # set by states() in backward

    def __init__(self, steps: int, max_batch: int, A: torch.Tensor, mode: str,
                 clamps: sm.Clamps, backward: bool):
        self.steps, self.A, self.clamps, self.backward = steps, A, clamps, backward
        self.clamp_states = mode == sm.AS_CODED
        self.names = ["decay", "drive", "h"] + (["adj"] if backward else [])
        if backward and self.clamp_states:
            self.names += ["slope", "pre"]
        self._flat = [A.new_empty(steps * max_batch * A.numel()) for _ in self.names]
        self.slope = self.pre = None
        self.clamped = False  # whether the state clamp held in the chunk of the last states()
        self.peak = 0.0       # max|h| in that chunk, where states() measured it

    def use(self, batch: int) -> _Chunk:
        """Point the buffers at [steps, batch, dim, d_state] views."""
        shape = (self.steps, batch, *self.A.shape)
        for name, flat in zip(self.names, self._flat, strict=True):
            setattr(self, name, flat[:math.prod(shape)].view(shape))
        return self

    def states(self, h0: torch.Tensor, delta: torch.Tensor, x: torch.Tensor, B: torch.Tensor,
               clamp: bool | None = False) -> int:
        """Fill decay, drive (and in backward the slope) and the states h_1..h_T from h0;
        returns T.

        delta, x: [T, sub_batch, dim]; B: [T, sub_batch, d_state] (time-major views).
        clamp: whether the state clamp (as coded) holds in the chunk, or None to find out.
        """
        steps = delta.shape[0]
        decay, drive, h = self.decay[:steps], self.drive[:steps], self.h[:steps]
        if self.backward:
            slope, pre = (None, None) if self.slope is None or self.pre is None \
                else (self.slope[:steps], self.pre[:steps])
            _, self.da = sm.decay_and_slope(delta, self.A, self.clamps, decay, slope, pre)
        else:
            sm.decay(delta, self.A, self.clamps, decay)
        sm.drive(delta, x, B, self.clamps, drive)
        # where no state leaves ±100, the clamped recurrence is the unclamped one, step by
        # step: one check a chunk, where needed, costs less than a clamp a step
        _recur(h0, decay, drive, h)
        if clamp is None:
            self.peak = sm.max_abs(h)
            clamp = self.peak > sm.STATE_LIMIT
        self.clamped = clamp
        if clamp:
            _recur(h0, decay, drive, h, sm.STATE_LIMIT,
                   None if self.pre is None else self.pre[:steps])
        return steps

    def state_mask(self, steps: int) -> torch.Tensor | None:
        """Where the state clamp let the gradient through (backward), or None when it held
        nowhere in the chunk."""
        if not self.clamped:
            return None
        assert self.pre is not None  # the clamp holds in backward only as coded, which keeps pre
        return torch.eq(self.pre[:steps], self.h[:steps])

    def adjoints(self, steps: int, g: torch.Tensor, C: torch.Tensor,
                 carry: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """λ_t = m_t·(g_t·C_t + a_{t+1}·λ_{t+1}), the gradient reaching u_t (m: the state
        clamp's mask, 1 without one), backwards in the chunk.

        carry is a_{t+1}·λ_{t+1} from the chunk after this one; returns a_1·λ_1 for the one before.
        """
        lam, decay = self.adj[:steps], self.decay[:steps]
        torch.mul(g[..., None], C[:, :, None, :], out=lam)
        lams = lam.unbind(0)
        if carry is not None:
            lams[-1].add_(carry)
        after = decay[1:]
        if mask is not None:  # m_t·(v + a·λ) = m_t·v + (m_t·a)·λ: the loop stays one op a step
            assert self.pre is not None  # a mask comes from state_mask, which needs pre
            lam.mul_(mask)
            after = torch.mul(after, mask[:-1], out=self.pre[:steps - 1])
        afters = after.unbind(0)
        for t in range(steps - 2, -1, -1):
            torch.addcmul(lams[t], afters[t], lams[t + 1], out=lams[t])
        return decay[0] * lams[0]


def _recur(h0: torch.Tensor, decay: torch.Tensor, drive: torch.Tensor, h: torch.Tensor,
           limit: float | None = None, pre: torch.Tensor | None = None) -> None:
    """h_t = a_t·h_{t-1} + u_t from h0 into h, clamped to ±limit after every step if one is
    given (keeping the values before the clamp in pre if given)."""
    prev = h0
    rows = zip(decay.unbind(0), drive.unbind(0), h.unbind(0), strict=True)
    if limit is None:
        for a_t, u_t, h_t in rows:
            prev = torch.addcmul(u_t, a_t, prev, out=h_t)
    elif pre is None:
        for a_t, u_t, h_t in rows:
            prev = torch.addcmul(u_t, a_t, prev, out=h_t).clamp_(-limit, limit)
    else:
        for (a_t, u_t, h_t), p_t in zip(rows, pre.unbind(0), strict=True):
            prev = torch.clamp(torch.addcmul(u_t, a_t, prev, out=p_t), -limit, limit, out=h_t)


def dispatch_mode_active() -> bool:
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
    if device.type != "cpu" or dispatch_mode_active():
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


def _plan(x: torch.Tensor, A: torch.Tensor) -> tuple[list[slice], list[slice], int]:
    """Time chunks, sub-batches and the steps of a chunk buffer."""
    batch, length, dim = x.shape
    steps = min(CHUNK, length)
    chunks = [slice(t0, t0 + CHUNK) for t0 in range(0, length, CHUNK)]
    return chunks, _sub_batches(batch, steps, dim * A.shape[1]), steps


def chunked_forward(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                    C: torch.Tensor, mode: str,
                    clamps: sm.Clamps) -> tuple[torch.Tensor, torch.Tensor, set]:
    """y = C·h for every step, the state entering every chunk, and the (chunk, first
    sequence) of every chunk of a sub-batch where the state clamp held (no autograd)."""
    batch, length, dim = x.shape
    xt, dt, Bt, Ct = (t.transpose(0, 1) for t in (x, delta, B, C))
    y = x.new_empty(batch, length, dim)
    yt = y.transpose(0, 1)
    chunks, parts, steps = _plan(x, A)
    growth = sm.state_growth(delta, x, B) if mode == sm.AS_CODED else None
    boundary = x.new_empty(len(chunks), batch, *A.shape)
    clamped = set()

    def part(sb: slice, buf: _Chunk) -> None:
        buf.use(sb.stop - sb.start)
        boundary[0, sb] = 0.0
        if growth is not None:
            drive = sm.run_sums(growth[sb], CHUNK)
            bound = 0.0  # of max|h| entering the chunk
        for c, tc in enumerate(chunks):
            h0, check = boundary[c, sb], False
            if growth is not None:  # as coded: is a check of the states needed?
                bound += drive[c]
                if bound > sm.STATE_SAFE:
                    bound = sm.max_abs(h0) + drive[c]
                    check = bound > sm.STATE_SAFE
            T = buf.states(h0, dt[tc, sb], xt[tc, sb], Bt[tc, sb], None if check else False)
            if check:
                bound = min(buf.peak, sm.STATE_LIMIT)
            if buf.clamped:
                clamped.add((c, sb.start))
            yt[tc, sb] = sm.over_states(buf.h[:T], Ct[tc, sb])
            if c + 1 < len(chunks):
                boundary[c + 1, sb] = buf.h[T - 1]

    with torch.no_grad():
        _in_parallel(part, parts, lambda: _Chunk(steps, parts[0].stop, A, mode, clamps, False),
                     x.device)
    return y, boundary, clamped


def chunked_backward(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                     C: torch.Tensor, D: torch.Tensor, boundary: torch.Tensor, clamped: set,
                     gy: torch.Tensor, keep: torch.Tensor | None, mode: str,
                     clamps: sm.Clamps) -> tuple[torch.Tensor, ...]:
    """Gradients (x, Δ, A, B, C) of the output before its skip term's D, recomputing one
    chunk of states at a time (boundary, clamped: from :func:`chunked_forward`; ``keep``:
    see :func:`~mbsnet.models.scan.modes.finish_`)."""
    xt, dt, Bt, Ct, gt = (t.transpose(0, 1) for t in (x, delta, B, C, gy))
    keep_t = None if keep is None else keep.transpose(0, 1)
    grads = [torch.empty_like(t) for t in (x, delta, B, C)]
    gx, gdelta, gB, gC = (t.transpose(0, 1) for t in grads)
    chunks, parts, steps = _plan(x, A)

    def part(sb: slice, buf: _Chunk) -> torch.Tensor:
        """Fill the gradients of one sub-batch; return its share of dA."""
        buf.use(sb.stop - sb.start)
        gA = torch.zeros_like(A)
        carry = None
        for c in reversed(range(len(chunks))):
            tc = chunks[c]
            d_c, x_c, B_c = dt[tc, sb], xt[tc, sb], Bt[tc, sb]
            g_c = sm.output_grad(gt[tc, sb], None if keep_t is None else keep_t[tc, sb])
            h0 = boundary[c, sb]
            T = buf.states(h0, d_c, x_c, B_c, (c, sb.start) in clamped)
            carry = buf.adjoints(T, g_c, Ct[tc, sb], carry, buf.state_mask(T))
            h, lam = buf.h[:T], buf.adj[:T]
            gC[tc, sb] = sm.over_channels(g_c, h)
            # w = λ_t·(∂a_t/∂(Δ_t·A))·h_{t-1}, the gradient reaching Δ_t·A (drive is free now)
            w = buf.drive[:T]
            torch.mul(buf.da[0], h0, out=w[0])
            torch.mul(buf.da[1:], h[:-1], out=w[1:])
            w.mul_(lam)
            gdelta_a, gA_c = sm.decay_grads(w, d_c, A, work=h)
            gA += gA_c
            gx_c, gdelta_u, gB[tc, sb] = sm.drive_grads(lam, d_c, x_c, B_c, clamps, h, w)
            gx[tc, sb] = sm.add_skip_grad_(gx_c, g_c, D, mode)
            gdelta[tc, sb] = gdelta_a.add_(gdelta_u)
        return gA

    shares = _in_parallel(part, parts,
                          lambda: _Chunk(steps, parts[0].stop, A, mode, clamps, True), x.device)
    gA = sum(shares, torch.zeros_like(A))
    return grads[0], grads[1], gA, grads[2], grads[3]


class ChunkedScan(torch.autograd.Function):
    """The selective scan, in either mode, with exact gradients; saves only its inputs, the
    state at chunk boundaries and, as coded, where the output clamp held.

    apply(x, delta, A, B, C, D, mode); all tensors of one floating dtype, in the layout of
    :func:`mbsnet.models.scan.selective_scan`.
    """

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, mode):
        return scan_forward(ctx, x, delta, A, B, C, D, mode)

    @staticmethod
    def backward(ctx, gy):
        return scan_backward(ctx, gy)


def scan_forward(ctx, x, delta, A, B, C, D, mode, whole=None):
    """The forward of a scan Function: ``whole(x, delta, A, B, C, mode, clamps)`` (a scan of
    the whole sequence at once, returning y or None where it cannot run), else the chunked
    scan; then the skip term and the output clamp. Saves what :func:`scan_backward` needs."""
    sm.check_mode(mode)
    clamps = sm.binding_clamps(delta, A, B, mode)
    y = whole(x, delta, A, B, C, mode, clamps) if whole is not None else None
    boundary = None
    if y is None:
        y, boundary, ctx.clamped = chunked_forward(x, delta, A, B, C, mode, clamps)
    keep = sm.finish_(y, x, D, mode)
    ctx.mode, ctx.clamps = mode, clamps
    ctx.save_for_backward(x, delta, A, B, C, D, boundary, keep)
    return y


def scan_backward(ctx, gy, whole=None):
    """The backward of a scan Function: ``whole(x, delta, A, B, C, D, gy, keep, mode,
    clamps)`` when the forward ran the whole-sequence scan, else the chunked one."""
    x, delta, A, B, C, D, boundary, keep = ctx.saved_tensors
    gy = gy.to(x.dtype)
    # D's gradient first: its [batch, length, dim] temporary is gone before the others exist
    gD = sm.skip_param_grad(gy, x, ctx.mode)
    if boundary is None:
        grads = whole(x, delta, A, B, C, D, gy, keep, ctx.mode, ctx.clamps)
    else:
        grads = chunked_backward(x, delta, A, B, C, D, boundary, ctx.clamped, gy, keep,
                                 ctx.mode, ctx.clamps)
    return *grads, gD, None

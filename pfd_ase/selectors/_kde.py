"""Gaussian kernel sums ``log sum_j exp(-|y_a - x_j|^2 / (2 h^2))`` in float64.

Two engines with the same result:

* :func:`log_kernel_sum_blocked` — every pair, in row x column blocks: squared distances
  ``|y|^2 + |x|^2 - 2 y.x`` (clipped at 0), then the kernel (the brute-force oracle; numpy, one
  thread).
* :func:`log_kernel_sum_pruned` — skips the pairs too far apart to matter, with a rigorous
  bound: the terms it skips add up to less than ``REL_TOL = 1e-11`` of each sum, so each log sum
  (and H, and every dH) is within 1e-11 of the oracle's, on top of round-off (~1e-13).

How the pruned engine finds the pairs that matter. Points are grouped into balls (centroid,
radius) by recursive bisection (cut on a 16-axis PCA sketch, balls exact). A lower bound L_a
of row a's sum gives it a radius ``R_a^2 = 2 h^2 (TAIL + log n - log L_a)``, ``TAIL =
-log REL_TOL``: the n terms beyond R_a add less than ``REL_TOL L_a`` (:func:`_reach`). A ball
visits the points that can lie within reach of one of its points (triangle inequality on the
distance to the ball centre); everything else is skipped. Three layouts:

* ``Y is X`` (H): each ball with itself first (these sums, >= 1 with the self term, are the
  lower bounds), then with the later points within ``max(R_i, R_j)``: each pair once, adding to
  both sums (the kernel is symmetric).
* fewer rows than points (dH of test environments against a large reference): balls of Y's
  rows; L_a is the exact sum over a strided sample of X. X is read once, a run at a time,
  centred on the fly; each ball's rows are split in up to two groups by reach so that a few
  rows needing far points do not make the whole ball visit them.
* more rows than points: balls of X visit the rows of Y; L_a is the term of the nearest x,
  whose distance is at most ``u_a = min_b (|y_a - c_b| + r_b)``.
* under ``_ALL_PAIRS_ROWS`` rows: every pair.

Exponents come from one GEMM of augmented vectors, ``s |y - x|^2 = [-2s y, s|y|^2, 1] .
[x, 1, s|x|^2]``, ``s = -1 / (2 h^2)``, then an in-place exp and row (and column) sums. The data
are centred on the mean of a strided sample of X; self terms are set to exactly 1; the
round-off of an exponent is about ``1e-16 |s| max|x - mean|^2`` (~1e-13 for QUESTS
descriptors).

Threads. The work is split into tasks (a few balls, or a run of X) run on ``threads`` worker
threads (``PFD_THREADS``, else ``min(2, os.cpu_count())``); each task sums into arrays of its
own, reduced in task order, so the result does not depend on the number of threads. The blocks
are computed with torch (MKL GEMM, SLEEF exp, on buffers each thread reuses: ~6.5 ns a pair on
one core) when torch is already imported, or importable and the sums have over
``_TORCH_MIN_PAIRS`` pairs (importing torch takes ~1.5 s); with numpy otherwise (~7.5-9 ns a
pair; its exp alone is 5.5 ns a value against SLEEF's 2 on CPUs without AVX-512). BLAS should
run one thread (``OPENBLAS_NUM_THREADS=1``), or the two levels of threads compete. torch would
run each op on an OpenMP team of its own: the workers set torch to one thread, and torch's
thread count (which that call also sets process-wide) is restored when the sums are done.
Small sums (up to ``_SERIAL_MAX_PAIRS``) without torch run in the calling thread.

What pruning can gain is bounded by the data. For MD-like data of a few phases (one phase's
environments lie within a few h of each other) about a third of all pairs lie within reach and
about half are visited (a ball's radius adds to the reach); the sparser the data, the larger
the gain.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

REL_TOL = 1e-11  # pruned terms add up to less than this fraction of each kernel sum
TAIL = -math.log(REL_TOL)
DH_INF = 1074.0 * math.log(2.0)  # -log of the smallest positive float64: dH beyond is +inf
_TINY = 1e-300  # plain sums at or below this are redone as shifted log-sum-exp
_BLOCK = 1024  # rows/columns of a dense block in the brute-force engine
_LEAF_SELF = 512  # points per ball, Y is X (larger blocks pay more than tighter balls)
_COLS_SELF = 1024  # columns per GEMM block, Y is X (512 x 1024 float64: 4 MB)
_TASK_SELF = 4  # balls per task, Y is X
_LEAF_X = 256  # points per ball of X, Y is not X
_ROWS_X = 1024  # rows of Y per GEMM block, Y is not X
_TASK_X = 8  # balls per task, Y is not X
_SKETCH = 16  # principal axes on which the balls are cut
_LEAF_Y = 128  # rows per ball of Y, Y is not X and has few rows
_GROUP_COST = 5000.0  # pairs that the calls of one more GEMM block cost, in time
_ROW_TASKS = 32  # runs of X, Y has fewer rows than X has points
_SAMPLE = 2048  # points of X whose exact sums bound the sums of Y's rows from below
_ALL_PAIRS_ROWS = 64  # below this many rows of Y every pair is visited


def cap(dh: np.ndarray) -> np.ndarray:
    """dH = +inf where ``-log sum K`` exceeds ``-log(2**-1074)`` (the float64 sum is zero)."""
    return np.where(dh > DH_INF, np.inf, dh)


def _sqnorm(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _lse_rows(a: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp of a block of log-kernel values."""
    m = a.max(axis=1)
    return m + np.log(np.exp(a - m[:, None]).sum(axis=1))


def _log_or_redo(total: np.ndarray, exponents) -> np.ndarray:
    """log of plain kernel sums; rows at or below ``_TINY`` are redone as shifted log-sum-exp.

    ``exponents(rows)`` yields the blocks of ``s |y - x|^2`` of those rows over all columns.
    """
    with np.errstate(divide="ignore"):
        out = np.log(total)
    low = np.flatnonzero(total <= _TINY)
    if len(low):
        acc = np.full(len(low), -np.inf)
        for a in exponents(low):
            acc = np.logaddexp(acc, _lse_rows(a))
        out[low] = acc
    return out


# --------------------------------------------------------------------------- brute force


def log_kernel_sum_blocked(
    y: np.ndarray, x: np.ndarray, h: float, block: int = _BLOCK
) -> np.ndarray:
    """``log sum_j K(y_a, x_j)`` for every row of y over every row of x (no pruning)."""
    m, n = len(y), len(x)
    if n == 0:
        return np.full(m, -np.inf)
    same = y is x  # then the diagonal (self) terms are exactly 1
    mu = x.mean(axis=0)
    x = x - mu
    y = x if same else y - mu
    yn, xn = _sqnorm(y), _sqnorm(x)
    s = -0.5 / (h * h)

    def exponents(ys, yns, a0=-1):
        for b0 in range(0, n, block):
            d2 = ys @ x[b0 : b0 + block].T
            d2 *= -2.0
            d2 += yns[:, None]
            d2 += xn[None, b0 : b0 + block]
            np.maximum(d2, 0.0, out=d2)
            if b0 == a0:
                np.fill_diagonal(d2, 0.0)
            d2 *= s
            yield d2

    out = np.empty(m)
    for a0 in range(0, m, block):
        ys, yns = y[a0 : a0 + block], yn[a0 : a0 + block]
        total = np.zeros(len(ys))
        for k in exponents(ys, yns, a0 if same else -1):
            np.exp(k, out=k)
            total += k.sum(axis=1)
        out[a0 : a0 + block] = _log_or_redo(
            total, lambda rows, ys=ys, yns=yns: exponents(ys[rows], yns[rows])
        )
    return out


def pair_sums(
    y: np.ndarray, x: np.ndarray, h: float, block: int = _BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """Row sums ``sum_j K(y_a, x_j)`` and column sums ``sum_a K(y_a, x_j)``, plain float64.

    No centring and no underflow guard: meant for sums that end up >= 1 (entropy curves).
    """
    s = -0.5 / (h * h)
    rows, cols = np.zeros(len(y)), np.zeros(len(x))
    if len(y) == 0 or len(x) == 0:
        return rows, cols
    same = y is x
    left, right = _augmented(y, s, True), _augmented(x, s, False)
    for a0 in range(0, len(y), block):
        for b0 in range(0, len(x), block):
            k = left[a0 : a0 + block] @ right[b0 : b0 + block].T
            if same and a0 == b0:
                np.fill_diagonal(k, 0.0)  # self terms are exactly 1
            np.exp(k, out=k)
            rows[a0 : a0 + block] += k.sum(axis=1)
            cols[b0 : b0 + block] += k.sum(axis=0)
    return rows, cols


# --------------------------------------------------------------------------- pruned


def _default_threads() -> int:
    """``PFD_THREADS`` when set to a positive integer, else ``min(2, os.cpu_count())``."""
    env = os.environ.get("PFD_THREADS", "").strip()
    if env:
        if env.isdigit() and int(env) >= 1:
            return int(env)
        warnings.warn(f"PFD_THREADS={env!r} is not a positive integer: ignored", stacklevel=2)
    return max(1, min(2, os.cpu_count() or 1))


THREADS = _default_threads()  # worker threads of the pruned engine
_USE_TORCH: bool | None = None  # torch blocks: None = when it pays (see _engine); True / False
_TORCH_MIN_PAIRS = 2e9  # pairs from which importing torch (~1.5 s) pays for itself
_SERIAL_MAX_PAIRS = 2e6  # pairs up to which numpy-only sums run in the calling thread


def _engine(pairs: float, threads: int | None):
    """``(torch, threads)`` for sums over ``pairs`` pairs (before pruning).

    ``torch`` is the module when the blocks are to be computed with it: where it is already
    imported, or importable and the sums are large enough to repay its import (~1.5 s); else
    None (numpy). ``threads`` is the number of worker threads, 0 for the calling thread: small
    numpy-only sums, for which a pool costs more than it saves.
    """
    threads = THREADS if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    use = _USE_TORCH
    if use is None:
        use = pairs > _SERIAL_MAX_PAIRS and ("torch" in sys.modules or pairs >= _TORCH_MIN_PAIRS)
    torch = None
    if use:
        try:
            import torch
        except ImportError:
            torch = None
    if torch is None:
        return None, (0 if pairs <= _SERIAL_MAX_PAIRS else threads)
    return torch, threads


_LOCAL = threading.local()


def _buffer(key: str, size: int, torch=None):
    """A flat float64 buffer of at least ``size`` values, kept per thread and reused.

    Fresh large arrays cost their page faults on first touch (~1 ms per MB on a VM), as much as
    the arithmetic on them; a worker thread reuses its buffers across tasks.
    """
    bufs = _LOCAL.__dict__.setdefault("bufs", {})
    key = (key, torch is not None)
    buf = bufs.get(key)
    if buf is None or len(buf) < size:
        size = max(size, 2 * len(buf) if buf is not None else 0)
        buf = np.empty(size) if torch is None else torch.empty(size, dtype=torch.float64)
        bufs[key] = buf
    return buf


class _Blocks:
    """Kernel blocks ``exp(left[rows] @ right[cols].T)`` and their sums, in one task's buffers.

    ``rows`` and ``cols`` are slices or index arrays (gathered into a buffer). With torch (one
    thread per worker): its GEMM (MKL), SLEEF exp and sums on preallocated buffers, ~6 ns a pair
    on one core; numpy's (OpenBLAS GEMM, exp) ~7.5-9 ns. Both agree to round-off (~1e-16).
    """

    def __init__(self, left: np.ndarray, right: np.ndarray, torch, rows: int, cols: int):
        d = right.shape[1]
        self.torch, self.d = torch, d
        if torch is None:
            self.left, self.right = left, right
        else:
            self.left, self.right = torch.from_numpy(left), torch.from_numpy(right)
        self.kbuf = _buffer("block", rows * cols, torch)
        self.lbuf = _buffer("rows", rows * d, torch)
        self.rbuf = _buffer("cols", cols * d, torch)

    def _take(self, a, idx, buf):
        if isinstance(idx, slice):
            return a[idx]
        out = buf[: len(idx) * self.d]
        if self.torch is None:
            out = out.reshape(len(idx), self.d)
            return np.take(a, idx, axis=0, out=out)
        out = out.view(len(idx), self.d)
        return self.torch.index_select(a, 0, self.torch.from_numpy(idx), out=out)

    def sums(self, rows, cols, col_sums: bool = False, self_block: bool = False):
        """Row sums (and column sums) of the block; ``self_block``: its diagonal terms are 1."""
        la = self._take(self.left, rows, self.lbuf)
        rc = self._take(self.right, cols, self.rbuf)
        r, c = la.shape[0], rc.shape[0]
        if self.torch is None:
            k = np.matmul(la, rc.T, out=self.kbuf[: r * c].reshape(r, c))
            if self_block:
                np.fill_diagonal(k, 0.0)
            np.exp(k, out=k)
            return k.sum(axis=1), (k.sum(axis=0) if col_sums else None)
        k = self.torch.mm(la, rc.T, out=self.kbuf[: r * c].view(r, c))
        if self_block:
            k.fill_diagonal_(0.0)
        k.exp_()
        return k.sum(dim=1).numpy(), (k.sum(dim=0).numpy() if col_sums else None)


@contextmanager
def _workers(threads: int, torch):
    """``map(work, tasks)`` on ``threads`` worker threads (0: in the calling thread).

    Results come in task order, so the sums they are reduced into, in that order, do not depend
    on the number of threads. numpy's and torch's GEMM, exp and sums release the GIL. torch
    would also run each op on an OpenMP team of its own: the workers set torch to one thread
    (per thread, but the call also sets torch's process-wide default), and torch's thread count
    is restored on exit.
    """
    if threads == 0:
        yield map
        return
    prev = torch.get_num_threads() if torch is not None else 1
    init = (lambda: torch.set_num_threads(1)) if prev > 1 else None
    pool = ThreadPoolExecutor(threads, initializer=init)
    try:
        yield pool.map
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error, queued tasks are dropped
        if prev > 1:
            torch.set_num_threads(prev)


class BallPartition:
    """Points split into balls of at most ``leaf`` points by recursive bisection.

    The cuts are made on a sketch of the points, their float32 coordinates along the ``sketch``
    principal axes of largest variance: each split projects the points on the direction between
    two far-apart points (of a subsample: the one farthest from the centroid, then the one
    farthest from it) and cuts at the median. The sketch only places the cuts: centres and radii
    are those of the points themselves. ``order`` lists point indices ball by ball; ball b holds
    ``order[start[b]:start[b + 1]]``, i.e. ``points[start[b]:start[b + 1]]``, with centroid
    ``centre[b]`` and radius ``radius[b]`` (largest distance to the centroid).
    """

    def __init__(self, x: np.ndarray, leaf: int, sketch: int = _SKETCH, sample: int = 2048):
        n, d = x.shape
        if d > sketch:
            mu = x.mean(axis=0)
            _, axes = np.linalg.eigh(x.T @ x - n * np.outer(mu, mu))
            z = (x @ axes[:, -sketch:]).astype(np.float32)
        else:
            z = x.astype(np.float32)
        order = np.arange(n)
        stack, starts = [(0, n)], []
        while stack:  # depth first, lower half first: the balls come in order
            lo, hi = stack.pop()
            if hi - lo <= leaf:
                starts.append(lo)
                continue
            pts = z[lo:hi]
            sub = pts[:: max(1, (hi - lo) // sample)]
            c = sub.mean(axis=0)
            p = sub[np.argmax(_sqnorm(sub - c))]
            q = sub[np.argmax(_sqnorm(sub - p))]
            half = (hi - lo) // 2
            part = np.argpartition(pts @ (q - p), half)
            z[lo:hi], order[lo:hi] = pts[part], order[lo:hi][part]
            stack.append((lo + half, hi))
            stack.append((lo, lo + half))
        self.order = order
        self.start = np.array([*starts, n])
        self.points = x[order]
        self.centre = np.empty((len(starts), d))
        self.radius = np.empty(len(starts))
        for b, (lo, hi) in enumerate(zip(self.start[:-1], self.start[1:], strict=True)):
            self.centre[b] = c = self.points[lo:hi].mean(axis=0)
            self.radius[b] = math.sqrt(_sqnorm(self.points[lo:hi] - c).max())

    def __len__(self) -> int:
        return len(self.radius)

    def rows(self, b: int) -> slice:
        """Positions (in ``order``) of the points of ball b."""
        return slice(self.start[b], self.start[b + 1])

    def groups(self, size: int) -> list[range]:
        """Consecutive balls, ``size`` at a time."""
        return [range(g, min(g + size, len(self))) for g in range(0, len(self), size)]


def _augmented(
    x: np.ndarray,
    s: float,
    left: bool,
    centre: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Rows ``[-2s x, s|x|^2, 1]`` (left) or ``[x, 1, s|x|^2]`` (right): their products are
    the exponents ``s |y - x|^2``. ``centre``: use ``x - centre``; ``out``: (n, d + 2) buffer."""
    n, d = x.shape
    out = np.empty((n, d + 2)) if out is None else out
    xs = out[:, :d]
    if centre is None:
        xs[...] = x
    else:
        np.subtract(x, centre, out=xs)
    sn = s * _sqnorm(xs)
    if left:
        xs *= -2.0 * s
        out[:, d], out[:, d + 1] = sn, 1.0
    else:
        out[:, d], out[:, d + 1] = 1.0, sn
    return out


def _centre_dists(pts: np.ndarray, pts_n: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Distances (len(pts), len(centres)) from points to ball centres, one GEMM."""
    d2 = pts @ centres.T
    d2 *= -2.0
    d2 += pts_n[:, None]
    d2 += _sqnorm(centres)[None, :]
    np.maximum(d2, 0.0, out=d2)
    return np.sqrt(d2, out=d2)


def log_kernel_sum_pruned(
    y: np.ndarray, x: np.ndarray, h: float, threads: int | None = None
) -> np.ndarray:
    """Same as :func:`log_kernel_sum_blocked` up to a relative ``exp(-TAIL)`` in each sum.

    ``threads``: worker threads (default :data:`THREADS`); the result does not depend on it.
    """
    m, n = len(y), len(x)
    if n == 0:
        return np.full(m, -np.inf)
    if m == 0:
        return np.zeros(0)
    same = y is x
    mu = x[:: max(1, n // _SAMPLE)].mean(axis=0)  # the centre only has to be near the data
    if same:
        return _self_sums(x - mu, h, threads)
    if m < _ALL_PAIRS_ROWS:
        return _cross_all(y - mu, x - mu, h, threads)
    if m <= n:
        return _cross_row_balls(y - mu, x, mu, h, threads)
    return _cross_sums(y - mu, x - mu, h, threads)


def _reach(log_lower: np.ndarray, count: int, h: float) -> np.ndarray:
    """Pruning radii: ``count`` terms beyond ``R`` add less than ``REL_TOL`` of a sum >= lower.

    Each skipped term is below ``exp(-R^2 / (2 h^2))``, so ``count`` of them stay below
    ``REL_TOL * lower`` when ``R^2 = 2 h^2 (TAIL + log count - log lower)``.
    """
    r2 = 2.0 * h * h * (TAIL + math.log(max(count, 1)) - log_lower)
    return np.sqrt(np.maximum(r2, 0.0))


def _self_sums(x: np.ndarray, h: float, threads: int | None) -> np.ndarray:
    """log sum_j K(x_i, x_j) over all j (self term included), each pair visited once.

    First every ball with itself: these partial sums (>= 1, the self term) bound the full sums
    from below and give each point its radius r_i (:func:`_reach`). Then ball a visits the
    later points j that can lie within ``max(r_i, r_j)`` of one of its points i: the pair adds
    to both sums. A task is a few consecutive balls.
    """
    n = len(x)
    s = -0.5 / (h * h)
    part = BallPartition(x, _LEAF_SELF)
    xo = part.points
    xno = _sqnorm(xo)
    left, right = _augmented(xo, s, True), _augmented(xo, s, False)
    torch, threads = _engine(0.5 * n * n, threads)
    groups = part.groups(_TASK_SELF)
    leaf = int(np.diff(part.start).max())

    def own(balls: range) -> np.ndarray:
        """Sums over the pairs within each ball (symmetric blocks: row sums suffice)."""
        blocks = _Blocks(left, right, torch, leaf, leaf)
        return np.concatenate(
            [blocks.sums(part.rows(a), part.rows(a), self_block=True)[0] for a in balls]
        )

    def work(balls: range) -> tuple[int, np.ndarray]:
        """Sums over the pairs of these balls with later points, for points ``first`` onwards."""
        blocks = _Blocks(left, right, torch, leaf, _COLS_SELF)
        first = part.start[balls.start]
        total = np.zeros(n - first)
        dc = _centre_dists(xo[first:], xno[first:], part.centre[balls.start : balls.stop])
        for a in balls:
            ra = part.rows(a)
            own = total[ra.start - first : ra.stop - first]
            gap = dc[ra.stop - first :, a - balls.start] - part.radius[a]
            near = gap <= np.maximum(ball_reach[a], reach[ra.stop :])
            cand = np.flatnonzero(near) + ra.stop
            for c0 in range(0, len(cand), _COLS_SELF):
                cols = cand[c0 : c0 + _COLS_SELF]
                rows_sum, cols_sum = blocks.sums(ra, cols, col_sums=True)
                own += rows_sum
                total[cols - first] += cols_sum
        return first, total

    total = np.zeros(n)
    with _workers(threads, torch) as pmap:
        for g, sums in zip(groups, pmap(own, groups), strict=True):
            total[part.start[g.start] : part.start[g.stop]] = sums
        reach = _reach(np.log(total), n, h)
        ball_reach = np.maximum.reduceat(reach, part.start[:-1])
        for first, part_total in pmap(work, groups):
            total[first:] += part_total
    out = np.empty(n)
    out[part.order] = np.log(total)
    return out


def _cross_sums(y: np.ndarray, x: np.ndarray, h: float, threads: int | None) -> np.ndarray:
    """log sum_j K(y_a, x_j) for many rows: balls of x, each visiting the rows it can matter to.

    Row a's sum is at least the term of its nearest x, whose distance is at most
    ``u_a = min_b (|y_a - c_b| + r_b)``, so x beyond ``R_a = sqrt(u_a^2 + 2 h^2 (TAIL + log n))``
    add less than ``REL_TOL`` of it together. Ball b visits the rows with
    ``|y_a - c_b| - r_b <= R_a``. A task is a group of balls with its own sums.
    """
    m, n = len(y), len(x)
    s = -0.5 / (h * h)
    tail2 = 2.0 * h * h * (TAIL + math.log(n))
    part = BallPartition(x, _LEAF_X)
    left, right = _augmented(y, s, True), _augmented(part.points, s, False)
    yn = _sqnorm(y)
    groups = part.groups(_TASK_X)
    torch, threads = _engine(float(m) * n, threads)
    leaf = int(np.diff(part.start).max())

    def dists(g: range) -> np.ndarray:
        return _centre_dists(y, yn, part.centre[g.start : g.stop])

    def bound(g: range) -> np.ndarray:
        return (dists(g) + part.radius[g.start : g.stop]).min(axis=1)

    def work(g: range) -> np.ndarray:
        blocks = _Blocks(left, right, torch, _ROWS_X, leaf)
        total = np.zeros(m)
        dc = dists(g)
        dc -= part.radius[g.start : g.stop]
        for b in g:
            cand = np.flatnonzero(dc[:, b - g.start] <= reach)
            for c0 in range(0, len(cand), _ROWS_X):
                rows = cand[c0 : c0 + _ROWS_X]
                total[rows] += blocks.sums(rows, part.rows(b))[0]
        return total

    upper = np.full(m, np.inf)
    total = np.zeros(m)
    with _workers(threads, torch) as pmap:
        for u in pmap(bound, groups):
            np.minimum(upper, u, out=upper)
        reach = np.sqrt(upper**2 + tail2)
        for part_total in pmap(work, groups):
            total += part_total

    def exponents(rows):
        for c0 in range(0, n, _COLS_SELF):
            yield left[rows] @ right[c0 : c0 + _COLS_SELF].T

    return _log_or_redo(total, exponents)


def _cross_row_balls(
    y: np.ndarray, x: np.ndarray, mu: np.ndarray, h: float, threads: int | None
) -> np.ndarray:
    """log sum_j K(y_a, x_j - mu) for at most as many rows as points: balls of y visit the x.

    ``y`` is centred, ``x`` is not (it is read once, a run at a time, and centred on the fly).
    The exact sums of the rows over a strided sample of x bound their full sums from below and
    give each row a radius R_a (:func:`_reach`). Each ball's rows are split in up to two groups
    by ``|y_a - c_b| + R_a`` (the split that the sample says visits fewest pairs), so a few rows
    that need far points do not make the whole ball visit them; a group g with centroid c_g
    visits the x within ``max_a (|y_a - c_g| + R_a)`` of c_g. A task is a run of x.
    """
    m, n = len(y), len(x)
    d = x.shape[1]
    s = -0.5 / (h * h)
    part = BallPartition(y, _leaf_y(m))
    left = _augmented(part.points, s, True)
    sizes = np.diff(part.start)
    rho = np.sqrt(_sqnorm(part.points - np.repeat(part.centre, sizes, axis=0)))
    torch, threads = _engine(float(m) * n, threads)
    step = 512 * max(2, -(-n // (_ROW_TASKS * 512)))  # _ROW_TASKS runs, whatever the threads
    runs = range(0, n, step)

    def centres_matrix(c: np.ndarray) -> np.ndarray:
        """``[x - mu, 1, s|x - mu|^2] @ cmat = |x - mu - c|^2`` for each centre c."""
        cmat = np.empty((d + 2, len(c)))
        cmat[:d], cmat[d], cmat[d + 1] = -2.0 * c.T, _sqnorm(c), 1.0 / s
        return cmat

    def dists(right: np.ndarray, cmat: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        d2 = np.matmul(right, cmat, out=out)
        np.maximum(d2, 0.0, out=d2)
        return np.sqrt(d2, out=d2)

    # lower bounds of the row sums, and the row groups of each ball
    stride = max(1, n // _SAMPLE)
    sample = _augmented(x[::stride], s, False, centre=mu)
    sample_d = np.sort(dists(sample, centres_matrix(part.centre)), axis=0)
    if torch is None:
        log_lower = _lse_rows(left @ sample.T)
    else:
        log_lower = torch.logsumexp(torch.from_numpy(left) @ torch.from_numpy(sample).T, 1).numpy()
    reach = _reach(log_lower, n, h)
    need = rho + reach
    groups = []  # (rows, centre, reach from it)
    for b in range(len(part)):
        lo = part.start[b]
        order = np.argsort(need[lo : lo + sizes[b]])
        v = need[lo : lo + sizes[b]][order]
        cnt = np.searchsorted(sample_d[:, b], v, side="right") * (n / len(sample))
        rows = lo + order
        i = 0
        for j in _split(cnt, _GROUP_COST * len(runs)):
            g = np.sort(rows[i:j])
            c = part.points[g].mean(axis=0)  # the group's own centre: its rows lie closer
            groups.append((g, c, float((np.sqrt(_sqnorm(part.points[g] - c)) + reach[g]).max())))
            i = j
    cmat = centres_matrix(np.array([c for _, c, _ in groups]))

    def work(c0: int) -> np.ndarray:
        stop = min(c0 + step, n)
        k = stop - c0
        right = _buffer("run", k * (d + 2))[: k * (d + 2)].reshape(k, d + 2)
        right = _augmented(x[c0:stop], s, False, centre=mu, out=right)
        dist = _buffer("dist", k * len(groups))[: k * len(groups)].reshape(k, -1)
        dist = dists(right, cmat, dist)
        blocks = _Blocks(left, right, torch, _leaf_y(m), k)
        total = np.zeros(m)
        for g, (rows, _, r_g) in enumerate(groups):
            cols = np.flatnonzero(dist[:, g] <= r_g)
            if len(cols):
                total[rows] += blocks.sums(rows, cols)[0]
        return total

    total = np.zeros(m)
    with _workers(threads, torch) as pmap:
        for part_total in pmap(work, runs):
            total += part_total

    def exponents(rows):
        for c0 in range(0, n, _COLS_SELF):
            yield left[rows] @ _augmented(x[c0 : c0 + _COLS_SELF], s, False, centre=mu).T

    out = np.empty(m)
    out[part.order] = _log_or_redo(total, exponents)
    return out


def _leaf_y(m: int) -> int:
    """Rows per ball of Y: ``_LEAF_Y``, up to 4x as many for many rows (fewer, larger calls)."""
    return int(min(4 * _LEAF_Y, max(_LEAF_Y, m // 16)))


def _split(cnt: np.ndarray, overhead: float, most: int = 2) -> list[int]:
    """Ends of at most ``most`` consecutive groups of sorted rows, fewest visited pairs.

    Row i (sorted by reach) visits ``cnt[i]`` points, ``cnt`` non-decreasing; a group of rows
    visits, for each of its rows, the points of its last row, plus ``overhead`` pairs for the
    calls it costs. Dynamic programming over the group ends.
    """
    k = len(cnt)
    idx = np.arange(k + 1)
    # best[j]: fewest pairs for the first j rows; cost of a group (i, j] is (j - i) cnt[j - 1]
    best = np.full(k + 1, np.inf)
    best[0] = 0.0
    ends = []
    cuts = []
    for _ in range(most):
        # new[j] = min_i best[i] + (j - i) cnt[j - 1] + overhead, for i < j
        cand = best[None, :] + (idx[1:, None] - idx[None, :]) * cnt[:, None] + overhead
        cand[np.triu_indices(k, 1, k + 1)] = np.inf  # i >= j is not a group
        arg = np.argmin(cand, axis=1)
        new = np.concatenate([[np.inf], cand[np.arange(k), arg]])
        cuts.append(np.concatenate([[0], arg]))
        best = new
        ends.append(best)
    g = int(np.argmin([e[k] for e in ends])) + 1  # number of groups
    out, j = [], k
    for level in range(g - 1, -1, -1):
        out.append(j)
        j = int(cuts[level][j])
    return out[::-1]


def _cross_all(y: np.ndarray, x: np.ndarray, h: float, threads: int | None) -> np.ndarray:
    """log sum_j K(y_a, x_j) over every pair, for few rows: a task is a run of x."""
    m, n = len(y), len(x)
    s = -0.5 / (h * h)
    left, right = _augmented(y, s, True), _augmented(x, s, False)
    torch, threads = _engine(float(m) * n, threads)
    step = _COLS_SELF * max(4, -(-n // (16 * _COLS_SELF)))  # ~16 tasks, whatever the threads

    def work(c0: int) -> np.ndarray:
        blocks = _Blocks(left, right, torch, m, _COLS_SELF)
        total = np.zeros(m)
        for b0 in range(c0, min(c0 + step, n), _COLS_SELF):
            total += blocks.sums(slice(0, m), slice(b0, min(b0 + _COLS_SELF, c0 + step)))[0]
        return total

    total = np.zeros(m)
    with _workers(threads, torch) as pmap:
        for part_total in pmap(work, range(0, n, step)):
            total += part_total

    def exponents(rows):
        for c0 in range(0, n, _COLS_SELF):
            yield left[rows] @ right[c0 : c0 + _COLS_SELF].T

    return _log_or_redo(total, exponents)

"""Gaussian kernel sums ``log sum_j exp(-|y_a - x_j|^2 / (2 h^2))`` in float64.

Two engines with the same result:

* :func:`log_kernel_sum_blocked` — every pair, in row x column blocks: squared distances
  ``|y|^2 + |x|^2 - 2 y.x`` (clipped at 0), then the kernel (the brute-force oracle; numpy, one
  thread).
* :func:`log_kernel_sum_pruned` — the points of one set are grouped into balls (centroid,
  radius) by recursive bisection (cut on a 16-axis PCA sketch, balls exact); a ball visits only
  the points of the other set that can lie within the pruning radius R of one of its points
  (triangle inequality on the distance to the ball centre). R makes everything skipped sum to
  less than ``exp(-TAIL)`` (~1e-16) of the row's kernel sum: for ``Y is X`` each sum holds its
  self term (>= 1), ``R^2 = 2 h^2 (TAIL + log n)`` (9.8 h for n = 1e5), and each pair is
  visited once (the kernel is symmetric); otherwise balls of X visit the rows of Y, and an upper
  bound u_a on row a's distance to its nearest x bounds its sum from below,
  ``R_a^2 = u_a^2 + 2 h^2 (TAIL + log n)``. With fewer than ``_ALL_PAIRS_ROWS`` rows in Y the
  partition of X costs more than it saves and every pair is visited. Exponents come from one
  GEMM of augmented vectors, ``s |y - x|^2 = [-2s y, s|y|^2, 1] . [x, 1, s|x|^2]``,
  ``s = -1 / (2 h^2)``, then an in-place exp and row (and column) sums.

Both centre the data on the mean of X; self terms are set to exactly 1; the round-off of an
exponent is about ``1e-16 |s| max|x - mean|^2`` (~1e-13 for QUESTS descriptors).

Threads and exp of the pruned engine. Its work is split into tasks (a few balls, or a run of
X), run on ``threads`` worker threads (``PFD_THREADS``, else ``min(2, os.cpu_count())``): numpy's
GEMM, exp and sums release the GIL, and so does torch. Each task sums into arrays of its own,
reduced in task order, so the result does not depend on the number of threads; the wall-clock
gain needs free cores, and BLAS should run one thread (``OPENBLAS_NUM_THREADS=1``) or the two
levels of threads compete. The exp is torch's float64 exp (SLEEF, vectorised: ~2.3 ns a value
against numpy's ~5.5 ns on a CPU without AVX-512; equal to 1 ulp) when torch is already
imported, or importable and the sums have over ``_TORCH_MIN_PAIRS`` pairs (importing torch takes
~1.5 s); numpy's otherwise. torch would also run each exp on an OpenMP team of its own, which
fights the workers: the workers set torch to one thread, and torch's thread count (which that
call also sets process-wide) is restored when the sums are done. Small sums (up to
``_SERIAL_MAX_PAIRS``) without torch run in the calling thread.

Cost per visited pair, one core: GEMM (65 columns) ~4.5 ns, exp 2.3-5.5 ns, sums ~1 ns. The
gain of pruning is bounded by the fraction of pairs within R, a property of the data: for
MD-like data of a few phases a third or more of all pairs are (one phase's environments lie
within a few h of each other) and ~60 % of the pairs are visited; the sparser the data, the
larger the gain. For dH with few rows of Y against many of X the partition of X (~0.2 s for
1e5 points) is a fixed cost.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

TAIL = 37.0  # neglected terms sum to < exp(-37) ~ 8.5e-17 of each kernel sum
DH_INF = 1074.0 * math.log(2.0)  # -log of the smallest positive float64: dH beyond is +inf
_TINY = 1e-300  # plain sums at or below this are redone as shifted log-sum-exp
_BLOCK = 1024  # rows/columns of a dense block in the brute-force engine
_LEAF_SELF = 256  # points per ball, Y is X
_COLS_SELF = 512  # columns per GEMM block, Y is X (256 x 512 float64: 1 MB, one L2)
_TASK_SELF = 4  # balls per task, Y is X
_LEAF_X = 256  # points per ball of X, Y is not X
_ROWS_X = 1024  # rows of Y per GEMM block, Y is not X
_TASK_X = 8  # balls per task, Y is not X
_SKETCH = 16  # principal axes on which the balls are cut
_ALL_PAIRS_ROWS = 512  # below this many rows of Y, partitioning X costs more than it saves


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
_USE_TORCH: bool | None = None  # torch's exp: None = when it pays (see _engine); True / False
_TORCH_MIN_PAIRS = 2e9  # pairs from which importing torch (~1.5 s) pays for itself
_SERIAL_MAX_PAIRS = 2e6  # pairs up to which numpy-only sums run in the calling thread


def _numpy_exp(k: np.ndarray) -> np.ndarray:
    return np.exp(k, out=k)


def _engine(pairs: float, threads: int | None):
    """``(exp_, torch, threads)`` for sums over ``pairs`` pairs (before pruning).

    ``exp_`` is an in-place exp of a C-contiguous float64 block: torch's where torch is already
    imported, or importable and the sums are large enough to repay its import (~1.5 s); numpy's
    otherwise. torch's (SLEEF, AVX2) takes ~2.3 ns a value against numpy's ~5.5 ns on CPUs
    without AVX-512, and agrees with it to 1 ulp. ``threads`` is the number of worker threads,
    0 for the calling thread: small numpy-only sums, for which a pool costs more than it saves.
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
        return _numpy_exp, None, (0 if pairs <= _SERIAL_MAX_PAIRS else threads)

    def exp_(k: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(k)  # shares k's memory
        torch.exp(t, out=t)
        return k

    return exp_, torch, threads


@contextmanager
def _workers(threads: int, torch):
    """``map(work, tasks)`` on ``threads`` worker threads (0: in the calling thread).

    Results come in task order, so the sums they are reduced into, in that order, do not depend
    on the number of threads. numpy's GEMM, exp and sums and torch's exp release the GIL. torch
    would also run each exp on an OpenMP team of its own: the workers set torch to one thread
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


def _augmented(x: np.ndarray, s: float, left: bool) -> np.ndarray:
    """Rows ``[-2s x, s|x|^2, 1]`` (left) or ``[x, 1, s|x|^2]`` (right): their products are
    the exponents ``s |y - x|^2``."""
    n, d = x.shape
    out = np.empty((n, d + 2))
    sn = s * _sqnorm(x)
    if left:
        np.multiply(x, -2.0 * s, out=out[:, :d])
        out[:, d], out[:, d + 1] = sn, 1.0
    else:
        out[:, :d] = x
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
    mu = x.mean(axis=0)
    x = x - mu
    if same:
        return _self_sums(x, h, threads)
    if m < _ALL_PAIRS_ROWS:
        return _cross_all(y - mu, x, h, threads)
    return _cross_sums(y - mu, x, h, threads)


def _self_sums(x: np.ndarray, h: float, threads: int | None) -> np.ndarray:
    """log sum_j K(x_i, x_j) over all j (self term included), each pair visited once.

    A task is a few consecutive balls; ball a visits itself and the later points within reach.
    """
    n = len(x)
    s = -0.5 / (h * h)
    r = math.sqrt(2.0 * h * h * (TAIL + math.log(n)))  # every sum is >= 1 (self term)
    part = BallPartition(x, _LEAF_SELF)
    xo = part.points
    xno = _sqnorm(xo)
    left, right = _augmented(xo, s, True), _augmented(xo, s, False)
    exp_, torch, threads = _engine(0.5 * n * n, threads)

    def work(balls: range) -> tuple[int, np.ndarray]:
        """Sums over the pairs of these balls, for points ``first`` onwards."""
        first = part.start[balls.start]
        total = np.zeros(n - first)
        dc = _centre_dists(xo[first:], xno[first:], part.centre[balls.start : balls.stop])
        for a in balls:
            ra = part.rows(a)
            la, own = left[ra], total[ra.start - first : ra.stop - first]
            k = la @ right[ra].T  # the ball with itself: symmetric, row sums suffice
            np.fill_diagonal(k, 0.0)  # self terms are exactly 1
            own += exp_(k).sum(axis=1)
            # later points that can lie within r of a point of ball a
            near = dc[ra.stop - first :, a - balls.start] <= part.radius[a] + r
            cand = np.flatnonzero(near) + ra.stop
            for c0 in range(0, len(cand), _COLS_SELF):
                cols = cand[c0 : c0 + _COLS_SELF]
                k = exp_(la @ right[cols].T)
                own += k.sum(axis=1)
                total[cols - first] += k.sum(axis=0)
        return first, total

    total = np.zeros(n)
    with _workers(threads, torch) as pmap:
        for first, part_total in pmap(work, part.groups(_TASK_SELF)):
            total[first:] += part_total
    out = np.empty(n)
    out[part.order] = np.log(total)
    return out


def _cross_sums(y: np.ndarray, x: np.ndarray, h: float, threads: int | None) -> np.ndarray:
    """log sum_j K(y_a, x_j): balls of x, each visiting the rows of y it can matter to.

    Row a's sum is at least the term of its nearest x, whose distance is at most
    ``u_a = min_b (|y_a - c_b| + r_b)``; x outside ``R_a = sqrt(u_a^2 + 2 h^2 (TAIL + log n))``
    add less than ``exp(-TAIL)`` of it together. Ball b visits the rows with
    ``|y_a - c_b| - r_b <= R_a``. A task is a group of balls with its own sums.
    """
    m, n = len(y), len(x)
    s = -0.5 / (h * h)
    tail2 = 2.0 * h * h * (TAIL + math.log(n))
    part = BallPartition(x, _LEAF_X)
    xo = part.points
    left, right = _augmented(y, s, True), _augmented(xo, s, False)
    yn = _sqnorm(y)
    groups = part.groups(_TASK_X)
    exp_, torch, threads = _engine(float(m) * n, threads)

    def dists(g: range) -> np.ndarray:
        return _centre_dists(y, yn, part.centre[g.start : g.stop])

    def bound(g: range) -> np.ndarray:
        return (dists(g) + part.radius[g.start : g.stop]).min(axis=1)

    def work(g: range) -> np.ndarray:
        total = np.zeros(m)
        dc = dists(g)
        dc -= part.radius[g.start : g.stop]
        for b in g:
            rb = right[part.rows(b)].T
            cand = np.flatnonzero(dc[:, b - g.start] <= reach)
            for c0 in range(0, len(cand), _ROWS_X):
                rows = cand[c0 : c0 + _ROWS_X]
                total[rows] += exp_(left[rows] @ rb).sum(axis=1)
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


def _cross_all(y: np.ndarray, x: np.ndarray, h: float, threads: int | None) -> np.ndarray:
    """log sum_j K(y_a, x_j) over every pair, for few rows: a task is a run of x."""
    m, n = len(y), len(x)
    s = -0.5 / (h * h)
    left, right = _augmented(y, s, True), _augmented(x, s, False)
    exp_, torch, threads = _engine(float(m) * n, threads)
    step = _COLS_SELF * max(4, -(-n // (16 * _COLS_SELF)))  # ~16 tasks, whatever the threads

    def work(c0: int) -> np.ndarray:
        total = np.zeros(m)
        for b0 in range(c0, min(c0 + step, n), _COLS_SELF):
            total += exp_(left @ right[b0 : min(b0 + _COLS_SELF, c0 + step)].T).sum(axis=1)
        return total

    total = np.zeros(m)
    with _workers(threads, torch) as pmap:
        for part_total in pmap(work, range(0, n, step)):
            total += part_total

    def exponents(rows):
        for c0 in range(0, n, _COLS_SELF):
            yield left[rows] @ right[c0 : c0 + _COLS_SELF].T

    return _log_or_redo(total, exponents)

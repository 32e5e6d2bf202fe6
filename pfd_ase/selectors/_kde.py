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
* fewer rows than points (dH of test environments against a large reference): cells of X
  (Voronoi cells of k-means centres, ~``_CELL`` points each, assigned in a float32 sketch;
  each point's exact distance to its centre is computed as it is assigned) visit the rows;
  L_a is the exact sum over a random sample of X. A cell with centre c and exact radius r_c
  visits the rows with ``|y_a - c| <= r_c + R_a``: each row is tested on its own, and the
  blocks (rows x the cell's points) stay large. Within a cell, row a needs only the points
  with ``|x - c| >= |y_a - c| - R_a``: with the points sorted farthest first, a prefix; the
  rows are cut into up to four groups by the prefix they need.
* more rows than points: balls of X visit the rows of Y; L_a is the term of the nearest x,
  whose distance is at most ``u_a = min_b (|y_a - c_b| + r_b)``.
* under ``_ALL_PAIRS_ROWS`` rows: every pair.

Exponents come from one GEMM of augmented vectors, ``s |y - x|^2 = [-2s y, s|y|^2, 1] .
[x, 1, s|x|^2]``, ``s = -1 / (2 h^2)``, then an in-place exp and row (and column) sums. The data
are centred on the mean of a strided sample of X; self terms are set to exactly 1; the
round-off of an exponent is about ``1e-16 |s| max|x - mean|^2`` (~1e-13 for QUESTS
descriptors).

Threads. The work is split into tasks (a few balls, a run of X or a run of cells) run on
``threads`` worker threads (``PFD_THREADS``, else ``min(2, os.cpu_count())``); each task sums
into arrays of its own, reduced in task order, so the result does not depend on the number of
threads. Tasks borrow sets of buffers that outlive the call (fresh large arrays cost their page
faults, ~1 ms per MB on a VM).

Blocks. Where the optional extension ``_kde_fused`` is built (``setup.py``, C with AVX2 and FMA,
checked at run time) the sums go through fused kernels (:func:`_fused`; all but H's blocks of a
ball with itself, whose self terms stay exactly 1): the points of a cell (or ball, or block of
columns) are packed in panels of 8, and each 4-row x 8-point tile of exponents is accumulated in
registers, exponentiated there (a Taylor exp within 2.3e-16 of the correctly rounded value;
terms below e^-708 are flushed to 0, hence ``_TINY`` = 1e-280) and added to its rows' sums; no
block is stored, and a tile whose exponents all lie below the rows' pruning floor
``-R_a^2 / (2 h^2)`` is not exponentiated (dH only; those terms are within the bound above). ~4
ns a pair on one core, against ~6 for the blocks below. Otherwise, and for every pair under
``_ALL_PAIRS_ROWS`` rows, blocks are computed with torch (MKL GEMM, SLEEF exp, on reused
buffers: ~6.5 ns a pair on one core) when torch is already imported, or importable and the
sums have over ``_TORCH_MIN_PAIRS`` pairs
(importing torch takes ~1.5 s); with numpy otherwise (~7.5-9 ns a pair; its exp alone is 5.5 ns
a value against SLEEF's 2 on CPUs without AVX-512). BLAS should run one thread
(``OPENBLAS_NUM_THREADS=1``), or the two levels of threads compete. torch would run each op on
an OpenMP team of its own: the workers set torch to one thread, and torch's thread count (which
that call also sets process-wide) is restored when the sums are done. Small sums (up to
``_SERIAL_MAX_PAIRS``) without torch run in the calling thread. ctypes releases the GIL during
the fused kernels, numpy and torch during their blocks.

What pruning can gain is bounded by the data. For MD-like data of a few phases (one phase's
environments lie within a few h of each other) about a third of all pairs lie within reach and
about half are visited (a ball's radius adds to the reach); the sparser the data, the larger
the gain.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial

import numpy as np

REL_TOL = 1e-11  # pruned terms add up to less than this fraction of each kernel sum
TAIL = -math.log(REL_TOL)
DH_INF = 1074.0 * math.log(2.0)  # -log of the smallest positive float64: dH beyond is +inf
_TINY = 1e-280  # plain sums at or below this are redone as shifted log-sum-exp (the fused
# kernels flush terms below e^-708 to 0: n of them stay below 1e-11 of such a sum up to n ~ 1e15)
_BLOCK = 1024  # rows/columns of a dense block in the brute-force engine
_LEAF_SELF = 512  # points per ball, Y is X (larger blocks pay more than tighter balls)
_COLS_SELF = 1024  # columns per GEMM block, Y is X (512 x 1024 float64: 4 MB)
_TASK_SELF = 4  # balls per task, Y is X
_LEAF_X = 256  # points per ball of X, Y is not X
_ROWS_X = 1024  # rows of Y per GEMM block, Y is not X
_TASK_X = 8  # balls per task, Y is not X
_SKETCH = 16  # principal axes on which the balls are cut
_CELL = 1600  # points per cell of X, Y has fewer rows than X has points
_GROUP_COST = 5000.0  # pairs that one more GEMM call costs, in time
_ROW_GROUPS = 4  # groups of rows (by the points they need) per cell
_CELL_SKETCH = 8  # principal axes on which points are assigned to cells
_KMEANS_SAMPLE = 4096  # points of X from which the cell centres are found
_ASSIGN_CHUNK = 1024  # points assigned to cells at a time (keeps the distances in cache)
_ROW_TASKS = 32  # runs of X (assignment) and of cells (sums), Y has fewer rows than X
_SAMPLE = 1024  # points of X whose exact sums bound the sums of Y's rows from below
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


def _exponent_blocks(left: np.ndarray, n: int, right_cols):
    """``exponents(rows)`` for :func:`_log_or_redo`: the blocks ``left[rows] @ right.T`` over
    all n columns, ``_BLOCK`` at a time; ``right_cols(c0, c1)`` gives the right-hand rows."""

    def exponents(rows: np.ndarray):
        for c0 in range(0, n, _BLOCK):
            yield left[rows] @ right_cols(c0, min(c0 + _BLOCK, n)).T

    return exponents


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


_FUSED: bool | None = None  # fused C kernels: None = when built and the CPU has AVX2 + FMA
_FUSED_LIB: list = []  # the loaded library (or None), once looked for


def _fused():
    """The compiled kernels of ``_kde_fused.c`` (a ctypes library), or None.

    None when :data:`_FUSED` is False, when the optional extension was not built (no C
    compiler at install time, another architecture) or when this CPU lacks AVX2 and FMA.
    """
    if _FUSED is False:
        return None
    if not _FUSED_LIB:
        lib = None
        try:
            from pfd_ase.selectors import _kde_fused

            lib = ctypes.CDLL(_kde_fused.__file__)
            ptr, i64 = ctypes.c_void_p, ctypes.c_int64
            lib.pfd_block_sums.argtypes = [ptr, i64, ptr, i64, ptr, i64, ptr, ptr, i64, ptr]
            lib.pfd_pack_cell.argtypes = [ptr, i64, ptr, i64, ptr, ptr, ptr]
            lib.pfd_centre_dists.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, ptr]
            lib.pfd_exp.argtypes = [ptr, ptr, i64]
            for name in ("pfd_block_sums", "pfd_pack_cell", "pfd_centre_dists", "pfd_exp"):
                getattr(lib, name).restype = None
            if np.dtype(np.intp).itemsize != 8 or not lib.pfd_cpu_ok():
                lib = None
        except (ImportError, OSError, AttributeError):  # not built, or built from older sources
            lib = None
        _FUSED_LIB.append(lib)
    return _FUSED_LIB[0]


def _ptrs(*args):
    """ctypes arguments: the data pointer of each array (None: NULL), others unchanged.

    The arrays must outlive the call that uses the pointers: name them, or keep them in a tuple.
    """
    return [a.ctypes.data if isinstance(a, np.ndarray) else a for a in args]


def _panels(lib, x: np.ndarray, idx: np.ndarray, mu: np.ndarray, sn: np.ndarray, key=None):
    """The points ``x[idx] - mu`` with their last augmented column ``sn[idx]``, packed in panels
    of 8 for :func:`_fused`'s kernels: ``(panels, number of panels)``.

    ``x`` is C-contiguous float64; ``key`` names a reused buffer (:func:`_buffer`), None a new
    array.
    """
    npanel = -(-len(idx) // 8)
    size = npanel * 8 * (x.shape[1] + 2)
    out = np.empty(size) if key is None else _buffer(key, size)
    lib.pfd_pack_cell(*_ptrs(x, x.shape[1], idx, len(idx), mu, sn, out))
    return out, npanel


_LOCAL = threading.local()
_SLOTS: list[dict] = []  # buffer sets of finished tasks, for the next tasks (of any call)
_SLOTS_LOCK = threading.Lock()


def _buffer(key: str, size: int, torch=None, dtype=np.float64):
    """A flat buffer of ``size`` values (float64, or ``dtype`` with numpy), reused (grown when
    too small).

    Fresh large arrays cost their page faults on first touch (~1 ms per MB on a VM), as much as
    the arithmetic on them. The calling thread keeps its own buffers; a task on the worker
    threads borrows a set of buffers that outlives the call's pool (:func:`_workers`), so the
    next call's tasks find them already touched.
    """
    bufs = _LOCAL.__dict__.setdefault("bufs", {})
    key = (key, torch is not None, np.dtype(dtype).char)
    buf = bufs.get(key)
    if buf is None or len(buf) < size:
        grown = max(size, 2 * len(buf) if buf is not None else 0)
        buf = np.empty(grown, dtype) if torch is None else torch.empty(grown, dtype=torch.float64)
        bufs[key] = buf
    return buf[:size]


class _Blocks:
    """Kernel blocks ``exp(left[rows] @ right[cols].T)`` and their sums, in one task's buffers.

    ``rows`` x ``cols``: the largest block. ``sums`` takes slices or index arrays (gathered
    into a buffer) of rows and columns. With torch (one thread per worker): its GEMM (MKL),
    SLEEF exp and sums on preallocated buffers, ~6 ns a pair on one core; numpy's (OpenBLAS
    GEMM, exp) ~7.5-9 ns. Both agree to round-off (~1e-16).
    """

    def __init__(self, left: np.ndarray, right: np.ndarray, torch, rows: int, cols: int):
        d = right.shape[1]
        self.torch, self.d = torch, d
        if torch is None:
            self.left, self.right = left, right
        else:
            self.left, self.right = torch.from_numpy(left), torch.from_numpy(right)
        self.kbuf = _buffer("block", rows * cols, torch)

    def _take(self, a, idx, key: str):
        if isinstance(idx, slice):
            return a[idx]
        out = _buffer(key, len(idx) * self.d, self.torch)
        if self.torch is None:
            out = out.reshape(len(idx), self.d)
            return np.take(a, idx, axis=0, out=out, mode="clip")  # in range: unbuffered
        out = out.view(len(idx), self.d)
        return self.torch.index_select(a, 0, self.torch.from_numpy(idx), out=out)

    def sums(self, rows, cols, col_sums: bool = False, self_block: bool = False):
        """Row sums (and column sums) of the block; ``self_block``: its diagonal terms are 1."""
        la = self._take(self.left, rows, "rows")
        rc = self._take(self.right, cols, "cols")
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

    def borrowing(work, task):
        with _SLOTS_LOCK:
            _LOCAL.bufs = _SLOTS.pop() if _SLOTS else {}
        try:
            return work(task)
        finally:
            with _SLOTS_LOCK:
                _SLOTS.append(_LOCAL.bufs)
                del _SLOTS[: -max(threads, 1)]  # as many sets as threads, no more

    try:
        yield lambda work, tasks: pool.map(partial(borrowing, work), tasks)
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
        return _cross_cells(y - mu, x, mu, h, threads)
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

    lib = _fused()
    if lib is not None:
        d = x.shape[1]
        sn, zero = right[:, d + 1].copy(), np.zeros(d)

    def fused(ra: slice, cols: np.ndarray, total: np.ndarray, first: int) -> None:
        """The rows of ``ra`` with the points ``cols`` through the fused kernels."""
        panels, npanel = _panels(lib, xo, cols, zero, sn, "panels")
        col_sums = _buffer("col_sums", npanel * 8)
        col_sums[:] = 0.0
        rows = np.arange(ra.start, ra.stop)
        args = (left, d + 2, rows, len(rows), panels, npanel, None, total, first, col_sums)
        lib.pfd_block_sums(*_ptrs(*args))
        total[cols - first] += col_sums[: len(cols)]

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
                if lib is not None:
                    fused(ra, cols, total, first)
                    continue
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

    lib = _fused()
    if lib is not None:  # the balls' points in panels of 8, for the fused kernels
        d = x.shape[1]
        sn, zero = right[:, d + 1].copy(), np.zeros(d)

    def work(g: range) -> np.ndarray:
        blocks = _Blocks(left, right, torch, _ROWS_X, leaf)
        total = np.zeros(m)
        dc = dists(g)
        dc -= part.radius[g.start : g.stop]
        for b in g:
            cand = np.flatnonzero(dc[:, b - g.start] <= reach)
            if lib is not None:
                pts = np.arange(part.start[b], part.start[b + 1])
                panels, npanel = _panels(lib, part.points, pts, zero, sn, "panels")
                args = (left, d + 2, cand, len(cand), panels, npanel, floor, total, 0, None)
                lib.pfd_block_sums(*_ptrs(*args))
                continue
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
        floor = s * reach * reach  # exponents of the pairs beyond reach lie below
        for part_total in pmap(work, groups):
            total += part_total

    return _log_or_redo(total, _exponent_blocks(left, n, lambda c0, c1: right[c0:c1]))


def _cross_cells(
    y: np.ndarray, x: np.ndarray, mu: np.ndarray, h: float, threads: int | None
) -> np.ndarray:
    """log sum_j K(y_a, x_j - mu) for at most as many rows as points: cells of x visit the rows.

    ``y`` is centred, ``x`` is not (each cell's points are gathered and centred on the fly).
    The exact sums of the rows over a sample of x bound their full sums from below and
    give each row a radius R_a (:func:`_reach`). x is cut into Voronoi cells of about ``_CELL``
    points: centres by k-means on a sample, sketched (float32) on its ``_CELL_SKETCH`` principal
    axes, and each point assigned to the nearest centre in the sketch, its exact distance to
    that centre (lifted back to full space) computed as it is assigned. The cells only have to
    be compact: a cell's radius r_c is exact, and the cell visits the rows with
    ``|y_a - c| <= r_c + R_a``, each the prefix of its points (sorted farthest first) with
    ``|x - c| >= |y_a - c| - R_a``, in up to ``_ROW_GROUPS`` groups of rows (:func:`_stairs`),
    through the fused kernels when built (:func:`_fused`), else in torch or numpy blocks. One
    part of the lower bounds is computed beside the centres, the rest beside the assignment (a
    run of points at a time); then a task is a run of consecutive cells.
    """
    m, n = len(y), len(x)
    d = x.shape[1]
    s = -0.5 / (h * h)
    left = _augmented(y, s, True)
    torch, threads = _engine(float(m) * n, threads)
    lib = _fused()
    if lib is not None:
        x, mu = np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(mu)
    # a fixed pseudo-random sample (a stride could alias with periodic data, e.g. MD frames)
    # for the centres; every few of its points for the lower bounds and the sketch axes
    pick = np.sort(np.random.default_rng(0).choice(n, min(n, _KMEANS_SAMPLE), replace=False))
    pts = np.take(x, pick, axis=0, out=_buffer("pick", len(pick) * d).reshape(-1, d), mode="clip")
    pts -= mu
    runs = _ROW_TASKS
    sample = _augmented(pts[np.unique(np.linspace(0, len(pts) - 1, _SAMPLE).astype(int))], s, False)
    if lib is not None:  # the sample in panels, for the fused kernels
        coords, sample_sn = np.ascontiguousarray(sample[:, :d]), sample[:, d + 1].copy()
        panels, npanel = _panels(lib, coords, np.arange(len(sample)), np.zeros(d), sample_sn)

    def lower(rows: np.ndarray) -> np.ndarray:
        """log of the rows' sums over the sample of x (a lower bound of their full sums)."""
        if lib is not None:  # rows: a range
            total = np.zeros(len(rows))
            off = rows[0] if len(rows) else 0
            args = (left, d + 2, rows, len(rows), panels, npanel, None, total, off)
            lib.pfd_block_sums(*_ptrs(*args, None))
        else:
            total = _Blocks(left, sample, torch, len(rows), len(sample)).sums(rows, slice(None))[0]
        return _log_or_redo(total, lambda low: [left[rows[low]] @ sample.T])

    def centres() -> tuple[np.ndarray, np.ndarray]:
        """Sketch axes (d, p) and cell centres (k, p), float32, centred on mu."""
        few = sample[:, :d]
        axes = np.linalg.eigh(few.T @ few)[1][:, -min(_CELL_SKETCH, d) :]
        k = max(1, min(n // _CELL, len(pts)))
        return np.ascontiguousarray(axes), _kmeans((pts @ axes).astype(np.float32), k)

    def call(job):
        return job()

    with _workers(threads, torch) as pmap:
        # the lower bounds (compute) share the pool with the centres, then the assignment
        # (which reads all of x: memory): three parts, one beside the centres
        parts = [partial(lower, rows) for rows in np.array_split(np.arange(m), 3)]
        (axes, zc), low0 = pmap(call, [centres, parts[0]])
        p, k = axes.shape[1], len(zc)
        cen = zc.astype(np.float64) @ axes.T  # full-space centres (centred on mu)
        zc = zc + (mu @ axes).astype(np.float32)  # for the uncentred x
        axes32 = axes.astype(np.float32)
        cmat = np.empty((p + 1, k), dtype=np.float32)  # [z, 1] @ cmat = |z - zc|^2 - |z|^2
        cmat[:p], cmat[p] = -2.0 * zc.T, _sqnorm(zc)
        cen_norm = _sqnorm(cen)
        labels = np.empty(n, dtype=np.int16 if k < 2**15 else np.int64)
        norms, dists = np.empty(n), np.empty(n)  # |x - mu|^2 and |x - own centre|
        step = -(-n // runs)

        def assign(c0: int) -> None:
            for a0 in range(c0, min(c0 + step, n), _ASSIGN_CHUNK):
                a1 = min(a0 + _ASSIGN_CHUNK, c0 + step, n)
                size = a1 - a0
                xs = _buffer("x32", size * d, dtype=np.float32).reshape(size, d)
                np.copyto(xs, x[a0:a1], casting="same_kind")  # float32 GEMMs: 2x faster
                z = _buffer("sketch", size * (p + 1), dtype=np.float32).reshape(size, -1)
                z[:, :p] = np.matmul(
                    xs, axes32, out=_buffer("zx", size * p, dtype=np.float32).reshape(size, p)
                )
                z[:, p] = 1.0
                dz = _buffer("to_centres", size * k, dtype=np.float32).reshape(size, k)
                lab = labels[a0:a1] = np.argmin(np.matmul(z, cmat, out=dz), axis=1)
                # exact |x - mu|^2 and |x - c| while the chunk is in cache
                if lib is not None:
                    args = (
                        x[a0:a1],
                        d,
                        size,
                        mu,
                        cen,
                        lab.astype(np.int64),
                        norms[a0:],
                        dists[a0:],
                    )
                    lib.pfd_centre_dists(*_ptrs(*args))
                    continue
                xc = np.subtract(x[a0:a1], mu, out=_buffer("xc", size * d).reshape(size, d))
                np.einsum("ij,ij->i", xc, xc, out=norms[a0:a1])
                cl = _buffer("cl", size * d).reshape(size, d)
                np.take(cen, lab, axis=0, out=cl, mode="clip")
                dot = np.einsum("ij,ij->i", xc, cl, out=dists[a0:a1])
                dot *= -2.0
                dot += norms[a0:a1]
                dot += cen_norm[lab]
                np.sqrt(np.maximum(dot, 0.0, out=dot), out=dot)

        jobs = parts[1:] + [partial(assign, c0) for c0 in range(0, n, step)]
        low1, low2 = list(pmap(call, jobs))[:2]
        reach = _reach(np.concatenate([low0, low1, low2]), n, h)
        order = np.argsort(labels, kind="stable")
        start = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=k))])
        row_dists = _centre_dists(cen, cen_norm, y)  # (k, m)
        sn = s * norms  # the last augmented column of the points
        floor = s * reach * reach  # exponents of the pairs beyond reach lie below
        full = np.flatnonzero(start[1:] > start[:-1])
        tasks = np.split(full, np.searchsorted(start[full + 1], np.arange(1, runs) * (n / runs)))

        def work(cells: np.ndarray) -> np.ndarray:
            total = np.zeros(m)
            for c in cells:
                idx = order[start[c] : start[c + 1]]
                size = len(idx)
                dist = dists[idx]
                rows = np.flatnonzero(row_dists[c] <= dist.max() + reach)
                if not len(rows):
                    continue
                # farthest points first: row a needs those with |x - c| >= |y_a - c| - R_a
                far = np.argsort(dist)[::-1]
                idx, dist = idx[far], dist[far]
                if lib is not None:
                    right = _panels(lib, x, idx, mu, sn, "panels")[0]
                else:
                    pts = _buffer("cell", size * d).reshape(size, d)  # contiguous: faster takes
                    np.take(x, idx, axis=0, out=pts, mode="clip")  # in range: unbuffered
                    right = _buffer("sorted", size * (d + 2)).reshape(size, d + 2)
                    np.subtract(pts, mu, out=right[:, :d])
                    right[:, d] = 1.0
                    right[:, d + 1] = sn[idx]
                cnt = np.searchsorted(-dist, reach[rows] - row_dists[c, rows], side="right")
                by = np.argsort(cnt, kind="stable")
                rows, cnt = rows[by], cnt[by]
                if lib is not None:  # row sums straight into total, row groups by _stairs
                    lo = 0
                    for hi in _stairs(cnt, _GROUP_COST, _ROW_GROUPS):
                        panels = -(-int(cnt[hi - 1]) // 8)
                        args = (left, d + 2, rows[lo:], hi - lo, right, panels, floor, total)
                        lib.pfd_block_sums(*_ptrs(*args, 0, None))
                        lo = hi
                    continue
                lrows = _buffer("cell_rows", len(rows) * (d + 2)).reshape(len(rows), -1)
                np.take(left, rows, axis=0, out=lrows, mode="clip")  # gathered once a cell
                blocks = _Blocks(lrows, right, torch, min(len(rows), _ROWS_X), size)
                lo = 0
                for hi in _stairs(cnt, _GROUP_COST, _ROW_GROUPS):
                    for r0 in range(lo, hi, _ROWS_X):
                        r1 = min(r0 + _ROWS_X, hi)
                        total[rows[r0:r1]] += blocks.sums(slice(r0, r1), slice(0, cnt[hi - 1]))[0]
                    lo = hi
            return total

        total = np.zeros(m)
        for part_total in pmap(work, [t for t in tasks if len(t)]):
            total += part_total

    def right(c0: int, c1: int) -> np.ndarray:
        return _augmented(x[c0:c1], s, False, centre=mu)

    return _log_or_redo(total, _exponent_blocks(left, n, right))


def _stairs(cnt: np.ndarray, overhead: float, most: int = 3) -> list[int]:
    """Ends of at most ``most`` consecutive groups of rows, cutting where it saves most pairs.

    Row i needs the first ``cnt[i]`` points (``cnt`` non-decreasing); a group of rows visits,
    for each of its rows, the points of its last row, plus ``overhead`` pairs for one more call.
    Greedy: the cut that saves most pairs, in any group, while it saves more than it costs.
    """
    ends = [len(cnt)]
    while len(ends) < most:
        best = (overhead, -1)  # (pairs saved, cut)
        for lo, hi in zip([0, *ends[:-1]], ends, strict=True):
            if hi - lo > 1:
                i = np.arange(lo + 1, hi)
                saved = (i - lo) * (cnt[hi - 1] - cnt[i - 1])
                k = int(np.argmax(saved))
                best = max(best, (float(saved[k]), int(i[k])))
        if best[1] < 0:
            break
        ends = sorted([*ends, best[1]])
    return ends


def _kmeans(z: np.ndarray, k: int, iters: int = 4) -> np.ndarray:
    """``k`` centres of the rows of z by Lloyd iterations from a strided subset (deterministic).

    A centre that loses all its points stays where it is (its cell may stay empty).
    """
    n, p = z.shape
    c = z[np.linspace(0, n - 1, k).astype(int)].copy()
    za = np.empty((n, p + 1), z.dtype)  # [z, 1] @ cmat = |z - c|^2 - |z|^2
    za[:, :p], za[:, p] = z, 1.0
    cmat = np.empty((p + 1, k), z.dtype)
    dist = np.empty((n, k), z.dtype)  # filled in place: fresh temporaries cost page faults
    for _ in range(iters):
        cmat[:p], cmat[p] = -2.0 * c.T, _sqnorm(c)
        lab = np.argmin(np.matmul(za, cmat, out=dist), axis=1)
        cnt = np.bincount(lab, minlength=k)
        keep = cnt > 0
        for j in range(p):
            c[keep, j] = np.bincount(lab, weights=z[:, j], minlength=k)[keep] / cnt[keep]
    return c


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

    return _log_or_redo(total, _exponent_blocks(left, n, lambda c0, c1: right[c0:c1]))

"""Pieces the kernel-sum engines of :mod:`pfd_ase.selectors._kde` share.

Tolerances and the ``+inf`` cap of dH; augmented vectors, whose products are the exponents
``s |y - x|^2``; the log of plain sums with a log-sum-exp redo for underflowing rows; the
choice of block engine (torch or numpy) and of worker threads; per-task buffers that outlive a
call; kernel blocks and their sums (:class:`BlockGather`); and the loader of the optional fused C
kernels (:func:`fused_kernels`, sources in ``_kde_fused.c``).
"""

from __future__ import annotations

import ctypes
import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial

import numpy as np

from pfd_ase.threads import compute_threads

REL_TOL = 1e-11  # pruned terms add up to less than this fraction of each kernel sum
TAIL = -math.log(REL_TOL)
DH_INF = 1074.0 * math.log(2.0)  # -log of the smallest positive float64: dH beyond is +inf
_TINY = 1e-280  # plain sums at or below this are redone as shifted log-sum-exp (the fused
# kernels flush terms below e^-708 to 0: n of them stay below 1e-11 of such a sum up to n ~ 1e15)
BLOCK = 1024  # rows/columns of a dense block in the brute-force engine


def cap(dh: np.ndarray) -> np.ndarray:
    """dH = +inf where ``-log sum K`` exceeds ``-log(2**-1074)`` (the float64 sum is zero)."""
    return np.where(dh > DH_INF, np.inf, dh)


def sqnorm(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _lse_rows(a: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp of a block of log-kernel values."""
    m = a.max(axis=1)
    return m + np.log(np.exp(a - m[:, None]).sum(axis=1))


def log_or_redo(total: np.ndarray, exponents) -> np.ndarray:
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


def exponent_blocks(left: np.ndarray, n: int, right_cols):
    """``exponents(rows)`` for :func:`log_or_redo`: the blocks ``left[rows] @ right.T`` over
    all n columns, ``BLOCK`` at a time; ``right_cols(c0, c1)`` gives the right-hand rows."""

    def exponents(rows: np.ndarray):
        for c0 in range(0, n, BLOCK):
            yield left[rows] @ right_cols(c0, min(c0 + BLOCK, n)).T

    return exponents


def augmented_points(
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
    sn = s * sqnorm(xs)
    if left:
        xs *= -2.0 * s
        out[:, d], out[:, d + 1] = sn, 1.0
    else:
        out[:, d], out[:, d + 1] = 1.0, sn
    return out


def centre_dists(pts: np.ndarray, pts_n: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Distances (len(pts), len(centres)) from points to ball centres, one GEMM."""
    d2 = pts @ centres.T
    d2 *= -2.0
    d2 += pts_n[:, None]
    d2 += sqnorm(centres)[None, :]
    np.maximum(d2, 0.0, out=d2)
    return np.sqrt(d2, out=d2)


def _default_threads() -> int:
    """``PFD_THREADS`` when set, else 2 or the cores not lent to work beside this process
    if fewer (:func:`pfd_ase.threads.compute_threads`)."""
    return compute_threads(cap=2)


_USE_TORCH: bool | None = (
    None  # torch blocks: None = when it pays (see choose_engine); True / False
)
_TORCH_MIN_PAIRS = 2e9  # pairs from which importing torch (~1.5 s) pays for itself
_SERIAL_MAX_PAIRS = 2e6  # pairs up to which numpy-only sums run in the calling thread


def choose_engine(pairs: float, threads: int | None):
    """``(torch, threads)`` for sums over ``pairs`` pairs (before pruning).

    ``torch`` is the module when the blocks are to be computed with it: where it is already
    imported, or importable and the sums are large enough to repay its import (~1.5 s); else
    None (numpy). ``threads`` is the number of worker threads, 0 for the calling thread: small
    numpy-only sums, for which a pool costs more than it saves.
    """
    threads = _default_threads() if threads is None else int(threads)
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


def set_fused(enabled: bool) -> None:
    """Let :func:`fused_kernels` return the kernels where available (True) or None (False)."""
    global _FUSED
    _FUSED = bool(enabled)


def fused_kernels():
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


def ptrs(*args):
    """ctypes arguments: the data pointer of each array (None: NULL), others unchanged.

    The arrays must outlive the call that uses the pointers: name them, or keep them in a tuple.
    """
    return [a.ctypes.data if isinstance(a, np.ndarray) else a for a in args]


def pack_panels(lib, x: np.ndarray, idx: np.ndarray, mu: np.ndarray, sn: np.ndarray, key=None):
    """The points ``x[idx] - mu`` with their last augmented column ``sn[idx]``, packed in panels
    of 8 for :func:`fused_kernels`'s kernels: ``(panels, number of panels)``.

    ``x`` is C-contiguous float64; ``key`` names a reused buffer (:func:`scratch_buffer`), None
    a new array.
    """
    npanel = -(-len(idx) // 8)
    size = npanel * 8 * (x.shape[1] + 2)
    out = np.empty(size) if key is None else scratch_buffer(key, size)
    lib.pfd_pack_cell(*ptrs(x, x.shape[1], idx, len(idx), mu, sn, out))
    return out, npanel


_LOCAL = threading.local()
_SLOTS: list[dict] = []  # buffer sets of finished tasks, for the next tasks (of any call)
_SLOTS_LOCK = threading.Lock()


def scratch_buffer(key: str, size: int, torch=None, dtype=np.float64):
    """A flat buffer of ``size`` values (float64, or ``dtype`` with numpy), reused (grown when
    too small).

    Fresh large arrays cost their page faults on first touch (~1 ms per MB on a VM), as much as
    the arithmetic on them. The calling thread keeps its own buffers; a task on the worker
    threads borrows a set of buffers that outlives the call's pool (:func:`worker_pool`), so the
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


class BlockGather:
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
        self.kbuf = scratch_buffer("block", rows * cols, torch)

    def _take(self, a, idx, key: str):
        if isinstance(idx, slice):
            return a[idx]
        out = scratch_buffer(key, len(idx) * self.d, self.torch)
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
def worker_pool(threads: int, torch):
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

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
``threads`` worker threads (``PFD_THREADS``, else 2 or the cores :mod:`pfd_ase.threads` leaves
this process if fewer); each task sums into arrays of its own, reduced in task order, so the
result does not depend on the number of threads. Tasks borrow sets of buffers that outlive the
call (fresh large arrays cost their page faults, ~1 ms per MB on a VM).

Blocks. Where the optional extension ``_kde_fused`` is built (``setup.py``, C with AVX2 and FMA,
checked at run time) the sums go through fused kernels (:func:`fused_kernels`; all but H's blocks
of a ball with itself, whose self terms stay exactly 1): the points of a cell (or ball, or block of
columns) are packed in panels of 8, and each 4-row x 8-point tile of exponents is accumulated in
registers, exponentiated there (a Taylor exp within 2.3e-16 of the correctly rounded value; terms
below e^-708 are flushed to 0, hence ``_TINY`` = 1e-280) and added to its rows' sums; no block is
stored, and a tile whose exponents all lie below the rows' pruning floor ``-R_a^2 / (2 h^2)`` is
not exponentiated (dH only; those terms are within the bound above). ~4 ns a pair on one core,
against ~6 for the blocks below. Otherwise, and for every pair under ``_ALL_PAIRS_ROWS`` rows,
blocks are computed with torch (MKL GEMM, SLEEF exp, on reused buffers: ~6.5 ns a pair on one core)
when torch is already imported, or importable and the sums have over ``_TORCH_MIN_PAIRS`` pairs
(importing torch takes ~1.5 s); with numpy otherwise (~7.5-9 ns a pair; its exp alone is 5.5 ns a
value against SLEEF's 2 on CPUs without AVX-512). BLAS should run one thread
(``OPENBLAS_NUM_THREADS=1``), or the two levels of threads compete. torch would run each op on an
OpenMP team of its own: the workers set torch to one thread, and torch's thread count (which that
call also sets process-wide) is restored when the sums are done. Small sums (up to
``_SERIAL_MAX_PAIRS``) without torch run in the calling thread. ctypes releases the GIL during the
fused kernels, numpy and torch during their blocks.

What pruning can gain is bounded by the data. For MD-like data of a few phases (one phase's
environments lie within a few h of each other) about a third of all pairs lie within reach and
about half are visited (a ball's radius adds to the reach); the sparser the data, the larger
the gain.

Layout: this module holds the engines; :mod:`._kde_blocks` the pieces they share (tolerances,
augmented vectors, blocks, buffers, worker threads, the fused kernels' loader);
:mod:`._kde_partition` the balls and the k-means centres.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from pfd_ase.selectors._kde_blocks import (
    BLOCK,
    TAIL,
    BlockGather,
    augmented_points,
    centre_dists,
    choose_engine,
    exponent_blocks,
    fused_kernels,
    log_or_redo,
    pack_panels,
    ptrs,
    scratch_buffer,
    sqnorm,
    worker_pool,
)
from pfd_ase.selectors._kde_partition import BallPartition, kmeans

_LEAF_SELF = 512  # points per ball, Y is X (larger blocks pay more than tighter balls)
_COLS_SELF = 1024  # columns per GEMM block, Y is X (512 x 1024 float64: 4 MB)
_TASK_SELF = 4  # balls per task, Y is X
_LEAF_X = 256  # points per ball of X, Y is not X
_ROWS_X = 1024  # rows of Y per GEMM block, Y is not X
_TASK_X = 8  # balls per task, Y is not X
_CELL = 1600  # points per cell of X, Y has fewer rows than X has points
_GROUP_COST = 5000.0  # pairs that one more GEMM call costs, in time
_ROW_GROUPS = 4  # groups of rows (by the points they need) per cell
_CELL_SKETCH = 8  # principal axes on which points are assigned to cells
_KMEANS_SAMPLE = 4096  # points of X from which the cell centres are found
_ASSIGN_CHUNK = 1024  # points assigned to cells at a time (keeps the distances in cache)
_ROW_TASKS = 32  # runs of X (assignment) and of cells (sums), Y has fewer rows than X
_SAMPLE = 1024  # points of X whose exact sums bound the sums of Y's rows from below
_ALL_PAIRS_ROWS = 64  # below this many rows of Y every pair is visited


# --------------------------------------------------------------------------- brute force


def log_kernel_sum_blocked(
    y: np.ndarray, x: np.ndarray, h: float, block: int = BLOCK
) -> np.ndarray:
    """``log sum_j K(y_a, x_j)`` for every row of y over every row of x (no pruning)."""
    m, n = len(y), len(x)
    if n == 0:
        return np.full(m, -np.inf)
    same = y is x  # then the diagonal (self) terms are exactly 1
    mu = x.mean(axis=0)
    x = x - mu
    y = x if same else y - mu
    yn, xn = sqnorm(y), sqnorm(x)
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
        out[a0 : a0 + block] = log_or_redo(
            total, lambda rows, ys=ys, yns=yns: exponents(ys[rows], yns[rows])
        )
    return out


def pair_sums(
    y: np.ndarray, x: np.ndarray, h: float, block: int = BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """Row sums ``sum_j K(y_a, x_j)`` and column sums ``sum_a K(y_a, x_j)``, plain float64.

    No centring and no underflow guard: meant for sums that end up >= 1 (entropy curves).
    """
    s = -0.5 / (h * h)
    rows, cols = np.zeros(len(y)), np.zeros(len(x))
    if len(y) == 0 or len(x) == 0:
        return rows, cols
    same = y is x
    left, right = augmented_points(y, s, True), augmented_points(x, s, False)
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


def log_kernel_sum_pruned(
    y: np.ndarray, x: np.ndarray, h: float, threads: int | None = None
) -> np.ndarray:
    """Same as :func:`log_kernel_sum_blocked` up to a relative ``exp(-TAIL)`` in each sum.

    ``threads``: worker threads (default: ``PFD_THREADS``, else ``min(2, compute_threads())``);
    the result does not depend on it.
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
    xno = sqnorm(xo)
    left, right = augmented_points(xo, s, True), augmented_points(xo, s, False)
    torch, threads = choose_engine(0.5 * n * n, threads)
    groups = part.groups(_TASK_SELF)
    leaf = int(np.diff(part.start).max())

    def own(balls: range) -> np.ndarray:
        """Sums over the pairs within each ball (symmetric blocks: row sums suffice)."""
        blocks = BlockGather(left, right, torch, leaf, leaf)
        return np.concatenate(
            [blocks.sums(part.rows(a), part.rows(a), self_block=True)[0] for a in balls]
        )

    lib = fused_kernels()
    if lib is not None:
        d = x.shape[1]
        sn, zero = right[:, d + 1].copy(), np.zeros(d)

    def fused(rows: np.ndarray, cols: np.ndarray, total: np.ndarray, first: int) -> None:
        """The points ``rows`` with the points ``cols`` through the fused kernels."""
        panels, npanel = pack_panels(lib, xo, cols, zero, sn, "panels")
        col_sums = scratch_buffer("col_sums", npanel * 8)
        col_sums[:] = 0.0
        args = (left, d + 2, rows, len(rows), panels, npanel, None, total, first, col_sums)
        lib.pfd_block_sums(*ptrs(*args))
        total[cols - first] += col_sums[: len(cols)]

    def work(balls: range) -> tuple[int, np.ndarray]:
        """Sums over the pairs of these balls with later points, for points ``first`` onwards."""
        blocks = None if lib is not None else BlockGather(left, right, torch, leaf, _COLS_SELF)
        first = part.start[balls.start]
        total = np.zeros(n - first)
        dc = centre_dists(xo[first:], xno[first:], part.centre[balls.start : balls.stop])
        for a in balls:
            ra = part.rows(a)
            own = total[ra.start - first : ra.stop - first]
            gap = dc[ra.stop - first :, a - balls.start] - part.radius[a]
            near = gap <= np.maximum(ball_reach[a], reach[ra.stop :])
            cand = np.flatnonzero(near) + ra.stop
            rows = np.arange(ra.start, ra.stop) if lib is not None else None
            for c0 in range(0, len(cand), _COLS_SELF):
                cols = cand[c0 : c0 + _COLS_SELF]
                if lib is not None:
                    fused(rows, cols, total, first)
                    continue
                rows_sum, cols_sum = blocks.sums(ra, cols, col_sums=True)
                own += rows_sum
                total[cols - first] += cols_sum
        return first, total

    total = np.zeros(n)
    with worker_pool(threads, torch) as pmap:
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
    left, right = augmented_points(y, s, True), augmented_points(part.points, s, False)
    yn = sqnorm(y)
    groups = part.groups(_TASK_X)
    torch, threads = choose_engine(float(m) * n, threads)
    leaf = int(np.diff(part.start).max())

    def dists(g: range) -> np.ndarray:
        return centre_dists(y, yn, part.centre[g.start : g.stop])

    def bound(g: range) -> np.ndarray:
        return (dists(g) + part.radius[g.start : g.stop]).min(axis=1)

    lib = fused_kernels()
    if lib is not None:  # the balls' points in panels of 8, for the fused kernels
        d = x.shape[1]
        sn, zero = right[:, d + 1].copy(), np.zeros(d)

    def work(g: range) -> np.ndarray:
        blocks = None if lib is not None else BlockGather(left, right, torch, _ROWS_X, leaf)
        total = np.zeros(m)
        dc = dists(g)
        dc -= part.radius[g.start : g.stop]
        for b in g:
            cand = np.flatnonzero(dc[:, b - g.start] <= reach)
            if lib is not None:
                pts = np.arange(part.start[b], part.start[b + 1])
                panels, npanel = pack_panels(lib, part.points, pts, zero, sn, "panels")
                args = (left, d + 2, cand, len(cand), panels, npanel, floor, total, 0, None)
                lib.pfd_block_sums(*ptrs(*args))
                continue
            for c0 in range(0, len(cand), _ROWS_X):
                rows = cand[c0 : c0 + _ROWS_X]
                total[rows] += blocks.sums(rows, part.rows(b))[0]
        return total

    upper = np.full(m, np.inf)
    total = np.zeros(m)
    with worker_pool(threads, torch) as pmap:
        for u in pmap(bound, groups):
            np.minimum(upper, u, out=upper)
        reach = np.sqrt(upper**2 + tail2)
        floor = s * reach * reach  # exponents of the pairs beyond reach lie below
        for part_total in pmap(work, groups):
            total += part_total

    return log_or_redo(total, exponent_blocks(left, n, lambda c0, c1: right[c0:c1]))


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
    through the fused kernels when built (:func:`fused_kernels`), else in torch or numpy blocks. One
    part of the lower bounds is computed beside the centres, the rest beside the assignment (a
    run of points at a time); then a task is a run of consecutive cells.
    """
    m, n = len(y), len(x)
    d = x.shape[1]
    s = -0.5 / (h * h)
    left = augmented_points(y, s, True)
    torch, threads = choose_engine(float(m) * n, threads)
    lib = fused_kernels()
    if lib is not None:
        x, mu = np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(mu)
    # a fixed pseudo-random sample (a stride could alias with periodic data, e.g. MD frames)
    # for the centres; every few of its points for the lower bounds and the sketch axes
    pick = np.sort(np.random.default_rng(0).choice(n, min(n, _KMEANS_SAMPLE), replace=False))
    pts = np.take(
        x, pick, axis=0, out=scratch_buffer("pick", len(pick) * d).reshape(-1, d), mode="clip"
    )
    pts -= mu
    runs = _ROW_TASKS
    sample = augmented_points(
        pts[np.unique(np.linspace(0, len(pts) - 1, _SAMPLE).astype(int))], s, False
    )
    if lib is not None:  # the sample in panels, for the fused kernels
        coords, sample_sn = np.ascontiguousarray(sample[:, :d]), sample[:, d + 1].copy()
        panels, npanel = pack_panels(lib, coords, np.arange(len(sample)), np.zeros(d), sample_sn)

    def lower(rows: np.ndarray) -> np.ndarray:
        """log of the rows' sums over the sample of x (a lower bound of their full sums)."""
        if lib is not None:  # rows: a range
            total = np.zeros(len(rows))
            off = rows[0] if len(rows) else 0
            args = (left, d + 2, rows, len(rows), panels, npanel, None, total, off)
            lib.pfd_block_sums(*ptrs(*args, None))
        else:
            total = BlockGather(left, sample, torch, len(rows), len(sample)).sums(
                rows, slice(None)
            )[0]
        return log_or_redo(total, lambda low: [left[rows[low]] @ sample.T])

    def centres() -> tuple[np.ndarray, np.ndarray]:
        """Sketch axes (d, p) and cell centres (k, p), float32, centred on mu."""
        few = sample[:, :d]
        axes = np.linalg.eigh(few.T @ few)[1][:, -min(_CELL_SKETCH, d) :]
        k = max(1, min(n // _CELL, len(pts)))
        return np.ascontiguousarray(axes), kmeans((pts @ axes).astype(np.float32), k)

    def call(job):
        return job()

    with worker_pool(threads, torch) as pmap:
        # the lower bounds (compute) share the pool with the centres, then the assignment
        # (which reads all of x: memory): three parts, one beside the centres
        parts = [partial(lower, rows) for rows in np.array_split(np.arange(m), 3)]
        (axes, zc), low0 = pmap(call, [centres, parts[0]])
        p, k = axes.shape[1], len(zc)
        cen = zc.astype(np.float64) @ axes.T  # full-space centres (centred on mu)
        zc = zc + (mu @ axes).astype(np.float32)  # for the uncentred x
        axes32 = axes.astype(np.float32)
        cmat = np.empty((p + 1, k), dtype=np.float32)  # [z, 1] @ cmat = |z - zc|^2 - |z|^2
        cmat[:p], cmat[p] = -2.0 * zc.T, sqnorm(zc)
        cen_norm = sqnorm(cen)
        labels = np.empty(n, dtype=np.int16 if k < 2**15 else np.int64)
        norms, dists = np.empty(n), np.empty(n)  # |x - mu|^2 and |x - own centre|
        step = -(-n // runs)

        def assign(c0: int) -> None:
            for a0 in range(c0, min(c0 + step, n), _ASSIGN_CHUNK):
                a1 = min(a0 + _ASSIGN_CHUNK, c0 + step, n)
                size = a1 - a0
                xs = scratch_buffer("x32", size * d, dtype=np.float32).reshape(size, d)
                np.copyto(xs, x[a0:a1], casting="same_kind")  # float32 GEMMs: 2x faster
                z = scratch_buffer("sketch", size * (p + 1), dtype=np.float32).reshape(size, -1)
                z[:, :p] = np.matmul(
                    xs,
                    axes32,
                    out=scratch_buffer("zx", size * p, dtype=np.float32).reshape(size, p),
                )
                z[:, p] = 1.0
                dz = scratch_buffer("to_centres", size * k, dtype=np.float32).reshape(size, k)
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
                    lib.pfd_centre_dists(*ptrs(*args))
                    continue
                xc = np.subtract(x[a0:a1], mu, out=scratch_buffer("xc", size * d).reshape(size, d))
                np.einsum("ij,ij->i", xc, xc, out=norms[a0:a1])
                cl = scratch_buffer("cl", size * d).reshape(size, d)
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
        row_dists = centre_dists(cen, cen_norm, y)  # (k, m)
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
                    right = pack_panels(lib, x, idx, mu, sn, "panels")[0]
                else:
                    pts = scratch_buffer("cell", size * d).reshape(
                        size, d
                    )  # contiguous: faster takes
                    np.take(x, idx, axis=0, out=pts, mode="clip")  # in range: unbuffered
                    right = scratch_buffer("sorted", size * (d + 2)).reshape(size, d + 2)
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
                        lib.pfd_block_sums(*ptrs(*args, 0, None))
                        lo = hi
                    continue
                lrows = scratch_buffer("cell_rows", len(rows) * (d + 2)).reshape(len(rows), -1)
                np.take(left, rows, axis=0, out=lrows, mode="clip")  # gathered once a cell
                blocks = BlockGather(lrows, right, torch, min(len(rows), _ROWS_X), size)
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
        return augmented_points(x[c0:c1], s, False, centre=mu)

    return log_or_redo(total, exponent_blocks(left, n, right))


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


def _cross_all(y: np.ndarray, x: np.ndarray, h: float, threads: int | None) -> np.ndarray:
    """log sum_j K(y_a, x_j) over every pair, for few rows: a task is a run of x."""
    m, n = len(y), len(x)
    s = -0.5 / (h * h)
    left, right = augmented_points(y, s, True), augmented_points(x, s, False)
    torch, threads = choose_engine(float(m) * n, threads)
    step = _COLS_SELF * max(4, -(-n // (16 * _COLS_SELF)))  # ~16 tasks, whatever the threads

    def work(c0: int) -> np.ndarray:
        blocks = BlockGather(left, right, torch, m, _COLS_SELF)
        total = np.zeros(m)
        for b0 in range(c0, min(c0 + step, n), _COLS_SELF):
            total += blocks.sums(slice(0, m), slice(b0, min(b0 + _COLS_SELF, c0 + step)))[0]
        return total

    total = np.zeros(m)
    with worker_pool(threads, torch) as pmap:
        for part_total in pmap(work, range(0, n, step)):
            total += part_total

    return log_or_redo(total, exponent_blocks(left, n, lambda c0, c1: right[c0:c1]))

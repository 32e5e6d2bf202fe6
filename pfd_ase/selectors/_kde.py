"""Gaussian kernel sums ``log sum_j exp(-|y_a - x_j|^2 / (2 h^2))`` in float64.

Two engines with the same result:

* :func:`log_kernel_sum_blocked` — every pair, in row x column blocks: squared distances
  ``|y|^2 + |x|^2 - 2 y.x`` (clipped at 0), then the kernel (the brute-force oracle).
* :func:`log_kernel_sum_pruned` — the points of one set are grouped into balls (centroid,
  radius) by recursive bisection; a ball visits only the points of the other set that can lie
  within the pruning radius R of one of its points (triangle inequality on the distance to the
  ball centre). R makes everything skipped sum to less than ``exp(-TAIL)`` (~1e-16) of the row's
  kernel sum: for ``Y is X`` each sum holds its self term (>= 1), ``R^2 = 2 h^2 (TAIL + log n)``
  (9.8 h for n = 1e5), and each pair is visited once (the kernel is symmetric); otherwise an
  upper bound u on the distance to the nearest x bounds the sum from below,
  ``R^2 = u^2 + 2 h^2 (TAIL + log n)``. Exponents come from one GEMM of augmented vectors,
  ``s |y - x|^2 = [-2s y, s|y|^2, 1] . [x, 1, s|x|^2]``, ``s = -1 / (2 h^2)``.

Both centre the data on the mean of X; self terms are set to exactly 1; the round-off of an
exponent is about ``1e-16 |s| max|x - mean|^2`` (~1e-13 for QUESTS descriptors).

The gain of pruning is bounded by the fraction of pairs within R, a property of the data: for
MD-like data of a few phases a third or more of all pairs are (one phase's environments lie
within a few h of each other) and the pruned sums are ~2-5x faster than all pairs, one
exponential per visited pair being the floor; the sparser the data, the larger the gain.
"""

from __future__ import annotations

import math

import numpy as np

TAIL = 37.0  # neglected terms sum to < exp(-37) ~ 8.5e-17 of each kernel sum
DH_INF = 1074.0 * math.log(2.0)  # -log of the smallest positive float64: dH beyond is +inf
_TINY = 1e-300  # plain sums at or below this are redone as shifted log-sum-exp
_BLOCK = 1024  # rows/columns of a dense block in the brute-force engine
_LEAF_SELF = 256  # points per ball, Y is X
_LEAF_Y = 128  # points per ball of Y when Y is not X and is the smaller set
_LEAF_X = 64  # points per ball of X when X is the smaller set
_COLS = 8192  # columns per GEMM in the pruned engine
_GROUP = 64  # balls whose centre distances are computed in one GEMM


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


class BallPartition:
    """Points split into balls of at most ``leaf`` points by recursive bisection.

    Each split projects the points on the direction between two far-apart points (the one
    farthest from the centroid, then the one farthest from it) and cuts at the median.
    ``order`` lists point indices ball by ball; ball b holds ``order[start[b]:start[b + 1]]``
    with centroid ``centre[b]`` and radius ``radius[b]`` (largest distance to the centroid).
    """

    def __init__(self, x: np.ndarray, leaf: int):
        stack = [np.arange(len(x))]
        leaves: list[np.ndarray] = []
        while stack:
            idx = stack.pop()
            if len(idx) <= leaf:
                leaves.append(idx)
                continue
            pts = x[idx]
            c = pts.mean(axis=0)
            p = pts[np.argmax(_sqnorm(pts - c))]
            q = pts[np.argmax(_sqnorm(pts - p))]
            proj = pts @ (q - p)
            half = len(idx) // 2
            part = np.argpartition(proj, half)
            stack.append(idx[part[half:]])
            stack.append(idx[part[:half]])
        self.order = np.concatenate(leaves)
        self.start = np.concatenate([[0], np.cumsum([len(lf) for lf in leaves])])
        self.centre = np.array([x[lf].mean(axis=0) for lf in leaves])
        self.radius = np.array(
            [np.sqrt(_sqnorm(x[lf] - c).max()) for lf, c in zip(leaves, self.centre, strict=True)]
        )

    def __len__(self) -> int:
        return len(self.radius)

    def rows(self, b: int) -> slice:
        """Positions (in ``order``) of the points of ball b."""
        return slice(self.start[b], self.start[b + 1])


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


def log_kernel_sum_pruned(y: np.ndarray, x: np.ndarray, h: float) -> np.ndarray:
    """Same as :func:`log_kernel_sum_blocked` up to a relative ``exp(-TAIL)`` in each sum."""
    m, n = len(y), len(x)
    if n == 0:
        return np.full(m, -np.inf)
    if m == 0:
        return np.zeros(0)
    same = y is x
    mu = x.mean(axis=0)
    x = x - mu
    if same:
        return _self_sums(x, h)
    if m <= n:
        return _cross_sums(y - mu, x, h)
    return _cross_sums_by_x(y - mu, x, h)


def _self_sums(x: np.ndarray, h: float) -> np.ndarray:
    """log sum_j K(x_i, x_j) over all j (self term included), each pair visited once."""
    n = len(x)
    s = -0.5 / (h * h)
    r = math.sqrt(2.0 * h * h * (TAIL + math.log(n)))  # every sum is >= 1 (self term)
    part = BallPartition(x, _LEAF_SELF)
    xo = x[part.order]
    xno = _sqnorm(xo)
    left, right = _augmented(xo, s, True), _augmented(xo, s, False)
    total = np.zeros(n)
    for g0 in range(0, len(part), _GROUP):
        balls = range(g0, min(g0 + _GROUP, len(part)))
        first = part.start[g0]
        dc = _centre_dists(xo[first:], xno[first:], part.centre[g0 : balls.stop])
        for a in balls:
            ra = part.rows(a)
            k = left[ra] @ right[ra].T  # the ball with itself: symmetric, row sums suffice
            np.fill_diagonal(k, 0.0)  # self terms are exactly 1
            np.exp(k, out=k)
            total[ra] += k.sum(axis=1)
            # later points that can lie within r of a point of ball a
            near = dc[ra.stop - first :, a - g0] <= part.radius[a] + r
            cand = np.flatnonzero(near) + ra.stop
            for c0 in range(0, len(cand), _COLS):
                cols = cand[c0 : c0 + _COLS]
                k = left[ra] @ right[cols].T
                np.exp(k, out=k)
                total[ra] += k.sum(axis=1)
                total[cols] += k.sum(axis=0)
    out = np.empty(n)
    out[part.order] = np.log(total)
    return out


def _cross_sums(y: np.ndarray, x: np.ndarray, h: float) -> np.ndarray:
    """log sum_j K(y_a, x_j), balls of y (the smaller set) each visiting the x that matter."""
    n = len(x)
    s = -0.5 / (h * h)
    tail2 = 2.0 * h * h * (TAIL + math.log(n))
    part = BallPartition(y, _LEAF_Y)
    yo = y[part.order]
    left, right = _augmented(yo, s, True), _augmented(x, s, False)
    xn = _sqnorm(x)
    out = np.empty(len(y))
    for g0 in range(0, len(part), _GROUP):
        balls = range(g0, min(g0 + _GROUP, len(part)))
        dc_all = _centre_dists(x, xn, part.centre[g0 : balls.stop])
        for a in balls:
            ra = part.rows(a)
            dc = dc_all[:, a - g0]
            # the nearest x is within radius + min(dc) of every row: that term bounds the sum
            reach = math.sqrt((part.radius[a] + dc.min()) ** 2 + tail2)
            cand = np.flatnonzero(dc <= part.radius[a] + reach)
            total = np.zeros(ra.stop - ra.start)
            for c0 in range(0, len(cand), _COLS):
                k = left[ra] @ right[cand[c0 : c0 + _COLS]].T
                np.exp(k, out=k)
                total += k.sum(axis=1)

            def exponents(rows, ra=ra, cand=cand):
                for c0 in range(0, len(cand), _COLS):
                    yield left[ra][rows] @ right[cand[c0 : c0 + _COLS]].T

            out[part.order[ra]] = _log_or_redo(total, exponents)
    return out


def _cross_sums_by_x(y: np.ndarray, x: np.ndarray, h: float) -> np.ndarray:
    """log sum_j K(y_a, x_j), balls of x (the smaller set) each visiting the y they matter to.

    Row a's sum is at least the term of its nearest x, whose distance is at most
    ``u_a = min_b (|y_a - c_b| + r_b)``; x outside ``R_a = sqrt(u_a^2 + 2 h^2 (TAIL + log n))``
    add less than ``exp(-TAIL)`` of it together.
    """
    n = len(x)
    s = -0.5 / (h * h)
    tail2 = 2.0 * h * h * (TAIL + math.log(n))
    part = BallPartition(x, _LEAF_X)
    xo = x[part.order]
    left, right = _augmented(y, s, True), _augmented(xo, s, False)
    yn = _sqnorm(y)
    groups = [range(g0, min(g0 + _GROUP, len(part))) for g0 in range(0, len(part), _GROUP)]
    upper = np.full(len(y), np.inf)
    for g in groups:
        dc = _centre_dists(y, yn, part.centre[g.start : g.stop])
        upper = np.minimum(upper, (dc + part.radius[g.start : g.stop]).min(axis=1))
    reach = np.sqrt(upper**2 + tail2)
    total = np.zeros(len(y))
    for g in groups:
        dc = _centre_dists(y, yn, part.centre[g.start : g.stop])
        for b in g:
            rb = part.rows(b)
            cand = np.flatnonzero(dc[:, b - g.start] - part.radius[b] <= reach)
            for c0 in range(0, len(cand), _COLS):
                rows = cand[c0 : c0 + _COLS]
                k = left[rows] @ right[rb].T
                np.exp(k, out=k)
                total[rows] += k.sum(axis=1)

    def exponents(rows):
        for c0 in range(0, n, _COLS):
            yield left[rows] @ right[c0 : c0 + _COLS].T

    return _log_or_redo(total, exponents)

"""How the kernel-sum engines group points: balls by recursive bisection, k-means centres."""

from __future__ import annotations

import math

import numpy as np

from pfd_ase.selectors._kde_blocks import sqnorm

_SKETCH = 16  # principal axes on which the balls are cut


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
            p = sub[np.argmax(sqnorm(sub - c))]
            q = sub[np.argmax(sqnorm(sub - p))]
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
            self.radius[b] = math.sqrt(sqnorm(self.points[lo:hi] - c).max())

    def __len__(self) -> int:
        return len(self.radius)

    def rows(self, b: int) -> slice:
        """Positions (in ``order``) of the points of ball b."""
        return slice(self.start[b], self.start[b + 1])

    def groups(self, size: int) -> list[range]:
        """Consecutive balls, ``size`` at a time."""
        return [range(g, min(g + size, len(self))) for g in range(0, len(self), size)]


def kmeans(z: np.ndarray, k: int, iters: int = 4) -> np.ndarray:
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
        cmat[:p], cmat[p] = -2.0 * c.T, sqnorm(c)
        lab = np.argmin(np.matmul(za, cmat, out=dist), axis=1)
        cnt = np.bincount(lab, minlength=k)
        keep = cnt > 0
        for j in range(p):
            c[keep, j] = np.bincount(lab, weights=z[:, j], minlength=k)[keep] / cnt[keep]
    return c

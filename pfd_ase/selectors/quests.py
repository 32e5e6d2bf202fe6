"""QUESTS descriptors, dataset entropy and differential entropy.

The method of Schwalbe-Koda et al., Nat. Commun. 16, 4014 (2025), as used by PFD (supplement
§I.A). Where the paper's formulae leave room, the conventions are those of the authors'
``quests`` package, the reference implementation (not imported here).

Descriptor (:func:`descriptors`, 1/Å) of atom i from its k nearest neighbours j, periodic images
included, sorted by distance r_ij (Å), with ``w(r) = (1 - (r/rc)^2)^2`` for ``r <= rc``, else 0:

* ``X1[j] = w(r_ij) / r_ij``, k values, nearest first. A neighbour beyond the cutoff has
  ``w = 0``, so with fewer than k neighbours inside rc the tail is zero (zero padding); the
  reference takes the k nearest atoms regardless of rc and gets the same zeros.
* ``X2``: the k x k matrix ``M[j, l] = sqrt(w_ij w_il) / r_jl`` (``M[j, j] = 0``; rows and
  columns of missing neighbours are zero). Each row is sorted ascending, column l is averaged
  over the k rows (divided by k even when padded), column 0 (every row's smallest entry, a zero)
  is dropped and the k - 1 means are reversed: X2 is in descending order, largest first.
* ``X = [X1, X2]``, ``2k - 1`` columns. As in the reference, 1e-16 Å is added to r_ij in X1 and
  1e-15 Å to r_jl in X2; it only matters for coincident atoms.

Entropies in nats, Gaussian kernel ``K(x, y) = exp(-|x - y|^2 / (2 h^2))``, bandwidth h in
descriptor units, 1/Å (the supplement writes "0.015 Å"; the number is the same):

* ``H({X}) = -(1/n) sum_i log[(1/n) sum_j K(X_i, X_j)] = log n - mean_i log sum_j K_ij`` with
  the self term ``j = i`` (the reference's ``perfect_entropy``). Limits: ``log n`` when all
  environments are far apart, 0 when they are identical.
* ``dH(Y | {X}) = -log sum_i K(Y, X_i)``, not divided by n (the reference's ``delta_entropy``);
  negative where Y is already well represented. Exactly as the reference's ``-log(p)`` in
  float64 it is ``+inf`` where the kernel sum is zero in float64, which here means where
  ``-log sum K > DH_INF = -log(2**-1074) ~ 744.44``; below that the value is exact (computed as
  a log-sum-exp, so there is no loss to underflow). :func:`log_kernel_sum` is the finite
  ``-dH`` everywhere, used to rank environments whose dH is infinite.

The fast functions prune the sum (:mod:`pfd_ase.selectors._kde`): terms of a kernel sum that are
together below ``REL_TOL = 1e-11`` of it are skipped with a rigorous bound, so H and every dH
agree with the ``*_bruteforce`` oracles to within 1e-11 plus float64 round-off (~1e-13).

Differences from the reference: mixed periodic boundary conditions are honoured per axis (it
treats any structure not periodic along all three axes as an isolated cluster); a tie in the
k-th neighbour shell is broken by the KD-tree's order, deterministic for a given input (the
reference's argsort is as arbitrary there); kernel sums are float64 only (its GPU path, used by
PFD-kit, runs in float32).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pfd_ase.selectors import _kde, _kde_blocks
from pfd_ase.selectors._descriptor import DEFAULT_CUTOFF, DEFAULT_K, descriptors, weight

DEFAULT_BANDWIDTH = 0.015  # 1/Å, descriptor units
DH_INF = _kde_blocks.DH_INF  # dH above this is +inf: the float64 kernel sum is zero

__all__ = [
    "DEFAULT_BANDWIDTH",
    "DEFAULT_CUTOFF",
    "DEFAULT_K",
    "DH_INF",
    "delta_entropy",
    "delta_entropy_bruteforce",
    "descriptors",
    "entropy",
    "entropy_bruteforce",
    "entropy_curve",
    "log_kernel_sum",
    "use_fused_kernels",
    "weight",
]


def use_fused_kernels(enabled: bool | None = None) -> bool:
    """Whether the kernel sums go through the compiled fused kernels; ``enabled`` chooses.

    The fused kernels (the optional C extension ``_kde_fused``, built by ``setup.py`` and used
    when this CPU has AVX2 and FMA) compute the pruned sums of :func:`entropy`,
    :func:`delta_entropy` and :func:`log_kernel_sum`; without them the same sums run in
    numpy and torch blocks. Results agree within the pruning contract either way. The choice
    holds for this process (all its threads) until changed.

    Parameters
    ----------
    enabled
        ``True`` (the default state): the fused kernels wherever available. ``False``: numpy
        and torch blocks everywhere (to compare speeds or results). ``None``: no change.

    Returns
    -------
    bool
        Whether the fused kernels are used from now on (``False`` where they are not
        available, whatever ``enabled``).
    """
    if enabled is not None:
        _kde_blocks.set_fused(enabled)
    return _kde_blocks.fused_kernels() is not None


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (environments, features) array, got {arr.shape}")
    # one pass without a mask array; nan/inf anywhere make the sum non-finite
    if not np.isfinite(np.add.reduce(arr, axis=None)) and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains nan or inf")
    return arr


def _check_h(h: float) -> float:
    h = float(h)
    if not (h > 0 and np.isfinite(h)):
        raise ValueError(f"bandwidth h must be a positive finite number (1/Å), got {h}")
    return h


def _pair(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = _as_matrix(y, "Y")
    x = _as_matrix(x, "X")
    if y.shape[1] != x.shape[1]:
        raise ValueError(f"Y has {y.shape[1]} features but X has {x.shape[1]}")
    return y, x


def _nonempty(x: np.ndarray, h: float) -> tuple[np.ndarray, float]:
    x = _as_matrix(x, "X")
    if len(x) == 0:
        raise ValueError("the entropy of an empty set of environments is undefined")
    return x, _check_h(h)


def entropy(x: np.ndarray, h: float = DEFAULT_BANDWIDTH, *, threads: int | None = None) -> float:
    """Entropy ``H({X})`` in nats (pruned sum, same value as :func:`entropy_bruteforce`).

    Parameters
    ----------
    x
        ``(n, d)`` descriptors, ``n >= 1``; converted to float64.
    h
        Gaussian bandwidth, descriptor units (1/Å).
    threads
        Worker threads (default: ``PFD_THREADS``, else ``min(2, compute_threads())``); the value
        does not depend on it.
    """
    x, h = _nonempty(x, h)
    return float(np.log(len(x)) - _kde.log_kernel_sum_pruned(x, x, h, threads).mean())


def entropy_bruteforce(x: np.ndarray, h: float = DEFAULT_BANDWIDTH) -> float:
    """Entropy ``H({X})`` in nats from every pair, in blocks (the O(n²) test oracle)."""
    x, h = _nonempty(x, h)
    return float(np.log(len(x)) - _kde.log_kernel_sum_blocked(x, x, h).mean())


def log_kernel_sum(
    y: np.ndarray, x: np.ndarray, h: float = DEFAULT_BANDWIDTH, *, threads: int | None = None
) -> np.ndarray:
    """``log sum_i K(Y_a, X_i)`` for every row of Y: ``-dH`` without the ``+inf`` cap.

    A log-sum-exp in float64: finite for every row whenever X is non-empty (``-inf`` for an
    empty X), so it still orders environments whose dH is ``+inf``.
    """
    y, x = _pair(y, x)
    return _kde.log_kernel_sum_pruned(y, x, _check_h(h), threads)


def delta_entropy(
    y: np.ndarray, x: np.ndarray, h: float = DEFAULT_BANDWIDTH, *, threads: int | None = None
) -> np.ndarray:
    """Differential entropy ``dH(Y_a | {X}) = -log sum_i K(Y_a, X_i)`` in nats, per row of Y.

    Parameters
    ----------
    y
        ``(m, d)`` test descriptors.
    x
        ``(n, d)`` reference descriptors; an empty X gives ``+inf`` everywhere.
    h
        Gaussian bandwidth, descriptor units (1/Å).
    threads
        Worker threads, as in :func:`entropy`.

    Returns
    -------
    np.ndarray
        ``(m,)`` float64, ``+inf`` where the float64 kernel sum is zero (beyond ``DH_INF``),
        never nan.
    """
    return _kde_blocks.cap(-log_kernel_sum(y, x, h, threads=threads))


def delta_entropy_bruteforce(
    y: np.ndarray, x: np.ndarray, h: float = DEFAULT_BANDWIDTH
) -> np.ndarray:
    """:func:`delta_entropy` from every pair, in blocks (the O(mn) test oracle)."""
    y, x = _pair(y, x)
    return _kde_blocks.cap(-_kde.log_kernel_sum_blocked(y, x, _check_h(h)))


def entropy_curve(blocks: Sequence[np.ndarray], h: float = DEFAULT_BANDWIDTH) -> np.ndarray:
    """Entropy of the union of the first m blocks, for m = 1 .. len(blocks), in nats.

    Each block holds the descriptors of one frame. Every pair is evaluated once (O(N²) in the
    total number of environments, as one :func:`entropy_bruteforce` of the union). A block
    without rows leaves H unchanged; H is nan until the first environment.
    """
    h = _check_h(h)
    blocks = [_as_matrix(b, "block") for b in blocks]
    out = np.full(len(blocks), np.nan)
    if not blocks:
        return out
    d = blocks[0].shape[1]
    if any(b.shape[1] != d for b in blocks):
        raise ValueError("all blocks must have the same number of features")
    mu = np.concatenate(blocks).mean(axis=0)  # centring keeps the GEMM distances accurate
    seen = np.zeros((0, d))
    sums = np.zeros(0)  # kernel sums of the environments seen so far, self term included
    for m, b in enumerate(blocks):
        if len(b):
            b = b - mu
            old_rows, new_cols = _kde.pair_sums(seen, b, h)
            sums += old_rows
            sums = np.concatenate([sums, new_cols + _kde.pair_sums(b, b, h)[0]])
            seen = np.concatenate([seen, b])
        if len(seen):
            out[m] = np.log(len(seen)) - np.log(sums).mean()
    return out

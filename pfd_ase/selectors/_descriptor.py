"""QUESTS descriptor construction (see :mod:`pfd_ase.selectors.quests` for the conventions)."""

from __future__ import annotations

from collections.abc import Iterable
from numbers import Integral

import numpy as np
from ase import Atoms
from scipy.spatial import cKDTree

DEFAULT_K = 32
DEFAULT_CUTOFF = 5.0  # Å
EPS_X1 = 1e-16  # Å, added to r_ij in X1 (reference convention)
EPS_X2 = 1e-15  # Å, added to r_jl in X2 (reference convention)
_CHUNK_ATOMS = 1024  # atoms per vectorised X2 block: (chunk, k, k) float64 temporaries


def weight(r: np.ndarray, cutoff: float = DEFAULT_CUTOFF) -> np.ndarray:
    """Smooth cutoff weight ``w(r) = (1 - (r/rc)^2)^2`` for ``r <= rc``, 0 beyond (r in Å)."""
    z = np.minimum(np.asarray(r, dtype=np.float64), cutoff) / cutoff
    return (1.0 - z * z) ** 2


def descriptors(
    frames: Atoms | Iterable[Atoms], k: int = DEFAULT_K, cutoff: float = DEFAULT_CUTOFF
) -> np.ndarray:
    """QUESTS descriptors of every atom of every frame.

    Parameters
    ----------
    frames
        One structure or a sequence of them. Periodic images follow ``cell`` and ``pbc`` per axis.
    k
        Number of nearest neighbours (``k >= 1``).
    cutoff
        Cutoff radius rc of the weight function, Å.

    Returns
    -------
    np.ndarray
        ``(n_atoms_total, 2k - 1)`` float64 array, rows in frame order then atom order; columns
        ``X1`` (k, 1/Å) then ``X2`` (k - 1, 1/Å). See the module docstring for the conventions.
    """
    if isinstance(frames, Atoms):
        frames = [frames]
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if not 0 < cutoff < np.inf:
        raise ValueError(f"cutoff must be a positive finite radius in Å, got {cutoff!r}")
    k = int(k)
    blocks = [_frame_descriptors(atoms, k, float(cutoff)) for atoms in frames]
    if not blocks:
        return np.empty((0, 2 * k - 1), dtype=np.float64)
    return np.concatenate(blocks, axis=0)


def _frame_descriptors(atoms: Atoms, k: int, cutoff: float) -> np.ndarray:
    n = len(atoms)
    out = np.zeros((n, 2 * k - 1), dtype=np.float64)
    if n == 0:
        return out
    dist, rel, mask = _neighbours(atoms, k, cutoff)
    out[:, :k] = np.where(mask, weight(dist + EPS_X1, cutoff) / (dist + EPS_X1), 0.0)
    if k > 1:
        sw = np.where(mask, np.sqrt(weight(dist, cutoff)), 0.0)
        for lo in range(0, n, _CHUNK_ATOMS):
            hi = min(lo + _CHUNK_ATOMS, n)
            out[lo:hi, k:] = _x2(rel[lo:hi], sw[lo:hi])
    return out


def _images(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions wrapped into the cell along periodic axes, and the positions of every periodic
    image that can lie within ``cutoff`` (Å) of an atom; image i < n is atom i, unshifted."""
    pos = np.array(atoms.positions, dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        return pos, pos
    if np.any(np.linalg.norm(np.asarray(atoms.cell)[pbc], axis=1) == 0):
        raise ValueError("a periodic axis has a zero cell vector")
    cell = np.array(atoms.cell.complete(), dtype=np.float64)  # fills non-periodic zero vectors
    if abs(np.linalg.det(cell)) < 1e-12:
        raise ValueError("periodic structure with a degenerate cell")
    inv = np.linalg.inv(cell)
    frac = pos @ inv
    frac -= np.where(pbc, np.floor(frac), 0.0)
    pos = frac @ cell
    # |frac_i difference| <= cutoff * |b_i| for a pair within the cutoff (b_i: reciprocal vector)
    reach = np.where(pbc, cutoff * np.linalg.norm(inv, axis=0), 0.0)
    nrep = np.ceil(reach).astype(int)
    grids = [np.arange(-m, m + 1) for m in nrep]
    shifts = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1).reshape(-1, 3)
    shifts = shifts[np.argsort(np.abs(shifts).sum(axis=1), kind="stable")]  # (0, 0, 0) first
    img = frac[None, :, :] + shifts[:, None, :]
    lo, hi = -reach - 1e-9, 1.0 + reach + 1e-9
    keep = np.all(~pbc | ((img >= lo) & (img <= hi)), axis=-1)
    keep[0] = True
    return pos, img[keep] @ cell


def _neighbours(atoms: Atoms, k: int, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k nearest neighbours within the cutoff of every atom, nearest first.

    Returns distances (n, k) in Å, vectors from the atom to each neighbour (n, k, 3) in Å and a
    validity mask (n, k); missing neighbours (fewer than k inside the cutoff) are masked out.
    """
    pos, img_pos = _images(atoms, cutoff)
    n = len(pos)
    kq = min(k + 1, len(img_pos))
    d, idx = cKDTree(img_pos).query(pos, k=kq, distance_upper_bound=cutoff)
    d = d.reshape(n, kq)
    idx = idx.reshape(n, kq)
    # drop the atom itself (unshifted copy i is image i); if absent, drop the last column
    drop = idx == np.arange(n)[:, None]
    drop[~drop.any(axis=1), -1] = True
    order = np.argsort(drop, axis=1, kind="stable")[:, : kq - 1]
    d = np.take_along_axis(d, order, axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    valid = np.isfinite(d)
    dist = np.zeros((n, k))
    rel = np.zeros((n, k, 3))
    mask = np.zeros((n, k), dtype=bool)
    m = kq - 1
    dist[:, :m] = np.where(valid, d, 0.0)
    mask[:, :m] = valid
    safe = np.where(valid, idx, 0)
    rel[:, :m] = np.where(valid[..., None], img_pos[safe] - pos[:, None, :], 0.0)
    return dist, rel, mask


def _x2(rel: np.ndarray, sw: np.ndarray) -> np.ndarray:
    """Bond-angle part for a block: rel (m, k, 3) neighbour vectors, sw (m, k) sqrt weights."""
    k = sw.shape[1]
    r_jl = np.zeros((len(sw), k, k))
    for c in range(3):
        comp = rel[:, :, None, c] - rel[:, None, :, c]
        r_jl += comp * comp
    np.sqrt(r_jl, out=r_jl)
    mat = sw[:, :, None] * sw[:, None, :] / (r_jl + EPS_X2)
    diag = np.arange(k)
    mat[:, diag, diag] = 0.0
    mat.sort(axis=-1)  # each row ascending
    mean = mat.sum(axis=1) / k  # average of the l-th smallest entry over the k rows
    return mean[:, :0:-1]  # drop l = 0, largest first

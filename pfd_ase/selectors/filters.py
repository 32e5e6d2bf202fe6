"""Frame filters: reject unphysical frames (too-close atoms, exploded cells, non-finite labels).

Each check takes one :class:`ase.Atoms` and returns ``None`` for a good frame or a
reason string ``"<kind>: <details>"``; the kinds are

==============  ===============================================================
``non_finite``  positions, cell, energy, forces or stress not finite
``cell``        a cell length, angle or the volume beyond its limit
``too_close``   two atoms closer than their safe distance (periodic images
                included)
``max_force``   an atom's force above ``max_force_eV_A`` (off by default)
==============  ===============================================================

:class:`FrameFilter` bundles the settings and runs the checks in that order (the
cheap ones first; a collapsed or non-finite cell never reaches the neighbour list);
:func:`filter_frames` applies it to many frames and counts the rejections per kind.

Energies and forces are read only from what a frame already carries, never computed:
its calculator's cached results (when they belong to these positions), ``atoms.info``
(``energy``, ``free_energy``, ``pfd_model_energy``) and ``atoms.arrays`` (``forces``,
``pfd_model_forces``). Units: Å, eV, eV/Å.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

__all__ = [
    "REASON_KINDS",
    "FilterResult",
    "FrameFilter",
    "check_cell",
    "check_finite",
    "check_max_force",
    "check_min_distance",
    "filter_frames",
    "reason_kind",
    "safe_distance_matrix",
]

#: Kinds of rejection, in the order :class:`FrameFilter` checks them.
REASON_KINDS: tuple[str, ...] = ("non_finite", "cell", "too_close", "max_force")

_ENERGY_INFO_KEYS = ("energy", "free_energy", "pfd_model_energy")
_FORCE_ARRAY_KEYS = ("forces", "pfd_model_forces")
_RESULT_KEYS = ("energy", "free_energy", "forces", "stress")

SafeDistances = Mapping[str | tuple[str, str], float]


def reason_kind(reason: str) -> str:
    """The kind of a reason string (the part before the first colon)."""
    return reason.split(":", 1)[0].strip()


# --------------------------------------------------------------------------- non-finite values


def _cached_results(atoms: Atoms) -> dict[str, Any]:
    """Calculator results that belong to the current structure (nothing is computed)."""
    calc = atoms.calc
    results = getattr(calc, "results", None)
    if not results:
        return {}
    check_state = getattr(calc, "check_state", None)
    if callable(check_state):
        try:
            if check_state(atoms):
                return {}  # results of another structure
        except Exception:  # a calculator that cannot compare states: trust its results
            pass
    return dict(results)


def _frame_forces(atoms: Atoms) -> np.ndarray | None:
    forces = _cached_results(atoms).get("forces")
    if forces is None:
        for key in _FORCE_ARRAY_KEYS:
            if key in atoms.arrays:
                forces = atoms.arrays[key]
                break
    return None if forces is None else np.asarray(forces, dtype=float)


def check_finite(atoms: Atoms) -> str | None:
    """Reject non-finite positions or cell, and non-finite energy, forces or stress.

    Energy, forces and stress are checked where the frame carries them (calculator
    results, ``atoms.info``, ``atoms.arrays``); a frame without them passes.
    """
    if not np.isfinite(atoms.positions).all():
        return "non_finite: positions"
    if not np.isfinite(atoms.cell.array).all():
        return "non_finite: cell"
    values: dict[str, Any] = {}
    for key, value in _cached_results(atoms).items():
        if key in _RESULT_KEYS:
            values[key] = value
    for key in _ENERGY_INFO_KEYS:
        if key in atoms.info:
            values.setdefault(key, atoms.info[key])
    for key in _FORCE_ARRAY_KEYS:
        if key in atoms.arrays:
            values.setdefault(key, atoms.arrays[key])
    for key, value in values.items():
        try:
            finite = bool(np.isfinite(np.asarray(value, dtype=float)).all())
        except (TypeError, ValueError):  # not numeric: not a label
            continue
        if not finite:
            return f"non_finite: {key}"
    return None


# --------------------------------------------------------------------------- cell shape


def _as_cell(reference: Any) -> np.ndarray:
    if isinstance(reference, Atoms):
        return reference.cell.array.copy()
    array = getattr(reference, "array", reference)
    cell = np.asarray(array, dtype=float)
    if cell.size != 9:
        raise ValueError(f"a reference cell must be 3x3, got shape {cell.shape}")
    return cell.reshape(3, 3)


def check_cell(
    atoms: Atoms,
    reference_cell: Any = None,
    *,
    max_length_ratio: float | None = 1.5,
    max_volume_ratio: float | None = 2.0,
    angle_range_deg: tuple[float, float] | None = (20.0, 160.0),
    max_angle_change_deg: float | None = 30.0,
) -> str | None:
    """Reject cells stretched, compressed or skewed beyond limits.

    Only the periodic directions are checked; the volume only for fully periodic cells.

    Parameters
    ----------
    atoms
        The frame.
    reference_cell
        The starting cell (``Atoms``, ``Cell`` or 3x3 array); the ratio limits and the
        angle change need it and are skipped without it.
    max_length_ratio
        Each periodic cell length must stay within ``[L0 / r, L0 * r]``.
    max_volume_ratio
        The volume must stay within ``[V0 / r, V0 * r]``.
    angle_range_deg
        Absolute limits of every angle between periodic cell vectors (degrees).
    max_angle_change_deg
        Largest change of an angle relative to the reference cell (degrees).

    ``None`` switches a limit off.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        return None
    cell = atoms.cell.array
    lengths = np.linalg.norm(cell, axis=1)
    if (lengths[pbc] <= 0).any():
        return "cell: zero-length periodic cell vector"
    ref = None if reference_cell is None else _as_cell(reference_cell)
    ref_lengths = None if ref is None else np.linalg.norm(ref, axis=1)

    if ref is not None and max_length_ratio is not None:
        for k in np.flatnonzero(pbc):
            ratio = lengths[k] / ref_lengths[k]
            if not 1.0 / max_length_ratio <= ratio <= max_length_ratio:
                return (
                    f"cell: length {'abc'[k]} = {lengths[k]:.4g} Å is {ratio:.3g} x the "
                    f"starting {ref_lengths[k]:.4g} Å (limit {max_length_ratio:g}x)"
                )

    if pbc.all() and ref is not None and max_volume_ratio is not None:
        volume, ref_volume = abs(np.linalg.det(cell)), abs(np.linalg.det(ref))
        ratio = volume / ref_volume if ref_volume > 0 else np.inf
        if not 1.0 / max_volume_ratio <= ratio <= max_volume_ratio:
            return (
                f"cell: volume {volume:.4g} Å^3 is {ratio:.3g} x the starting "
                f"{ref_volume:.4g} Å^3 (limit {max_volume_ratio:g}x)"
            )

    if angle_range_deg is not None or (ref is not None and max_angle_change_deg is not None):
        angles = _angles_deg(cell, lengths)
        ref_angles = None if ref is None else _angles_deg(ref, ref_lengths)
        for name, (a, b) in zip(("alpha", "beta", "gamma"), ((1, 2), (0, 2), (0, 1)), strict=True):
            if not (pbc[a] and pbc[b]):
                continue
            angle = angles[name]
            if angle_range_deg is not None:
                lo, hi = angle_range_deg
                if not lo <= angle <= hi:
                    return f"cell: angle {name} = {angle:.1f} deg outside [{lo:g}, {hi:g}] deg"
            if ref_angles is not None and max_angle_change_deg is not None:
                change = abs(angle - ref_angles[name])
                if change > max_angle_change_deg:
                    return (
                        f"cell: angle {name} changed by {change:.1f} deg "
                        f"(limit {max_angle_change_deg:g} deg)"
                    )
    return None


def _angles_deg(cell: np.ndarray, lengths: np.ndarray) -> dict[str, float]:
    out = {}
    for name, (a, b) in zip(("alpha", "beta", "gamma"), ((1, 2), (0, 2), (0, 1)), strict=True):
        denom = lengths[a] * lengths[b]
        cos = np.dot(cell[a], cell[b]) / denom if denom > 0 else 0.0
        out[name] = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return out


# --------------------------------------------------------------------------- distances


def _pair_key(key: str | tuple[str, str]) -> tuple[str, str]:
    if isinstance(key, str):
        parts = key.replace(" ", "").split("-")
    else:
        parts = list(key)
    if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(f"a safe-distance key is an element pair like 'Si-O', got {key!r}")
    return parts[0], parts[1]


def safe_distance_matrix(
    numbers: Sequence[int],
    factor: float = 0.5,
    safe_distances: SafeDistances | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Safe distances between the elements present.

    Parameters
    ----------
    numbers
        Atomic numbers of a frame.
    factor
        Default safe distance = ``factor`` x (sum of the covalent radii,
        ``ase.data.covalent_radii``).
    safe_distances
        Overrides per element pair (Å), keyed ``"Si-O"`` or ``("Si", "O")``
        (symmetric).

    Returns
    -------
    elements, matrix
        The sorted unique atomic numbers and the symmetric matrix of safe
        distances between them (Å).
    """
    from ase.data import atomic_numbers, covalent_radii

    elements = np.unique(np.asarray(numbers, dtype=int))
    radii = covalent_radii[elements]
    matrix = factor * (radii[:, None] + radii[None, :])
    index = {int(z): k for k, z in enumerate(elements)}
    for key, value in (safe_distances or {}).items():
        pair = _pair_key(key)
        try:
            za, zb = (atomic_numbers[s] for s in pair)
        except KeyError as exc:
            raise ValueError(f"unknown element in safe-distance key {key!r}") from exc
        value = float(value)
        if not value >= 0:
            raise ValueError(f"safe distance for {key!r} must be >= 0 Å, got {value}")
        if za in index and zb in index:
            matrix[index[za], index[zb]] = matrix[index[zb], index[za]] = value
    return elements, matrix


def check_min_distance(
    atoms: Atoms,
    factor: float = 0.5,
    safe_distances: SafeDistances | None = None,
) -> str | None:
    """Reject frames with two atoms closer than their safe distance (periodic images included).

    See :func:`safe_distance_matrix` for ``factor`` and ``safe_distances``. One
    vectorised :func:`ase.neighborlist.neighbor_list` call; a fully periodic cell
    whose volume per atom is too small to hold atoms at their safe distances (sphere
    packing bound, ``V/N < d_min^3 / sqrt(2)``) is rejected before the neighbour list,
    which a collapsed cell would make huge.
    """
    from ase.data import chemical_symbols
    from ase.neighborlist import neighbor_list

    n = len(atoms)
    if n == 0:
        return None
    elements, matrix = safe_distance_matrix(atoms.numbers, factor, safe_distances)
    cutoff = float(matrix.max())
    if cutoff <= 0:
        return None
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.all():
        volume = abs(atoms.cell.volume)
        d_min = float(matrix.min())
        if volume / n < d_min**3 / np.sqrt(2.0):
            return f"too_close: {volume / n:.3g} Å^3 per atom cannot hold atoms {d_min:.3g} Å apart"
    i, j, d = neighbor_list("ijd", atoms, cutoff, self_interaction=False)
    if len(d) == 0:
        return None
    species = np.searchsorted(elements, atoms.numbers)
    safe = matrix[species[i], species[j]]
    ratio = d / safe
    worst = int(np.argmin(ratio))
    if ratio[worst] >= 1.0:
        return None
    a, b = int(i[worst]), int(j[worst])
    pair = f"{chemical_symbols[atoms.numbers[a]]}-{chemical_symbols[atoms.numbers[b]]}"
    return (
        f"too_close: {pair} {d[worst]:.3f} Å < {safe[worst]:.3f} Å "
        f"(atoms {min(a, b)} and {max(a, b)})"
    )


# --------------------------------------------------------------------------- forces


def check_max_force(atoms: Atoms, max_force_eV_A: float | None) -> str | None:
    """Reject frames where an atom's force exceeds ``max_force_eV_A`` (eV/Å).

    Frames without forces pass (use :func:`check_finite` for non-finite ones).
    """
    if max_force_eV_A is None:
        return None
    forces = _frame_forces(atoms)
    if forces is None or forces.size == 0:
        return None
    norms = np.linalg.norm(forces.reshape(-1, 3), axis=1)
    k = int(np.argmax(norms))
    if norms[k] > max_force_eV_A:
        return f"max_force: {norms[k]:.4g} eV/Å on atom {k} > {max_force_eV_A:g} eV/Å"
    return None


# --------------------------------------------------------------------------- bundle


@dataclass(frozen=True)
class FrameFilter:
    """Settings of the frame filters; :meth:`check` runs them on one frame.

    Parameters
    ----------
    distance_factor
        Safe distance = ``distance_factor`` x sum of covalent radii.
    safe_distances
        Per element-pair overrides of the safe distance (Å), ``{"Si-O": 1.2}``.
    max_length_ratio, max_volume_ratio, angle_range_deg, max_angle_change_deg
        Cell limits, see :func:`check_cell` (``None`` switches one off).
    max_force_eV_A
        Largest force on an atom (eV/Å); ``None`` (default) does not check it.
    """

    distance_factor: float = 0.5
    safe_distances: Mapping[str | tuple[str, str], float] = field(default_factory=dict)
    max_length_ratio: float | None = 1.5
    max_volume_ratio: float | None = 2.0
    angle_range_deg: tuple[float, float] | None = (20.0, 160.0)
    max_angle_change_deg: float | None = 30.0
    max_force_eV_A: float | None = None

    def __post_init__(self) -> None:
        _check_positive(self.distance_factor, "distance_factor")
        for name in ("max_length_ratio", "max_volume_ratio"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value >= 1.0):
                raise ValueError(f"{name} must be >= 1 (or None), got {value!r}")
        if self.angle_range_deg is not None:
            lo, hi = (float(x) for x in self.angle_range_deg)
            if not 0.0 <= lo < hi <= 180.0:
                raise ValueError(f"angle_range_deg must satisfy 0 <= lo < hi <= 180, got {lo, hi}")
            object.__setattr__(self, "angle_range_deg", (lo, hi))
        if self.max_angle_change_deg is not None:
            _check_positive(self.max_angle_change_deg, "max_angle_change_deg")
        if self.max_force_eV_A is not None:
            _check_positive(self.max_force_eV_A, "max_force_eV_A")
        safe = dict(self.safe_distances or {})
        safe_distance_matrix([1], 1.0, safe)  # validates keys and values
        object.__setattr__(self, "safe_distances", safe)

    def check(self, atoms: Atoms, reference_cell: Any = None) -> str | None:
        """The first reason to reject ``atoms`` (kinds in :data:`REASON_KINDS` order), or None."""
        return (
            check_finite(atoms)
            or self.check_cell(atoms, reference_cell)
            or check_min_distance(atoms, self.distance_factor, self.safe_distances)
            or check_max_force(atoms, self.max_force_eV_A)
        )

    def check_cell(self, atoms: Atoms, reference_cell: Any = None) -> str | None:
        """Only the cell limits (cheap: no neighbour list)."""
        return check_cell(
            atoms,
            reference_cell,
            max_length_ratio=self.max_length_ratio,
            max_volume_ratio=self.max_volume_ratio,
            angle_range_deg=self.angle_range_deg,
            max_angle_change_deg=self.max_angle_change_deg,
        )

    __call__ = check


def _check_positive(value: Any, name: str) -> None:
    try:
        ok = float(value) > 0 and np.isfinite(float(value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


@dataclass
class FilterResult:
    """Outcome of :func:`filter_frames`.

    Attributes
    ----------
    kept
        Frames that passed, in input order.
    kept_indices
        Their indices in the input.
    rejected
        ``(index, reason)`` of every rejected frame, in input order.
    counts
        Number of rejected frames per reason kind (:data:`REASON_KINDS`); a frame
        counts once, under the first check it failed.
    """

    kept: list[Atoms] = field(default_factory=list)
    kept_indices: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def _reference_cells(reference: Any, n: int) -> list[Any]:
    if reference is None:
        return [None] * n
    if isinstance(reference, Atoms) or hasattr(reference, "array"):
        return [reference] * n
    if isinstance(reference, np.ndarray) and reference.shape in ((3, 3), (9,)):
        return [reference] * n
    refs = list(reference)
    if len(refs) == 3 and all(
        isinstance(r, list | tuple | np.ndarray) and np.shape(r) == (3,) for r in refs
    ):
        return [np.asarray(refs, dtype=float)] * n  # one 3x3 nested list
    if len(refs) != n:
        raise ValueError(f"got {len(refs)} reference cells for {n} frames")
    return refs


def filter_frames(
    frames: Sequence[Atoms],
    reference_cells: Any = None,
    frame_filter: FrameFilter | None = None,
    **settings: Any,
) -> FilterResult:
    """Split frames into physical ones and rejected ones, with the reason for each rejection.

    Parameters
    ----------
    frames
        Frames to check.
    reference_cells
        Starting cell(s) for the relative cell limits: one cell (``Atoms``, ``Cell``
        or 3x3 array) for all frames, a sequence with one (or ``None``) per frame, or
        ``None`` (only the absolute limits are checked).
    frame_filter
        The settings; default ``FrameFilter(**settings)``.
    **settings
        :class:`FrameFilter` fields (``distance_factor``, ``safe_distances``,
        ``max_length_ratio``, ``max_volume_ratio``, ``angle_range_deg``,
        ``max_angle_change_deg``, ``max_force_eV_A``), when no ``frame_filter`` is given.

    Returns
    -------
    FilterResult
    """
    if frame_filter is not None and settings:
        raise TypeError("give either frame_filter or filter settings, not both")
    flt = frame_filter if frame_filter is not None else FrameFilter(**settings)
    if isinstance(frames, Atoms):
        raise TypeError("frames must be a sequence of ase.Atoms, not a single Atoms")
    frames = list(frames)
    refs = _reference_cells(reference_cells, len(frames))
    result = FilterResult(counts={kind: 0 for kind in REASON_KINDS})
    for index, (atoms, ref) in enumerate(zip(frames, refs, strict=True)):
        if not isinstance(atoms, Atoms):
            raise TypeError(f"frame {index} is a {type(atoms).__name__}, not ase.Atoms")
        with np.errstate(all="ignore"):
            reason = flt.check(atoms, ref)
        if reason is None:
            result.kept.append(atoms)
            result.kept_indices.append(index)
        else:
            result.rejected.append((index, reason))
            kind = reason_kind(reason)
            result.counts[kind] = result.counts.get(kind, 0) + 1
    return result

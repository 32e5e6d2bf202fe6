"""Phonon dispersions by finite displacements (phonopy) with any ASE calculator.

:func:`phonon_bands` builds a supercell of a primitive cell, displaces atoms with
phonopy, evaluates forces with the calculator (SW, Tersoff, a PFD model, GPAW, VASP ...),
and returns the dispersion along a high-symmetry path plus the exact frequencies at Γ,
X and L as plain JSON-safe data. :func:`plot_phonon_bands` draws several models'
dispersions on one figure. :func:`phonon_comparison` tabulates every branch at Γ, X and L
of several models against a reference (per-branch deviations, the largest per model) and
their heat capacity and vibrational free energy.

Each calculation can save phonopy's own ``phonopy_params.yaml`` (structure, supercell,
displacements and forces), so that phonopy's tools run on it (``phonopy-load
phonopy_params.yaml --band auto``, ``--mesh``, ``-t``; ``phonopy.load`` in Python).

Units: Å and eV inside; frequencies in THz (phonopy's default unit conversion for
eV/Å/amu); path distances in 1/Å (reciprocal vectors without the 2π factor); heat
capacity and entropy in J/K per mole of atoms, free energy in kJ per mole of atoms and eV
per atom (phonopy's values per mole of primitive cells divided by its atom count).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

__all__ = [
    "FCC_PATH",
    "SHARED_LABELER_SETTINGS",
    "SPECIAL_POINTS",
    "PhononComparison",
    "is_commensurate",
    "phonon_bands",
    "phonon_comparison",
    "phonon_labeler",
    "plot_phonon_bands",
    "seekpath_path",
    "thermal_properties",
]

#: Standard path for diamond / FCC silicon in ASE's special-point letters
#: (``G`` is Γ, ``,`` a discontinuity): Γ–X–U|K–Γ–L.
FCC_PATH = "GXU,KGL"

_SPECIAL_KEYS = {"Gamma": "G", "X": "X", "L": "L"}

#: The special points whose branches :func:`phonon_comparison` compares.
SPECIAL_POINTS: tuple[str, ...] = tuple(_SPECIAL_KEYS)

#: Name of the file phonopy's own tools read (``phonopy-load``, ``phonopy.load``).
PHONOPY_PARAMS = "phonopy_params.yaml"

#: A mode below minus this frequency (THz) on the thermal mesh counts as imaginary.
IMAGINARY_TOLERANCE_THZ = 0.05

_EV_PER_KJ_MOL = 1.0 / 96.48533212  # 1 eV per particle = 96.485 kJ/mol

#: Labeler settings that let one calculator object compute every supercell of a phonon
#: calculation: GPAW fixes the point-group symmetry of the first structure it sees and
#: refuses a displaced one that breaks it (``SymmetryBrokenError``).
SHARED_LABELER_SETTINGS: dict[str, dict[str, Any]] = {
    "gpaw": {"symmetry": "off"},
    "gpaw-lcao": {"symmetry": "off"},
}


def _require_phonopy() -> Any:
    try:
        import phonopy
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "phonon calculations need phonopy: pip install 'pfd_ase[phonons]'"
        ) from exc
    return phonopy


def _to_phonopy(atoms: Atoms) -> Any:
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=np.array(atoms.cell),
        scaled_positions=atoms.get_scaled_positions(wrap=False),
        masses=atoms.get_masses(),
    )


def _to_ase(cell: Any) -> Atoms:
    atoms = Atoms(
        symbols=list(cell.symbols),
        cell=np.array(cell.cell),
        scaled_positions=np.array(cell.scaled_positions),
        pbc=True,
    )
    atoms.set_masses(np.array(cell.masses))
    return atoms


def _forces(atoms: Atoms, calc: Any) -> np.ndarray:
    """Forces with ``calc``, or with a fresh calculator from ``calc()`` when it is a factory."""
    work = atoms.copy()
    work.calc = calc() if _is_factory(calc) else calc
    return np.array(work.get_forces(), dtype=float)


def _is_factory(calc: Any) -> bool:
    return callable(calc) and not hasattr(calc, "get_property")


def phonon_labeler(name: str, directory: str | os.PathLike | None = None, **overrides: Any) -> Any:
    """A labeler (:func:`pfd_ase.calculators.make_labeler`) that :func:`phonon_bands` can share.

    Parameters
    ----------
    name
        A labeler name (``"gpaw"``, ``"vasp"``, ``"sw"`` ...).
    directory
        Its working directory.
    **overrides
        Its settings; they win over :data:`SHARED_LABELER_SETTINGS` (GPAW: ``symmetry="off"``).

    Returns
    -------
    Any
        An ASE calculator.
    """
    from pfd_ase.calculators import make_labeler

    settings = {**SHARED_LABELER_SETTINGS.get(name.strip().lower(), {}), **overrides}
    return make_labeler(name, directory=directory, **settings)


def _check_shared_calculator(calc: Any) -> None:
    """Refuse, before any calculation, one GPAW object that keeps point-group symmetry.

    GPAW fixes the symmetry of the first structure it sees and raises for a displaced one,
    which would only show after the DFT of the undisplaced supercell.
    """
    if _is_factory(calc) or not type(calc).__module__.startswith("gpaw"):
        return
    params = getattr(calc, "parameters", None)
    sym = getattr(params, "symmetry", None)  # GPAW >= 24: a Symmetry object
    if sym is None and isinstance(params, dict):
        sym = params.get("symmetry")  # older GPAW: the keyword as given
    if sym == "off" or getattr(sym, "point_group", None) is False:
        return
    if isinstance(sym, dict) and sym.get("point_group") is False:
        return
    raise ValueError(
        'one GPAW calculator for all supercells needs symmetry="off" (GPAW refuses a displaced '
        "structure that breaks the symmetry it found first); or pass a function that returns "
        "a fresh calculator"
    )


def _qpoint_frequencies(phonon: Any) -> np.ndarray:
    """Frequencies of the last ``run_qpoints`` (phonopy 4 property, older dict API)."""
    result = getattr(phonon, "qpoints", None)
    if result is not None and hasattr(result, "frequencies"):
        return np.array(result.frequencies)
    return np.array(phonon.get_qpoints_dict()["frequencies"])  # phonopy < 3


def _label(letter: str) -> str:
    return "Γ" if letter == "G" else letter


def _path_segments(
    primitive: Atoms, path: str | Sequence[Sequence[tuple[str, Sequence[float]]]] | None
) -> tuple[list[list[tuple[str, np.ndarray]]], dict[str, np.ndarray]]:
    """Segments of (label, q in the primitive reciprocal basis) and the lattice's special points.

    Special points come from :meth:`ase.cell.Cell.bandpath`, which maps them onto the
    reciprocal basis of *this* cell whatever its orientation.
    """
    lattice = primitive.cell.get_bravais_lattice()
    special = {
        k: np.asarray(v, float)
        for k, v in primitive.cell.bandpath(npoints=0).special_points.items()
    }
    if path is None:
        path = FCC_PATH if lattice.name == "FCC" else lattice.special_path
    if isinstance(path, str):
        segments = []
        for chunk in path.split(","):
            names = _split_path_letters(chunk, special)
            segments.append([(_label(n), special[n]) for n in names])
    else:
        segments = [[(str(lab), np.asarray(q, float)) for lab, q in seg] for seg in path]
    for seg in segments:
        if len(seg) < 2:
            raise ValueError(f"a path segment needs at least two points, got {seg}")
    return segments, special


def _split_path_letters(chunk: str, special: Mapping[str, Any]) -> list[str]:
    """Split ``"GXU1"``-like strings into special-point names (names may carry digits)."""
    from ase.dft.kpoints import parse_path_string

    names = [name for part in parse_path_string(chunk) for name in part]
    missing = [n for n in names if n not in special]
    if missing:
        raise ValueError(f"unknown special points {missing}; known: {sorted(special)}")
    return names


def phonon_bands(
    primitive: Atoms,
    calc: Any,
    supercell: Sequence[int] | Sequence[Sequence[int]] = (3, 3, 3),
    displacement_A: float = 0.01,
    npoints: int = 51,
    path: str | Sequence[Sequence[tuple[str, Sequence[float]]]] | None = None,
    *,
    subtract_residual: bool = True,
    symmetrize: bool = True,
    symprec: float = 1e-5,
    folder: str | os.PathLike | None = None,
    mesh: Sequence[int] | None = (20, 20, 20),
    temperature_K: float = 300.0,
) -> dict[str, Any]:
    """Phonon dispersion of ``primitive`` by finite displacements with phonopy.

    Parameters
    ----------
    primitive
        The primitive cell (never modified). Its reciprocal basis defines the q-points.
    calc
        Any ASE calculator, attached to copies of the supercells in turn; or a zero-argument
        callable returning a fresh calculator for each supercell, for calculators that keep
        state between structures (GPAW fixes the symmetry of the first structure it sees and
        refuses a displaced one unless ``symmetry="off"``: one GPAW object without it is
        refused with a ``ValueError`` before any calculation).
    supercell
        Supercell repeats ``(n1, n2, n3)`` or a 3×3 supercell matrix.
    displacement_A
        Finite-displacement amplitude, Å.
    npoints
        Points per path segment (phonopy's convention), endpoints included.
    path
        ``None`` (Γ–X–U|K–Γ–L for FCC lattices, ASE's standard path otherwise), a string
        of ASE special-point letters (``"GXU,KGL"``; ``G`` is Γ, ``,`` a break), or a list
        of segments, each a list of ``(label, q)`` with ``q`` in the primitive reciprocal
        basis.
    subtract_residual
        Subtract the forces of the undisplaced supercell (one extra force call); removes
        spurious residual forces of imperfectly relaxed or noisy models.
    symmetrize
        Symmetrize the force constants (translational invariance, index permutation).
    symprec
        Symmetry tolerance for phonopy, Å.
    folder
        Where to save phonopy's ``phonopy_params.yaml`` (created if needed): the primitive
        cell, supercell matrix, displacements and their forces (minus the undisplaced
        supercell's with ``subtract_residual``), no force constants; phonopy's tools
        rebuild them (``phonopy.load(path)``, ``phonopy-load phonopy_params.yaml -t``).
        ``None``: nothing written.
    mesh
        Γ-centred q-point mesh for the thermal properties (20×20×20 suits a 2-atom cell);
        ``None``: none computed.
    temperature_K
        Temperature of the thermal properties, K.

    Returns
    -------
    dict
        JSON-safe: ``labels`` and ``label_distances`` (special points along the path, a
        break shown as ``"U|K"``), ``distances`` (nq, 1/Å), ``frequencies_THz`` (nq ×
        nbands), ``special_points`` (``{"Gamma": [...], "X": [...], "L": [...]}``, sorted
        frequencies in THz computed at those exact q-points; X and L only where the
        lattice has them), ``special_qpoints`` (their reduced coordinates), ``path_points``
        (label → sorted frequencies at every labelled point of the path, exact),
        ``commensurate`` (special point → whether the supercell contains its wave, i.e. its
        frequencies are exact rather than Fourier-interpolated), ``supercell`` (3×3
        matrix), ``displacement_A``, ``n_displacements``, ``n_atoms``, ``phonopy_params``
        (path of the saved file, or ``None``) and ``thermal`` (see
        :func:`thermal_properties`; ``None`` without ``mesh``). Imaginary frequencies are
        negative numbers (phonopy's convention).
    """
    _require_phonopy()
    from phonopy import Phonopy

    if npoints < 2:
        raise ValueError("npoints must be at least 2")
    if displacement_A <= 0:
        raise ValueError("displacement_A must be positive")
    _check_shared_calculator(calc)
    smat = np.asarray(supercell, dtype=int)
    if smat.shape == (3,):
        smat = np.diag(smat)
    if smat.shape != (3, 3) or round(abs(np.linalg.det(smat))) == 0:
        raise ValueError(
            f"supercell must be 3 repeats or a non-singular 3×3 matrix, got {supercell}"
        )
    if mesh is not None and (len(mesh) != 3 or min(mesh) < 1):
        raise ValueError(f"mesh must be 3 positive integers, got {mesh}")

    prim = primitive.copy()
    prim.calc = None
    phonon = Phonopy(
        _to_phonopy(prim), supercell_matrix=smat, primitive_matrix="P", symprec=symprec
    )
    phonon.generate_displacements(distance=displacement_A)
    displaced = phonon.supercells_with_displacements
    residual = _forces(_to_ase(phonon.supercell), calc) if subtract_residual else 0.0
    phonon.forces = np.array([_forces(_to_ase(sc), calc) - residual for sc in displaced])
    phonon.produce_force_constants()
    if symmetrize:
        phonon.symmetrize_force_constants()

    segments, special = _path_segments(prim, path)
    recip = np.array(prim.cell.reciprocal())  # rows b_i, no 2π
    labels: list[str] = []
    label_distances: list[float] = []
    qpoints: list[np.ndarray] = []
    distances: list[float] = []
    offset = 0.0
    for iseg, seg in enumerate(segments):
        if iseg == 0:
            labels.append(seg[0][0])
            label_distances.append(offset)
        else:
            labels[-1] = f"{labels[-1]}|{seg[0][0]}"
        for (_, q0), (lab1, q1) in zip(seg[:-1], seg[1:], strict=True):
            length = float(np.linalg.norm((q1 - q0) @ recip))
            for t in np.linspace(0.0, 1.0, npoints):
                qpoints.append(q0 + t * (q1 - q0))
                distances.append(offset + t * length)
            offset += length
            labels.append(lab1)
            label_distances.append(offset)
    phonon.run_qpoints(np.array(qpoints))
    freqs = _qpoint_frequencies(phonon)

    # exact special points, independent of the path sampling
    present = [(key, special[letter]) for key, letter in _SPECIAL_KEYS.items() if letter in special]
    phonon.run_qpoints(np.array([q for _, q in present]))
    special_rows = _qpoint_frequencies(phonon)
    special_freqs = {
        key: sorted(float(f) for f in row)
        for (key, _), row in zip(present, special_rows, strict=True)
    }
    special_q = {key: [float(x) for x in q] for key, q in present}
    # every labelled point of the path, exact (e.g. Γ, X, M, R of a cubic path)
    points: dict[str, np.ndarray] = {}
    for seg in segments:
        for lab, q in seg:
            points.setdefault(lab, q)
    phonon.run_qpoints(np.array(list(points.values())))
    path_points = {
        lab: sorted(float(f) for f in row)
        for lab, row in zip(points, _qpoint_frequencies(phonon), strict=True)
    }

    params = None
    if folder is not None:
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        params = phonon.save(target / PHONOPY_PARAMS, settings={"force_constants": False})
    thermal = None if mesh is None else thermal_properties(phonon, mesh, temperature_K)

    return {
        "labels": labels,
        "label_distances": [float(d) for d in label_distances],
        "distances": [float(d) for d in distances],
        "frequencies_THz": freqs.tolist(),
        "special_points": special_freqs,
        "special_qpoints": special_q,
        "path_points": path_points,
        "commensurate": {key: is_commensurate(smat, q) for key, q in present},
        "supercell": smat.tolist(),
        "displacement_A": float(displacement_A),
        "n_displacements": len(displaced),
        "n_atoms": len(prim),
        "phonopy_params": None if params is None else str(params),
        "thermal": thermal,
    }


def seekpath_path(
    atoms: Atoms, symprec: float = 1e-3
) -> tuple[Atoms, list[list[tuple[str, list[float]]]]]:
    """seekpath's standardised primitive cell of ``atoms`` and its high-symmetry path.

    Returns
    -------
    (Atoms, list)
        The primitive cell (seekpath's orientation; compute phonons on it, the path's
        q-points are in its reciprocal basis) and the path as :func:`phonon_bands` takes
        it: segments of ``(label, q)``, consecutive legs joined, a new segment where the
        path jumps (``"GAMMA"`` is written ``"Γ"``).
    """
    try:
        import seekpath
    except ImportError as exc:  # pragma: no cover - seekpath comes with the core install
        raise ImportError("the seekpath path needs seekpath: pip install seekpath") from exc
    cell = (np.array(atoms.cell), atoms.get_scaled_positions(), atoms.numbers)
    data = seekpath.get_path(cell, with_time_reversal=True, symprec=symprec)
    primitive = Atoms(
        numbers=data["primitive_types"],
        cell=data["primitive_lattice"],
        scaled_positions=data["primitive_positions"],
        pbc=True,
    )
    coords = data["point_coords"]

    def point(name: str) -> tuple[str, list[float]]:
        return ("Γ" if name == "GAMMA" else name, [float(x) for x in coords[name]])

    segments: list[list[tuple[str, list[float]]]] = []
    for start, end in data["path"]:
        if segments and segments[-1][-1][0] == point(start)[0]:
            segments[-1].append(point(end))
        else:
            segments.append([point(start), point(end)])
    return primitive, segments


def is_commensurate(supercell: Sequence[Sequence[int]], q: Sequence[float]) -> bool:
    """Whether the wave of ``q`` (primitive reciprocal basis) is periodic in the supercell.

    With phonopy's supercell matrix M (supercell vectors = primitive vectors · M), the
    finite-displacement frequencies at ``q`` are exact when Mᵀq is integer; elsewhere they
    are Fourier-interpolated from the supercell's force constants.
    """
    m = np.asarray(supercell, dtype=float)
    x = m.T @ np.asarray(q, dtype=float)
    return bool(np.allclose(x, np.round(x), atol=1e-6))


def thermal_properties(
    phonon: Any, mesh: Sequence[int] = (20, 20, 20), temperature_K: float = 300.0
) -> dict[str, Any]:
    """Harmonic heat capacity, entropy and free energy of a phonopy object on a mesh.

    Parameters
    ----------
    phonon
        A ``phonopy.Phonopy`` with force constants; its unit cell is the cell whose moles
        phonopy counts (here the primitive cell), converted to moles of atoms.
    mesh
        Γ-centred sampling of the Brillouin zone.
    temperature_K
        Temperature, K.

    Returns
    -------
    dict
        JSON-safe: ``temperature_K``, ``mesh``, ``cv_J_K_mol_atom`` (C_v, J/K per mole of
        atoms; at most 3R = 24.94 in the harmonic approximation), ``entropy_J_K_mol_atom``,
        ``free_energy_kJ_mol_atom`` and ``free_energy_eV_atom`` (the vibrational Helmholtz
        free energy, zero-point energy included), ``min_frequency_THz`` on the mesh and
        ``imaginary_fraction`` (weighted fraction of mesh modes below
        −:data:`IMAGINARY_TOLERANCE_THZ`; phonopy leaves them out of the sums, so the
        values describe only the real modes when it is not zero).
    """
    import inspect

    phonon.run_mesh(list(mesh), is_gamma_center=True)
    freqs, weights = _mesh_frequencies(phonon)
    options: dict[str, Any] = {"temperatures": [float(temperature_K)]}
    if "exclude_gamma_acoustic" in inspect.signature(phonon.run_thermal_properties).parameters:
        options["exclude_gamma_acoustic"] = True  # phonopy >= 4: no noise from ±0 modes
    phonon.run_thermal_properties(**options)
    tp = phonon.thermal_properties
    if hasattr(tp, "heat_capacity"):
        cv, entropy, free = tp.heat_capacity[0], tp.entropy[0], tp.free_energy[0]
    else:  # pragma: no cover - phonopy < 3
        d = phonon.get_thermal_properties_dict()
        cv, entropy, free = d["heat_capacity"][0], d["entropy"][0], d["free_energy"][0]
    n = len(phonon.unitcell)
    imaginary = (freqs < -IMAGINARY_TOLERANCE_THZ) * weights[:, None]
    return {
        "temperature_K": float(temperature_K),
        "mesh": [int(x) for x in mesh],
        "cv_J_K_mol_atom": float(cv) / n,
        "entropy_J_K_mol_atom": float(entropy) / n,
        "free_energy_kJ_mol_atom": float(free) / n,
        "free_energy_eV_atom": float(free) / n * _EV_PER_KJ_MOL,
        "min_frequency_THz": float(freqs.min()),
        "imaginary_fraction": float(imaginary.sum() / (weights.sum() * freqs.shape[1])),
    }


def _mesh_frequencies(phonon: Any) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (irreducible q × bands, THz) and q weights of the last ``run_mesh``."""
    mesh = phonon.mesh
    if hasattr(mesh, "frequencies"):
        return np.asarray(mesh.frequencies, float), np.asarray(mesh.weights, float)
    d = phonon.get_mesh_dict()  # pragma: no cover - phonopy < 3
    return np.asarray(d["frequencies"], float), np.asarray(d["weights"], float)


def phonon_comparison(
    results: Mapping[str, Mapping[str, Any]], reference: str = "DFT"
) -> dict[str, Any]:
    """Every branch at Γ, X and L of several models against a reference, and their thermals.

    Branches are compared in sorted order at each point (the n-th lowest frequency of a
    model against the n-th lowest of the reference), so crossing or degenerate branches
    need no eigenvector matching. Models and reference may use different supercells: the
    table gives each one's supercell and, per point, whether its frequencies are exact
    (q commensurate with the supercell) or Fourier-interpolated; ``phonon_same_supercell``
    says whether a deviation compares like with like.

    Parameters
    ----------
    results
        Name → :func:`phonon_bands` result (or its stored JSON).
    reference
        The name the others are compared with; when absent, no deviations.

    Returns
    -------
    dict
        JSON-safe: ``phonon_reference`` (``reference``, or ``None`` when absent),
        ``phonon_branches`` (name → ``{"supercell", "frequencies_THz": {point: sorted
        branches}, "commensurate": {point: bool}}``), ``phonon_deviation_THz`` (model →
        point → per-branch model − reference, THz), ``phonon_max_dev_THz`` (model → the
        largest |deviation| over all branches at all points, THz),
        ``phonon_same_supercell`` (model → bool), ``phonon_thermal`` (name →
        :func:`thermal_properties`, where computed) and ``phonopy_params`` (name → path
        of its ``phonopy_params.yaml`` or ``None``).
    """
    branches: dict[str, dict[str, Any]] = {}
    for name, res in results.items():
        special = res["special_points"]
        smat = np.asarray(res["supercell"], dtype=int)
        qpoints = res.get("special_qpoints", {})
        branches[name] = {
            "supercell": smat.tolist(),
            "frequencies_THz": {
                p: sorted(float(f) for f in special[p]) for p in SPECIAL_POINTS if p in special
            },
            "commensurate": {
                p: is_commensurate(smat, qpoints[p]) for p in SPECIAL_POINTS if p in qpoints
            },
        }
    deviation: dict[str, dict[str, list[float]]] = {}
    max_dev: dict[str, float] = {}
    same: dict[str, bool] = {}
    ref = branches.get(reference)
    if ref is not None:
        for name, row in branches.items():
            if name == reference:
                continue
            per: dict[str, list[float]] = {}
            for point, freqs in row["frequencies_THz"].items():
                if point not in ref["frequencies_THz"]:
                    continue
                ours, theirs = np.array(freqs), np.array(ref["frequencies_THz"][point])
                if ours.shape != theirs.shape:
                    raise ValueError(
                        f"{name} has {ours.size} branches at {point}, {reference} {theirs.size}:"
                        " not the same primitive cell"
                    )
                per[point] = (ours - theirs).tolist()
            deviation[name] = per
            if per:
                max_dev[name] = float(max(abs(d) for values in per.values() for d in values))
            same[name] = row["supercell"] == ref["supercell"]
    return {
        "phonon_reference": reference if ref is not None else None,
        "phonon_branches": branches,
        "phonon_deviation_THz": deviation,
        "phonon_max_dev_THz": max_dev,
        "phonon_same_supercell": same,
        "phonon_thermal": {n: r["thermal"] for n, r in results.items() if r.get("thermal")},
        "phonopy_params": {n: r.get("phonopy_params") for n, r in results.items()},
    }


class PhononComparison(dict):
    """Name → :func:`phonon_bands` result, with :func:`phonon_comparison`'s tables.

    A plain ``dict`` of the per-subject results (iterating, indexing and ``==`` see only
    them, as before); the comparison is the attribute :attr:`summary`, JSON-safe, to merge
    into a report's results (``result |= bands.summary``).

    Attributes
    ----------
    summary
        :func:`phonon_comparison` of the results.
    """

    def __init__(self, results: Mapping[str, Mapping[str, Any]], reference: str = "DFT"):
        super().__init__(results)
        self.summary: dict[str, Any] = phonon_comparison(results, reference)

    @property
    def phonon_max_dev_THz(self) -> dict[str, float]:
        """Model → largest |Δf| against the reference over all branches at Γ, X, L, THz."""
        return self.summary["phonon_max_dev_THz"]


_STYLES = [("-", "C0"), ("--", "C3"), (":", "C2"), ("-.", "C1"), ((0, (5, 1, 1, 1)), "C4")]


def plot_phonon_bands(
    results: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Draw several models' dispersions (``{"DFT": bands, "PF": ..., "PFD": ...}``) on one PNG.

    Each value is a :func:`phonon_bands` result; all are drawn on the first one's special-point
    ticks (each curve rescaled onto them, so paths must have the same labels). Returns the path.
    """
    if not results:
        raise ValueError("nothing to plot")
    from pfd_ase.analysis.figures import new_figure

    fig = new_figure((7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    ref = next(iter(results.values()))
    ref_ticks = np.asarray(ref["label_distances"], float)
    for i, (name, res) in enumerate(results.items()):
        style, color = _STYLES[i % len(_STYLES)]
        x = np.asarray(res["distances"], float)
        ticks = np.asarray(res["label_distances"], float)
        if len(ticks) == len(ref_ticks) and not np.allclose(ticks, ref_ticks):
            x = np.interp(x, ticks, ref_ticks)  # align differently scaled paths
        freqs = np.asarray(res["frequencies_THz"], float)
        # break lines at path discontinuities (repeated distance)
        breaks = np.flatnonzero(np.diff(x) <= 0) + 1 if len(x) > 1 else []
        starts = [0, *breaks]
        ends = [*breaks, len(x)]
        for s, e in zip(starts, ends, strict=True):
            for band in range(freqs.shape[1]):
                ax.plot(
                    x[s:e],
                    freqs[s:e, band],
                    linestyle=style,
                    color=color,
                    linewidth=1.3,
                    label=name if (s == 0 and band == 0) else None,
                )
    for t in ref_ticks:
        ax.axvline(t, color="0.7", linewidth=0.6)
    ax.axhline(0.0, color="0.7", linewidth=0.6)
    ax.set_xticks(ref_ticks)
    ax.set_xticklabels(ref["labels"])
    ax.set_xlim(ref_ticks[0], ref_ticks[-1])
    ax.set_ylabel("Frequency (THz)")
    if title:
        ax.set_title(title)
    ax.legend(loc="best", frameon=False)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    return out

"""Labelled frames: an extxyz store with labeler metadata, deepmd npy conversion, splits, merges.

A *labelled frame* is an :class:`ase.Atoms` whose calculator is a
:class:`~ase.calculators.singlepoint.SinglePointCalculator` holding ``energy``
(the force-consistent energy, eV), ``forces`` (eV/Å) and, for periodic cells,
``stress`` (Voigt, eV/Å³). Metadata live in ``atoms.info``:

``pfd_labeler``           name of the labeler that produced the labels
``pfd_labeler_settings``  its settings, a JSON string
``pfd_frame_id``          a stable identifier of the frame
``pfd_structure``         the configured structure it was made from (perturbed or explored)

Files are written with full float precision (``%.17g``) and atomically (temp file +
rename): a crash leaves the previous file intact, and a round trip extxyz ↔ deepmd npy
keeps every label bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read
from ase.io.extxyz import output_column_format, save_calc_results
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

from pfd_ase._io import atomic_path

LABELER_KEY = "pfd_labeler"
LABELER_SETTINGS_KEY = "pfd_labeler_settings"
FRAME_ID_KEY = "pfd_frame_id"
STRUCTURE_KEY = "pfd_structure"

#: The deepmd-kit label file of the virial (eV, 9 components a frame) in a ``set.*`` folder;
#: :func:`to_deepmd` writes it for periodic frames with stress, as ``-stress · volume``.
VIRIAL_FILE = "virial.npy"

#: Files of a deepmd-kit system written by :func:`to_deepmd` beyond the standard ones:
#: ``pfd_stress.npy`` keeps the stress bit for bit (``virial = -stress·V`` is not exactly
#: invertible in floating point) and ``pfd_info.json`` keeps each frame's ``atoms.info``.
_STRESS_FILE = "pfd_stress.npy"
_INFO_FILE = "pfd_info.json"


# --------------------------------------------------------------------------- extxyz store
def write_frames(path: str | os.PathLike, frames: Iterable[Atoms]) -> Path:
    """Write frames to an extxyz file atomically, with full float precision.

    Labels (calculator results) are written as ``energy``, ``free_energy``,
    ``stress`` and ``forces`` so that :func:`read_frames` (or ``ase.io.read``)
    restores them on a ``SinglePointCalculator``.
    """
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        for atoms in frames:
            write_frame(fh, atoms)
    return path


def write_frame(fh, atoms: Atoms) -> None:
    """Write one frame to an open text file as extxyz, labels included, at full precision."""
    calc = atoms.calc
    atoms = atoms.copy()
    save_calc_results(atoms, calc, calc_prefix="", force=True)
    if atoms.info.get("stress", np.empty(0)).shape == (6,):
        atoms.info["stress"] = voigt_6_to_full_3x3_stress(atoms.info["stress"])
    columns = ["symbols", "positions"] + [
        k for k in atoms.arrays if k not in ("numbers", "positions", "symbols", "species", "pos")
    ]
    arrays = {"symbols": np.array(atoms.get_chemical_symbols()), **atoms.arrays}
    comment, _, _, _ = output_column_format(atoms, columns, arrays, write_info=True)
    fh.write(f"{len(atoms)}\n{comment}\n")
    for i in range(len(atoms)):
        row = []
        for col in columns:
            value = np.atleast_1d(arrays[col][i])
            for v in value:
                if value.dtype.kind == "f":
                    row.append(f"{v:.17g}")
                elif value.dtype.kind == "b":
                    row.append("T" if v else "F")
                else:
                    row.append(str(v))
        fh.write(" ".join(row) + "\n")


def read_frames(path: str | os.PathLike, missing_ok: bool = False) -> list[Atoms]:
    """Read every frame of an extxyz file (``[]`` for a missing file if ``missing_ok``)."""
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return []
        raise FileNotFoundError(f"no dataset at {path}")
    if path.stat().st_size == 0:
        return []
    frames = read(path, index=":", format="extxyz")
    for atoms in frames:  # extxyz turns digit-only strings into numbers
        for key in (FRAME_ID_KEY, STRUCTURE_KEY):
            if key in atoms.info:
                atoms.info[key] = str(atoms.info[key])
    return frames


def append_frames(path: str | os.PathLike, frames: Sequence[Atoms]) -> list[Atoms]:
    """Merge ``frames`` into the dataset at ``path`` (no duplicates); return the full dataset."""
    merged = merge_frames(read_frames(path, missing_ok=True), frames)
    write_frames(path, merged)
    return merged


# --------------------------------------------------------------------------- identity, merge, split
def frame_fingerprint(atoms: Atoms) -> str:
    """Hash of a structure (atomic numbers, positions, cell, pbc), bit-exact, label-independent."""
    h = hashlib.sha1()
    for arr in (atoms.numbers.astype(np.int64), atoms.positions, atoms.cell.array, atoms.pbc):
        a = np.ascontiguousarray(arr)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def merge_frames(*datasets: Iterable[Atoms]) -> list[Atoms]:
    """Concatenate datasets, dropping frames whose structure already appeared (first one wins)."""
    seen: set[str] = set()
    out = []
    for frames in datasets:
        for atoms in frames:
            key = frame_fingerprint(atoms)
            if key not in seen:
                seen.add(key)
                out.append(atoms)
    return out


def weighted(frames: Sequence[Atoms], weights: Mapping[str, int] | None) -> list[Atoms]:
    """``frames`` with each frame of structure ``name`` (``info["pfd_structure"]``) repeated
    ``weights[name]`` times in place; frames of other or unknown structures once. The
    trainings apply it to their training frames after the validation split, so that no copy
    of a training frame is validated on."""
    out = []
    for atoms in frames:
        out += [atoms] * (weights or {}).get(atoms.info.get(STRUCTURE_KEY), 1)
    return out


def split_frames(
    frames: Sequence[Atoms], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Atoms], list[Atoms]]:
    """Random train/validation split (``np.random.default_rng(seed)``); at least one frame each."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(frames)
    if n < 2:
        raise ValueError(f"need at least 2 frames to split, got {n}")
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = [frames[i] for i in range(n) if i not in val_idx]
    val = [frames[i] for i in sorted(val_idx)]
    return train, val


def labeler_of(atoms: Atoms) -> tuple[str | None, dict]:
    """Name and settings of the labeler recorded on a frame."""
    settings = atoms.info.get(LABELER_SETTINGS_KEY)
    return atoms.info.get(LABELER_KEY), json.loads(settings) if settings else {}


# --------------------------------------------------------------------------- deepmd npy
def to_deepmd(
    frames: Sequence[Atoms], out_dir: str | os.PathLike, type_map: Sequence[str]
) -> list[Path]:
    """Write labelled frames as deepmd-kit npy systems, one per atom-type sequence.

    Parameters
    ----------
    frames
        Labelled frames (energy and forces required; stress optional).
    out_dir
        Folder that receives one sub-folder per system (``sys.000_Si8`` ...).
    type_map
        Element of each deepmd type index; every element of ``frames`` must be in it.

    Returns
    -------
    list of Path
        The system folders, in order of first appearance. The deepmd virial is
        ``-stress · volume`` (eV).
    """
    type_map = list(type_map)
    index = {el: i for i, el in enumerate(type_map)}
    groups: dict[tuple, list[Atoms]] = {}
    for atoms in frames:
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(index))
        if unknown:
            raise ValueError(f"element(s) {unknown} not in type map {type_map}")
        if atoms.calc is None or "forces" not in atoms.calc.results:
            raise ValueError("to_deepmd needs labelled frames (energy and forces)")
        periodic = bool(atoms.pbc.all())
        if atoms.pbc.any() and not periodic:
            raise ValueError(f"mixed pbc {atoms.pbc.tolist()} cannot be written for deepmd-kit")
        has_stress = periodic and "stress" in atoms.calc.results
        key = (tuple(atoms.get_chemical_symbols()), periodic, has_stress)
        groups.setdefault(key, []).append(atoms)

    out_dir = Path(out_dir)
    paths = []
    for i, ((symbols, periodic, has_stress), group) in enumerate(groups.items()):
        formula = group[0].get_chemical_formula()
        sys_dir = out_dir / f"sys.{i:03d}_{formula}"
        _write_system(sys_dir, group, [index[s] for s in symbols], type_map, periodic, has_stress)
        paths.append(sys_dir)
    return paths


def _write_system(sys_dir, group, types, type_map, periodic, has_stress) -> None:
    set_dir = sys_dir / "set.000"
    set_dir.mkdir(parents=True, exist_ok=True)
    nf = len(group)
    arrays = {  # file name -> array
        "coord.npy": np.array([a.positions for a in group]).reshape(nf, -1),
        "box.npy": np.array([a.cell.array for a in group]).reshape(nf, 9),
        "energy.npy": np.array([a.calc.results["energy"] for a in group], dtype=float),
        "force.npy": np.array([a.calc.results["forces"] for a in group]).reshape(nf, -1),
    }
    if has_stress:
        stress = np.array([a.calc.results["stress"] for a in group], dtype=float)
        vols = np.array([a.get_volume() for a in group])
        full = np.array([voigt_6_to_full_3x3_stress(s) for s in stress])
        arrays[VIRIAL_FILE] = (-full * vols[:, None, None]).reshape(nf, 9)
        arrays[_STRESS_FILE] = stress
    for name, arr in arrays.items():
        with atomic_path(set_dir / name) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, arr)
    _write_text(sys_dir / "type.raw", "\n".join(str(t) for t in types) + "\n")
    _write_text(sys_dir / "type_map.raw", "\n".join(type_map) + "\n")
    if not periodic:
        _write_text(sys_dir / "nopbc", "")
    infos = [_jsonable_info(a.info) for a in group]
    _write_text(sys_dir / _INFO_FILE, json.dumps(infos))


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _jsonable_info(info: dict) -> dict:
    out = {}
    for k, v in info.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = v
    return out


def from_deepmd(
    system_dir: str | os.PathLike, type_map: Sequence[str] | None = None
) -> list[Atoms]:
    """Read one deepmd-kit npy system (all its ``set.*`` folders) as labelled frames.

    ``type_map`` is required when the system has no ``type_map.raw``.
    """
    sys_dir = Path(system_dir)
    types = np.loadtxt(sys_dir / "type.raw", dtype=int, ndmin=1)
    if type_map is None:
        tm_file = sys_dir / "type_map.raw"
        if not tm_file.exists():
            raise ValueError(f"{sys_dir} has no type_map.raw: pass type_map explicitly")
        type_map = tm_file.read_text().split()
    if types.max(initial=0) >= len(type_map):
        raise ValueError(f"type index {types.max()} out of range for type map {list(type_map)}")
    symbols = [type_map[t] for t in types]
    periodic = not (sys_dir / "nopbc").exists()
    infos = (
        json.loads((sys_dir / _INFO_FILE).read_text()) if (sys_dir / _INFO_FILE).exists() else []
    )
    frames: list[Atoms] = []
    for set_dir in sorted(sys_dir.glob("set.*")):
        coord = np.load(set_dir / "coord.npy")
        nf = len(coord)
        box = np.load(set_dir / "box.npy") if periodic else np.zeros((nf, 9))
        energy = np.load(set_dir / "energy.npy").reshape(nf)
        force = np.load(set_dir / "force.npy").reshape(nf, -1, 3)
        stress = None
        if (set_dir / _STRESS_FILE).exists():
            stress = np.load(set_dir / _STRESS_FILE)
        elif (set_dir / VIRIAL_FILE).exists() and periodic:
            vir = np.load(set_dir / VIRIAL_FILE).reshape(nf, 3, 3)
            vols = np.abs(np.linalg.det(box.reshape(nf, 3, 3)))
            stress = np.array(
                [full_3x3_to_voigt_6_stress(-v / V) for v, V in zip(vir, vols, strict=True)]
            )
        for j in range(nf):
            atoms = Atoms(
                symbols, positions=coord[j].reshape(-1, 3), cell=box[j].reshape(3, 3), pbc=periodic
            )
            k = len(frames)
            if k < len(infos):
                atoms.info.update(infos[k])
            results = {"energy": energy[j], "free_energy": energy[j], "forces": force[j]}
            if stress is not None:
                results["stress"] = stress[j]
            atoms.calc = SinglePointCalculator(atoms, **results)
            frames.append(atoms)
    return frames


def has_virial_labels(system_dir: str | os.PathLike) -> bool:
    """Whether a deepmd-kit system holds virial labels (a :data:`VIRIAL_FILE` in a ``set.*``).

    Parameters
    ----------
    system_dir
        A deepmd-kit npy system folder, e.g. one returned by :func:`to_deepmd`.

    Returns
    -------
    bool
        True when at least one of its ``set.*`` folders has virial labels (:func:`to_deepmd`
        writes them for periodic frames that carry stress).
    """
    return any((set_dir / VIRIAL_FILE).exists() for set_dir in Path(system_dir).glob("set.*"))

"""Datasets: extxyz store, deepmd npy conversion, merges, splits, atomic writes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from pfd_ase import data

from conftest import emt_frames


def _labelled(frames, labeler="emt"):
    for i, atoms in enumerate(frames):
        atoms.info[data.LABELER_KEY] = labeler
        atoms.info[data.LABELER_SETTINGS_KEY] = json.dumps({"asap_cutoff": False})
        atoms.info[data.FRAME_ID_KEY] = f"init-{i:03d}"
    return frames


def _assert_same_labels(a: Atoms, b: Atoms, stress=True):
    assert a.get_chemical_symbols() == b.get_chemical_symbols()
    assert np.array_equal(a.positions, b.positions)
    assert np.array_equal(a.cell.array, b.cell.array)
    assert np.array_equal(a.pbc, b.pbc)
    assert a.calc.results["energy"] == b.calc.results["energy"]
    assert np.array_equal(a.calc.results["forces"], b.calc.results["forces"])
    if stress:
        assert np.array_equal(a.calc.results["stress"], b.calc.results["stress"])


def _cluster():
    atoms = Atoms("Cu3", positions=[[0, 0, 0], [2.4, 0.1, 0], [0.3, 2.3, 0.2]])
    atoms.calc = EMT()
    res = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    atoms.calc = SinglePointCalculator(atoms, **res)
    return atoms


def test_extxyz_round_trip_is_bit_exact(tmp_path):
    frames = _labelled(emt_frames(4, seed=1) + emt_frames(2, seed=2, element="Ag", a=4.1))
    path = data.write_frames(tmp_path / "d.extxyz", frames)
    back = data.read_frames(path)
    assert len(back) == 6
    for a, b in zip(frames, back, strict=True):
        _assert_same_labels(a, b)
        assert b.info[data.FRAME_ID_KEY] == a.info[data.FRAME_ID_KEY]
        assert data.labeler_of(b) == ("emt", {"asap_cutoff": False})


def test_deepmd_round_trip_is_bit_exact(tmp_path):
    frames = _labelled(emt_frames(3, seed=1) + emt_frames(2, seed=2, reps=(1, 1, 1)))
    frames.append(_cluster())
    systems = data.to_deepmd(frames, tmp_path / "npy", type_map=["Ag", "Cu"])
    assert [p.name for p in systems] == ["sys.000_Cu8", "sys.001_Cu4", "sys.002_Cu3"]
    assert (systems[2] / "nopbc").exists() and not (systems[2] / "set.000/virial.npy").exists()
    assert (systems[0] / "type.raw").read_text().split() == ["1"] * 8
    back = [f for s in systems for f in data.from_deepmd(s)]
    for a, b in zip(frames, back, strict=True):
        _assert_same_labels(a, b, stress=a.pbc.all())
        assert b.info.get(data.LABELER_KEY) == a.info.get(data.LABELER_KEY)
    # and back again: npy -> frames -> npy gives identical arrays
    again = data.to_deepmd(back, tmp_path / "npy2", type_map=["Ag", "Cu"])
    for s1, s2 in zip(systems, again, strict=True):
        for f in sorted((s1 / "set.000").glob("*.npy")):
            assert np.array_equal(np.load(f), np.load(s2 / "set.000" / f.name)), f.name


def test_deepmd_virial_convention(tmp_path):
    frames = emt_frames(2, seed=3)
    (system,) = data.to_deepmd(frames, tmp_path, type_map=["Cu"])
    virial = np.load(system / "set.000/virial.npy").reshape(-1, 3, 3)
    for atoms, v in zip(frames, virial, strict=True):
        np.testing.assert_allclose(v, -atoms.get_stress(voigt=False) * atoms.get_volume())
        np.testing.assert_allclose(v, v.T)
    # a foreign system (no pfd sidecar files, no type_map.raw) reads with an explicit type map
    (system / "set.000/pfd_stress.npy").unlink()
    (system / "type_map.raw").unlink()
    (system / "pfd_info.json").unlink()
    with pytest.raises(ValueError, match="type_map"):
        data.from_deepmd(system)
    back = data.from_deepmd(system, type_map=["Cu"])
    for a, b in zip(frames, back, strict=True):
        np.testing.assert_allclose(b.get_stress(), a.get_stress(), rtol=1e-12, atol=1e-15)


def test_has_virial_labels_follows_what_to_deepmd_writes(tmp_path):
    stressed = emt_frames(2, seed=3)
    unstressed = []
    for atoms in emt_frames(2, seed=4):
        res = {k: atoms.calc.results[k] for k in ("energy", "forces")}
        atoms.calc = SinglePointCalculator(atoms, **res)
        unstressed.append(atoms)
    systems = data.to_deepmd(stressed + unstressed + [_cluster()], tmp_path, type_map=["Cu"])
    assert [data.has_virial_labels(s) for s in systems] == [True, False, False]
    assert (systems[0] / "set.000" / data.VIRIAL_FILE).exists()
    assert not data.has_virial_labels(tmp_path / "no-such-system")


def test_deepmd_rejects_unknown_elements_and_unlabelled_frames(tmp_path):
    with pytest.raises(ValueError, match=r"\['Cu'\] not in type map \['Si'\]"):
        data.to_deepmd(emt_frames(1, seed=0), tmp_path, type_map=["Si"])
    with pytest.raises(ValueError, match="labelled"):
        data.to_deepmd([Atoms("Cu", cell=[3, 3, 3], pbc=True)], tmp_path, type_map=["Cu"])


def test_merge_drops_duplicates_and_split_is_seeded(tmp_path):
    frames = emt_frames(10, seed=4)
    merged = data.merge_frames(frames[:6], frames[3:], [frames[0].copy()])
    assert len(merged) == 10
    assert [data.frame_fingerprint(a) for a in merged] == [
        data.frame_fingerprint(a) for a in frames
    ]
    moved = frames[0].copy()
    moved.positions[0, 0] += 1e-12  # a different structure, however close
    assert len(data.merge_frames(frames, [moved])) == 11

    train, val = data.split_frames(frames, val_fraction=0.3, seed=7)
    assert len(train) == 7 and len(val) == 3
    ids = {data.frame_fingerprint(a) for a in train} | {data.frame_fingerprint(a) for a in val}
    assert len(ids) == 10
    train2, val2 = data.split_frames(frames, val_fraction=0.3, seed=7)
    assert [id(a) for a in val2] == [id(a) for a in val]
    _, val3 = data.split_frames(frames, val_fraction=0.3, seed=8)
    assert [id(a) for a in val3] != [id(a) for a in val]
    with pytest.raises(ValueError):
        data.split_frames(frames[:1])

    path = tmp_path / "d.extxyz"
    assert len(data.append_frames(path, frames[:4])) == 4
    assert len(data.append_frames(path, frames[2:6])) == 6
    assert len(data.read_frames(path)) == 6


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "d.extxyz"
    data.write_frames(path, emt_frames(2, seed=5))
    before = path.read_bytes()

    def broken():
        yield from emt_frames(2, seed=6)
        raise RuntimeError("crash in the middle of a write")

    with pytest.raises(RuntimeError):
        data.write_frames(path, broken())
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


WRITER = """
import sys
from conftest import emt_frames
from pfd_ase import data
frames = emt_frames(20, seed=0, reps=(3, 3, 3))
print("ready", flush=True)
while True:
    data.write_frames(sys.argv[1], frames * 50)
"""


def test_sigkill_during_write_leaves_old_file_intact(tmp_path):
    path = tmp_path / "d.extxyz"
    data.write_frames(path, emt_frames(3, seed=9))
    before = path.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        cwd=str(__import__("pathlib").Path(__file__).parent),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.time() + 30
    while time.time() < deadline and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
        time.sleep(0.01)
    time.sleep(0.2)  # well inside the write of 1000 frames
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path.read_bytes() == before
    assert len(data.read_frames(path)) == 3


def test_atomic_writes_get_the_mode_of_a_normal_file(tmp_path):
    import os

    from pfd_ase._io import write_json

    write_json(tmp_path / "a.json", {"x": 1})
    plain = tmp_path / "b.json"
    plain.write_text("{}")
    assert os.stat(tmp_path / "a.json").st_mode == os.stat(plain).st_mode

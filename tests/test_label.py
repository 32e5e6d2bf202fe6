"""label_frames: task directories, executors, failures, reruns without repeated work."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import ase
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from pfd_ase.label import LabelResult, ReplacedWorkdirWarning, label_frames
from pfd_ase.tasks import calculator_spec

# fresh interpreters: forking a test process that may hold torch/OpenMP threads can hang
SPAWN = multiprocessing.get_context("spawn")


class LoggingEMT(EMT):
    """EMT that appends the frame id to a file on every calculation (any process).

    Frames with ``info["fail"]`` raise; with ``info["fail_once"]`` only on the first try.
    """

    interrupt_on: str | None = None  # frame id that raises KeyboardInterrupt (serial tests)

    def __init__(self, log: str | Path, **kwargs):
        super().__init__(**kwargs)
        self.log = str(log)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        frame_id = str(atoms.info.get("pfd_frame_id"))
        tries = _calls(self.log).count(frame_id)
        with open(self.log, "a") as fh:
            fh.write(frame_id + "\n")
        if frame_id == LoggingEMT.interrupt_on:
            raise KeyboardInterrupt
        if atoms.info.get("fail") or (atoms.info.get("fail_once") and tries == 0):
            raise RuntimeError(f"planned failure on frame {frame_id}")
        super().calculate(atoms, properties, system_changes)


def _calls(log: str | Path) -> list[str]:
    path = Path(log)
    return path.read_text().split() if path.exists() else []


def cu_frames(n: int, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.set_cell(atoms.cell[:] * (1 + rng.normal(0, 0.01)), scale_atoms=True)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        atoms.info["pfd_frame_id"] = f"cu-{i:02d}"
        frames.append(atoms)
    return frames


def _reference(frame: Atoms) -> tuple[float, np.ndarray, np.ndarray | None]:
    atoms = frame.copy()
    atoms.calc = EMT()
    stress = atoms.get_stress() if atoms.pbc.all() else None
    return atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False), stress


# --------------------------------------------------------------------------- serial


def test_serial_labels_equal_direct_calculation(tmp_path):
    frames = cu_frames(3)
    frames[1].set_constraint(FixAtoms([0]))  # labels are raw forces, not constrained ones
    frames[2].info.pop("pfd_frame_id")  # falls back to the index
    frames.append(molecule("CO"))  # non-periodic: no stress
    frames[3].center(vacuum=4.0)

    result = label_frames(frames, "emt", tmp_path / "label")
    assert isinstance(result, LabelResult)
    assert result.failures == [] and result.n_cached == 0
    assert [f.info["pfd_frame_id"] for f in result.frames] == ["cu-00", "cu-01", "2", "3"]
    for frame, labelled in zip(frames, result.frames, strict=True):
        energy, forces, stress = _reference(frame)
        assert labelled is not frame and frame.calc is None
        assert labelled.get_chemical_symbols() == frame.get_chemical_symbols()
        assert labelled.get_potential_energy() == pytest.approx(energy, abs=1e-12)
        assert labelled.calc.results["free_energy"] == labelled.calc.results["energy"]
        np.testing.assert_allclose(labelled.calc.results["forces"], forces, atol=1e-8)
        if stress is None:
            assert "stress" not in labelled.calc.results
        else:
            np.testing.assert_allclose(labelled.get_stress(), stress, atol=1e-12)
        assert labelled.info["pfd_labeler"] == "emt"
        settings = json.loads(labelled.info["pfd_labeler_settings"])
        assert settings == {"asap_cutoff": False, "version": f"ase {ase.__version__}"}
        assert "pfd_energy_sigma0" not in labelled.info  # EMT: energy == free energy
    assert np.abs(result.frames[1].calc.results["forces"][0]).max() > 0.01

    for i in range(4):
        task = tmp_path / "label" / f"task.{i:06d}"
        assert (task / "labelled.extxyz").exists() and not (task / "failure.json").exists()
        assert json.loads((task / "task.json").read_text())["labeler"]["name"] == "emt"


def test_only_requested_properties(tmp_path):
    result = label_frames(cu_frames(1), "emt", tmp_path, properties=("energy",))
    assert set(result.frames[0].calc.results) == {"energy", "free_energy"}
    with pytest.raises(ValueError, match="unknown properties"):
        label_frames(cu_frames(1), "emt", tmp_path / "x", properties=("energy", "dipole"))


# --------------------------------------------------------------------------- processes


def test_process_pool_equals_serial(tmp_path):
    frames = cu_frames(4, seed=1)
    labeler = ("emt", {"asap_cutoff": False})  # a (name, overrides) spec travels by name
    serial = label_frames(frames, labeler, tmp_path / "serial")
    with ProcessPoolExecutor(2, mp_context=SPAWN) as pool:
        parallel = label_frames(frames, labeler, tmp_path / "parallel", executor=pool)
    assert parallel.failures == [] and len(parallel.frames) == 4
    for a, b in zip(serial.frames, parallel.frames, strict=True):
        assert a.get_potential_energy() == b.get_potential_energy()
        np.testing.assert_array_equal(a.get_forces(), b.get_forces())
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.info == b.info


def test_a_model_labels_as_a_pfd_spec(tmp_path, tiny_models):
    """The teacher of distillation labels like any labeler: ("pfd", {"model": path}) gives
    the in-process calculator's labels and provenance, and the spec a worker process receives
    (pickled) builds the same model there (the pool path itself: the EMT pool test)."""
    from pfd_ase.calculators import PFDCalculator
    from pfd_ase.calculators.labelers import labeler_info

    model = str(tiny_models[1]["pth"])
    frames = cu_frames(3, seed=2)
    spec = ("pfd", {"model": model})
    result = label_frames(frames, spec, tmp_path / "l")
    assert result.failures == [] and len(result.frames) == 3
    calc = PFDCalculator(model)
    for frame, labelled in zip(frames, result.frames, strict=True):
        atoms = frame.copy()
        atoms.calc = calc
        np.testing.assert_allclose(labelled.get_forces(), atoms.get_forces(), atol=1e-12)
        assert labelled.get_potential_energy() == pytest.approx(atoms.get_potential_energy())
        assert labelled.info["pfd_labeler"] == "pfd"
        settings = labelled.info["pfd_labeler_settings"]
        settings = json.loads(settings) if isinstance(settings, str) else settings
        assert settings["identity"] == labeler_info(calc)["settings"]["identity"]
    sent = pickle.loads(pickle.dumps(calculator_spec(spec, kinds=("pfd",), what="labeler")))
    atoms = frames[0].copy()
    atoms.calc = sent.build()
    np.testing.assert_allclose(result.frames[0].get_forces(), atoms.get_forces(), atol=1e-12)


def test_process_pool_with_a_calculator_object_and_failures(tmp_path):
    log = tmp_path / "calls.log"
    frames = cu_frames(5)
    frames[1].info["fail"] = True
    frames[3].info["fail"] = True
    with ProcessPoolExecutor(2, mp_context=SPAWN) as pool:
        result = label_frames(frames, LoggingEMT(log), tmp_path / "label", executor=pool)
    assert [f.info["pfd_frame_id"] for f in result.frames] == ["cu-00", "cu-02", "cu-04"]
    assert [f["frame_id"] for f in result.failures] == ["cu-01", "cu-03"]
    assert result.frames[0].info["pfd_labeler"] == "loggingemt"
    failure = result.failures[0]
    assert failure["index"] == 1 and failure["exception"] == "RuntimeError"
    assert failure["message"] == "planned failure on frame cu-01"
    assert "in calculate" in failure["traceback"] and failure["attempts"] == 1
    on_disk = json.loads((tmp_path / "label" / "task.000001" / "failure.json").read_text())
    assert on_disk == failure
    assert sorted(_calls(log)) == sorted(f"cu-{i:02d}" for i in range(5))


def test_a_lost_worker_is_recorded_as_a_failure(tmp_path):
    from conftest import LosingExecutor

    loses_frame_one = LosingExecutor(lambda task: task.index == 1)
    result = label_frames(cu_frames(3), "emt", tmp_path, executor=loses_frame_one)
    assert [f.info["pfd_frame_id"] for f in result.frames] == ["cu-00", "cu-02"]
    (failure,) = result.failures
    assert failure["frame_id"] == "cu-01" and failure["exception"] == "BrokenPipeError"
    on_disk = json.loads((tmp_path / "task.000001" / "failure.json").read_text())
    assert on_disk == failure


# --------------------------------------------------------------------------- failures, reruns


def test_failures_are_recorded_and_the_rest_returned(tmp_path):
    log = tmp_path / "calls.log"
    frames = cu_frames(4)
    frames[2].info["fail"] = True
    result = label_frames(frames, LoggingEMT(log), tmp_path / "label", retries=2)
    assert len(result.frames) + len(result.failures) == 4  # nothing dropped silently
    (failure,) = result.failures
    assert failure["frame_id"] == "cu-02" and failure["attempts"] == 3
    assert _calls(log).count("cu-02") == 3
    assert failure["task_dir"].endswith("task.000002")


def test_retry_recovers_a_transient_failure(tmp_path):
    log = tmp_path / "calls.log"
    frames = cu_frames(2)
    frames[0].info["fail_once"] = True
    result = label_frames(frames, LoggingEMT(log), tmp_path / "label", retries=1)
    assert result.failures == [] and len(result.frames) == 2
    assert not (tmp_path / "label" / "task.000000" / "failure.json").exists()


def test_rerun_repeats_no_finished_calculation(tmp_path):
    log = tmp_path / "calls.log"
    frames = cu_frames(4)
    frames[3].info["fail"] = True
    first = label_frames(frames, LoggingEMT(log), tmp_path / "label")
    calls = _calls(log)
    assert len(first.frames) == 3 and len(first.failures) == 1

    second = label_frames(frames, LoggingEMT(log), tmp_path / "label")
    new_calls = _calls(log)[len(calls) :]
    assert new_calls == ["cu-03"]  # only the failed frame is tried again
    assert second.n_cached == 3 and len(second.failures) == 1
    for a, b in zip(first.frames, second.frames, strict=True):
        assert a.get_potential_energy() == b.get_potential_energy()
        np.testing.assert_array_equal(a.get_forces(), b.get_forces())
        np.testing.assert_array_equal(a.get_stress(), b.get_stress())
        assert a.info == b.info

    del frames[3].info["fail"]  # the problem is fixed: the failed frame now succeeds
    third = label_frames(frames, LoggingEMT(log), tmp_path / "label")
    assert third.n_cached == 3 and third.failures == [] and len(third.frames) == 4
    assert not (tmp_path / "label" / "task.000003" / "failure.json").exists()


def test_interrupted_run_keeps_finished_results(tmp_path):
    log = tmp_path / "calls.log"
    frames = cu_frames(4)
    LoggingEMT.interrupt_on = "cu-02"
    try:
        with pytest.raises(KeyboardInterrupt):
            label_frames(frames, LoggingEMT(log), tmp_path / "label")
    finally:
        LoggingEMT.interrupt_on = None
    assert _calls(log)[-1] == "cu-02"
    calls = len(_calls(log))
    result = label_frames(frames, LoggingEMT(log), tmp_path / "label")
    assert result.n_cached == 2 and len(result.frames) == 4
    assert sorted(set(_calls(log)[calls:])) == ["cu-02", "cu-03"]


def test_replace_mismatched_moves_the_old_workdir_aside_whole(tmp_path):
    """Another set of frames in the workdir: with replace_mismatched the old directory is
    kept as label.replaced (then .replaced.1) and every frame is labelled afresh."""
    frames = cu_frames(2)
    first = label_frames(frames, "emt", tmp_path / "label")
    moved = [atoms.copy() for atoms in frames]
    moved[1].positions[0] += 0.1
    with pytest.warns(ReplacedWorkdirWarning, match="label.replaced, every frame"):
        result = label_frames(moved, "emt", tmp_path / "label", replace_mismatched=True)
    assert result.n_cached == 0 and len(result.frames) == 2
    kept = tmp_path / "label.replaced"
    assert sorted(p.name for p in kept.glob("task.*")) == ["task.000000", "task.000001"]
    # the new labels are those of the new frames, not the kept ones
    assert not np.allclose(result.frames[1].get_forces(), first.frames[1].get_forces())
    expected = moved[1].copy()
    expected.calc = EMT()
    np.testing.assert_allclose(result.frames[1].get_forces(), expected.get_forces(), atol=1e-8)
    # a matching workdir is reused, not moved
    assert label_frames(moved, "emt", tmp_path / "label", replace_mismatched=True).n_cached == 2
    with pytest.warns(ReplacedWorkdirWarning):
        label_frames(frames, "emt", tmp_path / "label", replace_mismatched=True)
    assert (tmp_path / "label.replaced.1").is_dir()
    # a workdir that holds more than labelling (here a run's summary) is never moved
    (tmp_path / "label" / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="use a fresh workdir"):
        label_frames(moved, "emt", tmp_path / "label", replace_mismatched=True)
    assert not (tmp_path / "label.replaced.2").exists()


def test_calculator_object_keeps_its_directory(tmp_path):
    calc = EMT()
    label_frames(cu_frames(2), calc, tmp_path / "label")
    assert calc.directory == "."


def test_workdir_with_other_frames_or_labeler_is_refused(tmp_path):
    frames = cu_frames(2)
    label_frames(frames, "emt", tmp_path / "label")
    moved = [atoms.copy() for atoms in frames]
    moved[1].positions[0] += 0.1
    with pytest.raises(ValueError, match="task.000001; use a fresh workdir"):
        label_frames(moved, "emt", tmp_path / "label")
    with pytest.raises(ValueError, match="another labeler"):
        label_frames(frames, ("emt", {"asap_cutoff": True}), tmp_path / "label")
    # frames read back from the finished files (8 decimals) still match
    again = label_frames(label_frames(frames, "emt", tmp_path / "label").frames, "emt",
                         tmp_path / "label")  # fmt: skip
    assert again.n_cached == 2


def test_unknown_labeler_name(tmp_path):
    with pytest.raises(ValueError, match="unknown labeler 'dft'.*vasp, gpaw, gpaw-lcao, xtb, emt"):
        label_frames(cu_frames(1), "dft", tmp_path / "label")
    with pytest.raises(TypeError, match="labeler must be"):
        label_frames(cu_frames(1), 42, tmp_path / "label")
    assert not (tmp_path / "label").exists()


def test_extxyz_round_trip_of_metadata(tmp_path):
    """The stored frame keeps id and settings even where extxyz would retype them."""
    import ase.io

    frames = cu_frames(1)
    frames[0].info["pfd_frame_id"] = "007"
    (labelled,) = label_frames(frames, "emt", tmp_path / "label").frames
    assert labelled.info["pfd_frame_id"] == "007"
    stored = ase.io.read(tmp_path / "label" / "task.000000" / "labelled.extxyz")
    assert json.loads(stored.info["pfd_labeler_settings"]) == json.loads(
        labelled.info["pfd_labeler_settings"]
    )


def test_stateless_labeler_is_built_once_per_run(tmp_path, monkeypatch):
    import pfd_ase.tasks as tasks
    from pfd_ase.calculators.labelers import make_labeler

    built = []

    def counting(name, directory=None, **overrides):
        built.append(name)
        return make_labeler(name, directory=directory, **overrides)

    monkeypatch.setattr(tasks, "make_labeler", counting)
    label_frames(cu_frames(3), "emt", tmp_path / "a")
    label_frames(cu_frames(3, seed=1), "emt", tmp_path / "b")
    assert built == ["emt", "emt"]  # once per run, not once per frame


# --------------------------------------------------------------------------- existing records


def test_unreadable_result_is_moved_aside_and_the_frame_labelled_again(tmp_path):
    from pfd_ase.tasks import StaleRecordWarning

    log = tmp_path / "calls.log"
    frames = cu_frames(3)
    first = label_frames(frames, LoggingEMT(log), tmp_path / "label")
    corrupt = tmp_path / "label" / "task.000001" / "labelled.extxyz"
    corrupt.write_text("3\nthis is not extxyz\n")
    legacy = tmp_path / "label" / "task.000002" / "task.json"  # a record without a key
    record = json.loads(legacy.read_text())
    del record["key"]
    legacy.write_text(json.dumps(record))
    calls = len(_calls(log))

    with pytest.warns(StaleRecordWarning) as caught:
        again = label_frames(frames, LoggingEMT(log), tmp_path / "label")
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and "task.000001/labelled.extxyz cannot be used" in messages[0]
    assert "task.000002/labelled.extxyz cannot be used (KeyError: 'key')" in messages[1]
    assert sorted(_calls(log)[calls:]) == ["cu-01", "cu-02"]  # only those two again
    assert again.n_cached == 1 and again.failures == [] and len(again.frames) == 3
    for a, b in zip(first.frames, again.frames, strict=True):
        assert a.get_potential_energy() == b.get_potential_energy()
        assert a.info == b.info
    # nothing is lost: the unreadable files are kept next to the new results
    assert (corrupt.parent / "labelled.extxyz.stale").read_text() == "3\nthis is not extxyz\n"
    assert (tmp_path / "label" / "task.000002" / "labelled.extxyz.stale").exists()
    assert "key" in json.loads(legacy.read_text())
    with warnings.catch_warnings():  # the next rerun reuses everything, silently
        warnings.simplefilter("error")
        assert label_frames(frames, LoggingEMT(log), tmp_path / "label").n_cached == 3


def test_other_frames_are_refused_before_any_file_is_touched(tmp_path):
    log = tmp_path / "calls.log"
    frames = cu_frames(3)
    label_frames(frames, LoggingEMT(log), tmp_path / "label")
    (tmp_path / "label" / "task.000000" / "labelled.extxyz").write_text("garbage")
    before = {p: p.read_bytes() for p in (tmp_path / "label").rglob("*") if p.is_file()}
    calls = len(_calls(log))
    other = cu_frames(3, seed=5)
    with pytest.raises(ValueError, match="task.000001, task.000002; use a fresh workdir"):
        label_frames(other, LoggingEMT(log), tmp_path / "label")
    assert len(_calls(log)) == calls  # no calculation
    after = {p: p.read_bytes() for p in (tmp_path / "label").rglob("*") if p.is_file()}
    assert after == before  # not even the unreadable result was moved


def test_key_stable_across_spellings_of_the_labeler(tmp_path):
    frames = cu_frames(2)
    label_frames(frames, "emt", tmp_path / "label")
    assert label_frames(frames, (" EMT", {"directory": "x"}), tmp_path / "label").n_cached == 2
    record = json.loads((tmp_path / "label" / "task.000000" / "task.json").read_text())
    assert record["labeler"] == {"name": "emt", "options": {}} and len(record["key"]) == 64


class ChainedFailure(EMT):
    """EMT whose calculation fails with a chained exception."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        try:
            raise OSError("scratch disk full")
        except OSError as exc:
            raise RuntimeError("SCF did not start") from exc


def test_failure_record_has_attempts_and_cause(tmp_path):
    (failure,) = label_frames(cu_frames(1), ChainedFailure(), tmp_path, retries=1).failures
    assert failure["attempts"] == 2 and failure["cause"] == "OSError: scratch disk full"
    assert set(failure) == {
        "index",
        "frame_id",
        "task_dir",
        "exception",
        "message",
        "traceback",
        "attempts",
        "cause",
        "kind",
    }
    assert failure["kind"] == "error"
    assert json.loads((tmp_path / "task.000000" / "failure.json").read_text()) == failure

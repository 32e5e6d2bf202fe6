"""ASE MD exploration: frame counts, seeds, NPT physics, blow-ups, executors, resume, validation."""

from __future__ import annotations

import functools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT

from pfd_ase._io import read_json
from pfd_ase.data import read_frames
from pfd_ase.explore import ExploreResult, ExploreTask, explore, walker_dir

# fresh interpreters: forking a test process that may hold torch/OpenMP threads can hang
SPAWN = multiprocessing.get_context("spawn")


def cu(reps=(1, 1, 1)) -> Atoms:
    return bulk("Cu", "fcc", a=3.6, cubic=True).repeat(reps)


def positions(result: ExploreResult) -> list[np.ndarray]:
    return [f.positions for f in result.frames]


class CountingEMT(EMT):
    """EMT that counts its calculations."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        self.calls += 1
        super().calculate(atoms, properties, system_changes)


class BrokenForEight(EMT):
    """EMT that raises on 8-atom cells (a model crash unrelated to the MD)."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        if len(atoms) == 8:
            raise RuntimeError("planned model failure")
        super().calculate(atoms, properties, system_changes)


class FakeCommittee(EMT):
    """EMT that stores committee deviations on the caller's atoms, as PFDCalculator does."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        devi = np.linalg.norm(self.results["forces"], axis=1) * 0.1
        atoms.arrays["pfd_force_devi"] = devi
        atoms.info["pfd_max_force_devi"] = float(devi.max())
        atoms.info["pfd_energy_devi"] = 0.01


def emt_factory(**kwargs) -> EMT:
    return EMT(**kwargs)


# --------------------------------------------------------------------------- sampling


def test_nvt_langevin_samples_steps_over_sample_every_frames(tmp_path):
    result = explore(
        cu(), "emt", tmp_path, temperatures_K=300, steps=20, sample_every=5, progress=False
    )
    assert len(result.frames) == 4 == ExploreTask(300, steps=20, sample_every=5).frames_per_walker
    (record,) = result.walkers
    assert record["status"] == "finished" and record["steps_done"] == 20
    assert record["n_frames"] == 4 and record["ensemble"] == "nvt-langevin"
    assert record["wall_time_s"] > 0 and not record["cached"]
    assert result.filter_counts == {"non_finite": 0, "cell": 0, "too_close": 0, "max_force": 0}
    info = result.frames[-1].info
    assert info["pfd_walker"] == 0 and info["pfd_step"] == 20 and info["pfd_time_fs"] == 40.0
    assert info["pfd_temperature_K"] == 300.0 and "pfd_pressure_GPa" not in info
    assert [f.info["pfd_step"] for f in result.frames] == [5, 10, 15, 20]
    assert result.frames[0].calc is None  # explored frames are unlabelled structures
    # the model's cheap results come along
    check = result.frames[1].copy()
    check.calc = EMT()
    assert info["pfd_model_energy"] != 0.0
    assert np.allclose(result.frames[1].arrays["pfd_model_forces"], check.get_forces())
    # the trajectory was written as it ran, with full precision
    directory = walker_dir(tmp_path, 0)
    stored = read_frames(directory / "traj.extxyz")
    assert all(
        np.array_equal(a.positions, b.positions) for a, b in zip(stored, result.frames, strict=True)
    )
    assert read_json(directory / "done.json")["status"] == "finished"
    assert (directory / "md.log").read_text().count("\n") == 1 + 5  # header + steps 0, 5, ...

    initial = explore(
        cu(),
        "emt",
        tmp_path / "init",
        temperatures_K=300,
        steps=20,
        sample_every=5,
        include_initial=True,
        progress=False,
    )
    assert [f.info["pfd_step"] for f in initial.frames] == [0, 5, 10, 15, 20]
    assert np.array_equal(initial.frames[0].positions, cu().positions)


def test_grid_order_and_other_thermostats(tmp_path):
    structures = [cu(), bulk("Cu", "fcc", a=3.65, cubic=True)]
    result = explore(
        structures,
        "emt",
        tmp_path,
        temperatures_K=[300, 600],
        pressures_GPa=[None, 1.0],
        thermostat="bussi",
        steps=10,
        sample_every=5,
        progress=False,
    )
    grid = [(w["structure_index"], w["temperature_K"], w["pressure_GPa"]) for w in result.walkers]
    assert grid == [(s, t, p) for s in (0, 1) for t in (300.0, 600.0) for p in (None, 1.0)]
    assert [w["ensemble"] for w in result.walkers[:2]] == ["nvt-bussi", "npt-mtk"]
    assert [f.info["pfd_walker"] for f in result.frames] == [i for i in range(8) for _ in (0, 1)]
    assert result.frames[3].info["pfd_pressure_GPa"] == 1.0
    nhc = explore(
        cu(),
        "emt",
        tmp_path / "nhc",
        temperatures_K=500,
        thermostat="NHC",
        steps=10,
        sample_every=5,
        progress=False,
    )
    assert nhc.walkers[0]["ensemble"] == "nvt-nose-hoover" and len(nhc.frames) == 2


def test_stillinger_weber_silicon_and_model_specs(tmp_path):
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    result = explore(
        si, ("sw", {}), tmp_path, temperatures_K=500, steps=10, sample_every=5, progress=False
    )
    assert len(result.frames) == 2 and result.walkers[0]["status"] == "finished"
    factory = functools.partial(emt_factory)
    result = explore(
        cu(), factory, tmp_path / "f", temperatures_K=300, steps=5, sample_every=5, progress=False
    )
    assert len(result.frames) == 1


def test_progress_bars_can_be_shown(tmp_path, capsys):
    explore(cu(), "emt", tmp_path, temperatures_K=300, steps=5, sample_every=5)
    assert "explore" in capsys.readouterr().err
    explore(
        cu(), "emt", tmp_path / "quiet", temperatures_K=300, steps=5, sample_every=5, progress=False
    )
    assert capsys.readouterr().err == ""


def test_committee_deviation_is_copied_to_frames(tmp_path):
    result = explore(
        cu(),
        FakeCommittee(),
        tmp_path,
        temperatures_K=300,
        steps=10,
        sample_every=5,
        progress=False,
    )
    frame = result.frames[0]
    assert frame.info["pfd_energy_devi"] == 0.01
    assert frame.info["pfd_max_force_devi"] == pytest.approx(frame.arrays["pfd_force_devi"].max())
    assert np.allclose(
        frame.arrays["pfd_force_devi"],
        0.1 * np.linalg.norm(frame.arrays["pfd_model_forces"], axis=1),
    )


# --------------------------------------------------------------------------- seeds


def test_seeded_runs_are_reproducible_and_seeds_differ(tmp_path):
    settings = dict(temperatures_K=[300, 300], steps=10, sample_every=5, progress=False)
    a = explore(cu(), "emt", tmp_path / "a", seed=7, **settings)
    b = explore(cu(), "emt", tmp_path / "b", seed=7, **settings)
    c = explore(cu(), "emt", tmp_path / "c", seed=8, **settings)
    assert all(np.array_equal(x, y) for x, y in zip(positions(a), positions(b), strict=True))
    assert not np.allclose(positions(a)[0], positions(c)[0])
    # two walkers of the same condition get different streams
    assert not np.allclose(positions(a)[0], positions(a)[2])
    # the global NumPy seed plays no part
    np.random.seed(0)  # noqa: NPY002 (the legacy global seed must not matter)
    d = explore(cu(), "emt", tmp_path / "d", seed=7, **settings)
    assert all(np.array_equal(x, y) for x, y in zip(positions(a), positions(d), strict=True))


# --------------------------------------------------------------------------- physics


@pytest.mark.parametrize("barostat", ["mtk", "berendsen"])
def test_high_pressure_shrinks_the_volume(tmp_path, barostat):
    result = explore(
        cu(),
        "emt",
        tmp_path,
        temperatures_K=300,
        pressures_GPa=[0.0, 30.0],
        barostat=barostat,
        steps=60,
        timestep_fs=2.0,
        sample_every=10,
        pdamp_fs=100.0,
        progress=False,
    )
    assert [w["status"] for w in result.walkers] == ["finished", "finished"]
    volumes = {0: [], 1: []}
    for frame in result.frames:
        volumes[frame.info["pfd_walker"]].append(frame.get_volume())
    v0 = cu().get_volume()
    low, high = np.mean(volumes[0]), np.mean(volumes[1])
    # EMT Cu has a bulk modulus of ~135 GPa: 30 GPa squeezes the cell by >10 %
    assert high < 0.92 * low
    assert abs(low / v0 - 1) < 0.05
    assert result.walkers[1]["ensemble"] == f"npt-{barostat}"


# --------------------------------------------------------------------------- blow-ups


def test_absurd_timestep_explodes_cleanly(tmp_path):
    result = explore(
        cu(),
        "emt",
        tmp_path,
        temperatures_K=300,
        timestep_fs=100.0,
        steps=50,
        sample_every=1,
        progress=False,
    )
    (record,) = result.walkers
    assert record["status"] == "exploded"
    assert 0 < record["exploded_step"] == record["steps_done"] < 50
    assert record["reason"].split(":")[0] in ("too_close", "non_finite", "cell")
    assert len(result.frames) == record["n_frames"] == record["exploded_step"] - 1
    assert result.rejected == [
        {"walker": 0, "step": record["exploded_step"], "reason": record["reason"]}
    ]
    assert sum(result.filter_counts.values()) == 1
    assert result.exploded == [record]
    blown = read_frames(walker_dir(tmp_path, 0) / "rejected.extxyz")
    assert blown[0].info["pfd_reject_reason"] == record["reason"]


def test_one_walker_explodes_while_the_others_finish(tmp_path):
    result = explore(
        cu(),
        "emt",
        tmp_path,
        temperatures_K=[300, 1e7, 300],
        steps=20,
        sample_every=5,
        progress=False,
    )
    assert [w["status"] for w in result.walkers] == ["finished", "exploded", "finished"]
    assert [w["n_frames"] for w in result.walkers][::2] == [4, 4]
    assert result.filter_counts["too_close"] + result.filter_counts["non_finite"] == 1
    # the rerun keeps the explosion (deterministic) instead of repeating it
    again = explore(
        cu(),
        "emt",
        tmp_path,
        temperatures_K=[300, 1e7, 300],
        steps=20,
        sample_every=5,
        progress=False,
    )
    assert again.n_cached == 3 and again.walkers[1]["status"] == "exploded"
    assert again.rejected == result.rejected


def test_a_failing_model_is_recorded_and_others_finish(tmp_path):
    result = explore(
        [cu(), cu((2, 1, 1))],
        BrokenForEight(),
        tmp_path,
        temperatures_K=300,
        steps=10,
        sample_every=5,
        progress=False,
    )
    ok, failed = result.walkers
    assert ok["status"] == "finished" and len(result.frames) == 2
    assert failed["status"] == "failed" and failed["exception"] == "RuntimeError"
    assert "planned model failure" in failed["message"]
    assert result.failed == [failed]
    assert read_json(walker_dir(tmp_path, 1) / "failure.json")["exception"] == "RuntimeError"
    assert not (walker_dir(tmp_path, 1) / "done.json").exists()


def test_max_force_filter_rejects_frames_but_the_walker_goes_on(tmp_path):
    result = explore(
        cu(),
        "emt",
        tmp_path,
        temperatures_K=300,
        steps=20,
        sample_every=5,
        frame_filter={"max_force_eV_A": 1e-6},
        progress=False,
    )
    assert result.walkers[0]["status"] == "finished" and result.walkers[0]["steps_done"] == 20
    assert result.frames == [] and result.filter_counts["max_force"] == 4
    assert [r["step"] for r in result.rejected] == [5, 10, 15, 20]


# --------------------------------------------------------------------------- executors, resume


def test_process_pool_gives_the_same_frames_as_serial(tmp_path):
    settings = dict(temperatures_K=[300, 900], steps=10, sample_every=5, seed=3, progress=False)
    serial = explore(cu(), "emt", tmp_path / "serial", **settings)
    with ProcessPoolExecutor(2, mp_context=SPAWN) as pool:
        parallel = explore(cu(), "emt", tmp_path / "pool", executor=pool, **settings)
    assert len(parallel.frames) == 4
    assert all(
        np.array_equal(x, y) for x, y in zip(positions(serial), positions(parallel), strict=True)
    )
    assert [f.info["pfd_walker"] for f in parallel.frames] == [0, 0, 1, 1]


def test_a_lost_worker_is_recorded_and_the_other_walkers_kept(tmp_path):
    from conftest import LosingExecutor

    loses_walker_one = LosingExecutor(lambda walker: walker.index == 1)
    settings = dict(temperatures_K=[300, 600, 900], steps=10, sample_every=5, progress=False)
    result = explore(cu(), "emt", tmp_path, executor=loses_walker_one, **settings)
    assert [w["status"] for w in result.walkers] == ["finished", "failed", "finished"]
    assert [f.info["pfd_walker"] for f in result.frames] == [0, 0, 2, 2]
    lost = result.failed[0]
    assert lost["exception"] == "BrokenPipeError" and lost["temperature_K"] == 600
    assert read_json(walker_dir(tmp_path, 1) / "failure.json")["message"] == "worker lost"
    # a rerun runs the lost walker again and keeps the two finished ones
    again = explore(cu(), "emt", tmp_path, **settings)
    assert again.n_cached == 2 and [w["status"] for w in again.walkers] == ["finished"] * 3


def test_rerun_skips_finished_walkers(tmp_path):
    calc = CountingEMT()
    settings = dict(temperatures_K=[300, 600], steps=10, sample_every=5, progress=False)
    first = explore(cu(), calc, tmp_path, **settings)
    calls = calc.calls
    assert calls > 0 and first.n_cached == 0
    done = [walker_dir(tmp_path, i) / "done.json" for i in (0, 1)]
    mtimes = [p.stat().st_mtime_ns for p in done]

    again = explore(cu(), calc, tmp_path, **settings)
    assert calc.calls == calls and again.n_cached == 2
    assert [p.stat().st_mtime_ns for p in done] == mtimes
    assert all(w["cached"] for w in again.walkers)
    assert all(
        np.array_equal(x, y) for x, y in zip(positions(first), positions(again), strict=True)
    )

    # a walker that never completed (crash: no record) runs again, alone
    done[1].unlink()
    third = explore(cu(), calc, tmp_path, **settings)
    assert third.n_cached == 1 and calc.calls > calls
    assert [w["cached"] for w in third.walkers] == [True, False]
    assert all(
        np.array_equal(x, y) for x, y in zip(positions(first), positions(third), strict=True)
    )

    with pytest.raises(ValueError, match="other settings"):
        explore(cu(), calc, tmp_path, seed=1, **settings)


def test_unreadable_or_incomplete_done_records_are_moved_aside_and_run_again(tmp_path):
    import json

    from pfd_ase.tasks import StaleRecordWarning

    settings = dict(temperatures_K=[300, 600, 900], steps=10, sample_every=5, progress=False)
    first = explore(cu(), "emt", tmp_path, **settings)
    done = [walker_dir(tmp_path, i) / "done.json" for i in range(3)]
    done[0].write_text('{"key": "trunc')  # corrupt
    record = read_json(done[2])
    record["status"] = "running"  # incomplete: not a final status
    done[2].write_text(json.dumps(record))

    with pytest.warns(StaleRecordWarning) as caught:
        again = explore(cu(), "emt", tmp_path, **settings)
    assert sorted(str(w.message).split("/")[-2] for w in caught) == ["walker.0000", "walker.0002"]
    assert [w["cached"] for w in again.walkers] == [False, True, False]
    assert all(
        np.array_equal(x, y) for x, y in zip(positions(first), positions(again), strict=True)
    )
    assert (done[0].parent / "done.json.stale").read_text() == '{"key": "trunc'  # kept
    assert read_json(done[2].parent / "done.json.stale")["status"] == "running"
    assert read_json(done[0])["status"] == "finished"
    assert explore(cu(), "emt", tmp_path, **settings).n_cached == 3


def test_other_settings_are_refused_before_any_file_is_touched(tmp_path):
    settings = dict(temperatures_K=[300, 600], steps=10, sample_every=5, progress=False)
    explore(cu(), "emt", tmp_path, **settings)
    (walker_dir(tmp_path, 1) / "done.json").write_text("garbage")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="other settings in walker.0000; use a fresh workdir"):
        explore(cu(), "emt", tmp_path, **{**settings, "timestep_fs": 1.0})
    with pytest.raises(ValueError, match="other settings"):  # another model
        explore(cu(), ("emt", {"asap_cutoff": True}), tmp_path, **settings)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_walker_keys_are_hashes_and_older_records_still_match(tmp_path):
    import json

    settings = dict(temperatures_K=300, steps=5, sample_every=5, progress=False)
    explore(cu(), "emt", tmp_path, **settings)
    directory = walker_dir(tmp_path, 0)
    task, done = read_json(directory / "walker.json"), read_json(directory / "done.json")
    assert len(done["key"]) == 64 and done["key"] == task["key"]
    assert task["definition"]["model"] == {"name": "emt", "options": {}}
    assert task["definition"]["settings"]["steps"] == 5
    # a done record written before keys were hashed holds the whole definition
    done["key"] = task["definition"]
    (directory / "done.json").write_text(json.dumps(done))
    assert explore(cu(), "emt", tmp_path, **settings).n_cached == 1


def test_failed_walker_record_has_attempts_and_cause(tmp_path):
    settings = dict(temperatures_K=300, steps=5, sample_every=5, progress=False)
    result = explore(cu((2, 1, 1)), BrokenForEight(), tmp_path, **settings)
    (failed,) = result.failed
    assert failed["attempts"] == 1 and "cause" in failed
    assert read_json(walker_dir(tmp_path, 0) / "failure.json") | {"cached": False} == failed


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"temperatures_K": -300}, "temperatures_K"),
        ({"temperatures_K": [300, 0.0]}, "temperatures_K"),
        ({"temperatures_K": []}, "temperatures_K"),
        ({"temperatures_K": 300, "timestep_fs": 0}, "timestep_fs"),
        ({"temperatures_K": 300, "timestep_fs": float("nan")}, "timestep_fs"),
        ({"temperatures_K": 300, "thermostat": "andersen"}, "unknown thermostat"),
        ({"temperatures_K": 300, "barostat": "parrinello"}, "unknown barostat"),
        ({"temperatures_K": 300, "steps": 0}, "steps"),
        ({"temperatures_K": 300, "steps": 10, "sample_every": 20}, "sample_every"),
        ({"temperatures_K": 300, "pressures_GPa": [float("inf")]}, "pressures_GPa"),
        ({"temperatures_K": 300, "seed": -1}, "seed"),
        ({"temperatures_K": 300, "frame_filter": {"distance_factor": 0}}, "distance_factor"),
    ],
)
def test_bad_settings_raise_before_any_md(tmp_path, settings, match):
    with pytest.raises(ValueError, match=match):
        explore(cu(), CountingEMT(), tmp_path / "run", progress=False, **settings)
    assert not (tmp_path / "run").exists()


def test_bad_structures_and_models_raise_before_any_md(tmp_path):
    run = tmp_path / "run"
    ok = dict(temperatures_K=300, steps=10, sample_every=5, progress=False)
    with pytest.raises(ValueError, match="unknown labeler"):
        explore(cu(), "not-a-labeler", run, **ok)
    squeezed = cu()
    squeezed.positions[1] = squeezed.positions[0] + 0.2
    with pytest.raises(ValueError, match="too_close"):
        explore(squeezed, "emt", run, **ok)
    with pytest.raises(ValueError, match="periodic"):
        explore(molecule("CO"), "emt", run, pressures_GPa=1.0, **ok)
    with pytest.raises(ValueError, match="no starting structures"):
        explore([], "emt", run, **ok)
    with pytest.raises(FileNotFoundError):
        explore(cu(), ("pfd", {"model": str(tmp_path / "missing.pth")}), run, **ok)
    with pytest.raises(TypeError):
        explore(cu(), 42, run, **ok)
    with pytest.raises(TypeError, match="not both"):
        explore(cu(), "emt", run, ExploreTask(300), temperatures_K=300)
    assert not run.exists()
    assert not list(Path(tmp_path).iterdir())

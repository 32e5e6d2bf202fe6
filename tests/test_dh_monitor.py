"""dH against a training set: DescriptorBank, the DHMonitor calculator, exploration's DHWatch."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from pfd_ase._io import read_json
from pfd_ase.calculators import DHMonitor
from pfd_ase.data import write_frames
from pfd_ase.explore import DHWatch, explore, walker_dir
from pfd_ase.materials import silicon
from pfd_ase.selectors import DescriptorBank, quests

from conftest import load_bench


def diamond(rattle_A: float = 0.0, seed: int = 0) -> Atoms:
    atoms = bulk("Si", "diamond", a=5.431, cubic=True).repeat(2)
    if rattle_A:
        atoms.positions += np.random.default_rng(seed).normal(0.0, rattle_A, atoms.positions.shape)
    return atoms


@pytest.fixture(scope="module")
def si_bank() -> DescriptorBank:
    """Diamond Si at about 300 K: four rattled 64-atom cells."""
    return DescriptorBank.from_frames([diamond(0.05, seed) for seed in range(4)], source="test")


def cu() -> Atoms:
    return bulk("Cu", "fcc", a=3.6, cubic=True)


# --------------------------------------------------------------------------- the bank


def test_bank_round_trip_keeps_descriptors_and_settings(tmp_path, si_bank):
    path = si_bank.save(tmp_path / "bank.npz")
    back = DescriptorBank.load(path)
    assert np.array_equal(back.descriptors, si_bank.descriptors)
    assert (back.k, back.cutoff, back.h) == (si_bank.k, si_bank.cutoff, si_bank.h)
    assert (back.n_environments, back.n_frames, back.source) == (256, 4, "test")
    assert back.identity == si_bank.identity
    assert back.describe()["n_stored"] == 256
    # an extxyz of frames builds a bank with the given settings
    write_frames(tmp_path / "train.extxyz", [diamond(0.05, 0)])
    built = DescriptorBank.load(tmp_path / "train.extxyz", k=8, cutoff=4.0, h=0.03)
    assert built.descriptors.shape == (64, 15) and (built.k, built.cutoff, built.h) == (
        8,
        4.0,
        0.03,
    )
    assert built.identity != DescriptorBank.load(tmp_path / "train.extxyz").identity


def test_bad_banks_are_refused(tmp_path, si_bank):
    with pytest.raises(FileNotFoundError):
        DescriptorBank.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a descriptor bank"):
        DescriptorBank.load(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="2k - 1"):
        DescriptorBank(np.zeros((4, 10)), k=32)
    with pytest.raises(ValueError, match="at least one"):
        DescriptorBank(np.zeros((0, 63)))
    with pytest.raises(ValueError, match="h must be"):
        DescriptorBank(si_bank.descriptors, h=0.0)
    with pytest.raises(ValueError, match=".npz"):
        si_bank.save(tmp_path / "bank.txt")
    with pytest.raises(TypeError, match="own settings"):
        DescriptorBank.load(si_bank.save(tmp_path / "b.npz"), k=8)


def test_a_frame_of_the_bank_has_lower_dH_than_a_distorted_or_other_phase_one(si_bank):
    member = si_bank.delta_entropy(diamond(0.05, 2))
    # its own environment contributes exactly 1 to each kernel sum: dH <= 0
    assert member.shape == (64,) and member.max() <= 1e-12
    hot = si_bank.delta_entropy(diamond(0.25, 9))
    beta_sn = si_bank.delta_entropy(silicon("beta_sn", (2, 2, 4)))
    assert hot.max() > member.max() and np.median(hot) > np.median(member) + 1.0
    assert beta_sn.min() > member.max() + 5.0  # no beta-Sn environment is like diamond's
    # a new frame of the same distribution is as well represented as the bank's own
    fresh = si_bank.delta_entropy(diamond(0.05, 7))
    assert fresh.max() < 0 < hot.max() and abs(np.median(fresh) - np.median(member)) < 0.5


def test_dH_is_invariant_to_permutation_and_translation(si_bank):
    atoms = diamond(0.1, 11)
    dh = si_bank.delta_entropy(atoms)
    order = np.random.default_rng(3).permutation(len(atoms))
    assert np.allclose(si_bank.delta_entropy(atoms[order]), dh[order], rtol=0, atol=1e-9)
    moved = atoms.copy()
    moved.translate([1.3, -7.7, 2.9])  # atoms leave the cell: wrapped by the descriptors
    assert np.allclose(si_bank.delta_entropy(moved), dh, rtol=0, atol=1e-9)


def test_a_subsampled_bank_keeps_the_full_banks_scale():
    perfect = diamond()  # 64 identical environments
    full = DescriptorBank.from_frames(perfect)
    sub = DescriptorBank.from_frames(perfect, max_environments=8, seed=1)
    assert (len(sub), sub.n_environments) == (8, 64)
    assert np.isclose(sub.log_weight, np.log(8.0))
    probe = diamond(0.08, 5)
    assert np.allclose(sub.delta_entropy(probe), full.delta_entropy(probe), rtol=0, atol=1e-9)
    # and both agree with the definition, -log sum_i K(Y, X_i) over every environment
    x = quests.descriptors(perfect)
    y = quests.descriptors(probe)
    assert np.allclose(full.delta_entropy(y), quests.delta_entropy_bruteforce(y, x), atol=1e-9)


# --------------------------------------------------------------------------- the calculator


class CountingEMT(EMT):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def calculate(self, *args, **kwargs):
        self.calls += 1
        super().calculate(*args, **kwargs)


def test_monitor_returns_the_wrapped_results_and_dH_on_the_atoms():
    atoms = cu().repeat(2)
    atoms.positions += np.random.default_rng(0).normal(0.0, 0.05, atoms.positions.shape)
    bank = DescriptorBank.from_frames(cu().repeat(2))
    plain = atoms.copy()
    plain.calc = EMT()
    atoms.calc = DHMonitor(EMT(), bank)
    assert atoms.get_potential_energy() == plain.get_potential_energy()
    assert np.array_equal(atoms.get_forces(), plain.get_forces())
    assert np.array_equal(atoms.get_stress(), plain.get_stress())
    expected = bank.delta_entropy(atoms)
    assert np.array_equal(atoms.arrays["pfd_dH"], expected)
    assert atoms.info["pfd_max_dH"] == expected.max() == atoms.calc.results["max_dH"]
    assert np.array_equal(atoms.calc.results["dH"], expected)
    assert expected.max() > -np.log(len(bank))  # displaced atoms: less than the perfect match


def test_monitor_computes_dH_once_per_structure_and_every_nth(monkeypatch):
    bank = DescriptorBank.from_frames(cu())
    calls = []
    real = bank.delta_entropy
    monkeypatch.setattr(bank, "delta_entropy", lambda a, **kw: calls.append(1) or real(a, **kw))
    inner = CountingEMT()
    atoms = cu()
    atoms.calc = DHMonitor(inner, bank)
    atoms.get_forces()
    atoms.get_potential_energy()
    atoms.get_stress()
    assert len(calls) == 1 and inner.calls >= 1
    atoms.positions[0, 0] += 0.05
    atoms.get_forces()
    assert len(calls) == 2
    # every 3rd structure: dH on structures 0 and 3, none (and no stale keys) in between
    calls.clear()
    atoms.calc = DHMonitor(EMT(), bank, every=3)
    seen = []
    for step in range(5):
        atoms.positions[1, 2] += 0.01 * (step + 1)
        atoms.get_forces()
        seen.append("pfd_max_dH" in atoms.info and "pfd_dH" in atoms.arrays)
    assert seen == [True, False, False, True, False] and len(calls) == 2
    with pytest.raises(ValueError, match="every"):
        DHMonitor(EMT(), bank, every=0)
    with pytest.raises(TypeError, match="ASE calculator"):
        DHMonitor(object(), bank)


def test_monitor_in_md_follows_the_structure():
    from ase import units
    from ase.md.verlet import VelocityVerlet

    bank = DescriptorBank.from_frames(cu().repeat(2))
    atoms = cu().repeat(2)
    atoms.calc = DHMonitor(EMT(), bank)
    atoms.set_velocities(np.random.default_rng(1).normal(0.0, 0.02, (len(atoms), 3)))
    dyn = VelocityVerlet(atoms, 2 * units.fs)
    trace = []
    dyn.attach(lambda: trace.append(atoms.info["pfd_max_dH"]), interval=1)
    dyn.run(5)
    assert np.allclose(atoms.arrays["pfd_dH"], bank.delta_entropy(atoms))
    assert trace[0] < trace[-1]  # the atoms leave the perfect lattice of the bank


# --------------------------------------------------------------------------- exploration


MD = dict(temperatures_K=600, steps=40, sample_every=5, seed=3, progress=False)


def test_watch_records_dH_on_frames_and_marks_those_over_the_threshold(tmp_path):
    bank = DescriptorBank.from_frames(cu())
    plain = explore(cu(), "emt", tmp_path / "plain", **MD)
    watched = explore(cu(), "emt", tmp_path / "dh", dh_watch={"bank": bank}, **MD)
    # the watch changes nothing in the MD
    assert len(watched.frames) == len(plain.frames) == 8
    for a, b in zip(plain.frames, watched.frames, strict=True):
        assert np.array_equal(a.positions, b.positions)
    values = np.array([f.info["pfd_max_dH"] for f in watched.frames])
    for frame in watched.frames:
        assert np.allclose(frame.arrays["pfd_dH"], bank.delta_entropy(frame), atol=1e-9)
        assert "pfd_dH_exceeded" not in frame.info  # no threshold, no mark
    threshold = float(np.median(values))
    marked = explore(cu(), "emt", tmp_path / "mark", dh_watch=DHWatch(bank, max_dH=threshold), **MD)
    flags = [bool(f.info["pfd_dH_exceeded"]) for f in marked.frames]
    assert flags == list(values > threshold) and 0 < sum(flags) < len(flags)
    assert len(marked.dH_exceeded) == sum(flags)
    (record,) = marked.walkers
    assert record["status"] == "finished" and record["dH"]["n_exceeded"] == sum(flags)
    assert record["dH"]["checks"] == 8 and np.isclose(record["dH"]["max_dH"], values.max())
    assert record["dH"]["first_exceeded_step"] == 5 * (1 + flags.index(True))


def test_watch_stops_the_walker_at_the_first_step_over_the_threshold(tmp_path):
    bank = DescriptorBank.from_frames(cu())
    every = explore(cu(), "emt", tmp_path / "all", dh_watch={"bank": bank, "every": 1}, **MD)
    assert every.walkers[0]["dH"]["checks"] == 40  # every step (sampled ones once)
    trace = explore(cu(), "emt", tmp_path / "trace", dh_watch={"bank": bank}, **MD).frames
    threshold = float(np.median([f.info["pfd_max_dH"] for f in trace]))
    watch = DHWatch(bank, max_dH=threshold, action="stop", every=1)
    result = explore(cu(), "emt", tmp_path / "stop", dh_watch=watch, **MD)
    (record,) = result.stopped
    step = record["stopped_step"]
    assert record["status"] == "stopped" and record["steps_done"] == step < 40
    assert "max dH" in record["reason"] and record["dH"]["first_exceeded_step"] == step
    last = result.frames[-1]
    assert last.info["pfd_step"] == step and last.info["pfd_dH_exceeded"] is True
    assert last.info["pfd_max_dH"] > threshold
    assert all(not f.info["pfd_dH_exceeded"] for f in result.frames[:-1])
    # the same MD up to there; a rerun reuses the stopped walker
    assert np.array_equal(result.frames[0].positions, trace[0].positions)
    assert explore(cu(), "emt", tmp_path / "stop", dh_watch=watch, **MD).n_cached == 1
    # another threshold is another walker: refused in this workdir before any MD
    with pytest.raises(ValueError, match="other settings"):
        explore(cu(), "emt", tmp_path / "stop", dh_watch=DHWatch(bank, 1e3, "stop"), **MD)


def test_walker_keys_without_a_watch_are_unchanged(tmp_path):
    explore(cu(), "emt", tmp_path / "a", **MD)
    definition = read_json(walker_dir(tmp_path / "a", 0) / "walker.json")["definition"]
    assert "dh_watch" not in definition
    bank = DescriptorBank.from_frames(cu())
    explore(cu(), "emt", tmp_path / "b", dh_watch=DHWatch(bank, 2.0), **MD)
    watched = read_json(walker_dir(tmp_path / "b", 0) / "walker.json")["definition"]
    assert watched["dh_watch"]["bank"] == bank.identity and watched["dh_watch"]["max_dH"] == 2.0


@pytest.mark.parametrize(
    ("watch", "error", "match"),
    [
        ({"max_dH": 2.0, "action": "stop", "bank": "missing.npz"}, FileNotFoundError, "missing"),
        ({"action": "stop"}, ValueError, "needs a threshold"),
        ({"max_dH": 2.0, "action": "label"}, ValueError, "unknown dH action"),
        ({"max_dH": float("nan")}, ValueError, "max_dH"),
        ({"max_dH": "2"}, ValueError, "max_dH"),
        ({"max_dH": 2.0, "every": 0}, ValueError, "every"),
        ({"bank": 42}, ValueError, "DescriptorBank or a path"),
    ],
)
def test_bad_watches_are_refused_before_any_md(tmp_path, watch, error, match):
    watch = {"bank": DescriptorBank.from_frames(cu()), **watch}
    if watch["bank"] == "missing.npz":
        watch["bank"] = tmp_path / "missing.npz"
    with pytest.raises(error, match=match):
        explore(cu(), "emt", tmp_path / "run", dh_watch=watch, **MD)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="dh_watch must be"):
        explore(cu(), "emt", tmp_path / "run", dh_watch=2.0, **MD)


# --------------------------------------------------------------------------- bench/dh_error.py


@pytest.fixture(scope="module")
def bench():
    return load_bench("dh_error")


def test_bench_statistics_of_a_known_series(bench):
    dh = np.array([-1.0, 0.5, 1.0, 2.0, 2.5, 4.0, np.inf])
    err = np.array([0.01, 0.02, 0.04, 0.03, 0.2, 0.3, 0.5])
    out = bench.analyse(dh, err)
    assert out["spearman_rho"] == pytest.approx(1 - 6 * 2 / (7 * 48))  # one swapped pair
    below, above = out["force_error_eV_A"]["dH<=2"], out["force_error_eV_A"]["dH>2"]
    assert (below["n"], above["n"]) == (4, 3)  # dH = 2 counts below; +inf above
    assert below["mean"] == pytest.approx(0.025) and above["median"] == pytest.approx(0.3)
    assert below["p90"] == pytest.approx(np.percentile(err[:4], 90))
    assert out["mean_error_above_over_below"] == pytest.approx(1.0 / 3 / 0.025)
    assert bench.analyse(dh[:4], err[:4])["mean_error_above_over_below"] is None


def test_bench_pipeline_with_classical_stand_ins(bench, tmp_path, monkeypatch):
    from ase.calculators.lj import LennardJones

    from conftest import emt_frames

    train = emt_frames(3, seed=0)
    test = emt_frames(2, seed=1)
    hot = emt_frames(1, seed=2)[0]
    hot.positions += np.random.default_rng(4).normal(0.0, 0.2, hot.positions.shape)
    hot.calc = EMT()
    from ase.calculators.singlepoint import SinglePointCalculator

    hot.calc = SinglePointCalculator(
        hot, energy=hot.get_potential_energy(), forces=hot.get_forces()
    )
    for k, atoms in enumerate([*test, hot]):
        atoms.info["pfd_frame_id"] = f"test.{'cold' if k < 2 else 'hot'}.{k:03d}"
    lj = LennardJones(sigma=2.3, epsilon=0.4, rc=5.0)
    signal = bench.error_signal(train, [*test, hot], {"PF": lj, "base": EMT()})
    assert signal["n_test_atoms"] == 24 and len(signal["points"]["dH"]) == 24
    assert max(signal["points"]["force_error_base_eV_A"]) < 1e-9  # the labeler itself
    expected = np.linalg.norm(lj.get_forces(hot) - hot.get_forces(), axis=1)
    assert np.allclose(signal["points"]["force_error_PF_eV_A"][16:], expected, atol=1e-5)
    per = signal["per_structure"]
    assert per["hot"]["median_dH"] > per["cold"]["median_dH"] + 1.0
    # outputs: the JSON's headline prefers a full-form entry; the figure is drawn
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "JSON_PATH", tmp_path / "dh_error.json")
    monkeypatch.setattr(bench, "PNG_PATH", tmp_path / "dh_error.png")
    signal.pop("bank_object")
    overhead = {"overhead_pct": 4.0, "goal_pct": 20.0}
    entry = {**signal, "form": "quick", "labeler": "emt", "monitor_overhead": overhead}
    out = bench.write_outputs(entry, "quick")
    assert out["headline"]["source"] == "quick" and out["goal"]["spearman_rho"] == ">= 0.5"
    assert out["met"]["monitor_overhead"] is True
    out = bench.write_outputs({**entry, "form": "full", "n_test_atoms": 1}, "some_run")
    assert out["headline"]["source"] == "some_run" and set(out["results"]) == {"quick", "some_run"}
    assert (tmp_path / "dh_error.png").stat().st_size > 10_000

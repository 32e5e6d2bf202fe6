"""EntropySelector (Algorithm 1), RandomSelector and the Fig. S1 plot helper."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from pfd_ase.selectors import EntropySelector, RandomSelector, quests
from pfd_ase.selectors import plot as splot

H = 0.015


def f(r: float) -> float:
    """X1[0] of a dimer of bond length r (Å): w(r) / r, the only non-zero descriptor entry."""
    return (1 - (r / 5.0) ** 2) ** 2 / r


def dimer(r: float) -> Atoms:
    return Atoms("Si2", positions=[[0, 0, 0], [r, 0, 0]])


def md_like(n: int, seed: int) -> list[Atoms]:
    """Diamond Si frames with thermal-like noise from 0.01 to 0.2 Å, some strained."""
    rng = np.random.default_rng(seed)
    base = bulk("Si", "diamond", a=5.43, cubic=True)
    out = []
    for i in range(n):
        a = base.copy()
        a.set_cell(a.cell * (1 + 0.02 * rng.uniform(-1, 1)), scale_atoms=True)
        a.positions += rng.normal(0, [0.01, 0.05, 0.1, 0.2][i % 4], a.positions.shape)
        out.append(a)
    return out


# ----------------------------------------------------------------------------- EntropySelector


def test_frame_scores_by_hand():
    """Dimer frames: both atoms share X1[0] = f(r), so dH of each atom against a reference
    dimer r0 is -log(2 exp(-(f(r) - f(r0))^2 / 2h^2)); the frame score is the sum of both."""
    ref = [dimer(2.0)]
    cands = [dimer(3.0), dimer(2.0), dimer(2.5)]
    expected = [2 * ((f(r) - f(2.0)) ** 2 / (2 * H * H) - math.log(2)) for r in (3.0, 2.0, 2.5)]
    scores = EntropySelector(n_target=1, k=4).frame_scores(cands, ref)
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    assert scores[1] == pytest.approx(-2 * math.log(2))  # a duplicate of the reference
    mean = EntropySelector(n_target=1, k=4, score="mean").frame_scores(cands, ref)
    np.testing.assert_allclose(mean, np.array(expected) / 2, rtol=1e-12)


def test_chunked_and_greedy_orders_by_hand():
    """Reference dimer 2.0 Å; candidates 3.0, 3.02, 2.5 Å.

    Against {2.0}: dH(3.02) > dH(3.0) > dH(2.5) (f differs by 14.6 h, 14.4 h, 8.5 h). With
    chunks of 2 both far dimers go together: [1, 0]. Greedily (chunks of 1) 3.02 comes first;
    then 3.0 is only 0.2 h from it, while 2.5 is still 6.1 h from everything: [1, 2].
    """
    ref, cands = [dimer(2.0)], [dimer(3.0), dimer(3.02), dimer(2.5)]
    assert EntropySelector(n_target=2, chunk_size=2, k=4).select(cands, ref) == [1, 0]
    assert EntropySelector(n_target=2, chunk_size=1, k=4).select(cands, ref) == [1, 2]
    assert EntropySelector(n_target=3, chunk_size=1, k=4).select(cands, ref) == [1, 2, 0]
    # the default is greedy: a chunk holds near-copies (bench/selection_efficiency.py)
    assert EntropySelector(n_target=2, k=4).select(cands, ref) == [1, 2]


def test_infinite_scores_rank_first_then_by_finite_log_sum():
    """Dimers 0.9 and 0.8 Å are 46 h and 56 h from the reference: dH ~ 1050 and 1550 > 744,
    the float64 kernel sum is zero, dH = +inf. They outrank the finite 3.0 Å dimer (dH ~ 104)
    and are ordered by the finite -log sum K (0.8 before 0.9), not by index."""
    ref, cands = [dimer(2.0)], [dimer(3.0), dimer(0.9), dimer(0.8)]
    for score in ("sum", "mean", "max"):
        sel = EntropySelector(n_target=3, chunk_size=3, k=4, score=score)
        scores = sel.frame_scores(cands, ref)
        assert np.isfinite(scores[0]) and np.all(scores[1:] == np.inf)
        assert not np.isnan(scores).any()
        assert sel.select(cands, ref) == [2, 1, 0]
    # an inf beats any finite score, even a larger finite sum: 12 separate 3.0 Å dimers add up
    # to 24 x 103 ~ 2470 > the 0.9 Å dimer's finite -log sum K, 2 x 1049
    gas = Atoms(
        "Si24",
        positions=[
            [10.0 * i, 10.0 * j, 3.0 * b] for i in range(4) for j in range(3) for b in range(2)
        ],
    )
    sel = EntropySelector(n_target=2, chunk_size=2, k=4)
    finite = -quests.log_kernel_sum(
        quests.descriptors([gas, dimer(0.9)], k=4), quests.descriptors(ref, k=4)
    )
    assert finite[:24].sum() > finite[24:].sum() and np.all(finite[:24] < quests.DH_INF)
    assert sel.select([gas, dimer(0.9)], ref) == [1, 0]


def test_ties_broken_by_lower_index():
    ref = [dimer(2.0)]
    cands = [dimer(2.2), dimer(2.6), dimer(2.2), dimer(2.6)]
    assert EntropySelector(n_target=4, chunk_size=4, k=4).select(cands, ref) == [1, 3, 0, 2]


def test_seeding_without_reference():
    """No reference: the seed is the frame of highest own entropy. Dimers and an equilateral
    triangle have identical environments (H = 0); the irregular 4-atom cluster has four
    distinct ones (H ~ log 4), so it opens the first chunk."""
    irregular = Atoms("Si4", positions=[[0, 0, 0], [2.2, 0, 0], [0, 2.7, 0], [0.3, 0.4, 2.45]])
    tri = Atoms("Si3", positions=[[0, 0, 0], [2.4, 0, 0], [1.2, 2.4 * math.sqrt(3) / 2, 0]])
    cands = [dimer(2.0), tri, irregular, dimer(3.0)]
    x = quests.descriptors(irregular, k=8)
    assert quests.entropy(x, H) > math.log(4) - 0.01  # four nearly unrelated environments
    for reference in (None, [], [Atoms()]):
        order = EntropySelector(n_target=4, chunk_size=2, k=8).select(cands, reference)
        assert order[0] == 2 and sorted(order) == [0, 1, 2, 3]
    # first chunk = seed + (chunk_size - 1) frames scored against the seed alone
    sel = EntropySelector(n_target=2, chunk_size=2, k=8)
    against_seed = sel.frame_scores(cands, [irregular])
    against_seed[2] = -np.inf
    assert sel.select(cands) == [2, int(np.argmax(against_seed))]


def test_incremental_rounds_equal_algorithm_1_from_scratch():
    """Rescoring every remaining frame against reference + chosen with the brute-force dH each
    round (Algorithm 1 verbatim) gives the same order as the incremental implementation."""
    cands, ref = md_like(14, seed=1), md_like(3, seed=2)
    for score, chunk, n_target in (("sum", 3, 8), ("max", 2, 5), ("mean", 4, 14)):
        x = [quests.descriptors(a) for a in cands]
        pool = [quests.descriptors(ref)]
        chosen: list[int] = []
        while len(chosen) < n_target:
            rest = [i for i in range(len(cands)) if i not in chosen]
            reference = np.concatenate(pool)
            agg = {"sum": np.sum, "max": np.max, "mean": np.mean}[score]
            s = [agg(quests.delta_entropy_bruteforce(x[i], reference, H)) for i in rest]
            top = [rest[j] for j in np.lexsort((rest, -np.array(s)))][: n_target - len(chosen)]
            top = top[:chunk]
            chosen += top
            pool += [x[i] for i in top]
        got = EntropySelector(n_target=n_target, chunk_size=chunk, score=score).select(cands, ref)
        assert got == chosen, score


def test_descriptors_computed_once(monkeypatch):
    calls = []
    original = quests.descriptors

    def counting(frames, k=32, cutoff=5.0):
        calls.append(len(frames))
        return original(frames, k, cutoff)

    monkeypatch.setattr(quests, "descriptors", counting)
    cands = md_like(12, seed=3)
    order = EntropySelector(n_target=9, chunk_size=2).select(cands, md_like(2, seed=4))
    assert len(order) == 9 and len(set(order)) == 9
    assert calls == [12, 2]  # candidates once, reference once, whatever the number of rounds


def test_n_target_beyond_candidates_and_last_partial_chunk():
    cands = md_like(5, seed=5)
    order = EntropySelector(n_target=50, chunk_size=2).select(cands, md_like(1, seed=6))
    assert sorted(order) == [0, 1, 2, 3, 4]
    assert len(EntropySelector(n_target=3, chunk_size=2).select(cands)) == 3
    assert EntropySelector(n_target=3).select([], None) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_target": 0}, "n_target"),
        ({"n_target": 2.5}, "n_target"),
        ({"n_target": True}, "n_target"),
        ({"n_target": 3, "chunk_size": 0}, "chunk_size"),
        ({"n_target": 3, "score": "median"}, "unknown score"),
        ({"n_target": 3, "h": 0.0}, "h must"),
        ({"n_target": 3, "h": float("nan")}, "h must"),
        ({"n_target": 3, "cutoff": -1.0}, "cutoff"),
        ({"n_target": 3, "k": 0}, "k must"),
    ],
)
def test_entropy_selector_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EntropySelector(**kwargs)


def test_select_argument_errors():
    sel = EntropySelector(n_target=2)
    with pytest.raises(TypeError, match="single Atoms"):
        sel.select(dimer(2.0))
    with pytest.raises(TypeError, match=r"candidates\[1\]"):
        sel.select([dimer(2.0), "frame.xyz"])
    with pytest.raises(ValueError, match="n_atoms"):
        sel.select_from_descriptors(np.zeros((3, 63)), [1, 1])


# ----------------------------------------------------------------------------- RandomSelector


def test_random_selector_reproducible_and_seeded():
    cands = [dimer(2.0 + 0.01 * i) for i in range(40)]
    np.random.seed(123)  # noqa: NPY002 - the legacy global state must stay untouched
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    a = RandomSelector(n_target=10, seed=7).select(cands)
    assert a == RandomSelector(n_target=10, seed=7).select(cands, [dimer(2.0)])
    sel = RandomSelector(n_target=10, seed=7)
    assert sel.select(cands) == sel.select(cands)  # a fresh generator per call
    assert a != RandomSelector(n_target=10, seed=8).select(cands)
    assert len(set(a)) == 10 and all(0 <= i < 40 for i in a)
    assert a == np.random.default_rng(7).permutation(40)[:10].tolist()
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002
    assert sorted(RandomSelector(n_target=99).select(cands[:5])) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="n_target"):
        RandomSelector(n_target=0)


def test_constructors_follow_the_issue_signature():
    """``(chunk_size=10, n_target=..., ...)``: positional in that order, n_target required."""
    cands = [dimer(2.0 + 0.05 * i) for i in range(6)]
    ref = [dimer(2.0)]
    by_position = EntropySelector(2, 3, 0.015, 4, 5.0, "max")
    by_name = EntropySelector(chunk_size=2, n_target=3, k=4, score="max")
    assert repr(by_position) == repr(by_name)
    assert by_position.select(cands, ref) == by_name.select(cands, ref)
    assert RandomSelector(4, 3, 7).select(cands) == RandomSelector(n_target=3, seed=7).select(cands)
    for cls in (EntropySelector, RandomSelector):
        with pytest.raises(TypeError, match="needs n_target"):
            cls(chunk_size=5)
        with pytest.raises(ValueError, match="chunk_size"):
            cls(chunk_size=0, n_target=2)


# ----------------------------------------------------------------------------- Fig. S1 plot


def test_plot_entropy_vs_frames_png(tmp_path):
    cands = md_like(16, seed=8)
    curves = splot.compare_selection(cands, tmp_path / "s1.png", n_target=8, chunk_size=2)
    assert (tmp_path / "s1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ent, rnd = curves.values()
    assert len(ent) == len(rnd) == 8
    assert ent[-1] > rnd[-1]  # entropy selection finds the more diverse frames (Fig. S1)
    order = EntropySelector(n_target=8, chunk_size=2).select(cands)
    x = quests.descriptors([cands[i] for i in order[:5]])
    assert ent[4] == pytest.approx(quests.entropy_bruteforce(x, H), abs=1e-10)


def test_plot_needs_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"pip install pfd_ase\[analysis\]"):
        splot.plot_entropy_vs_frames({"a": [1.0, 2.0]}, tmp_path / "x.png")

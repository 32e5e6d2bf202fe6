"""QUESTS descriptors, entropy and differential entropy (pfd_ase.selectors.quests)."""

from __future__ import annotations

import math
import os
import sys
from functools import lru_cache

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

from pfd_ase.selectors import _kde, _kde_blocks, _kde_partition, quests
from pfd_ase.threads import cpu_count

H = 0.015


def w(r, rc=5.0):
    return (1.0 - (r / rc) ** 2) ** 2


def perturbed(atoms: Atoms, sigma: float, seed: int, strain: float = 0.0) -> Atoms:
    rng = np.random.default_rng(seed)
    out = atoms.copy()
    eps = rng.uniform(-strain, strain, (3, 3))
    out.set_cell(out.cell @ (np.eye(3) + (eps + eps.T) / 2), scale_atoms=True)
    out.positions += rng.normal(0.0, sigma, out.positions.shape)
    return out


@lru_cache(maxsize=1)
def realistic() -> np.ndarray:
    """~1500 environments of MD-like Si: diamond, bcc and a surface slab, 0.03-0.15 Å noise."""
    dia = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    bcc = bulk("Si", "bcc", a=3.09, cubic=True) * (3, 3, 3)
    slab = dia.copy()
    slab.center(vacuum=6.0, axis=2)
    slab.pbc = (True, True, False)
    frames = [
        perturbed(base, sigma, seed=i, strain=0.02)
        for i, (base, sigma) in enumerate(
            [(b, s) for b in (dia, bcc, slab) for s in (0.03, 0.08, 0.15)] * 2
        )
    ]
    return quests.descriptors(frames)


def naive_descriptors(atoms: Atoms, k: int = 32, cutoff: float = 5.0) -> np.ndarray:
    """Loop-per-atom QUESTS descriptor with ASE's own neighbour search (independent oracle)."""
    i, vec = neighbor_list("iD", atoms, cutoff)
    rows = []
    for a in range(len(atoms)):
        v = vec[i == a]
        r = np.linalg.norm(v, axis=1)
        keep = np.argsort(r, kind="stable")[:k]
        v, r = v[keep], r[keep]
        wt = w(r, cutoff)
        x1 = np.zeros(k)
        x1[: len(r)] = wt / r
        m = np.zeros((k, k))
        for p in range(len(r)):
            for q in range(len(r)):
                if p != q:
                    m[p, q] = math.sqrt(wt[p] * wt[q]) / np.linalg.norm(v[p] - v[q])
        x2 = np.sort(m, axis=1).mean(axis=0)[1:][::-1]
        rows.append(np.concatenate([x1, x2]))
    return np.array(rows)


# ----------------------------------------------------------------------------- descriptors


def test_descriptor_shape_dtype_and_frame_order():
    a = perturbed(bulk("Si", "diamond", a=5.43, cubic=True), 0.05, seed=1)
    b = perturbed(bulk("Si", "bcc", a=3.09, cubic=True) * (2, 2, 2), 0.05, seed=2)
    x = quests.descriptors([a, b], k=12)
    assert x.shape == (len(a) + len(b), 23)
    assert x.dtype == np.float64
    np.testing.assert_array_equal(x[: len(a)], quests.descriptors(a, k=12))  # single Atoms too
    np.testing.assert_array_equal(x[len(a) :], quests.descriptors([b], k=12))
    assert quests.descriptors([], k=5).shape == (0, 9)


def test_dimer_and_triangle_by_hand():
    r = 2.0
    x = quests.descriptors(Atoms("Si2", positions=[[0, 0, 0], [r, 0, 0]]), k=4)
    expected = np.zeros(7)
    expected[0] = w(r) / r  # 0.7056 / 2: one neighbour, the rest zero-padded; no angle
    np.testing.assert_allclose(x, [expected, expected], rtol=1e-14, atol=0)

    a = 2.4  # equilateral triangle: 2 neighbours at a; M[0, 1] = M[1, 0] = w(a) / a
    tri = Atoms("Si3", positions=[[0, 0, 0], [a, 0, 0], [a / 2, a * math.sqrt(3) / 2, 0]])
    x = quests.descriptors(tri, k=4)
    # rows of M sorted: [0, 0, 0, w/a] twice and two zero rows; means over k = 4 rows, column 0
    # dropped, reversed: X2 = [2 (w/a) / 4, 0, 0]
    expected = np.array([w(a) / a, w(a) / a, 0, 0, w(a) / (2 * a), 0, 0])
    np.testing.assert_allclose(x, np.tile(expected, (3, 1)), rtol=1e-13, atol=1e-16)


def test_simple_cubic_by_hand():
    """sc, a = 2.5 Å, rc = 5 Å: shells 6 x a (w = 9/16), 12 x a√2 (w = 1/4), 8 x a√3 (w = 1/16);
    the 2a shell sits on the cutoff (w = 0). 26 neighbours < k = 32: six zeros pad X1."""
    a = 2.5
    x = quests.descriptors(Atoms("Si", cell=np.eye(3) * a, pbc=True))[0]
    x1 = [9 / 16 / a] * 6 + [1 / 4 / (a * 2**0.5)] * 12 + [1 / 16 / (a * 3**0.5)] * 8 + [0] * 6
    np.testing.assert_allclose(x[:32], x1, rtol=1e-13, atol=1e-15)
    # X2[0]: mean over the 32 rows of each row's largest M entry. First shell j: another first-
    # shell atom at a√2 -> (9/16)/(a√2). Second shell: a first-shell atom at a -> √(9/64)/a.
    # Third shell: a first-shell atom at a√2 -> √(9/256)/(a√2). Padded rows: 0.
    top = (6 * (9 / 16) / (a * 2**0.5) + 12 * (3 / 8) / a + 8 * (3 / 16) / (a * 2**0.5)) / 32
    assert x[32] == pytest.approx(top, rel=1e-12)
    assert np.all(np.diff(x[32:]) <= 1e-15)  # X2 in descending order
    np.testing.assert_allclose(x, naive_descriptors(Atoms("Si", cell=np.eye(3) * a, pbc=True))[0])


def test_zero_padding_and_isolated_atoms():
    atoms = Atoms("Si4", positions=[[0, 0, 0], [2.3, 0, 0], [0, 2.3, 0], [20, 20, 20]])
    x = quests.descriptors(atoms, k=32)
    assert np.all(x[:3, 2:32] == 0) and np.all(x[:3, :2] > 0)  # two neighbours, then padding
    assert np.all(x[:3, 33:] == 0) and np.all(x[:3, 32] > 0)  # one non-zero angle term
    assert np.all(x[3] == 0)  # nothing within 5 Å


def test_matches_naive_loop_with_mixed_pbc():
    slab = bulk("Si", "diamond", a=5.43, cubic=True) * (1, 1, 2)
    slab.center(vacuum=4.0, axis=2)
    slab.pbc = (True, False, True)  # a small, mixed-periodic, triclinic-strained cell
    slab = perturbed(slab, 0.1, seed=3, strain=0.05)
    np.testing.assert_allclose(quests.descriptors(slab), naive_descriptors(slab), atol=1e-13)


def test_mixed_pbc_honoured():
    slab = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 1)
    slab.center(vacuum=6.0, axis=2)  # 12 Å of vacuum > cutoff: z images never reached
    slab = perturbed(slab, 0.05, seed=4)
    slab.pbc = (True, True, False)
    mixed = quests.descriptors(slab)
    slab.pbc = True
    np.testing.assert_allclose(mixed, quests.descriptors(slab), atol=1e-14)
    slab.pbc = False  # the reference's treatment of mixed pbc: edge atoms lose neighbours
    assert np.abs(mixed - quests.descriptors(slab)).max() > 0.05


def test_rotation_translation_permutation_invariance():
    atoms = perturbed(
        bulk("Si", "diamond", a=5.43, cubic=True) * (2, 1, 1), 0.1, seed=5, strain=0.03
    )
    x = quests.descriptors(atoms)
    moved = atoms.copy()
    moved.rotate(37.0, (1.0, -2.0, 0.5), rotate_cell=True)
    moved.translate((3.1, -7.2, 0.4))
    np.testing.assert_allclose(quests.descriptors(moved), x, atol=1e-12)
    moved.wrap()
    np.testing.assert_allclose(quests.descriptors(moved), x, atol=1e-12)
    perm = np.random.default_rng(0).permutation(len(atoms))
    np.testing.assert_allclose(quests.descriptors(atoms[perm]), x[perm], atol=1e-13)


def test_supercell_of_perfect_crystal_gives_the_same_environments():
    prim = bulk("Si", "diamond", a=5.43)  # 2 atoms, images of itself everywhere
    big = bulk("Si", "diamond", a=5.43, cubic=True) * (3, 3, 3)  # 216 atoms
    x_prim, x_big = quests.descriptors(prim), quests.descriptors(big)
    np.testing.assert_allclose(x_prim[1], x_prim[0], atol=1e-13)
    np.testing.assert_allclose(x_big, np.tile(x_prim[0], (len(big), 1)), atol=1e-13)
    assert np.count_nonzero(x_prim[0, :32]) == 28  # 4 + 12 + 12 neighbours within 5 Å


def test_descriptor_argument_errors():
    with pytest.raises(ValueError, match="k must be"):
        quests.descriptors(bulk("Si"), k=0)
    with pytest.raises(ValueError, match="k must be"):
        quests.descriptors(bulk("Si"), k=2.5)
    with pytest.raises(ValueError, match="cutoff"):
        quests.descriptors(bulk("Si"), cutoff=0.0)
    with pytest.raises(ValueError, match="zero cell vector"):
        quests.descriptors(Atoms("Si2", positions=[[0, 0, 0], [2, 0, 0]], pbc=True))


# ----------------------------------------------------------------------------- entropies


def test_bruteforce_oracle_matches_direct_formula():
    x = realistic()[::5]
    d2 = cdist(x, x, "sqeuclidean")
    lse = logsumexp(-d2 / (2 * H * H), axis=1)
    assert quests.entropy_bruteforce(x, H) == pytest.approx(
        math.log(len(x)) - lse.mean(), abs=1e-11
    )
    y = realistic()[1::7] + 0.02
    direct = -logsumexp(-cdist(y, x, "sqeuclidean") / (2 * H * H), axis=1)
    np.testing.assert_allclose(quests.delta_entropy_bruteforce(y, x, H), direct, rtol=1e-12)


def test_entropy_equals_bruteforce_on_realistic_data():
    x = realistic()
    fast, slow = quests.entropy(x, H), quests.entropy_bruteforce(x, H)
    assert abs(fast - slow) <= 1e-10
    assert 1.0 < fast < math.log(len(x)) - 0.5  # neither all identical nor all distinct


@pytest.mark.parametrize("n_ref", [300, 1200])  # more and fewer rows in Y than in X
def test_delta_entropy_equals_bruteforce_on_realistic_data(n_ref):
    data = realistic()
    rng = np.random.default_rng(7)
    x = data[rng.permutation(len(data))[:n_ref]]
    y = np.concatenate([data[::3], data[:40] + 0.05, data[:10] + 1.0])  # near, far, beyond inf
    fast, slow = quests.delta_entropy(y, x, H), quests.delta_entropy_bruteforce(y, x, H)
    finite = np.isfinite(slow)
    assert np.array_equal(finite, np.isfinite(fast)) and (~finite).sum() == 10
    np.testing.assert_allclose(fast[finite], slow[finite], rtol=1e-12, atol=1e-10)
    assert fast.dtype == np.float64 and not np.isnan(fast).any()
    lks = quests.log_kernel_sum(y, x, H)
    assert np.all(np.isfinite(lks))
    np.testing.assert_allclose(-lks[finite], slow[finite], rtol=1e-12, atol=1e-10)


def test_entropy_limits():
    rng = np.random.default_rng(1)
    far = rng.normal(size=(257, 63))  # pairwise distances ~11 >> h
    assert quests.entropy(far, H) == pytest.approx(math.log(257), abs=1e-12)
    assert quests.entropy_bruteforce(far, H) == pytest.approx(math.log(257), abs=1e-12)
    same = np.tile(far[0], (300, 1))
    assert abs(quests.entropy(same, H)) < 1e-12
    two = np.concatenate([np.tile(far[0], (100, 1)), np.tile(far[1], (300, 1))])
    assert quests.entropy(two, H) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert quests.entropy(far[:1], H) == 0.0


def test_delta_entropy_exact_values_and_inf():
    x0 = np.zeros((1, 63))
    e = np.zeros(63)
    e[5] = 1.0
    d = np.array([0.0, 10.0, 38.0, 40.0]) * H
    y = d[:, None] * e
    # dH = d^2 / (2 h^2): 0, 50, 722 (kernel 3e-314 is a float64 subnormal: no precision lost
    # thanks to log-sum-exp), 800 (kernel underflows to 0: +inf, the reference's -log(0))
    dh = quests.delta_entropy(y, x0, H)
    np.testing.assert_allclose(dh[:3], [0.0, 50.0, 722.0], rtol=1e-12, atol=1e-12)
    assert dh[3] == np.inf
    assert quests.log_kernel_sum(y, x0, H)[3] == pytest.approx(-800.0, rel=1e-12)
    np.testing.assert_array_equal(dh, quests.delta_entropy_bruteforce(y, x0, H))
    two = np.concatenate([x0, x0])
    np.testing.assert_allclose(quests.delta_entropy(y[:1], two, H), [-math.log(2)], rtol=1e-13)
    assert np.all(quests.delta_entropy(y, np.zeros((0, 63)), H) == np.inf)


def test_float64_throughout():
    x32 = realistic()[::3].astype(np.float32)
    x64 = x32.astype(np.float64)
    assert quests.entropy(x32, H) == quests.entropy(x64, H)
    dh = quests.delta_entropy(x32[:50], x32[50:], H)
    assert dh.dtype == np.float64
    np.testing.assert_array_equal(dh, quests.delta_entropy(x64[:50], x64[50:], H))


def test_entropy_argument_errors():
    x = realistic()[:10]
    with pytest.raises(ValueError, match="empty"):
        quests.entropy(np.zeros((0, 63)))
    with pytest.raises(ValueError, match="bandwidth"):
        quests.entropy(x, h=0.0)
    with pytest.raises(ValueError, match="features"):
        quests.delta_entropy(x[:, :5], x)
    with pytest.raises(ValueError, match="nan"):
        quests.entropy(np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="2-D"):
        quests.entropy(np.zeros(5))


def test_entropy_curve_matches_prefix_entropies():
    data = realistic()
    blocks = [data[i : i + 64] for i in range(0, 640, 64)] + [np.zeros((0, 63))]
    curve = quests.entropy_curve(blocks, H)
    for m in (1, 4, 10):
        assert curve[m - 1] == pytest.approx(
            quests.entropy_bruteforce(data[: 64 * m], H), abs=1e-10
        )
    assert curve[-1] == curve[-2]  # an empty block changes nothing


def test_pruning_keeps_every_term_above_the_tolerance(monkeypatch):
    """Terms above REL_TOL of a sum survive the pruning, also across ball boundaries; what is
    dropped stays below REL_TOL of the sum."""
    assert _kde_blocks.REL_TOL <= 1e-10  # the issue asks for |dH error| <= 1e-8
    # H: 600 points on a line, 7 h apart: each sees its neighbours with K = e^-24.5 ~ 2e-11
    n = 600
    x = np.zeros((n, 63))
    x[:, 3] = np.arange(n) * 7 * H
    k = math.exp(-24.5)
    expected = math.log(n) - (2 * math.log1p(k) + (n - 2) * math.log1p(2 * k)) / n
    assert abs(quests.entropy(x, H) - expected) < 1e-14
    assert abs(quests.entropy_bruteforce(x, H) - expected) < 1e-14
    # dH: nearest reference at 2 h (K = e^-2), one at 6.6 h (relative weight e^-20 ~ 2e-9:
    # kept), one at 10 h (e^-48 ~ 1e-21: may go), 597 far
    x = np.zeros((n, 63))
    x[3:, 0] = np.concatenate([1.0 + np.arange(299) * 0.01, -1.0 - np.arange(298) * 0.01])
    x[0, 1], x[1, 2], x[2, 4] = 2 * H, math.sqrt(44) * H, 10 * H
    y = np.zeros((1, 63))
    kept = -math.log(math.exp(-2.0) + math.exp(-22.0))
    exact = -math.log(math.exp(-2.0) + math.exp(-22.0) + math.exp(-50.0))
    assert abs(quests.delta_entropy(y, x, H)[0] - exact) < 2e-15  # few rows: all pairs
    for rows in (y, np.repeat(y, 700, axis=0)):  # more rows than points: balls of x
        dh = quests.delta_entropy(rows, x, H)[0]
        assert abs(dh - kept) < 2e-15 or abs(dh - exact) < 2e-15
    monkeypatch.setattr(_kde, "_ALL_PAIRS_ROWS", 0)  # pruned, a single row: cells of x
    dh = quests.delta_entropy(y, x, H)[0]
    assert abs(dh - kept) < 2e-15 or abs(dh - exact) < 2e-15


def test_stairs_cut_the_rows_where_it_saves_pairs():
    # rows sorted by the number of (farthest-first) points they need
    assert _kde._stairs(np.array([10] * 8), overhead=1.0) == [8]
    assert _kde._stairs(np.array([1] * 7 + [1000]), overhead=1.0) == [7, 8]
    assert _kde._stairs(np.array([1] * 7 + [1000]), overhead=1e4) == [8]  # calls cost more
    # greedy: 5 rows x 100 + 1 x 1000, then 4 x 10 + 1 x 100
    assert _kde._stairs(np.array([1, 1, 10, 10, 100, 1000]), overhead=0.0) == [4, 5, 6]
    assert _kde._stairs(np.array([1, 1, 10, 10, 100, 1000]), overhead=0.0, most=2) == [5, 6]
    assert _kde._stairs(np.array([3]), overhead=0.0) == [1]


def test_kmeans_centres_are_deterministic_and_never_nan():
    rng = np.random.default_rng(0)
    blobs = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=np.float32)
    z = np.repeat(blobs, 100, axis=0) + rng.normal(0.0, 0.1, (300, 2)).astype(np.float32)
    c = _kde_partition.kmeans(z, 3)
    np.testing.assert_allclose(c, blobs, atol=0.05)  # each centre on its blob's mean
    assert np.array_equal(c, _kde_partition.kmeans(z, 3))
    # more centres than distinct points: the spare centres keep their places, no nan
    c = _kde_partition.kmeans(np.repeat(blobs, 4, axis=0), 6)
    assert np.isfinite(c).all() and {tuple(v) for v in c} == {tuple(v) for v in blobs}


# ----------------------------------------------------------------------------- engine


@pytest.fixture
def small_blocks(monkeypatch):
    """Pruned engine with many small balls, tasks and blocks, and worker threads at any size."""
    monkeypatch.setattr(_kde_blocks, "_SERIAL_MAX_PAIRS", 0.0)
    for name, value in [
        ("_LEAF_SELF", 64),
        ("_COLS_SELF", 100),
        ("_TASK_SELF", 1),
        ("_LEAF_X", 48),
        ("_ROWS_X", 70),
        ("_TASK_X", 2),
        ("_CELL", 40),
        ("_KMEANS_SAMPLE", 300),
        ("_ASSIGN_CHUNK", 37),
        ("_ROW_TASKS", 7),
        ("_SAMPLE", 64),
    ]:
        monkeypatch.setattr(_kde, name, value)


KERNEL_CASES = ["H", "dH all pairs", "dH pruned, few rows", "dH pruned, many rows"]


def kernel_case(case: str, monkeypatch) -> tuple[np.ndarray, np.ndarray]:
    data = realistic()
    if case == "H":
        return data, data
    x = data[np.random.default_rng(3).permutation(len(data))[:700]]
    y = np.concatenate([data, data[:30] + 0.05, data[:5] + 1.0])  # near, far, beyond inf
    if case == "dH pruned, many rows":
        return y, x
    if case == "dH pruned, few rows":
        monkeypatch.setattr(_kde, "_ALL_PAIRS_ROWS", 0)
    return y[::20], x


@pytest.mark.parametrize("case", KERNEL_CASES)
def test_threads_do_not_change_the_sums(small_blocks, monkeypatch, case):
    y, x = kernel_case(case, monkeypatch)
    monkeypatch.setattr(_kde_blocks, "_USE_TORCH", False)
    one = _kde.log_kernel_sum_pruned(y, x, H, threads=1)
    for t in (2, 3):
        other = _kde.log_kernel_sum_pruned(y, x, H, threads=t)
        assert np.abs(other - one).max() <= 1e-12  # the same sums in the same order: equal
    oracle = _kde.log_kernel_sum_blocked(y, x, H)
    np.testing.assert_allclose(one, oracle, rtol=1e-12, atol=1e-10)
    monkeypatch.setattr(_kde_blocks, "_SERIAL_MAX_PAIRS", 1e12)  # in the calling thread
    assert np.abs(_kde.log_kernel_sum_pruned(y, x, H, threads=2) - one).max() <= 1e-12


@pytest.mark.parametrize("case", KERNEL_CASES)
def test_torch_exp_matches_numpy_exp(small_blocks, monkeypatch, case):
    torch = pytest.importorskip("torch")
    y, x = kernel_case(case, monkeypatch)
    monkeypatch.setattr(_kde_blocks, "_FUSED", False)  # torch and numpy blocks everywhere
    threads_before = torch.get_num_threads()
    sums = {}
    for use in (True, False):
        monkeypatch.setattr(_kde_blocks, "_USE_TORCH", use)
        assert (_kde_blocks.choose_engine(1e9, 2)[0] is torch) == use
        sums[use] = _kde.log_kernel_sum_pruned(y, x, H, threads=2)
    assert np.abs(sums[True] - sums[False]).max() <= 1e-12
    assert torch.get_num_threads() == threads_before  # the workers' setting is undone
    # torch not importable: numpy's exp, the same sums
    monkeypatch.setattr(_kde_blocks, "_USE_TORCH", True)
    monkeypatch.setitem(sys.modules, "torch", None)
    assert _kde_blocks.choose_engine(1e9, 2)[0] is None
    assert np.array_equal(_kde.log_kernel_sum_pruned(y, x, H, threads=2), sums[False])


def test_threads_argument_and_environment(monkeypatch):
    x = realistic()[::2]
    h1, h2 = quests.entropy(x, H, threads=1), quests.entropy(x, H, threads=2)
    assert abs(h1 - h2) <= 1e-12
    d1 = quests.delta_entropy(x[:40], x, H, threads=1)
    assert np.abs(quests.delta_entropy(x[:40], x, H, threads=2) - d1).max() <= 1e-12
    with pytest.raises(ValueError, match="threads"):
        quests.entropy(x, H, threads=0)
    monkeypatch.setenv("PFD_THREADS", "3")
    assert _kde_blocks._default_threads() == 3
    monkeypatch.delenv("PFD_THREADS")
    assert _kde_blocks._default_threads() == min(2, cpu_count())
    monkeypatch.setenv("PFD_THREADS", "two")
    with pytest.warns(UserWarning, match="PFD_THREADS"):
        assert _kde_blocks._default_threads() == min(2, cpu_count())


def fused_or_skip():
    lib = _kde_blocks.fused_kernels()
    if lib is None:
        pytest.skip("the fused kernels are not built here (or the CPU lacks AVX2/FMA)")
    return lib


@pytest.mark.parametrize("fused", [False, True])
def test_cells_visit_only_the_pairs_that_can_matter(small_blocks, monkeypatch, fused):
    """dH with fewer rows than points: on six tight clusters ~40 h apart, the cells of x visit
    little more than the pairs within a cluster (1/6 of all), and the sums stay exact."""
    rng = np.random.default_rng(7)
    centres = rng.normal(scale=40 * H, size=(6, 8))
    x = centres[np.arange(1200) % 6] + rng.normal(scale=2 * H, size=(1200, 8))
    y = centres[np.arange(300) % 6] + rng.normal(scale=2 * H, size=(300, 8))
    visited = []
    sums = _kde_blocks.BlockGather.sums

    def counting(self, rows, cols, col_sums=False, self_block=False):
        out = sums(self, rows, cols, col_sums, self_block)
        visited.append(len(out[0]) * len(range(*cols.indices(self.right.shape[0]))))
        return out

    monkeypatch.setattr(_kde_blocks.BlockGather, "sums", counting)
    if fused:
        lib = fused_or_skip()

        class Counting:  # the library, counting the pairs of each call (8 per panel)
            pfd_pack_cell, pfd_centre_dists = lib.pfd_pack_cell, lib.pfd_centre_dists

            @staticmethod
            def pfd_block_sums(*args):
                visited.append(args[3] * args[5] * 8)
                lib.pfd_block_sums(*args)

        monkeypatch.setattr(_kde_blocks, "_FUSED_LIB", [Counting])
    else:
        monkeypatch.setattr(_kde_blocks, "_FUSED", False)
    fast = _kde.log_kernel_sum_pruned(y, x, H)
    lower_bounds = len(y) * _kde._SAMPLE  # the sums over the sample come first
    assert lower_bounds < sum(visited) - lower_bounds < 0.25 * len(x) * len(y)
    exact = _kde.log_kernel_sum_blocked(y, x, H)  # within the contract: REL_TOL + round-off
    np.testing.assert_allclose(fast, exact, rtol=0, atol=_kde_blocks.REL_TOL + 1e-12)


@pytest.mark.parametrize(
    "case", ["H", "dH pruned, few rows", "dH pruned, few rows, 3 dims", "dH pruned, many rows"]
)
def test_fused_kernels_match_the_torch_and_numpy_blocks(small_blocks, monkeypatch, case):
    """The compiled kernels (packed panels, 4-row tiles and their remainders, padded panels,
    the floor below which a panel is skipped, column sums for H) give the blocks' sums, and
    the oracle's."""
    fused_or_skip()
    y, x = kernel_case(case.removesuffix(", 3 dims"), monkeypatch)
    if case.endswith("3 dims"):  # d + 2 = 5 columns: nothing is a multiple of 4 or 8
        y, x = y[:, :3], x[:, :3]
    for threads in (1, 2):
        fast = _kde.log_kernel_sum_pruned(y, x, H, threads=threads)
        monkeypatch.setattr(_kde_blocks, "_FUSED", False)
        for use_torch in (True, False):
            monkeypatch.setattr(_kde_blocks, "_USE_TORCH", use_torch)
            blocks = _kde.log_kernel_sum_pruned(y, x, H, threads=threads)
            assert np.abs(fast - blocks).max() <= 1e-12
        monkeypatch.setattr(_kde_blocks, "_FUSED", None)
    np.testing.assert_allclose(fast, _kde.log_kernel_sum_blocked(y, x, H), rtol=1e-12, atol=1e-10)


def test_fused_exp_is_exp_to_round_off():
    lib = fused_or_skip()
    x = np.concatenate([-np.linspace(0.0, 708.0, 1_000_001), [-1e-300, -700.123456789]])
    out = np.empty_like(x)
    lib.pfd_exp(x.ctypes.data, out.ctypes.data, len(x))
    ref = np.exp(x)
    assert np.abs(out - ref).max() <= 3e-16 * ref.max()  # absolute near exp(0) = 1
    assert (np.abs(out - ref) <= 2.5e-16 * ref).all()  # relative everywhere: ~1 ulp
    far = -np.array([708.0001, 745.0, 746.0, 1e4, np.inf])  # flushed to 0 below e^-708
    lib.pfd_exp(far.ctypes.data, out[:5].ctypes.data, 5)
    assert (out[:5] == 0.0).all()


def test_the_fused_kernels_are_built_where_they_can_be():
    """On x86-64 Linux with AVX2 and FMA, the install (README) builds and loads the kernels."""
    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    if not ({"avx2", "fma"} <= set(flags.split()) and sys.platform == "linux"):
        pytest.skip("not an x86-64 Linux machine with AVX2 and FMA")
    assert _kde_blocks.fused_kernels() is not None


def test_use_fused_kernels_switches_the_engine(monkeypatch):
    """The public switch: False sends every sum through the numpy/torch blocks, True back to
    the fused kernels where they are built; the entropy is the same within the contract."""
    monkeypatch.setattr(_kde_blocks, "_FUSED", _kde_blocks._FUSED)  # restored after the test
    available = _kde_blocks.fused_kernels() is not None
    assert quests.use_fused_kernels() == available  # None: no change, just the state
    x = realistic()[:400]
    with_default = quests.entropy(x, H)
    assert quests.use_fused_kernels(False) is False
    assert _kde_blocks.fused_kernels() is None
    without = quests.entropy(x, H)
    assert quests.use_fused_kernels() is False  # the choice holds
    assert quests.use_fused_kernels(True) == available
    assert abs(with_default - without) <= 1e-10 * abs(without)
    assert quests.entropy(x, H) == with_default


@pytest.mark.parametrize("dim", [1, 3, 63])
def test_pruned_engines_match_the_oracle_on_clustered_data(small_blocks, dim):
    """Every engine (H; dH with few rows, fewer rows than points, more rows than points) on
    tight clusters a few h wide and far apart, in few and many dimensions."""
    rng = np.random.default_rng(dim)
    centres = rng.normal(scale=40 * H, size=(6, dim))
    x = centres[rng.integers(0, 6, 900)] + rng.normal(scale=2 * H, size=(900, dim))
    y = centres[rng.integers(0, 6, 400)] + rng.normal(scale=3 * H, size=(400, dim))
    assert abs(quests.entropy(x, H) - quests.entropy_bruteforce(x, H)) <= 1e-10
    for rows, points in [(y[:40], x), (y, x), (x, y)]:
        fast = quests.delta_entropy(rows, points, H)
        slow = quests.delta_entropy_bruteforce(rows, points, H)
        assert np.array_equal(np.isfinite(fast), np.isfinite(slow))
        ok = np.isfinite(slow)
        # dH reaches ~300 here (clusters ~300 h apart): round-off of the exponents, ~1e-12 of them
        np.testing.assert_allclose(fast[ok], slow[ok], rtol=1e-12, atol=1e-10)

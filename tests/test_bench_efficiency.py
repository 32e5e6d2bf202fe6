"""Smoke tests of bench/selection_efficiency.py and bench/data_efficiency.py."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from conftest import load_bench


@pytest.fixture(scope="module")
def sel():
    return load_bench("selection_efficiency")


@pytest.fixture(scope="module")
def data():
    load_bench("selection_efficiency")  # data_efficiency imports it by name
    return load_bench("data_efficiency")


def test_frames_to_match_interpolates_in_log_n(sel):
    ladder = (10, 20, 40)
    assert sel.frames_to_match(ladder, [0.5, 0.3, 0.1], 0.6) == 10
    # 0.2 is half-way from 0.3 (N=20) to 0.1 (N=40): N = sqrt(20 * 40)
    assert sel.frames_to_match(ladder, [0.5, 0.3, 0.1], 0.2) == pytest.approx(np.sqrt(800))
    assert sel.frames_to_match(ladder, [0.5, 0.3, 0.1], 0.05) is None
    assert sel._at(ladder, [0.5, 0.3, 0.1], np.sqrt(800)) == pytest.approx(0.2)
    assert sel._at(ladder, [0.5, 0.3, 0.1], 80) is None


def test_selection_quality_of_a_small_pool(sel):
    rng = np.random.default_rng(0)
    pool = []
    for k in range(12):
        a = bulk("Si", "diamond", a=5.43, cubic=True)
        a.positions += rng.normal(0, 0.02 + 0.02 * (k % 4), a.positions.shape)
        a.info["phase"] = "diamond" if k % 2 else "hot"
        pool.append(a)
    init = [bulk("Si", "diamond", a=5.43, cubic=True)]
    q = sel.quality(pool, init, (2, 4), {"given": [3, 1, 2, 0]})
    table = q["table"]
    assert table["given"]["atoms"] == [16, 32]
    assert table["pool"] == {"H": pytest.approx(table["pool"]["H"]), "frames": 12, "atoms": 96}
    for name in ("entropy chunk 1 sum", "entropy chunk 10 max", "random 4"):
        h = table[name]["H"]
        assert len(h) == 2 and all(np.isfinite(h))
        assert sum(table[name]["phases"].values()) == 4
    # each order is one ranking: its first 2 frames are the N=2 set
    assert len(set(q["orders"]["random 0"])) == 4
    assert q["orders"]["random 0"] != q["orders"]["random 1"]


def test_data_efficiency_ratio(data):
    ladder = (4, 8, 16)
    reached = data.ratio(ladder, [0.3, 0.2, 0.1], [0.6, 0.3, 0.2], 4)
    assert reached["ratio"] == pytest.approx(2.0) and reached["ratio_lower_bound"] is None
    never = data.ratio(ladder, [0.3, 0.2, 0.1], [1.0, 0.5, 0.4], 4)
    assert never["ratio"] is None and never["ratio_lower_bound"] == 4


def test_scratch_checkpoint_has_fresh_weights_and_kept_statistics(data, tmp_path):
    pytest.importorskip("sevenn")
    import torch

    from pfd_ase.calculators import PFDCalculator
    from pfd_ase.calculators.sevennet import read_sevennet_checkpoint, sevennet_pretrained_path

    path = data.scratch_checkpoint(tmp_path / "scratch.pth")
    fresh = read_sevennet_checkpoint(path)["model_state_dict"]
    pre = read_sevennet_checkpoint(sevennet_pretrained_path())["model_state_dict"]
    assert set(fresh) == set(pre)
    weight = "reduce_hidden_to_energy.linear.weight"
    assert not torch.allclose(fresh[weight], pre[weight])
    for kept in ("rescale_atomic_energy.shift", "1_convolution.denominator"):
        assert torch.equal(fresh[kept], pre[kept])
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = PFDCalculator(str(path))
    assert np.isfinite(atoms.get_potential_energy()) and np.isfinite(atoms.get_forces()).all()

"""Smoke test of bench/scale.py: one size measured with a tiny Si student."""

from __future__ import annotations

import pytest

from conftest import load_bench, si_frames


@pytest.fixture(scope="module")
def bench():
    return load_bench("scale")


@pytest.fixture(scope="module")
def si_student(tmp_path_factory):
    pytest.importorskip("deepmd")
    from pfd_ase.data import to_deepmd
    from pfd_ase.training import deepmd as dp

    work = tmp_path_factory.mktemp("scale_student")
    systems = to_deepmd(si_frames(2, seed=0), work / "data", ["Si"])
    dp.train(dp.student_input(["Si"], systems, steps=1, seed=1), work / "train", progress=False)
    return str(dp.freeze(work / "train", work / "student.pth"))


def test_one_size(bench, si_student):
    import torch

    threads = torch.get_num_threads()  # measure() sets the process's threads
    try:
        row = bench.measure(si_student, 64, repeats=1, native=True, md_steps=2, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert row["atoms"] == 64 and row["pieces"] == 1
    for key in ("calc_s", "build_s", "floor_s", "native_s", "md_steps_per_s", "peak_rss_GB"):
        assert row[key] > 0, key
    assert row["md_rebuilds"] == 0  # 2 fs of MD from rest: nobody leaves half the skin

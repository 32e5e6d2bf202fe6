"""Smoke test of bench/speed.py: the models of a run, the cells, one measurement."""

from __future__ import annotations

import json

import pytest

from conftest import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("speed")


def test_models_of_a_run(bench, tmp_path):
    train = tmp_path / "distill" / "iter.001" / "train"
    train.mkdir(parents=True)
    for name in ("model.pth", "model_compressed.pth"):
        (train / name).write_bytes(b"")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "summary.json").write_text(json.dumps({"base_model": "7net-0"}))
    summary = {"teacher": "teacher.pth", "student": str(train / "model_compressed.pth")}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert bench.models_of_run(tmp_path) == {
        "base": "7net-0",
        "teacher": "teacher.pth",
        "student": str(train / "model.pth"),
        "compressed": str(train / "model_compressed.pth"),
    }


def test_cells_are_cubic_diamond_supercells(bench):
    assert len(bench._cell(64)) == 64 and len(bench._cell(4096)) == 4096
    with pytest.raises(ValueError, match="8 k"):
        bench._cell(100)


def test_one_measurement(bench):
    pytest.importorskip("sevenn")
    import torch

    threads = torch.get_num_threads()  # measure() sets the process's threads
    try:
        row = bench.measure("7net-0", 64, repeats=1, md_steps=1, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert row["ms_per_call"] > 0 and row["md_steps_per_s"] > 0 and row["peak_rss_GB"] > 0

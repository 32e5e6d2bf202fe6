"""Run state keyed by step inputs, the typed stage configuration and the named steps
(fast: no deepmd-kit training)."""

from __future__ import annotations

import json
import logging

import pytest

from pfd_ase.workflow.state import RunState, changed_inputs, inputs_hash, run_status


# --------------------------------------------------------------------------- run_step
def test_run_step_reuses_a_record_only_for_the_same_inputs(tmp_path, caplog):
    state = RunState(tmp_path)
    calls = []
    out = tmp_path / "step_out"

    def work(tag):
        def func():
            calls.append(tag)
            out.mkdir(exist_ok=True)
            (out / f"{tag}.txt").write_text(tag)
            return {"tag": tag}

        return func

    first = state.run_step("a", work("1"), inputs={"x": 1, "model": "m1"}, outputs=[out])
    assert first["inputs"] == {"x": 1, "model": "m1"}
    assert first["inputs_hash"] == inputs_hash({"model": "m1", "x": 1})
    again = state.run_step("a", work("2"), inputs={"model": "m1", "x": 1}, outputs=[out])
    assert again == first and calls == ["1"]
    with caplog.at_level(logging.WARNING, logger="pfd_ase.workflow"):
        third = state.run_step("a", work("3"), inputs={"x": 2, "model": "m1"}, outputs=[out])
    assert third["tag"] == "3" and calls == ["1", "3"]
    assert "step a: inputs changed" in caplog.text and "x: 1 -> 2" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["3.txt"]  # old outputs removed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"]["a"]["inputs"] == {"x": 2, "model": "m1"}
    # no inputs: any record is reused, as before
    assert state.run_step("a", work("4"))["tag"] == "3"


def test_an_interrupted_step_with_other_inputs_starts_afresh(tmp_path, caplog):
    state = RunState(tmp_path)
    out = tmp_path / "partial"

    def killed():
        out.mkdir()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        state.run_step("b", killed, inputs={"n": 1}, outputs=[out])
    assert out.exists() and not state.done("b")
    with caplog.at_level(logging.WARNING, logger="pfd_ase.workflow"):
        rec = state.run_step("b", lambda: {"exists": out.exists()}, inputs={"n": 2}, outputs=[out])
    assert rec["exists"] is False and "since it interrupted" in caplog.text
    assert not state.started_path("b").exists()
    # the same inputs resume with the partial outputs
    with pytest.raises(KeyboardInterrupt):
        state.run_step("c", killed, inputs={"n": 1}, outputs=[out])
    rec = state.run_step("c", lambda: {"exists": out.exists()}, inputs={"n": 1}, outputs=[out])
    assert rec["exists"] is True


def test_old_records_without_inputs_are_adopted(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "init.label.json").write_text(json.dumps({"dataset_size": 8}))
    state = RunState(tmp_path)
    rec = state.run_step("init.label", lambda: {"dataset_size": 0}, inputs={"seed": 1})
    assert rec["dataset_size"] == 8 and rec["inputs_adopted"] is True
    rec = state.run_step("init.label", lambda: {"dataset_size": 0}, inputs={"seed": 2})
    assert rec["dataset_size"] == 0


def test_changed_inputs_and_run_order(tmp_path):
    assert changed_inputs({"a": {"b": 1, "c": [1]}, "d": 0}, {"a": {"b": 2, "c": [1]}}) == [
        "a.b",
        "d",
    ]
    state = RunState(tmp_path)
    for key in ("init.train", "ft.s1.000.explore", "distill.000.explore", "ft.s1.000.select"):
        state.run_step(key, dict)
    assert run_status(tmp_path)["finished_steps"] == [
        "init.train",
        "ft.s1.000.explore",
        "distill.000.explore",
        "ft.s1.000.select",
    ]

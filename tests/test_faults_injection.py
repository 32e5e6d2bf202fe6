"""Fault injection over a whole run (issue 16.1): the instrument of ``bench/faults.py`` and,
in the slow suite, a small campaign (SIGKILL in labelling, training and freezing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import load_bench, requires_deepmd


@pytest.fixture(scope="module")
def faults():
    """``bench/faults.py`` as a module."""
    return load_bench("faults")


def _journal(path, *events):
    with open(path, "w") as fh:
        for event, task in events:
            fh.write(json.dumps({"event": event, "task": task, "frame": "f" + task}) + "\n")


def test_journal_tells_interrupted_from_repeated_calls(faults, tmp_path):
    path = tmp_path / "journal.jsonl"
    # a killed during its calculation, then done; b done; c done, then computed again
    _journal(path, ("start", "a"), ("start", "a"), ("end", "a"), ("start", "b"), ("end", "b"))
    figures = faults.journal_figures(path)
    assert (figures["started"], figures["finished"]) == (3, 2)
    assert (figures["interrupted"], figures["repeated"]) == (1, 0)
    _journal(path, ("start", "c"), ("end", "c"), ("start", "c"), ("end", "c"))
    figures = faults.journal_figures(path)
    assert (figures["interrupted"], figures["repeated"]) == (0, 1)
    assert figures["ended"] == {("c", "fc")}


def test_journal_counts_each_labelling_calculation_once(faults, tmp_path):
    from pfd_ase.data import write_frames
    from pfd_ase.label import label_frames
    from pfd_ase.materials import labelled_silicon

    frames = [a.copy() for a in labelled_silicon(3, seed=5, labeler="sw")]
    run, journal = tmp_path / "run", tmp_path / "journal.jsonl"
    with faults.journal_labeler_calls(journal, run):
        result = label_frames(frames, "sw", run / "init" / "label")
        write_frames(run / "data" / "labelled.extxyz", result.frames)
        label_frames(frames, "sw", run / "init" / "label")  # a resume: every task reused
    figures = faults.journal_figures(journal)
    assert (figures["started"], figures["finished"], figures["repeated"]) == (3, 3, 0)
    assert {task for task, _ in figures["ended"]} == {f"init/label/task.{i:06d}" for i in range(3)}
    assert faults.lost_frames(run, figures["ended"]) == []
    # a finished result that a rerun does not find is computed again: a repeat, and the
    # frame left out of the dataset is lost
    (run / "init" / "label" / "task.000001" / "labelled.extxyz").unlink()
    with faults.journal_labeler_calls(journal, run):
        label_frames(frames, "sw", run / "init" / "label")
    assert faults.journal_figures(journal)["repeated"] == 1
    write_frames(run / "data" / "labelled.extxyz", result.frames[:2])
    assert faults.lost_frames(run, figures["ended"]) == ["init/label/task.000002"]
    import pfd_ase.label

    assert pfd_ase.label._label.__name__ == "_label"  # the journal is gone again


def test_survivors_finds_a_child_left_by_a_killed_parent(faults):
    script = (
        "import subprocess, time\n"
        "from pfd_ase import processes\n"
        "plain = subprocess.Popen(['sleep', '60'])\n"
        "guarded = processes.popen(['sleep', '60'])\n"
        "print(plain.pid, guarded.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    plain, guarded = map(int, parent.stdout.readline().split())
    try:
        seen = faults.run_processes(parent.pid)
        assert {parent.pid, plain, guarded} <= set(seen)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        left = faults.survivors(seen, parent.pid, grace_s=2.0)
        assert [p["pid"] for p in left] == [plain]  # the guarded child died with its parent
        assert "sleep 60" in left[0]["cmdline"]
    finally:
        for pid in (plain, guarded):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        parent.stdout.close()


def test_kill_plan_reaches_every_kind_and_follows_the_seed(faults):
    Segment = faults.Segment
    timeline = faults.segments(
        [(0.0, None, None), (1.0, "init.label", None), (3.0, "init.train", None)]
        + [(3.5, "init.train", "train"), (9.0, "init.train", "freeze"), (11.0, "ft.s.000.md", None)]
        + [(14.0, "ft.s.000.select", None), (14.5, "ft.s.000.label", None)]
        + [(16.0, "distill.000.train", "train"), (30.0, "distill.000.train", "compress")]
        + [(33.0, "validate.phonons.PF", None), (40.0, None, None)]
    )
    assert timeline[4] == Segment("init.train", "freeze", 9.0, 11.0)
    plan = faults.plan_kills(timeline, 12, seed=4)
    assert len(plan) == 12 and {t.kind for t in plan} == set(faults.KINDS)
    assert [t.t_ref for t in plan] == sorted(t.t_ref for t in plan)
    assert all(t.step is not None for t in plan)
    # in a training, the moment is a fraction of its steps
    assert all((t.progress is not None) == (t.sub == "train") for t in plan)
    assert all(0 <= t.progress <= 1 for t in plan if t.progress is not None)
    for t in plan:
        seg = next(s for s in timeline if s.step == t.step and s.sub == t.sub and s.t0 <= t.t_ref)
        start = seg.t0 if t.sub else min(s.t0 for s in timeline if s.step == t.step)
        assert t.offset_s == pytest.approx(t.t_ref - start) and t.offset_s >= 0
    assert plan == faults.plan_kills(timeline, 12, seed=4)
    assert plan != faults.plan_kills(timeline, 12, seed=5)
    with pytest.raises(ValueError, match="kinds"):
        faults.plan_kills(timeline, 3, seed=4)
    no_selection = [s for s in timeline if s.kind != "selection"]
    with pytest.raises(ValueError, match="no selection"):
        faults.plan_kills(no_selection, 12, seed=4)
    # a selection too short to be sampled is killed from inside, as its work begins
    short = {"ft.s.000.select": 14.2, "ft.s.000.label": 14.3}
    plan = faults.plan_kills(no_selection, 12, seed=4, short_steps=short)
    inside = [t for t in plan if t.in_process]
    assert [(t.step, t.kind, t.offset_s, t.t_ref) for t in inside] == [
        ("ft.s.000.select", "selection", 0.0, 14.2)
    ]
    assert {t.kind for t in plan} == set(faults.KINDS)


def test_training_progress_is_read_from_the_running_training(faults, tmp_path):
    (tmp_path / "input.json").write_text(json.dumps({"training": {"numb_steps": 200}}))
    (tmp_path / "lcurve.out").write_text("#  step  rmse_trn\n      0  1.0\n     50  0.5\n")
    fake = [sys.executable, "-c", "import time; time.sleep(30)", "deepmd", "--pt", "train"]
    proc = subprocess.Popen(fake, cwd=tmp_path)
    deadline = time.monotonic() + 10
    while "deepmd" not in faults._cmdline(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the child has exec'd (its command line is pytest's before)
    try:
        assert faults._training_progress([os.getpid()]) is None  # not a training
        assert faults._training_progress([os.getpid(), proc.pid]) == 0.25
    finally:
        proc.kill()
        proc.wait()


SELF_KILL = """
import sys, time
sys.path.insert(0, {bench!r})
import faults
from pfd_ase.workflow.state import RunState
faults._kill_self_in("slow", {offset})
state = RunState({run!r})
state.run_step("before", lambda: {{}})
state.run_step("slow", lambda: time.sleep({work}) or {{}}, {{"n": 1}})
state.run_step("after", lambda: {{}})
"""


@pytest.mark.parametrize("offset, work", [(0.3, 5.0), (2.0, 0.1)])
def test_a_step_kills_itself_at_its_offset_or_end(tmp_path, offset, work):
    """In the step at ``offset`` s, or as its work ends when that comes first: never
    recorded as finished, never in a later step."""
    bench = str(Path(__file__).resolve().parents[1] / "bench")
    script = SELF_KILL.format(bench=bench, offset=offset, work=work, run=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = tmp_path / "state"
    assert (state / "before.json").exists() and (state / "started" / "slow.json").exists()
    assert not (state / "slow.json").exists() and not (state / "after.json").exists()


def test_short_steps_come_from_the_step_records(faults, tmp_path):
    from pfd_ase.workflow.state import RunState

    state = RunState(tmp_path)
    t0 = time.time()
    state.run_step("ft.s.000.select", lambda: {}, {"n": 1})
    state.run_step("ft.s.000.md", lambda: time.sleep(0.3) or {}, {"n": 1})
    short = faults.short_steps(tmp_path, t0)
    assert list(short) == ["ft.s.000.select"] and 0 <= short["ft.s.000.select"] < 0.2


def test_step_kinds(faults):
    kind = faults.step_kind
    assert kind("ft.stage1.000.md", None) == kind("distill.000.md", None) == "exploration"
    assert kind("init.label", None) == kind("ft.stage3.000.label", None) == "labelling"
    assert kind("init.train", "train") == kind("ft.stage1.000.train", None) == "training"
    assert kind("init.train", "freeze") == kind("distill.000.train", "compress")
    assert kind("distill.000.train", "train") == kind("distill.000.explore", None)
    assert kind("distill.000.explore", None) == "distillation"
    assert kind("validate.test_label", None) == kind("validation", None) == "validation"
    assert kind(None, None) == "between steps"


@pytest.mark.parametrize("command", ["freeze", "compress"])
def test_a_model_write_cut_short_is_never_taken_for_a_model(tmp_path, monkeypatch, command):
    """A run killed while deepmd-kit writes a frozen or compressed model leaves no file under
    the model's name, so a rerun writes it again instead of reusing a truncated one."""
    from pfd_ase.training import deepmd as dp

    (tmp_path / "model.ckpt.pt").write_bytes(b"checkpoint")
    (tmp_path / "model.pth").write_bytes(b"frozen")

    def write(content, fail):
        def run_dp(args, workdir, **kwargs):  # compress: a deepmd-kit subprocess
            Path(args[args.index("-o") + 1]).write_bytes(content)
            if fail:
                raise RuntimeError("deepmd-kit failed: killed while writing")

        def dp_freeze(model, output, head):  # freeze: deepmd-kit's in this process
            Path(output).write_bytes(content)
            if fail:
                raise OSError("killed while writing")

        return dp_freeze if command == "freeze" else run_dp

    def make():
        if command == "freeze":
            return dp.freeze(tmp_path, "out.pth")
        return dp.compress(tmp_path / "model.pth", tmp_path / "out.pth")

    target = "_dp_freeze" if command == "freeze" else "run_dp"
    monkeypatch.setattr(dp, target, write(b"PK half a model", fail=True))
    with pytest.raises(RuntimeError, match="killed"):
        make()
    assert not (tmp_path / "out.pth").exists()
    monkeypatch.setattr(dp, target, write(b"PK the whole model", fail=False))
    assert make().read_bytes() == b"PK the whole model"
    assert [p.name for p in tmp_path.glob("*out*")] == ["out.pth"]


@pytest.mark.slow
@requires_deepmd
def test_sigkill_in_labelling_training_and_freezing_loses_and_repeats_nothing(faults, tmp_path):
    """The silicon recipe's fastest form (quick form of bench/faults.py), its main process
    SIGKILLed once in labelling, in training, while freezing and in selection, rerun until it
    finishes."""
    kinds = ("labelling", "training", "freezing/compression", "selection")
    result = faults.campaign(tmp_path, form="quick", n_kills=4, seed=1, kinds=kinds)
    print(json.dumps({k: v for k, v in result.items() if k != "dataset"}, indent=1))
    assert result["kills"] == 4 and result["resumes"] == 4
    # every kind was reached; selection (~20 ms) is killed from inside the step
    assert sorted(k["kind"] for k in result["kill_log"]) == sorted(kinds)
    assert "selection" in [k["kind"] for k in result["kill_log"] if k.get("in_process")]
    assert result["completed"]
    assert result["frames_lost"] == 0
    assert result["repeated_labeler_calls"] == 0
    assert result["survivors"] == 0 and result["processes_left_at_end"] == 0
    assert all(k["processes"] >= 1 for k in result["kill_log"])
    # a deepmd-kit subprocess was running at some kill: the kill reached a process tree
    assert any(k["processes"] > 1 for k in result["kill_log"])
    calls = result["labeler_calls"]
    assert calls["faulted"]["finished"] >= calls["reference"]["finished"] > 0
    # the initial labelling depends on nothing a kill can change: frame for frame the same
    assert result["dataset"]["steps"]["init.label"]["identical"]
    assert result["dataset"]["steps"]["init.label"]["n_reference"] > 0

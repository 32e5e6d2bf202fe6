"""Injected labeler failures (issue 16.2): a GPAW SCF that does not converge, a crashed or
truncated VASP run, a labeler that hangs past the time limit. Each is recorded with its
cause, the other frames are labelled, a rerun retries failures only when asked, and the
status and the report count them."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import ase
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT

from pfd_ase.label import FAILURE_KINDS, failure_kind, label_frames
from pfd_ase.tasks import TaskTimeoutError, time_limit

SPAWN = multiprocessing.get_context("spawn")
VASP_DATA = Path(ase.__file__).parent / "test" / "testdata" / "vasp"
VASP_ENV = ("ASE_VASP_COMMAND", "VASP_COMMAND", "VASP_SCRIPT", "VASP_PP_PATH")

needs_gpaw = pytest.mark.skipif(importlib.util.find_spec("gpaw") is None, reason="gpaw missing")
needs_vasp_data = pytest.mark.skipif(
    not (VASP_DATA / "vasprun_pstress.xml").exists(), reason="ase wheel without VASP test data"
)
needs_sigalrm = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no SIGALRM")


def cu_frames(n: int, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        atoms.info["pfd_frame_id"] = f"cu-{i:02d}"
        frames.append(atoms)
    return frames


def _calls(log: str | Path) -> list[str]:
    path = Path(log)
    return path.read_text().split() if path.exists() else []


class TroubledEMT(EMT):
    """EMT with injected trouble, by frame id (its end): ``hang`` sleeps ``sleep_s`` (a hung
    labeler), ``fail`` raises, only on the frame's first call when ``once``. Every call's
    frame id is logged to a file, so "first" holds across objects, runs and processes."""

    def __init__(
        self,
        log: str | Path,
        *,
        fail: tuple[str, ...] = (),
        hang: tuple[str, ...] = (),
        once: bool = True,
        sleep_s: float = 30.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.log, self.fail, self.hang = str(log), tuple(fail), tuple(hang)
        self.once, self.sleep_s = once, sleep_s

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        frame_id = str(atoms.info.get("pfd_frame_id"))
        seen = _calls(self.log).count(frame_id)
        with open(self.log, "a") as fh:
            fh.write(frame_id + "\n")
        if frame_id.endswith(self.hang) and self.hang:
            time.sleep(self.sleep_s)
        if frame_id.endswith(self.fail) and self.fail and (seen == 0 or not self.once):
            raise RuntimeError(f"labeler crashed on {frame_id}")
        super().calculate(atoms, properties, system_changes)


def _failure_on_disk(failure: dict) -> dict:
    return json.loads((Path(failure["task_dir"]) / "failure.json").read_text())


# --------------------------------------------------------------------------- GPAW


@needs_gpaw
def test_gpaw_scf_that_does_not_converge_is_recorded_with_its_cause(tmp_path):
    """Real GPAW on 2-atom Si, stopped after one SCF iteration (``maxiter=1``)."""
    overrides = {
        "mode": {"name": "pw", "ecut": 150.0},
        "kpts": {"size": (1, 1, 1), "gamma": True},
        "maxiter": 1,
    }
    frames = [bulk("Si", "diamond", a=5.43), bulk("Si", "diamond", a=5.50)]
    result = label_frames(frames, ("gpaw", overrides), tmp_path / "label")
    assert result.frames == [] and len(result.failures) == 2  # nothing dropped silently
    for failure in result.failures:
        assert failure["exception"] == "KohnShamConvergenceError"
        assert failure["kind"] == "scf-not-converged"
        assert "KohnShamConvergenceError" in failure["traceback"]
        assert _failure_on_disk(failure) == failure
        assert not (Path(failure["task_dir"]) / "labelled.extxyz").exists()


# --------------------------------------------------------------------------- VASP


@pytest.fixture
def fake_vasp(tmp_path, monkeypatch):
    """Fake POTCARs (as in test_labelers.py) and a maker of fake VASP executables."""
    for env in VASP_ENV:
        monkeypatch.delenv(env, raising=False)
    pp = tmp_path / "pp"
    for symbol in ("Si", "C"):
        potcar = pp / "potpaw_PBE" / symbol / "POTCAR"
        potcar.parent.mkdir(parents=True)
        potcar.write_text(f" PAW_PBE {symbol} test\n   LEXCH  = PE\n")
    monkeypatch.setenv("VASP_PP_PATH", str(pp))

    def script(name: str, body: str) -> str:
        path = tmp_path / "bin" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return str(path)

    return script


def test_crashed_and_truncated_vasp_runs_are_recorded_with_their_causes(tmp_path, fake_vasp):
    """ASE's real ``Vasp`` calculator running fake executables: one exits non-zero, one
    writes a truncated OUTCAR (and no vasprun.xml) and exits 0."""
    crash = fake_vasp(
        "vasp_crash", 'echo "forrtl: severe (174): SIGSEGV, segmentation fault" >&2\nexit 174\n'
    )
    truncated = fake_vasp(
        "vasp_truncated",
        "printf ' vasp.6.4.2 18Apr23 complex\\n POSCAR found :  1 types and  2 ions\\n'"
        " > OUTCAR\nexit 0\n",
    )
    frame = bulk("Si", "diamond", a=5.43)
    crashed = label_frames([frame], ("vasp", {"command": crash}), tmp_path / "crash").failures
    assert len(crashed) == 1
    assert crashed[0]["exception"] == "CalculationFailed"
    assert crashed[0]["kind"] == "calculator-crashed"
    assert "returned an error: 174" in crashed[0]["message"]
    assert "SIGSEGV" in crashed[0]["message"]  # VASP's stderr is kept
    assert _failure_on_disk(crashed[0]) == crashed[0]

    cut = label_frames([frame], ("vasp", {"command": truncated}), tmp_path / "cut").failures
    assert len(cut) == 1 and cut[0]["kind"] == "bad-output"
    assert cut[0]["exception"] == "FileNotFoundError" and "vasprun.xml" in cut[0]["message"]
    assert _failure_on_disk(cut[0]) == cut[0]


def test_truncated_vasprun_is_bad_output(tmp_path, fake_vasp):
    truncated = fake_vasp(
        "vasp_truncated_xml",
        "printf ' vasp.6.4.2\\n' > OUTCAR\n"
        "printf '<?xml version=\"1.0\"?>\\n<modeling>\\n <generator>\\n' > vasprun.xml\n",
    )
    frame = bulk("Si", "diamond", a=5.43)
    (failure,) = label_frames([frame], ("vasp", {"command": truncated}), tmp_path).failures
    assert failure["exception"] == "ReadError" and failure["kind"] == "bad-output"
    assert failure["cause"].startswith("ParseError")


def _c2_frame(shift: float = 0.0) -> Atoms:
    """The diamond-C cell of ASE's vasprun_pstress.xml."""
    atoms = Atoms(
        "C2",
        cell=[[0, 1.785, 1.785], [1.785, 0, 1.785], [1.785, 1.785, 0]],
        scaled_positions=[[0, 0, 0], [0.25, 0.25, 0.25 + shift]],
        pbc=True,
    )
    return atoms


@needs_vasp_data
def test_vasp_scf_not_converged_is_a_failure_and_the_other_frames_label(tmp_path, fake_vasp):
    """ASE's Vasp only sets ``converged = False`` when EDIFF was not reached in NELM steps;
    such labels are refused (recorded), the frames of converged runs are labelled."""
    xml = VASP_DATA / "vasprun_pstress.xml"
    unconverged = "------ aborting loop EDIFF was not reached (unconverged) ------"
    command = fake_vasp(
        "vasp_maybe",
        f"cp {xml} vasprun.xml\n"
        'case "$PWD" in\n'
        f"  *task.000001) echo '{unconverged}' > OUTCAR ;;\n"
        "  *task.000002) echo 'killed by the queue' >&2; exit 137 ;;\n"
        "  *) echo '------ aborting loop because EDIFF is reached ------' > OUTCAR ;;\n"
        "esac\n",
    )
    frames = [_c2_frame(), _c2_frame(0.01), _c2_frame(0.02), _c2_frame(0.03)]
    for i, atoms in enumerate(frames):
        atoms.info["pfd_frame_id"] = f"c-{i}"
    result = label_frames(frames, ("vasp", {"command": command}), tmp_path / "label")
    assert [a.info["pfd_frame_id"] for a in result.frames] == ["c-0", "c-3"]
    kinds = {f["frame_id"]: (f["kind"], f["exception"]) for f in result.failures}
    assert kinds == {
        "c-1": ("scf-not-converged", "SCFNotConvergedError"),
        "c-2": ("calculator-crashed", "CalculationFailed"),
    }


# --------------------------------------------------------------------------- timeouts


@needs_sigalrm
def test_a_hung_labeler_is_stopped_at_the_time_limit_and_the_rest_labelled(tmp_path):
    log = tmp_path / "calls.log"
    frames = cu_frames(3)
    handler = signal.getsignal(signal.SIGALRM)
    labeler = TroubledEMT(log, hang=("cu-01",))
    start = time.monotonic()
    result = label_frames(frames, labeler, tmp_path / "label", timeout_s=0.5, retries=2)
    elapsed = time.monotonic() - start
    assert elapsed < 3.0  # not the 30 s the labeler would sleep
    assert [a.info["pfd_frame_id"] for a in result.frames] == ["cu-00", "cu-02"]
    (failure,) = result.failures
    assert failure["frame_id"] == "cu-01" and failure["kind"] == "timeout"
    assert failure["exception"] == "TaskTimeoutError" and "0.5 s" in failure["message"]
    assert failure["attempts"] == 1 and _calls(log).count("cu-01") == 1  # not retried
    assert _failure_on_disk(failure) == failure
    # the timer and the handler are as they were
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) == handler
    # the frames within the limit are unaffected by it
    plain = label_frames(cu_frames(3)[::2], "emt", tmp_path / "plain")
    for a, b in zip(result.frames, plain.frames, strict=True):
        assert a.get_potential_energy() == b.get_potential_energy()


@needs_sigalrm
def test_timeout_in_a_process_pool_worker(tmp_path):
    log = tmp_path / "calls.log"
    labeler = TroubledEMT(log, hang=("cu-00",))
    with ProcessPoolExecutor(1, mp_context=SPAWN) as pool:
        start = time.monotonic()
        # 2 s: room for a slow machine's first calls in a fresh worker (0.5 s was not, in CI)
        result = label_frames(
            cu_frames(2), labeler, tmp_path / "label", executor=pool, timeout_s=2.0
        )
        elapsed = time.monotonic() - start
    assert elapsed < 15.0  # the worker's start-up, plus 2 s: not 30 s
    assert [a.info["pfd_frame_id"] for a in result.frames] == ["cu-01"]
    assert [f["kind"] for f in result.failures] == ["timeout"]


def test_outside_the_main_thread_the_limit_is_not_set_and_says_so(tmp_path):
    log = tmp_path / "calls.log"
    labeler = TroubledEMT(log, hang=("cu-00",), sleep_s=0.3)
    with ThreadPoolExecutor(1) as pool, pytest.warns(RuntimeWarning, match="no time limit"):
        result = label_frames(cu_frames(1), labeler, tmp_path, executor=pool, timeout_s=0.1)
    assert result.failures == [] and len(result.frames) == 1


@needs_sigalrm
def test_time_limit_restores_an_outer_timer():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.8)
        with pytest.raises(TaskTimeoutError, match="the nap took longer than"):
            with time_limit(0.1, "the nap"):
                time.sleep(2.0)
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0.0 < left < 0.8  # re-armed with what was left of it
        time.sleep(left + 0.2)
        assert fired == [True]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    with time_limit(None) as enforced:
        assert enforced is False
    with pytest.raises(ValueError, match="timeout_s"):
        label_frames(cu_frames(1), "emt", "unused", timeout_s=0)


@needs_sigalrm
def test_a_hung_vasp_run_is_killed_at_the_time_limit(tmp_path, fake_vasp):
    """Through the watchdog of :mod:`pfd_ase.processes` the program ends with the shell
    that ASE's ``subprocess.run`` kills when the time is up."""
    hang = fake_vasp("vasp_hang", "echo $$ > vasp.pid\nexec sleep 30\n")
    command = f"exec {sys.executable} -m pfd_ase.processes -- {hang}"
    start = time.monotonic()
    (failure,) = label_frames(
        [bulk("Si", "diamond", a=5.43)], ("vasp", {"command": command}), tmp_path, timeout_s=2
    ).failures
    assert time.monotonic() - start < 6.0
    assert failure["kind"] == "timeout"
    pid = int((tmp_path / "task.000000" / "vasp.pid").read_text())
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# --------------------------------------------------------------------------- kinds


def test_failure_kinds_of_chained_and_lost_tasks(tmp_path):
    from ase.calculators.calculator import (
        CalculationFailed,
        CalculatorSetupError,
        ReadError,
        SCFError,
    )

    from pfd_ase.label import NotSinglePointError

    from conftest import LosingExecutor

    def raised(exc: BaseException, cause: BaseException | None = None) -> BaseException:
        try:
            raise exc from cause
        except BaseException as caught:  # noqa: BLE001
            return caught

    assert failure_kind(raised(RuntimeError("x"), TaskTimeoutError("t"))) == "timeout"
    assert failure_kind(raised(RuntimeError("x"), ReadError("r"))) == "bad-output"
    assert failure_kind(raised(CalculationFailed("exit 1"))) == "calculator-crashed"
    assert failure_kind(raised(SCFError("NELM reached"))) == "scf-not-converged"
    assert failure_kind(raised(CalculatorSetupError("no POTCAR"))) == "setup"
    assert failure_kind(raised(NotSinglePointError("relaxed"))) == "not-single-point"
    assert failure_kind(raised(ValueError("anything"))) == "error"
    assert set(FAILURE_KINDS) >= {"timeout", "scf-not-converged", "calculator-crashed"}

    lost = LosingExecutor(lambda task: task.index == 0)
    (failure,) = label_frames(cu_frames(2), "emt", tmp_path, executor=lost).failures
    assert failure["kind"] == "worker-lost"


# --------------------------------------------------------------------------- --retry-failed


def _recorded_config(workdir: Path, labeler) -> dict:
    from pfd_ase.workflow import load_config

    return load_config(
        {
            "workdir": str(workdir),
            "structures": {"cu": {"bulk": {"name": "Cu", "cubic": True}}},
            "labeler": labeler,
            "init": {"n_perturb": 4},
            "progress": False,
        },
        check_setup=False,
    )


def test_retry_failed_redoes_only_the_failed_tasks_and_what_depends_on_them(tmp_path):
    from pfd_ase.workflow.loops import RecordedSteps
    from pfd_ase.workflow.state import RunState, frames_identity

    log = tmp_path / "calls.log"
    labeler = TroubledEMT(log, fail=(".001", ".003"))
    config = _recorded_config(tmp_path / "run", labeler)
    after_calls = []

    def session(retry_failed: bool) -> dict:
        """One run: label the initial data, then a step that depends on the dataset."""
        state = RunState(config["workdir"], config)
        record = RecordedSteps(config, state, retry_failed=retry_failed).init_label()
        data = state.dataset()
        state.run_step(
            "after", lambda: after_calls.append(len(data)) or {}, {"data": frames_identity(data)}
        )
        return record

    first = session(retry_failed=False)
    assert first["n_labelled"] == 2 and first["n_failed"] == 2  # the loop goes on with 2
    assert {f["kind"] for f in first["failures"]} == {"error"}
    assert [f["frame_id"] for f in first["failures"]] == ["init.cu.001", "init.cu.003"]
    assert sorted(_calls(log)) == [f"init.cu.{i:03d}" for i in range(4)]
    assert after_calls == [2]

    n = len(_calls(log))
    again = session(retry_failed=False)  # a plain rerun changes nothing
    assert again == first and len(_calls(log)) == n and after_calls == [2]

    retried = session(retry_failed=True)
    assert sorted(_calls(log)[n:]) == ["init.cu.001", "init.cu.003"]  # only the failures
    assert retried["n_labelled"] == 4 and retried["n_failed"] == 0
    assert retried["failures"] == []
    state = RunState(config["workdir"])
    assert len(state.dataset()) == 4 and after_calls == [2, 4]  # the dependent step redone
    assert not list((tmp_path / "run" / "init" / "label").glob("task.*/failure.json"))

    n = len(_calls(log))
    session(retry_failed=True)  # nothing failed any more: nothing runs
    assert len(_calls(log)) == n and after_calls == [2, 4]


def test_a_retry_that_fails_again_changes_nothing_downstream(tmp_path):
    from pfd_ase.workflow.loops import RecordedSteps
    from pfd_ase.workflow.state import RunState, frames_identity

    log = tmp_path / "calls.log"
    config = _recorded_config(tmp_path / "run", TroubledEMT(log, fail=(".002",), once=False))
    after_calls = []

    def session(retry_failed: bool) -> dict:
        state = RunState(config["workdir"], config)
        record = RecordedSteps(config, state, retry_failed=retry_failed).init_label()
        data = state.dataset()
        state.run_step(
            "after", lambda: after_calls.append(1) or {}, {"data": frames_identity(data)}
        )
        return record

    first = session(retry_failed=False)
    assert first["n_failed"] == 1 and first["failures"][0]["frame_id"] == "init.cu.002"
    n = len(_calls(log))
    again = session(retry_failed=True)
    assert _calls(log)[n:] == ["init.cu.002"]  # tried again, alone
    assert again["n_failed"] == 1 and again["n_labelled"] == 3
    assert after_calls == [1]  # the same dataset: the dependent step is reused


# --------------------------------------------------------------------------- status, report


def _run_with_failures(tmp_path: Path) -> Path:
    """A run directory whose init.label step failed on two frames: one hung past the time
    limit, one raised."""
    from pfd_ase.workflow.loops import RecordedSteps
    from pfd_ase.workflow.state import RunState

    labeler = TroubledEMT(tmp_path / "calls.log", hang=(".001",), fail=(".002",))
    config = _recorded_config(tmp_path / "run", labeler)
    steps = RecordedSteps(config, RunState(config["workdir"], config))
    steps.timeout_s = 0.5  # what labeler.timeout_s sets for a named labeler
    start = time.monotonic()
    record = steps.init_label()
    assert time.monotonic() - start < 3.0
    assert record["n_labelled"] == 2 and record["n_failed"] == 2
    assert {f["frame_id"]: f["kind"] for f in record["failures"]} == {
        "init.cu.001": "timeout",
        "init.cu.002": "error",
    }
    return Path(config["workdir"])


@needs_sigalrm
def test_status_counts_failed_tasks_per_step_with_causes(tmp_path):
    from typer.testing import CliRunner

    from pfd_ase.cli import app
    from pfd_ase.workflow import run_status

    workdir = _run_with_failures(tmp_path)
    status = run_status(workdir)
    assert status["n_failed_tasks"] == 2
    assert status["labelling_failures"] == {
        "init.label": {"n_failed": 2, "causes": {"error": 1, "timeout": 1}}
    }
    out = CliRunner().invoke(app, ["status", str(workdir)])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown["labelling_failures"]["init.label"]["causes"] == {"error": 1, "timeout": 1}


@needs_sigalrm
def test_report_counts_failed_tasks_per_step(tmp_path):
    from pfd_ase.analysis.report import write_report

    workdir = _run_with_failures(tmp_path)
    summary = {"run_summary": str(workdir / "summary.json")}
    text = write_report(tmp_path / "report", summary, "Cu").read_text()
    assert "Failed labelling tasks: 2 in 1 step(s)" in text
    assert "| init.label | 2 | error 1, timeout 1 |" in text
    saved = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert saved["labelling_failures"]["init.label"]["n_failed"] == 2
    clean = write_report(tmp_path / "clean", {"labelling_failures": {}}, "Cu").read_text()
    assert "- failed labelling tasks: none" in clean


def test_cli_run_passes_retry_failed(tmp_path, monkeypatch):
    pytest.importorskip("chgnet")  # the base model of the configuration
    from typer.testing import CliRunner

    import pfd_ase.workflow
    from pfd_ase.cli import app

    asked = []

    def fake_run(config, *, retry_failed=False):
        asked.append((config["labeler"]["timeout_s"], retry_failed))
        return {"finished": True}

    monkeypatch.setattr(pfd_ase.workflow, "run", fake_run)
    path = tmp_path / "run.yaml"
    path.write_text(
        f"workdir: {tmp_path / 'run'}\n"
        "structures: {cu: {bulk: {name: Cu}}}\n"
        "labeler: {name: emt, timeout_s: 600}\n"
        "base_model: chgnet\n"
        "distill: {enabled: false}\n"
    )
    runner = CliRunner()
    for args in (["run", str(path)], ["run", str(path), "--retry-failed"]):
        out = runner.invoke(app, args)
        assert out.exit_code == 0, out.output
    assert asked == [(600, False), (600, True)]


def test_labeler_timeout_in_the_configuration(tmp_path):
    from pfd_ase.workflow import ConfigError, load_config
    from pfd_ase.workflow.loops import RecordedSteps
    from pfd_ase.workflow.schema import default_config_text
    from pfd_ase.workflow.state import RunState

    base = {"workdir": str(tmp_path), "structures": {"cu": {"bulk": {"name": "Cu"}}}}
    config = load_config({**base, "labeler": {"name": "emt", "timeout_s": 60}}, False)
    assert RecordedSteps(config, RunState(tmp_path)).timeout_s == 60.0
    assert load_config({**base, "labeler": "emt"}, False)["labeler"]["timeout_s"] is None
    refused = r"labeler.timeout_s must be a finite positive number \(s\)"
    with pytest.raises(ConfigError, match=refused):
        load_config({**base, "labeler": {"name": "emt", "timeout_s": -1}}, False)
    assert "timeout_s: null  # wall-time limit of one frame's labelling" in default_config_text()


@needs_sigalrm
def test_cli_label_takes_a_time_limit(tmp_path):
    from typer.testing import CliRunner

    from pfd_ase.cli import app
    from pfd_ase.data import read_frames, write_frames

    write_frames(tmp_path / "frames.extxyz", cu_frames(2))
    args = ["label", str(tmp_path / "frames.extxyz"), "--labeler", "emt"]
    args += ["--workdir", str(tmp_path / "w"), "-o", str(tmp_path / "l.extxyz")]
    out = CliRunner().invoke(app, [*args, "--timeout-s", "30"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["failed"] == [] and len(read_frames(tmp_path / "l.extxyz")) == 2
    out = CliRunner().invoke(app, [*args, "--timeout-s", "0"])
    assert out.exit_code == 2 and "--timeout-s" in out.output

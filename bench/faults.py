"""Fault injection: SIGKILL a whole silicon run at seeded random moments, rerun until done.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/faults.py --quick  # 7 kills
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/faults.py          # 20 kills

The run is the silicon recipe's fastest form (``tests/test_recipe_silicon.py``): a tiny DPA-2
base pre-trained on Stillinger-Weber diamond Si, SW as the DFT, the diamond-like fine-tune
stages, a student distilled on diamond, the recipe's validation (held-out test set, phonons,
vacancies). ``--quick`` trains for fewer steps. What the script does, in ``--workdir``
(default ``runs/faults[_quick]``):

1. pre-trains the base model once (``base_<form>/``, reused by later calls);
2. runs the recipe uninterrupted in a child process (``reference/``), sampling every 0.1 s
   which step is in progress (the markers ``state/started/<step>.json``) and which
   deepmd-kit subprocess runs under it (``train``, ``compress``; ``freeze`` runs in the
   recipe's own process since 2026-12-08, within its training step): the timeline;
3. draws the kill moments from that timeline (``np.random.default_rng(seed)``): one in every
   kind of step (exploration, selection, labelling, training, freezing/compression,
   distillation, validation), the rest uniformly over the time spent in steps; each moment is
   a step (and deepmd-kit subprocess) and an offset into it;
4. runs the same recipe again (``faulted/``) and SIGKILLs its main process at each moment
   in turn: it waits for the planned step to start in the current attempt, sleeps the
   offset, sends SIGKILL to the main process only (its children must die with it), checks
   that no process of the killed run is left (every descendant seen just before the kill
   and every member of its session, after up to 5 s), and reruns at once; after the last
   kill it lets the run finish;
5. compares the two runs.

Labeler calls are counted by a journal: the child process wraps
``pfd_ase.label._label`` (the one function through which every labelling task's single
point goes, DFT and teacher labels alike; the recipe's executor is serial, so every task
runs in that process) to append a ``start`` line before each calculation and an ``end``
line after it, each one ``write`` to a file opened with ``O_APPEND`` (a SIGKILL never leaves
half a line). A call is keyed by its task folder (relative to the run directory) and the
frame's fingerprint. A *repeated* call is one that starts after a call of the same key
ended; a call that never ended was killed mid-calculation (*interrupted*: no result
existed, so computing it again is no repeat).

Figures written to ``bench/results/faults.json`` (``--quick``: ``faults_quick.json``):

``kills``, ``resumes``
    SIGKILLs sent, and reruns after them.
``frames_lost``
    labelled frames of the faulted run missing from its datasets (a call that ended but
    whose frame is not in ``data/labelled.extxyz``, ``distill/teacher_labelled.extxyz`` or
    ``test/labelled.extxyz``) plus frames of the reference missing from the faulted run in
    every labelling step whose inputs (selected frames, model, labeler, dataset: the step
    record's ``inputs_hash``) are the reference's.
``repeated_labeler_calls``
    repeated calls (above) in the faulted run.
``completed``
    the faulted run finished (``summary.json`` ``finished``, the recipe's report written).
``survivors``
    processes of a killed run still alive 5 s after the kill (summed over kills).
``dataset``
    frame-for-frame comparison with the reference, per labelling step and per data file.
``held_out``
    the final models' held-out errors, reference and faulted; with ``--noise-run`` (the
    default of the full form) also an uninterrupted run with seed + 1, whose differences
    from the reference are the run-to-run noise.
``wall_s``
    reference, faulted (all attempts together) and the overhead of the kills.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: The kinds of step a kill is drawn in, each at least once.
KINDS = (
    "exploration",
    "selection",
    "labelling",
    "training",
    "freezing/compression",
    "distillation",
    "validation",
)
#: Settings of the two forms: pre-training, fine-tuning and student steps, planned kills.
FORMS: dict[str, dict[str, int]] = {
    "full": {"pretrain_steps": 1500, "finetune_steps": 300, "distill_steps": 2000, "kills": 20},
    "quick": {"pretrain_steps": 500, "finetune_steps": 100, "distill_steps": 500, "kills": 7},
}
#: Learning-rate schedule of the tiny trainings (as in tests/test_recipe_silicon.py).
LR = {"type": "exp", "start_lr": 5e-3, "stop_lr": 1e-5, "decay_steps": 100}
DIAMOND_LIKE = ["diamond", "hex_diamond", "diamond_vacancy"]
JOURNAL = "labeler_calls.jsonl"
SAMPLE_S = 0.1  # timeline sampling of the reference run
WATCH_S = 0.05  # polling while a kill is armed
GRACE_S = 5.0  # how long the children of a killed run may take to end
MIN_OUTSIDE_S = 1.0  # a step shorter than this in the reference is killed from inside
_DEEPMD_SUBCOMMANDS = ("train", "freeze", "compress")


# --------------------------------------------------------------------------- the run
def recipe_overrides(form: str) -> dict[str, Any]:
    """Overrides of the silicon recipe's quick preset for ``form`` (``"full"``: the
    configuration of ``tests/test_recipe_silicon.py``)."""
    from pfd_ase.recipes.silicon import silicon_config

    settings = FORMS[form]
    stages = silicon_config("unused", preset="quick")["finetune"]["stages"]
    return {
        "init": {"structures": DIAMOND_LIKE},
        "finetune": {
            "steps": settings["finetune_steps"],
            "learning_rate": LR,
            "stages": [s for s in stages if set(s["structures"]) <= set(DIAMOND_LIKE)],
        },
        "distill": {
            "steps": settings["distill_steps"],
            "max_iterations": 1,
            "explore": {"structures": ["diamond"]},
        },
        "executor": {"kind": "serial"},  # every labelling task in the journalled process
        "progress": False,
    }


def base_model(root: str | os.PathLike, form: str) -> str:
    """The tiny DPA-2 base (head ``sw``) pre-trained on SW diamond Si, in
    ``root/base_<form>`` (reused when already trained)."""
    from pfd_ase.materials import labelled_silicon
    from pfd_ase.training.stages import pretrain

    frames = labelled_silicon(24, 21, "sw", a=5.43, displacement_A=0.05)
    result = pretrain(
        {"sw": frames},
        Path(root) / f"base_{form}",
        steps=FORMS[form]["pretrain_steps"],
        learning_rate=LR,
        batch_size="auto",
        progress=False,
    )
    return str(result.checkpoint)


@contextlib.contextmanager
def journal_labeler_calls(path: str | os.PathLike, root: str | os.PathLike) -> Iterator[Path]:
    """Journal every labelling calculation of this process to ``path`` (see the module
    docstring); ``root`` is the run directory task folders are named relative to."""
    import pfd_ase.label as label
    from pfd_ase.data import frame_fingerprint

    path, root = Path(path), Path(root).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    original = label._label

    def write(event: str, task: str, frame: str) -> None:
        line = {"event": event, "task": task, "frame": frame, "pid": os.getpid(), "t": time.time()}
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())  # one write: whole

    def journalled(frame: Any, calc: Any, properties: tuple[str, ...]) -> Any:
        task = os.path.relpath(Path(getattr(calc, "directory", ".")).resolve(), root)
        key = frame_fingerprint(frame)
        write("start", task, key)
        out = original(frame, calc, properties)
        write("end", task, key)
        return out

    label._label = journalled
    try:
        yield path
    finally:
        label._label = original
        os.close(fd)


def _drive(spec_file: str) -> None:
    """The child process: one attempt of the recipe, its labelling journalled."""
    spec = json.loads(Path(spec_file).read_text())
    from pfd_ase.recipes.silicon import run_silicon

    if spec.get("kill_in_step"):
        _kill_self_in(spec["kill_in_step"], spec.get("kill_offset_s", 0.0))

    with journal_labeler_calls(spec["journal"], spec["workdir"]):
        run_silicon(
            spec["workdir"],
            preset="quick",
            labeler="sw",
            base_model=spec["base"],
            head="sw",
            seed=spec["seed"],
            overrides=recipe_overrides(spec["form"]),
        )


def _kill_self_in(key: str, offset_s: float = 0.0) -> None:
    """Make this process SIGKILL itself ``offset_s`` seconds into the work of step ``key``
    (after its start marker is written), or as its work ends if that comes first (before
    its record is written): a kill inside a step too short to be caught from outside."""
    import threading

    from pfd_ase.workflow.state import RunState

    original = RunState.run_step

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def run_step(self: Any, step: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        if step == key:

            def killed() -> Any:
                if offset_s <= 0:
                    die()
                threading.Timer(offset_s, die).start()
                func()
                die()  # the work ended first: killed before the step is recorded

            return original(self, step, killed, *args, **kwargs)
        return original(self, step, func, *args, **kwargs)

    RunState.run_step = run_step


def _start(spec: Mapping[str, Any], log: Path) -> subprocess.Popen:
    """Start one attempt in a session of its own (so that its processes can be found)."""
    spec_file = Path(spec["workdir"]).with_suffix(".spec.json")
    spec_file.write_text(json.dumps(spec, indent=1))
    with open(log, "a") as fh:
        fh.write(f"\n===== attempt started {time.strftime('%H:%M:%S')} =====\n")
        fh.flush()
        return subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--drive", str(spec_file)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=HERE.parent,
        )


# --------------------------------------------------------------------------- processes
def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """State, parent, session and start time (clock ticks) of ``pid``; None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[3]), int(fields[19])


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _processes() -> dict[int, tuple[str, int, int, int]]:
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                out[int(entry.name)] = stat
    return out


def run_processes(leader: int) -> dict[int, int]:
    """Live processes of the run whose main process is ``leader``: its descendants and the
    members of its session (it leads one); pid -> start time."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [leader]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            if child not in found:
                found.add(child)
                todo.append(child)
    found |= {pid for pid, (_, _, sid, _) in table.items() if sid == leader}
    found.add(leader)
    return {pid: table[pid][3] for pid in found if pid in table and table[pid][0] not in "ZX"}


def survivors(seen: Mapping[int, int], leader: int, grace_s: float = GRACE_S) -> list[dict]:
    """Processes of ``seen`` (pid -> start time) or of ``leader``'s session still alive after
    ``grace_s`` seconds (zombies count as ended); each with its pid and command line."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = []
        for pid, (state, _, sid, start) in _processes().items():
            if state in "ZX" or pid == os.getpid():
                continue
            if seen.get(pid) == start or sid == leader:
                alive.append({"pid": pid, "cmdline": " ".join(_cmdline(pid))[:200]})
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _subcommand(pids: Sequence[int]) -> str | None:
    """The deepmd-kit subcommand (train, freeze, compress) one of ``pids`` runs, if any."""
    for pid in pids:
        args = _cmdline(pid)
        if "deepmd" in args and "--pt" in args:
            i = args.index("--pt") + 1
            if i < len(args) and args[i] in _DEEPMD_SUBCOMMANDS:
                return args[i]
    return None


def _training_progress(pids: Sequence[int]) -> float | None:
    """Fraction of its steps a running ``dp --pt train`` among ``pids`` has done (the last
    row of ``lcurve.out`` over ``numb_steps`` in its working directory)."""
    for pid in pids:
        args = _cmdline(pid)
        if not ("deepmd" in args and "train" in args):
            continue
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            total = json.loads((cwd / "input.json").read_text())["training"]["numb_steps"]
            rows = [r for r in (cwd / "lcurve.out").read_text().splitlines() if r.strip()]
        except (OSError, ValueError, KeyError):
            return 0.0
        rows = [r for r in rows if not r.lstrip().startswith("#")]
        try:
            return int(rows[-1].split()[0]) / total if rows else 0.0
        except (ValueError, IndexError):
            return 0.0
    return None


def _step_in_progress(workdir: Path, since: float) -> str | None:
    """The step whose start marker is newest among those written since ``since``."""
    best: tuple[float, str] | None = None
    for marker in (workdir / "state" / "started").glob("*.json"):
        try:
            mtime = marker.stat().st_mtime
        except OSError:
            continue
        if mtime >= since and (best is None or mtime > best[0]):
            best = (mtime, marker.stem)
    return best[1] if best else None


def _finished(workdir: Path, step: str) -> bool:
    return (workdir / "state" / f"{step}.json").exists()


def step_kind(step: str | None, sub: str | None) -> str:
    """The kind of moment (:data:`KINDS`, or ``"between steps"``) of ``step`` while the
    deepmd-kit subcommand ``sub`` (or none) runs."""
    if step is None:
        return "between steps"
    if sub in ("freeze", "compress"):
        return "freezing/compression"
    if step == "validation" or step.startswith("validate."):
        return "validation"
    if step.endswith(".md"):
        return "exploration"
    if step.startswith("distill."):
        return "distillation"
    if step.endswith(".select"):
        return "selection"
    if step.endswith(".label"):
        return "labelling"
    if step.endswith(".train"):
        return "training"
    return "other"


# --------------------------------------------------------------------------- timeline
@dataclass(frozen=True)
class Segment:
    """A stretch of the reference run: ``step`` (None between steps) with the deepmd-kit
    subcommand ``sub`` (None: none), from ``t0`` to ``t1`` (s since the run started)."""

    step: str | None
    sub: str | None
    t0: float
    t1: float

    @property
    def kind(self) -> str:
        return step_kind(self.step, self.sub)


@dataclass
class Target:
    """A planned kill: in ``step`` (while ``sub`` runs, when it is a deepmd-kit
    subcommand), ``offset_s`` after that started; ``t_ref`` is its moment in the reference.
    ``progress``: in a deepmd-kit training, the fraction of its steps done instead (a
    resumed training restarts its clock but not its step count, and runs at another speed
    than the reference did). ``in_process``: a step too short to be caught from outside
    (selection takes ~20 ms): the run's main process SIGKILLs itself as the step's work
    begins (:func:`_drive`)."""

    step: str
    sub: str | None
    offset_s: float
    t_ref: float
    kind: str
    in_process: bool = False
    progress: float | None = None


def segments(samples: Sequence[tuple[float, str | None, str | None]]) -> list[Segment]:
    """Join consecutive timeline samples ``(t, step, sub)`` with the same step and sub."""
    out: list[Segment] = []
    for i, (t, step, sub) in enumerate(samples):
        t_next = samples[i + 1][0] if i + 1 < len(samples) else t + SAMPLE_S
        if out and (out[-1].step, out[-1].sub) == (step, sub):
            out[-1] = Segment(step, sub, out[-1].t0, t_next)
        else:
            out.append(Segment(step, sub, t, t_next))
    return out


def plan_kills(
    timeline: Sequence[Segment],
    n_kills: int,
    seed: int,
    kinds: Sequence[str] = KINDS,
    short_steps: Mapping[str, float] | None = None,
) -> list[Target]:
    """Kill moments on a reference timeline, in time order.

    One moment in each of ``kinds`` (uniform over the time spent in that kind), the rest
    uniform over the time spent in any step. A moment in a deepmd-kit subprocess is taken
    from that subprocess's start, any other from its step's start. A kind the timeline
    never caught (its steps shorter than the sampling interval) is reached through
    ``short_steps`` (step -> its start in the reference, s): one of them is drawn and killed
    from inside as its work begins (``in_process``); a moment in a step shorter than
    :data:`MIN_OUTSIDE_S` is also killed from inside, at its offset into the step.

    Raises
    ------
    ValueError
        Fewer kills than kinds, or a kind the timeline never reaches.
    """
    if n_kills < len(kinds):
        raise ValueError(f"{n_kills} kills cannot reach the {len(kinds)} kinds {list(kinds)}")
    rng = np.random.default_rng(seed)
    in_steps = [s for s in timeline if s.step is not None and s.t1 > s.t0]
    step_start, step_end = {}, {}
    for s in in_steps:
        step_start.setdefault(s.step, s.t0)
        step_end[s.step] = s.t1

    def draw(pool: list[Segment]) -> Target:
        widths = np.array([s.t1 - s.t0 for s in pool])
        seg = pool[int(rng.choice(len(pool), p=widths / widths.sum()))]
        t = float(rng.uniform(seg.t0, seg.t1))
        start = seg.t0 if seg.sub is not None else step_start[seg.step]
        progress = (t - seg.t0) / (seg.t1 - seg.t0) if seg.sub == "train" else None
        if seg.sub is None and step_end[seg.step] - start < MIN_OUTSIDE_S:
            # too short to hit from outside (polling, process start): from inside
            return Target(seg.step, None, t - start, t, seg.kind, in_process=True)
        return Target(seg.step, seg.sub, t - start, t, seg.kind, progress=progress)

    targets = []
    short = dict(short_steps or {})
    for kind in kinds:
        pool = [s for s in in_steps if s.kind == kind]
        if pool:
            targets.append(draw(pool))
            continue
        brief = sorted(step for step in short if step_kind(step, None) == kind)
        if not brief:
            raise ValueError(f"the reference run has no {kind} step")
        step = brief[int(rng.integers(len(brief)))]
        targets.append(Target(step, None, 0.0, short[step], kind, in_process=True))
    targets += [draw(in_steps) for _ in range(n_kills - len(kinds))]
    return sorted(targets, key=lambda t: t.t_ref)


def run_reference(spec: Mapping[str, Any], log: Path) -> dict[str, Any]:
    """Run the recipe uninterrupted; its wall time, exit status and timeline samples."""
    workdir = Path(spec["workdir"])
    t0 = time.time()
    proc = _start(spec, log)
    samples: list[tuple[float, str | None, str | None]] = []
    while proc.poll() is None:
        pids = list(run_processes(proc.pid))
        samples.append(
            (round(time.time() - t0, 3), _step_in_progress(workdir, t0), _subcommand(pids))
        )
        time.sleep(SAMPLE_S)
    return {
        "wall_s": round(time.time() - t0, 1),
        "returncode": proc.returncode,
        "samples": samples,
        "t0": t0,
    }


def short_steps(workdir: Path, t0: float) -> dict[str, float]:
    """Steps of a finished run shorter than two timeline samples (step -> its start, s
    after ``t0``), from their records' ``finished_at`` and ``wall_s``."""
    from pfd_ase._io import read_json

    out = {}
    for record in sorted((workdir / "state").glob("*.json")):
        data = read_json(record)
        wall, end = data.get("wall_s"), data.get("finished_at")
        if wall is not None and end is not None and wall < 2 * SAMPLE_S:
            out[record.stem] = round(end - wall - t0, 3)
    return out


# --------------------------------------------------------------------------- faulted run
def _kill(proc: subprocess.Popen, workdir: Path, since: float) -> dict[str, Any]:
    """SIGKILL the main process only; what it was doing, and what of it survived."""
    seen = run_processes(proc.pid)
    step, sub = _step_in_progress(workdir, since), _subcommand(list(seen))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t_kill = time.monotonic()
    left = survivors(seen, proc.pid)
    record = {
        "pid": proc.pid,
        "step": step,
        "sub": sub,
        "kind": step_kind(step, sub),
        "processes": len(seen),
        "survivors": left,
        "children_gone_s": None if left else round(time.monotonic() - t_kill, 3),
    }
    for entry in left:  # do not let them race the rerun
        with contextlib.suppress(ProcessLookupError):
            os.kill(entry["pid"], signal.SIGKILL)
    return record


def run_faulted(
    spec: Mapping[str, Any],
    targets: Sequence[Target],
    log: Path,
    order: Sequence[str] = (),
    max_failures: int = 3,
) -> dict[str, Any]:
    """Run the recipe, SIGKILL it at each target in turn, rerun until it finishes.

    ``order``: the reference's steps in run order. A target whose step already finished
    when an attempt starts (an earlier kill landed past it) is moved to the first step that
    starts in that attempt; one whose step ends, or is passed by a later step, before its
    moment came is killed at once.
    """
    workdir = Path(spec["workdir"])
    rank = {step: i for i, step in enumerate(order)}
    queue = list(targets)
    kills: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    failures = 0
    while True:
        since, t0 = time.time(), time.monotonic()
        original = target = queue.pop(0) if queue else None
        planned = asdict(target) if target else None
        if target is not None and _finished(workdir, target.step):
            # passed by an earlier kill's rerun: at the start of the next step instead
            target = Target("*", None, 0.0, target.t_ref, target.kind)
        inside = target is not None and target.in_process
        kill_spec: dict[str, Any] = {"kill_in_step": None}
        if inside:
            kill_spec = {"kill_in_step": target.step, "kill_offset_s": target.offset_s}
        proc = _start({**spec, **kill_spec}, log)
        armed: float | None = None
        killed = False
        seen: dict[int, int] = {}
        while proc.poll() is None:
            if inside:
                seen = run_processes(proc.pid) or seen  # the last view before it kills itself
            elif target is not None:
                now = time.monotonic()
                step = _step_in_progress(workdir, since)
                if armed is None and step is not None and target.step in ("*", step):
                    pids = list(run_processes(proc.pid)) if target.sub else []
                    if target.sub is None or _subcommand(pids) == target.sub:
                        armed = now
                passed = target.step != "*" and (
                    _finished(workdir, target.step)
                    or rank.get(step or "", -1) > rank.get(target.step, len(rank))
                )
                if armed is None or target.progress is None:
                    due = armed is not None and now - armed >= target.offset_s
                else:  # a training: by its step count
                    done = _training_progress(run_processes(proc.pid))
                    due = done is not None and done >= target.progress
                if passed or due:
                    record = _kill(proc, workdir, since)
                    record.update(
                        planned=planned,
                        moved_to_next_step=target.step == "*",
                        killed_early=passed and armed is None,
                        attempt_wall_s=round(now - t0, 1),
                    )
                    kills.append(record)
                    killed = True
                    break
            time.sleep(WATCH_S)
        if inside and proc.returncode == -signal.SIGKILL:  # it killed itself in the step
            left = survivors(seen, proc.pid)
            for entry in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(entry["pid"], signal.SIGKILL)
            kills.append(
                {
                    "pid": proc.pid,
                    "step": target.step,
                    "sub": None,
                    "kind": target.kind,
                    "processes": max(len(seen), 1),
                    "survivors": left,
                    "children_gone_s": None,
                    "planned": planned,
                    "moved_to_next_step": False,
                    "killed_early": False,
                    "in_process": True,
                    "attempt_wall_s": round(time.monotonic() - t0, 1),
                }
            )
            killed = True
        attempts.append({"wall_s": round(time.monotonic() - t0, 1), "returncode": proc.returncode})
        if killed:
            continue
        if original is not None:
            queue.insert(0, original)  # not reached: still to come (or unused, if finished)
        if proc.returncode == 0:
            break
        failures += 1  # a rerun that failed on its own: retried, and reported
        if failures >= max_failures:
            break
    leaders = {k["pid"] for k in kills}
    left = [p for p, (st, _, sid, _) in _processes().items() if sid in leaders and st not in "ZX"]
    return {
        "kills": kills,
        "attempts": attempts,
        "left_at_end": left,  # processes of any killed attempt's session still alive
        "unused_targets": [asdict(t) for t in queue],
        "failed_attempts": failures,
        "wall_s": round(sum(a["wall_s"] for a in attempts), 1),
    }


# --------------------------------------------------------------------------- comparison
def journal_figures(path: str | os.PathLike) -> dict[str, Any]:
    """Labeler calls in a journal: ``started``, ``finished``, ``interrupted`` (started, never
    ended), ``repeated`` (started after a call of the same key ended) and ``ended`` (the keys
    ``(task, frame)`` of the calls that ended)."""
    started = finished = repeated = 0
    ended: set[tuple[str, str]] = set()
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        entry = json.loads(line)
        key = (entry["task"], entry["frame"])
        if entry["event"] == "start":
            started += 1
            repeated += key in ended
        elif entry["event"] == "end":
            finished += 1
            ended.add(key)
    return {
        "started": started,
        "finished": finished,
        "interrupted": started - finished,
        "repeated": repeated,
        "ended": ended,
    }


#: Where the frames of each labelling folder end up (prefix of the task folder -> file).
_DATASETS = {
    "init/": "data/labelled.extxyz",
    "finetune/": "data/labelled.extxyz",
    "distill/": "distill/teacher_labelled.extxyz",
    "test/": "test/labelled.extxyz",
}


def lost_frames(workdir: Path, ended: set[tuple[str, str]]) -> list[str]:
    """Task folders whose calculation ended but whose frame is in no dataset of the run."""
    from pfd_ase.data import frame_fingerprint, read_frames

    cache: dict[str, set[str]] = {}
    lost = []
    for task, frame in sorted(ended):
        data = next((f for p, f in _DATASETS.items() if task.startswith(p)), None)
        if data not in cache:
            frames = read_frames(workdir / data, missing_ok=True) if data else []
            cache[data] = {frame_fingerprint(a) for a in frames}
        if frame not in cache[data]:
            lost.append(task)
    return lost


def compare_frames(reference: Path, faulted: Path, atol: float = 1e-10) -> dict[str, Any]:
    """Frame-for-frame comparison of two labelled-frame files: same frame ids and structures
    in the same order, labels (energy, forces, stress) within ``atol``."""
    from pfd_ase.data import FRAME_ID_KEY, frame_fingerprint, read_frames

    ref = read_frames(reference, missing_ok=True)
    got = read_frames(faulted, missing_ok=True)

    def labels(atoms: Any) -> dict[str, np.ndarray]:
        res = atoms.calc.results if atoms.calc is not None else {}
        return {k: np.asarray(res[k], float) for k in ("energy", "forces", "stress") if k in res}

    by_key = {(a.info.get(FRAME_ID_KEY), frame_fingerprint(a)): a for a in got}
    missing = differ = 0
    for atoms in ref:
        other = by_key.get((atoms.info.get(FRAME_ID_KEY), frame_fingerprint(atoms)))
        if other is None:
            missing += 1
            continue
        a, b = labels(atoms), labels(other)
        if a.keys() != b.keys() or any(not np.allclose(a[k], b[k], rtol=0, atol=atol) for k in a):
            differ += 1
    keys = [(a.info.get(FRAME_ID_KEY), frame_fingerprint(a)) for a in ref]
    same_order = keys == [(a.info.get(FRAME_ID_KEY), frame_fingerprint(a)) for a in got]
    return {
        "n_reference": len(ref),
        "n_faulted": len(got),
        "missing": missing,
        "labels_differ": differ,
        "identical": same_order and missing == 0 and differ == 0,
    }


def _labelling_steps(workdir: Path) -> dict[str, Path]:
    """Labelling steps of a run (record key -> the file of the frames it labelled)."""
    out = {}
    for record in sorted((workdir / "state").glob("*.json")):
        key = record.stem
        if key == "init.label":
            out[key] = workdir / "init" / "label" / "labelled.extxyz"
        elif key.startswith("ft.") and key.endswith(".label"):
            _, stage, it, _ = key.split(".")
            out[key] = workdir / "finetune" / stage / f"iter.{it}" / "label" / "labelled.extxyz"
        elif key.startswith("distill.") and key.endswith(".explore"):
            out[key] = workdir / "distill" / f"iter.{key.split('.')[1]}" / "label"
            out[key] = out[key] / "labelled.extxyz"
        elif key == "validate.test_label":
            out[key] = workdir / "test" / "labelled.extxyz"
    return out


def compare_runs(reference: Path, faulted: Path) -> dict[str, Any]:
    """Per labelling step: same inputs as the reference's, and its frames compared; and the
    run's data files compared."""
    from pfd_ase._io import read_json

    steps = {}
    ref_steps, got_steps = _labelling_steps(reference), _labelling_steps(faulted)
    for key, ref_file in ref_steps.items():
        ref_record = read_json(reference / "state" / f"{key}.json")
        got_file = got_steps.get(key)
        got_record = read_json(faulted / "state" / f"{key}.json") if got_file else {}
        same = got_record.get("inputs_hash") == ref_record.get("inputs_hash")
        steps[key] = {"same_inputs": same, **compare_frames(ref_file, got_file or Path("-"))}
    files = {
        name: compare_frames(reference / name, faulted / name)
        for name in sorted(set(_DATASETS.values()))
    }
    return {"steps": steps, "files": files}


def held_out(workdir: Path) -> dict[str, dict[str, float]]:
    """The held-out force and energy errors of each model in the recipe's report."""
    from pfd_ase._io import read_json

    report = read_json(workdir / "report" / "summary.json")
    return {
        name: {k: scores[k] for k in ("force_rmse_eV_A", "energy_rmse_meV_atom")}
        for name, scores in report["held_out"].items()
    }


def _finished_run(workdir: Path) -> bool:
    from pfd_ase.workflow import run_status

    try:
        status = run_status(workdir)
    except FileNotFoundError:
        return False
    return bool(status["finished"]) and (workdir / "report" / "summary.json").exists()


# --------------------------------------------------------------------------- campaign
def campaign(
    root: str | os.PathLike,
    form: str = "quick",
    n_kills: int | None = None,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    noise_run: bool = False,
) -> dict[str, Any]:
    """Reference run, faulted run, comparison (see the module docstring); the figures.

    ``root`` holds ``base_<form>/`` (kept between calls) and the runs (``reference/``,
    ``faulted/``, ``noise/``: removed first). ``n_kills`` defaults to the form's.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    n_kills = FORMS[form]["kills"] if n_kills is None else n_kills
    base = base_model(root, form)
    runs = {}
    for name in ("reference", "faulted", "noise"):
        for path in (root / name, root / f"{name}.{JOURNAL}", root / f"{name}.log"):
            if path.is_dir():
                shutil.rmtree(path)
            path.unlink(missing_ok=True)
        runs[name] = {
            "workdir": str(root / name),
            "base": base,
            "form": form,
            "seed": seed + (name == "noise"),
            "journal": str(root / f"{name}.{JOURNAL}"),
        }
    ref = run_reference(runs["reference"], root / "reference.log")
    if ref["returncode"] != 0:
        raise RuntimeError(f"the reference run failed; see {root / 'reference.log'}")
    timeline = segments(ref["samples"])
    (root / "reference.timeline.json").write_text(
        json.dumps([asdict(s) for s in timeline], indent=1)
    )
    ref_dir = root / "reference"
    targets = plan_kills(timeline, n_kills, seed, kinds, short_steps(ref_dir, ref["t0"]))
    order = list(dict.fromkeys(s.step for s in timeline if s.step is not None))
    faulted = run_faulted(runs["faulted"], targets, root / "faulted.log", order)
    got_dir = root / "faulted"
    completed = _finished_run(got_dir)
    calls_ref = journal_figures(runs["reference"]["journal"])
    calls = journal_figures(runs["faulted"]["journal"])
    comparison = compare_runs(ref_dir, got_dir) if completed else {"steps": {}, "files": {}}
    lost_in_run = lost_frames(got_dir, calls["ended"])
    missing = sum(
        s["missing"] + s["labels_differ"] for s in comparison["steps"].values() if s["same_inputs"]
    )
    errors = {"reference": held_out(ref_dir), "faulted": held_out(got_dir) if completed else None}
    if noise_run:
        noise = run_reference(runs["noise"], root / "noise.log")
        if noise["returncode"] == 0:
            errors["noise_seed_plus_1"] = held_out(root / "noise")
    kills = faulted["kills"]
    landed: dict[str, int] = {}
    for k in kills:
        landed[k["kind"]] = landed.get(k["kind"], 0) + 1
    result = {
        "kills": len(kills),
        "resumes": len(faulted["attempts"]) - 1,
        "frames_lost": len(lost_in_run) + missing,
        "repeated_labeler_calls": calls["repeated"],
        "completed": completed,
        "survivors": sum(len(k["survivors"]) for k in kills),
        "processes_left_at_end": len(faulted["left_at_end"]),
        "form": form,
        "seed": seed,
        "planned_kills": n_kills,
        "kills_by_kind": dict(sorted(landed.items())),
        "kinds_reached": sorted(set(landed) & set(kinds)),
        "frames_lost_detail": {
            "finished_calls_missing_from_datasets": lost_in_run,
            "reference_frames_missing_in_same_input_steps": missing,
        },
        "labeler_calls": {
            "reference": {k: v for k, v in calls_ref.items() if k != "ended"},
            "faulted": {k: v for k, v in calls.items() if k != "ended"},
            "same_calls_as_reference": calls["ended"] == calls_ref["ended"],
        },
        "dataset": comparison,
        "held_out": errors,
        "wall_s": {
            "reference": ref["wall_s"],
            "faulted": faulted["wall_s"],
            "overhead": round(faulted["wall_s"] - ref["wall_s"], 1),
        },
        "failed_attempts": faulted["failed_attempts"],
        "attempts": faulted["attempts"],
        "kill_log": kills,
        "unused_targets": faulted["unused_targets"],
        "machine": f"{platform.node()} {os.cpu_count()} cores",
        "date": datetime.date.today().isoformat(),
    }
    return result


def _print(result: Mapping[str, Any]) -> None:
    print(
        f"kills {result['kills']} (by kind: {result['kills_by_kind']}), resumes "
        f"{result['resumes']}, completed {result['completed']}"
    )
    print(
        f"frames lost {result['frames_lost']}, repeated labeler calls "
        f"{result['repeated_labeler_calls']}, surviving processes {result['survivors']}"
    )
    calls = result["labeler_calls"]
    print(
        f"labeler calls: reference {calls['reference']['finished']}, faulted "
        f"{calls['faulted']['finished']} finished + {calls['faulted']['interrupted']} "
        f"interrupted; same calls {calls['same_calls_as_reference']}"
    )
    for name, cmp in result["dataset"]["files"].items():
        print(
            f"{name}: {cmp['n_reference']} vs {cmp['n_faulted']} frames, "
            f"identical {cmp['identical']}"
        )
    print("held-out:", json.dumps(result["held_out"]))
    print("wall (s):", result["wall_s"])


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer training steps and 7 kills")
    p.add_argument("--kills", type=int, default=None, help="number of kills (>= 7)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None)
    p.add_argument(
        "--noise-run",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="an uninterrupted run with seed + 1 (default: full form only)",
    )
    p.add_argument("--out", default=None, help="results file (default bench/results/faults*.json)")
    p.add_argument("--drive", default=None, help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    if args.drive:
        _drive(args.drive)
        return None
    form = "quick" if args.quick else "full"
    suffix = "_quick" if args.quick else ""
    noise = (form == "full") if args.noise_run is None else args.noise_run
    t0 = time.perf_counter()
    result = campaign(
        args.workdir or f"runs/faults{suffix}", form, args.kills, args.seed, noise_run=noise
    )
    result["this_call_wall_s"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out) if args.out else RESULTS / f"faults{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    _print(result)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()

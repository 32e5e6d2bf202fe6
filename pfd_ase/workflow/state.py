"""Run directory state: completion records of steps, the labelled dataset, the run summary.

Every step writes its outputs first and its completion record last (atomically), so after a
crash or ``kill -9`` anywhere a rerun skips exactly the steps that finished.

A step's record is keyed by what the step depends on: :meth:`RunState.run_step` takes the
step's ``inputs`` (a JSON-able dict: its configuration section, seeds, and the identities of
the models and frames it consumes) and stores them with their hash (:func:`inputs_hash`).
A rerun with other inputs does not reuse the record: it says which inputs changed (logger
``pfd_ase.workflow``, level WARNING), removes the step's old ``outputs`` and redoes the step.
Since each step's inputs include the identities of what earlier steps produced, exactly the
steps that depend on a changed setting are redone. A step that was interrupted is resumed
with its partial outputs only when its inputs are the same (a marker in
``state/started/`` remembers them); otherwise its outputs are removed first.

Records written by older versions carry no inputs: they are trusted (reused) and the
current inputs are written into them (``"inputs_adopted": true``), so that later changes are
detected; a step run without ``inputs`` reuses any record, as before.

A finished step is run again with the same inputs only when asked (``rerun=True``): its
outputs are kept and the step resumes from them. ``pfd-ase run --retry-failed`` does this
for the labelling steps with failed tasks: finished tasks are reused, failed ones tried
again, and the steps that depend on the dataset follow through their inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ase import Atoms

from pfd_ase._io import read_json, write_json
from pfd_ase.data import FRAME_ID_KEY, append_frames, merge_frames, read_frames, write_frames
from pfd_ase.threads import match_threads

__all__ = [
    "RunState",
    "canonical_inputs",
    "changed_inputs",
    "frames_identity",
    "inputs_hash",
    "labelling_failures",
    "merge_into",
    "model_identity",
    "package_versions",
    "run_status",
]

logger = logging.getLogger("pfd_ase.workflow")

_PACKAGES = ("pfd_ase", "ase", "numpy", "deepmd-kit", "torch", "chgnet", "gpaw", "phonopy")
_STARTED = "started"
#: How step inputs spell the run directory (:meth:`RunState.run_step`).
RUN_DIR = "<run>"


def package_versions() -> dict[str, str | None]:
    """Versions of the packages a run depends on (None when not installed)."""
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"step inputs must be JSON-able; got a {type(obj).__name__}: {obj!r}")


def canonical_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``inputs`` as plain JSON data (tuples become lists, paths strings, numpy numbers floats).

    Raises
    ------
    TypeError
        A value that has no JSON form.
    """
    return json.loads(json.dumps(dict(inputs), sort_keys=True, default=_json_default))


def inputs_hash(inputs: Mapping[str, Any]) -> str:
    """Stable hash of a step's inputs: sha256 of their canonical JSON (sorted keys)."""
    text = json.dumps(
        canonical_inputs(inputs), sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )
    return hashlib.sha256(text.encode()).hexdigest()


def changed_inputs(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two input dicts (lists compare whole)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                out.append(name)
            else:
                out.extend(changed_inputs(old[key], new[key], name))
        return out
    return [] if old == new else [prefix or "<inputs>"]


def _describe(name: str, old: Any, new: Any) -> str:
    def get(tree: Any) -> Any:
        for part in name.split("."):
            if not isinstance(tree, Mapping) or part not in tree:
                return "<unset>"
            tree = tree[part]
        return tree

    def short(value: Any) -> str:
        text = json.dumps(value, sort_keys=True, default=str)
        return text if len(text) <= 40 else text[:37] + "..."

    return f"{name}: {short(get(old))} -> {short(get(new))}"


def _jsonable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(config)
    if not isinstance(out.get("labeler"), dict):
        from pfd_ase.calculators.labelers import labeler_info

        out["labeler"] = labeler_info(out["labeler"])
    structures = out.get("structures")
    if isinstance(structures, Mapping) and any(isinstance(s, Atoms) for s in structures.values()):
        out["structures"] = {
            name: ({"atoms": spec.get_chemical_formula()} if isinstance(spec, Atoms) else spec)
            for name, spec in structures.items()
        }
    return out


class RunState:
    """The state of one run directory.

    Parameters
    ----------
    workdir
        The run directory (created on the first write).
    config
        The run's configuration; recorded in ``summary.json`` with the seed and the
        package versions (the settings that produced each step are in its record).
    records_only
        Write step records (``state/<key>.json``) but never ``summary.json``: for a process
        that runs some steps beside the one that owns the run (its summary would overwrite
        the owner's). The owner lists such a step in its summary when it reuses the record.
    """

    def __init__(
        self,
        workdir: str | Path,
        config: Mapping[str, Any] | None = None,
        *,
        records_only: bool = False,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.records_only = records_only
        self.state_dir = self.workdir / "state"
        self.summary_path = self.workdir / "summary.json"
        self.dataset_path = self.workdir / "data" / "labelled.extxyz"
        if self.summary_path.exists():
            self.summary = read_json(self.summary_path)
        else:
            self.summary = {"steps": {}, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if config is not None:
            self.summary.update(
                config=_jsonable_config(config),
                seed=config.get("seed"),
                versions=package_versions(),
                python=platform.python_version(),
            )
        steps = self.summary.setdefault("steps", {})
        order = [k for k in self.summary.get("step_order", []) if k in steps]
        self.summary["steps"] = {k: steps[k] for k in [*order, *steps] if k in steps}
        #: Keys of the steps run or reused through this object, in that order.
        self.visited: list[str] = []

    # -- steps ---------------------------------------------------------------------------
    def record_path(self, key: str) -> Path:
        """Path of the completion record of step ``key``."""
        return self.state_dir / f"{key}.json"

    def started_path(self, key: str) -> Path:
        """Path of the marker of a started (not yet finished) step ``key``."""
        return self.state_dir / _STARTED / f"{key}.json"

    def done(self, key: str) -> dict[str, Any] | None:
        """The completion record of step ``key``, or None if it has not finished."""
        path = self.record_path(key)
        return read_json(path) if path.exists() else None

    def run_step(
        self,
        key: str,
        func: Callable[[], Mapping[str, Any]],
        inputs: Mapping[str, Any] | None = None,
        outputs: Iterable[str | Path] = (),
        *,
        rerun: bool = False,
    ) -> dict[str, Any]:
        """Run ``func`` unless step ``key`` already finished with the same inputs.

        Parameters
        ----------
        key
            Name of the step (also the name of its record, ``state/<key>.json``).
        func
            Does the work; returns the step's JSON-able record (a dict).
        inputs
            What the step depends on (JSON-able): its configuration section, seeds, the
            identities of the models and frames it consumes. Stored in the record with
            their hash (``inputs``, ``inputs_hash``); a record with another hash is not
            reused. ``None``: any record of ``key`` is reused. An absolute path inside the
            run directory is stored as ``<run>/...`` (:data:`RUN_DIR`), so that a moved or
            copied run directory reuses its records (one keyed by the absolute spelling,
            as versions before wrote them, is adopted).
        outputs
            Files or folders the step writes; removed before the step is redone with
            other inputs (so that no result of the old inputs is mistaken for a new one).
        rerun
            Run ``func`` again even when the step finished with the same inputs, keeping
            its outputs (it resumes from them): e.g. to retry a labelling step's failed
            tasks. Its new record replaces the old one.

        Returns
        -------
        dict
            The record: what ``func`` returned plus ``wall_s``, ``finished_at`` (Unix
            time) and, with ``inputs``, ``inputs`` and ``inputs_hash``.
        """
        spelled = None if inputs is None else canonical_inputs(inputs)
        new = None if spelled is None else self._in_run(spelled)
        digest = None if new is None else inputs_hash(new)
        if key in self.visited:
            self.visited.remove(key)
        self.visited.append(key)
        record = self.done(key)
        if record is not None:
            same = digest is None or record.get("inputs_hash") == digest
            older = "inputs_hash" not in record  # an older version's: trust it
            if not same and (older or record["inputs_hash"] == inputs_hash(spelled)):
                # or one keyed by absolute paths inside the run directory, as before
                record.update(inputs=new, inputs_hash=digest, inputs_adopted=True)
                write_json(self.record_path(key), record)
                logger.info("step %s: record of an older version adopted for these inputs", key)
                same = True
            if same and not rerun:
                return self._reuse(key, record)
            if same:
                logger.warning("step %s: run again on request, resuming from its outputs", key)
            else:
                self._redo(key, record.get("inputs") or {}, new, outputs, "finished")
        elif digest is not None:
            started = self.started_path(key)
            if started.exists():
                marker = read_json(started)
                if marker.get("inputs_hash") != digest:
                    self._redo(key, marker.get("inputs") or {}, new, outputs, "interrupted")
        if digest is not None:
            write_json(self.started_path(key), {"inputs": new, "inputs_hash": digest})
        match_threads()  # cores lent to work beside the run: pfd_ase.threads
        t0 = time.perf_counter()
        record = dict(func())
        record["wall_s"] = round(time.perf_counter() - t0, 3)
        record["finished_at"] = time.time()
        if digest is not None:
            record.update(inputs=new, inputs_hash=digest)
        write_json(self.record_path(key), record)
        self.summary["steps"].pop(key, None)  # redone steps move to the end: run order
        self.summary["steps"][key] = record
        self.save_summary()
        if digest is not None:
            self.started_path(key).unlink(missing_ok=True)
        return record

    def _in_run(self, value: Any) -> Any:
        """``value`` (canonical inputs) with each absolute path inside the run directory
        written ``<run>/...``: a moved or copied run directory keeps its records."""
        if isinstance(value, dict):
            return {k: self._in_run(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._in_run(v) for v in value]
        if isinstance(value, str):
            root = str(self.workdir)
            if value == root:
                return RUN_DIR
            if value.startswith(root + os.sep):
                return RUN_DIR + "/" + Path(value).relative_to(root).as_posix()
        return value

    def _reuse(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        if self.summary["steps"].get(key) != record:  # e.g. summary.json was lost
            self.summary["steps"][key] = record
            self.save_summary()
        return record

    def _redo(
        self,
        key: str,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        outputs: Iterable[str | Path],
        what: str,
    ) -> None:
        changes = [_describe(name, old, new) for name in changed_inputs(old, new)]
        logger.warning(
            "step %s: inputs changed since it %s (%s); redoing it",
            key,
            what,
            "; ".join(changes) or "unknown",
        )
        for path in outputs:
            path = Path(path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        self.record_path(key).unlink(missing_ok=True)
        self.summary["steps"].pop(key, None)

    def keep_visited_steps(self) -> None:
        """Keep in the summary only the steps run or reused through this object, in that
        order (records of steps a changed configuration no longer reaches stay in
        ``state/`` but leave the summary)."""
        steps = self.summary["steps"]
        self.summary["steps"] = {key: steps[key] for key in self.visited if key in steps}

    def save_summary(self, **updates: Any) -> None:
        """Update and atomically rewrite ``summary.json``.

        ``summary["step_order"]`` lists the steps in run order (``summary.json`` is
        written with sorted keys). With ``records_only`` only the object's copy changes.
        """
        self.summary.update(updates)
        self.summary["step_order"] = list(self.summary["steps"])  # JSON keys get sorted
        self.summary["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        if not self.records_only:
            write_json(self.summary_path, self.summary)

    # -- data ----------------------------------------------------------------------------
    def dataset(self) -> list[Atoms]:
        """All labelled (DFT) frames so far."""
        return read_frames(self.dataset_path, missing_ok=True)

    def add_labelled(self, frames: list[Atoms]) -> int:
        """Merge frames into the dataset; return its new size."""
        return len(append_frames(self.dataset_path, frames))

    def set_dataset(self, sources: Sequence[str | Path]) -> int:
        """Make the dataset the merge of the labelled-frame files ``sources`` (in order).

        Frames whose structure appeared in an earlier file are dropped (as
        :meth:`add_labelled` does); the file is rewritten only when it changes.
        Returns the dataset's size.
        """
        return len(merge_into(self.dataset_path, sources))


# --------------------------------------------------------------------------- identities
def frames_identity(frames: Sequence[Atoms]) -> str:
    """Content hash of frames, in order: structure, frame id and labels (if any)."""
    import numpy as np

    from pfd_ase.data import frame_fingerprint

    h = hashlib.sha256()
    for atoms in frames:
        h.update(frame_fingerprint(atoms).encode())
        h.update(str(atoms.info.get(FRAME_ID_KEY)).encode())
        results = getattr(atoms.calc, "results", None) or {}
        for key in ("energy", "forces", "stress"):
            if results.get(key) is not None:
                h.update(key.encode())
                h.update(np.ascontiguousarray(results[key], dtype=np.float64).tobytes())
    return h.hexdigest()


_IDENTITIES: dict[tuple, str] = {}


def model_identity(model: str | Path, head: str | None = None) -> str:
    """Identity of a model: :attr:`pfd_ase.models.ModelSpec.identity` (kind, content hash or
    pre-trained name, head), remembered per file size and modification time."""
    from pfd_ase.models import resolve_model

    path = Path(model)
    stat = path.stat() if path.is_file() else None
    key: tuple = (str(path.resolve()) if stat else str(model), head)
    if stat is not None:
        key += (stat.st_size, stat.st_mtime_ns)
    if key not in _IDENTITIES:
        _IDENTITIES[key] = resolve_model(model, head=head).identity
    return _IDENTITIES[key]


def merge_into(path: str | Path, sources: Sequence[str | Path]) -> list[Atoms]:
    """Make ``path`` the merge of the extxyz files ``sources`` (in order; a structure seen
    before is dropped), rewriting it only when that changes it; return the frames."""
    frames = merge_frames(*(read_frames(p, missing_ok=True) for p in sources))
    if frames_identity(frames) != frames_identity(read_frames(path, missing_ok=True)):
        write_frames(path, frames)
    return frames


def labelling_failures(steps: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Failed labelling tasks per step, with their causes.

    Parameters
    ----------
    steps
        Step records by key (``summary["steps"]``): a labelling step records ``n_failed``
        and ``failures`` (one entry per failed task, with its ``kind``: see
        :data:`pfd_ase.label.FAILURE_KINDS`); a recipe's ``validate.test_label`` records
        the failed frame ids under ``result.failures``.

    Returns
    -------
    dict
        For each step with failed tasks, in the given order: ``n_failed`` and ``causes``
        (kind → number of tasks, most frequent first; ``"unrecorded"`` for entries
        written before kinds were recorded).
    """
    out: dict[str, dict[str, Any]] = {}
    for key, record in steps.items():
        if not isinstance(record, Mapping):
            continue
        if "failures" not in record and isinstance(record.get("result"), Mapping):
            record = record["result"]  # a validation step's result
        failures = record.get("failures")
        n_failed = int(record.get("n_failed") or (len(failures) if failures else 0))
        if not n_failed:
            continue
        causes: dict[str, int] = {}
        for failure in failures or ():
            kind = failure.get("kind") if isinstance(failure, Mapping) else None
            causes[kind or "unrecorded"] = causes.get(kind or "unrecorded", 0) + 1
        if sum(causes.values()) < n_failed:
            causes["unrecorded"] = causes.get("unrecorded", 0) + n_failed - sum(causes.values())
        ordered = sorted(causes.items(), key=lambda item: (-item[1], item[0]))
        out[key] = {"n_failed": n_failed, "causes": dict(ordered)}
    return out


def run_status(workdir: str | Path) -> dict[str, Any]:
    """What a run directory holds: finished steps, dataset size, models, failed tasks.

    The steps are in run order: those of the summary (the last run's) first, then records
    the summary does not list (e.g. of steps a changed configuration no longer reaches), by
    the time they finished. ``labelling_failures`` (:func:`labelling_failures`) counts the
    failed labelling tasks of each finished step and their causes; ``n_failed_tasks`` is
    their total (``pfd-ase run --retry-failed`` tries them again).
    """
    workdir = Path(workdir)
    summary_path = workdir / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{workdir} is not a pfd_ase run directory (no summary.json)")
    summary = read_json(summary_path)
    in_summary = list(summary.get("step_order") or summary.get("steps", {}))
    others: list[tuple[float, str]] = []
    for path in (workdir / "state").glob("*.json"):
        if path.stem in in_summary:
            continue
        try:
            finished = float(read_json(path).get("finished_at") or path.stat().st_mtime)
        except (OSError, ValueError, AttributeError):
            finished = path.stat().st_mtime
        others.append((finished, path.stem))
    finished_steps = [k for k in in_summary if (workdir / "state" / f"{k}.json").exists()]
    finished_steps += [key for _, key in sorted(others)]
    records = {}
    for key in finished_steps:
        try:
            records[key] = read_json(workdir / "state" / f"{key}.json")
        except (OSError, ValueError):
            records[key] = summary.get("steps", {}).get(key) or {}
    failures = labelling_failures(records)
    dataset = workdir / "data" / "labelled.extxyz"
    return {
        "workdir": str(workdir),
        "finished_steps": finished_steps,
        "labelling_failures": failures,
        "n_failed_tasks": sum(f["n_failed"] for f in failures.values()),
        "n_labelled": len(read_frames(dataset, missing_ok=True)),
        "teacher": summary.get("teacher"),
        "student": summary.get("student"),
        "finished": summary.get("finished", False),
        "updated": summary.get("updated"),
    }

"""Run directory state: completion records of steps, the labelled dataset, the run summary.

Every step writes its outputs first and its completion record last (atomically), so after a
crash or ``kill -9`` anywhere a rerun skips exactly the steps that finished. Labelled frames
are merged into ``data/labelled.extxyz`` (atomic rewrite, no duplicates) right after each
labelling step, and each labelling task keeps its own result file, so none is ever lost.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ase import Atoms

from pfd_ase._io import read_json, write_json
from pfd_ase.data import append_frames, read_frames

_PACKAGES = ("pfd_ase", "ase", "numpy", "deepmd-kit", "torch", "chgnet", "gpaw", "phonopy")


def package_versions() -> dict[str, str | None]:
    """Versions of the packages a run depends on (None when not installed)."""
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _jsonable_config(config: dict[str, Any]) -> dict[str, Any]:
    out = dict(config)
    if not isinstance(out.get("labeler"), dict):
        from pfd_ase.calculators.labelers import labeler_info

        out["labeler"] = labeler_info(out["labeler"])
    return out


class RunState:
    """The state of one run directory."""

    def __init__(self, workdir: str | Path, config: dict[str, Any] | None = None) -> None:
        self.workdir = Path(workdir).resolve()
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
        self.summary.setdefault("steps", {})

    # -- steps ---------------------------------------------------------------------------
    def record_path(self, key: str) -> Path:
        return self.state_dir / f"{key}.json"

    def done(self, key: str) -> dict[str, Any] | None:
        """The completion record of step ``key``, or None if it has not finished."""
        path = self.record_path(key)
        return read_json(path) if path.exists() else None

    def run_step(self, key: str, func: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``func`` unless step ``key`` already finished; return its (JSON) record."""
        record = self.done(key)
        if record is not None:
            if self.summary["steps"].get(key) != record:  # e.g. summary.json was lost
                self.summary["steps"][key] = record
                self.save_summary()
            return record
        t0 = time.perf_counter()
        record = dict(func())
        record["wall_s"] = round(time.perf_counter() - t0, 3)
        write_json(self.record_path(key), record)
        self.summary["steps"][key] = record
        self.save_summary()
        return record

    def save_summary(self, **updates: Any) -> None:
        """Update and atomically rewrite ``summary.json``."""
        self.summary.update(updates)
        self.summary["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json(self.summary_path, self.summary)

    # -- data ----------------------------------------------------------------------------
    def dataset(self) -> list[Atoms]:
        """All labelled (DFT) frames so far."""
        return read_frames(self.dataset_path, missing_ok=True)

    def add_labelled(self, frames: list[Atoms]) -> int:
        """Merge frames into the dataset; return its new size."""
        return len(append_frames(self.dataset_path, frames))


def run_status(workdir: str | Path) -> dict[str, Any]:
    """What a run directory holds: finished steps, dataset size, models, last update."""
    workdir = Path(workdir)
    summary_path = workdir / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{workdir} is not a pfd_ase run directory (no summary.json)")
    summary = read_json(summary_path)
    steps = sorted(p.stem for p in (workdir / "state").glob("*.json"))
    dataset = workdir / "data" / "labelled.extxyz"
    return {
        "workdir": str(workdir),
        "finished_steps": steps,
        "n_labelled": len(read_frames(dataset, missing_ok=True)),
        "teacher": summary.get("teacher"),
        "student": summary.get("student"),
        "finished": summary.get("finished", False),
        "updated": summary.get("updated"),
    }

"""What an exploration leaves: walker directories, their files, :class:`ExploreResult`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ase import Atoms

from pfd_ase.tasks import FAILURE_FILE, numbered_dir

__all__ = [
    "DH_EXCEEDED_KEY",
    "DONE_FILE",
    "FAILURE_FILE",
    "FINISHED",
    "LOG_FILE",
    "REJECTED_FILE",
    "TASK_FILE",
    "TRAJECTORY_FILE",
    "ExploreResult",
    "walker_dir",
]

#: The task record of a walker: its key and settings, written when it starts.
TASK_FILE = "walker.json"
#: The sampled frames that passed the filters, appended as the MD runs.
TRAJECTORY_FILE = "traj.extxyz"
#: Frames rejected by the filters, and the state at which the MD blew up.
REJECTED_FILE = "rejected.extxyz"
#: ASE's MD log.
LOG_FILE = "md.log"
#: The done record, written atomically when the walker ends.
DONE_FILE = "done.json"
#: Statuses of a done record ("stopped": by a :class:`~pfd_ase.explore.DHWatch`).
FINISHED: tuple[str, ...] = ("finished", "exploded", "stopped")
#: ``atoms.info`` key of a sampled frame: its max dH exceeds the watch's threshold.
DH_EXCEEDED_KEY = "pfd_dH_exceeded"


def walker_dir(workdir: str | os.PathLike, index: int) -> Path:
    """The directory of walker ``index`` under ``workdir``."""
    return numbered_dir(workdir, "walker", index, 4)


@dataclass
class ExploreResult:
    """Outcome of :func:`explore`.

    Attributes
    ----------
    frames
        Sampled frames that passed the filters, in walker order then step order
        (read back from the trajectories, so fresh and cached runs agree bit for bit).
    walkers
        One record per walker, in walker order: ``index``, ``directory``,
        ``structure_index``, ``temperature_K``, ``pressure_GPa``, ``ensemble``,
        ``status`` (``"finished"``, ``"exploded"``, ``"stopped"`` or ``"failed"``),
        ``steps_done``, ``n_frames`` (kept frames), ``n_rejected``, ``wall_time_s``,
        ``cached``; with a :class:`~pfd_ase.explore.DHWatch`, ``dH``: ``{"checks",
        "max_dH" (largest seen, nats), "n_exceeded" (checks over the threshold),
        "first_exceeded_step"}``; an exploded walker adds ``exploded_step`` and
        ``reason``, one stopped by the watch ``stopped_step`` and ``reason``, a failed one
        ``exception``, ``message``, ``traceback``, ``attempts`` and ``cause`` (see
        :func:`pfd_ase.tasks.failure_record`).
    rejected
        ``{"walker", "step", "reason"}`` of every rejected frame, including the
        state at which a walker blew up.
    filter_counts
        Rejected frames per reason kind (``non_finite``, ``cell``, ``too_close``,
        ``max_force``).
    n_cached
        Walkers whose results came from a previous run.
    """

    frames: list[Atoms] = field(default_factory=list)
    walkers: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    filter_counts: dict[str, int] = field(default_factory=dict)
    n_cached: int = 0

    @property
    def exploded(self) -> list[dict[str, Any]]:
        """Records of the walkers that blew up."""
        return [w for w in self.walkers if w["status"] == "exploded"]

    @property
    def stopped(self) -> list[dict[str, Any]]:
        """Records of the walkers that a :class:`~pfd_ase.explore.DHWatch` stopped."""
        return [w for w in self.walkers if w["status"] == "stopped"]

    @property
    def dH_exceeded(self) -> list[Atoms]:
        """Frames whose max dH exceeds the watch's threshold (to be labelled)."""
        return [f for f in self.frames if bool(f.info.get(DH_EXCEEDED_KEY, False))]

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Records of the walkers whose MD raised an exception."""
        return [w for w in self.walkers if w["status"] == "failed"]

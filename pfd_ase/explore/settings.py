"""Settings of an exploration: thermostats, barostats, :class:`ExploreSettings`, :class:`DHWatch`.

:class:`ExploreSettings` holds the fields of :class:`~pfd_ase.explore.ExploreTask` and
validates them; the task itself, which can :meth:`~pfd_ase.explore.ExploreTask.run`,
lives in :mod:`pfd_ase.explore.driver`, so that nothing here imports what runs the MD.
:class:`DHWatch` is the optional extrapolation watch of a run (dH against a training set's
descriptor bank); like the model, it is given to the run, not to the settings.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

from pfd_ase.selectors.bank import DescriptorBank
from pfd_ase.selectors.filters import FrameFilter

__all__ = ["BAROSTATS", "DH_ACTIONS", "THERMOSTATS", "DHWatch", "ExploreSettings", "as_dh_watch"]

#: Thermostats of the walkers with pressure ``None``: NVT, or ``"nve"`` (none: NVE with
#: ASE's Velocity Verlet).
THERMOSTATS: tuple[str, ...] = ("langevin", "bussi", "nose-hoover", "nve")
#: NPT barostats (walkers with a pressure).
BAROSTATS: tuple[str, ...] = ("mtk", "berendsen")
_ALIASES = {
    "nhc": "nose-hoover",
    "nose-hoover-chain": "nose-hoover",
    "nosehoover": "nose-hoover",
    "isotropic-mtk": "mtk",
    "npt-mtk": "mtk",
    "npt-berendsen": "berendsen",
    "none": "nve",
    "verlet": "nve",
    "velocity-verlet": "nve",
}

# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ExploreSettings:
    """The fields of :class:`~pfd_ase.explore.ExploreTask` and their validation.

    :class:`~pfd_ase.explore.ExploreTask` (which documents the parameters) adds
    :meth:`~pfd_ase.explore.ExploreTask.run`; the walkers need only these settings, so
    this module imports nothing that runs an exploration.
    """

    temperatures_K: Sequence[float]
    pressures_GPa: Sequence[float | None] = (None,)
    steps: int = 2000
    timestep_fs: float = 2.0
    sample_every: int = 100
    thermostat: str = "langevin"
    barostat: str = "mtk"
    seed: int = 0
    tdamp_fs: float | None = None
    pdamp_fs: float | None = None
    compressibility_per_GPa: float = 0.01
    include_initial: bool = False
    check_every: int = 1
    frame_filter: FrameFilter = field(default_factory=FrameFilter)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        temps = _as_tuple(self.temperatures_K)
        if not temps:
            raise ValueError("temperatures_K must not be empty")
        set_(self, "temperatures_K", tuple(_positive(t, "temperatures_K", "K") for t in temps))
        pressures = _as_tuple(self.pressures_GPa)
        if not pressures:
            raise ValueError("pressures_GPa must not be empty (use [None] for NVT)")
        set_(self, "pressures_GPa", tuple(_pressure(p) for p in pressures))
        set_(self, "steps", _count(self.steps, "steps"))
        set_(self, "sample_every", _count(self.sample_every, "sample_every"))
        set_(self, "check_every", _count(self.check_every, "check_every"))
        if self.sample_every > self.steps:
            raise ValueError(
                f"sample_every ({self.sample_every}) must be <= steps ({self.steps}): "
                "no frame would be sampled"
            )
        set_(self, "timestep_fs", _positive(self.timestep_fs, "timestep_fs", "fs"))
        for name in ("tdamp_fs", "pdamp_fs"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, _positive(value, name, "fs"))
        set_(
            self,
            "compressibility_per_GPa",
            _positive(self.compressibility_per_GPa, "compressibility_per_GPa", "1/GPa"),
        )
        set_(self, "thermostat", _choice(self.thermostat, THERMOSTATS, "thermostat"))
        set_(self, "barostat", _choice(self.barostat, BAROSTATS, "barostat"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, Integral) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        set_(self, "seed", int(self.seed))
        set_(self, "include_initial", bool(self.include_initial))
        flt = self.frame_filter
        if isinstance(flt, Mapping):
            flt = FrameFilter(**flt)
        if not isinstance(flt, FrameFilter):
            raise ValueError(f"frame_filter must be a FrameFilter or a dict, not {flt!r}")
        set_(self, "frame_filter", flt)

    @property
    def frames_per_walker(self) -> int:
        """Frames sampled by a walker that runs to the end (before filtering)."""
        return self.steps // self.sample_every + int(self.include_initial)

    def ensemble(self, pressure_GPa: float | None) -> str:
        """Name of the ensemble of a walker at this pressure (``nvt-langevin``, ``nve``,
        ``npt-mtk``...)."""
        if pressure_GPa is not None:
            return f"npt-{self.barostat}"
        return "nve" if self.thermostat == "nve" else f"nvt-{self.thermostat}"

    def grid(self, n_structures: int) -> list[tuple[int, float, float | None]]:
        """``(structure_index, temperature_K, pressure_GPa)`` of every walker, in walker order."""
        return [
            (s, t, p)
            for s in range(n_structures)
            for t in self.temperatures_K
            for p in self.pressures_GPa
        ]


#: What a walker does when a frame's max dH exceeds :attr:`DHWatch.max_dH`.
DH_ACTIONS: tuple[str, ...] = ("mark", "stop")


@dataclass(frozen=True, eq=False)
class DHWatch:
    """Watch the walkers' dH against a training set: a model-free extrapolation signal.

    The per-atom dH (nats) of the MD state against ``bank``
    (:meth:`~pfd_ase.selectors.DescriptorBank.delta_entropy`) is computed on every
    sampled frame and, for ``every``, every ``every`` MD steps. Sampled frames carry it
    (``atoms.arrays["pfd_dH"]``, ``atoms.info["pfd_max_dH"]``); where the frame's
    largest dH exceeds ``max_dH``:

    * ``action="mark"``: the frame gets ``info["pfd_dH_exceeded"] = True`` (False on the
      others), a frame to label;
    * ``action="stop"``: the walker stops at the first such step, status ``"stopped"``
      (its record has ``stopped_step`` and ``reason``); that state is kept as a frame,
      marked, even between samples.

    Parameters
    ----------
    bank
        A :class:`~pfd_ase.selectors.DescriptorBank`, or a path that
        :meth:`DescriptorBank.load <pfd_ase.selectors.DescriptorBank.load>` reads
        (``.npz``, or an extxyz of training frames, built with the default settings).
    max_dH
        Threshold on a frame's largest per-atom dH (nats); ``None``: record dH only.
    action
        ``"mark"`` or ``"stop"`` (which needs ``max_dH``).
    every
        Also check every this many MD steps (``None``: sampled frames only).
    """

    bank: DescriptorBank | str | os.PathLike
    max_dH: float | None = None
    action: str = "mark"
    every: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        bank = self.bank
        if isinstance(bank, str | os.PathLike):
            bank = DescriptorBank.load(bank)
        if not isinstance(bank, DescriptorBank):
            raise ValueError(f"bank must be a DescriptorBank or a path, not {bank!r}")
        set_(self, "bank", bank)
        if self.max_dH is not None:
            value = self.max_dH
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise ValueError(f"max_dH must be a finite number (nats) or None, got {value!r}")
            set_(self, "max_dH", float(value))
        set_(self, "action", _choice(self.action, DH_ACTIONS, "dH action"))
        if self.action == "stop" and self.max_dH is None:
            raise ValueError("dH action 'stop' needs a threshold max_dH (nats)")
        if self.every is not None:
            set_(self, "every", _count(self.every, "dH every"))

    def exceeded(self, max_dH: float) -> bool:
        """Whether a frame whose largest per-atom dH is ``max_dH`` exceeds the threshold."""
        return self.max_dH is not None and max_dH > self.max_dH

    def describe(self) -> dict[str, Any]:
        """What defines the watch (hashed into walker keys): bank, threshold, action, every."""
        return {
            "bank": self.bank.identity,
            "bank_environments": self.bank.n_environments,
            "max_dH": self.max_dH,
            "action": self.action,
            "every": self.every,
        }


def as_dh_watch(value: DHWatch | Mapping[str, Any] | None) -> DHWatch | None:
    """A :class:`DHWatch` from itself, a dict of its fields, or None (no watch)."""
    if value is None or isinstance(value, DHWatch):
        return value
    if isinstance(value, Mapping):
        return DHWatch(**value)
    raise ValueError(f"dh_watch must be a DHWatch, a dict of its fields or None, not {value!r}")


def _as_tuple(value: Any) -> tuple:
    if value is None or isinstance(value, str | Real):
        return (value,)
    return tuple(value)


def _positive(value: Any, name: str, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number ({unit}), got {value!r}")
    out = float(value)
    if not (out > 0 and math.isfinite(out)):
        raise ValueError(f"{name} must be positive and finite ({unit}), got {value!r}")
    return out


def _pressure(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"pressures_GPa entries must be finite numbers or None, got {value!r}")
    return float(value)


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    key = value.strip().lower().replace("_", "-") if isinstance(value, str) else None
    key = _ALIASES.get(key, key)
    if key not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose from {', '.join(choices)}")
    return key

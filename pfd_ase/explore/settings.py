"""Settings of an exploration: thermostats, barostats, :class:`ExploreSettings`.

:class:`ExploreSettings` holds the fields of :class:`~pfd_ase.explore.ExploreTask` and
validates them; the task itself, which can :meth:`~pfd_ase.explore.ExploreTask.run`,
lives in :mod:`pfd_ase.explore.driver`, so that nothing here imports what runs the MD.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

from pfd_ase.selectors.filters import FrameFilter

__all__ = ["BAROSTATS", "THERMOSTATS", "ExploreSettings"]

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

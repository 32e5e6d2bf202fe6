"""Shared pieces of the frame selectors: argument checks."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

from ase import Atoms


def check_count(value: object, name: str) -> int:
    """A positive integer (bools refused), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_positive(value: object, name: str, unit: str) -> float:
    """A positive finite number, else ValueError."""
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number ({unit}), got {value!r}") from None
    if not (out > 0 and out < float("inf")):
        raise ValueError(f"{name} must be a positive finite number ({unit}), got {value!r}")
    return out


def as_frames(frames: Sequence[Atoms] | None, name: str) -> list[Atoms]:
    """A list of Atoms; None means no frames. A single Atoms is refused (ambiguous)."""
    if frames is None:
        return []
    if isinstance(frames, Atoms):
        raise TypeError(f"{name} must be a sequence of ase.Atoms, not a single Atoms")
    out = list(frames)
    for i, atoms in enumerate(out):
        if not isinstance(atoms, Atoms):
            raise TypeError(f"{name}[{i}] is a {type(atoms).__name__}, not an ase.Atoms")
    return out

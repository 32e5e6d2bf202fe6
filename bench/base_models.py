"""Untouched pre-trained base models on a silicon recipe run's held-out test set.

    .venv/bin/python bench/base_models.py                       # runs/silicon (the quick run)
    .venv/bin/python bench/base_models.py --run runs/silicon_default

Scores CHGNet 0.3.0 (the package's offline base) and SevenNet-0 (``7net-0``, shipped in the
``sevenn`` wheel) on ``<run>/test/labelled.extxyz``, the recipe's held-out frames labelled by
its own labeler (every Si phase, BC8 and the vacancy cell; never trained on), with
:func:`pfd_ase.analysis.testset.score_models` (force RMSE, energy RMSE with one constant per
element removed, stress RMSE; overall and per structure). Issue 14 asks which base to
fine-tune by measured accuracy; this is the untouched half of that comparison. Writes
``bench/results/base_models.json``. SevenNet-0 needs ``pip install sevenn`` (it is not a
dependency of the package).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def _sevennet() -> Any:
    try:
        from sevenn.calculator import SevenNetCalculator
    except ImportError as exc:  # optional: not a dependency of pfd_ase
        message = f"SevenNet-0 needs the sevenn package: pip install sevenn ({exc})"
        raise SystemExit(message) from None
    return SevenNetCalculator("7net-0", device="cpu")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from pfd_ase.analysis.testset import score_models
    from pfd_ase.calculators import PFDCalculator
    from pfd_ase.data import read_frames

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/silicon", help="a finished silicon recipe run")
    args = p.parse_args(argv)
    path = Path(args.run) / "test" / "labelled.extxyz"
    if not path.exists():
        raise SystemExit(f"{path} not found: run the silicon recipe first (make demo)")
    frames = read_frames(path)
    labelers = sorted({str(a.info.get("pfd_labeler")) for a in frames})
    models = {"CHGNet-0.3.0": PFDCalculator("chgnet"), "SevenNet-0": _sevennet()}
    t0 = time.perf_counter()
    scores = score_models(models, frames)
    out = {
        "run": str(args.run),
        "test_set": str(path),
        "n_frames": len(frames),
        "labeler": labelers,
        "machine": f"{platform.node()} {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "wall_s": round(time.perf_counter() - t0, 1),
        "models": scores,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "base_models.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"{len(frames)} held-out frames of {args.run}, labelled by {', '.join(labelers)}")
    print(f"{'model':14s} {'F RMSE eV/Å':>12s} {'E RMSE meV/at':>14s} {'S RMSE GPa':>11s}")
    for name, s in scores.items():
        stress = s["stress_rmse_GPa"]
        print(
            f"{name:14s} {s['force_rmse_eV_A']:12.3f} {s['energy_rmse_meV_atom']:14.1f}"
            f" {float('nan') if stress is None else stress:11.2f}"
        )
    print(f"-> {RESULTS / 'base_models.json'}")
    return out


if __name__ == "__main__":
    main()

"""How much SevenNet-0 fine-tuning learns, for a few (epochs, learning rate) settings.

The frames of ``bench/chgnet_finetune.py --quick`` (Si in eight structures — diamond 8 and
16 atoms, β-Sn, FCC, BCC, BC8, hex-diamond, diamond with a vacancy — seeded rattles and
strains, labelled by Stillinger-Weber): 16 training frames (seeds 0, 1) and 16 held-out
frames (seeds 1000, 1001), so that the figures compare with CHGNet's in
``bench/results/chgnet_finetune.json``. Each model is scored on the held-out set, overall
and per phase: force RMSE (eV/Å), energy RMSE (eV/atom) raw and after removing one constant
shift, stress RMSE (GPa). The untouched SevenNet-0 is the first row.

::

    OPENBLAS_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/sevennet_finetune.py

Writes ``bench/results/sevennet_finetune.json`` and prints a table. Asserts nothing.
Needs ``sevenn`` (``pip install sevenn``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "sevennet_finetune.json"
CHGNET_RESULT = ROOT / "bench" / "results" / "chgnet_finetune.json"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from chgnet_finetune import label, make_frames, scores  # noqa: E402 - the same frames

#: (name, finetune_sevennet keyword arguments): the settings compared
SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("10 ep, lr 4e-3", {"epochs": 10, "learning_rate": 4e-3}),
    ("20 ep, lr 2e-3", {"epochs": 20, "learning_rate": 2e-3}),
    ("20 ep, lr 4e-3", {"epochs": 20, "learning_rate": 4e-3}),
]


def predict(model: str, frames: list[Atoms]) -> list[dict[str, np.ndarray]]:
    """Predictions through ``PFDCalculator``: ``e`` (eV/atom), ``f`` (eV/Å), ``s`` (GPa,
    3×3, ASE sign)."""
    from pfd_ase.calculators import PFDCalculator
    from pfd_ase.calculators.chgnet import GPA_PER_EV_A3

    calc = PFDCalculator(model)
    out = []
    for atoms in frames:
        a = atoms.copy()
        a.calc = calc
        out.append(
            {
                "e": a.get_potential_energy() / len(a),
                "f": a.get_forces(),
                "s": a.get_stress(voigt=False) * GPA_PER_EV_A3,
            }
        )
    return out


def table(results: dict[str, Any], walls: dict[str, float]) -> str:
    """Markdown table: one row per model, force RMSE per phase and overall errors."""
    phases = list(next(iter(results.values()))["phases"])
    head = ["model", "wall s", "F all", "E raw", "E shifted", "S GPa", *(f"F {p}" for p in phases)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        a = r["all"]
        wall = walls.get(name)
        row = [
            name,
            "–" if wall is None else f"{wall:.0f}",
            f"{a['force_rmse']:.3f}",
            f"{a['energy_rmse']:.3f}",
            f"{a['energy_rmse_shifted']:.4f}",
            f"{a['stress_rmse_gpa']:.2f}",
            *(f"{r['phases'][p]['force_rmse']:.3f}" for p in phases),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labeler", default="sw")
    p.add_argument("--train-seeds", type=int, default=2, help="structures × seeds frames")
    p.add_argument("--test-seeds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--settings", default=None, help="JSON list of [name, kwargs] pairs")
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=str(RESULT))
    args = p.parse_args(argv)
    settings = json.loads(args.settings) if args.settings else SETTINGS

    import torch

    from pfd_ase.training.sevennet import finetune_sevennet

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    train = label(make_frames(range(args.train_seeds)), args.labeler)
    test = label(make_frames(range(1000, 1000 + args.test_seeds)), args.labeler)
    print(f"{len(train)} training frames, {len(test)} held-out frames", flush=True)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="sevennet_ft_bench_"))
    results: dict[str, Any] = {"SevenNet-0": scores(test, predict("7net-0", test))}
    walls: dict[str, float] = {}
    runs: dict[str, Any] = {}
    for name, kwargs in settings:
        folder = work / name.replace(" ", "_").replace(",", "")
        t0 = time.perf_counter()
        ckpt = finetune_sevennet(train, folder, threads=args.threads, progress=False, **kwargs)
        walls[name] = time.perf_counter() - t0
        record = json.loads((ckpt.parent / "pfd_train.json").read_text())
        results[name] = scores(test, predict(str(ckpt), test))
        results[name]["train"] = scores(train, predict(str(ckpt), train))["all"]
        runs[name] = {
            "settings": record["settings"],
            "energy_shift_eV_per_atom": record["energy_shift_eV_per_atom"],
            "best_epoch": record["best_epoch"],
            "epochs_done": record["epochs_done"],
            "wall_s": round(walls[name], 1),
            "history": record["history"],
        }
        print(
            f"{name}: {walls[name]:.0f} s, held-out force RMSE "
            f"{results[name]['all']['force_rmse']:.3f} eV/Å",
            flush=True,
        )

    print(table(results, walls))
    base = results["SevenNet-0"]["all"]["force_rmse"]
    best = min(settings, key=lambda s: results[s[0]]["all"]["force_rmse"])[0]
    headline = f"held-out force RMSE (eV/Å): SevenNet-0 {base:.3f}, " + ", ".join(
        f"{n} {results[n]['all']['force_rmse']:.3f}" for n, _ in settings
    )
    chgnet = None
    if CHGNET_RESULT.exists():
        ref = json.loads(CHGNET_RESULT.read_text())
        if ref.get("n_train") == len(train) and ref.get("labeler") == args.labeler:
            chgnet = {
                m: ref["results"][m]["all"]["force_rmse"]
                for m in ("base", "new settings")
                if m in ref["results"]
            }
            headline += (
                f" | CHGNet on the same frames: base {chgnet.get('base', float('nan')):.3f}, "
                f"fine-tuned {chgnet.get('new settings', float('nan')):.3f}"
            )
    out = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.node()} {os.cpu_count()} cores",
        "labeler": args.labeler,
        "n_train": len(train),
        "n_test": len(test),
        "threads": args.threads,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "versions": _versions(),
        "headline": headline,
        "best_setting": best,
        "chgnet_same_frames_force_rmse": chgnet,
        "results": results,
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(headline)
    return 0


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("sevenn", "torch", "e3nn", "ase", "matscipy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(main())

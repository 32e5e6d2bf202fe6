"""Accuracy of the silicon recipe on its own held-out test set (runs or reuses a recipe run).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/silicon_accuracy.py --quick    # make demo's run
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/silicon_accuracy.py            # default preset
    .venv/bin/python bench/silicon_accuracy.py --quick --labeler sw              # SW as the truth
    .venv/bin/python bench/silicon_accuracy.py --quick --base-model chgnet       # CHGNet base

The recipe (:func:`pfd_ase.recipes.silicon.run_silicon`) is resumable: pointed at a finished
run directory (``--workdir``, default ``runs/silicon`` for ``--quick`` and
``runs/silicon_<preset>`` otherwise) it only reads the results back. Prints a table and writes
``bench/results/silicon_accuracy[_<preset>][_<labeler>][_<base>].json`` (``_<base>`` when
not the recipe's default base): ``{"preset", "wall_s",
"labeler", "models": {"base"|"PF"|"PFD": {"force_rmse_eV_A", "energy_rmse_meV_atom",
"stress_rmse_GPa", "per_phase": {...}}}, "phonon_max_dev_THz": {"PF", "PFD"},
"vacancy_diamond_eV": {"DFT", "PF", "PFD"}, "vacancy_vs_dft": {...} (the models' vacancy
computed as the DFT's, unrelaxed where it is), "stage_wall_s": {...}, "targets": {...}}``.
``wall_s`` is the recipe's wall time as recorded by its steps (the sum of every step's
``wall_s``, validation included, less the ``concurrent`` steps that ran beside the others,
plus the run's wait for them, ``references_wait_s``, when this call ran them), not this
script's.
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
#: Issue targets (force eV/Å, energy meV/atom, phonon THz, vacancy eV) per preset.
TARGETS = {
    "default": {"PF": (0.10, 10.0), "PFD": (0.13, 15.0), "phonon_THz": 0.5, "vacancy_eV": 0.3},
    "quick": {"PF": (0.15, None), "PFD": (0.20, None), "phonon_THz": 1.0, "vacancy_eV": None},
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from pfd_ase.analysis.validate import run_wall_s
    from pfd_ase.recipes.silicon import DEFAULT_BASE_MODEL, run_silicon

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", dest="preset", action="store_const", const="quick")
    group.add_argument("--production", dest="preset", action="store_const", const="production")
    p.set_defaults(preset="default")
    p.add_argument("--labeler", default="gpaw")
    p.add_argument(
        "--base-model", default=DEFAULT_BASE_MODEL, help=f"{DEFAULT_BASE_MODEL} (default) or chgnet"
    )
    p.add_argument("--workdir", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    suffix = "" if args.preset == "quick" else f"_{args.preset}"
    workdir = Path(args.workdir or f"runs/silicon{suffix}")
    t0 = time.perf_counter()
    result = run_silicon(
        workdir, args.preset, labeler=args.labeler, base_model=args.base_model, seed=args.seed
    )
    bench_wall = time.perf_counter() - t0
    walls = result["stage_wall_s"]
    vacancy = {
        name: (energies or {}).get("diamond")
        for name, energies in result["vacancy_formation_eV"].items()
    }
    out = {
        "preset": args.preset,
        "labeler": args.labeler,
        "base_model": args.base_model,
        "seed": args.seed,
        "wall_s": round(run_wall_s(walls, result.get("references_wait_s")), 1),
        "references_wait_s": result.get("references_wait_s"),
        "stage_wall_s": walls,
        "this_call_wall_s": round(bench_wall, 1),
        "machine": f"{platform.node()} {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "models": result["held_out"],
        "test_set": result["test_set"],
        "phonon_max_dev_THz": result["phonon_max_dev_THz"],
        "phonon_thermal": result.get("phonon_thermal"),
        "phonon_same_supercell": result.get("phonon_same_supercell"),
        "vacancy_diamond_eV": {"DFT": vacancy.get("DFT"), **vacancy},
        # the models computed the DFT's way (unrelaxed where the DFT is), the same cell
        "vacancy_vs_dft": result.get("vacancy_vs_dft"),
        "targets": TARGETS.get(args.preset),
    }
    name = "silicon_accuracy" + (f"_{args.preset}" if args.preset != "default" else "")
    name += "" if args.labeler == "gpaw" else f"_{args.labeler}"
    name += "" if args.base_model == DEFAULT_BASE_MODEL else f"_{Path(args.base_model).stem}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1, default=str) + "\n")

    print(f"preset {args.preset}, labeler {args.labeler}, recipe wall {out['wall_s']} s")
    print(f"{'model':6s} {'F RMSE eV/Å':>12s} {'E RMSE meV/at':>14s} {'S RMSE GPa':>11s}")
    for model, s in out["models"].items():
        stress = s["stress_rmse_GPa"]
        print(
            f"{model:6s} {s['force_rmse_eV_A']:12.3f} {s['energy_rmse_meV_atom']:14.1f}"
            f" {float('nan') if stress is None else stress:11.2f}"
        )
    print("phonon max |Δf| at Γ/X/L (THz):", out["phonon_max_dev_THz"])
    print("diamond vacancy E_f (eV):", out["vacancy_diamond_eV"])
    if out["vacancy_vs_dft"]:
        print("vacancy vs DFT, the same way:", out["vacancy_vs_dft"])
    print("wall per stage (s):", walls)
    print(f"-> {RESULTS / (name + '.json')}")
    return out


if __name__ == "__main__":
    main()

"""How converged are the ``gpaw`` labeler's default settings? Forces, energies and stresses of
perturbed Si frames of every phase against a denser k-mesh and a higher plane-wave cut-off.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/gpaw_convergence.py          # ~15 min, 1 core
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/gpaw_convergence.py --quick  # 3 frames

The frames are the silicon recipe's held-out frames of its ``quick`` cells (one per
structure, :func:`pfd_ase.analysis.testset.make_test_set`, seed 0). Each is computed with
:data:`pfd_ase.calculators.labelers.GPAW_DEFAULTS` and with each denser setting; the table
gives the RMSE of the default against the densest (force over all components, energy per
atom after removing the mean shift, stress over the 6 Voigt components), per structure.
Writes ``bench/results/gpaw_convergence.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
SETTINGS = {
    "default": {},
    "k_density_3.5": {"kpts": {"density": 3.5, "gamma": False}},
    "dense": {"kpts": {"density": 3.5, "gamma": False}, "mode": {"name": "pw", "ecut": 500.0}},
}


def main(argv: list[str] | None = None) -> dict:
    import tempfile

    from ase.units import GPa

    from pfd_ase.analysis.testset import make_test_set, structure_of
    from pfd_ase.calculators.labelers import make_labeler
    from pfd_ase.materials import SILICON_STRUCTURES, silicon

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="diamond, fcc and the vacancy cell only")
    args = p.parse_args(argv)
    names = ("diamond", "fcc", "diamond_vacancy") if args.quick else SILICON_STRUCTURES
    frames = make_test_set({n: silicon(n) for n in names}, 1, seed=0)
    labels: dict[str, list[dict]] = {k: [] for k in SETTINGS}
    walls: dict[str, list[float]] = {k: [] for k in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for key, overrides in SETTINGS.items():
            for i, frame in enumerate(frames):
                atoms = frame.copy()
                atoms.calc = make_labeler("gpaw", directory=Path(tmp) / f"{key}.{i}", **overrides)
                t0 = time.perf_counter()
                labels[key].append(
                    {
                        "energy": atoms.get_potential_energy(force_consistent=True) / len(atoms),
                        "forces": atoms.get_forces(),
                        "stress": atoms.get_stress(),
                    }
                )
                walls[key].append(time.perf_counter() - t0)
                print(
                    f"{key:14s} {structure_of(frame):16s} {len(atoms):3d} atoms "
                    f"{walls[key][-1]:7.1f} s",
                    flush=True,
                )
    ref = labels["dense"]
    out = {"date": time.strftime("%Y-%m-%d"), "machine": platform.node(), "settings": SETTINGS}
    rows = {}
    for key in SETTINGS:
        if key == "dense":
            continue
        de = np.array([a["energy"] - b["energy"] for a, b in zip(labels[key], ref, strict=True)])
        per = {}
        for frame, a, b, e in zip(frames, labels[key], ref, de - de.mean(), strict=True):
            per[structure_of(frame)] = {
                "force_rmse_eV_A": float(np.sqrt(np.mean((a["forces"] - b["forces"]) ** 2))),
                "force_max_eV_A": float(np.abs(a["forces"] - b["forces"]).max()),
                "energy_dev_meV_atom": float(1000 * e),
                "stress_rmse_GPa": float(np.sqrt(np.mean((a["stress"] - b["stress"]) ** 2)) / GPa),
            }
        forces = np.concatenate(
            [(a["forces"] - b["forces"]).ravel() for a, b in zip(labels[key], ref, strict=True)]
        )
        rows[key] = {
            "force_rmse_eV_A": float(np.sqrt(np.mean(forces**2))),
            "energy_rmse_meV_atom": float(1000 * np.sqrt(np.mean((de - de.mean()) ** 2))),
            "energy_shift_meV_atom": float(1000 * de.mean()),
            "wall_s": float(np.sum(walls[key])),
            "per_structure": per,
        }
    out["against_dense"] = rows
    out["dense_wall_s"] = float(np.sum(walls["dense"]))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("gpaw_convergence_quick.json" if args.quick else "gpaw_convergence.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nagainst {SETTINGS['dense']}:")
    print(
        f"{'setting':14s} {'structure':16s} {'F RMSE':>8s} {'F max':>8s} {'dE meV/at':>10s}"
        f" {'S RMSE GPa':>10s}"
    )
    for key, row in rows.items():
        for name, r in row["per_structure"].items():
            print(
                f"{key:14s} {name:16s} {r['force_rmse_eV_A']:8.4f} {r['force_max_eV_A']:8.4f}"
                f" {r['energy_dev_meV_atom']:10.2f} {r['stress_rmse_GPa']:10.3f}"
            )
        print(
            f"{key:14s} {'all':16s} {row['force_rmse_eV_A']:8.4f} {'':8s}"
            f" {row['energy_rmse_meV_atom']:10.2f}   (wall {row['wall_s']:.0f} s)"
        )
    print(f"-> {path}")
    return out


if __name__ == "__main__":
    main()

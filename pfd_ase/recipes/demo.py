"""A small end-to-end demo: label perturbed Si, train a tiny deepmd-kit model, run MD with it.

``python -m pfd_ase.recipes.demo --help``. With no options it runs offline on a laptop
(GPAW labels 8-atom cells, a tiny DPA-2 trains for a few hundred steps, Langevin MD
runs with the trained model as an ASE calculator) and writes ``summary.json`` and
``report.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms


def perturbed_silicon(
    n_frames: int, seed: int, strain: float = 0.02, displacement_A: float = 0.05
) -> list[Atoms]:
    """Randomly strained and displaced 8-atom diamond Si cells (``default_rng(seed)``).

    See :func:`pfd_ase.structures.perturb`; frames are named ``init-000``, ``init-001`` ...
    """
    from pfd_ase.data import FRAME_ID_KEY
    from pfd_ase.materials import silicon
    from pfd_ase.structures import perturb

    frames = perturb(
        silicon("diamond"), n_frames, np.random.default_rng(seed), strain, displacement_A
    )
    for i, atoms in enumerate(frames):
        atoms.info[FRAME_ID_KEY] = f"init-{i:03d}"
    return frames


def run_demo(
    workdir: str | Path = "runs/demo",
    labeler: str = "gpaw",
    n_frames: int = 8,
    train_steps: int = 300,
    md_steps: int = 50,
    temperature_K: float = 500.0,
    timestep_fs: float = 2.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the demo; return (and write to ``workdir/summary.json``) its summary."""
    from pfd_ase.analysis.report import write_report
    from pfd_ase.analysis.validate import model_errors
    from pfd_ase.calculators import PFDCalculator
    from pfd_ase.data import split_frames, to_deepmd, write_frames
    from pfd_ase.label import label_frames
    from pfd_ase.training import deepmd as dp

    workdir = Path(workdir)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    # run: label perturbed cells, train a tiny model on them
    result = label_frames(perturbed_silicon(n_frames, seed), labeler, workdir / "label")
    frames = result.frames
    if len(frames) < 2:
        raise RuntimeError(f"only {len(frames)} frames labelled; failures: {result.failures}")
    write_frames(workdir / "data" / "labelled.extxyz", frames)
    timings["label_s"] = time.perf_counter() - t0
    train, valid = split_frames(frames, val_fraction=0.25, seed=seed)
    train_sys = to_deepmd(train, workdir / "data" / "train", ["Si"])
    valid_sys = to_deepmd(valid, workdir / "data" / "valid", ["Si"])
    cfg = dp.training_input(
        dp.energy_model(["Si"], seed=seed), train_sys, valid_sys, steps=train_steps, seed=seed
    )
    t1 = time.perf_counter()
    dp.train(cfg, workdir / "train")
    model = dp.freeze(workdir / "train", "model.pth")
    timings["train_s"] = time.perf_counter() - t1

    # validate: errors on the held-out frames, MD with the model as an ASE calculator
    calc = PFDCalculator(model)
    errors = model_errors({"model_vs_dft": (calc, valid)}, workdir)
    t2 = time.perf_counter()
    atoms = md_run(calc, workdir / "md.traj", md_steps, temperature_K, timestep_fs, seed)
    timings["md_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0

    # report
    summary = {
        "labeler": labeler,
        "n_labelled": len(frames),
        "n_failed": len(result.failures),
        "n_train": len(train),
        "n_valid": len(valid),
        "model": str(model),
        "valid_force_rmse_eV_per_A": errors["model_vs_dft"]["force_rmse"],
        "errors": errors,
        "md_steps": md_steps,
        "md_final_temperature_K": float(atoms.get_temperature()),
        "md_ms_per_step": 1000 * timings["md_s"] / max(md_steps, 1),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "seed": seed,
    }
    write_report(workdir, summary, "PFD demo")
    return summary


def md_run(
    calc: Any, path: Path, steps: int, temperature_K: float, timestep_fs: float, seed: int
) -> Atoms:
    """Langevin MD of 64-atom diamond Si with ``calc``, a frame every 10 steps in ``path``."""
    from ase import units
    from ase.io import Trajectory
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    from pfd_ase.materials import silicon

    atoms = silicon("diamond", 2)
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    dyn = Langevin(
        atoms,
        timestep_fs * units.fs,
        temperature_K=temperature_K,
        friction=0.01,
        fixcm=False,
        rng=rng,
    )
    with Trajectory(path, "w", atoms) as traj:
        dyn.attach(traj.write, interval=10)
        dyn.run(steps)
    return atoms


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m pfd_ase.recipes.demo", description=__doc__)
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--labeler", default="gpaw", help="gpaw (default), sw, tersoff, emt, vasp")
    parser.add_argument("--n-frames", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--md-steps", type=int, default=50)
    parser.add_argument("--temperature-K", type=float, default=500.0)
    parser.add_argument("--timestep-fs", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from pfd_ase.allocator import tune_allocator

    tune_allocator()  # large model calls: keep freed memory (pfd_ase.allocator)
    summary = run_demo(**{k: v for k, v in vars(args).items()})
    for key, value in summary.items():
        print(f"{key:>28}: {value}")
    return summary


if __name__ == "__main__":
    main()

"""How much CHGNet fine-tuning learns: base vs old vs new fine-tuning settings (issue 14).

Si frames of eight structures (diamond 8 and 16 atoms, β-Sn, FCC, BCC, BC8, hex-diamond,
diamond with a vacancy), seeded rattles and strains, labelled by Stillinger-Weber
(``--quick``, the default labeler) or GPAW (``--labeler gpaw``, slow). A held-out set is
built the same way from other seeds. Each model is scored on the held-out set, overall
and per phase: force RMSE (eV/Å), energy RMSE (eV/atom) raw and after removing one
constant shift (the mean error over the whole held-out set), stress RMSE (GPa).

::

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/chgnet_finetune.py --quick

Writes ``bench/results/chgnet_finetune.json`` and prints a table. Asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "chgnet_finetune.json"

#: structure name -> (materials name, supercell)
STRUCTURES: dict[str, tuple[str, Any]] = {
    "diamond8": ("diamond", 1),
    "diamond16": ("diamond", (1, 1, 2)),
    "beta_sn": ("beta_sn", (1, 1, 2)),
    "fcc": ("fcc", (2, 1, 1)),
    "bcc": ("bcc", (2, 2, 1)),
    "bc8": ("bc8", 1),
    "hex_diamond": ("hex_diamond", (1, 1, 2)),
    "diamond_vacancy": ("diamond_vacancy", 1),
}

#: the fine-tuning the workflow ran before issue 14: ``chgnet_epochs`` 5 and the old
#: defaults of ``finetune_chgnet`` (lr 1e-3, batch 4, CHGNet's freezing, stress weight 0.1
#: on GPa, no validation), run by the old code (``--old-ref``) when git can show it
OLD_SETTINGS: dict[str, Any] = {
    "epochs": 5,
    "learning_rate": 1e-3,
    "batch_size": 4,
    "freeze_layers": None,
    "stress_weight": 0.1,
    "valid_fraction": 0.0,
}
#: the commit whose ``pfd_ase/training/chgnet.py`` is the old code
OLD_REF = "91c1fbc"


def _structure(name: str) -> Atoms:
    try:
        from pfd_ase.materials import silicon
    except ImportError:  # pragma: no cover - materials module absent
        from ase.build import bulk

        atoms = bulk("Si", "diamond", a=5.431, cubic=True)
        return atoms.repeat((1, 1, 2)) if name == "diamond16" else atoms
    kind, size = STRUCTURES[name]
    return silicon(kind, size)


def make_frames(seeds: range, rattle: float = 0.08, strain: float = 0.02) -> list[Atoms]:
    """Unlabelled frames: each structure once per seed, strained and rattled.

    ``atoms.info["phase"]`` names the structure.
    """
    frames = []
    for seed in seeds:
        for k, name in enumerate(STRUCTURES):
            rng = np.random.default_rng([seed, k])
            atoms = _structure(name)
            eps = rng.normal(0.0, strain, (3, 3))
            atoms.set_cell(atoms.cell.array @ (np.eye(3) + (eps + eps.T) / 2), scale_atoms=True)
            atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
            atoms.info["phase"] = name
            frames.append(atoms)
    return frames


def label(frames: list[Atoms], labeler: str) -> list[Atoms]:
    """Labelled copies (energy, forces, stress) by a ``make_labeler`` labeler."""
    from pfd_ase.label import label_in_memory

    return label_in_memory(frames, labeler)


def predict(model_path: str, frames: list[Atoms]) -> list[dict[str, np.ndarray]]:
    """CHGNet predictions: ``e`` (eV/atom), ``f`` (eV/Å), ``s`` (GPa, ASE sign)."""
    from pfd_ase.calculators.chgnet import atoms_to_structure, load_chgnet_model

    model = load_chgnet_model(model_path, use_device="cpu")
    graphs = [model.graph_converter(atoms_to_structure(a)) for a in frames]
    preds = model.predict_graph(graphs, task="efs", batch_size=8)
    preds = [preds] if isinstance(preds, dict) else preds
    return [{"e": p["e"], "f": p["f"], "s": np.asarray(p["s"])} for p in preds]


def scores(frames: list[Atoms], preds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """RMSEs overall and per phase (energy shift: mean error over all frames)."""
    from pfd_ase.training.chgnet import chgnet_targets

    targets = [chgnet_targets(a) for a in frames]
    de = np.array([float(p["e"]) - float(t["e"]) for p, t in zip(preds, targets, strict=True)])
    shift = float(de.mean())
    phases = [a.info["phase"] for a in frames]

    def block(idx: list[int]) -> dict[str, float]:
        df = np.concatenate([(preds[i]["f"] - targets[i]["f"]).ravel() for i in idx])
        ds = np.concatenate([(preds[i]["s"] - targets[i]["s"]).ravel() for i in idx])
        return {
            "force_rmse": float(np.sqrt(np.mean(df**2))),
            "energy_rmse": float(np.sqrt(np.mean(de[idx] ** 2))),
            "energy_rmse_shifted": float(np.sqrt(np.mean((de[idx] - shift) ** 2))),
            "stress_rmse_gpa": float(np.sqrt(np.mean(ds**2))),
        }

    out = {"all": block(list(range(len(frames)))), "energy_shift_eV_per_atom": shift}
    out["phases"] = {
        ph: block([i for i, p in enumerate(phases) if p == ph]) for ph in dict.fromkeys(phases)
    }
    return out


def old_finetune(ref: str) -> Any:
    """``finetune_chgnet`` as it was at git ``ref`` (``None`` when git cannot show it)."""
    import importlib.util
    import subprocess

    try:
        source = subprocess.run(
            ["git", "show", f"{ref}:pfd_ase/training/chgnet.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp(prefix="chgnet_old_")) / "chgnet_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("pfd_ase_training_chgnet_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.finetune_chgnet


def run_finetune(
    frames: list[Atoms],
    workdir: Path,
    settings: dict[str, Any],
    threads: int,
    finetune_chgnet: Any = None,
) -> tuple[str, dict[str, Any], float]:
    """Fine-tune with ``settings``; return (checkpoint, its record, wall seconds)."""
    import inspect

    if finetune_chgnet is None:
        from pfd_ase.training.chgnet import finetune_chgnet

    accepted = inspect.signature(finetune_chgnet).parameters
    kwargs = {k: v for k, v in settings.items() if k in accepted}
    if "valid_fraction" not in accepted and settings.get("valid_fraction"):
        raise SystemExit("this finetune_chgnet has no valid_fraction")
    t0 = time.perf_counter()
    ckpt = finetune_chgnet(frames, workdir, threads=threads, progress=False, **kwargs)
    wall = time.perf_counter() - t0
    record = json.loads((Path(ckpt).parent / "pfd_train.json").read_text())
    return str(ckpt), record, wall


def table(results: dict[str, Any]) -> str:
    """Markdown table: rows = models, columns = phases (force RMSE) and overall errors."""
    models = list(results)
    phases = list(next(iter(results.values()))["phases"])
    head = ["model", "F all", "E raw", "E shifted", "S GPa", *(f"F {p}" for p in phases)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in models:
        r = results[m]
        a = r["all"]
        row = [
            m,
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
    p.add_argument("--quick", action="store_true", help="SW labels, 2 training seeds")
    p.add_argument("--labeler", default="sw")
    p.add_argument("--train-seeds", type=int, default=None, help="structures × seeds frames")
    p.add_argument("--test-seeds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=None, help="epochs of the new settings")
    p.add_argument("--sevenn", action="store_true", help="also score SevenNet-0 (if installed)")
    p.add_argument("--old-ref", default=OLD_REF, help="git commit of the old code")
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=str(RESULT))
    args = p.parse_args(argv)
    n_train = args.train_seeds or (2 if args.quick else 4)

    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    train = label(make_frames(range(n_train)), args.labeler)
    test = label(make_frames(range(1000, 1000 + args.test_seeds)), args.labeler)
    print(f"{len(train)} training frames, {len(test)} held-out frames", flush=True)

    new = {}
    if args.epochs is not None:
        new["epochs"] = args.epochs
    work = Path(args.workdir or tempfile.mkdtemp(prefix="chgnet_ft_bench_"))
    results: dict[str, Any] = {"base": scores(test, predict("0.3.0", test))}
    runs: dict[str, Any] = {}
    old = old_finetune(args.old_ref)
    print(f"old code: {'git ' + args.old_ref if old else 'not found, new code, old settings'}")
    for name, settings, func in (
        ("old settings", OLD_SETTINGS, old),
        ("new settings", new, None),
    ):
        folder = work / name.replace(" ", "_")
        ckpt, record, wall = run_finetune(train, folder, settings, args.threads, func)
        results[name] = scores(test, predict(ckpt, test))
        results[name]["train"] = scores(train, predict(ckpt, train))["all"]
        runs[name] = {
            "code": f"git {args.old_ref}" if func is not None else "new",
            "settings": record["settings"],
            "best_epoch": record.get("best_epoch"),
            "epochs_done": record["epochs_done"],
            "wall_s": round(wall, 1),
            "history": record["history"],
        }
        print(f"{name}: {wall:.0f} s", flush=True)
    if args.sevenn:
        results.update(_sevenn(test))

    print(table(results))
    phases = list(results["base"]["phases"])
    goal = all(
        results["new settings"]["phases"][ph]["force_rmse"]
        < results["base"]["phases"][ph]["force_rmse"]
        for ph in phases
    )
    b, o, n = (results[k]["all"]["force_rmse"] for k in ("base", "old settings", "new settings"))
    out = {
        "date": datetime.date.today().isoformat(),
        "machine": "2-core CPU",
        "labeler": args.labeler,
        "n_train": len(train),
        "n_test": len(test),
        "threads": args.threads,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "versions": _versions(),
        "headline": (
            f"held-out force RMSE (eV/Å) base {b:.3f}, old fine-tuning {o:.3f}, "
            f"new fine-tuning {n:.3f}"
        ),
        "goal": {
            "text": "the fine-tuned model (new settings) beats the base in every phase",
            "met": goal,
        },
        "results": results,
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(out["headline"], "| goal met:", goal)
    return 0


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("chgnet", "torch", "ase", "matscipy", "sevenn"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _sevenn(test: list[Atoms]) -> dict[str, Any]:
    """SevenNet-0, untouched, on the held-out frames (skipped when not installed)."""
    try:
        from sevenn.calculator import SevenNetCalculator
    except ImportError as exc:
        print(f"SevenNet-0 skipped: {exc}", file=sys.stderr)
        return {}
    calc = SevenNetCalculator("7net-0", device="cpu")
    from pfd_ase.calculators.chgnet import GPA_PER_EV_A3

    preds = []
    for atoms in test:
        a = atoms.copy()
        a.calc = calc
        preds.append(
            {
                "e": a.get_potential_energy() / len(a),
                "f": a.get_forces(),
                "s": a.get_stress(voigt=False) * GPA_PER_EV_A3,
            }
        )
    return {"SevenNet-0": scores(test, preds)}


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(main())

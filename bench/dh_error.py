"""dH as an error signal (issue 15.3; PFD supplement Fig. S13) and the cost of watching it in MD.

::

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/dh_error.py --quick               # SW, minutes
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/dh_error.py --run runs/q_7net      # a recipe run
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/dh_error.py --run runs/silicon_default

1. **dH against the error.** Every atom of every held-out frame gets its differential entropy
   dH (nats, QUESTS descriptors k = 32, rc = 5 Å, bandwidth 0.015 1/Å:
   :class:`pfd_ase.selectors.DescriptorBank`) against the environments of the fine-tuning
   set, and its force error ``|F_model - F_label|`` (eV/Å) for the fine-tuned (PF) model,
   and for the untouched base model beside it. Reported: Spearman's rho
   (``scipy.stats.spearmanr``) of dH against the error, and the error distribution (n, mean,
   median, 90th percentile) of the atoms with dH <= 2 and with dH > 2.
2. **Cost of the signal during MD.** Energy+forces+stress calls of the PF model on a
   512-atom diamond Si cell (rattled by 0.05 Å, fresh positions every call) with and without
   :class:`pfd_ase.calculators.DHMonitor`, interleaved, after warm-up calls; the overhead is
   the ratio of the medians minus one. The dH alone (descriptors + kernel sums) is timed
   against the fine-tuning set's bank and against larger banks (perturbed 64-atom cells of
   every Si structure, up to 50 000 environments: a production training set).

Forms:

* ``--run DIR``: a finished silicon recipe run. Fine-tuning set: ``DIR/data/labelled.extxyz``
  (every labelled frame; the teacher is trained on all of them); held-out set:
  ``DIR/test/labelled.extxyz`` (every structure, never trained on); PF model: the run's
  ``teacher`` (``summary.json``); base: its ``base_model``. Labels are the run's labeler.
* ``--quick``: Stillinger-Weber labels, in ``runs/dh_error_quick`` (resumable). SevenNet-0 is
  fine-tuned (:func:`pfd_ase.training.sevennet.finetune_sevennet`, 20 epochs, all frames
  trained) on perturbed cells of four structures only (diamond, hex-diamond, beta-Sn, the
  diamond vacancy: the data of an early recipe stage); the held-out set is the recipe's
  (:func:`pfd_ase.analysis.testset.make_test_set`) over all eight, so four of them are
  phases the model was not fine-tuned on. The JSON says which.

Writes ``bench/results/dh_error.json``: one entry per form under ``"results"`` (keyed
``quick`` or the run's folder name; a rerun replaces its entry), each with its per-atom points,
and ``"headline"`` / ``"goal"`` / ``"met"`` from the full-form entry with the most held-out
atoms (else the quick one). Goals (our choice): Spearman rho >= 0.5; the mean and median
error above dH = 2 larger than below; the monitor's overhead <= 20 % on 512 atoms.
``bench/results/dh_error.png``: the scatter and the two distributions of every entry.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from pfd_ase.analysis.dh import DH_THRESHOLD as THRESHOLD
from pfd_ase.analysis.dh import dh_versus_error
from pfd_ase.analysis.dh import error_statistics as analyse  # noqa: F401 - the bench's name

RESULTS = Path(__file__).parent / "results"
JSON_PATH = RESULTS / "dh_error.json"
PNG_PATH = RESULTS / "dh_error.png"
GOAL = {"spearman_rho": 0.5, "monitor_overhead_pct": 20.0}
QUICK_TRAIN = ("diamond", "hex_diamond", "beta_sn", "diamond_vacancy")
QUICK_MIN_ATOMS = 8  # quick cells repeated to at least this many atoms
QUICK_TRAIN_FRAMES = 6  # per training structure
QUICK_TEST_FRAMES = 3  # per structure (all eight)
QUICK_EPOCHS = 20
LARGE_BANKS = (10_000, 50_000)


# --------------------------------------------------------------------------- data


def quick_data(workdir: Path, seed: int, threads: int) -> dict[str, Any]:
    """SW-labelled fine-tuning and held-out sets, and SevenNet-0 fine-tuned on the former."""
    from pfd_ase.analysis.testset import make_test_set
    from pfd_ase.data import FRAME_ID_KEY, read_frames, write_frames
    from pfd_ase.label import label_in_memory
    from pfd_ase.materials import SILICON_STRUCTURES, silicon
    from pfd_ase.structures import perturb, repeated_to
    from pfd_ase.training.sevennet import finetune_sevennet

    structures = {n: repeated_to(silicon(n), QUICK_MIN_ATOMS) for n in SILICON_STRUCTURES}
    train_path, test_path = workdir / "train.extxyz", workdir / "test.extxyz"
    if not (train_path.exists() and test_path.exists()):
        rng = np.random.default_rng(seed)
        train = []
        for name in QUICK_TRAIN:
            for k, atoms in enumerate(
                perturb(structures[name], QUICK_TRAIN_FRAMES, rng, 0.03, 0.08)
            ):
                atoms.info[FRAME_ID_KEY] = f"train.{name}.{k:03d}"
                train.append(atoms)
        write_frames(train_path, label_in_memory(train, "sw"))
        test = make_test_set(structures, QUICK_TEST_FRAMES, seed)
        write_frames(test_path, label_in_memory(test, "sw"))
    train, test = read_frames(train_path), read_frames(test_path)
    t0 = time.perf_counter()
    model = finetune_sevennet(
        train,
        workdir / "finetune",
        valid_frames=[],
        epochs=QUICK_EPOCHS,
        seed=seed,
        threads=threads,
        progress=False,
    )
    return {
        "train": train,
        "test": test,
        "pf": str(model),
        "base": "7net-0",
        "labeler": "sw (Stillinger-Weber, matscipy)",
        "finetune_wall_s": round(time.perf_counter() - t0, 1),
        "setup": {
            "train_structures": list(QUICK_TRAIN),
            "unseen_structures": [n for n in SILICON_STRUCTURES if n not in QUICK_TRAIN],
            "train_frames_per_structure": QUICK_TRAIN_FRAMES,
            "train_perturbation": {"cell_strain": 0.03, "displacement_A": 0.08},
            "test_frames_per_structure": QUICK_TEST_FRAMES,
            "min_atoms": QUICK_MIN_ATOMS,
            "finetune": f"SevenNet-0, {QUICK_EPOCHS} epochs, lr 4e-3, every frame trained",
        },
    }


def run_data(run: Path) -> dict[str, Any]:
    """The fine-tuning set, held-out set and models of a finished recipe run."""
    from pfd_ase._io import read_json
    from pfd_ase.data import read_frames

    summary = read_json(run / "summary.json")
    teacher = summary.get("teacher")
    test_path = run / "test" / "labelled.extxyz"
    if not teacher or not test_path.exists():
        raise SystemExit(f"{run} is not a finished recipe run (no teacher or no {test_path})")
    test = read_frames(test_path)
    config = summary.get("config", {})
    base = (config.get("base_model") or {}).get("path")
    labeler = (config.get("labeler") or {}).get("name")
    return {
        "train": read_frames(run / "data" / "labelled.extxyz"),
        "test": test,
        "pf": str(teacher),
        "base": base,
        "labeler": labeler,
        "setup": {"run": str(run), "teacher": str(teacher), "base_model": base},
    }


# --------------------------------------------------------------------------- dH vs error


def error_signal(train: list, test: list, calcs: dict[str, Any], threads: int = 1) -> dict:
    """dH of every held-out atom against ``train``, and each calculator's force errors
    (:func:`pfd_ase.analysis.dh.dh_versus_error`; the bank is returned as ``bank_object``)."""
    from pfd_ase.selectors import DescriptorBank

    bank = DescriptorBank.from_frames(train, source="fine-tuning set")
    return {"bank_object": bank, **dh_versus_error(train, test, calcs, threads, bank=bank)}


# --------------------------------------------------------------------------- overhead


def _median_ms(times: list[float]) -> float:
    return round(1e3 * float(np.median(times)), 2)


def monitor_overhead(
    model: str, bank: Any, repeats: int, threads: int, seed: int
) -> dict[str, Any]:
    """PF model calls with and without :class:`DHMonitor` on 512 atoms; dH against banks."""
    from ase.calculators.calculator import all_changes

    from pfd_ase.calculators import DHMonitor, PFDCalculator
    from pfd_ase.materials import SILICON_STRUCTURES, silicon
    from pfd_ase.selectors import DescriptorBank
    from pfd_ase.structures import perturb, repeated_to

    rng = np.random.default_rng(seed)
    cell = silicon("diamond", 4)
    calc = PFDCalculator(model)
    monitor = DHMonitor(calc, bank, threads=threads)
    props = ["energy", "forces", "stress"]

    def fresh():
        atoms = cell.copy()
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        return atoms

    for _ in range(2):  # warm-up: first calls of a torch model are slower
        calc.calculate(fresh(), props, all_changes)
        monitor.calculate(fresh(), props, all_changes)
    plain, wrapped = [], []
    for _ in range(repeats):
        for target, times in ((calc, plain), (monitor, wrapped)):
            atoms = fresh()
            t0 = time.perf_counter()
            target.calculate(atoms, props, all_changes)
            times.append(time.perf_counter() - t0)
    model_ms = _median_ms(plain)
    # dH alone against banks of growing size
    big = [
        atoms
        for name in SILICON_STRUCTURES
        for atoms in perturb(repeated_to(silicon(name), 64), 100, rng, 0.03, 0.1)
    ]
    banks = [("fine-tuning set", bank)]
    for n in LARGE_BANKS:
        banks.append((f"{n} environments", DescriptorBank.from_frames(big, max_environments=n)))
    by_bank = []
    for label, b in banks:
        times = []
        for _ in range(repeats):
            atoms = fresh()
            t0 = time.perf_counter()
            b.delta_entropy(atoms, threads=threads)
            times.append(time.perf_counter() - t0)
        dh_ms = _median_ms(times)
        by_bank.append(
            {
                "bank": label,
                "n_environments": len(b),
                "dH_ms": dh_ms,
                "dH_over_model_pct": round(100 * dh_ms / model_ms, 2),
            }
        )
    return {
        "model": model,
        "n_atoms": len(cell),
        "threads": threads,
        "repeats": repeats,
        "model_call_ms": model_ms,
        "monitor_call_ms": _median_ms(wrapped),
        "overhead_pct": round(100 * (np.median(wrapped) / np.median(plain) - 1), 2),
        "dH_by_bank": by_bank,
        "goal_pct": GOAL["monitor_overhead_pct"],
    }


# --------------------------------------------------------------------------- output


def _headline(results: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    full = {k: v for k, v in results.items() if v["form"] == "full"}
    pool = full or results
    key = max(pool, key=lambda k: (pool[k]["n_test_atoms"], k))
    return key, pool[key]


def write_outputs(entry: dict[str, Any], label: str) -> dict[str, Any]:
    RESULTS.mkdir(exist_ok=True)
    data = json.loads(JSON_PATH.read_text()) if JSON_PATH.exists() else {}
    results = data.get("results", {})
    results[label] = entry
    key, best = _headline(results)
    pf = best["models"]["PF"]
    dist = pf["force_error_eV_A"]
    above_larger = bool(
        dist["dH>2"]["n"]
        and dist["dH<=2"]["n"]
        and dist["dH>2"]["mean"] > dist["dH<=2"]["mean"]
        and dist["dH>2"]["median"] > dist["dH<=2"]["median"]
    )
    overhead = float(best["monitor_overhead"]["overhead_pct"])
    out = {
        "name": "dh_error",
        "headline": {
            "source": key,
            "spearman_rho": pf["spearman_rho"],
            "mean_error_above_over_below": pf["mean_error_above_over_below"],
            "monitor_overhead_pct": overhead,
        },
        "goal": {
            "spearman_rho": f">= {GOAL['spearman_rho']}",
            "mean_error_above_over_below": "> 1 (mean and median above dH = 2 larger)",
            "monitor_overhead_pct": f"<= {GOAL['monitor_overhead_pct']} (512 atoms)",
        },
        "met": {
            "spearman_rho": (pf["spearman_rho"] or -1.0) >= GOAL["spearman_rho"],
            "errors_above_larger": bool(above_larger),
            "monitor_overhead": bool(overhead <= GOAL["monitor_overhead_pct"]),
        },
        "threshold_dH": THRESHOLD,
        "results": results,
    }
    JSON_PATH.write_text(json.dumps(out, indent=1, default=str) + "\n")
    plot(results)
    return out


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(results, key=lambda k: (results[k]["form"] != "full", k))
    fig, axes = plt.subplots(len(keys), 2, figsize=(11, 4.2 * len(keys)), squeeze=False)
    for row, key in zip(axes, keys, strict=True):
        entry = results[key]
        pts = entry["points"]
        dh = np.array(pts["dH"], dtype=float)
        err = np.array(pts["force_error_PF_eV_A"], dtype=float)
        names = np.array(pts["structure"])
        for name in dict.fromkeys(pts["structure"]):
            mask = names == name
            row[0].scatter(dh[mask], err[mask], s=9, alpha=0.7, label=name)
        row[0].axvline(THRESHOLD, color="k", ls="--", lw=1)
        pf = entry["models"]["PF"]
        row[0].set_title(f"{key}: PF model, Spearman rho = {pf['spearman_rho'] or np.nan:.2f}")
        row[0].set_xlabel("dH against the fine-tuning set (nats)")
        row[0].set_ylabel("|F error| per atom (eV/Å)")
        row[0].set_yscale("log")
        row[0].legend(fontsize=7, markerscale=1.5)
        low, high = err[dh <= THRESHOLD], err[dh > THRESHOLD]
        parts = [p for p in (low, high) if len(p)]
        labels = [
            f"dH <= 2 (n={len(low)})" if len(low) else None,
            f"dH > 2 (n={len(high)})" if len(high) else None,
        ]
        row[1].boxplot(parts, whis=(10, 90), showmeans=True)
        row[1].set_xticks(range(1, len(parts) + 1), [lab for lab in labels if lab])
        row[1].set_yscale("log")
        row[1].set_ylabel("|F error| per atom (eV/Å)")
        row[1].set_title(f"{key}: labels {entry['labeler']}")
    fig.tight_layout()
    fig.savefig(PNG_PATH, dpi=110)
    plt.close(fig)


def print_table(entry: dict[str, Any], label: str) -> None:
    print(
        f"\n{label}: {entry['n_test_atoms']} held-out atoms ({entry['n_test_frames']} frames), "
        f"bank of {entry['bank']['n_environments']} environments ({entry['n_train_frames']} "
        f"frames), labels {entry['labeler']}"
    )
    print(
        f"{'model':6s} {'rho':>6s} {'n<=2':>5s} {'mean':>7s} {'med':>7s} {'p90':>7s} "
        f"{'n>2':>5s} {'mean':>7s} {'med':>7s} {'p90':>7s}  (|F err| eV/Å)"
    )
    for name, m in entry["models"].items():
        lo, hi = m["force_error_eV_A"]["dH<=2"], m["force_error_eV_A"]["dH>2"]

        def f(x):
            return f"{x:7.3f}" if x is not None else f"{'-':>7s}"

        rho = m["spearman_rho"]
        print(
            f"{name:6s} {np.nan if rho is None else rho:6.3f} {lo['n']:5d} {f(lo['mean'])} "
            f"{f(lo['median'])} "
            f"{f(lo['p90'])} {hi['n']:5d} {f(hi['mean'])} {f(hi['median'])} {f(hi['p90'])}"
        )
    print(f"{'structure':16s} {'atoms':>5s} {'med dH':>7s} {'>2':>5s} {'PF err':>7s}")
    for name, s in entry["per_structure"].items():
        print(
            f"{name:16s} {s['atoms']:5d} {s['median_dH']:7.2f} {s['frac_dH>2']:5.2f} "
            f"{s['mean_error_eV_A']:7.3f}"
        )
    o = entry["monitor_overhead"]
    print(
        f"DHMonitor on {o['n_atoms']} atoms, {o['threads']} thread(s): model call "
        f"{o['model_call_ms']:.0f} ms, with dH {o['monitor_call_ms']:.0f} ms "
        f"-> overhead {o['overhead_pct']:+.1f} % (goal <= {o['goal_pct']:.0f} %)"
    )
    for b in o["dH_by_bank"]:
        print(
            f"  dH alone vs {b['bank']:18s} ({b['n_environments']:6d} env): "
            f"{b['dH_ms']:8.1f} ms = {b['dH_over_model_pct']:5.1f} % of the model call"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    form = p.add_mutually_exclusive_group(required=True)
    form.add_argument("--quick", action="store_true", help="SW labels, fine-tune here")
    form.add_argument("--run", type=Path, help="a finished silicon recipe run directory")
    p.add_argument("--workdir", type=Path, default=Path("runs/dh_error_quick"))
    p.add_argument("--threads", type=int, default=1, help="torch and kernel-sum threads")
    p.add_argument("--repeats", type=int, default=None, help="timed calls (quick 3, full 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-overhead", action="store_true", help="skip the 512-atom timing")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from pfd_ase.calculators import PFDCalculator

    t0 = time.perf_counter()
    data = quick_data(args.workdir, args.seed, args.threads) if args.quick else run_data(args.run)
    label = "quick" if args.quick else args.run.resolve().name
    models = {"PF": data["pf"], "base": data["base"]}
    calcs = {name: PFDCalculator(path) for name, path in models.items()}
    signal = error_signal(data["train"], data["test"], calcs, args.threads)
    bank = signal.pop("bank_object")
    points = signal.pop("points")
    entry: dict[str, Any] = {
        "form": "quick" if args.quick else "full",
        "labeler": data["labeler"],
        "setup": data["setup"],
        "models_used": models,
        **signal,
    }
    repeats = args.repeats or (3 if args.quick else 5)
    if not args.no_overhead:
        entry["monitor_overhead"] = monitor_overhead(
            data["pf"], bank, repeats, args.threads, args.seed
        )
    entry.update(
        {
            "machine": f"{platform.node()} {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d"),
            "wall_s": round(time.perf_counter() - t0, 1),
            "finetune_wall_s": data.get("finetune_wall_s"),
            "points": points,
        }
    )
    if "monitor_overhead" not in entry:
        old = json.loads(JSON_PATH.read_text()).get("results", {}) if JSON_PATH.exists() else {}
        entry["monitor_overhead"] = old.get(label, {}).get("monitor_overhead")
        if entry["monitor_overhead"] is None:
            raise SystemExit("--no-overhead needs an earlier entry with the timing")
    print_table(entry, label)
    out = write_outputs(entry, label)
    print(f"\nheadline ({out['headline']['source']}): {out['headline']}; met: {out['met']}")
    print(f"-> {JSON_PATH}, {PNG_PATH} ({entry['wall_s']:.0f} s)")
    return out


if __name__ == "__main__":
    main()

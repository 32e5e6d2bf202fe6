"""Selection efficiency (issue 15.2; PFD supplement Fig. S1): entropy selection against random
and max-model-deviation selection, on real MD of Si.

::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/selection_efficiency.py --quick
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/selection_efficiency.py
    .venv/bin/python bench/selection_efficiency.py --quick --quality-only   # no training

**Pool** (one per ``--pool-seeds`` seed): NPT MD at 500 K and 1 GPa (2 fs steps, MTK barostat,
a frame every 10 steps) of diamond Si for 2000 steps, as in Fig. S1, plus the other seven
structures of the Si study (hex-diamond, β-Sn, FCC, BCC, HCP, BC8, diamond with a vacancy)
for ``other_steps`` steps each, pooled; cells of the recipe's ``default`` preset (8 atoms,
BC8 16, the vacancy 15). The MD runs on the labeler itself in ``--quick`` (Stillinger-Weber)
and on the base model (SevenNet-0) in the full form, as exploration does in a PFD run.
**Initial set**: one perturbed copy of each structure (8 frames), labelled; it is every
model's training data before selection and the selectors' reference. **Test set**: 5
perturbed copies of each structure from a stream nothing else draws
(:func:`pfd_ase.analysis.testset.make_test_set`), labelled, never trained on.

Two measurements:

1. **Selection quality** (no training; every pool seed): the entropy H (nats,
   :func:`pfd_ase.selectors.quests.entropy`) of the training set (initial set + the first N
   selected frames) for entropy selection with chunk sizes 1, 5, 10 and frame scores
   ``sum``, ``mean``, ``max``, for random selection (5 seeds) and for max-model-deviation
   selection; and the atoms each set holds (the labelling cost).
2. **Error curves** (pool seed 0): SevenNet-0 fine-tuned (``finetune_sevennet``, its default
   20 epochs at 4e-3, no validation split: the same training for every set) on the initial
   set + the first N frames of each method, scored on the test set (force RMSE eV/Å, energy
   RMSE meV/atom after one constant shift). Methods: entropy selection (the configuration of
   ``--entropy``, default the package's :class:`~pfd_ase.selectors.EntropySelector`
   defaults), random selection (5 seeds: mean and spread), and max force deviation of a
   committee of 4 models fine-tuned on the initial set with seeds 0-3 (DP-GEN's criterion,
   highest first, no upper trust bound).

Only frames a method picks are labelled (one task folder per pool frame under
``--workdir``; reruns reuse labels, trainings and MD). Headline: the frames entropy
selection needs to reach random selection's mean force RMSE at the largest N
(interpolated in log N); goal ≤ half that N (the issue: random's error at 100 frames with
≤ 50). Writes ``bench/results/selection_efficiency[_quick].json`` and a PNG beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROOT = HERE.parent

#: Cells of the pool and the test set: the ``default`` preset's 8-atom cells.
CELLS = {
    "diamond": 1,
    "hex_diamond": (2, 1, 1),
    "beta_sn": (2, 1, 1),
    "fcc": (2, 1, 1),
    "bcc": (2, 2, 1),
    "hcp": (2, 2, 1),
    "bc8": 1,
    "diamond_vacancy": (1, 1, 2),
}
MD = {"temperatures_K": [500.0], "pressures_GPa": [1.0], "timestep_fs": 2.0, "sample_every": 10}
FORMS: dict[str, dict[str, Any]] = {
    "quick": {
        "labeler": "sw",
        "md_model": "sw",
        "diamond_steps": 2000,
        "other_steps": 500,
        "ladder": (5, 10, 20, 40),
        "pool_seeds": (0, 1, 2),
    },
    "full": {
        "labeler": ("gpaw", {"kpts": {"density": 3.5, "gamma": False}}),
        "md_model": ("pfd", {"model": "7net-0"}),
        "diamond_steps": 2000,
        "other_steps": 1000,
        "ladder": (10, 25, 50, 100, 200),
        "pool_seeds": (0, 1, 2),
    },
}
CHUNKS = (1, 5, 10)
SCORES = ("sum", "mean", "max")
RANDOM_SEEDS = (0, 1, 2, 3, 4)
COMMITTEE_SEEDS = (0, 1, 2, 3)
TEST_FRAMES = 5
INIT_SEED = 7


# ----------------------------------------------------------------------------- data


def structures() -> dict[str, Atoms]:
    from pfd_ase.materials import silicon

    return {name: silicon(name, size) for name, size in CELLS.items()}


def make_pool(workdir: Path, md_model: Any, seed: int, form: dict[str, Any]) -> list[Atoms]:
    """MD frames of every structure (diamond first), ``info["phase"]`` set; cached."""
    from ase.io import read, write

    from pfd_ase.explore import explore

    path = workdir / f"pool.{seed}.extxyz"
    if path.exists():
        return read(path, ":")
    frames: list[Atoms] = []
    for k, (name, atoms) in enumerate(structures().items()):
        steps = form["diamond_steps"] if name == "diamond" else form["other_steps"]
        result = explore(
            atoms,
            md_model,
            workdir / f"md.{seed}" / name,
            steps=steps,
            seed=1000 * seed + k,
            progress=False,
            **MD,
        )
        for frame in result.frames:
            frame.info["phase"] = name
            frames.append(frame)
    bare = [
        Atoms(f.numbers, f.positions, cell=f.cell, pbc=f.pbc, info=dict(f.info)) for f in frames
    ]
    write(path, bare)
    return bare


def initial_and_test(workdir: Path, labeler: Any) -> tuple[list[Atoms], list[Atoms]]:
    """The labelled initial set (one perturbed copy per structure) and test set."""
    from pfd_ase.analysis.testset import make_test_set
    from pfd_ase.label import label_frames
    from pfd_ase.structures import perturb

    rng = np.random.default_rng(INIT_SEED)
    init = []
    for name, atoms in structures().items():
        frame = perturb(atoms, 1, rng, cell_strain=0.03, displacement_A=0.07)[0]
        frame.info.update(phase=name, pfd_frame_id=f"init.{name}")
        init.append(frame)
    test = make_test_set(structures(), TEST_FRAMES, seed=0)
    out = []
    for name, frames in (("init", init), ("test", test)):
        result = label_frames(frames, labeler, workdir / "labels" / name)
        if result.failures:
            raise RuntimeError(f"{len(result.failures)} {name} frames failed to label")
        out.append(result.frames)
    return out[0], out[1]


def labelled(workdir: Path, pool: list[Atoms], indices: list[int], labeler: Any) -> list[Atoms]:
    """The pool frames ``indices`` labelled (each in its own cached task folder)."""
    from pfd_ase.label import label_frames

    out = []
    for i in indices:
        frame = pool[i].copy()
        frame.info["pfd_frame_id"] = f"pool.{i}"
        result = label_frames([frame], labeler, workdir / "labels" / f"pool.{i:05d}")
        if result.failures:
            raise RuntimeError(f"pool frame {i} failed to label: {result.failures[0]['message']}")
        out.append(result.frames[0])
    return out


# ----------------------------------------------------------------------------- selection


def entropy_order(
    x_pool: np.ndarray, counts: np.ndarray, x_init: np.ndarray, n: int, chunk: int, score: str
) -> list[int]:
    from pfd_ase.selectors import EntropySelector

    sel = EntropySelector(n_target=n, chunk_size=chunk, score=score)
    return sel.select_from_descriptors(x_pool, counts, x_init)


def random_order(n_pool: int, n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).permutation(n_pool)[:n].tolist()


def set_entropy(x_init: np.ndarray, x_pool: np.ndarray, starts: np.ndarray, counts, order) -> float:
    from pfd_ase.selectors import quests

    rows = [x_init] + [x_pool[starts[i] : starts[i] + counts[i]] for i in order]
    return float(quests.entropy(np.concatenate(rows)))


def committee(workdir: Path, init: list[Atoms], epochs: int) -> list[str]:
    from pfd_ase.training.sevennet import finetune_sevennet

    return [
        str(
            finetune_sevennet(
                init, workdir / "committee" / f"m{s}", [], epochs=epochs, seed=s, progress=False
            )
        )
        for s in COMMITTEE_SEEDS
    ]


def deviation_order(models: list[str], pool: list[Atoms], n: int, cache: Path) -> list[int]:
    """Pool frames by the committee's max atomic force deviation, highest first."""
    from pfd_ase.calculators import PFDCalculator

    if cache.exists():
        devi = np.load(cache)
    else:
        calc = PFDCalculator(models)
        devi = np.empty(len(pool))
        for i, frame in enumerate(pool):
            atoms = frame.copy()
            atoms.calc = calc
            atoms.get_forces()
            devi[i] = calc.results["max_force_devi"]
        np.save(cache, devi)
    return np.lexsort((np.arange(len(pool)), -devi))[:n].tolist()


# ----------------------------------------------------------------------------- measuring


def quality(pool: list[Atoms], init: list[Atoms], ladder, extra: dict[str, list[int]]) -> dict:
    """H of initial set + first N frames, per method; atoms per set."""
    from pfd_ase.selectors import quests

    x_pool = quests.descriptors(pool)
    counts = np.array([len(a) for a in pool])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    x_init = quests.descriptors(init)
    n_max = max(ladder)
    orders: dict[str, list[int]] = {}
    times: dict[str, float] = {}
    for chunk in CHUNKS:
        for score in SCORES:
            t0 = time.perf_counter()
            orders[f"entropy chunk {chunk} {score}"] = entropy_order(
                x_pool, counts, x_init, n_max, chunk, score
            )
            times[f"entropy chunk {chunk} {score}"] = time.perf_counter() - t0
    for seed in RANDOM_SEEDS:
        orders[f"random {seed}"] = random_order(len(pool), n_max, seed)
    orders.update(extra)
    out = {}
    for name, order in orders.items():
        out[name] = {
            "H": [set_entropy(x_init, x_pool, starts, counts, order[:n]) for n in ladder],
            "atoms": [int(counts[order[:n]].sum()) for n in ladder],
            "phases": _phase_counts(pool, order[:n_max]),
            "seconds": times.get(name),
        }
    out["pool"] = {
        "H": float(quests.entropy(x_pool)),
        "frames": len(pool),
        "atoms": int(counts.sum()),
    }
    return {"orders": orders, "table": out}


def _phase_counts(pool: list[Atoms], order: list[int]) -> dict[str, int]:
    names = [pool[i].info["phase"] for i in order]
    return {p: names.count(p) for p in dict.fromkeys(a.info["phase"] for a in pool)}


def train_and_score(
    workdir: Path,
    name: str,
    train: list[Atoms],
    test: list[Atoms],
    epochs: int,
    base: str = "7net-0",
) -> dict[str, float]:
    """Train SevenNet from ``base`` on ``train`` in ``workdir/train/<name>`` (seed 0, no
    validation split); held-out errors (cached in ``score.json``)."""
    from pfd_ase.analysis.testset import score_models
    from pfd_ase.training.sevennet import finetune_sevennet

    folder = workdir / "train" / name
    record = folder / "score.json"
    if record.exists():
        return json.loads(record.read_text())
    t0 = time.perf_counter()
    model = finetune_sevennet(train, folder, [], epochs=epochs, base=base, seed=0, progress=False)
    t_train = time.perf_counter() - t0
    s = score_models({name: str(model)}, test)[name]
    row = {
        "force_rmse": s["force_rmse_eV_A"],
        "energy_rmse_meV": s["energy_rmse_meV_atom"],
        "n_train": len(train),
        "train_s": t_train,
    }
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(row))
    return row


def frames_to_match(ladder, errors: list[float], target: float) -> float | None:
    """N at which the error curve first reaches ``target`` (linear in log N); None if never."""
    if errors[0] <= target:
        return float(ladder[0])
    for (n0, e0), (n1, e1) in zip(
        zip(ladder, errors, strict=True), zip(ladder[1:], errors[1:], strict=True), strict=False
    ):
        if e1 <= target:
            t = (e0 - target) / (e0 - e1)
            return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))
    return None


# ----------------------------------------------------------------------------- output


def plot(result: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency of the bench env
        return None
    ladder = result["ladder"]
    q = result["quality"][str(result["pool_seeds"][0])]
    fig, axes = plt.subplots(1, 2 if "errors" in result else 1, figsize=(11, 4.2), squeeze=False)
    ax = axes[0][0]
    for name, row in q.items():
        if name == "pool" or name.startswith("random"):
            continue
        ax.plot(ladder, row["H"], marker="o", lw=1, label=name)
    rnd = np.array([q[f"random {s}"]["H"] for s in RANDOM_SEEDS])
    ax.errorbar(ladder, rnd.mean(0), rnd.std(0), color="k", lw=2, capsize=3, label="random (5)")
    ax.set(xscale="log", xlabel="selected frames N", ylabel="H of training set (nats)")
    ax.legend(fontsize=6)
    if "errors" in result:
        ax = axes[0][1]
        err = result["errors"]
        for name in err:
            if name.startswith("random"):
                continue
            ax.plot(ladder, [r["force_rmse"] for r in err[name]], marker="o", label=name)
        r = np.array([[row["force_rmse"] for row in err[f"random {s}"]] for s in RANDOM_SEEDS])
        ax.errorbar(ladder, r.mean(0), r.std(0), color="k", capsize=3, label="random (5 seeds)")
        ax.set(xscale="log", xlabel="selected frames N", ylabel="held-out force RMSE (eV/Å)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_tables(result: dict[str, Any]) -> None:
    ladder = result["ladder"]
    seeds = [str(s) for s in result["pool_seeds"]]
    names = [n for n in result["quality"][seeds[0]] if n != "pool" and not n.startswith("random")]
    print(f"\nH (nats) of the training set, mean over pool seeds {', '.join(seeds)}; N = {ladder}")
    print("| method | " + " | ".join(f"N={n}" for n in ladder) + " | atoms at N max |")
    print("|---|" + "---|" * (len(ladder) + 1))
    for name in names:
        h = np.mean([result["quality"][s][name]["H"] for s in seeds], axis=0)
        atoms = np.mean([result["quality"][s][name]["atoms"][-1] for s in seeds])
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in h) + f" | {atoms:.0f} |")
    rnd = np.array(
        [[result["quality"][s][f"random {r}"]["H"] for r in RANDOM_SEEDS] for s in seeds]
    )
    mean, sd = rnd.mean((0, 1)), rnd.std((0, 1))
    cells = " | ".join(f"{m:.3f} ± {d:.3f}" for m, d in zip(mean, sd, strict=True))
    print(f"| random (5 seeds × {len(seeds)} pools) | {cells} | |")
    if "errors" not in result:
        return
    print(f"\nheld-out force RMSE (eV/Å) / energy RMSE (meV/atom), pool seed {seeds[0]}")
    print("| method | " + " | ".join(f"N={n}" for n in ladder) + " |")
    print("|---|" + "---|" * len(ladder))
    for name, rows in result["errors"].items():
        if name.startswith("random"):
            continue
        cells = " | ".join(f"{r['force_rmse']:.3f} / {r['energy_rmse_meV']:.1f}" for r in rows)
        print(f"| {name} | {cells} |")
    f = np.array([[r["force_rmse"] for r in result["errors"][f"random {s}"]] for s in RANDOM_SEEDS])
    cells = " | ".join(f"{m:.3f} ± {d:.3f}" for m, d in zip(f.mean(0), f.std(0), strict=True))
    print(f"| random (5 seeds), force | {cells} |")
    print(f"\nheadline: {result['headline']}  (goal: {result['goal']})")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="SW labels and MD, N up to 40")
    p.add_argument("--workdir", type=Path, default=None, help="default runs/selection_eff[_q]")
    p.add_argument("--quality-only", action="store_true", help="selection quality, no training")
    p.add_argument("--pool-seeds", type=int, nargs="+", default=None)
    p.add_argument("--ladder", type=int, nargs="+", default=None, help="the N of the curves")
    p.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs (every model)")
    p.add_argument(
        "--entropy",
        default=None,
        help="CHUNK,SCORE of the entropy curve (default: EntropySelector's defaults)",
    )
    p.add_argument("--output", type=Path, default=None, help="JSON path (default results/...)")
    args = p.parse_args(argv)
    form_name = "quick" if args.quick else "full"
    form = dict(FORMS[form_name])
    ladder = tuple(args.ladder or form["ladder"])
    seeds = tuple(args.pool_seeds if args.pool_seeds is not None else form["pool_seeds"])
    suffix = "_quick" if args.quick else ""
    workdir = (args.workdir or ROOT / "runs" / f"selection_efficiency{suffix}").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    output = args.output or RESULTS / f"selection_efficiency{suffix}.json"
    if args.entropy:
        chunk, score = args.entropy.split(",")
        chunk = int(chunk)
    else:
        from pfd_ase.selectors import EntropySelector

        default = EntropySelector(n_target=1)
        chunk, score = default.chunk_size, default.score
    entropy_name = f"entropy chunk {chunk} {score}"
    t0 = time.perf_counter()

    init, test = initial_and_test(workdir, form["labeler"])
    models: list[str] = []
    if not args.quality_only:
        models = committee(workdir, init, args.epochs)
    result: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "form": form_name,
        "labeler": form["labeler"] if isinstance(form["labeler"], str) else list(form["labeler"]),
        "md_model": str(form["md_model"]),
        "ladder": list(ladder),
        "pool_seeds": list(seeds),
        "epochs": args.epochs,
        "n_init": len(init),
        "n_test": len(test),
        "quality": {},
    }
    pools = {}
    for seed in seeds:
        pool = make_pool(workdir, form["md_model"], seed, form)
        pools[seed] = pool
        extra = {}
        if models:
            cache = workdir / f"deviation.{seed}.npy"
            extra["max deviation"] = deviation_order(models, pool, max(ladder), cache)
        q = quality(pool, init, ladder, extra)
        result["quality"][str(seed)] = q["table"]
        if seed == seeds[0]:
            orders = q["orders"]
        print(f"pool seed {seed}: {len(pool)} frames, quality done", flush=True)

    if not args.quality_only:
        pool = pools[seeds[0]]
        methods = [entropy_name, *(f"random {s}" for s in RANDOM_SEEDS), "max deviation"]
        errors: dict[str, list[dict[str, float]]] = {}
        for name in methods:
            errors[name] = []
            for n in ladder:
                train = init + labelled(workdir, pool, orders[name][:n], form["labeler"])
                tag = f"{name.replace(' ', '_')}.N{n}"
                errors[name].append(train_and_score(workdir, tag, train, test, args.epochs))
                print(f"{name} N={n}: {errors[name][-1]}", flush=True)
        base = train_and_score_base(test)
        result["errors"], result["base_untouched"] = errors, base
        rnd = np.array([[r["force_rmse"] for r in errors[f"random {s}"]] for s in RANDOM_SEEDS])
        target = float(rnd.mean(0)[-1])
        ent = [r["force_rmse"] for r in errors[entropy_name]]
        need = frames_to_match(ladder, ent, target)
        result["headline"] = {
            "entropy_config": entropy_name,
            "random_force_rmse_at_max_N": target,
            "max_N": ladder[-1],
            "entropy_frames_to_match": need,
            "entropy_force_rmse_at_half_max_N": _at(ladder, ent, ladder[-1] / 2),
        }
        result["goal"] = f"entropy_frames_to_match <= {ladder[-1] / 2:g} (half of max N)"
        result["met"] = need is not None and need <= ladder[-1] / 2
    else:
        result["headline"] = "quality only (no training)"
        result["goal"] = "-"
    result["wall_s"] = time.perf_counter() - t0
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    plot(result, output.with_suffix(".png"))
    print_tables(result)
    print(f"\nwrote {output} (wall {result['wall_s']:.0f} s)")
    return result


def _at(ladder, errors, n: float) -> float | None:
    """The curve's value at ``n`` (linear in log N), None outside the ladder."""
    for (n0, e0), (n1, e1) in zip(
        zip(ladder, errors, strict=True), zip(ladder[1:], errors[1:], strict=True), strict=False
    ):
        if n0 <= n <= n1:
            t = (math.log(n) - math.log(n0)) / (math.log(n1) - math.log(n0))
            return float(e0 + t * (e1 - e0))
    return None


def train_and_score_base(test: list[Atoms]) -> dict[str, float]:
    from pfd_ase.analysis.testset import score_models

    s = score_models({"base": "7net-0"}, test)["base"]
    return {"force_rmse": s["force_rmse_eV_A"], "energy_rmse_meV": s["energy_rmse_meV_atom"]}


if __name__ == "__main__":
    main()

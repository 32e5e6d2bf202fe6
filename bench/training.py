"""Benchmark of training and inference speed (issue 4): prints a table, asserts nothing.

    python bench/training.py                 # 1 thread, about 5-8 minutes on 2 idle cores
    python bench/training.py --threads 2
    python bench/training.py --quick         # a few steps and repeats, to try it out

Training: seconds per step for the tiny DPA-2 teacher (:data:`DPA2_TINY`, batch "auto") and
the student (se_atten_v2, attn_layer 0, batch 1), each trained for ``--steps`` steps on 8-atom
and on 64-atom Si frames labelled by Stillinger-Weber (:func:`pfd_ase.materials.labelled_silicon`).
The figure is deepmd-kit's own "average training time" (dp.log), which leaves out the first
display interval (start-up, TorchScript specialisation).

Inference: ms per energy+forces+stress call (``PFDCalculator.calculate``, which evaluates
per-atom energies and the virial too) on perturbed 64- and 512-atom diamond Si, for the
tiny DPA-2 (trained briefly), pre-trained CHGNet 0.3.0, the student, the compressed student,
and DPA-2s of the paper's production size (repinit rcut 6 Å / 120 neighbours, repformers
with g1 128 / g2 32, fitting net 3x240) with 6 and 12 repformer layers (the 12-layer one at
64 atoms only: it needs more than 12 GB at 512 atoms). Speed does not depend on the
weights: the production-size models are trained for 3 steps, then frozen. Each model is
warmed up (TorchScript specialises on its first calls), then the models' calls are
interleaved, round after round, and the median is reported, wall and CPU time.

deepmd-kit 3.2's ``DeepPot`` builds its neighbour list with ``vesin`` when ``vesin[torch]``
is installed (``nlist_backend="auto"``) and otherwise with a dense all-pairs search; the
compressed student is also timed through ``DeepPot.eval`` with each builder forced.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SIZES = (64, 512)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch / deepmd-kit threads (1)")
    p.add_argument("--steps", type=int, default=40, help="training steps per run (40)")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per model, 64 atoms")
    p.add_argument("--repeats-512", type=int, default=5, help="timed calls per model, 512 atoms")
    p.add_argument("--warmup", type=int, default=4, help="untimed calls per model and size (4)")
    p.add_argument("--no-12-layers", action="store_true", help="skip the 12-layer DPA-2")
    p.add_argument("--workdir", type=Path, default=None, help="keep models here (default: tmp)")
    p.add_argument("--quick", action="store_true", help="few steps and repeats, to try it out")
    p.add_argument("--sizes", default="64,512", help="cells to time, atoms (64,512)")
    args = p.parse_args()
    args.sizes = [int(x) for x in args.sizes.split(",")]
    if args.quick:
        args.steps, args.repeats, args.repeats_512, args.warmup = 12, 2, 1, 3
    return args


def set_threads(n: int) -> None:
    """Thread counts for this process (before torch is imported) and deepmd-kit children."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ["DP_INTRA_OP_PARALLELISM_THREADS"] = str(n)
    os.environ["DP_INTER_OP_PARALLELISM_THREADS"] = "1"
    os.environ["PFD_THREADS"] = str(n)
    os.environ.setdefault("DP_INFER_BATCH_SIZE", "1024")  # deepmd's CPU default, and no warning


# ----------------------------------------------------------------------------- data


def si_cell(natoms: int, seed: int = 0):
    """Perturbed diamond Si of ``natoms`` = 8 k³ atoms."""
    import numpy as np
    from ase.build import bulk

    reps = round((natoms / 8) ** (1 / 3))
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(reps)
    assert len(atoms) == natoms
    atoms.positions += np.random.default_rng(seed).normal(0.0, 0.05, atoms.positions.shape)
    return atoms


# ----------------------------------------------------------------------------- training


def average_step_time(log: Path) -> tuple[float | None, str]:
    """deepmd-kit's last 'average training time: X s/batch (...)' line in ``log``."""
    hits = re.findall(r"average training time: ([0-9.eE+-]+) s/batch(.*)", log.read_text())
    if not hits:
        return None, ""
    value, rest = hits[-1]
    return float(value), rest.strip()


def count_params(path: Path) -> int:
    import torch

    model = torch.jit.load(str(path), map_location="cpu")
    return sum(p.numel() for p in model.parameters())


def train_one(cfg: dict, work: Path, threads: int) -> tuple[float | None, str, float]:
    """Train (no progress bar): deepmd-kit's average s/step, its note, the run's wall time."""
    from pfd_ase.training import deepmd as dp

    t0 = time.perf_counter()
    dp.train(cfg, work, threads=threads, progress=False)
    wall = time.perf_counter() - t0
    per_step, note = average_step_time(work / "dp.log")
    return per_step, note, wall


# ----------------------------------------------------------------------------- timing


def time_interleaved(
    entries: list[tuple[str, Callable[[], object]]], warmup: int, repeats: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Warm every entry up, then call them in turn (rotating the order): wall and CPU times."""
    for _, fn in entries:
        for _ in range(warmup):
            fn()
    out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, _ in entries}
    for r in range(repeats):
        k = r % len(entries)
        for name, fn in entries[k:] + entries[:k]:
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            t1, c1 = time.perf_counter(), time.process_time()
            out[name][0].append(t1 - t0)
            out[name][1].append(c1 - c0)
    return out


def calc_call(calc, atoms) -> Callable[[], object]:
    from ase.calculators.calculator import all_changes

    def call():
        calc.calculate(atoms, ["energy", "forces", "stress"], all_changes)
        return calc.results["energy"]

    return call


def deeppot_call(dpot, atoms, atomic: bool) -> Callable[[], object]:
    import numpy as np

    coords = atoms.positions.reshape(1, -1)
    cell = atoms.cell.array.reshape(1, 9)
    types = np.zeros(len(atoms), dtype=int)
    return lambda: dpot.eval(coords, cell, types, atomic=atomic)


def nlist_name(calc) -> str:
    backend = calc.backends[0]
    dpot = getattr(backend, "_dp", None)
    if dpot is None:
        return "own (CHGNet)"
    builder = getattr(dpot.deep_eval, "_nlist_builder", None)
    return "native" if builder is None else type(builder).__name__.replace("NeighborList", "")


def mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ----------------------------------------------------------------------------- main


def main() -> None:
    args = parse_args()
    set_threads(args.threads)

    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    from importlib.metadata import version

    from pfd_ase.calculators import PFDCalculator
    from pfd_ase.data import to_deepmd
    from pfd_ase.materials import labelled_silicon
    from pfd_ase.training import deepmd as dp

    started = time.perf_counter()
    load0 = os.getloadavg()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="pfd_bench_training_"))
    root.mkdir(parents=True, exist_ok=True)
    from deepmd.pt_expt.utils.vesin_neighbor_list import is_vesin_torch_available

    has_vesin = version("vesin-torch") if is_vesin_torch_available() else None
    print(
        f"# bench/training.py  {datetime.date.today()}  {platform.node()}  "
        f"{os.cpu_count()} cores, load {load0[0]:.2f}\n"
        f"# threads: torch {torch.get_num_threads()} intra / {torch.get_num_interop_threads()} "
        f"inter; deepmd-kit subprocesses {args.threads} (OMP_NUM_THREADS, DP_INTRA_OP_...)\n"
        f"# deepmd-kit {version('deepmd-kit')}, torch {torch.__version__}, "
        f"chgnet {version('chgnet')}, vesin-torch {has_vesin or 'not installed'}\n"
        f"# steps {args.steps}, repeats {args.repeats} (64) / {args.repeats_512} (512), "
        f"warm-up {args.warmup}; work dir {root}",
        flush=True,
    )

    # --- data
    si8 = to_deepmd(labelled_silicon(16, seed=0), root / "data8", ["Si"])
    si64 = to_deepmd(labelled_silicon(6, seed=1, size=2), root / "data64", ["Si"])

    # --- training runs: name -> (data, batch, s/step, note, wall s)
    disp = max(1, args.steps // 4)
    runs: list[tuple[str, str, str, float | None, str, float]] = []
    for label, systems, natoms in (("Si 8", si8, 8), ("Si 64", si64, 64)):
        cfg = dp.training_input(
            dp.energy_model(["Si"]), systems, steps=args.steps, disp_freq=disp, save_freq=args.steps
        )
        per_step, note, wall = train_one(cfg, root / f"teacher_{natoms}", args.threads)
        batch = f"auto: {max(1, -(-32 // natoms))} x {natoms} atoms"
        runs.append(("tiny DPA-2 teacher", label, batch, per_step, note, wall))
        cfg = dp.student_input(
            ["Si"], systems, steps=args.steps, disp_freq=disp, save_freq=args.steps
        )
        per_step, note, wall = train_one(cfg, root / f"student_{natoms}", args.threads)
        runs.append(("student", label, f"1 x {natoms} atoms", per_step, note, wall))
        print(f"# trained on {label} ({time.perf_counter() - started:.0f} s)", flush=True)
    layers = [6] if args.no_12_layers else [6, 12]
    for nl in layers:
        desc = {
            **dp.DPA2_PRODUCTION,
            "repformer": {**dp.DPA2_PRODUCTION["repformer"], "nlayers": nl},
        }
        cfg = dp.training_input(
            dp.energy_model(["Si"], desc, dp.FITTING_PRODUCTION),
            si8,
            steps=3,
            batch_size=1,
            disp_freq=1,
            save_freq=3,
        )
        per_step, note, wall = train_one(cfg, root / f"prod{nl}", args.threads)
        runs.append((f"DPA-2 production {nl}L", "Si 8", "1 x 8 atoms", per_step, note, wall))
    print(f"# trained production-size DPA-2 ({time.perf_counter() - started:.0f} s)", flush=True)

    teacher = dp.freeze(root / "teacher_64", "frozen.pth", threads=args.threads)
    student = dp.freeze(root / "student_64", "frozen.pth", threads=args.threads)
    compressed = dp.compress(student, root / "student_64" / "compressed.pth", threads=args.threads)
    prod = {nl: dp.freeze(root / f"prod{nl}", "frozen.pth", threads=args.threads) for nl in layers}

    # --- models: each timed through PFDCalculator.calculate (what users get: it asks deepmd
    # for per-atom energies too, atomic=True) and, for deepmd-kit models, through a separate
    # DeepPot.eval(atomic=False) (energy, forces, virial only; what MD needs)
    from deepmd.infer import DeepPot

    models: dict[str, tuple[object, str]] = {}  # name -> (calculator, parameter count)
    models["tiny DPA-2 (teacher)"] = (PFDCalculator(teacher), f"{count_params(teacher):,}")
    chgnet = PFDCalculator("chgnet")
    chgnet_params = sum(p.numel() for p in chgnet.backends[0].model.parameters())
    models["CHGNet 0.3.0"] = (chgnet, f"{chgnet_params:,}")
    models["student"] = (PFDCalculator(student), f"{count_params(student):,}")
    models["student, compressed"] = (PFDCalculator(compressed), "tables")
    paths = {"tiny DPA-2 (teacher)": teacher, "student": student, "student, compressed": compressed}
    for nl in layers:
        params = f"{count_params(prod[nl]):,}"
        models[f"DPA-2 production {nl}L"] = (PFDCalculator(prod[nl]), params)
        paths[f"DPA-2 production {nl}L"] = prod[nl]
    evals = {name: DeepPot(str(path)) for name, path in paths.items()}
    backends = ("native", "vesin") if has_vesin else ("native",)
    nlist_runs = {
        (backend, atomic): DeepPot(str(compressed), nlist_backend=backend)
        for backend in backends
        for atomic in (False, True)
    }

    notes: list[str] = []

    def wanted(name: str, n: int) -> bool:
        if name == "DPA-2 production 12L" and n > 64:
            return False  # more than 12 GB at 512 atoms
        if name.startswith("DPA-2 production") and n > 64 and mem_available_gb() < 8:
            notes.append(f"{name} skipped at {n} atoms: {mem_available_gb():.1f} GB available")
            return False
        return True

    results: dict[int, dict[str, tuple[list[float], list[float]]]] = {}
    for n in args.sizes:
        atoms = si_cell(n)
        entries = []
        for name, (calc, _) in models.items():
            if wanted(name, n):
                entries.append((f"calc|{name}", calc_call(calc, atoms)))
                if name in evals:
                    entries.append((f"eval|{name}", deeppot_call(evals[name], atoms, False)))
        for (backend, atomic), dpot in nlist_runs.items():
            entries.append((f"nlist|{backend}|{atomic}", deeppot_call(dpot, atoms, atomic)))
        reps = args.repeats if n <= 64 else args.repeats_512
        results[n] = time_interleaved(entries, args.warmup, reps)
        print(
            f"# timed {n} atoms ({time.perf_counter() - started:.0f} s, peak RSS "
            f"{peak_rss_gb():.1f} GB)",
            flush=True,
        )
    load1 = os.getloadavg()

    # --- report
    print("\n## Training (deepmd-kit 'average training time', s/step)\n")
    print("| model | data | batch | s/step | note | run wall s |")
    print("|---|---|---|---|---|---|")
    for name, label, batch, per_step, note, wall in runs:
        shown = f"{per_step:.3f}" if per_step is not None else "n/a"
        print(f"| {name} | {label} | {batch} | {shown} | {note} | {wall:.0f} |")

    def med(n: int, key: str, cpu: bool = False) -> float | None:
        if key not in results.get(n, {}):
            return None
        return 1e3 * statistics.median(results[n][key][1 if cpu else 0])

    def cell(n: int, key: str) -> str:
        wall, cpu = med(n, key), med(n, key, cpu=True)
        return "–" if wall is None else f"{wall:.4g} ({cpu:.4g})"

    print(
        "\n## Inference (ms per energy+forces+stress call; median wall (CPU));"
        " calc: PFDCalculator.calculate (per-atom energies too), eval: DeepPot.eval(atomic=False)\n"
    )
    heads = [f"Si {n} {kind}" for n in SIZES for kind in ("calc", "eval")]
    print("| model | params | nlist | " + " | ".join(heads) + " |")
    print("|---|---|---|" + "---|" * len(heads))
    for name, (calc, params) in models.items():
        cols = [cell(n, f"{kind}|{name}") for n in SIZES for kind in ("calc", "eval")]
        print(f"| {name} | {params} | {nlist_name(calc)} | " + " | ".join(cols) + " |")

    print("\n## Compressed student through DeepPot.eval: neighbour-list builder\n")
    print("| nlist_backend | atomic | Si 64 | Si 512 |")
    print("|---|---|---|---|")
    for backend, atomic in nlist_runs:
        key = f"nlist|{backend}|{atomic}"
        print(f"| {backend} | {atomic} | {cell(64, key)} | {cell(512, key)} |")

    print("\n## Ratios (wall medians)\n")

    def ratio(n: int, a: str, b: str) -> str:
        x, y = med(n, a), med(n, b)
        return "–" if x is None or y is None else f"{x / y:.1f}x"

    comp = "student, compressed"
    for nl, n in ((6, 512), (6, 64), (12, 64)):
        prod_name = f"DPA-2 production {nl}L"
        if nl in layers:
            print(
                f"- {prod_name} / compressed student, Si {n}: "
                f"{ratio(n, 'calc|' + prod_name, 'calc|' + comp)} (calc), "
                f"{ratio(n, 'eval|' + prod_name, 'eval|' + comp)} (eval)"
                + (" (goal >= 30x)" if n == 512 else "")
            )
    for n in SIZES:
        chg = "calc|CHGNet 0.3.0"
        print(
            f"- Si {n}: CHGNet / student {ratio(n, chg, 'calc|student')} (calc) "
            f"{ratio(n, chg, 'eval|student')} (eval); CHGNet / compressed student "
            f"{ratio(n, chg, 'calc|' + comp)} (calc) {ratio(n, chg, 'eval|' + comp)} (eval); "
            "tiny DPA-2 / compressed student "
            f"{ratio(n, 'eval|tiny DPA-2 (teacher)', 'eval|' + comp)} (eval)"
        )
    if has_vesin:
        for n in SIZES:
            print(
                f"- Si {n}, compressed student, native / vesin: "
                f"{ratio(n, 'nlist|native|False', 'nlist|vesin|False')} (atomic=False), "
                f"{ratio(n, 'nlist|native|True', 'nlist|vesin|True')} (atomic=True)"
            )
    for note in notes:
        print(f"- {note}")
    print(
        f"\n# total {time.perf_counter() - started:.0f} s; load average at start {load0[0]:.2f}, "
        f"at end {load1[0]:.2f} (1 min); peak RSS {peak_rss_gb():.1f} GB"
    )


if __name__ == "__main__":
    main()

"""Large systems: cost per atom, memory and MD speed of the compressed student (prints, no asserts).

    python bench/scale.py --quick          # 512 and 4096 atoms, a few minutes
    python bench/scale.py                  # 512, 4096, 13824, 32768 atoms

For each size (diamond Si supercells, rattled), in a fresh process with one thread:

- ``calc``: one energy+forces+stress call of :class:`~pfd_ase.calculators.PFDCalculator`
  (the default Verlet-list path), atoms moved by less than half the skin between calls so
  the list is reused, as in MD; the median of ``--repeats`` calls after warm-up;
- ``build``: the same call when the list has to be rebuilt (atoms moved far);
- ``floor``: a bare loop calling the model's ``forward_lower`` on the prebuilt extended
  systems of the pieces the calculator evaluates (one piece up to
  :data:`~pfd_ase.calculators.backends.DEFAULT_CHUNK_ATOMS` atoms; what LAMMPS does per
  step without its neighbour search): the floor of any Python driver;
- ``native``: deepmd-kit's ``DeepPot.eval`` (dense all-pairs neighbour list), up to
  ``--native-max`` atoms;
- ``md``: ASE velocity-Verlet steps per second (1 fs) with the calculator;
- peak resident memory of the process (``ru_maxrss``);
- ``threads``: the ``calc`` call at ``--threads-at`` atoms (4096) again with two threads
  (the issue's goal: ≥ 1.7× one thread).

The student is se_atten_v2 (attn_layer 0, the package's student template), trained for two
steps on Stillinger-Weber Si (speed does not depend on the weights), frozen and compressed.
Writes ``bench/results/scale.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_student(workdir: Path) -> Path:
    """A compressed se_atten_v2 student for Si (2 training steps)."""
    from pfd_ase.data import to_deepmd
    from pfd_ase.training import deepmd as dp

    sys.path.insert(0, str(HERE.parent / "tests"))
    from conftest import si_frames

    systems = to_deepmd(si_frames(4, seed=0), workdir / "data", ["Si"])
    cfg = dp.student_input(["Si"], systems, steps=2, seed=1)
    dp.train(cfg, workdir / "train", progress=False)
    frozen = dp.freeze(workdir / "train", workdir / "student.pth")
    return dp.compress(frozen, workdir / "student_compressed.pth")


def _cell(n_atoms: int, seed: int = 0):
    import numpy as np
    from ase.build import bulk

    reps = round((n_atoms / 8) ** (1 / 3))
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((reps, reps, reps))
    atoms.rattle(0.05, seed=seed)
    return atoms, np.random.default_rng(seed)


def measure(
    model: str, n_atoms: int, repeats: int, native: bool, md_steps: int, threads: int = 1
) -> dict:
    """All timings of one size (run in a fresh process with ``threads`` threads)."""
    import torch

    torch.set_num_threads(threads)
    from ase.md.verlet import VelocityVerlet

    from pfd_ase.calculators import PFDCalculator

    atoms, rng = _cell(n_atoms)
    out: dict = {"atoms": len(atoms), "threads": threads}
    calc = PFDCalculator(model)
    backend = calc.backends[0]

    def call(a) -> float:
        a.calc = calc
        t0 = time.perf_counter()
        calc.calculate(a, ["energy", "forces", "stress"], ["positions"])
        return time.perf_counter() - t0

    for _ in range(2):
        call(atoms)  # warm-up (TorchScript specialises on its first calls)
    times, builds = [], []
    for _ in range(repeats):
        atoms.positions += rng.normal(0, 0.01, atoms.positions.shape)
        times.append(call(atoms))
        atoms.positions[0] += 5.0  # forces a rebuild on the next call
        builds.append(call(atoms))
        atoms.positions[0] -= 5.0
    out["calc_s"] = statistics.median(times)
    out["build_s"] = statistics.median(builds)

    # the floor: forward_lower on the same pieces, prebuilt, called one after the other
    from deepmd.pt.utils.env import DEVICE, GLOBAL_PT_FLOAT_PRECISION

    system = backend.verlet.update(atoms.positions, atoms.cell.array, atoms.pbc)
    size = backend._piece_size(len(atoms), 1)
    pieces = [system] if size >= len(atoms) else system.split(size)
    args = [
        [
            torch.as_tensor(p.coords, dtype=GLOBAL_PT_FLOAT_PRECISION, device=DEVICE)[None],
            torch.zeros((1, len(p.mapping)), dtype=torch.long, device=DEVICE),
            torch.as_tensor(p.nlist, device=DEVICE)[None],
            torch.as_tensor(p.mapping, device=DEVICE)[None],
        ]
        for p in pieces
    ]
    floor = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        for a in args:
            backend._lower.forward_lower(*a, do_atomic_virial=False)
        floor.append(time.perf_counter() - t0)
    out["floor_s"] = statistics.median(floor[1:])
    out["pieces"] = -(-len(atoms) // backend._piece_size(len(atoms), threads))  # calc's calls
    del args, pieces

    if native:
        nat = PFDCalculator(model)
        nat.backends = [type(backend)(model, neighbour_list="native")]
        a = atoms.copy()
        a.calc = nat
        nat.calculate(a, ["energy", "forces", "stress"], ["positions"])
        t = []
        for _ in range(max(2, repeats // 2)):
            t0 = time.perf_counter()
            nat.calculate(a, ["energy", "forces", "stress"], ["positions"])
            t.append(time.perf_counter() - t0)
        out["native_s"] = statistics.median(t)

    if md_steps:
        atoms.calc = calc
        dyn = VelocityVerlet(atoms, timestep=1.0 * 0.09822694788464063)  # 1 fs in ASE units
        dyn.run(1)
        t0 = time.perf_counter()
        dyn.run(md_steps)
        out["md_steps_per_s"] = md_steps / (time.perf_counter() - t0)
        out["md_list_builds"] = backend.verlet.builds
    out["peak_rss_GB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="512 and 4096 atoms, few repeats")
    p.add_argument("--sizes", default=None, help="atoms, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--native-max", type=int, default=4096, help="largest size for DeepPot.eval")
    p.add_argument("--md-steps", type=int, default=10)
    p.add_argument("--model", default=None, help="a compressed student (default: build one)")
    p.add_argument("--threads-at", type=int, default=4096, help="size of the 2-thread call")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:  # child process: one size
        native = args.one <= args.native_max
        res = measure(args.model, args.one, args.repeats, native, args.md_steps, args.threads)
        print(json.dumps(res))
        return
    sizes = [512, 4096] if args.quick else [512, 4096, 13824, 32768]
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    repeats = 3 if args.quick else args.repeats
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_student(Path(tmp)))
        rows = []
        runs = [(n, 1) for n in sizes] + [(args.threads_at, 2)] * bool(args.threads_at)
        for n, threads in runs:
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1")
            cmd = [sys.executable, __file__, "--one", str(n), "--model", model]
            cmd += ["--repeats", str(repeats), "--threads", str(threads)]
            if threads == 1:
                cmd += ["--native-max", str(args.native_max), "--md-steps", str(args.md_steps)]
            else:  # the calculator call only
                cmd += ["--native-max", "0", "--md-steps", "0"]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
            if res.returncode or not lines:
                rows.append({"atoms": n, "threads": threads, "error": res.stderr[-500:]})
                print(f"{n} atoms: failed\n{res.stderr[-2000:]}")
                continue
            rows.append(json.loads(lines[-1]))
    header = (
        f"{'atoms':>7} {'thr':>3} {'ms/call':>9} {'us/atom':>8} {'rebuild ms':>10} {'floor ms':>9} "
        f"{'ratio':>6} {'native ms':>9} {'MD steps/s':>10} {'peak GB':>8}"
    )
    print(header)
    for r in rows:
        if "error" in r:
            print(f"{r['atoms']:>7} {r['threads']:>3} failed")
            continue
        native = f"{r['native_s'] * 1e3:9.1f}" if "native_s" in r else f"{'-':>9}"
        print(
            f"{r['atoms']:>7} {r['threads']:>3} {r['calc_s'] * 1e3:9.1f} "
            f"{r['calc_s'] / r['atoms'] * 1e6:8.1f} "
            f"{r['build_s'] * 1e3:10.1f} {r['floor_s'] * 1e3:9.1f} "
            f"{r['calc_s'] / r['floor_s']:6.2f} {native} "
            f"{r.get('md_steps_per_s', float('nan')):10.2f} {r['peak_rss_GB']:8.2f}"
        )
    ok = [r for r in rows if "error" not in r and r["threads"] == 1]
    per_atom = [r["calc_s"] / r["atoms"] for r in ok]
    two = [r for r in rows if "error" not in r and r["threads"] == 2]
    one = [r for r in ok if two and r["atoms"] == two[0]["atoms"]]
    speedup = one[0]["calc_s"] / two[0]["calc_s"] if one and two else None
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 thread (threads: 2)",
        "wall_s": round(time.perf_counter() - t_start, 1),
        "rows": rows,
        "headline": {
            "per_atom_cost_spread": max(per_atom) / min(per_atom) if per_atom else None,
            "worst_ratio_to_floor": max(r["calc_s"] / r["floor_s"] for r in ok) if ok else None,
            "peak_GB_largest": max(ok, key=lambda r: r["atoms"])["peak_rss_GB"] if ok else None,
            "two_thread_speedup": speedup,
        },
        "goal": {
            "per_atom_cost_spread": "<= 1.2",
            "worst_ratio_to_floor": "<= 1.15",
            "peak_GB_largest": "<= 8 at 32768 atoms",
            "two_thread_speedup": ">= 1.7 at 4096 atoms",
        },
    }
    out = HERE / "results" / "scale.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['wall_s']} s)")


if __name__ == "__main__":
    main()

"""Large systems: cost per atom, memory and MD speed of the compressed student (prints, no asserts).

    python bench/scale.py --quick          # 512 and 4096 atoms, a few minutes
    python bench/scale.py                  # 512, 4096, 13824, 32768 atoms
    source .lammps/env.sh && python bench/scale.py --lammps   # and LAMMPS (scripts/build_lammps.sh)

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
- ``lammps`` (``--lammps``): NVE MD steps per second of the same model in LAMMPS with
  deepmd-kit's ``pair_style deepmd`` (one process, one thread, the same cell, skin 1 Å),
  and that process's peak memory;
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
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _compute import child_env, set_threads  # noqa: E402


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
    model: str,
    n_atoms: int,
    repeats: int,
    native: bool,
    md_steps: int,
    threads: int = 1,
    tune: bool = False,
) -> dict:
    """All timings of one size (run in a fresh process with ``threads`` threads; ``tune``:
    :func:`pfd_ase.allocator.tune_allocator` first, as the package's entry points do)."""
    import torch
    from ase.md.verlet import VelocityVerlet

    from pfd_ase.calculators import PFDCalculator

    set_threads(threads, tune)
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
    builds_before = backend.verlet.builds
    times, builds = [], []
    for _ in range(repeats):  # moves well within the skin: the list is reused
        atoms.positions += rng.normal(0, 0.01, atoms.positions.shape)
        times.append(call(atoms))
    for i in range(repeats):  # atom 0 jumps 8.7 Å, out and back: every call rebuilds the list
        atoms.positions[0] += 5.0 if i % 2 == 0 else -5.0
        builds.append(call(atoms))
    assert backend.verlet.builds == builds_before + repeats, "the timed calls rebuilt the list"
    out["calc_s"] = statistics.median(times)
    out["build_s"] = statistics.median(builds)

    # the floor: forward_lower on the same pieces, prebuilt, called one after the other
    from deepmd.pt.utils.env import DEVICE, GLOBAL_PT_FLOAT_PRECISION

    system = backend.verlet.update(atoms.positions, atoms.cell.array, atoms.pbc)
    pieces = backend.pieces(system)
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
    out["pieces"] = len(pieces)  # the model calls of one calc call
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
        builds = backend.verlet.builds
        t0 = time.perf_counter()
        dyn.run(md_steps)
        out["md_steps_per_s"] = md_steps / (time.perf_counter() - t0)
        out["md_rebuilds"] = backend.verlet.builds - builds  # list rebuilds during the MD
    out["peak_rss_GB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return out


LAMMPS_DECK = """units metal
atom_style atomic
boundary p p p
read_data {data}
variable plugin getenv PFD_LMP_PLUGIN
plugin load ${{plugin}}
pair_style deepmd {model}
pair_coeff * *
mass 1 28.0855
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
velocity all create 500.0 1 dist gaussian
timestep 0.001
fix 1 all nve
thermo 0
run {warmup}
run {steps}
"""


def measure_lammps(
    model: str, n_atoms: int, steps: int, warmup: int = 2, tune: bool = False
) -> dict:
    """NVE MD steps per second of the same model in LAMMPS (``pair_style deepmd``, one
    process, one thread), the same cell; needs ``scripts/build_lammps.sh``'s ``env.sh``
    sourced (``PFD_LMP``, ``PFD_LMP_PLUGIN``). Peak memory is the LAMMPS process's.
    ``tune``: with glibc's variables of :data:`pfd_ase.allocator.ALLOCATOR_ENV`."""
    from ase.io import write

    lmp = os.environ.get("PFD_LMP")
    if not lmp or not os.environ.get("PFD_LMP_PLUGIN"):
        raise RuntimeError("no LAMMPS: run scripts/build_lammps.sh and source its env.sh")
    atoms, _ = _cell(n_atoms)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "cell.data"
        write(data, atoms, format="lammps-data", specorder=["Si"], masses=True)
        deck = Path(tmp) / "in.md"
        deck.write_text(
            LAMMPS_DECK.format(data=data, model=Path(model).resolve(), warmup=warmup, steps=steps)
        )
        env = child_env(1, tune)
        res = subprocess.run(
            [lmp, "-in", str(deck), "-log", str(Path(tmp) / "log.lammps"), "-screen", "none"],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        log = Path(tmp) / "log.lammps"
        log = log.read_text() if log.exists() else ""
    loops = re.findall(r"Loop time of ([0-9.eE+-]+) on \d+ procs for (\d+) steps", log)
    if res.returncode or len(loops) < 2:
        raise RuntimeError(f"LAMMPS failed ({res.returncode}): {(log + res.stderr)[-800:]}")
    seconds, n_steps = float(loops[-1][0]), int(loops[-1][1])
    return {
        "lammps_md_steps_per_s": n_steps / seconds,
        "lammps_peak_rss_GB": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6,
    }


def _lammps_row(model: str, n: int, steps: int, tune: bool) -> dict:
    """LAMMPS at ``n`` atoms in a child process (its peak memory is that run's alone)."""
    cmd = [sys.executable, __file__, "--one", str(n), "--model", model, "--lammps-one"]
    cmd += ["--lammps-steps", str(steps)] + ["--no-tune"] * (not tune)
    res = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode or not lines:
        print(f"{n} atoms: LAMMPS failed\n{res.stderr[-2000:]}")
        return {"lammps_error": res.stderr[-500:]}
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="512 and 4096 atoms, few repeats")
    p.add_argument("--sizes", default=None, help="atoms, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--native-max", type=int, default=4096, help="largest size for DeepPot.eval")
    p.add_argument("--md-steps", type=int, default=10)
    p.add_argument("--model", default=None, help="a compressed student (default: build one)")
    p.add_argument("--threads-at", type=int, default=4096, help="size of the 2-thread call")
    p.add_argument(
        "--lammps",
        action="store_true",
        help="also LAMMPS MD with the same model (source scripts/build_lammps.sh's env.sh)",
    )
    p.add_argument("--lammps-steps", type=int, default=10)
    p.add_argument(
        "--no-tune",
        dest="tune",
        action="store_false",
        help="glibc's default allocator settings (default: pfd_ase.allocator's, both codes)",
    )
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--lammps-one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None and args.lammps_one:  # child process: LAMMPS at one size
        print(json.dumps(measure_lammps(args.model, args.one, args.lammps_steps, tune=args.tune)))
        return
    if args.one is not None:  # child process: one size
        native = args.one <= args.native_max
        res = measure(
            args.model, args.one, args.repeats, native, args.md_steps, args.threads, args.tune
        )
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
            env = child_env(threads)
            cmd = [sys.executable, __file__, "--one", str(n), "--model", model]
            cmd += ["--repeats", str(repeats), "--threads", str(threads)]
            cmd += ["--no-tune"] * (not args.tune)
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
            if args.lammps and threads == 1:
                rows[-1].update(_lammps_row(model, n, args.lammps_steps, args.tune))
    header = (
        f"{'atoms':>7} {'thr':>3} {'ms/call':>9} {'us/atom':>8} {'rebuild ms':>10} {'floor ms':>9} "
        f"{'ratio':>6} {'native ms':>9} {'MD steps/s':>10} {'peak GB':>8} {'LAMMPS steps/s':>14} "
        f"{'LAMMPS GB':>9}"
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
            f"{r.get('md_steps_per_s', float('nan')):10.2f} {r['peak_rss_GB']:8.2f} "
            f"{r.get('lammps_md_steps_per_s', float('nan')):14.3f} "
            f"{r.get('lammps_peak_rss_GB', float('nan')):9.2f}"
        )
    ok = [r for r in rows if "error" not in r and r["threads"] == 1]
    per_atom = [r["calc_s"] / r["atoms"] for r in ok]
    two = [r for r in rows if "error" not in r and r["threads"] == 2]
    one = [r for r in ok if two and r["atoms"] == two[0]["atoms"]]
    speedup = one[0]["calc_s"] / two[0]["calc_s"] if one and two else None
    # ASE's time per MD step over LAMMPS's (> 1: ASE slower)
    lammps = [
        r["lammps_md_steps_per_s"] / r["md_steps_per_s"]
        for r in ok
        if "lammps_md_steps_per_s" in r and "md_steps_per_s" in r
    ]
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 thread (threads: 2)",
        "allocator": "pfd_ase.allocator (both codes)" if args.tune else "glibc defaults",
        "wall_s": round(time.perf_counter() - t_start, 1),
        "rows": rows,
        "headline": {
            "per_atom_cost_spread": max(per_atom) / min(per_atom) if per_atom else None,
            "worst_ratio_to_floor": max(r["calc_s"] / r["floor_s"] for r in ok) if ok else None,
            "peak_GB_largest": max(ok, key=lambda r: r["atoms"])["peak_rss_GB"] if ok else None,
            "two_thread_speedup": speedup,
            "worst_ase_over_lammps_time_per_step": max(lammps) if lammps else None,
        },
        "goal": {
            "per_atom_cost_spread": "<= 1.2",
            "worst_ratio_to_floor": "<= 1.15",
            "peak_GB_largest": "<= 8 at 32768 atoms",
            "two_thread_speedup": ">= 1.7 at 4096 atoms",
            "worst_ase_over_lammps_time_per_step": "ASE within 1.5x of LAMMPS: <= 1.5",
        },
    }
    out = HERE / "results" / "scale.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['wall_s']} s)")


if __name__ == "__main__":
    main()

"""Speed of every model of a PFD run, from one run of this script (issue 15.6).

::

    OMP_NUM_THREADS=1 .venv/bin/python bench/speed.py --quick --run runs/silicon_default
    OMP_NUM_THREADS=1 .venv/bin/python bench/speed.py --run runs/silicon_default

For each model of a finished silicon recipe run (``--run``): the **base** model it started
from (``summary.json`` ``base_model``, e.g. SevenNet-0), the fine-tuned **teacher** (PF),
the distilled **student** frozen but not compressed (``model.pth`` beside the student) and
the **compressed** student (the run's ``student``), and for each size of rattled diamond Si
(64, 512, 4096 atoms; ``--quick``: 64 and 512), in a fresh process with ``--threads``
threads (torch intra-op, OpenMP):

- ``ms_per_call``: one energy+forces+stress call through
  :class:`pfd_ase.calculators.PFDCalculator`, positions moved by 0.01 Å between calls (as in
  MD); the median of ``--repeats`` calls after two warm-up calls;
- ``md_steps_per_s``: ASE velocity-Verlet steps (1 fs) per second with the same calculator;
- ``peak_rss_GB``: the process's peak resident memory.

A size whose call would take longer than ``--max-call-s`` (estimated from the previous
size, linearly) is skipped and says so. The ratios (each model's ms per call over the
compressed student's, per size) come from this one run on one machine. Writes
``bench/results/speed[_quick].json`` (``"headline"``: base / compressed student and
teacher / compressed student at 512 atoms; ``"goal"``: the DPA-2 paper's distillation
claim, a student at least 10x faster than its teacher) and a PNG beside it.
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
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _compute import child_env, set_threads  # noqa: E402

RESULTS = HERE / "results"
SIZES = {"quick": (64, 512), "full": (64, 512, 4096)}
GOAL = {"teacher_over_compressed_512": ">= 10"}


def models_of_run(run: Path) -> dict[str, str]:
    """The four models of a finished recipe run, by role."""
    summary = json.loads((run / "summary.json").read_text())
    report = json.loads((run / "report" / "summary.json").read_text())
    student = Path(summary["student"])
    models = {"base": report["base_model"], "teacher": summary["teacher"]}
    plain = student.with_name("model.pth")
    if plain.exists() and plain != student:
        models["student"] = str(plain)
    models["compressed"] = str(student)
    return models


def _cell(n_atoms: int, seed: int = 0) -> Any:
    from pfd_ase.materials import silicon

    k = round((n_atoms / 8) ** (1 / 3))
    if 8 * k**3 != n_atoms:
        raise ValueError(f"{n_atoms} atoms is no cubic diamond supercell (8 k^3)")
    atoms = silicon("diamond").repeat(k)
    atoms.rattle(0.03, seed=seed)
    return atoms


def measure(
    model: str, n_atoms: int, repeats: int, md_steps: int, threads: int, tune: bool = False
) -> dict:
    """One model at one size, in this process (see the module docstring); ``tune``:
    :func:`pfd_ase.allocator.tune_allocator` first, as the package's entry points do."""
    import numpy as np
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from pfd_ase.calculators import PFDCalculator

    set_threads(threads, tune)
    atoms = _cell(n_atoms)
    atoms.calc = PFDCalculator(model)
    rng = np.random.default_rng(1)
    times = []
    for i in range(repeats + 2):
        atoms.positions += rng.normal(0.0, 0.01, atoms.positions.shape)
        t0 = time.perf_counter()
        atoms.get_forces()
        atoms.get_stress()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    dyn.run(1)  # first step outside the clock
    t0 = time.perf_counter()
    dyn.run(md_steps)
    md = md_steps / (time.perf_counter() - t0)
    return {
        "ms_per_call": round(1000 * statistics.median(times), 2),
        "ms_per_call_min": round(1000 * min(times), 2),
        "md_steps_per_s": round(md, 4),
        "peak_rss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
    }


def _child(args: argparse.Namespace) -> None:
    row = measure(args.model, args.atoms, args.repeats, args.md_steps, args.threads, args.tune)
    print("RESULT " + json.dumps(row), flush=True)


def run_one(
    model: str, n_atoms: int, repeats: int, md_steps: int, threads: int, tune: bool = True
) -> dict:
    """:func:`measure` in a fresh process (peak memory per measurement)."""
    env = child_env(threads)
    cmd = [sys.executable, __file__, "--child", "--model", model, "--atoms", str(n_atoms)]
    cmd += ["--repeats", str(repeats), "--md-steps", str(md_steps), "--threads", str(threads)]
    cmd += ["--no-tune"] * (not tune)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail) or f"exit {proc.returncode}"}


def plot(rows: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for role in dict.fromkeys(r["model"] for r in rows):
        pts = [
            (r["atoms"], r["ms_per_call"])
            for r in rows
            if r["model"] == role and "ms_per_call" in r
        ]
        if pts:
            ax.loglog(*zip(*pts, strict=True), "o-", label=role)
    ax.set_xlabel("atoms (diamond Si)")
    ax.set_ylabel("ms per energy+forces+stress call")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 and 512 atoms, fewer repeats")
    p.add_argument("--run", type=Path, default=Path("runs/silicon_default"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=None, help="timed calls (quick 3, full 5)")
    p.add_argument("--md-steps", type=int, default=None, help="timed MD steps (quick 5, full 10)")
    p.add_argument("--max-call-s", type=float, default=60.0, help="skip slower sizes")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--no-tune",
        dest="tune",
        action="store_false",
        help="glibc's default allocator (default: pfd_ase.allocator.tune_allocator())",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--atoms", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    form = "quick" if args.quick else "full"
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.md_steps = args.md_steps or (5 if args.quick else 10)
    if args.child:
        _child(args)
        return None
    t_start = time.perf_counter()
    models = models_of_run(args.run)
    rows = []
    for role, model in models.items():
        last: dict | None = None
        for n in SIZES[form]:
            if last and "ms_per_call" in last:
                estimate = last["ms_per_call"] / 1000 * n / last["atoms"]
                if estimate > args.max_call_s:
                    rows.append({"model": role, "atoms": n, "skipped": f"~{estimate:.0f} s a call"})
                    print(f"{role:10} {n:6d} skipped (~{estimate:.0f} s a call)")
                    continue
            row = {"model": role, "atoms": n}
            row.update(run_one(model, n, args.repeats, args.md_steps, args.threads, args.tune))
            rows.append(row)
            last = row
            print(
                f"{role:10} {n:6d} "
                + (
                    f"{row['ms_per_call']:10.1f} ms {row['md_steps_per_s']:8.3f} steps/s "
                    f"{row['peak_rss_GB']:6.2f} GB"
                    if "ms_per_call" in row
                    else row["error"]
                ),
                flush=True,
            )
    fastest = {
        r["atoms"]: r["ms_per_call"]
        for r in rows
        if r["model"] == "compressed" and "ms_per_call" in r
    }
    for r in rows:
        if "ms_per_call" in r and r["atoms"] in fastest:
            r["over_compressed"] = round(r["ms_per_call"] / fastest[r["atoms"]], 2)

    def ratio(role: str) -> float | None:
        return next(
            (r.get("over_compressed") for r in rows if r["model"] == role and r["atoms"] == 512),
            None,
        )

    headline = {
        "base_over_compressed_512": ratio("base"),
        "teacher_over_compressed_512": ratio("teacher"),
        "student_over_compressed_512": ratio("student"),
    }
    teacher = headline["teacher_over_compressed_512"]
    result = {
        "name": "speed",
        "headline": headline,
        "goal": GOAL,
        "met": {"teacher_over_compressed_512": bool(teacher is not None and teacher >= 10)},
        "rows": rows,
        "models": models,
        "form": form,
        "threads": args.threads,
        "repeats": args.repeats,
        "md_steps": args.md_steps,
        "machine": f"{platform.node()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
        "allocator": "pfd_ase.allocator.tune_allocator()" if args.tune else "glibc defaults",
        "date": datetime.date.today().isoformat(),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    out = args.out or RESULTS / f"speed{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    png = plot(rows, out.with_suffix(".png"))
    print("ratios at 512 atoms (ms per call over the compressed student's):", headline)
    print(f"-> {out}" + (f", {png}" if png else ""))
    return result


if __name__ == "__main__":
    main()

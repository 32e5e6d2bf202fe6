"""Benchmark of the QUESTS entropy selector (issue 3): prints a table, asserts nothing.

    python bench/selector.py            # the issue's sizes, a few minutes on 2 cores
    python bench/selector.py --quick    # 1/5 of the sizes, to try it out

Data: MD-like Si, generated here with ASE and seeded (no files, no network):

* ``si-pfd``: the phases of the Si example of the PFD supplement (Table S1, structures from
  :mod:`pfd_ase.materials`): diamond, hexagonal diamond, beta-Sn, fcc, bcc, hcp and diamond
  with a vacancy (45-180 atoms per cell). Thermal motion at ~500 K as independent Gaussian
  displacements (sigma 0.1 Å per Cartesian component), two pressures (0.001 GPa, 1 GPa as a
  -0.34 % isotropic strain) and NPT-like cell noise (symmetric strain, 0.5 % standard
  deviation), noise by :func:`pfd_ase.structures.perturb`. Environments of one phase lie
  within a few h of each other: this is what a PFD candidate pool looks like, and it is
  dense for the kernel.
* ``si-diverse``: the same phases plus a (001) slab (pbc T, T, F) and an isolated cluster, at
  300 to 1500 K (sigma = 0.075 sqrt(T / 300 K) Å) with random strains up to 3 % (periodic
  cells only, as :func:`pfd_ase.structures.perturb` does).

"pairs in range" is the fraction of (y, x) pairs, sampled, whose kernel term can matter at the
engine's tolerance, i.e. within ``h sqrt(2 (TAIL + log n))`` (plus, for dH, the nearest
distance): no exact method can skip those, which bounds the speed-up of the pruned sums on a
given data set.

The pruned sums run on ``PFD_THREADS`` threads (default ``min(2, cores)``): the wall-clock
speed-up needs that many free cores; the brute force is numpy on one thread, so the CPU-time
ratio is the other half of the story. torch is imported before the timings (its import, ~1.5 s,
is printed): every pfd_ase workflow has it loaded (its models are torch models), and the pruned
sums then compute their blocks with it. Where the compiled kernels
(``pfd_ase/selectors/_kde_fused.c``) are built, H and dH go through them instead (all but H's
blocks of a ball with itself); ``--no-fused`` compares with the torch/numpy blocks.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from ase import Atoms

from pfd_ase.materials import silicon
from pfd_ase.selectors import EntropySelector, RandomSelector, _kde_blocks, quests
from pfd_ase.structures import perturb

H = quests.DEFAULT_BANDWIDTH
#: NPT-like cell noise of ``si-pfd``: each strain component uniform in ±0.87 % (0.5 % standard
#: deviation).
NPT_STRAIN = 0.005 * math.sqrt(3)


# ----------------------------------------------------------------------------- data


#: Phases of Table S1 and their supercells (45-180 atoms), from :mod:`pfd_ase.materials`.
SI_PFD_CELLS = {
    "diamond": 2,
    "hex_diamond": (3, 3, 2),
    "beta_sn": (3, 3, 5),
    "fcc": 3,
    "bcc": 4,
    "hcp": (4, 4, 3),
    "diamond_vacancy": 2,
}


def si_phases() -> dict[str, Atoms]:
    return {name: silicon(name, size) for name, size in SI_PFD_CELLS.items()}


def si_pfd(n_env: int, seed: int) -> list[Atoms]:
    """Table S1 phases, ~500 K, 0.001 and 1 GPa, NPT cell noise: frames until n_env atoms."""
    rng = np.random.default_rng(seed)
    phases = list(si_phases().values())
    frames: list[Atoms] = []
    total = 0
    while total < n_env:
        base = phases[len(frames) % len(phases)].copy()
        pressure = (0.0, -0.0034)[(len(frames) // len(phases)) % 2]
        base.set_cell(base.cell * (1 + pressure), scale_atoms=True)
        frames += perturb(base, 1, rng, cell_strain=NPT_STRAIN, displacement_A=0.1)
        total += len(frames[-1])
    return frames


def si_diverse(n_env: int, seed: int) -> list[Atoms]:
    """Phases, a slab and a cluster at 300-1500 K with strains up to 3 %."""
    rng = np.random.default_rng(seed)
    phases = list(si_phases().values())
    slab = phases[0].copy()
    slab.center(vacuum=6.0, axis=2)
    slab.pbc = (True, True, False)
    cluster = phases[0].copy()
    cluster.pbc = False
    phases += [slab, cluster]
    frames: list[Atoms] = []
    total = 0
    while total < n_env:
        base = phases[len(frames) % len(phases)]
        sigma = 0.075 * math.sqrt(rng.choice([300, 600, 900, 1200, 1500]) / 300)
        frames += perturb(base, 1, rng, cell_strain=0.03, displacement_A=sigma)
        total += len(frames[-1])
    return frames


# ----------------------------------------------------------------------------- measuring


def measure_median(fn: Callable[[], object], repeats: int) -> tuple[object, float, float, float]:
    """:func:`measure` with memory once, then the median wall and CPU time of ``repeats`` runs."""
    out, wall, cpu, peak = measure(fn, memory=True)
    walls, cpus = [wall], [cpu]
    for _ in range(repeats - 1):
        _, wall, cpu, _ = measure(fn)
        walls.append(wall)
        cpus.append(cpu)
    return out, float(np.median(walls)), float(np.median(cpus)), peak


def measure(fn: Callable[[], object], memory: bool = False) -> tuple[object, float, float, float]:
    """Result, wall s, CPU s (all threads), peak traced numpy/Python memory in GB (or nan)."""
    if memory:
        tracemalloc.start()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = math.nan
    if memory:
        peak = tracemalloc.get_traced_memory()[1] / 1e9
        tracemalloc.stop()
    return out, wall, cpu, peak


def pairs_in_range(y: np.ndarray, x: np.ndarray, same: bool, rng: np.random.Generator) -> float:
    """Sampled fraction of pairs within the pruning radius of the exact fast path."""
    rows = y[rng.choice(len(y), min(400, len(y)), replace=False)]
    sq = np.einsum("ij,ij->i", rows, rows)[:, None] + np.einsum("ij,ij->i", x, x)[None, :]
    d = np.sqrt(np.maximum(sq - 2 * rows @ x.T, 0.0))
    tail2 = 2 * H * H * (_kde_blocks.TAIL + math.log(len(x)))
    base = 0.0 if same else d.min(axis=1, keepdims=True) ** 2
    return float((d**2 <= base + tail2).mean())


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, *cells: object) -> None:
        self.rows.append(tuple(str(c) for c in cells))
        print("  " + " | ".join(self.rows[-1]), flush=True)

    def show(self) -> None:
        widths = [max(len(r[i]) for r in self.rows) for i in range(len(self.rows[0]))]
        print()
        for j, row in enumerate(self.rows):
            print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
            if j == 0:
                print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def kernel_rows(table: Table, name: str, x: np.ndarray, y: np.ndarray, rng) -> None:
    n = len(x)
    # the brute force of H once (minutes), the fast H the median of 3 (the first run, with
    # memory tracing, included): this VM's speed drifts by 10-40 %; dH: see dh_row
    slow, t_bw, t_bc, m_b = measure(lambda: quests.entropy_bruteforce(x, H), memory=True)
    fast, t_fw, t_fc, m_f = measure_median(lambda: quests.entropy(x, H), 3)
    frac = pairs_in_range(x, x, True, rng)
    table.add(
        f"H, {name}, n={n}",
        f"{t_bw:.1f} / {t_bc:.1f}",
        f"{t_fw:.1f} / {t_fc:.1f}",
        f"{t_bw / t_fw:.1f}x / {t_bc / t_fc:.1f}x",
        f"diff {abs(fast - slow):.1e} (H = {fast:.4f})",
        f"{m_b:.2f} / {m_f:.2f}",
        f"{frac:.2f}",
    )
    dh_row(table, name, x, y, 7, rng)


def dh_row(table: Table, name: str, x: np.ndarray, y: np.ndarray, repeats: int, rng=None) -> None:
    """dH of y against x, brute force and fast: ``repeats`` interleaved pairs of runs.

    This VM's speed drifts by 10-40 % over seconds to minutes, so the brute force and the fast
    sums run alternately and the speed-up is the median of the per-pair ratios (the times
    shown are medians too). Memory is traced in one extra run of each, not timed.
    """
    m, n = len(y), len(x)
    slow_fn = lambda: quests.delta_entropy_bruteforce(y, x, H)  # noqa: E731
    fast_fn = lambda: quests.delta_entropy(y, x, H)  # noqa: E731
    slow, _, _, m_b = measure(slow_fn, memory=True)
    fast, _, _, m_f = measure(fast_fn, memory=True)
    runs = np.array([[*measure(slow_fn)[1:3], *measure(fast_fn)[1:3]] for _ in range(repeats)])
    t_bw, t_bc, t_fw, t_fc = np.median(runs, axis=0)
    ratios = runs[:, 0] / runs[:, 2]
    s_w, s_c = np.median(ratios), np.median(runs[:, 1] / runs[:, 3])
    ok = np.isfinite(slow)
    err = np.abs(fast[ok] - slow[ok]).max()
    same_inf = np.array_equal(ok, np.isfinite(fast))
    frac = "-" if rng is None else f"{pairs_in_range(y, x, False, rng):.2f}"
    table.add(
        f"dH, {name}, {m} vs {n}",
        f"{t_bw:.2f} / {t_bc:.2f}",
        f"{t_fw:.2f} / {t_fc:.2f}",
        f"{s_w:.1f}x / {s_c:.1f}x ({ratios.min():.1f}-{ratios.max():.1f}x)",
        f"max diff {err:.1e}, same infs: {same_inf}",
        f"{m_b:.2f} / {m_f:.2f}",
        frac,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="environments for H (1e5)")
    parser.add_argument("--n-test", type=int, default=1_000, help="test environments for dH")
    parser.add_argument("--n-diverse", type=int, default=20_000, help="si-diverse size")
    parser.add_argument("--quick", action="store_true", help="divide all sizes by 5")
    parser.add_argument(
        "--no-fused",
        action="store_true",
        help="torch/numpy blocks instead of the compiled kernels (for a comparison)",
    )
    parser.add_argument(
        "--dh-scan",
        action="store_true",
        help="only dH of 1e3, 3e3 and 1e4 test rows against the si-pfd reference (5 pairs each)",
    )
    args = parser.parse_args()
    if args.no_fused:
        quests.use_fused_kernels(False)
    scale = 5 if args.quick else 1
    n, n_test, n_div = args.n // scale, args.n_test // scale, args.n_diverse // scale
    rng = np.random.default_rng(0)

    torch = "torch absent"
    if importlib.util.find_spec("torch"):
        t0 = time.perf_counter()
        import torch as _torch

        torch = f"torch {_torch.__version__} imported in {time.perf_counter() - t0:.1f} s"
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"numpy {np.__version__}, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, "
        f"pruned sums on {_kde_blocks.THREADS} threads "
        f"(PFD_THREADS={os.environ.get('PFD_THREADS')}), "
        f"{torch}, fused kernels: {'yes' if quests.use_fused_kernels() else 'no'}"
    )
    print(__doc__.split("Data:")[1].split('"pairs in range"')[0].rstrip())
    table = Table()
    table.add(
        "task",
        "brute wall / CPU s",
        "fast wall / CPU s",
        "speed-up wall / CPU",
        "agreement",
        "peak GB brute / fast",
        "pairs in range",
    )

    frames = si_pfd(n, seed=1)
    x, t_w, t_c, _ = measure(lambda: quests.descriptors(frames))
    table.add(
        f"descriptors, si-pfd, {len(x)} envs ({len(frames)} frames)",
        "-",
        f"{t_w:.1f} / {t_c:.1f}",
        "-",
        f"{len(x) / t_w:.0f} envs/s",
        "-",
        "-",
    )
    if args.dh_scan:
        for m in (1_000, 3_000, 10_000):
            y = quests.descriptors(si_pfd(m // scale, seed=2))[: m // scale]
            dh_row(table, "si-pfd", x, y, 5)
        table.show()
        return
    y = quests.descriptors(si_pfd(n_test, seed=2))[:n_test]
    kernel_rows(table, "si-pfd", x, y, rng)

    xd = quests.descriptors(si_diverse(n_div, seed=3))
    yd = quests.descriptors(si_diverse(n_test, seed=4))[:n_test]
    kernel_rows(table, "si-diverse", xd, yd, rng)

    # Algorithm 1 on a candidate pool, against random selection (Fig. S1 in numbers): chunks
    # of 1 (the default), 5 and 10, three frame scores, random over 5 seeds
    cands, ref = si_diverse(n // 2, seed=5), si_diverse(max(n // 50, 100), seed=6)
    n_target = max(len(cands) // 10, 10)
    x_cand = quests.descriptors(cands)
    counts = np.array([len(a) for a in cands])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    x_ref = quests.descriptors(ref)

    def set_h(order: list[int]) -> float:
        rows = [x_cand[starts[i] : starts[i] + counts[i]] for i in order]
        return quests.entropy(np.concatenate(rows), H)

    rand = [RandomSelector(n_target=n_target, seed=s).select(cands) for s in range(5)]
    h_rnd = [set_h(order) for order in rand]
    for chunk in (1, 5, 10):
        for score in ("sum", "mean", "max"):
            sel = EntropySelector(n_target=n_target, chunk_size=chunk, score=score)
            order, t_w, t_c, m_s = measure(
                lambda sel=sel: sel.select_from_descriptors(x_cand, counts, x_ref), memory=True
            )
            table.add(
                f"EntropySelector, {n_target} of {len(cands)} frames, chunk {chunk}, {score}",
                "-",
                f"{t_w:.2f} / {t_c:.2f}",
                "-",
                f"H sel {set_h(order):.3f} ({counts[order].sum()} atoms) vs random "
                f"{np.mean(h_rnd):.3f} ± {np.std(h_rnd):.3f} (5 seeds)",
                f"- / {m_s:.2f}",
                "-",
            )
    table.show()


if __name__ == "__main__":
    main()

"""MD stability and smoothness of the compressed student (issue 15.4; DPA-2 paper Fig. S8).

::

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/md_stability.py --quick
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/md_stability.py --run runs/silicon_default

Two measurements, both through the package's own exploration (:func:`pfd_ase.explore.explore`):

1. **Energy conservation.** NVE MD (``thermostat="nve"``: ASE's Velocity Verlet) of diamond
   Si with the compressed student (``dp --pt compress``). Momenta are drawn from
   Maxwell-Boltzmann at twice the target temperature (default 2 × 500 K, total momentum
   zero): in a harmonic-like crystal half of that kinetic energy flows into the potential
   energy, so the run settles near 500 K (the measured mean temperature is reported). The
   total energy per atom, potential energy plus 3/2 N k_B T of each sampled frame, gives
   the **drift**, the slope of a least-squares line through E(t) (meV/atom/ps; goal < 0.1),
   and the **largest excursion** max |E(t) - E(0)| (meV/atom; goal < 1).
2. **Structure at 1000 K.** NVT MD (Langevin, the exploration's default thermostat) at
   1000 K of diamond Si with the student and with the teacher, from the same structure and
   seed; frames after an equilibration are kept. Radial distribution function g(r) (ASE's
   :func:`ase.geometry.rdf.get_rdf`) and bond-angle distribution (angles j-i-k between
   neighbours within 2.8 Å, normalised to unit area) of both, and their **relative L1
   difference** ∫|x_student - x_teacher| / ∫ x_teacher (0 when equal, 2 when disjoint).
   The statistical floor of that figure is the L1 difference between the two halves of
   the teacher's own trajectory (each half has half the frames, so the floor of the full
   comparison is about 1/√2 of it). The student's force RMSE against the teacher's forces on
   the teacher's 1000 K frames is reported beside it.

Forms:

``--quick`` (a few minutes on 2 cores, fresh clone, no run needed)
    The teacher is Stillinger-Weber itself (matscipy). A deepmd-kit student (the package's
    student: se_atten_v2, attn_layer 0, rcut 6.5 Å) is trained briefly on SW-labelled frames
    of SW NVT MD of 64-atom diamond Si at 300-1400 K, frozen and compressed. NVE of the
    64-atom cell for 1 ps, also with SW (the integrator's own error at this time step), and
    NVT in the same cell. With ``--run`` the run's models are used instead, at the quick sizes.
full form (``--run DIR``, a finished silicon recipe run)
    Teacher and student from ``DIR/summary.json`` (the fine-tuned PF model and the
    distilled student; compressed here if the run's student is not). NVE of the 512-atom
    cell (4×4×4 conventional) for 10 ps; NVT in the 216-atom cell (3×3×3) for 0.5 ps of
    equilibration and 2 ps of sampling.

Time step: 1 fs for NVE, 2 fs for NVT (the recipe's). Writes
``bench/results/md_stability.json`` (``md_stability_quick.json`` for ``--quick``) and a PNG
beside it, and prints a table. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

#: Goals of the headline figures (issue 15.4).
GOALS = {"drift_meV_atom_ps": 0.1, "max_abs_dE_meV_atom": 1.0}
#: Neighbour cut-off of the bond-angle distribution (Å): between the first (2.35 Å) and the
#: second (3.84 Å) shell of diamond Si, past the first minimum of g(r) at 1000 K.
ADF_CUTOFF_A = 2.8

#: Sizes of the two forms.
FORMS: dict[str, dict[str, Any]] = {
    "quick": {
        "nve_size": 2,  # 64 atoms
        "nve_steps": 1000,  # 1 ps at 1 fs
        "nve_sample_every": 10,
        "nvt_size": 2,
        "nvt_equilibration_steps": 200,  # 0.4 ps at 2 fs
        "nvt_steps": 1200,  # 2.0 ps of sampling after it
        "nvt_sample_every": 10,
        "train_steps": 2000,
        "train_temperatures_K": [300.0, 700.0, 1100.0, 1400.0],
        "train_md_steps": 400,
        "train_sample_every": 20,
    },
    "full": {
        "nve_size": 4,  # 512 atoms
        "nve_steps": 10000,  # 10 ps at 1 fs
        "nve_sample_every": 20,
        "nvt_size": 3,  # 216 atoms
        "nvt_equilibration_steps": 250,  # 0.5 ps at 2 fs
        "nvt_steps": 1250,  # 2 ps of sampling after it
        "nvt_sample_every": 10,
    },
}


# ----------------------------------------------------------------------------- NVE drift


def total_energies(frames: Sequence[Atoms]) -> np.ndarray:
    """Total energy (eV) of explored frames: the model's potential energy plus the kinetic
    energy 3/2 N k_B T of the frame's kinetic temperature (NVE walkers have no constraints,
    so 3 N degrees of freedom)."""
    from ase import units

    return np.array(
        [
            f.info["pfd_model_energy"] + 1.5 * len(f) * units.kB * f.info["pfd_md_temperature_K"]
            for f in frames
        ]
    )


def energy_drift(times_ps: np.ndarray, energy_eV_atom: np.ndarray) -> dict[str, float]:
    """Drift of a total-energy series: the slope of its least-squares line (meV/atom/ps),
    its largest excursion from the start max |E(t) - E(0)| (meV/atom) and its standard
    deviation about the line (meV/atom)."""
    t = np.asarray(times_ps, dtype=float)
    e = (np.asarray(energy_eV_atom, dtype=float) - energy_eV_atom[0]) * 1000.0
    if len(t) < 2:
        raise ValueError("need at least two frames for a drift")
    slope, intercept = np.polyfit(t, e, 1)
    return {
        "drift_meV_atom_ps": float(slope),
        "max_abs_dE_meV_atom": float(np.abs(e).max()),
        "std_about_fit_meV_atom": float(np.std(e - (slope * t + intercept))),
    }


def nve_run(
    structure: Atoms,
    model: Any,
    workdir: str | os.PathLike,
    *,
    velocity_temperature_K: float,
    timestep_fs: float,
    steps: int,
    sample_every: int,
    seed: int,
) -> dict[str, Any]:
    """NVE MD (the exploration's Velocity Verlet) of ``structure`` with ``model`` (an
    exploration model spec) from Maxwell-Boltzmann momenta at ``velocity_temperature_K``;
    returns the walker's status, the series (time in ps, E(t) - E(0) in meV/atom, kinetic
    temperature in K) and :func:`energy_drift` of the frames reached."""
    from pfd_ase.explore import explore

    t0 = time.perf_counter()
    result = explore(
        structure,
        model,
        workdir,
        temperatures_K=velocity_temperature_K,
        thermostat="nve",
        timestep_fs=timestep_fs,
        steps=steps,
        sample_every=sample_every,
        include_initial=True,
        seed=seed,
        progress=False,
    )
    (walker,) = result.walkers
    frames = result.frames
    n = len(frames[0])
    t_ps = np.array([f.info["pfd_time_fs"] for f in frames]) / 1000.0
    energy = total_energies(frames) / n
    temperature = np.array([f.info["pfd_md_temperature_K"] for f in frames])
    out: dict[str, Any] = {
        "status": walker["status"],
        "steps_done": walker.get("steps_done", 0),
        "n_atoms": n,
        "simulated_ps": float(t_ps[-1]),
        "mean_temperature_K": float(temperature[len(temperature) // 10 :].mean()),
        **energy_drift(t_ps, energy),
        "wall_s": round(time.perf_counter() - t0, 1),
        "ms_per_step": round(1000.0 * walker["wall_time_s"] / max(walker["steps_done"], 1), 2),
        "t_ps": t_ps.round(4).tolist(),
        "dE_meV_atom": ((energy - energy[0]) * 1000.0).round(5).tolist(),
        "temperature_K": temperature.round(1).tolist(),
    }
    return out


# ----------------------------------------------------------------------------- structure


def nvt_frames(
    structure: Atoms,
    model: Any,
    workdir: str | os.PathLike,
    *,
    temperature_K: float,
    timestep_fs: float,
    equilibration_steps: int,
    steps: int,
    sample_every: int,
    seed: int,
) -> tuple[list[Atoms], dict[str, Any]]:
    """Frames of an NVT (Langevin) run at ``temperature_K`` after ``equilibration_steps``,
    sampled every ``sample_every`` steps over ``steps`` more; and the walker's record."""
    from pfd_ase.explore import explore

    result = explore(
        structure,
        model,
        workdir,
        temperatures_K=temperature_K,
        timestep_fs=timestep_fs,
        steps=equilibration_steps + steps,
        sample_every=sample_every,
        seed=seed,
        progress=False,
    )
    (walker,) = result.walkers
    kept = [f for f in result.frames if f.info["pfd_step"] > equilibration_steps]
    return kept, walker


def rdf_radius(frames: Sequence[Atoms], rmax_A: float = 6.0) -> float:
    """The largest radius (Å, at most ``rmax_A``) that ASE's ``get_rdf`` accepts for every
    frame: just under half the smallest cell height."""
    heights = []
    for atoms in frames:
        cell = atoms.cell.array
        heights.append(
            abs(np.linalg.det(cell))
            / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1).max()
        )
    return min(rmax_A, 0.5 * min(heights) - 1e-6)


def rdf(frames: Sequence[Atoms], rmax_A: float, dr_A: float = 0.05) -> tuple[np.ndarray, ...]:
    """Radial distribution function g(r) averaged over ``frames`` (ASE's ``get_rdf``):
    bin centres (Å) and g, in bins of about ``dr_A`` up to :func:`rdf_radius`."""
    from ase.geometry.rdf import get_rdf

    rmax = rdf_radius(frames, rmax_A)
    nbins = max(round(rmax / dr_A), 1)
    g, r = get_rdf(list(frames), rmax, nbins)
    return r, g


def adf(
    frames: Sequence[Atoms], cutoff_A: float = ADF_CUTOFF_A, bin_deg: float = 2.0
) -> tuple[np.ndarray, np.ndarray, float]:
    """Bond-angle distribution: the angles j-i-k between every pair of neighbours j, k of
    every atom i within ``cutoff_A``, over ``frames``, as a density on 0-180° (1/degree,
    unit area). Returns bin centres (degrees), the density and the mean number of
    neighbours within the cut-off."""
    from ase.neighborlist import neighbor_list

    edges = np.arange(0.0, 180.0 + 0.5 * bin_deg, bin_deg)
    hist = np.zeros(len(edges) - 1)
    n_bonds = n_centres = 0
    for atoms in frames:
        i, d = neighbor_list("iD", atoms, cutoff_A)
        order = np.argsort(i, kind="stable")
        i, d = i[order], d[order]
        starts = np.searchsorted(i, np.arange(len(atoms) + 1))
        n_bonds += len(i)
        n_centres += len(atoms)
        for a in range(len(atoms)):
            v = d[starts[a] : starts[a + 1]]
            if len(v) < 2:
                continue
            u = v / np.linalg.norm(v, axis=1)[:, None]
            upper = np.triu_indices(len(u), 1)
            cos = np.clip((u @ u.T)[upper], -1.0, 1.0)
            hist += np.histogram(np.degrees(np.arccos(cos)), edges)[0]
    total = hist.sum()
    density = hist / (total * bin_deg) if total > 0 else hist
    return 0.5 * (edges[:-1] + edges[1:]), density, n_bonds / max(n_centres, 1)


def l1_difference(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """∫ |a - b| dx over uniform bins ``x``."""
    dx = float(x[1] - x[0]) if len(x) > 1 else 1.0
    return float(np.abs(np.asarray(a) - np.asarray(b)).sum() * dx)


def relative_l1(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """∫ |a - b| dx / ∫ b dx: 0 when equal, 2 when disjoint (``b`` the reference)."""
    norm = l1_difference(x, b, np.zeros_like(b))
    return l1_difference(x, a, b) / norm if norm > 0 else float("nan")


def distributions(frames: Sequence[Atoms], rmax_A: float = 6.0) -> dict[str, Any]:
    """g(r) and the bond-angle distribution of ``frames`` (see :func:`rdf`, :func:`adf`)."""
    r, g = rdf(frames, rmax_A)
    theta, p, coordination = adf(frames)
    return {"r_A": r, "g": g, "theta_deg": theta, "adf": p, "coordination": coordination}


def compare_distributions(
    student: Sequence[Atoms], teacher: Sequence[Atoms], rmax_A: float = 6.0
) -> dict[str, Any]:
    """Relative L1 differences of g(r) and the bond-angle distribution, student against
    teacher, and the teacher's noise floor (its first half of frames against its second)."""
    rmax_A = rdf_radius([*student[:1], *teacher[:1]], rmax_A)  # one grid for both
    s, t = distributions(student, rmax_A), distributions(teacher, rmax_A)
    half = len(teacher) // 2
    out: dict[str, Any] = {
        "n_frames": {"student": len(student), "teacher": len(teacher)},
        "rdf_l1": relative_l1(t["r_A"], s["g"], t["g"]),
        "rdf_l1_abs_A": l1_difference(t["r_A"], s["g"], t["g"]),
        "adf_l1": relative_l1(t["theta_deg"], s["adf"], t["adf"]),
        "coordination": {"student": s["coordination"], "teacher": t["coordination"]},
        "rmax_A": float(t["r_A"][-1] + 0.5 * (t["r_A"][1] - t["r_A"][0])),
    }
    if half >= 2:
        a, b = distributions(teacher[:half], rmax_A), distributions(teacher[half:], rmax_A)
        out["teacher_halves_rdf_l1"] = relative_l1(a["r_A"], a["g"], b["g"])
        out["teacher_halves_adf_l1"] = relative_l1(a["theta_deg"], a["adf"], b["adf"])
    out["curves"] = {
        "r_A": t["r_A"].round(4).tolist(),
        "g_student": s["g"].round(5).tolist(),
        "g_teacher": t["g"].round(5).tolist(),
        "theta_deg": t["theta_deg"].round(3).tolist(),
        "adf_student": s["adf"].round(7).tolist(),
        "adf_teacher": t["adf"].round(7).tolist(),
    }
    return out


def force_rmse(model: Any, frames: Sequence[Atoms]) -> float:
    """RMSE (eV/Å) of ``model``'s forces against the forces the explored ``frames`` carry
    (``pfd_model_forces``: the teacher's, computed during its MD)."""
    from pfd_ase.tasks import calculator_spec

    calc = calculator_spec(model, what="model").build()
    err = []
    for frame in frames:
        atoms = Atoms(frame.numbers, frame.positions, cell=frame.cell, pbc=frame.pbc)
        atoms.calc = calc
        err.append(atoms.get_forces() - frame.arrays["pfd_model_forces"])
    return float(np.sqrt(np.mean(np.concatenate(err) ** 2)))


# ----------------------------------------------------------------------------- models


def quick_student(
    workdir: Path, form: dict[str, Any], seed: int, threads: int
) -> tuple[Path, dict[str, Any]]:
    """Train the package's student on Stillinger-Weber-labelled frames of SW NVT MD of
    64-atom diamond Si; freeze and compress it. Returns the model to use and its record."""
    from pfd_ase.explore import explore
    from pfd_ase.label import label_in_memory
    from pfd_ase.materials import silicon
    from pfd_ase.training.stages import train_student

    t0 = time.perf_counter()
    md = explore(
        silicon("diamond", 2),
        "sw",
        workdir / "train_md",
        temperatures_K=form["train_temperatures_K"],
        thermostat="bussi",
        steps=form["train_md_steps"],
        sample_every=form["train_sample_every"],
        seed=seed + 1,
        progress=False,
    )
    frames = label_in_memory(md.frames, "sw")
    result = train_student(
        frames,
        workdir / "student",
        steps=form["train_steps"],
        seed=seed + 1,
        threads=threads,
        progress=False,
    )
    model = result.compressed or result.model
    record = {
        "what": (
            f"deepmd-kit student (se_atten_v2, attn_layer 0, rcut 6.5 Å), "
            f"{form['train_steps']} steps on {len(frames)} SW-labelled 64-atom frames of SW "
            f"NVT MD at {', '.join(f'{t:g}' for t in form['train_temperatures_K'])} K"
            + (", compressed (dp --pt compress)" if result.compressed else ", NOT compressed")
        ),
        "compressed": result.compressed is not None,
        "compress_error": result.info.get("compress_error"),
        "n_train_frames": len(frames),
        "train_wall_s": round(time.perf_counter() - t0, 1),
    }
    return Path(model), record


def run_models(run: Path, workdir: Path, threads: int) -> tuple[Path, Path, dict[str, Any]]:
    """Teacher and (compressed) student of a finished silicon recipe run."""
    from pfd_ase._io import read_json

    summary_path = run / "summary.json"
    if not summary_path.exists():
        raise SystemExit(f"{summary_path} not found: a finished silicon recipe run is needed")
    summary = read_json(summary_path)
    teacher, student = summary.get("teacher"), summary.get("student")
    if not teacher or not student:
        raise SystemExit(f"{summary_path} names no teacher and student: is the run finished?")
    teacher, student = Path(teacher), Path(student)
    config = summary.get("config", {})
    record: dict[str, Any] = {
        "run": str(run),
        "finished": summary.get("finished"),
        "labeler": (config.get("labeler") or {}).get("name"),
        "base_model": (config.get("base_model") or {}).get("path"),
        "teacher_path": str(teacher),
        "student_path": str(student),
    }
    if "compressed" in student.name:
        record["compressed"] = True
        return teacher, student, record
    from pfd_ase.training import deepmd as dp

    try:
        student = dp.compress(student, workdir / "student_compressed.pth", threads=threads)
        record.update(compressed=True, compressed_here=str(student))
    except RuntimeError as exc:
        record.update(compressed=False, compress_error=str(exc).splitlines()[-1])
    return teacher, student, record


# ----------------------------------------------------------------------------- report


def measure(
    teacher_model: Any,
    student_model: Any,
    form: dict[str, Any],
    workdir: str | os.PathLike,
    *,
    temperature_K: float = 500.0,
    nvt_temperature_K: float = 1000.0,
    nve_timestep_fs: float = 1.0,
    nvt_timestep_fs: float = 2.0,
    seed: int = 0,
    teacher_nve: bool = False,
) -> dict[str, Any]:
    """Both measurements for two exploration models (names, ``("pfd", {"model": path})``...)
    at the sizes of ``form`` (see :data:`FORMS`); the NVE also with the teacher when
    ``teacher_nve``. Returns ``headline``, ``goal``, ``met``, ``settings``, ``nve`` (per
    model) and ``structure_1000K``."""
    from pfd_ase.materials import silicon

    workdir = Path(workdir)
    v_temp = 2.0 * temperature_K
    nve: dict[str, Any] = {}
    nve_models = {"student": student_model}
    if teacher_nve:
        nve_models["teacher"] = teacher_model
    for name, model in nve_models.items():
        print(f"NVE {name}: {form['nve_steps']} steps ...", flush=True)
        nve[name] = nve_run(
            silicon("diamond", form["nve_size"]),
            model,
            workdir / f"nve_{name}",
            velocity_temperature_K=v_temp,
            timestep_fs=nve_timestep_fs,
            steps=form["nve_steps"],
            sample_every=form["nve_sample_every"],
            seed=seed,
        )
        print(f"  {nve[name]['wall_s']} s", flush=True)

    frames, walkers = {}, {}
    for name, model in (("teacher", teacher_model), ("student", student_model)):
        print(f"NVT {nvt_temperature_K:g} K {name} ...", flush=True)
        t0 = time.perf_counter()
        frames[name], walkers[name] = nvt_frames(
            silicon("diamond", form["nvt_size"]),
            model,
            workdir / f"nvt_{name}",
            temperature_K=nvt_temperature_K,
            timestep_fs=nvt_timestep_fs,
            equilibration_steps=form["nvt_equilibration_steps"],
            steps=form["nvt_steps"],
            sample_every=form["nvt_sample_every"],
            seed=seed,
        )
        print(f"  {time.perf_counter() - t0:.1f} s", flush=True)
    structure = compare_distributions(frames["student"], frames["teacher"])
    structure["n_atoms"] = len(frames["teacher"][0])
    structure["status"] = {k: w["status"] for k, w in walkers.items()}
    structure["ms_per_step"] = {
        k: round(1000.0 * w["wall_time_s"] / max(w["steps_done"], 1), 2) for k, w in walkers.items()
    }
    structure["student_force_rmse_eV_A"] = force_rmse(student_model, frames["teacher"][::5])

    headline = {
        "drift_meV_atom_ps": abs(nve["student"]["drift_meV_atom_ps"]),
        "max_abs_dE_meV_atom": nve["student"]["max_abs_dE_meV_atom"],
        "rdf_l1": structure["rdf_l1"],
        "adf_l1": structure["adf_l1"],
    }
    return {
        "headline": headline,
        "goal": {
            "drift_meV_atom_ps": f"< {GOALS['drift_meV_atom_ps']} (|slope| of E(t))",
            "max_abs_dE_meV_atom": f"< {GOALS['max_abs_dE_meV_atom']}",
            "rdf_l1": "no number in the issue: compare with teacher_halves_rdf_l1 (noise)",
            "adf_l1": "no number in the issue: compare with teacher_halves_adf_l1 (noise)",
        },
        "met": {k: headline[k] < v for k, v in GOALS.items()},
        "settings": {
            **form,
            "nve_velocity_temperature_K": v_temp,
            "nve_target_temperature_K": temperature_K,
            "nve_timestep_fs": nve_timestep_fs,
            "nvt_temperature_K": nvt_temperature_K,
            "nvt_timestep_fs": nvt_timestep_fs,
            "nvt_thermostat": "langevin (tdamp 100 time steps)",
            "adf_cutoff_A": ADF_CUTOFF_A,
            "seed": seed,
            "energy": "potential + 3/2 N kB T of each sampled frame; drift = least-squares slope",
        },
        "nve": nve,
        "structure_1000K": structure,
    }


def table(out: dict[str, Any]) -> str:
    what = {k: out.get(k, {}).get("what", "?") for k in ("teacher", "student")}
    lines = [f"MD stability ({out.get('form', '?')}): teacher {what['teacher']}"]
    lines.append(f"  student: {what['student']}")
    lines.append(
        f"{'NVE run':<10} {'atoms':>5} {'ps':>5} {'<T> K':>6} {'drift meV/at/ps':>16} "
        f"{'max|dE| meV/at':>15} {'ms/step':>8} {'status':>9}"
    )
    for name, r in out["nve"].items():
        lines.append(
            f"{name:<10} {r['n_atoms']:>5} {r['simulated_ps']:>5.1f} "
            f"{r['mean_temperature_K']:>6.0f} {r['drift_meV_atom_ps']:>16.4f} "
            f"{r['max_abs_dE_meV_atom']:>15.4f} {r['ms_per_step']:>8.1f} {r['status']:>9}"
        )
    d = out["structure_1000K"]
    floor_rdf = d.get("teacher_halves_rdf_l1", float("nan"))
    floor_adf = d.get("teacher_halves_adf_l1", float("nan"))
    lines.append(
        f"1000 K NVT ({d['n_atoms']} atoms, {d['n_frames']['teacher']} frames each): "
        f"g(r) relative L1 {d['rdf_l1']:.4f} (teacher halves {floor_rdf:.4f}), "
        f"bond angles (< {ADF_CUTOFF_A} Å) L1 {d['adf_l1']:.4f} (teacher halves {floor_adf:.4f}); "
        f"coordination {d['coordination']['student']:.3f} vs {d['coordination']['teacher']:.3f}; "
        f"student force RMSE on teacher frames {d['student_force_rmse_eV_A']:.3f} eV/Å"
    )
    h = out["headline"]
    lines.append(
        f"headline: drift {h['drift_meV_atom_ps']:.4f} meV/atom/ps (goal < "
        f"{GOALS['drift_meV_atom_ps']}), max |dE| {h['max_abs_dE_meV_atom']:.4f} meV/atom "
        f"(goal < {GOALS['max_abs_dE_meV_atom']}): "
        + ("met" if all(out["met"].values()) else "MISSED")
    )
    return "\n".join(lines)


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for name, r in out["nve"].items():
        ax.plot(
            r["t_ps"],
            r["dE_meV_atom"],
            lw=1,
            label=f"{name} ({r['drift_meV_atom_ps']:+.3f} meV/atom/ps)",
        )
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xlabel("t (ps)")
    ax.set_ylabel("E(t) - E(0) (meV/atom)")
    n = next(iter(out["nve"].values()))["n_atoms"]
    v_temp = out["settings"]["nve_velocity_temperature_K"]
    ax.set_title(f"NVE, {n}-atom diamond Si, from {v_temp:g} K velocities")
    ax.legend(fontsize=8)
    d = out["structure_1000K"]
    c = d["curves"]
    ax = axes[1]
    ax.plot(c["r_A"], c["g_teacher"], label="teacher", lw=1.5)
    ax.plot(c["r_A"], c["g_student"], "--", label="student", lw=1.2)
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("g(r)")
    ax.set_title(f"1000 K, {d['n_atoms']} atoms: g(r) L1 {d['rdf_l1']:.3f}")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.plot(c["theta_deg"], c["adf_teacher"], label="teacher", lw=1.5)
    ax.plot(c["theta_deg"], c["adf_student"], "--", label="student", lw=1.2)
    ax.set_xlabel("angle j-i-k (degrees)")
    ax.set_ylabel("density (1/degree)")
    ax.set_title(f"bond angles (r < {ADF_CUTOFF_A} Å): L1 {d['adf_l1']:.3f}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("ase", "deepmd-kit", "torch", "matscipy", "sevenn", "pfd_ase"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="minutes: SW teacher, 64 atoms, 1 ps")
    p.add_argument("--run", help="a finished silicon recipe run (its teacher and student)")
    p.add_argument("--temperature-K", type=float, default=500.0, help="NVE target (K)")
    p.add_argument("--nvt-temperature-K", type=float, default=1000.0)
    p.add_argument("--nve-timestep-fs", type=float, default=1.0)
    p.add_argument("--nvt-timestep-fs", type=float, default=2.0)
    p.add_argument("--nve-steps", type=int, help="override the form's NVE steps")
    p.add_argument("--nvt-size", type=int, help="override the form's NVT cell (k: 8 k^3 atoms)")
    p.add_argument("--nvt-steps", type=int, help="override the form's NVT sampling steps")
    p.add_argument("--student", help="this student model file instead (e.g. uncompressed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("PFD_THREADS", "1")))
    p.add_argument("--workdir", help="keep the MD and training here (default: a temp dir)")
    p.add_argument("--out", help="JSON path (default bench/results/md_stability[_quick].json)")
    args = p.parse_args(argv)
    if not args.quick and not args.run:
        p.error("the full form needs --run DIR (a finished silicon recipe run); or --quick")

    sys.path.insert(0, str(ROOT / "bench"))
    from _compute import child_env, set_threads

    # this process and its MD children: the threads (deepmd-kit's import reads them from
    # the environment) and the tuned allocator, as the package's entry points do
    os.environ.update(child_env(args.threads, tune=True))
    set_threads(args.threads)

    form_name = "quick" if args.quick else "full"
    form = dict(FORMS[form_name])
    for key in ("nve_steps", "nvt_size", "nvt_steps"):
        if getattr(args, key):
            form[key] = getattr(args, key)
    out_path = (
        Path(args.out)
        if args.out
        else RESULTS / f"md_stability{'_quick' if args.quick else ''}.json"
    )
    keep = args.workdir is not None
    workdir = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="md_stability_"))
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    try:
        if args.run:
            teacher_path, student_path, run_record = run_models(
                Path(args.run), workdir, args.threads
            )
            teacher_model: Any = ("pfd", {"model": str(teacher_path)})
            teacher = {
                "what": f"the run's fine-tuned {run_record['base_model']} (PF model), "
                f"labeller {run_record['labeler']}",
                **run_record,
            }
            student = {
                "what": "the run's distilled deepmd-kit student"
                + (", compressed" if run_record.get("compressed") else ", NOT compressed"),
                "compressed": run_record.get("compressed"),
            }
        elif args.student is None:
            print("training the quick student on SW-labelled frames ...", flush=True)
            student_path, student = quick_student(workdir, form, args.seed, args.threads)
            print(f"  {student['what']} ({student['train_wall_s']} s)", flush=True)
        if not args.run:
            teacher_model = "sw"
            teacher = {"what": "Stillinger-Weber (matscipy, PRB 31 5262), the labeller itself"}
        if args.student is not None:
            student_path = Path(args.student)
            student = {"what": f"{student_path} (given with --student)"}
        student_model = ("pfd", {"model": str(student_path)})

        measured = measure(
            teacher_model,
            student_model,
            form,
            workdir,
            temperature_K=args.temperature_K,
            nvt_temperature_K=args.nvt_temperature_K,
            nve_timestep_fs=args.nve_timestep_fs,
            nvt_timestep_fs=args.nvt_timestep_fs,
            seed=args.seed,
            teacher_nve=args.quick and not args.run,  # SW: the integrator's own error
        )
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)

    out: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "threads": args.threads,
        "form": form_name,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "versions": _versions(),
        "headline": measured.pop("headline"),
        "goal": measured.pop("goal"),
        "met": measured.pop("met"),
        "teacher": teacher,
        "student": student,
        **measured,
    }
    print(table(out))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=1) + "\n")
    png = out_path.with_suffix(".png")
    plot(out, png)
    print(f"wrote {out_path} and {png} ({out['wall_s']} s)")
    return out


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(0 if main() else 1)

"""The report folder of a validation: ``summary.json``, ``report.md`` and the figures.

:func:`write_report` writes the results of :mod:`pfd_ase.analysis.validate` (errors,
phonons, vacancy formation energies with their flags) and the run's failed labelling tasks
per step with their causes as JSON and as a short Markdown page that links every PNG in the
folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pfd_ase._io import read_json, write_json

__all__ = ["report_lines", "write_report"]


def report_lines(summary: Mapping[str, Any]) -> list[str]:
    """Markdown lines of the results in ``summary``: bullets, and tables for the phonons.

    Parameters
    ----------
    summary
        ``errors`` (name → :func:`pfd_ase.training.evaluate.evaluate` errors), ``phonons``
        (name → ``{"special_points": ...}``), the phonon comparison of
        :func:`pfd_ase.analysis.phonons.phonon_comparison` (``phonon_branches``,
        ``phonon_deviation_THz``, ``phonon_max_dev_THz``, ``phonon_thermal``,
        ``phonopy_params`` ...), ``vacancy_formation_eV`` (model → phase → E_f, ``None``
        where unstable), ``vacancy_flags`` (model → phase → flags) and
        ``vacancy_unstable`` (model → phase → reason) and ``labelling_failures`` (step →
        ``{"n_failed", "causes"}``, :func:`pfd_ase.workflow.state.labelling_failures`);
        any may be missing. A flagged formation energy is printed with its flags and "not
        a result", an unstable phase as "unstable" with the reason, never as a number.
        ``diffusion`` (run set → :meth:`~pfd_ase.analysis.diffusion.DiffusionStudy.summary`
        with ``n_atoms``): D per temperature and the activation energy. ``held_out``
        (model → :func:`~pfd_ase.analysis.testset.score_models` scores) with ``test_set``:
        the table of errors on the held-out test set, first. ``cells`` (structure → atoms)
        and ``stage_wall_s`` (with ``concurrent`` and ``references_wait_s``): what the run
        chose and what each stage cost, last.

    Returns
    -------
    list of str
        One line per result, plus the lines of the tables.
    """
    nan = float("nan")
    lines = _held_out_lines(summary)
    for name, res in summary.get("errors", {}).items():
        lines.append(
            f"- **{name.replace('_', ' ')}** ({_TRAINING_SETS.get(name, 'training data')}):"
            " force RMSE"
            f" {res.get('force_rmse', nan):.4f} eV/Å, energy RMSE"
            f" {res.get('energy_rmse', nan):.4f} eV/atom ({res.get('n_frames')} frames)"
        )
    for key, res in summary.get("phonons", {}).items():
        gamma = res["special_points"]["Gamma"]
        lines.append(f"- phonons {key}: Γ optical {max(gamma):.2f} THz")
    lines += _phonon_tables(summary)
    lines += _vacancy_lines(summary)
    lines += _diffusion_lines(summary)
    lines += _phase_lines(summary)
    lines += _quench_lines(summary)
    lines += _dh_lines(summary)
    lines += _interface_lines(summary)
    lines += _failure_lines(summary)
    lines += _run_lines(summary)
    return lines


def _run_lines(summary: Mapping[str, Any]) -> list[str]:
    """What the run chose (atoms per structure, ``cells``) and what each stage cost
    (``stage_wall_s``; ``concurrent``: steps beside the others, ``references_wait_s``: the
    run's wait for them)."""
    lines = []
    if summary.get("cells"):
        cells = ", ".join(f"{k} {v}" for k, v in summary["cells"].items())
        lines.append(f"- cells (atoms per structure): {cells}")
    walls = dict(summary.get("stage_wall_s") or {})
    if walls:
        from pfd_ase.analysis.validate import run_wall_s

        wait = float(summary.get("references_wait_s") or 0.0)
        total = run_wall_s(walls, wait)
        beside = walls.pop("concurrent", None)
        text = ", ".join(f"{k} {v:.0f}" for k, v in walls.items())
        lines.append(f"- wall time per stage (s): {text}; total {total:.0f} s")
        if beside is not None:
            lines.append(
                f"- the labeler's references beside the workflow: {beside:.0f} s, overlapping"
                f" the stages above (the run waited {wait:.0f} s for them)"
            )
    return lines


#: What the frames of the recipes' training-data errors are (none of them is a test).
_TRAINING_SETS = {
    "teacher_vs_dft": "the teacher's own training frames, not a test",
    "student_vs_dft": "the teacher's DFT training frames, not the student's",
    "student_vs_teacher": "the student's own training frames, not a test",
}


def _held_out_lines(summary: Mapping[str, Any]) -> list[str]:
    """The table of each model's errors on the held-out test set, overall and per structure."""
    scores = summary.get("held_out")
    if not scores:
        return []

    def cell(value: float | None, fmt: str) -> str:
        return "–" if value is None else format(value, fmt)

    test = summary.get("test_set", {})
    lines = [
        f"Held-out test set ({test.get('n_frames', '?')} frames labelled by the run's labeler,"
        " never trained on): RMSE per model, all frames then per structure; energy with each"
        " model's constant per element removed (raw: without).",
        "",
        "| model | structure | frames | force (eV/Å) | energy (meV/atom) | raw energy"
        " (meV/atom) | stress (GPa) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, res in scores.items():
        rows = [("all", res), *sorted(res.get("per_phase", {}).items())]
        for name, r in rows:
            lines.append(
                f"| {model} | {name} | {r.get('n_frames')} |"
                f" {cell(r.get('force_rmse_eV_A'), '.3f')} |"
                f" {cell(r.get('energy_rmse_meV_atom'), '.1f')} |"
                f" {cell(r.get('energy_rmse_raw_meV_atom'), '.1f')} |"
                f" {cell(r.get('stress_rmse_GPa'), '.2f')} |"
            )
    return [*lines, ""]


def _diffusion_lines(summary: Mapping[str, Any]) -> list[str]:
    """D per temperature and Ea ± error of each diffusion run set; excluded runs counted."""
    lines = []
    for key, res in summary.get("diffusion", {}).items():
        parts = []
        for temp, d in res.get("D_cm2_s", {}).items():
            err = f" ± {d['err']:.1e}" if d.get("err") is not None else ""
            flag = ""
            if d.get("diffusive") is False:  # older summaries have no flag
                flag = (
                    f", not diffusive: MSD ∝ t^{d['alpha']:.2f}, {d['msd_end_A2']:.2g} Å²"
                    " reached; not a diffusion coefficient"
                )
            parts.append(f"{temp} K {d['D']:.2e}{err} ({d['runs']} runs{flag})")
        text = f"- {res.get('species', '?')} diffusion, {key.replace('_', ' ')}"
        text += f" ({res.get('n_atoms', '?')} atoms): D (cm²/s) " + ", ".join(parts)
        fit = res.get("arrhenius")
        if fit:
            err = f" ± {fit['Ea_err_eV']:.3f}" if fit.get("Ea_err_eV") is not None else ""
            text += f"; Ea {fit['Ea_eV']:.3f}{err} eV, D0 {fit['D0_cm2_s']:.2e} cm²/s"
            if fit.get("diffusive") is False:
                text += (
                    " (from D that are not diffusion coefficients: the temperature dependence"
                    " of caged, sub-ps motion, not an activation energy of diffusion)"
                )
        if res.get("excluded_runs"):
            text += f"; {len(res['excluded_runs'])} runs excluded (blew up or lost frames)"
        lines.append(text)
    return lines


def _phase_lines(summary: Mapping[str, Any]) -> list[str]:
    """Tables of the phase study: energies per formula unit and ordering, the vacancy
    formation energy per phase, the lowest phonon frequency at each path point."""
    ordering = summary.get("phase_ordering")
    if not ordering:
        return []
    phases = list(next(iter(ordering.values()))["relative_meV_fu"])
    lines = [
        "",
        f"Phase energies, meV per formula unit relative to {phases[0]}, each relaxed under its"
        " symmetry by the subject:",
        "",
        "| | " + " | ".join(phases) + " | order (lowest first) | expected order | same as DFT |"
        " max error vs DFT |",
        "|---" * (len(phases) + 5) + "|",
    ]

    def yes(flag: Any) -> str:
        return "–" if flag is None else ("yes" if flag else "**no**")

    for name, entry in ordering.items():
        cells = [f"{entry['relative_meV_fu'][p]:.1f}" for p in phases]
        err = entry.get("max_abs_error_meV_fu")
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {' < '.join(entry['order'])} | {yes(entry['expected_order'])}"
            + f" | {yes(entry['same_order_as_reference'])}"
            + f" | {'–' if err is None else f'{err:.1f}'} |"
        )
    defects = summary.get("defects")
    if defects:
        lines += [
            "",
            "Vacancy formation energy (eV), the lowest over the distinct sites (its atom index),"
            " E_f = E(cell − X) − E(cell) + ½ E(X₂) with the subject's own molecule:",
            "",
            "| | μ (eV) | " + " | ".join(phases) + " |",
            "|---" * (len(phases) + 2) + "|",
        ]
        for name, entry in defects.items():
            cells = []
            for p in phases:
                res = entry["phases"].get(p)
                if res is None:
                    cells.append("–")
                elif res["E_f_eV"] is None:
                    cells.append("no value")
                else:
                    relaxed = all(r.get("relaxed") for r in res["sites"].values())
                    mark = "" if relaxed else " unrelaxed"
                    n = len(res["sites"])
                    cells.append(f"{res['E_f_eV']:.2f} (site {res['site']}; {n} distinct{mark})")
            lines.append(f"| {name} | {entry['mu']['mu_eV']:.3f} | " + " | ".join(cells) + " |")
        dft = defects.get("DFT", {}).get("phases", {})
        for name, entry in defects.items():
            for p, res in entry.get("unrelaxed", {}).items():
                ref = dft.get(p, {}).get("E_f_eV")
                if res["E_f_eV"] is None or ref is None:
                    continue
                lines.append(
                    f"- {name}, {p}, unrelaxed as the DFT's: {res['E_f_eV']:.2f} eV, "
                    f"DFT {ref:.2f} eV, error {res['E_f_eV'] - ref:+.2f} eV"
                )
    soft = summary.get("soft_modes")
    if soft:
        lines += [
            "",
            "Lowest phonon frequency (THz) at each point of the path (negative: imaginary):",
        ]
        exact = summary.get("soft_modes_exact", {})
        for name, per_phase in soft.items():
            for phase, points in per_phase.items():
                held = exact.get(name, {}).get(phase)
                text = ", ".join(
                    f"{k} {v:.2f}" + ("" if held is None or k in held else " (interpolated)")
                    for k, v in points.items()
                )
                unstable = [k for k, v in points.items() if v < -0.1]
                verdict = f"imaginary at {', '.join(unstable)}" if unstable else "no imaginary mode"
                lines.append(f"- {name}, {phase}: {text} ({verdict})")
    return lines


def _quench_lines(summary: Mapping[str, Any]) -> list[str]:
    """The melt-quenched structures of each subject: sp³ fraction, energy, g(r) vs DFT."""
    lines = []
    rms = summary.get("rdf_rms_vs_dft", {})
    for name, res in summary.get("quench", {}).items():
        fractions = ", ".join(f"{f:.2f}" for f in res["sp3_fractions"])
        energies = ", ".join(f"{e:.3f}" for e in res["energy_eV_atom"])
        text = (
            f"- melt-quenched by {name} ({res['n_structures']} structures): sp³ fraction "
            f"{res['sp3_fraction']:.2f} ({fractions}); energy {energies} eV/atom (its own)"
        )
        if name in rms:
            text += f"; g(r) RMS difference from the labeler's {rms[name]:.3f}"
        lines.append(text)
    return lines


def _dh_lines(summary: Mapping[str, Any]) -> list[str]:
    """dH of held-out atoms against the training data and the models' force errors."""
    dh = summary.get("dh_vs_error")
    if not dh:
        return []
    where = ", ".join(dh.get("structures") or ["every structure"])
    lines = [
        f"- dH against the training set ({dh['bank']['n_environments']} environments) of "
        f"{dh['n_test_atoms']} held-out atoms ({where}; `dh_error.png`):"
    ]
    for name, stats in dh["models"].items():
        rho = stats["spearman_rho"]
        below, above = stats["force_error_eV_A"]["dH<=2"], stats["force_error_eV_A"]["dH>2"]
        parts = [f"Spearman rho {rho:.2f}" if rho is not None else "rho undefined"]
        for label, dist in (("dH <= 2", below), ("dH > 2", above)):
            if dist["n"]:
                parts.append(f"{label}: {dist['n']} atoms, mean |ΔF| {dist['mean']:.3f} eV/Å")
        lines.append(f"  - {name}: " + "; ".join(parts))
    return lines


def _interface_lines(summary: Mapping[str, Any]) -> list[str]:
    """The lattice mismatch of a stacked interface and the strain each side took."""
    strain = summary.get("interface_strain")
    if not strain:
        return []

    def pct(values: Any) -> str:
        return " / ".join(f"{v:+.2f}" for v in values)

    return [
        f"- interface: lattice mismatch (top − bottom)/bottom {pct(strain['mismatch_pct'])} % "
        f"(a / b); in-plane strain of the bottom {pct(strain['bottom'])} %, of the top "
        f"{pct(strain['top'])} % (volume kept)"
    ]


def _failure_lines(summary: Mapping[str, Any]) -> list[str]:
    """Failed labelling tasks per step, with their causes (a table), or "none"."""
    failures = summary.get("labelling_failures")
    if failures is None:
        return []
    if not failures:
        return ["- failed labelling tasks: none"]
    total = sum(int(f["n_failed"]) for f in failures.values())
    lines = [
        "",
        f"Failed labelling tasks: {total} in {len(failures)} step(s), left out of the data "
        "(causes: see `pfd_ase.label.FAILURE_KINDS` and each task's failure.json; "
        "`pfd-ase run --retry-failed` labels them again):",
        "",
        "| step | failed tasks | causes |",
        "|---|---|---|",
    ]
    for step, f in failures.items():
        causes = ", ".join(f"{kind} {n}" for kind, n in f.get("causes", {}).items())
        lines.append(f"| {step} | {f['n_failed']} | {causes or '–'} |")
    lines.append("")
    return lines


def _run_failures(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """``labelling_failures`` of the run whose ``summary.json`` is ``summary["run_summary"]``."""
    from pfd_ase.workflow.state import labelling_failures

    path = summary.get("run_summary")
    if not isinstance(path, str | os.PathLike) or not Path(path).is_file():
        return None
    try:
        steps = read_json(path).get("steps") or {}
    except (OSError, ValueError, AttributeError):
        return None
    return labelling_failures(steps)


def _supercell_text(matrix: Any) -> str:
    m = [list(row) for row in matrix]
    if all(m[i][j] == 0 for i in range(3) for j in range(3) if i != j):
        return "×".join(str(m[i][i]) for i in range(3))
    return str(m)


def _r2(x: float) -> float:
    """``x`` rounded to 2 decimals, a negative zero made positive."""
    return round(float(x), 2) + 0.0


def _phonon_tables(summary: Mapping[str, Any]) -> list[str]:
    """Branches at Γ, X, L per subject with deviations, max |Δ|, thermal properties."""
    branches = summary.get("phonon_branches")
    lines: list[str] = []
    if branches:
        ref = summary.get("phonon_reference")
        deviation = summary.get("phonon_deviation_THz", {})
        lines += [
            "",
            "Phonon frequencies at Γ, X, L, every branch in ascending order (THz); Δ: minus "
            f"the same branch of {ref} (THz). *exact*: the q-point is commensurate with that "
            "subject's supercell, *interpolated*: Fourier-interpolated from its force "
            "constants.",
            "",
            "| subject | supercell | point | branches (THz) | Δ per branch (THz) |",
            "|---|---|---|---|---|",
        ]
        for name, row in branches.items():
            sc = _supercell_text(row["supercell"])
            for point, freqs in row["frequencies_THz"].items():
                exact = row.get("commensurate", {}).get(point)
                label = {"Gamma": "Γ"}.get(point, point)
                if exact is not None:
                    label += " (exact)" if exact else " (interpolated)"
                delta = deviation.get(name, {}).get(point)
                # rounded first: an acoustic -0.001 THz reads 0.00, never -0.00
                d_text = "–" if delta is None else " ".join(f"{_r2(d):+.2f}" for d in delta)
                f_text = " ".join(f"{_r2(f):.2f}" for f in freqs)
                lines.append(f"| {name} | {sc} | {label} | {f_text} | {d_text} |")
        lines.append("")
        same = summary.get("phonon_same_supercell", {})
        for name, dev in summary.get("phonon_max_dev_THz", {}).items():
            note = "" if same.get(name, True) else f" (supercell differs from {ref}'s)"
            lines.append(f"- phonons {name}: max |Δ| vs {ref} {dev:.2f} THz at Γ, X, L{note}")
    thermal = summary.get("phonon_thermal")
    if thermal:
        first = next(iter(thermal.values()))
        mesh = "×".join(str(m) for m in first["mesh"])
        lines += [
            "",
            f"Harmonic thermal properties at {first['temperature_K']:g} K ({mesh} Γ-centred "
            "mesh, per mole of atoms; F_vib includes the zero-point energy; Dulong-Petit "
            "C_v = 3R = 24.94 J/K/mol):",
            "",
            "| subject | C_v (J/K/mol) | S (J/K/mol) | F_vib (kJ/mol) | F_vib (meV/atom) "
            "| imaginary modes |",
            "|---|---|---|---|---|---|",
        ]
        for name, t in thermal.items():
            imag = t.get("imaginary_fraction", 0.0)
            imag_text = "none" if imag == 0 else f"{100 * imag:.1f} % (left out)"
            lines.append(
                f"| {name} | {t['cv_J_K_mol_atom']:.2f} | {t['entropy_J_K_mol_atom']:.2f} "
                f"| {t['free_energy_kJ_mol_atom']:.3f} | {1000 * t['free_energy_eV_atom']:.1f} "
                f"| {imag_text} |"
            )
        lines.append("")
    params = {k: v for k, v in summary.get("phonopy_params", {}).items() if v}
    for name, path in params.items():
        lines.append(f"- phonopy_params.yaml ({name}): `{path}`")
    return lines


def _vacancy_lines(summary: Mapping[str, Any]) -> list[str]:
    """E_f per model and phase; unstable phases as "unstable", flagged ones as not results."""
    lines = []
    flags = summary.get("vacancy_flags", {})
    unstable = summary.get("vacancy_unstable", {})
    for model, phases in summary.get("vacancy_formation_eV", {}).items():
        parts = []
        for phase, e_f in phases.items():
            flagged = flags.get(model, {}).get(phase, [])
            why = [f for f in flagged if f != "unstable"]
            reason = unstable.get(model, {}).get(phase)
            if reason is not None or "unstable" in flagged:
                text = f"{phase} unstable ({reason or 'perfect cell unstable under ' + model})"
                text += f" [also: {', '.join(why)}]" if why else ""
            else:
                text = f"{phase} no value" if e_f is None else f"{phase} {e_f:.2f} eV"
                text += f" (not a result: {', '.join(why)})" if why else ""
            parts.append(text)
        lines.append(f"- vacancy E_f ({model}): " + ", ".join(parts))
    versus = summary.get("vacancy_vs_dft")
    if versus:
        how = "relaxed" if versus["relaxed"] else "unrelaxed"
        parts = [
            f"{name} {e:.2f} eV" if e is not None else f"{name} no value"
            for name, e in versus["E_f_eV"].items()
        ]
        errors = [
            f"{name} {err:+.2f} eV" for name, err in versus["error_eV"].items() if err is not None
        ]
        lines.append(
            f"- vacancy vs DFT ({versus['phase']}, all {how}, the DFT's cell): "
            + ", ".join(parts)
            + (f"; errors {', '.join(errors)}" if errors else "")
        )
    if any(any(per.values()) for per in flags.values()):
        from pfd_ase.analysis.vacancy import PHYSICAL_FORMATION_ENERGY_EV

        low, high = PHYSICAL_FORMATION_ENERGY_EV
        lines.append(
            "- flags: *unstable* the model's perfect cell is no stable minimum (a rattled "
            "copy relaxed into another structure), so no E_f; "
            f"*unphysical* E_f outside ({low:g}, {high:g}) eV, *not converged* "
            "relaxation hit its step cap, *stability unknown* the stability check's "
            "relaxation hit its step cap, *extrapolation* phase absent from the model's "
            "training structures"
        )
    return lines


def write_report(folder: str | os.PathLike, summary: dict[str, Any], title: str) -> Path:
    """``summary.json`` plus a short ``report.md`` (see :func:`report_lines`) linking the PNGs.

    Parameters
    ----------
    folder
        The report folder (created if needed); every ``*.png`` in it is linked.
    summary
        JSON-safe results. Without ``labelling_failures``, those of the run whose
        ``summary.json`` is ``summary["run_summary"]`` (a recipe's) are counted and added.
    title
        The page's heading.

    Returns
    -------
    Path
        The path of ``report.md``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if "labelling_failures" not in summary:
        failures = _run_failures(summary)
        if failures is not None:
            summary["labelling_failures"] = failures
    write_json(folder / "summary.json", summary)
    lines = [f"# {title}", "", *report_lines(summary), ""]
    for png in sorted(folder.glob("*.png")):
        lines.append(f"![{png.stem}]({png.name})")
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return folder / "report.md"

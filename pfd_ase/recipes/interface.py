"""Li metal / Li₆PS₅Cl argyrodite interface end to end (PFD supplement §III.A, Figs. S2-S3,
S13): fine-tune in stages (bcc lithium, then the electrolyte, then the interface), so that
the loop must extend the model to a new chemistry twice; distil; score base, PF and PFD per
subsystem on held-out frames, and dH against the force error on the interface's.

Presets in :mod:`pfd_ase.recipes._interface_presets`: ``quick`` (``--quick``: GFN1-xTB
labels), ``default`` (GPAW LCAO) and ``family`` (``--preset family``: the argyrodites
Li₆PS₅X, X = Cl, Br, I, bulk only). Production: ``--labeler vasp`` with a DPA base model.

Structures: :func:`pfd_ase.materials.lithium_bcc`, :func:`pfd_ase.materials.argyrodite`
(Li ordered: one Li per 48h pair, the lowest Ewald energy of seeded random orderings) and
:func:`pfd_ase.materials.stack_interface` (the metal strained onto the electrolyte, the
mismatch stated in the report), relaxed by the base model before anything is labelled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pfd_ase.recipes._base import (
    DEFAULT_BASE_MODEL,
    preset_of,
    recipe_config,
    recipe_main,
)
from pfd_ase.recipes._interface_presets import PRESETS, STAGE

__all__ = ["PRESETS", "interface_config", "interface_structures", "main", "run_interface"]

#: Bonds a slab cut must not break: P-S of the PS₄ tetrahedra (2.03 Å).
KEPT_BONDS = {("P", "S"): 2.3}


def interface_structures(preset: str = "default", seed: int = 0) -> dict[str, Any]:
    """The preset's cells: ``Li_bcc``, ``Li6PS5X`` per halogen and ``interface`` (unrelaxed;
    :func:`run_interface` relaxes it)."""
    from pfd_ase.materials import argyrodite, lithium_bcc, stack_interface

    system = PRESETS[preset]["system"]
    out: dict[str, Any] = {}
    if system["lithium_repeat"] is not None:
        out["Li_bcc"] = lithium_bcc(system["lithium_repeat"])
    for x in system["halogens"]:
        out[f"Li6PS5{x}"] = argyrodite(x, seed=seed)
    spec = system["interface"]
    if spec is not None:
        out["interface"] = stack_interface(
            out[f"Li6PS5{system['halogens'][0]}"],
            lithium_bcc(spec["lithium_repeat"]),
            gap_A=spec["gap_A"],
            strain=spec["strain"],
            keep_bonds=KEPT_BONDS,
        )
    return out


def relaxed_interface(
    atoms: Any, model: str, head: str | None, settings: dict[str, Any], path: Path
) -> Any:
    """``atoms`` relaxed (positions, fixed cell; FIRE) by ``model``, kept in ``path``.

    The file records a key of what made it (the input structure, the model's content
    identity and head, the relaxation settings); a rerun with the same key reads it back (the
    run's structures stay the same), one with another key moves the old file aside to
    ``<path>.replaced`` (``.replaced.1``, ... when taken) and relaxes anew.
    """
    from ase.io import read, write
    from ase.optimize import FIRE

    from pfd_ase._io import atomic_path
    from pfd_ase.calculators import PFDCalculator
    from pfd_ase.data import frame_fingerprint
    from pfd_ase.models import resolve_model
    from pfd_ase.tasks import REPLACED_SUFFIX, move_aside, task_key

    key = task_key(
        {
            "structure": frame_fingerprint(atoms),
            "model": resolve_model(model, head=head, fetch=True).identity,
            "settings": settings,
        }
    )
    if path.exists():
        try:
            old = read(path)
        except Exception:  # noqa: BLE001 - a file cut short by a kill: relax again
            old = None
        if old is not None and old.info.get("relax_key") == key:
            return old
        move_aside(path, REPLACED_SUFFIX)
    work = atoms.copy()
    work.calc = PFDCalculator(model, head=head)
    FIRE(work, logfile=None).run(fmax=settings["fmax_eV_A"], steps=settings["max_steps"])
    out = atoms.copy()
    out.positions = work.positions
    out.info["relaxed_by"] = str(model)
    out.info["relax_key"] = key
    with atomic_path(path) as part:  # whole or absent, whenever the run is killed
        write(part, out, format="extxyz")
    return read(path)


def interface_config(
    workdir: str | Path = "runs/interface",
    preset: str = "default",
    labeler: str | None = None,
    labeler_overrides: dict[str, Any] | None = None,
    base_model: str = DEFAULT_BASE_MODEL,
    head: str | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    structures: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The workflow configuration (``labeler``: the preset's when None; ``structures``: the
    cells, default :func:`interface_structures`)."""
    p = preset_of(PRESETS, preset)
    structures = structures or interface_structures(preset, seed)
    stages = [{**STAGE, **p["stage"], **stage} for stage in p["stages"]]
    return recipe_config(
        p["workflow"],
        workdir=workdir,
        seed=seed,
        type_map=["Li", "P", "S", *p["system"]["halogens"]],
        structures=structures,
        labeler=labeler or p["labeler"]["name"],
        preset_labelers=p["labeler"]["overrides"],
        labeler_overrides=labeler_overrides,
        base_model=base_model,
        head=head,
        overrides=overrides,
        finetune={"stages": stages},
        distill={"explore": dict(p["explore"])},
    )


def run_interface(
    workdir: str | Path = "runs/interface",
    preset: str = "default",
    base_model: str = DEFAULT_BASE_MODEL,
    head: str | None = None,
    seed: int = 0,
    validation: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the whole recipe (resumable); return the report summary (plain data).

    ``validation``: settings merged into the preset's (:func:`pfd_ase.recipes._base.run_recipe`).

    The interface is relaxed by the base model first (``workdir/structures/interface.extxyz``,
    reused on a rerun with the same structure, model and settings: :func:`relaxed_interface`);
    ``kwargs``: the other arguments of :func:`interface_config`.
    """
    from pfd_ase.recipes._base import check_validation, run_recipe

    p = preset_of(PRESETS, preset)
    check_validation(validation)  # before the base model's relaxation
    structures = interface_structures(preset, seed)
    mismatch = None
    if "interface" in structures:
        built = structures["interface"]
        mismatch = {"mismatch_pct": built.info["mismatch_pct"], **built.info["strain_pct"]}
        path = Path(workdir) / "structures" / "interface.extxyz"
        structures["interface"] = relaxed_interface(
            built, base_model, head, p["system"]["relax"], path
        )
    config = interface_config(
        workdir,
        preset,
        base_model=base_model,
        head=head,
        seed=seed,
        structures=structures,
        **kwargs,
    )
    return run_recipe(
        config,
        f"PFD Li/Li6PS5X recipe ({preset} preset)",
        p["validation"],
        validation,
        phonons=None,
        vacancies=None,
        preset=preset,
        interface_strain=mismatch,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    keys = ("held_out", "dh_vs_error", "interface_strain")
    return recipe_main(
        "python -m pfd_ase.recipes.interface", __doc__, run_interface, keys, argv, labeler=None
    )


if __name__ == "__main__":
    main()

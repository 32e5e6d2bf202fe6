"""LATP, Li1.3Al0.3Ti1.7(PO4)3, end to end (PFD supplement §III.C, Figs. S5-S6): fine-tune,
distil, then Li-ion diffusion: MSD, D(T) and the Arrhenius activation energy.

Presets in :mod:`pfd_ase.recipes._latp_presets`: ``quick`` (``--quick``: GFN1-xTB labels, a
smoke test; its Ea is not a result) and ``default`` (GPAW LCAO labels). Production: VASP
labels and a DPA base, e.g. ``python -m pfd_ase.recipes.latp --labeler vasp --base-model
DPA-3.1-3M.pt --head Omat``.

Structures (:func:`pfd_ase.materials.latp`): Al/Li orderings of the 110-atom hexagonal cell
(x = 1/3). Fine-tuning: NVT MD at 600, 900 and 1200 K, entropy selection, labels. Then the
validation: base, PF and PFD on a held-out test set of the orderings, and the diffusion runs
(:func:`pfd_ase.recipes._base.diffusion_validation`): PF and PFD side by side in the small
cell, the student in the large cell at four temperatures with several runs each.
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
from pfd_ase.recipes._latp_presets import PRESETS, X_AL

__all__ = ["PRESETS", "latp_config", "main", "run_latp"]

#: Elements of LATP, by atomic number.
TYPE_MAP = ["Li", "O", "Al", "P", "Ti"]


def latp_config(
    workdir: str | Path = "runs/latp",
    preset: str = "default",
    labeler: str | None = None,
    labeler_overrides: dict[str, Any] | None = None,
    base_model: str = DEFAULT_BASE_MODEL,
    head: str | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The workflow configuration of the LATP recipe (``labeler``: the preset's when None)."""
    from pfd_ase.materials import latp

    p = preset_of(PRESETS, preset)
    labeler = labeler or p["labeler"]["name"]
    size = p["cells"]["small"]
    structures = {
        f"latp{k}": latp(X_AL, size, seed=seed + k) for k in range(p["cells"]["orderings"])
    }
    names = list(structures)
    stage = {"name": "md", "structures": names, **p["stage"]}
    return recipe_config(
        p["workflow"],
        workdir=workdir,
        seed=seed,
        type_map=TYPE_MAP,
        structures=structures,
        labeler=labeler,
        preset_labelers=p["labeler"]["overrides"],
        labeler_overrides=labeler_overrides,
        base_model=base_model,
        head=head,
        overrides=overrides,
        finetune={"stages": [stage]},
        distill={"explore": dict(p["explore"])},
    )


def run_latp(
    workdir: str | Path = "runs/latp",
    preset: str = "default",
    validation: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the whole LATP recipe (resumable); return the report summary (plain data).

    ``validation``: settings merged into the preset's (:func:`pfd_ase.recipes._base.run_recipe`);
    ``kwargs``: the other arguments of :func:`latp_config`.
    """
    from pfd_ase.materials import latp
    from pfd_ase.recipes._base import run_recipe

    config = latp_config(workdir, preset, **kwargs)
    p = PRESETS[preset]
    large = p["cells"]["large"]
    diffusion = {
        **p["diffusion"],
        "structure": next(iter(config["structures"].values())),
        # its own random ordering over the whole supercell (not one cell's, repeated), with
        # a seed no training ordering used
        "large": None
        if large is None
        else latp(X_AL, large, seed=config["seed"] + p["cells"]["orderings"]),
    }
    title = f"PFD LATP recipe ({preset} preset)"
    if preset == "quick":
        title += ": a smoke test, its Ea is not a result"
    return run_recipe(
        config,
        title,
        p["validation"],
        validation,
        phonons=None,
        vacancies=None,
        diffusion=diffusion,
        preset=preset,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    keys = ("held_out", "diffusion")
    return recipe_main(
        "python -m pfd_ase.recipes.latp", __doc__, run_latp, keys, argv, labeler=None
    )


if __name__ == "__main__":
    main()

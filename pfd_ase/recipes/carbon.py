"""Amorphous carbon end to end (PFD supplement §III.D, Figs. S7-S9): fine-tune on random
carbon cells of 8-84 atoms, distil, then make amorphous carbon with each model and the
labeler (melt-quench) and compare sp³ fractions and g(r).

Presets in :mod:`pfd_ase.recipes._carbon_presets`: ``quick`` (``--quick``: GFN1-xTB labels)
and ``default`` (GPAW LCAO). Production: ``--labeler vasp --base-model DPA-3.1-3M.pt --head
Omat``.

Structures: :func:`pfd_ase.materials.amorphous_carbon` (random packings at a given density
with a minimum distance; the supplement's RG² generator is not on PyPI). Validation: base,
PF and PFD on a held-out set of the cells, then
:func:`pfd_ase.recipes._base.quench_validation`.
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
from pfd_ase.recipes._carbon_presets import PRESETS

__all__ = ["PRESETS", "carbon_config", "carbon_structures", "main", "run_carbon"]


def carbon_structures(preset: str = "default", seed: int = 0) -> dict[str, Any]:
    """The training cells ``aC<n>_<k>``: ``per_size`` random packings of each size."""
    from pfd_ase.materials import amorphous_carbon

    cells = PRESETS[preset]["cells"]
    out = {}
    for n in cells["sizes"]:
        for k in range(int(cells["per_size"])):
            out[f"aC{n}_{k}"] = amorphous_carbon(
                n, cells["density_g_cm3"], cells["min_distance_A"], seed=seed + 1000 * k + n
            )
    return out


def carbon_config(
    workdir: str | Path = "runs/carbon",
    preset: str = "default",
    labeler: str | None = None,
    labeler_overrides: dict[str, Any] | None = None,
    base_model: str = DEFAULT_BASE_MODEL,
    head: str | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The workflow configuration of the carbon recipe (``labeler``: the preset's when None)."""
    p = preset_of(PRESETS, preset)
    labeler = labeler or p["labeler"]["name"]
    structures = carbon_structures(preset, seed)
    return recipe_config(
        p["workflow"],
        workdir=workdir,
        seed=seed,
        type_map=["C"],
        structures=structures,
        labeler=labeler,
        preset_labelers=p["labeler"]["overrides"],
        labeler_overrides=labeler_overrides,
        base_model=base_model,
        head=head,
        overrides=overrides,
        finetune={"stages": [{"name": "md", "structures": list(structures), **p["stage"]}]},
        distill={"explore": dict(p["explore"])},
    )


def run_carbon(
    workdir: str | Path = "runs/carbon",
    preset: str = "default",
    quench: dict[str, Any] | None = None,
    validation: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the whole carbon recipe (resumable); return the report summary (plain data).

    ``quench``: settings of the melt-quench merged into the preset's; ``validation``: the
    same for the validation (:func:`pfd_ase.recipes._base.run_recipe`); ``kwargs``: the
    other arguments of :func:`carbon_config`.
    """
    from pfd_ase.materials import amorphous_carbon
    from pfd_ase.recipes._base import run_recipe

    config = carbon_config(workdir, preset, **kwargs)
    p = PRESETS[preset]
    q = {**p["quench"], **(quench or {})}
    cells = p["cells"]
    # start cells drawn with seeds no training cell uses
    starts = [
        amorphous_carbon(
            q["n_atoms"], cells["density_g_cm3"], cells["min_distance_A"], seed=10**6 + k
        )
        for k in range(int(q.pop("starts")))
    ]
    q.pop("n_atoms")
    return run_recipe(
        config,
        f"PFD amorphous carbon recipe ({preset} preset)",
        p["validation"],
        validation,
        phonons=None,
        vacancies=None,
        quench_study={"starts": starts, "settings": {**q, "seed": config["seed"]}},
        preset=preset,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    keys = ("held_out", "quench", "rdf_rms_vs_dft")
    return recipe_main(
        "python -m pfd_ase.recipes.carbon", __doc__, run_carbon, keys, argv, labeler=None
    )


if __name__ == "__main__":
    main()

"""BaTiO₃ and a doped perovskite end to end (PFD supplement §III.F, Figs. S10-S12):
fine-tune, distil, then per phase the energy ordering, oxygen vacancies and phonons.

Presets in :mod:`pfd_ase.recipes._perovskite_presets`: ``quick`` (``--quick``: GPAW plane
waves on the 5- and 10-atom phase cells) and ``default`` (the doped 40-atom cells in the
fine-tuning as well). Production: VASP labels and a DPA base, e.g. ``python -m
pfd_ase.recipes.perovskite --labeler vasp --base-model DPA-3.1-3M.pt --head Omat``.

Structures (:mod:`pfd_ase.materials`): the cubic, tetragonal, orthorhombic and rhombohedral
phases from their experimental Wyckoff positions (:func:`~pfd_ase.materials.batio3`), the
doped Ba₀.₅Na₀.₂₅Bi₀.₂₅Ti₀.₈₇₅Zr₀.₁₂₅O₃ by seeded random substitution in the 40-atom cell
(:func:`~pfd_ase.materials.doped_perovskite`) and the cubic cell with an O vacancy.
Validation (:func:`pfd_ase.recipes._base.phase_validation`): base, PF and PFD on the
held-out test set; every phase relaxed under its symmetry by each model and by the labeler,
the phase ordering; the O-vacancy formation energy on each distinct O site of each phase
(μ_O = ½ E(O₂), triplet O₂ for DFT); phonons of each phase, the labeler's in the cubic
phase (its soft modes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pfd_ase.recipes._base import (
    DEFAULT_BASE_MODEL,
    deep_update,
    preset_of,
    recipe_config,
    recipe_main,
)
from pfd_ase.recipes._perovskite_presets import PHASES, PRESETS

__all__ = [
    "PRESETS",
    "TYPE_MAP",
    "main",
    "perovskite_config",
    "perovskite_structures",
    "run_perovskite",
]

#: Elements of the recipe, by atomic number.
TYPE_MAP = ["O", "Na", "Ti", "Zr", "Ba", "Bi"]


def perovskite_structures(preset: str = "default", seed: int = 0) -> dict[str, Any]:
    """The recipe's structures: the four phases, ``doped<k>`` (seeds ``seed + k``) and
    ``cubic_vO`` (the 2×2×2 cubic cell less one O)."""
    from pfd_ase.materials import batio3, doped_perovskite, supercell

    cells = PRESETS[preset]["cells"]
    structures: dict[str, Any] = {p: batio3(p) for p in PHASES}
    for k in range(int(cells["doped"])):
        structures[f"doped{k}"] = doped_perovskite(seed + k)
    vacancy = supercell(batio3("cubic"), 2)
    del vacancy[[a.index for a in vacancy if a.symbol == "O"][0]]
    structures["cubic_vO"] = vacancy
    return structures


def perovskite_config(
    workdir: str | Path = "runs/perovskite",
    preset: str = "default",
    labeler: str | None = None,
    labeler_overrides: dict[str, Any] | None = None,
    base_model: str = DEFAULT_BASE_MODEL,
    head: str | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The workflow configuration of the perovskite recipe (``labeler``: the preset's when
    None)."""
    p = preset_of(PRESETS, preset)
    labeler = labeler or p["labeler"]["name"]
    structures = perovskite_structures(preset, seed)
    doped = [n for n in structures if n.startswith("doped")]
    labelled = list(PHASES) + (doped if p["cells"]["doped_in_finetune"] else [])
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
        init={"structures": labelled},
        finetune={"stages": [{"name": "md", "structures": labelled, **p["stage"]}]},
        # the student: every structure, the vacancy cell included, in 40+-atom cells
        distill={"explore": {**p["explore"], "structures": None}},
    )


def run_perovskite(
    workdir: str | Path = "runs/perovskite",
    preset: str = "default",
    validation: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the whole perovskite recipe (resumable); return the report summary (plain data).

    ``validation``: settings merged into the preset's (:func:`pfd_ase.recipes._base.run_recipe`);
    ``kwargs``: the other arguments of :func:`perovskite_config`.
    """
    from pfd_ase.materials import batio3
    from pfd_ase.recipes._base import run_recipe

    config = perovskite_config(workdir, preset, **kwargs)
    p = PRESETS[preset]
    held_out = {"test_set": {"structures": config["init"]["structures"]}}
    return run_recipe(
        config,
        f"PFD perovskite recipe ({preset} preset)",
        deep_update(p["validation"], held_out),
        validation,
        phonons=None,
        vacancies=None,
        phase_study={
            "structures": {name: batio3(name) for name in PHASES},
            "settings": p["phases"],
        },
        preset=preset,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    keys = ("held_out", "phase_ordering", "soft_modes")
    return recipe_main(
        "python -m pfd_ase.recipes.perovskite", __doc__, run_perovskite, keys, argv, labeler=None
    )


if __name__ == "__main__":
    main()

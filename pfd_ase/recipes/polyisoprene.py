"""1,4-polyisoprene chains end to end (PFD supplement §III.G, Figs. S13-S14): molecules in
vacuum, no periodicity. Fine-tune on cis and trans oligomers, distil, then score base, PF and
PFD on held-out frames of every chain, including longer chains and a cluster of chains that
no model was trained on.

Presets in :mod:`pfd_ase.recipes._polyisoprene_presets`: ``quick`` (``--quick``: GFN1-xTB,
whose dispersion is built in) and ``default`` (GPAW LCAO PBE + D3(BJ) in a vacuum box).
Production: ``--labeler vasp`` (PBE, ``IVDW = 12``) with a DPA base model.

The supplement's text says "carbon and oxygen", its formulas are of C and H; polyisoprene is
(C₅H₈)ₙ: the recipe uses C and H. Structures: :func:`pfd_ase.materials.polyisoprene`
(RDKit conformers, MMFF-relaxed) and :func:`pfd_ase.materials.polymer_cluster`.
Exploration is NVT MD without a cell; the student is a deepmd-kit model trained on
non-periodic systems.
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
from pfd_ase.recipes._polyisoprene_presets import PRESETS

__all__ = ["PRESETS", "main", "polyisoprene_config", "polyisoprene_structures", "run_polyisoprene"]


def polyisoprene_structures(preset: str = "default", seed: int = 0) -> dict[str, Any]:
    """The chains and clusters of a preset (name → ``Atoms``, ``pbc=False``)."""
    from pfd_ase.materials import polyisoprene, polymer_cluster

    molecules = PRESETS[preset]["molecules"]
    out = {
        name: polyisoprene(units, isomer, seed=seed + k)
        for k, (name, (isomer, units)) in enumerate(molecules["chains"].items())
    }
    for k, (name, (isomer, units, n)) in enumerate(molecules["clusters"].items()):
        chains = [polyisoprene(units, isomer, seed=seed + 100 * (k + 1) + j) for j in range(n)]
        out[name] = polymer_cluster(chains, molecules["min_gap_A"], seed=seed + k)
    return out


def polyisoprene_config(
    workdir: str | Path = "runs/polyisoprene",
    preset: str = "default",
    labeler: str | None = None,
    labeler_overrides: dict[str, Any] | None = None,
    base_model: str = DEFAULT_BASE_MODEL,
    head: str | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The workflow configuration (``labeler``: the preset's when None). Training and
    exploration see the preset's ``molecules["train"]``; the rest are held out."""
    p = preset_of(PRESETS, preset)
    structures = polyisoprene_structures(preset, seed)
    train = list(p["molecules"]["train"])
    return recipe_config(
        p["workflow"],
        workdir=workdir,
        seed=seed,
        type_map=["C", "H"],
        structures=structures,
        labeler=labeler or p["labeler"]["name"],
        preset_labelers=p["labeler"]["overrides"],
        labeler_overrides=labeler_overrides,
        base_model=base_model,
        head=head,
        overrides=overrides,
        init={**p["workflow"]["init"], "structures": train},
        finetune={"stages": [{"name": "md", "structures": train, **p["stage"]}]},
        distill={"explore": {**p["explore"], "structures": train}},
    )


def run_polyisoprene(
    workdir: str | Path = "runs/polyisoprene",
    preset: str = "default",
    validation: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the whole recipe (resumable); return the report summary (plain data).

    ``validation``: settings merged into the preset's (:func:`pfd_ase.recipes._base.run_recipe`);
    ``kwargs``: the other arguments of :func:`polyisoprene_config`. The held-out set covers
    every molecule (``per_phase`` of each model's scores: one row per chain or cluster).
    """
    from pfd_ase.recipes._base import run_recipe

    config = polyisoprene_config(workdir, preset, **kwargs)
    return run_recipe(
        config,
        f"PFD 1,4-polyisoprene recipe ({preset} preset)",
        PRESETS[preset]["validation"],
        validation,
        phonons=None,
        vacancies=None,
        preset=preset,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return recipe_main(
        "python -m pfd_ase.recipes.polyisoprene",
        __doc__,
        run_polyisoprene,
        ("held_out",),
        argv,
        labeler=None,
    )


if __name__ == "__main__":
    main()

"""The shipped example configurations (examples/*.yaml) are valid, and silicon_quick.yaml is
the silicon recipe's quick configuration."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from pfd_ase.workflow import config as config_module
from pfd_ase.workflow import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
YAMLS = sorted(EXAMPLES.glob("*.yaml"))

#: examples whose external set-up (a model file, VASP and its POTCARs) is not on a test machine
NEEDS_EXTERNAL_SETUP = {"vasp_dpa.yaml"}


def load(path: Path, check_setup: bool = True) -> dict:
    """``load_config``, with the checks of external set-up (base model file, labeler program
    and data) turned off when ``check_setup`` is False."""
    if check_setup:
        return load_config(path)
    if "check_setup" in inspect.signature(load_config).parameters:
        return load_config(path, check_setup=False)
    validate = config_module.validate
    with pytest.MonkeyPatch.context() as mp:  # load_config has no such switch (yet)
        mp.setattr(
            config_module, "validate", lambda cfg: validate(cfg, check_setup=False), raising=True
        )
        return load_config(path)


def test_examples_are_shipped():
    names = {p.name for p in YAMLS}
    assert {"silicon_quick.yaml", "silicon_sw_fast.yaml", "vasp_dpa.yaml", "dask.yaml"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_example_is_valid(path):
    text = path.read_text()
    assert text.lstrip().startswith("#"), f"{path.name} starts without a comment"
    config = load(path, check_setup=path.name not in NEEDS_EXTERNAL_SETUP)
    for name, spec in config["structures"].items():
        if "file" in spec:
            assert Path(spec["file"]).is_file(), (path.name, name)


def test_vasp_dpa_example_needs_only_its_external_setup(monkeypatch):
    """Without the checkpoint (and VASP) the production example fails on exactly that."""
    from pfd_ase.workflow import ConfigError

    config = load(EXAMPLES / "vasp_dpa.yaml", check_setup=False)
    assert config["labeler"]["name"] == "vasp" and config["base_model"]["head"]
    assert config["executor"]["kind"] == "slurm"
    monkeypatch.chdir(EXAMPLES)
    with pytest.raises(ConfigError, match=r"base_model.*DPA-3\.1-3M\.pt"):
        load_config(EXAMPLES / "vasp_dpa.yaml")


def test_silicon_quick_is_the_recipe_config(tmp_path):
    """examples/silicon_quick.yaml = ``silicon_config(preset="quick")`` of the recipe: the same
    settings and the same structures (atom for atom)."""
    from pfd_ase.recipes.silicon import silicon_config
    from pfd_ase.structures import build_structure

    example = load(EXAMPLES / "silicon_quick.yaml")
    default = inspect.signature(silicon_config).parameters["workdir"].default
    assert example["workdir"] == str(default)
    # the recipe writes its structures into the run directory, here a temporary one
    recipe = load_config(silicon_config(tmp_path, preset="quick"))
    recipe["workdir"] = example["workdir"]
    # structures: as files (the recipe) or bulk specs (the example); compare what they build
    assert list(example["structures"]) == list(recipe["structures"])
    for name in recipe["structures"]:
        ours = build_structure(example["structures"][name])
        theirs = build_structure(recipe["structures"][name])
        assert ours.get_chemical_symbols() == theirs.get_chemical_symbols(), name
        assert np.allclose(ours.cell.array, theirs.cell.array, atol=1e-9), name
        assert np.allclose(ours.positions, theirs.positions, atol=1e-9), name
        assert ours.pbc.all() and theirs.pbc.all(), name
    for key in recipe:
        if key != "structures":
            assert example[key] == recipe[key], key


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_slurm_parameters_are_known_to_submitit(path, tmp_path):
    """submitit refuses unknown parameters (``partition`` instead of ``slurm_partition``)
    only when the run starts: check the examples' now."""
    executor = load(path, check_setup=False)["executor"]
    if executor["kind"] != "slurm" or not executor.get("slurm"):
        pytest.skip("no Slurm parameters in this example")
    pytest.importorskip("submitit")
    from pfd_ase.parallel import SubmititExecutor

    SubmititExecutor(str(tmp_path / "logs"), **executor["slurm"])

"""Labelers: VASP input/output through the real ``Vasp`` calculator, GPAW, classical
potentials and CHGNet checked against finite differences and published values."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import ase
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.units import GPa

from pfd_ase.calculators.labelers import (
    GPAW_DEFAULTS,
    KNOWN_LABELERS,
    VASP_DEFAULTS,
    LabelerSetupError,
    check_vasp_setup,
    jsonable,
    labeler_info,
    make_labeler,
)
from pfd_ase.label import label_frames

VASP_DATA = Path(ase.__file__).parent / "test" / "testdata" / "vasp"
VASP_ENV = ("ASE_VASP_COMMAND", "VASP_COMMAND", "VASP_SCRIPT", "VASP_PP_PATH")

needs_vasp_data = pytest.mark.skipif(
    not (VASP_DATA / "OUTCAR_example_1").exists(), reason="ase wheel without its VASP test data"
)
needs_matscipy = pytest.mark.skipif(
    importlib.util.find_spec("matscipy") is None, reason="matscipy missing"
)
needs_gpaw = pytest.mark.skipif(importlib.util.find_spec("gpaw") is None, reason="gpaw missing")
needs_chgnet = pytest.mark.skipif(
    importlib.util.find_spec("chgnet") is None, reason="chgnet missing"
)
needs_tblite = pytest.mark.skipif(
    importlib.util.find_spec("tblite") is None, reason="tblite missing"
)


@pytest.fixture
def vasp_env(tmp_path, monkeypatch):
    """A POTCAR folder of one-line files (plus the LEXCH line ASE re-reads) for Si and C."""
    for env in VASP_ENV:
        monkeypatch.delenv(env, raising=False)
    pp = tmp_path / "pp"
    for symbol in ("Si", "C"):
        potcar = pp / "potpaw_PBE" / symbol / "POTCAR"
        potcar.parent.mkdir(parents=True)
        potcar.write_text(f" PAW_PBE {symbol} test\n   LEXCH  = PE\n")
    monkeypatch.setenv("VASP_PP_PATH", str(pp))
    return pp


def _incar(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


# --------------------------------------------------------------------------- VASP


def test_vasp_writes_supplement_incar_and_no_kpoints(tmp_path, vasp_env, monkeypatch):
    monkeypatch.setenv("ASE_VASP_COMMAND", "vasp_std")
    directory = tmp_path / "run" / "task.000000"
    calc = make_labeler("vasp", directory=directory, lwave=False)
    atoms = bulk("Si", "diamond", a=5.43)
    calc.write_input(atoms)

    incar = _incar(directory / "INCAR")
    assert float(incar.pop("ENCUT")) == 500
    assert incar.pop("GGA") == "PE"
    assert float(incar.pop("KSPACING")) == 0.2
    assert incar.pop("KGAMMA") == ".FALSE."
    assert float(incar.pop("EDIFF")) == 1e-5
    assert int(incar.pop("ISMEAR")) == 0
    assert float(incar.pop("SIGMA")) == 0.05
    assert incar.pop("LWAVE") == ".FALSE."
    assert incar.pop("LCHARG") == ".FALSE."
    assert incar == {}
    assert not (directory / "KPOINTS").exists()
    assert (directory / "POTCAR").read_text() == (vasp_env / "potpaw_PBE/Si/POTCAR").read_text()
    assert (directory / "POSCAR").exists()

    # the written input reads back into a fresh Vasp object
    from ase.calculators.vasp import Vasp

    again = Vasp(directory=str(directory))
    again.read_incar(directory / "INCAR")
    assert again.float_params["encut"] == 500
    assert again.exp_params["ediff"] == 1e-5
    again.read_potcar(directory / "POTCAR")  # needs the LEXCH line
    assert again.input_params["pp"] == "PBE"
    assert labeler_info(calc)["name"] == "vasp"
    assert labeler_info(calc)["settings"]["encut"] == 500


def test_vasp_overrides_replace_defaults(tmp_path, vasp_env):
    calc = make_labeler("vasp", directory=tmp_path, command="true", encut=650, kspacing=0.3)
    calc.write_input(bulk("Si"))
    incar = _incar(tmp_path / "INCAR")
    assert float(incar["ENCUT"]) == 650 and float(incar["KSPACING"]) == 0.3
    assert float(incar["SIGMA"]) == VASP_DEFAULTS["sigma"]
    assert VASP_DEFAULTS["encut"] == 500  # the module defaults are not mutated


def test_vasp_setup_errors(tmp_path, vasp_env, monkeypatch):
    with pytest.raises(LabelerSetupError, match="ASE_VASP_COMMAND"):
        make_labeler("vasp", directory=tmp_path)
    monkeypatch.setenv("VASP_COMMAND", "vasp_std")
    assert check_vasp_setup(["Si", "C", "Si"]) == {
        "C": str(vasp_env / "potpaw_PBE/C/POTCAR"),
        "Si": str(vasp_env / "potpaw_PBE/Si/POTCAR"),
    }
    with pytest.raises(LabelerSetupError, match=r"no POTCAR for Li, O"):
        check_vasp_setup(["Si", "O", "Li"])
    monkeypatch.delenv("VASP_PP_PATH")
    with pytest.raises(LabelerSetupError, match="VASP_PP_PATH"):
        make_labeler("vasp", directory=tmp_path)


def test_labelling_without_vasp_command_fails_before_any_work(tmp_path, vasp_env):
    workdir = tmp_path / "label"
    with pytest.raises(LabelerSetupError, match="VASP_SCRIPT"):
        label_frames([bulk("Si"), bulk("Si", cubic=True)], "vasp", workdir)
    assert not workdir.exists()


def test_vasp_object_without_command_fails_before_any_work(tmp_path, vasp_env):
    from ase.calculators.vasp import Vasp

    workdir = tmp_path / "label"
    with pytest.raises(LabelerSetupError, match="no VASP command"):
        label_frames([bulk("Si")], Vasp(**VASP_DEFAULTS), workdir)
    assert not workdir.exists()


def test_labelling_with_missing_potcar_fails_before_any_work(tmp_path, vasp_env):
    workdir = tmp_path / "label"
    frames = [bulk("Si"), bulk("NaCl", "rocksalt", a=5.6)]
    with pytest.raises(LabelerSetupError, match="Cl, Na"):
        label_frames(frames, ("vasp", {"command": "vasp_std"}), workdir)
    assert not workdir.exists()


@needs_vasp_data
def test_vasp_outcar_parsing_matches_the_file():
    """ASE's OUTCAR reader against numbers read from the real OUTCAR text."""
    from ase.io import read

    outcar = VASP_DATA / "OUTCAR_example_1"
    text = outcar.read_text()
    toten = float(re.findall(r"free  energy   TOTEN  =\s+(\S+) eV", text)[-1])
    sigma0 = float(re.findall(r"energy\(sigma->0\) =\s+(\S+)", text)[-1])
    kb = np.array(re.findall(r"in kB((?:\s+\S+){6})", text)[-1].split(), dtype=float)
    block = text.split("TOTAL-FORCE (eV/Angst)")[-1].split("total drift")[0]
    rows = [line.split() for line in block.splitlines()]
    forces = np.array([r[3:6] for r in rows if len(r) == 6], dtype=float)

    atoms = read(outcar, format="vasp-out")
    assert len(atoms) == len(forces) == 18
    assert atoms.get_potential_energy(force_consistent=True) == toten  # -68.22868532
    assert atoms.get_potential_energy() == sigma0  # -68.23102426
    np.testing.assert_array_equal(atoms.get_forces(), forces)
    # OUTCAR: XX YY ZZ XY YZ ZX in kB, compressive positive; ASE: Voigt, eV/Å³, tensile positive
    xx, yy, zz, xy, yz, zx = kb
    expected = -0.1 * GPa * np.array([xx, yy, zz, yz, zx, xy])
    np.testing.assert_allclose(atoms.get_stress(), expected, rtol=1e-12, atol=0)


@needs_vasp_data
def test_vasp_labelling_pipeline_on_real_outputs(tmp_path, vasp_env, monkeypatch):
    """label_frames with the real Vasp calculator; the 'VASP run' copies real outputs."""
    xml = VASP_DATA / "vasprun_pstress.xml"
    monkeypatch.setenv(
        "ASE_VASP_COMMAND", f"cp {xml} vasprun.xml && cp {VASP_DATA / 'OUTCAR_example_1'} OUTCAR"
    )
    # the structure of that vasprun.xml: diamond C, 2 atoms
    frame = Atoms(
        "C2",
        cell=[[0, 1.785, 1.785], [1.785, 0, 1.785], [1.785, 1.785, 0]],
        scaled_positions=[[0, 0, 0], [0.25, 0.25, 0.25]],
        pbc=True,
    )
    frame.info["pfd_frame_id"] = "c-diamond"
    result = label_frames([frame], "vasp", tmp_path / "label")
    assert result.failures == [] and len(result.frames) == 1
    task = tmp_path / "label" / "task.000000"
    assert float(_incar(task / "INCAR")["ENCUT"]) == 500
    assert not (task / "KPOINTS").exists()

    root = ET.parse(xml).getroot()
    last = root.findall("calculation")[-1].findall("scstep")[-1]
    energies = {i.get("name"): float(i.text) for i in last.find("energy")}
    stress_kb = np.array(
        [v.text.split() for v in root.findall("calculation")[-1].find("varray[@name='stress']")],
        dtype=float,
    )
    labelled = result.frames[0]
    # labels use the force-consistent energy; the sigma->0 energy is kept aside
    assert labelled.get_potential_energy() == pytest.approx(energies["e_fr_energy"], abs=1e-7)
    assert labelled.info["pfd_energy_sigma0"] == pytest.approx(energies["e_0_energy"], abs=1e-7)
    assert labelled.calc.results["free_energy"] == labelled.get_potential_energy()
    np.testing.assert_allclose(labelled.get_forces(), 0.0, atol=1e-12)
    voigt = stress_kb.ravel()[[0, 4, 8, 5, 2, 1]]
    np.testing.assert_allclose(labelled.get_stress(), -0.1 * GPa * voigt, rtol=1e-9)
    assert labelled.info["pfd_labeler"] == "vasp"
    assert labelled.info["pfd_frame_id"] == "c-diamond"
    assert json.loads(labelled.info["pfd_labeler_settings"])["kspacing"] == 0.2

    # a rerun needs no VASP at all: the finished result is reused
    monkeypatch.delenv("ASE_VASP_COMMAND")
    again = label_frames([frame], "vasp", tmp_path / "label")
    assert again.n_cached == 1
    assert again.frames[0].get_potential_energy() == labelled.get_potential_energy()


# --------------------------------------------------------------------------- factory


def test_unknown_name_lists_known_labelers():
    with pytest.raises(ValueError, match="vasp, gpaw, gpaw-lcao, xtb, emt, tersoff, sw, chgnet"):
        make_labeler("dftb")
    known = {"vasp", "gpaw", "gpaw-lcao", "xtb", "emt", "tersoff", "sw", "chgnet"}
    assert set(KNOWN_LABELERS) == known


def test_calculator_objects_pass_through():
    calc = EMT()
    assert make_labeler(calc) is calc
    with pytest.raises(TypeError):
        make_labeler(calc, asap_cutoff=True)
    version = f"ase {ase.__version__}"
    assert labeler_info(calc) == {
        "name": "emt",
        "settings": {"asap_cutoff": False, "version": version},
    }
    json.dumps(labeler_info(make_labeler("emt")))


# --------------------------------------------------------------------------- provenance


def test_recorded_settings_are_the_calculators_parameters(tmp_path):
    """The ASE way: the record is ``calc.name`` and ``calc.parameters`` (plus the code's
    version); no private attribute, and parameters hold nothing but settings."""
    calc = make_labeler("emt", asap_cutoff=True)
    assert dict(calc.parameters) == {"asap_cutoff": True}
    assert not hasattr(calc, "pfd_labeler")
    info = labeler_info(calc)
    assert info == {
        "name": "emt",
        "settings": {"asap_cutoff": True, "version": f"ase {ase.__version__}"},
    }
    calc.parameters["asap_cutoff"] = False  # the record follows the parameters
    assert labeler_info(calc)["settings"]["asap_cutoff"] is False

    # what a labelled frame records is that same record
    (frame,) = label_frames([bulk("Cu", "fcc", a=3.6)], calc, tmp_path).frames
    assert frame.info["pfd_labeler"] == "emt"
    assert json.loads(frame.info["pfd_labeler_settings"]) == labeler_info(calc)["settings"]


def test_a_parameter_wins_over_a_derived_entry():
    calc = EMT()
    calc.parameters["version"] = "mine"
    assert labeler_info(calc)["settings"]["version"] == "mine"


@needs_matscipy
@pytest.mark.parametrize("name", ["sw", "tersoff"])
def test_manybody_labelers_record_their_name_and_parameter_table(name):
    calc = make_labeler(name)
    assert calc.name == name  # matscipy's class calls itself "Manybody"
    assert set(calc.parameters) == {"parameters"}
    info = labeler_info(calc)
    assert info["name"] == name
    assert info["settings"]["parameters"] == jsonable(calc.parameters["parameters"])
    assert info["settings"]["version"].startswith("matscipy ")
    # the recorded table rebuilds the same potential
    again = make_labeler(name, parameters=calc.parameters["parameters"])
    atoms = _rattled(bulk("Si", "diamond", a=5.43, cubic=True), seed=1)
    assert again.get_potential_energy(atoms) == calc.get_potential_energy(atoms)


def test_vasp_parameters_hold_only_vasp_settings(vasp_env):
    """Vasp writes every key of its parameters to the INCAR: nothing else may be there."""
    from ase.calculators.vasp import Vasp

    calc = make_labeler("vasp", command="true")
    assert dict(calc.parameters).keys() - {"pp", "gga"} == VASP_DEFAULTS.keys()
    assert labeler_info(calc)["settings"] == {
        **json.loads(json.dumps(dict(calc.parameters))),
        "version": f"ase {ase.__version__}",
    }
    assert isinstance(calc, Vasp)


@pytest.mark.parametrize(("name", "module", "extra"), [("gpaw", "gpaw", "gpaw"),
                                                       ("gpaw-lcao", "gpaw", "gpaw"),
                                                       ("xtb", "tblite", "xtb"),
                                                       ("chgnet", "chgnet", "chgnet")])  # fmt: skip
def test_missing_package_says_what_to_install(monkeypatch, name, module, extra):
    # import fails as if not installed, submodules an earlier test imported included
    for key in [k for k in sys.modules if k == module or k.startswith(f"{module}.")]:
        monkeypatch.setitem(sys.modules, key, None)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(LabelerSetupError, match=rf"pip install pfd_ase\[{extra}\]"):
        make_labeler(name)


# --------------------------------------------------------------------------- classical


def _rattled(atoms: Atoms, seed: int) -> Atoms:
    rng = np.random.default_rng(seed)
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + rng.normal(0, 0.01, (3, 3))), scale_atoms=True)
    atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
    return atoms


@pytest.mark.parametrize(
    ("name", "atoms"),
    [
        ("emt", bulk("Cu", "fcc", a=3.6, cubic=True)),
        pytest.param("sw", bulk("Si", "diamond", a=5.431, cubic=True), marks=needs_matscipy),
        pytest.param("tersoff", bulk("Si", "diamond", a=5.432, cubic=True), marks=needs_matscipy),
    ],
)
def test_classical_forces_and_stress_equal_finite_differences(name, atoms):
    atoms = _rattled(atoms.copy(), seed=7)
    atoms.calc = make_labeler(name)
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.abs(forces).max() > 0.1 and np.abs(stress).max() > 1e-3  # not trivially zero
    np.testing.assert_allclose(calculate_numerical_forces(atoms, 1e-5), forces, atol=1e-6)
    np.testing.assert_allclose(calculate_numerical_stress(atoms, 1e-5), stress, atol=1e-6)


@needs_matscipy
def test_sw_diamond_cohesive_energy_is_minus_two_epsilon():
    """Stillinger & Weber (1985): diamond Si at a = 5.431 Å has E = -2ε = -4.3366 eV/atom."""
    calc = make_labeler("sw")
    epsilon = labeler_info(calc)["settings"]["parameters"]["epsilon"]
    atoms = bulk("Si", "diamond", a=5.431)
    atoms.calc = calc
    assert atoms.get_potential_energy() / len(atoms) == pytest.approx(-4.3366, abs=1e-4)
    assert atoms.get_potential_energy() / len(atoms) == pytest.approx(-2 * epsilon, abs=1e-4)


@needs_matscipy
def test_tersoff_si_equilibrium():
    """Tersoff (PRB 39, 5566): Si diamond, a = 5.432 Å, cohesive energy 4.63 eV/atom."""
    atoms = bulk("Si", "diamond", a=5.432)
    atoms.calc = make_labeler("tersoff")
    assert atoms.get_potential_energy() / len(atoms) == pytest.approx(-4.63, abs=5e-3)
    np.testing.assert_allclose(atoms.get_stress(), 0.0, atol=1e-4)  # 1e-4 eV/Å³ = 16 MPa


def test_emt_cu_reference_state():
    """EMT's Cu: the isolated atom lies -E0 of the parameter table above the fcc crystal."""
    from ase.calculators.emt import parameters

    atom = Atoms("Cu", cell=[20.0] * 3, pbc=False)
    atom.calc = make_labeler("emt")
    assert atom.get_potential_energy() == pytest.approx(-parameters["Cu"][0], abs=1e-9)
    crystal = bulk("Cu", "fcc", a=3.59)
    crystal.calc = make_labeler("emt")
    assert abs(crystal.get_potential_energy()) < 0.01  # the fcc crystal is EMT's zero


# --------------------------------------------------------------------------- GPAW


@needs_gpaw
def test_gpaw_si_single_point_forces_equal_finite_differences(tmp_path):
    overrides = {"mode": {"name": "pw", "ecut": 250.0}, "kpts": {"size": (2, 2, 2), "gamma": False}}
    frame = bulk("Si", "diamond", a=5.43)
    frame.positions[0] += [0.05, -0.03, 0.02]
    result = label_frames([frame], ("gpaw", overrides), tmp_path / "label")
    assert result.failures == []
    labelled = result.frames[0]
    task = tmp_path / "label" / "task.000000"
    assert "PBE" in (task / GPAW_DEFAULTS["txt"]).read_text()  # the log is in the task dir
    assert labelled.info["pfd_labeler"] == "gpaw"
    settings = json.loads(labelled.info["pfd_labeler_settings"])
    assert settings["mode"] == {"name": "pw", "ecut": 250.0}
    assert settings["xc"] in ("PBE", {"name": "PBE"})  # GPAW >= 24 records {"name": ...}
    assert settings["version"].startswith("gpaw ")

    atoms = frame.copy()
    atoms.calc = make_labeler("gpaw", directory=tmp_path / "fd", **overrides)
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(
        labelled.get_potential_energy(), abs=1e-6
    )
    numerical = calculate_numerical_forces(atoms, 1e-3, force_consistent=True)
    assert np.abs(labelled.get_forces()).max() > 0.3
    np.testing.assert_allclose(labelled.get_forces(), numerical, atol=2e-4)


@needs_gpaw
def test_gpaw_lcao_labels_energy_and_forces_without_stress(tmp_path, monkeypatch):
    """LCAO (dzp, Γ point): forces equal finite differences; no stress (GPAW has none in
    LCAO mode, so the labeler does not offer it and frames carry none). Labelled in memory
    (no task folder), GPAW leaves no log in the current directory."""
    from pfd_ase.label import label_in_memory

    monkeypatch.chdir(tmp_path)
    calc = make_labeler("gpaw-lcao")
    assert "stress" not in calc.implemented_properties
    frame = bulk("Si", "diamond", a=5.43)  # the 2-atom cell: 8 atoms took 77 s in CI
    frame.positions[0] += [0.08, -0.05, 0.03]
    labelled = label_in_memory([frame], "gpaw-lcao")[0]
    assert labelled.info["pfd_labeler"] == "gpaw"
    settings = json.loads(labelled.info["pfd_labeler_settings"])
    assert settings["mode"] in ("lcao", {"name": "lcao"})  # GPAW >= 25 records dicts
    assert settings["basis"] in ("dzp", {"default": "dzp"})
    assert "stress" not in labelled.calc.results
    atoms = frame.copy()
    atoms.calc = calc
    # the displaced atom only: 6 LCAO single points instead of 12 (about 3 s each here)
    numerical = calculate_numerical_forces(atoms, 1e-3, iatoms=[0], force_consistent=True)
    assert np.abs(labelled.get_forces()[0]).max() > 0.3
    np.testing.assert_allclose(labelled.get_forces()[[0]], numerical, atol=5e-3)
    assert list(tmp_path.iterdir()) == []  # no gpaw.txt
    with pytest.raises(ValueError, match="LCAO mode"):
        make_labeler("gpaw-lcao", mode={"name": "pw", "ecut": 300})


@needs_tblite
def test_xtb_forces_and_stress_equal_finite_differences():
    """GFN1-xTB by default (GFN2 on request); analytic forces and stress of a periodic cell
    against finite differences; recorded as ``xtb`` with tblite's version."""
    calc = make_labeler("xtb")
    assert calc.parameters["method"] == "GFN1-xTB"
    info = labeler_info(calc)
    assert info["name"] == "xtb" and info["settings"]["version"].startswith("tblite ")
    atoms = _rattled(bulk("Si", "diamond", a=5.43, cubic=True), seed=3)
    atoms.calc = calc
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.abs(forces).max() > 0.1
    np.testing.assert_allclose(calculate_numerical_forces(atoms, 1e-4), forces, atol=2e-3)
    np.testing.assert_allclose(
        calculate_numerical_stress(atoms, 1e-4, force_consistent=False), stress, atol=2e-4
    )
    assert make_labeler("xtb", method="GFN2-xTB").parameters["method"] == "GFN2-xTB"


@needs_tblite
def test_xtb_water_molecule():
    """A molecule (no cell): H2O relaxes to GFN1-xTB's geometry, near experiment
    (O-H 0.957 Å, 104.5°): within 0.03 Å and 5°."""
    from ase.build import molecule
    from ase.optimize import BFGS

    atoms = molecule("H2O")
    atoms.calc = make_labeler("xtb")
    BFGS(atoms, logfile=None).run(fmax=0.01)
    assert atoms.get_distance(0, 1) == pytest.approx(0.957, abs=0.03)
    assert atoms.get_angle(1, 0, 2) == pytest.approx(104.5, abs=5)


def test_new_labeler_settings_are_checked():
    from pfd_ase.calculators.labelers import check_labeler_settings

    if importlib.util.find_spec("tblite") is not None:
        with pytest.raises(ValueError, match="method: GFN1-xTB"):
            check_labeler_settings("xtb", {"xc": "PBE"})
        check_labeler_settings("xtb", {"method": "GFN2-xTB", "accuracy": 0.5})
    if importlib.util.find_spec("gpaw") is not None:
        with pytest.raises(ValueError, match="basis"):
            check_labeler_settings("gpaw-lcao", {"basiss": "szp"})
        check_labeler_settings("gpaw-lcao", {"basis": "szp(dzp)"})


# --------------------------------------------------------------------------- CHGNet


@needs_chgnet
def test_chgnet_stress_is_ev_per_cubic_angstrom():
    """CHGNet predicts GPa; the labeler must hand ASE eV/Å³ (finite differences decide)."""
    atoms = _rattled(bulk("Si", "diamond", a=5.30, cubic=True), seed=3)
    atoms.calc = make_labeler("chgnet", use_device="cpu")
    stress = atoms.get_stress()
    numerical = calculate_numerical_stress(atoms, 1e-3)
    assert np.abs(stress[:3]).max() > 0.01  # compressed cell: a clear signal
    np.testing.assert_allclose(stress, numerical, atol=2e-4)  # observed 2e-5
    forces = atoms.get_forces()[[0]]
    numerical = calculate_numerical_forces(atoms, 1e-3, iatoms=[0])
    np.testing.assert_allclose(numerical, forces, atol=1e-2)  # float32 model
    info = labeler_info(atoms.calc)
    assert info["name"] == "chgnet" and info["settings"]["model"] == "0.3.0"
    assert info["settings"]["identity"].startswith("chgnet:CHGNet-0.3.0@")
    assert info["settings"]["version"].startswith("chgnet ")


def test_vasp_dispersion_is_its_ivdw_tag_and_molecules_get_a_box(tmp_path, vasp_env):
    from ase.build import molecule

    from pfd_ase.calculators.corrections import InVacuum

    h = vasp_env / "potpaw_PBE" / "H" / "POTCAR"
    h.parent.mkdir(parents=True)
    h.write_text(" PAW_PBE H test\n   LEXCH  = PE\n")
    directory = tmp_path / "task"
    calc = make_labeler(
        "vasp", directory, command="true", dispersion="d3bj", vacuum_A=6.0, kspacing=None
    )
    assert isinstance(calc, InVacuum)  # VASP's own D3: no Python correction on top
    assert labeler_info(calc)["settings"]["ivdw"] == 12
    methane = molecule("CH4")
    boxed = methane.copy()
    boxed.set_cell(np.ptp(methane.positions, axis=0) + 12.0)
    boxed.center()
    calc.inner.write_input(boxed)
    incar = _incar(directory / "INCAR")
    assert int(incar["IVDW"]) == 12
    assert "KSPACING" not in incar

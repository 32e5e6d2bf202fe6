"""SevenNet-0: resolution, the back-end's units through PFDCalculator, fine-tuning (real runs)."""

from __future__ import annotations

import json
import sys
import zipfile

import numpy as np
import pytest
from ase.calculators.fd import calculate_numerical_forces

from pfd_ase.materials import labelled_silicon
from pfd_ase.models import (
    ModelNotFoundError,
    is_sevennet_checkpoint,
    read_sevennet_checkpoint,
    resolve_model,
    sevennet_pretrained_path,
)

pytest.importorskip("sevenn")
torch = pytest.importorskip("torch")

#: the fine-tuning runs of this file: 4 training and 2 validation frames of 8 atoms
RUN = dict(epochs=2, batch_size=2, learning_rate=4e-3, threads=1, seed=1)


class Payload:
    """A class a checkpoint may not name: unpickling it would run code from the file."""


@pytest.fixture(scope="module")
def calc():
    from pfd_ase.calculators import PFDCalculator

    return PFDCalculator("7net-0")


@pytest.fixture(scope="module")
def sw_frames():
    return labelled_silicon(6, seed=3)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, sw_frames):
    from pfd_ase.training.sevennet import finetune_sevennet

    workdir = tmp_path_factory.mktemp("sevennet_ft")
    rng_state = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    ckpt = finetune_sevennet(sw_frames[:4], workdir, sw_frames[4:], progress=True, **RUN)
    assert torch.equal(rng_state, torch.random.get_rng_state())  # no global side effect
    assert torch.get_num_threads() == threads
    return ckpt


# --------------------------------------------------------------------------- resolution
def test_names_resolve_to_sevennet_0_without_importing_it():
    for name in ("7net-0", "SevenNet-0", "sevennet", "7NET-0", "sevennet-0"):
        spec = resolve_model(name)
        assert (spec.kind, spec.path, spec.name) == ("sevennet", None, "SevenNet-0"), name
    spec = resolve_model("7net-0")
    assert spec.identity == "sevennet:SevenNet-0@sevenn-0.13.0:head=None"
    assert len(spec.type_map) == 89 and "Si" in spec.type_map
    with pytest.raises(ValueError, match="single energy head"):
        resolve_model("7net-0", head="mpa")
    with pytest.raises(ModelNotFoundError, match="no pre-trained SevenNet named '7net-omat'"):
        resolve_model("7net-omat")
    wheel = sevennet_pretrained_path()
    assert wheel is not None and resolve_model(wheel).kind == "sevennet"


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_pth_files_are_told_apart_by_content(tmp_path):
    """SevenNet and deepmd-kit both write .pth: a torch.save dict with config and
    model_state_dict is SevenNet, anything else (TorchScript, text, other dicts) deepmd-kit."""
    files = {
        "text.pth": None,
        "empty.pth": None,
        "other.pth": {"model": {"w": torch.zeros(2)}},
        "half.pth": {"config": {}},
        "seven.pth": {"config": {"cutoff": 5.0}, "model_state_dict": {"w": torch.zeros(2)}},
    }
    (tmp_path / "text.pth").write_text("a stand-in\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    for name, content in files.items():
        if content is not None:
            torch.save(content, tmp_path / name)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "frozen.pth")
    kinds = {p.name: resolve_model(p).kind for p in tmp_path.iterdir()}
    assert kinds == {
        "text.pth": "deepmd",
        "empty.pth": "deepmd",
        "other.pth": "deepmd",
        "half.pth": "deepmd",
        "frozen.pth": "deepmd",
        "seven.pth": "sevennet",
    }
    assert zipfile.is_zipfile(tmp_path / "frozen.pth")  # a TorchScript archive, not sniffed
    assert is_sevennet_checkpoint(sevennet_pretrained_path())


def test_a_checkpoint_naming_other_objects_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"config": {}, "model_state_dict": {}, "x": Payload()}, path)
    assert resolve_model(path).kind == "sevennet"
    with pytest.raises(ValueError, match=r"needs the Python object \S*Payload"):
        read_sevennet_checkpoint(path)
    with pytest.raises(ValueError, match="needs the Python object"):
        from pfd_ase.calculators import PFDCalculator

        PFDCalculator(path)


def test_missing_sevenn_says_how_to_install(monkeypatch, tmp_path, sw_frames):
    from pfd_ase.calculators.sevennet import load_sevennet_model
    from pfd_ase.training.sevennet import finetune_sevennet

    monkeypatch.setitem(sys.modules, "sevenn", None)
    monkeypatch.setitem(sys.modules, "sevenn.checkpoint", None)
    with pytest.raises(ImportError, match="pip install sevenn"):
        load_sevennet_model("7net-0")
    with pytest.raises(ImportError, match=r"pip install sevenn .*pfd_ase\[sevennet\]"):
        finetune_sevennet(sw_frames[:2], tmp_path, [], epochs=1)


# --------------------------------------------------------------------------- the back-end
def test_forces_and_stress_are_derivatives_of_the_energy(calc, sw_frames):
    atoms = sw_frames[0].copy()
    atoms.calc = calc
    forces, stress = atoms.get_forces(), atoms.get_stress()
    energies = atoms.get_potential_energies()
    assert energies.sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
    # float32 energies (~1e-5 eV): steps large enough for differences well above rounding
    numerical = calculate_numerical_forces(atoms, eps=1e-2, iatoms=[5])
    np.testing.assert_allclose(numerical, forces[[5]], atol=5e-3)
    # ASE's stress: (1/V) dE/dε, eV/Å³, Voigt xx yy zz yz xz xy, positive under tension
    for voigt, (i, j) in ((0, (0, 0)), (3, (1, 2))):
        assert _strain_derivative(atoms, i, j, 1e-3) == pytest.approx(stress[voigt], abs=2e-4)
    assert np.abs(stress[[0, 3]]).min() > 5e-3  # a strained cell: the check has teeth


def _strain_derivative(atoms, i, j, eps):
    """(1/V) dE/dε_ij by central differences of a symmetric strain."""
    energies = []
    for sign in (1, -1):
        strained = atoms.copy()
        strain = np.eye(3)
        strain[i, j] += sign * eps / (1 if i == j else 2)
        strain[j, i] = strain[i, j]
        strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        strained.calc = atoms.calc
        energies.append(strained.get_potential_energy())
    return (energies[0] - energies[1]) / (2 * eps) / atoms.get_volume()


def test_energy_is_invariant_under_rotation_and_translation(calc, sw_frames):
    from scipy.spatial.transform import Rotation

    atoms = sw_frames[1].copy()
    atoms.calc = calc
    e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)
    rot = Rotation.from_euler("zyx", [0.3, -1.1, 2.0]).as_matrix()
    moved = atoms.copy()
    moved.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    moved.positions = atoms.positions @ rot.T + [0.7, -1.3, 2.1]
    moved.calc = calc
    assert moved.get_potential_energy() == pytest.approx(e, abs=2e-4)
    np.testing.assert_allclose(moved.get_forces(), f @ rot.T, atol=1e-4)
    np.testing.assert_allclose(moved.get_stress(voigt=False), rot @ s @ rot.T, atol=1e-5)


def test_non_periodic_structure_has_no_stress(calc):
    from ase.build import molecule

    atoms = molecule("CH4")
    atoms.calc = calc
    assert np.abs(atoms.get_forces().sum(axis=0)).max() < 1e-4
    assert "stress" not in atoms.calc.results


# --------------------------------------------------------------------------- fine-tuning
def test_finetune_refits_the_shift_learns_and_keeps_the_best_epoch(finetuned, sw_frames, calc):
    from pfd_ase.calculators import PFDCalculator
    from pfd_ase.training.evaluate import evaluate

    ckpt = finetuned
    assert ckpt.name == "sevennet_finetuned.pth"
    record = json.loads((ckpt.parent / "pfd_train.json").read_text())
    assert record["done"] and record["epochs_done"] == 2 and record["targets"] == "efs"
    assert record["versions"]["sevenn"] == "0.13.0" and record["n_trainable"] > 800_000

    # the refit: SW's energy zero lies ~1.1 eV/atom above PBE's; after it, the error of the
    # untrained model on the held-out frames is a few meV/atom
    valid = sw_frames[4:]
    base = evaluate(calc, valid)
    shift = record["energy_shift_eV_per_atom"]["Si"]
    assert shift == pytest.approx(1.1, abs=0.15)
    assert base["energy_rmse"] > 1.0 > 0.05 > record["initial_valid_mae"]["e"]
    state = read_sevennet_checkpoint(ckpt)["model_state_dict"]
    reference = read_sevennet_checkpoint(sevennet_pretrained_path())["model_state_dict"]
    si = resolve_model("7net-0").type_map.index("Si")
    saved, before = (s["rescale_atomic_energy.shift"][si].item() for s in (state, reference))
    assert saved == pytest.approx(before + shift, abs=1e-5)  # kept: the shift is not trained

    # training error drops; the checkpoint is the epoch of lowest validation loss
    history = record["history"]
    assert history[-1]["train_mae"]["f"] < 0.8 * history[0]["train_mae"]["f"]
    losses = [record["initial_valid_loss"]] + [r["valid_loss"] for r in history]
    assert record["best_epoch"] == int(np.argmin(losses)) and record["best_epoch"] > 0
    after = PFDCalculator(ckpt)
    assert after.identity.startswith("sevennet:sha256=")
    errors = evaluate(after, valid)  # frames of equal size: means of per-frame MAEs
    assert errors["force_rmse"] < 0.7 * base["force_rmse"]
    mae_e = np.mean([abs(row["energy_error"]) for row in errors["frames"]])
    mae_f = np.mean([row["force_mae"] for row in errors["frames"]])
    weights = record["settings"]["loss_weights"]  # the default weighs the energy 3
    assert weights["e"] == 3.0 and weights["f"] == 1.0
    assert weights["e"] * mae_e + mae_f == pytest.approx(min(losses), rel=1e-3)
    log = (ckpt.parent / "sevennet_train.log").read_text()
    assert "SevenNet fine-tune epoch 2/2 (step 4)" in log and "ETA" in log


def test_finetune_is_not_repeated(finetuned, sw_frames):
    from pfd_ase.training.sevennet import finetune_sevennet

    mtime = finetuned.stat().st_mtime_ns
    again = finetune_sevennet(sw_frames[:4], finetuned.parent, sw_frames[4:], **RUN)
    assert again == finetuned and finetuned.stat().st_mtime_ns == mtime


def test_interrupted_finetune_resumes_without_repeating_epochs(
    tmp_path, finetuned, sw_frames, monkeypatch, capsys
):
    """Killed after epoch 1's trainer state was saved but before its record: the rerun
    trains epoch 2 only and ends where the uninterrupted run ended, bit for bit."""
    from pfd_ase.training import sevennet as ft

    original = ft.write_json

    def killed(path, record):
        if record.get("epochs_done") == 1 and not record.get("done"):
            raise KeyboardInterrupt
        original(path, record)

    monkeypatch.setattr(ft, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune_sevennet(sw_frames[:4], tmp_path, sw_frames[4:], progress=False, **RUN)
    monkeypatch.setattr(ft, "write_json", original)
    assert [p.name for p in (tmp_path / "epochs").glob("epoch*.pth")] == ["epoch0001.pth"]
    capsys.readouterr()
    resumed = ft.finetune_sevennet(sw_frames[:4], tmp_path, sw_frames[4:], **RUN)
    printed = capsys.readouterr().out
    assert "epoch 2/2" in printed and "epoch 1/2" not in printed

    record = json.loads((resumed.parent / "pfd_train.json").read_text())
    first = json.loads((finetuned.parent / "pfd_train.json").read_text())
    assert [r["epoch"] for r in record["history"]] == [1, 2]
    assert [r["valid_mae"] for r in record["history"]] == [r["valid_mae"] for r in first["history"]]
    assert (record["best_epoch"], record["best_valid_loss"]) == (
        first["best_epoch"],
        first["best_valid_loss"],
    )
    a = read_sevennet_checkpoint(finetuned)["model_state_dict"]
    b = read_sevennet_checkpoint(resumed)["model_state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_finetune_refuses_bad_input(tmp_path, sw_frames):
    from pfd_ase.training.sevennet import finetune_sevennet

    bare = sw_frames[0].copy()  # no labels
    for kwargs, message in (
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"loss": "l1"}, "loss must be one of"),
        ({"base": "chgnet"}, "not a SevenNet model"),
        ({"valid_fraction": 1.0}, "valid_fraction"),
    ):
        with pytest.raises(ValueError, match=message):
            finetune_sevennet(sw_frames[:2], tmp_path, **kwargs)
    with pytest.raises(ValueError, match="train frame 1 is not labelled"):
        finetune_sevennet([sw_frames[0], bare], tmp_path, [])


# --------------------------------------------------------------------------- the workflow
def test_workflow_train_step_fine_tunes_a_sevennet_base(tmp_path, sw_frames):
    """``base_model: 7net-0`` in a workflow: the teacher step fine-tunes SevenNet-0 and its
    checkpoint resolves (and loads) as a SevenNet model; the config check accepts it."""
    from pfd_ase.calculators import PFDCalculator
    from pfd_ase.models import resolve_model
    from pfd_ase.workflow import steps
    from pfd_ase.workflow.config import TrainConfig

    training = TrainConfig(
        role="teacher",
        steps=1,
        learning_rate=None,
        seed=0,
        type_map=("Si",),
        base_model="7net-0",
        head=None,
        chgnet_epochs=1,
        compress=False,
    )
    out = steps.train(training, sw_frames[:4], tmp_path / "train", progress=False)
    assert resolve_model(out.model).kind == "sevennet"
    atoms = sw_frames[5].copy()
    atoms.calc = PFDCalculator(out.model)
    forces = atoms.get_forces()
    assert forces.shape == (len(atoms), 3) and np.isfinite(forces).all()
    record = json.loads((tmp_path / "train" / "pfd_train.json").read_text())
    assert record["epochs_done"] == 1


def test_config_accepts_a_sevennet_base(tmp_path):
    from pfd_ase.workflow import load_config

    diamond = {"bulk": {"name": "Si", "crystalstructure": "diamond", "a": 5.43, "cubic": True}}
    config = load_config(
        {
            "workdir": str(tmp_path / "run"),
            "structures": {"diamond": diamond},
            "labeler": {"name": "sw"},
            "base_model": "7net-0",
        }
    )
    assert config["base_model"]["path"] == "7net-0"

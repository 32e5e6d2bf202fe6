"""Shared fixtures: tiny deepmd-kit models trained once per session on EMT-labelled copper."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Keep BLAS single-threaded for the DFT/classical parts (GPAW is 8x slower with threaded
# OpenBLAS on 2 cores); deepmd-kit subprocesses set their own thread counts.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("PFD_THREADS", "2")
# The CLI and recipe entry points tune glibc's allocator for the rest of the process
# (pfd_ase.allocator); the test process keeps glibc's defaults (test_allocator spies).
os.environ.setdefault("PFD_TUNE_ALLOCATOR", "0")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _has_deepmd() -> bool:
    try:
        from deepmd.pt.cxx_op import ENABLE_CUSTOMIZED_OP  # noqa: F401
    except Exception:
        return False
    return True


requires_deepmd = pytest.mark.skipif(not _has_deepmd(), reason="deepmd-kit (PyTorch) missing")


def load_bench(name: str):
    """The benchmark script ``bench/<name>.py`` as a module (for its smoke tests)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def emt_frames(n: int, seed: int, element: str = "Cu", a: float = 3.6, reps=(2, 1, 1)):
    """Perturbed fcc cells labelled with EMT (energy, forces, stress)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk(element, "fcc", a=a, cubic=True).repeat(reps)
        strain = np.eye(3) + rng.normal(0.0, 0.01, (3, 3))
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        atoms.calc = EMT()
        results = {
            "energy": atoms.get_potential_energy(),
            "forces": atoms.get_forces(),
            "stress": atoms.get_stress(),
        }
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


@pytest.fixture(scope="session")
def emt_systems(tmp_path_factory):
    """deepmd npy systems of EMT copper (train / valid)."""
    from pfd_ase.data import to_deepmd

    root = tmp_path_factory.mktemp("emt_data")
    frames = emt_frames(12, seed=0)
    train = to_deepmd(frames[:10], root / "train", ["Cu", "Ag"])
    valid = to_deepmd(frames[10:], root / "valid", ["Cu", "Ag"])
    return train, valid


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, emt_systems):
    """Two tiny single-task DPA-2 models (different seeds): checkpoints and frozen .pth files."""
    if not _has_deepmd():
        pytest.skip("deepmd-kit (PyTorch) missing")
    from pfd_ase.training import deepmd as dp

    train, valid = emt_systems
    out = {}
    for seed in (1, 2):
        work = tmp_path_factory.mktemp(f"tiny_dpa2_seed{seed}")
        cfg = dp.training_input(
            dp.energy_model(["Cu", "Ag"], seed=seed), train, valid, steps=10, seed=seed
        )
        ckpt = dp.train(cfg, work)
        out[seed] = {"ckpt": ckpt, "pth": dp.freeze(work, "frozen.pth"), "workdir": work}
    return out


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory, emt_systems):
    """A tiny frozen se_atten_v2 student (no message passing) for Cu/Ag, trained 2 steps."""
    if not _has_deepmd():
        pytest.skip("deepmd-kit (PyTorch) missing")
    from pfd_ase.training import deepmd as dp

    train, _ = emt_systems
    work = tmp_path_factory.mktemp("tiny_student")
    dp.train(dp.student_input(["Cu", "Ag"], train, steps=2, seed=3), work, progress=False)
    return dp.freeze(work, work / "student.pth")


#: The schedule of the tiny pre-trainings of the tests (not the DPA-2 paper's 2e-4 -> 3e-8 of
#: :data:`~pfd_ase.training.deepmd.PRETRAIN_LR`, made for 1 000 000 steps): 1e-3 -> 3.51e-8,
#: decaying every step; with ``batch_size="auto"`` (not the paper's 8 frames) for speed.
TINY_PRETRAIN_LR = {"type": "exp", "start_lr": 1e-3, "stop_lr": 3.51e-8, "decay_steps": 1}


@pytest.fixture(scope="session")
def multitask_model(tmp_path_factory, emt_systems):
    """A tiny two-head (``cu``, ``cu2``) multi-task DPA-2 checkpoint."""
    if not _has_deepmd():
        pytest.skip("deepmd-kit (PyTorch) missing")
    from pfd_ase.training import deepmd as dp

    train, _ = emt_systems
    work = tmp_path_factory.mktemp("tiny_multitask")
    cfg = dp.multitask_input(
        ["Cu", "Ag"],
        {"cu": {"train": train}, "cu2": {"train": train, "weight": 2.0}},
        steps=10,
        learning_rate=TINY_PRETRAIN_LR,
        batch_size="auto",
    )
    return dp.train(cfg, work)


def si_frames(n: int, seed: int, labeler: str = "sw", a: float = 5.43, displacement=0.08):
    """Perturbed 8-atom diamond Si cells labelled by a classical potential
    (:func:`pfd_ase.materials.labelled_silicon`)."""
    from pfd_ase.materials import labelled_silicon

    return labelled_silicon(n, seed, labeler, a=a, displacement_A=displacement)


class LosingExecutor:
    """An executor that runs each call at once, except that calls on items for which
    ``lost(item)`` is true fail as a lost worker would (``BrokenPipeError``) and calls on
    items for which ``pending(item)`` is true never start. Keeps its futures in order."""

    def __init__(self, lost, pending=lambda item: False):
        self.lost, self.pending, self.futures = lost, pending, []

    def submit(self, fn, /, item):
        from concurrent.futures import Future

        future = Future()
        if self.lost(item):
            future.set_exception(BrokenPipeError("worker lost"))
        elif not self.pending(item):
            future.set_result(fn(item))
        self.futures.append(future)
        return future

"""The PFD loops: initial data, the fine-tune loop (teacher) and the distillation loop (student).

Run directory layout (``config["workdir"]``)::

    data/labelled.extxyz           every DFT-labelled frame (merged after each labelling)
    init/label/task.*              labelling of the perturbed initial structures
    finetune/init/                 first fine-tune of the base model
    finetune/<stage>/iter.NNN/     explore/ (MD walkers), selected.extxyz, label/, train/
    distill/iter.NNN/              explore/, label/ (teacher labels), train/ (student)
    distill/teacher_labelled.extxyz
    state/<step>.json              completion records (a finished step is never redone)
    summary.json                   config, seeds, versions, per-step records, timings, paths
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from pfd_ase.data import append_frames, read_frames, write_frames
from pfd_ase.workflow.config import is_chgnet
from pfd_ase.workflow.state import RunState


def force_rmse(model: str | Any, frames: Sequence[Atoms]) -> float | None:
    """Force RMSE (eV/Å) of a model (path or calculator) against labelled frames."""
    if not frames:
        return None
    calc = _calculator(model)
    err = [calc.get_forces(_bare(a)) - a.get_forces() for a in frames]
    return float(np.sqrt(np.mean(np.concatenate(err) ** 2)))


def _calculator(model: str | Any) -> Any:
    if isinstance(model, str | Path):
        from pfd_ase.calculators import PFDCalculator

        return PFDCalculator(model)
    return model


def _bare(atoms: Atoms) -> Atoms:
    new = atoms.copy()
    new.calc = None
    return new


def _structures(config: dict[str, Any], names: list[str] | None) -> list[Atoms]:
    from pfd_ase.structures import build_structure

    names = names or list(config["structures"])
    return [build_structure(config["structures"][n]) for n in names]


def _explore_task(block: dict[str, Any], seed: int):
    from pfd_ase.explore import ExploreTask

    return ExploreTask(
        temperatures_K=block["temperatures_K"],
        pressures_GPa=block["pressures_GPa"],
        steps=block["md_steps"],
        timestep_fs=block["timestep_fs"],
        sample_every=block["sample_every"],
        thermostat=block["thermostat"],
        barostat=block["barostat"],
        seed=seed,
    )


def _labeler(config: dict[str, Any]) -> Any:
    labeler = config["labeler"]
    if isinstance(labeler, dict):
        return labeler["name"], dict(labeler.get("overrides") or {})
    return labeler  # a calculator object (Python API)


def _failures(result) -> list[dict[str, Any]]:
    return [
        {k: f.get(k) for k in ("index", "frame_id", "exception", "message", "task_dir")}
        for f in result.failures
    ]


# --------------------------------------------------------------------------- teacher
def train_teacher(config: dict[str, Any], frames: list[Atoms], workdir: Path) -> str:
    """Fine-tune the base model (deepmd-kit or CHGNet) on ``frames``; return the model path."""
    base, ft, seed = config["base_model"], config["finetune"], config["seed"]
    progress = config["progress"]
    if is_chgnet(base["path"]):
        from pfd_ase.training.chgnet import finetune_chgnet

        kwargs: dict[str, Any] = {"epochs": ft["chgnet_epochs"], "seed": seed}
        if str(base["path"]).endswith(".pth.tar"):
            kwargs["base"] = base["path"]
        return str(finetune_chgnet(frames, workdir, **kwargs))
    from pfd_ase.training.stages import finetune

    result = finetune(
        base["path"],
        frames,
        workdir,
        head=base["head"],
        type_map=config["type_map"],
        steps=ft["steps"],
        learning_rate=ft["learning_rate"],
        seed=seed + 1,
        progress=progress,
    )
    return str(result.model)


def initial_data(config: dict[str, Any], state: RunState, executor=None) -> dict[str, Any]:
    """Perturb the initial structures (seeded) and label them (PFD stage "init")."""
    from pfd_ase.label import label_frames
    from pfd_ase.structures import perturb

    init = config["init"]
    rng = np.random.default_rng(config["seed"])
    frames = []
    names = init["structures"] or list(config["structures"])
    for name, atoms in zip(names, _structures(config, names), strict=True):
        for k, new in enumerate(
            perturb(atoms, init["n_perturb"], rng, init["cell_strain"], init["displacement_A"])
        ):
            new.info["pfd_frame_id"] = f"init.{name}.{k:03d}"
            frames.append(new)
    result = label_frames(frames, _labeler(config), state.workdir / "init" / "label", executor)
    size = state.add_labelled(result.frames)
    return {
        "n_frames": len(frames),
        "n_labelled": len(result.frames),
        "n_failed": len(result.failures),
        "failures": _failures(result),
        "dataset_size": size,
    }


def finetune_loop(config: dict[str, Any], state: RunState, executor=None) -> str:
    """Fine-tune loop over the configured stages; return the final teacher model path."""
    from pfd_ase.explore import explore
    from pfd_ase.label import label_frames
    from pfd_ase.selectors import EntropySelector

    ft, seed, progress = config["finetune"], config["seed"], config["progress"]
    state.run_step("init.label", lambda: initial_data(config, state, executor))
    if not state.dataset():
        raise RuntimeError("no initial frame could be labelled; see state/init.label.json")
    record = state.run_step(
        "init.train",
        lambda: {
            "model": train_teacher(config, state.dataset(), state.workdir / "finetune" / "init")
        },
    )
    model = record["model"]
    state.save_summary(teacher=model)

    for s, stage in enumerate(ft["stages"]):
        name = stage["name"] or f"stage{s + 1}"
        structures = _structures(config, stage["structures"])
        for it in range(stage["max_iterations"]):
            key = f"ft.{name}.{it:03d}"
            folder = state.workdir / "finetune" / name / f"iter.{it:03d}"
            task = _explore_task(stage, seed + 1000 * (s + 1) + it)

            def explore_select(
                folder=folder, task=task, key=key, model=model, stage=stage, structures=structures
            ) -> dict[str, Any]:
                res = explore(
                    structures,
                    ("pfd", {"model": model}),
                    folder / "explore",
                    task,
                    executor=executor,
                    progress=progress,
                )
                candidates = res.frames
                n = min(stage["n_select"], len(candidates))
                selector = (
                    EntropySelector(n_target=n, chunk_size=stage["chunk_size"]) if n else None
                )
                picked = selector.select(candidates, state.dataset()) if selector else []
                selected = []
                for j, i in enumerate(picked):
                    atoms = _bare(candidates[i])
                    atoms.info["pfd_frame_id"] = f"{key}.{j:03d}"
                    selected.append(atoms)
                write_frames(folder / "selected.extxyz", selected)
                return {
                    "n_candidates": len(candidates),
                    "n_selected": len(selected),
                    "selected_indices": [int(i) for i in picked],
                    "walkers_exploded": len(res.exploded),
                    "walkers_failed": len(res.failed),
                    "filter_counts": res.filter_counts,
                }

            sel = state.run_step(f"{key}.select", explore_select)

            def label_and_test(folder=folder, model=model) -> dict[str, Any]:
                selected = read_frames(folder / "selected.extxyz", missing_ok=True)
                result = label_frames(selected, _labeler(config), folder / "label", executor)
                size = state.add_labelled(result.frames)
                return {
                    "n_labelled": len(result.frames),
                    "n_failed": len(result.failures),
                    "failures": _failures(result),
                    "dataset_size": size,
                    # the convergence test: the current model on frames it has never seen
                    "model_force_rmse_eV_A": force_rmse(model, result.frames),
                    "dataset_entropy": _dataset_entropy(state.dataset()),
                }

            lab = state.run_step(f"{key}.label", label_and_test)
            err = lab["model_force_rmse_eV_A"]
            if err is not None and err < ft["force_rmse_threshold_eV_A"]:
                state.save_summary(**{f"converged.{name}": it})
                break
            if sel["n_selected"] == 0 or lab["n_labelled"] == 0:
                continue  # nothing new to learn from; explore again with another seed
            rec = state.run_step(
                f"{key}.train",
                lambda folder=folder: {
                    "model": train_teacher(config, state.dataset(), folder / "train")
                },
            )
            model = rec["model"]
            state.save_summary(teacher=model)
    return model


def _dataset_entropy(frames: Sequence[Atoms]) -> float | None:
    from pfd_ase.selectors import quests

    if not frames:
        return None
    return float(quests.entropy(quests.descriptors(list(frames))))


# --------------------------------------------------------------------------- student
def distill_loop(
    config: dict[str, Any], state: RunState, teacher: str, executor=None
) -> str | None:
    """Distil ``teacher`` into a small student; return the student model path."""
    from pfd_ase.explore import explore
    from pfd_ase.label import label_frames
    from pfd_ase.training.stages import train_student

    ds, seed, progress = config["distill"], config["seed"], config["progress"]
    if not ds["enabled"]:
        return None
    teacher_calc = _calculator(teacher)
    train_path = state.workdir / "distill" / "teacher_labelled.extxyz"
    structures = _structures(config, ds["explore"]["structures"])
    student: str | None = state.summary.get("student")
    previous: float | None = None
    for it in range(ds["max_iterations"]):
        key = f"distill.{it:03d}"
        folder = state.workdir / "distill" / f"iter.{it:03d}"
        task = _explore_task(ds["explore"], seed + 100000 + it)

        def explore_compare(folder=folder, task=task, key=key, student=student) -> dict[str, Any]:
            res = explore(
                structures,
                ("pfd", {"model": teacher}),
                folder / "explore",
                task,
                executor=executor,
                progress=progress,
            )
            candidates = [_bare(a) for a in res.frames]
            rmse = None
            if student is None:
                order = np.linspace(0, len(candidates) - 1, min(ds["n_frames"], len(candidates)))
                chosen = sorted({int(round(x)) for x in order}) if candidates else []
            else:
                student_calc = _calculator(student)
                devi, sq = [], []
                for atoms in candidates:
                    diff = student_calc.get_forces(atoms.copy()) - teacher_calc.get_forces(
                        atoms.copy()
                    )
                    devi.append(float(np.linalg.norm(diff, axis=1).max()))
                    sq.append(diff.ravel() ** 2)
                rmse = float(np.sqrt(np.mean(np.concatenate(sq)))) if sq else None
                over = [
                    i for i in np.argsort(devi)[::-1] if devi[i] > ds["force_devi_threshold_eV_A"]
                ]
                chosen = sorted(int(i) for i in over[: ds["n_frames"]])
            new = []
            for j, i in enumerate(chosen):
                candidates[i].info["pfd_frame_id"] = f"{key}.{j:03d}"
                new.append(candidates[i])
            result = label_frames(new, teacher_calc, folder / "label")
            size = len(append_frames(train_path, result.frames))
            return {
                "n_candidates": len(candidates),
                "n_new": len(result.frames),
                "n_failed": len(result.failures),
                "failures": _failures(result),
                "train_size": size,
                "student_vs_teacher_force_rmse_eV_A": rmse,
            }

        rec = state.run_step(f"{key}.explore", explore_compare)
        err = rec["student_vs_teacher_force_rmse_eV_A"]
        if err is not None:
            if err < ds["target_force_rmse_eV_A"]:
                state.save_summary(distill_converged=it)
                break
            if previous is not None and (previous - err) < ds["min_improvement"] * previous:
                state.save_summary(distill_stalled=it)
                break
            previous = err
        if student is not None and rec["n_new"] == 0:
            break

        def train(folder=folder) -> dict[str, Any]:
            result = train_student(
                read_frames(train_path),
                folder / "train",
                type_map=config["type_map"],
                steps=ds["steps"],
                compress=ds["compress"],
                seed=seed + 2,
                progress=progress,
                learning_rate=ds["learning_rate"],
            )
            return {
                "model": str(result.model),
                "compressed": str(result.compressed) if result.compressed else None,
                "info": result.info,
            }

        tr = state.run_step(f"{key}.train", train)
        student = tr["compressed"] or tr["model"]
        state.save_summary(student=student)
    return student


# --------------------------------------------------------------------------- driver
def run(config: dict[str, Any] | str | Path) -> dict[str, Any]:
    """Run (or resume) a whole PFD workflow; return the run summary."""
    from pfd_ase.parallel import make_executor
    from pfd_ase.workflow.config import load_config

    config = load_config(config)
    state = RunState(config["workdir"], config)
    state.save_summary()
    with make_executor(config["executor"]) as executor:
        teacher = finetune_loop(config, state, executor)
        student = distill_loop(config, state, teacher, executor)
    data = state.dataset()
    validation = {"n_frames": len(data), "teacher_force_rmse_eV_A": force_rmse(teacher, data)}
    if student:
        validation["student_force_rmse_eV_A"] = force_rmse(student, data)
    state.save_summary(teacher=teacher, student=student, validation=validation, finished=True)
    return state.summary

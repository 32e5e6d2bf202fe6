"""``pfd-ase``: the command-line interface (typer).

``pfd-ase run CONFIG`` runs (or resumes) a whole workflow; the other commands run one stage
on files: ``select``, ``label``, ``pretrain``, ``finetune``, ``student``, ``evaluate``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="PFD machine-learning force fields: pre-train, fine-tune, distil (ASE + deepmd-kit).",
    no_args_is_help=True,
    add_completion=False,
)


def _echo_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML or JSON run configuration")],
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Run (or resume) the fine-tune and distillation loops described by CONFIG."""
    from pfd_ase.workflow import ConfigError, load_config
    from pfd_ase.workflow import run as run_workflow

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(exc)
    cfg["progress"] = progress and cfg["progress"]
    summary = run_workflow(cfg)
    _echo_json({k: summary.get(k) for k in ("teacher", "student", "validation", "finished")})


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="YAML or JSON run configuration")]):
    """Check CONFIG (keys, units, structures, base model, labeler set-up) without running."""
    from pfd_ase.workflow import ConfigError, load_config

    try:
        load_config(config)
    except ConfigError as exc:
        _fail(exc)
    typer.echo(f"{config}: OK")


@app.command()
def status(run_dir: Annotated[Path, typer.Argument(help="run directory")]) -> None:
    """Show what a run directory holds: finished steps, dataset size, models."""
    from pfd_ase.workflow import run_status

    try:
        _echo_json(run_status(run_dir))
    except FileNotFoundError as exc:
        _fail(exc)


@app.command()
def select(
    candidates: Annotated[Path, typer.Argument(help="extxyz of candidate frames")],
    output: Annotated[Path, typer.Option("--out", "-o", help="extxyz of the selected frames")],
    n: Annotated[int, typer.Option("-n", help="number of frames to select")] = 10,
    reference: Annotated[Path | None, typer.Option(help="extxyz of labelled frames")] = None,
    chunk_size: Annotated[int, typer.Option(help="frames added per round")] = 10,
    method: Annotated[str, typer.Option(help="entropy or random")] = "entropy",
    seed: Annotated[int, typer.Option(help="seed of the random selector")] = 0,
) -> None:
    """Select the most informative frames (QUESTS entropy, Algorithm 1) or random ones."""
    from pfd_ase.data import read_frames, write_frames
    from pfd_ase.selectors import EntropySelector, RandomSelector

    frames = read_frames(candidates)
    ref = read_frames(reference) if reference else None
    if method == "entropy":
        selector = EntropySelector(n_target=n, chunk_size=chunk_size)
    elif method == "random":
        selector = RandomSelector(n_target=n, seed=seed)
    else:
        _fail(ValueError(f"unknown method {method!r}: entropy or random"))
    idx = selector.select(frames, ref)
    write_frames(output, [frames[i] for i in idx])
    _echo_json({"selected": idx, "output": str(output)})


@app.command()
def label(
    frames: Annotated[Path, typer.Argument(help="extxyz of frames to label")],
    workdir: Annotated[Path, typer.Option(help="one task folder per frame goes here")],
    output: Annotated[Path, typer.Option("--out", "-o", help="extxyz of labelled frames")],
    labeler: Annotated[str, typer.Option(help="vasp, gpaw, chgnet, sw, tersoff, emt")] = "gpaw",
) -> None:
    """Label frames with a DFT code or another reference calculator (resumable)."""
    from pfd_ase.data import read_frames, write_frames
    from pfd_ase.label import label_frames

    try:
        result = label_frames(read_frames(frames), labeler, workdir)
    except (ValueError, RuntimeError) as exc:
        _fail(exc)
    write_frames(output, result.frames)
    _echo_json({"labelled": len(result.frames), "failed": result.failures, "out": str(output)})


@app.command()
def pretrain(
    dataset: Annotated[list[str], typer.Option(help="HEAD=FILE.extxyz (repeat per head)")],
    workdir: Annotated[Path, typer.Option(help="training folder")],
    steps: Annotated[int, typer.Option(help="training steps")] = 100000,
) -> None:
    """Multi-task pre-training: one fitting head per dataset, a shared DPA-2 descriptor."""
    from pfd_ase.data import read_frames
    from pfd_ase.training.stages import pretrain as run_pretrain

    datasets = {}
    for item in dataset:
        head, _, path = item.partition("=")
        if not path:
            _fail(ValueError(f"--dataset expects HEAD=FILE, got {item!r}"))
        datasets[head] = read_frames(path)
    result = run_pretrain(datasets, workdir, steps=steps)
    _echo_json({"checkpoint": str(result.checkpoint), **result.info})


@app.command()
def finetune(
    base_model: Annotated[str, typer.Argument(help="pre-trained .pt checkpoint or registry name")],
    frames: Annotated[Path, typer.Argument(help="extxyz of labelled frames")],
    workdir: Annotated[Path, typer.Option(help="training folder")],
    model_branch: Annotated[str | None, typer.Option(help="head to reuse; RANDOM = new")] = None,
    steps: Annotated[int, typer.Option(help="training steps")] = 20000,
) -> None:
    """Fine-tune a pre-trained deepmd-kit model on labelled frames and freeze it."""
    from pfd_ase.data import read_frames
    from pfd_ase.training.stages import finetune as run_finetune

    try:
        result = run_finetune(
            base_model, read_frames(frames), workdir, head=model_branch, steps=steps
        )
    except (ValueError, RuntimeError) as exc:
        _fail(exc)
    _echo_json({"model": str(result.model), "checkpoint": str(result.checkpoint)})


@app.command()
def student(
    frames: Annotated[Path, typer.Argument(help="extxyz of teacher-labelled frames")],
    workdir: Annotated[Path, typer.Option(help="training folder")],
    steps: Annotated[int, typer.Option(help="training steps")] = 100000,
    compress: Annotated[bool, typer.Option(help="dp compress the frozen model")] = True,
) -> None:
    """Train the distilled student (se_atten_v2, attn_layer 0, rcut 6.5 Å)."""
    from pfd_ase.data import read_frames
    from pfd_ase.training.stages import train_student

    result = train_student(read_frames(frames), workdir, steps=steps, compress=compress)
    _echo_json({"model": str(result.model), "compressed": result.compressed, **result.info})


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="model file (or 'chgnet')")],
    frames: Annotated[Path, typer.Argument(help="extxyz of labelled frames")],
    head: Annotated[str | None, typer.Option(help="branch of a multi-task model")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a parity plot (PNG)")] = None,
) -> None:
    """Energy, force and virial errors of MODEL on labelled frames."""
    from pfd_ase.data import read_frames
    from pfd_ase.training.evaluate import evaluate as run_evaluate
    from pfd_ase.training.evaluate import parity_plot

    data = read_frames(frames)
    result = run_evaluate(model, data, head=head, return_predictions=plot is not None)
    if plot is not None:
        parity_plot(data, result, plot)
    _echo_json({k: v for k, v in result.items() if k not in ("frames", "predictions")})


def main() -> None:  # pragma: no cover - console script
    app()


if __name__ == "__main__":  # pragma: no cover
    app()

"""``pfd-ase``: the command-line interface (typer).

``pfd-ase run CONFIG`` runs (or resumes) a whole workflow described by a YAML file;
``pfd-ase config`` prints every configuration key with its default and unit, and the
repository's ``examples/`` folder holds complete configurations. The other commands run one
stage on files: ``select``, ``label``, ``pretrain``, ``finetune``, ``student``, ``evaluate``.

Every command checks its inputs (files, names, numbers, labeler settings) before it starts
any calculation; a bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

# click's exception base for usage errors (typer vendors click in its newer versions)
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _one_line(exc: BaseException | str) -> str:
    """The message of ``exc`` on one line.

    A YAML parse error (the cause of a configuration error) becomes its problem and
    position; other multi-line messages (a subprocess's log tail) keep their first and
    last lines.
    """
    text = str(exc)
    cause = getattr(exc, "__cause__", None)
    if cause is not None and str(cause) and str(cause) in text:
        import yaml

        if isinstance(cause, yaml.MarkedYAMLError):
            text = text.replace(str(cause), _yaml_problem(cause))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 3:
        return f"{lines[0]} [...] {lines[-1]}"
    return " ".join(lines)


def _yaml_problem(exc) -> str:
    """'while parsing X at line 1, column 17: expected Y at line 2, column 1'."""
    parts = []
    for what, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
        if what:
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            parts.append(f"{what}{where}")
    return ": ".join(parts) or type(exc).__name__


def _fail(exc: Exception | str) -> None:
    typer.secho(f"error: {_one_line(exc)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@contextmanager
def _usage_errors_on_one_line() -> Iterator[None]:
    try:
        yield
    except _CLICK_EXCEPTION as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help text, shown as is
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = _one_line(exc.format_message()).rstrip(".")
        typer.secho(f"error: {message}{hint}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=exc.exit_code) from None


class _OneLineErrors(TyperGroup):
    """typer's group, with usage errors (a bad option value, a missing argument or file, an
    unknown command) on one ``error: ...`` line, as :func:`_fail` writes them, instead of a box."""

    def make_context(self, info_name, args, parent=None, **extra):
        with _usage_errors_on_one_line():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with _usage_errors_on_one_line():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_OneLineErrors,
    help=(
        "PFD machine-learning force fields: pre-train, fine-tune, distil (ASE + deepmd-kit).\n\n"
        "Start with `pfd-ase config > run.yaml` (every key, its default and unit) or a file "
        "from the repository's examples/ folder, then `pfd-ase validate run.yaml` and "
        "`pfd-ase run run.yaml`."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)

#: Help of the CONFIG argument of ``run`` and ``validate``.
CONFIG_HELP = (
    "workflow configuration, a YAML (or JSON) file: `pfd-ase config` prints every key with its "
    "default, unit and meaning; examples/*.yaml in the repository are complete ones"
)

_CONFIG_EPILOG = (
    "Only `structures` is required; every other key has a default. Start from "
    "`pfd-ase config > run.yaml` or copy a file from the repository's examples/ folder "
    "(silicon_quick.yaml is what `make demo` runs). Units are part of the key names "
    "(temperatures_K, timestep_fs, force_rmse_threshold_eV_A)."
)


def _echo_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _os_error(exc: OSError, action: str, path: Path) -> str:
    """'cannot write PATH: Not a directory (FILE)': what failed, why, and where if elsewhere."""
    elsewhere = exc.filename and Path(exc.filename).resolve() != path.resolve()
    where = f" ({exc.filename})" if elsewhere else ""
    return f"{action} {path}: {exc.strerror or exc}{where}"


def _version_callback(value: bool) -> None:
    if value:
        from pfd_ase import __version__

        typer.echo(f"pfd-ase {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="print the version"
        ),
    ] = False,
) -> None:
    from pfd_ase.allocator import tune_allocator

    tune_allocator()  # large model calls: keep freed memory (pfd_ase.allocator)


# an existing, readable file given as an argument or option
_EXISTING = {"exists": True, "dir_okay": False, "readable": True}


def _read_frames(path: Path, what: str = "frames", labelled: bool = False) -> list:
    """Frames of ``path``, or a clear error when it cannot be read or holds none.

    ``labelled``: every frame must carry an energy and forces (training and evaluation
    data); the first frame without them is named.
    """
    from pfd_ase.data import read_frames

    try:
        frames = read_frames(path)
    except Exception as exc:
        _fail(f"cannot read {what} from {path}: {exc}")
    if not frames:
        _fail(f"{path} holds no frames")
    if labelled:
        for i, atoms in enumerate(frames):
            results = atoms.calc.results if atoms.calc is not None else {}
            missing = [key for key in ("energy", "forces") if key not in results]
            if missing:
                _fail(
                    f"{path}: frame {i} has no {' and no '.join(missing)}; {what} must be "
                    "labelled (extxyz with energy= and forces, e.g. from `pfd-ase label`)"
                )
    return frames


# --------------------------------------------------------------------------- workflow


@app.command(epilog=_CONFIG_EPILOG)
def run(
    config: Annotated[Path, typer.Argument(help=CONFIG_HELP)],
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="label again the frames the labeler failed on (see `pfd-ase status`); "
            "finished tasks are reused",
        ),
    ] = False,
) -> None:
    """Run (or resume) the fine-tune and distillation loops described by CONFIG.

    The configuration is checked completely (keys, units, structures, base model, labeler
    set-up) before any work starts. Rerun the same command to resume an interrupted run.
    Only one run works in a run directory at a time: a second one stops with an error that
    names the first (PID, host, start time).

    Frames the labeler fails on (an SCF that does not converge, a crashed program, a task
    past `labeler.timeout_s`) are recorded with their cause and left out; `pfd-ase status`
    counts them. A rerun leaves them alone unless `--retry-failed` is given: then only those
    frames are labelled again, and the steps that depend on the new frames are redone.
    """
    from pfd_ase.workflow import ConfigError, load_config
    from pfd_ase.workflow import run as run_workflow
    from pfd_ase.workflow.lock import RunLockedError

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(exc)
    cfg["progress"] = progress and cfg["progress"]
    try:
        summary = run_workflow(cfg, retry_failed=retry_failed)
    except RunLockedError as exc:
        _fail(exc)
    _echo_json({k: summary.get(k) for k in ("teacher", "student", "validation", "finished")})


@app.command(epilog=_CONFIG_EPILOG)
def validate(config: Annotated[Path, typer.Argument(help=CONFIG_HELP)]):
    """Check CONFIG without running anything.

    Checks the keys, units and plausible ranges, the structures, the student's neighbour
    limit, the base model, the labeler (its settings built, nothing computed) and the run
    directory. Warnings (settings that run but probably not as meant) and the settings that
    differ from those of an existing run directory (a rerun redoes what depends on them)
    are printed on stderr.
    """
    import warnings

    from pfd_ase.workflow.config import ConfigError, ConfigWarning, load_config, workdir_changes

    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cfg = load_config(config)
        except ConfigError as exc:
            error = exc
    for warning in caught:
        if issubclass(warning.category, ConfigWarning):
            typer.secho(f"warning: {warning.message}", fg=typer.colors.YELLOW, err=True)
        else:  # another library's: as Python would have shown it
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    if error is not None:
        _fail(error)
    changed = workdir_changes(cfg)
    if changed:
        typer.echo(
            f"note: {cfg['workdir']} holds a run made with other settings ({', '.join(changed)});"
            " `pfd-ase run` redoes the steps that depend on them",
            err=True,
        )
    typer.echo(f"{config}: OK")


@app.command("config")
def config_(
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="write to this file instead of stdout")
    ] = None,
) -> None:
    """Print the full default configuration as YAML, every key commented with its unit.

    Every key is optional except `structures`: copy the output, keep what you change.
    """
    try:
        from pfd_ase.workflow.config import default_config_text
    except ImportError:
        _fail("this installation of pfd_ase cannot print its default configuration")
    text = default_config_text()
    if output is None:
        typer.echo(text, nl=not text.endswith("\n"))
    else:
        if output.exists():
            _fail(f"{output} exists; not overwritten")
        try:
            output.write_text(text)
        except OSError as exc:
            _fail(_os_error(exc, "cannot write", output))
        typer.echo(f"wrote {output}")


@app.command()
def status(run_dir: Annotated[Path, typer.Argument(help="run directory")]) -> None:
    """Show what a run directory holds: finished steps, dataset size, models, and the failed
    labelling tasks of each step with their causes (`labelling_failures`, `n_failed_tasks`;
    `pfd-ase run CONFIG --retry-failed` labels them again)."""
    from pfd_ase.workflow import run_status

    try:
        info = run_status(run_dir)
    except FileNotFoundError as exc:
        _fail(exc)
    except json.JSONDecodeError as exc:
        _fail(f"{run_dir / 'summary.json'} is damaged (not JSON: {exc})")
    except (OSError, ValueError) as exc:
        _fail(f"cannot read run directory {run_dir}: {exc}")
    _echo_json(info)


# --------------------------------------------------------------------------- one stage


@app.command()
def select(
    candidates: Annotated[Path, typer.Argument(help="extxyz of candidate frames", **_EXISTING)],
    output: Annotated[Path, typer.Option("--out", "-o", help="extxyz of the selected frames")],
    n: Annotated[int, typer.Option("-n", min=1, help="number of frames to select")] = 10,
    reference: Annotated[
        Path | None, typer.Option(help="extxyz of labelled frames", **_EXISTING)
    ] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="frames added per round")] = 1,
    method: Annotated[str, typer.Option(help="entropy or random")] = "entropy",
    seed: Annotated[int, typer.Option(help="seed of the random selector")] = 0,
) -> None:
    """Select the most informative frames (QUESTS entropy, Algorithm 1) or random ones."""
    from pfd_ase.data import write_frames
    from pfd_ase.selectors import EntropySelector, RandomSelector

    if method not in ("entropy", "random"):
        _fail(f"unknown method {method!r}: entropy or random")
    frames = _read_frames(candidates, "candidates")
    if n > len(frames):
        _fail(
            f"-n {n} asks for more frames than the {len(frames)} candidates in {candidates}: "
            f"pass -n {len(frames)} or fewer"
        )
    ref = _read_frames(reference, "reference frames") if reference else None
    if method == "entropy":
        selector = EntropySelector(n_target=n, chunk_size=chunk_size)
    else:
        selector = RandomSelector(n_target=n, seed=seed)
    idx = selector.select(frames, ref)
    try:
        write_frames(output, [frames[i] for i in idx])
    except OSError as exc:
        _fail(_os_error(exc, "cannot write", output))
    _echo_json({"selected": idx, "output": str(output)})


# YAML 1.1 (PyYAML) reads 1e-5 as a string; settings such as EDIFF need it as a number
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _yaml_value(text: str, where: str, block: bool = False) -> Any:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        _fail(f"{where}: {text!r} is not a YAML value: {problem}")
    if not block and isinstance(value, list | dict) and not text.lstrip().startswith(("[", "{")):
        return text.strip()  # "-" or "a: b" is meant as a string, not block YAML
    return _numbers(value)


def _numbers(value: Any) -> Any:
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def labeler_overrides(settings: list[str] | None, file: Path | None = None) -> dict[str, Any]:
    """Labeler settings from a YAML file (a mapping) and ``KEY=VALUE`` items (these win).

    Each VALUE is read as YAML: ``520`` is a number, ``1e-5`` too, ``false`` a boolean,
    ``null`` None, ``{name: pw, ecut: 400}`` a mapping, anything else a string. Raises
    ``typer.Exit`` with a clear message for a malformed item or file.
    """
    out: dict[str, Any] = {}
    if file is not None:
        try:
            text = file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            _fail(f"cannot read labeler settings from {file}: {exc}")
        value = _yaml_value(text, str(file), block=True)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            _fail(f"{file}: labeler settings must be a mapping (KEY: VALUE), not {value!r}")
        out.update({str(k): v for k, v in value.items()})
    for item in settings or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--set expects KEY=VALUE (e.g. --set encut=520), got {item!r}")
        out[key.strip()] = _yaml_value(text, f"--set {key.strip()}")
    return out


def _check_labeler_settings(name: str, overrides: dict[str, Any], frames: list) -> str:
    """Fail unless ``make_labeler(name, **overrides)`` builds for these frames' elements."""
    import tempfile

    from pfd_ase.calculators.labelers import KNOWN_LABELERS, check_labeler, make_labeler

    key = name.strip().lower()
    if key not in KNOWN_LABELERS:
        _fail(f"unknown labeler {name!r}; known: {', '.join(KNOWN_LABELERS)}")
    symbols = {s for atoms in frames for s in atoms.get_chemical_symbols()}
    try:
        check_labeler(key, symbols, overrides)
        with tempfile.TemporaryDirectory() as tmp:  # builds, computes nothing
            make_labeler(key, directory=tmp, **overrides)
    except Exception as exc:
        settings = f" with {overrides}" if overrides else ""
        _fail(f"labeler {key!r}{settings}: {type(exc).__name__}: {exc}")
    return key


@app.command()
def label(
    frames: Annotated[Path, typer.Argument(help="extxyz of frames to label", **_EXISTING)],
    workdir: Annotated[Path, typer.Option(help="one task folder per frame goes here")],
    output: Annotated[Path, typer.Option("--out", "-o", help="extxyz of labelled frames")],
    labeler: Annotated[
        str, typer.Option(help="vasp, gpaw, gpaw-lcao, xtb, chgnet, sw, tersoff, emt")
    ] = "gpaw",
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="labeler setting, repeatable; VALUE is read as YAML: --set encut=520 "
            "--set ediff=1e-6 --set 'command=mpirun -n 4 vasp_std' "
            "--set 'mode={name: pw, ecut: 400}'",
        ),
    ] = None,
    overrides: Annotated[
        Path | None,
        typer.Option(
            "--overrides",
            help="YAML file of labeler settings (KEY: VALUE, as labeler.overrides in a "
            "workflow config); --set items win",
            **_EXISTING,
        ),
    ] = None,
    retries: Annotated[int, typer.Option(min=0, help="extra attempts per failed frame")] = 0,
    timeout_s: Annotated[
        float | None,
        typer.Option(
            "--timeout-s",
            min=0.001,
            help="wall-time limit per frame (s); a frame past it is recorded as failed",
        ),
    ] = None,
) -> None:
    """Label frames with a DFT code or another reference calculator (resumable).

    The labeler starts from its defaults (VASP: the PFD supplement's PBE settings; GPAW:
    small plane-wave settings) and takes any of its keywords as overrides, as the
    `labeler.overrides` section of a workflow config does. The labeler is built once and
    checked (VASP command and POTCARs, unknown keywords) before the first calculation.
    """
    from pfd_ase.data import write_frames
    from pfd_ase.label import label_frames

    extra = labeler_overrides(settings, overrides)
    data = _read_frames(frames)
    name = _check_labeler_settings(labeler, extra, data)
    try:
        result = label_frames(data, (name, extra), workdir, retries=retries, timeout_s=timeout_s)
    except (ValueError, RuntimeError) as exc:
        _fail(exc)
    except OSError as exc:
        _fail(_os_error(exc, "cannot label in", workdir))
    try:
        write_frames(output, result.frames)
    except OSError as exc:
        _fail(_os_error(exc, "cannot write", output))
    _echo_json({"labelled": len(result.frames), "failed": result.failures, "out": str(output)})


@app.command()
def pretrain(
    dataset: Annotated[list[str], typer.Option(help="HEAD=FILE.extxyz (repeat per head)")],
    workdir: Annotated[Path, typer.Option(help="training folder")],
    steps: Annotated[int, typer.Option(min=1, help="training steps")] = 100000,
) -> None:
    """Multi-task pre-training: one fitting head per dataset, a shared DPA-2 descriptor."""
    from pfd_ase.training.stages import pretrain as run_pretrain

    paths = {}
    for item in dataset:
        head, _, path = item.partition("=")
        if not head or not path:
            _fail(f"--dataset expects HEAD=FILE, got {item!r}")
        if head in paths:
            _fail(f"--dataset: head {head!r} given twice")
        if not Path(path).is_file():
            _fail(f"--dataset {head}: file not found: {path}")
        paths[head] = Path(path)
    datasets = {
        head: _read_frames(path, f"dataset {head}", labelled=True) for head, path in paths.items()
    }
    try:
        result = run_pretrain(datasets, workdir, steps=steps)
    except (ValueError, RuntimeError) as exc:
        _fail(exc)
    except OSError as exc:
        _fail(_os_error(exc, "cannot train in", workdir))
    _echo_json({"checkpoint": str(result.checkpoint), **result.info})


@app.command()
def finetune(
    base_model: Annotated[str, typer.Argument(help="pre-trained .pt checkpoint or registry name")],
    frames: Annotated[Path, typer.Argument(help="extxyz of labelled frames", **_EXISTING)],
    workdir: Annotated[Path, typer.Option(help="training folder")],
    model_branch: Annotated[str | None, typer.Option(help="head to reuse; RANDOM = new")] = None,
    steps: Annotated[int, typer.Option(min=1, help="training steps")] = 20000,
) -> None:
    """Fine-tune a pre-trained deepmd-kit model on labelled frames and freeze it."""
    from pfd_ase.training.stages import finetune as run_finetune

    data = _read_frames(frames, "training frames", labelled=True)
    try:
        result = run_finetune(base_model, data, workdir, head=model_branch, steps=steps)
    except (ValueError, RuntimeError) as exc:
        _fail(exc)
    except OSError as exc:
        _fail(_os_error(exc, "cannot train in", workdir))
    _echo_json({"model": str(result.model), "checkpoint": str(result.checkpoint)})


@app.command()
def student(
    frames: Annotated[Path, typer.Argument(help="extxyz of teacher-labelled frames", **_EXISTING)],
    workdir: Annotated[Path, typer.Option(help="training folder")],
    steps: Annotated[int, typer.Option(min=1, help="training steps")] = 100000,
    compress: Annotated[bool, typer.Option(help="dp compress the frozen model")] = True,
) -> None:
    """Train the distilled student (se_atten_v2, attn_layer 0, rcut 6.5 Å)."""
    from pfd_ase.training.stages import train_student

    data = _read_frames(frames, "training frames", labelled=True)
    try:
        result = train_student(data, workdir, steps=steps, compress=compress)
    except (ValueError, RuntimeError) as exc:
        _fail(exc)
    except OSError as exc:
        _fail(_os_error(exc, "cannot train in", workdir))
    _echo_json({"model": str(result.model), "compressed": result.compressed, **result.info})


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="model file (or 'chgnet')")],
    frames: Annotated[Path, typer.Argument(help="extxyz of labelled frames", **_EXISTING)],
    head: Annotated[str | None, typer.Option(help="branch of a multi-task model")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a parity plot (PNG)")] = None,
) -> None:
    """Energy, force and virial errors of MODEL on labelled frames."""
    from pfd_ase.calculators import PFDCalculator
    from pfd_ase.training.evaluate import evaluate as run_evaluate
    from pfd_ase.training.evaluate import parity_plot

    data = _read_frames(frames, "reference frames", labelled=True)
    try:
        calc = PFDCalculator(model, head=head)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as exc:
        _fail(exc)  # no such model or head, a damaged file, offline, deepmd-kit missing
    try:
        result = run_evaluate(calc, data, return_predictions=plot is not None)
    except ValueError as exc:  # an element the model lacks
        _fail(exc)
    if plot is not None:
        try:
            parity_plot(data, result, plot)
        except OSError as exc:
            _fail(_os_error(exc, "cannot write", plot))
    _echo_json({k: v for k, v in result.items() if k not in ("frames", "predictions")})


if __name__ == "__main__":  # pragma: no cover
    app()

"""The pfd-ase command line: every subcommand's --help, and the cheap commands for real."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pfd_ase.cli import app
from pfd_ase.data import read_frames, write_frames

from conftest import emt_frames, requires_deepmd

runner = CliRunner()
COMMANDS = [
    "run",
    "validate",
    "config",
    "status",
    "select",
    "label",
    "pretrain",
    "finetune",
    "student",
    "evaluate",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "pfd_ase.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in COMMANDS:
        assert command in out.stdout


def test_select_label_status(tmp_path):
    frames = emt_frames(8, seed=0)
    write_frames(tmp_path / "cand.extxyz", frames)
    result = runner.invoke(
        app,
        ["select", str(tmp_path / "cand.extxyz"), "-n", "3", "--out", str(tmp_path / "s.extxyz")],
    )
    assert result.exit_code == 0, result.output
    chosen = json.loads(result.output)["selected"]
    assert len(chosen) == len(set(chosen)) == 3
    assert len(read_frames(tmp_path / "s.extxyz")) == 3

    result = runner.invoke(
        app,
        [
            "label",
            str(tmp_path / "s.extxyz"),
            "--labeler",
            "emt",
            "--workdir",
            str(tmp_path / "lab"),
            "--out",
            str(tmp_path / "l.extxyz"),
        ],
    )
    assert result.exit_code == 0, result.output
    labelled = read_frames(tmp_path / "l.extxyz")
    assert {a.info["pfd_labeler"] for a in labelled} == {"emt"}

    result = runner.invoke(app, ["status", str(tmp_path)])
    assert result.exit_code == 2 and "not a pfd_ase run directory" in result.output


def test_validate_reports_config_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("structures: {}\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "at least one named structure" in result.output
    path.write_text("temprature_K: 300\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "unknown key 'temprature_K'" in result.output


def _text(result) -> str:
    """The output as one line: typer's error boxes wrap long messages."""
    return " ".join(result.output.replace("│", " ").split())


def _has_default_config_text() -> bool:
    from pfd_ase.workflow import config

    return hasattr(config, "default_config_text")


def test_version():
    from pfd_ase import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"pfd-ase {__version__}"


@pytest.mark.parametrize("command", ["run", "validate"])
def test_config_help_points_to_the_schema_and_examples(command):
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = _text(result)
    assert "pfd-ase config" in text and "examples/" in text and "YAML" in text


@pytest.mark.skipif(
    not _has_default_config_text(),
    reason="pfd_ase.workflow.config.default_config_text() is not there yet (another change)",
)
def test_config_prints_the_default_config(tmp_path):
    import yaml

    from pfd_ase.workflow.config import DEFAULTS

    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    assert "#" in result.output  # commented
    data = yaml.safe_load(result.output)
    assert set(DEFAULTS) <= set(data)
    out = tmp_path / "run.yaml"
    assert runner.invoke(app, ["config", "--out", str(out)]).exit_code == 0
    assert out.read_text() == result.output
    again = runner.invoke(app, ["config", "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.output


def test_config_without_renderer_is_a_clear_error(monkeypatch):
    from pfd_ase.workflow import config

    monkeypatch.delattr(config, "default_config_text", raising=False)
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2 and "cannot print its default configuration" in result.output


def test_labeler_overrides_parse_yaml_values(tmp_path):
    from pfd_ase.cli import labeler_overrides

    path = tmp_path / "ov.yaml"
    path.write_text("encut: 600\nediff: 1e-6\nlreal: Auto\n")
    got = labeler_overrides(
        [
            "encut=520",
            "kgamma=true",
            "setups=null",
            "command=mpirun -n 4 vasp_std",
            "mode={name: pw, ecut: 400}",
            "kpts=[2, 2, 2]",
            "txt=-",
            "sigma=5e-2",
        ],
        path,
    )
    assert got == {
        "encut": 520,  # --set wins over the file
        "ediff": 1e-6,  # a number, although YAML 1.1 reads 1e-6 as a string
        "lreal": "Auto",
        "kgamma": True,
        "setups": None,
        "command": "mpirun -n 4 vasp_std",
        "mode": {"name": "pw", "ecut": 400},
        "kpts": [2, 2, 2],
        "txt": "-",
        "sigma": 0.05,
    }


def test_label_with_overrides(tmp_path):
    from ase.build import bulk

    write_frames(tmp_path / "si.extxyz", [bulk("Si", "diamond", a=5.43, cubic=True)])
    (tmp_path / "sw.yaml").write_text("parameters: Stillinger_Weber_PRB_31_5262_Si\n")
    args = ["label", str(tmp_path / "si.extxyz"), "--labeler", "sw"]
    args += ["--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "l.extxyz")]
    result = runner.invoke(app, [*args, "--overrides", str(tmp_path / "sw.yaml")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["labelled"] == 1
    (labelled,) = read_frames(tmp_path / "l.extxyz")
    assert labelled.info["pfd_labeler"] == "sw"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--labeler", "vaspp"], "unknown labeler 'vaspp'"),
        (["--labeler", "sw", "--set", "cutoff=3"], "unknown settings ['cutoff']"),
        (["--labeler", "sw", "--set", "parameters"], "--set expects KEY=VALUE"),
        (["--labeler", "sw", "--set", "parameters={a: 1"], "is not a YAML value"),
        (["--labeler", "emt", "--retries", "-1"], "greater than or equal to 0"),
    ],
)
def test_label_rejects_bad_input_before_work(tmp_path, extra, message):
    from ase.build import bulk

    write_frames(tmp_path / "si.extxyz", [bulk("Si", "diamond", a=5.43, cubic=True)])
    args = ["label", str(tmp_path / "si.extxyz")]
    args += ["--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "l.extxyz")]
    result = runner.invoke(app, [*args, *extra], terminal_width=200)
    assert result.exit_code == 2, result.output
    assert message in _text(result)
    assert not (tmp_path / "w").exists() and not (tmp_path / "l.extxyz").exists()


def test_vasp_labeler_setup_is_checked_before_work(tmp_path, monkeypatch):
    from ase.build import bulk

    for env in ("ASE_VASP_COMMAND", "VASP_COMMAND", "VASP_SCRIPT", "VASP_PP_PATH"):
        monkeypatch.delenv(env, raising=False)
    write_frames(tmp_path / "si.extxyz", [bulk("Si", "diamond", a=5.43, cubic=True)])
    args = ["label", str(tmp_path / "si.extxyz"), "--labeler", "vasp", "--set", "encut=520"]
    args += ["--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "l.extxyz")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "VASP" in result.output
    assert not (tmp_path / "w").exists()


def test_missing_or_empty_inputs_are_clear_errors(tmp_path):
    missing = str(tmp_path / "missing.extxyz")
    for args in (
        ["label", missing, "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "o")],
        ["select", missing, "--out", str(tmp_path / "o")],
        ["student", missing, "--workdir", str(tmp_path / "w")],
        ["evaluate", "chgnet", missing],
        ["finetune", "base.pt", missing, "--workdir", str(tmp_path / "w")],
    ):
        result = runner.invoke(app, args, terminal_width=200)
        assert result.exit_code == 2, (args, result.output)
        assert "does not exist" in _text(result), (args, result.output)
    (tmp_path / "empty.extxyz").write_text("")
    result = runner.invoke(app, ["select", str(tmp_path / "empty.extxyz"), "--out", "o.extxyz"])
    assert result.exit_code == 2 and "holds no frames" in result.output
    result = runner.invoke(
        app, ["select", str(tmp_path / "empty.extxyz"), "--out", "o", "--method", "best"]
    )
    assert result.exit_code == 2 and "unknown method 'best'" in result.output
    result = runner.invoke(
        app, ["pretrain", "--dataset", f"si={missing}", "--workdir", str(tmp_path / "w")]
    )
    assert result.exit_code == 2 and "file not found" in result.output
    result = runner.invoke(app, ["pretrain", "--dataset", "si", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "HEAD=FILE" in result.output


def test_no_dead_entry_point():
    import pfd_ase.cli

    assert not hasattr(pfd_ase.cli, "main")  # the console script is pfd_ase.cli:app


# --------------------------------------------------------------------------- one-line errors
def assert_one_error_line(result, *names: str) -> str:
    """Exit status 2, stderr exactly one ``error: ...`` line naming ``names``, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "╭" not in result.output, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def _labelled(path):
    write_frames(path, emt_frames(2, seed=0))
    return str(path)


def _unlabelled(path):
    from ase.build import bulk

    write_frames(path, [bulk("Cu", "fcc", a=3.6, cubic=True)] * 2)
    return str(path)


def test_usage_errors_are_one_line(tmp_path):
    """click's usage errors (typer draws them in a box) are one line, as every other error."""
    cand = _labelled(tmp_path / "cand.extxyz")
    out = str(tmp_path / "o.extxyz")
    line = assert_one_error_line(runner.invoke(app, ["select", cand, "-o", out, "-n", "0"]), "-n")
    assert "select --help" in line
    assert_one_error_line(runner.invoke(app, ["select", cand, "-o", out, "-n", "x"]), "-n")
    missing = str(tmp_path / "missing.extxyz")
    assert_one_error_line(runner.invoke(app, ["select", missing, "-o", out]), missing)
    assert_one_error_line(runner.invoke(app, ["evaluate"]), "Missing argument")
    assert_one_error_line(runner.invoke(app, ["selekt"]), "No such command 'selekt'")
    assert_one_error_line(runner.invoke(app, ["--bogus"]), "--bogus")
    assert not (tmp_path / "o.extxyz").exists()


def test_malformed_yaml_is_one_line(tmp_path):
    """PyYAML's five-line message (source line, caret) becomes its problem and position."""
    path = tmp_path / "run.yaml"
    path.write_text("structures: {a: [1\n")
    for command in ("validate", "run"):
        line = assert_one_error_line(runner.invoke(app, [command, str(path)]), str(path))
        assert "cannot parse" in line and "line 1, column 17" in line


def test_bad_output_paths_are_one_line(tmp_path):
    """A file where a folder should be: the OSError is one line naming both."""
    frames = _labelled(tmp_path / "frames.extxyz")
    blocked = tmp_path / "frames.extxyz" / "out.extxyz"  # a path under a file
    result = runner.invoke(app, ["select", frames, "-n", "1", "-o", str(blocked)])
    assert_one_error_line(result, f"cannot write {blocked}", frames)
    args = ["label", frames, "--labeler", "emt", "--workdir", frames, "-o", str(tmp_path / "l")]
    assert_one_error_line(runner.invoke(app, args), f"cannot label in {frames}")
    result = runner.invoke(app, ["config", "--out", str(tmp_path / "no" / "run.yaml")])
    assert_one_error_line(result, str(tmp_path / "no" / "run.yaml"))


def test_status_of_a_missing_or_damaged_run_dir(tmp_path):
    missing = tmp_path / "nothing"
    assert_one_error_line(runner.invoke(app, ["status", str(missing)]), str(missing))
    (tmp_path / "summary.json").write_text("{not json")
    result = runner.invoke(app, ["status", str(tmp_path)])
    assert_one_error_line(result, str(tmp_path / "summary.json"), "damaged")


def test_labeler_settings_file_not_text(tmp_path):
    frames = _labelled(tmp_path / "frames.extxyz")
    (tmp_path / "ov.bin").write_bytes(b"\x8f\xff\x00")
    args = ["label", frames, "--labeler", "sw", "--overrides", str(tmp_path / "ov.bin")]
    args += ["--workdir", str(tmp_path / "w"), "-o", str(tmp_path / "l.extxyz")]
    assert_one_error_line(runner.invoke(app, args), str(tmp_path / "ov.bin"))
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("model", "content", "message"),
    [
        ("model.pt", "not a model\n", "cannot read deepmd-kit checkpoint"),
        ("model.pth.tar", "not a model\n", "cannot read CHGNet checkpoint"),
        ("missing.pth", None, "model file not found"),
        ("CHGNet-9.9", None, "no pre-trained CHGNet named 'CHGNet-9.9'"),
    ],
)
def test_evaluate_bad_model_is_one_line(tmp_path, model, content, message):
    frames = _labelled(tmp_path / "frames.extxyz")
    if content is not None or model.endswith(".pth"):
        model = str(tmp_path / model)
    if content is not None:
        Path(model).write_text(content)
    assert_one_error_line(runner.invoke(app, ["evaluate", model, frames]), message, model)


@requires_deepmd
def test_damaged_frozen_model_is_one_line(tmp_path):
    """A text file named model.pth: torch's 100-line traceback before; now one line, and
    ``finetune`` says so before deepmd-kit starts (no training folder)."""
    frames = _labelled(tmp_path / "frames.extxyz")
    model = tmp_path / "model.pth"
    model.write_text("not a model\n")
    result = runner.invoke(app, ["evaluate", str(model), frames])
    assert_one_error_line(result, f"cannot read frozen deepmd-kit model {model}", "damaged")
    result = runner.invoke(app, ["finetune", str(model), frames, "--workdir", str(tmp_path / "w")])
    assert_one_error_line(result, f"cannot read frozen deepmd-kit model {model}")
    assert not (tmp_path / "w").exists()


def test_finetune_of_chgnet_is_one_line(tmp_path):
    frames = _labelled(tmp_path / "frames.extxyz")
    result = runner.invoke(app, ["finetune", "chgnet", frames, "--workdir", str(tmp_path / "w")])
    assert_one_error_line(result, "'chgnet' is not a deepmd-kit model", "finetune_chgnet")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", ["evaluate", "student", "finetune", "pretrain"])
def test_frames_without_energies_are_one_line(tmp_path, command):
    frames = _unlabelled(tmp_path / "frames.extxyz")
    work = str(tmp_path / "w")
    args = {
        "evaluate": ["evaluate", "chgnet", frames],
        "student": ["student", frames, "--workdir", work],
        "finetune": ["finetune", "base.pt", frames, "--workdir", work],
        "pretrain": ["pretrain", "--dataset", f"cu={frames}", "--workdir", work],
    }[command]
    assert_one_error_line(runner.invoke(app, args), f"{frames}: frame 0 has no energy")
    assert not (tmp_path / "w").exists()


# --------------------------------------------------------------------------- advisory log lines
ADVISORIES = {
    "torch._library.triton": "Triton not available, find_triton_kernels = []",
    "deepmd.env": "To get the best performance, it is recommended to adjust the number of "
    "threads by setting the environment variables OMP_NUM_THREADS, ...",
    "deepmd.utils.batch_size": "You can use the environment variable DP_INFER_BATCH_SIZE "
    "tocontrol the inference batch size (nframes * natoms). The default value is 1024.",
}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def advisory_handlers():
    """A record-keeping handler on each logger that emits a load advisory."""
    handlers = {name: _Records() for name in ADVISORIES}
    for name, handler in handlers.items():
        logging.getLogger(name).addHandler(handler)
    yield handlers
    for name, handler in handlers.items():
        logging.getLogger(name).removeHandler(handler)


def test_quiet_model_load_drops_only_the_advisories(advisory_handlers):
    from pfd_ase.calculators.backends import quiet_model_load

    with quiet_model_load():
        for name, message in ADVISORIES.items():
            logging.getLogger(name).warning(message)
            logging.getLogger(name).warning("something else")
    for handler in advisory_handlers.values():
        assert [r.getMessage() for r in handler.records] == ["something else"]
    for name, message in ADVISORIES.items():  # the filters are gone afterwards
        logging.getLogger(name).warning(message)
        assert advisory_handlers[name].records[-1].getMessage() == message


def test_loading_a_deepmd_model_twice_shows_no_advisory(tmp_path, monkeypatch, advisory_handlers):
    """PFDCalculator loads through deepmd-kit's DeepPot, here a stand-in that logs what
    deepmd-kit and torch log at a load (torch's Triton line nine times)."""
    import types

    loads = []

    class DeepPot:
        def __init__(self, path, **kwargs):
            loads.append(path)
            for _ in range(9):
                logging.getLogger("torch._library.triton").warning(
                    ADVISORIES["torch._library.triton"]
                )
            for name in ("deepmd.env", "deepmd.utils.batch_size"):
                logging.getLogger(name).warning(ADVISORIES[name])
            self.deep_eval = types.SimpleNamespace(dp=types.SimpleNamespace(model={"Default": 0}))

        def get_type_map(self):
            return ["Cu"]

    monkeypatch.setitem(sys.modules, "deepmd.infer", types.SimpleNamespace(DeepPot=DeepPot))
    from pfd_ase.calculators import PFDCalculator

    model = tmp_path / "model.pth"
    model.write_text("a stand-in\n")
    for _ in range(2):
        assert PFDCalculator(str(model)).type_map == ["Cu"]
    assert len(loads) == 2
    assert not [r for h in advisory_handlers.values() for r in h.records]

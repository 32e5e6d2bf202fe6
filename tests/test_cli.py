"""The pfd-ase command line: every subcommand's --help, and the cheap commands for real."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pfd_ase.cli import app
from pfd_ase.data import read_frames, write_frames

from conftest import emt_frames

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

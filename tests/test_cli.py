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

"""pfd_ase.allocator: freed large blocks stay in the process (no page faults on reuse)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
import torch
from pfd_ase.allocator import tune_allocator
tuned = tune_allocator() if sys.argv[1] == "tune" else False
faults = []
for _ in range(16):  # a model call's pattern: a large tensor made, used and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(2**24, dtype=torch.float64)  # 128 MB: glibc would mmap it
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del a
print(tuned, max(faults[-4:]))
"""


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that changes glibc's allocator."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")
    }
    env.pop("PFD_TUNE_ALLOCATOR", None)
    return {**env, **extra}


def _faults(mode: str, env: dict[str, str]) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    pytest.importorskip("torch")  # its CPU tensors come from glibc's malloc
    from pfd_ase.allocator import ALLOCATOR_ENV

    tuned, with_tuning = _faults("tune", _clean_env())
    _, without = _faults("plain", _clean_env())
    _, with_env = _faults("plain", _clean_env(**ALLOCATOR_ENV))  # the child-process form
    opted_out, _ = _faults("tune", _clean_env(PFD_TUNE_ALLOCATOR="0"))
    assert tuned == "True" and opted_out == "False"
    assert without > 20000  # 128 MB mapped anew every time: 32768 pages of 4 kB
    assert with_tuning < 1000  # the freed pages reused
    assert with_env < 1000


def test_entry_points_tune_the_allocator(monkeypatch, tmp_path):
    """The pfd-ase command and the recipes' command lines call tune_allocator."""
    from typer.testing import CliRunner

    import pfd_ase.allocator
    from pfd_ase.cli import app
    from pfd_ase.recipes._base import recipe_main

    calls = []
    monkeypatch.setattr(pfd_ase.allocator, "tune_allocator", lambda: calls.append(1))
    CliRunner().invoke(app, ["status", str(tmp_path)])
    assert calls == [1]
    recipe_main("x", None, lambda **kw: {"ok": True}, ("ok",), ["--workdir", str(tmp_path)])
    assert calls == [1, 1]

"""pfd_ase.allocator: freed large blocks stay in the process (no page faults on reuse)."""

from __future__ import annotations

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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    pytest.importorskip("torch")  # its CPU tensors come from glibc's malloc

    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
        ).stdout.split()
        return out[0], int(out[1])

    tuned, with_tuning = faults("tune")
    _, without = faults("plain")
    assert tuned == "True"
    assert without > 20000  # 128 MB mapped anew every time: 32768 pages of 4 kB
    assert with_tuning < 1000  # the freed pages reused


def test_environment_form_matches_the_call():
    from pfd_ase.allocator import ALLOCATOR_ENV

    assert ALLOCATOR_ENV["MALLOC_MMAP_MAX_"] == "0"
    assert int(ALLOCATOR_ENV["MALLOC_TRIM_THRESHOLD_"]) >= 2**30

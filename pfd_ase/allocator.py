"""Keep freed memory in the process: the cheap way to run models on large cells on Linux.

A model call on thousands of atoms allocates and frees tensors of tens to hundreds of MB.
glibc's ``malloc`` serves such blocks with ``mmap`` and returns them to the kernel at
``free``, so every call maps them again and the kernel zeroes every page anew: on the
2-core test machine, half or more of a 4096-atom student call was kernel time (minor page
faults). Keeping large blocks in the heap (``M_MMAP_MAX = 0``) and not trimming it (a high
``M_TRIM_THRESHOLD``) removes that: the compressed Si student costs 188 instead of 337
µs/atom at 4096 atoms, for LAMMPS's ``pair_style deepmd`` alike; the peak memory stays
about the same (2.7 against 2.6 GB), but the process keeps it until it exits.

Nothing here runs on import. :func:`tune_allocator` changes the settings of the running
process (the ``pfd-ase`` command, every recipe's command line and the workers of
``executor: {kind: process}`` call it; ``PFD_TUNE_ALLOCATOR=0`` turns it off);
:data:`ALLOCATOR_ENV` holds the same settings as glibc environment variables, for a child
process started from here (LAMMPS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["ALLOCATOR_ENV", "OPT_OUT_VARIABLE", "tune_allocator"]

#: glibc's ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
#: Trim threshold (bytes): 2 GiB - 1 (``mallopt`` takes an ``int``).
_TRIM_THRESHOLD_BYTES = 2**31 - 1
#: The heap grows by at least this much at a time (bytes).
_TOP_PAD_BYTES = 256 * 2**20
#: Set to ``0`` to leave the allocator alone (the test suite does).
OPT_OUT_VARIABLE = "PFD_TUNE_ALLOCATOR"

#: The same settings as environment variables, read by glibc when a process starts.
ALLOCATOR_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(_TRIM_THRESHOLD_BYTES),
    "MALLOC_TOP_PAD_": str(_TOP_PAD_BYTES),
}


def tune_allocator() -> bool:
    """Keep large freed blocks in this process's heap (glibc ``mallopt``).

    Returns
    -------
    bool
        True when every setting was applied; False where the C library is not glibc
        (macOS, musl, Windows: nothing is changed there), when ``PFD_TUNE_ALLOCATOR=0``
        (nothing is changed), or when glibc refused a setting (the others stay applied).
    """
    if os.environ.get(OPT_OUT_VARIABLE, "").strip() == "0":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = [
        mallopt(_M_MMAP_MAX, 0),
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES),
        mallopt(_M_TOP_PAD, _TOP_PAD_BYTES),
    ]
    return all(r == 1 for r in done)

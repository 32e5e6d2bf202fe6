#!/usr/bin/env bash
# Create (or re-check) the project virtual environment in .venv.
#
# Every step is checked before it is (re)done, so a built venv is re-verified in
# seconds. Works on a fresh 2-core machine with no GPU and access to PyPI and
# Debian's package archive only.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${PFD_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
DEEPMD_VERSION=3.2.0
CONSTRAINTS="$PWD/scripts/constraints.txt"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

# --- system packages (GPAW needs libxc and a BLAS) -----------------------------
if ! dpkg -s libxc-dev libopenblas-dev >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    log "apt-get install libxc-dev libopenblas-dev"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libxc-dev libopenblas-dev >/dev/null
fi

# --- venv ---------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q -c "$CONSTRAINTS")

has_version() {  # has_version DIST VERSION
    "$PY" - "$1" "$2" <<'PYEOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
sys.exit(0 if version(sys.argv[1]).split("+")[0] == sys.argv[2] else 1)
PYEOF
}

# 1. torch, CPU build that lies on disk (an unpinned torch pulls a CUDA build)
if ! has_version torch "$TORCH_VERSION"; then
    log "installing torch==$TORCH_VERSION"
    "${PIP[@]}" "torch==$TORCH_VERSION"
fi

# 2+3. deepmd-kit from source against this torch (the wheel is built for another
# torch and refuses to import; without the custom ops `dp compress` fails).
if ! OMP_NUM_THREADS=1 "$PY" -c "from deepmd.pt.cxx_op import ENABLE_CUSTOMIZED_OP as ok; assert ok" >/dev/null 2>&1; then
    log "building deepmd-kit==$DEEPMD_VERSION from source (about 3 minutes)"
    "${PIP[@]}" scikit-build-core packaging dependency_groups cmake ninja setuptools_scm \
        hatch-fancy-pypi-readme setuptools wheel
    DP_ENABLE_TENSORFLOW=0 DP_ENABLE_PADDLE=0 DP_ENABLE_PYTORCH=1 DP_VARIANT=cpu \
        CMAKE_BUILD_PARALLEL_LEVEL=2 \
        "${PIP[@]}" --no-cache-dir --no-binary deepmd-kit --no-build-isolation "deepmd-kit==$DEEPMD_VERSION"
fi

# 4. e3nn (imported by deepmd at training time) and CHGNet (offline base model)
if ! has_version chgnet 0.4.2 || ! "$PY" -c "import e3nn" >/dev/null 2>&1; then
    log "installing e3nn, chgnet"
    "${PIP[@]}" e3nn chgnet==0.4.2
fi

# 5. GPAW: serial, BLAS-linked build on every machine (see shared facts)
if ! OPENBLAS_NUM_THREADS=1 "$PY" -c "import _gpaw, gpaw_data" >/dev/null 2>&1; then
    log "building GPAW"
    cfg=$(mktemp -d)/siteconfig.py
    cat > "$cfg" <<'CFG'
mpi = False
compiler = 'g++'
libraries += ['blas']
CFG
    GPAW_CONFIG="$cfg" CC=g++ "${PIP[@]}" --no-cache-dir gpaw gpaw-data
fi

# 6. everything else, then the package itself (editable)
"${PIP[@]}" -e ".[all,dev]"
log "environment ready: $VENV"

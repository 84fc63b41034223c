#!/usr/bin/env bash
# Installs everything seqpatchcore needs on a fresh Debian machine and builds it; running it
# again only does what is missing.
#
#   bash scripts/setup.sh            # Debian packages, .venv with torch 2.13.0, the package
#
# Environment: SEQPATCHCORE_VENV (default: <repo>/.venv), PYTHON (default: python3).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SEQPATCHCORE_VENV:-$root/.venv}
python=${PYTHON:-python3}

say() { printf '[setup] %s\n' "$*" >&2; }

# 1. C++ toolchain and libraries from Debian.
packages=(cmake ninja-build g++ pkg-config libopencv-dev libyaml-cpp-dev libfmt-dev libgtest-dev)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
    || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -q "${missing[@]}" >/dev/null; then
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q "${missing[@]}" >/dev/null
  fi
fi

# 2. A virtual environment with the CPU build of torch 2.13.0 (a CUDA build also works).
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  say "installing torch 2.13.0"
  "${pip[@]}" "torch==2.13.0"
fi
"$venv/bin/python" -c "import setuptools, wheel; assert int(setuptools.__version__.split('.')[0]) >= 70" \
  2>/dev/null || "${pip[@]}" "setuptools>=70" wheel

# 3. The package itself, built against that torch (never in an isolated environment, which
#    would fetch another torch), with its Python dependencies and the test tools.
say "building seqpatchcore (C++ core, bindings, GoogleTest binaries)"
"${pip[@]}" --no-build-isolation -e "$root[test]"
say "ready: source $venv/bin/activate"

#!/usr/bin/env bash
# The test command: set-up, then the GoogleTest binaries (ctest) and the Python tests.
#   bash scripts/test.sh [extra pytest arguments]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
venv=${SEQPATCHCORE_VENV:-$root/.venv}
python="$venv/bin/python"

tag=$("$python" -c 'import sys; print(f"py{sys.version_info.major}{sys.version_info.minor}")')
build=${SEQPATCHCORE_BUILD_DIR:-$root/build/cmake-$tag}

echo "== C++ tests (ctest in $build)"
ctest --test-dir "$build" --output-on-failure -j 2

echo "== Python tests"
cd "$root"
"$python" -m pytest tests/python -q "$@"

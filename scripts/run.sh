#!/usr/bin/env bash
# The main job: set-up, then fit, threshold and evaluate on the real magnetic-tile images.
#   bash scripts/run.sh [config] [seqpatchcore run options]
# Default config: configs/magnetic_tile.yaml; results in runs/<name>/.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
venv=${SEQPATCHCORE_VENV:-$root/.venv}

config=${1:-$root/configs/magnetic_tile.yaml}
shift || true
exec "$venv/bin/seqpatchcore" run "$config" "$@"

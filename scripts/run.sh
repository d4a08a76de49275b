#!/usr/bin/env bash
# The README's main command: installs what is missing (scripts/install-deps.sh),
# builds (scripts/build.sh), then
#   1. shows the compiler on the model (scripts/compile-demo.sh: import into
#      the `llm` dialect, compile for tp=2, print the partitioned @decode),
#   2. starts the local mesh on loopback (scripts/mesh.sh: compiler service,
#      scheduler with the OpenAI API, workers) serving the model, prints the
#      endpoint and a curl line, and runs until Ctrl-C stops everything.
# Usage: scripts/run.sh [MODEL_DIR]   (default: models/demo-llama-4m)
# Extra arguments go to scripts/mesh.sh, e.g. scripts/run.sh models/x --port 9000.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${1:-$root/models/demo-llama-4m}"
shift || true
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" >/dev/null
"$root/scripts/compile-demo.sh" "$model"
exec "$root/scripts/mesh.sh" --model "$model" "$@"

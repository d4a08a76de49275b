#!/usr/bin/env bash
# Served end to end on one GPU: the local mesh (scripts/mesh.sh --device cuda
# --tp 1) on MODEL, llmir-bench at concurrency 1 against it (greedy,
# OUTPUT_LEN new tokens, ignore-eos), and the shard worker's own decode step
# time (llmir:worker_step_seconds{phase="decode"}, the engine's step as the
# worker times it) from its /metrics. Prints both and their ratio: what the
# scheduler, sampling and streaming add per token.
#
#   bench/gpu/served.sh [MODEL_DIR]     (default: the demo model)
#
# DEVICE=cpu runs the same on the CPU; CHAIN_DECODE=false turns the
# scheduler's chained decodes off (docs/services.md) for an A/B, and
# PIPELINE_DECODES=off|auto|on the worker's decodes launched behind the
# running one (worker.pipeline-decodes; auto, the default: with CUDA, behind
# a scheduler chaining two decodes or decodes of 0.25 ms or more); and
# CHAIN_DEPTH=N the scheduler's chained decodes queued behind a sequence's
# step in flight (chain-depth, default 2). TEMPERATURE (default 0, greedy)
# and TOP_P (default 1) set the measured requests' sampling; the OpenAI API's
# own default is temperature 1. EXTRA_BODY (a JSON object) goes into every
# measured request, e.g. '{"presence_penalty": 0.5}'.
# Binaries from ${LLMIR_BUILD_DIR:-build}/bin. A checkpoint without a
# tokenizer (bench/gpu's random ones) gets the demo model's, grown to the
# checkpoint's vocabulary: the prompts are its words and the ids it generates
# are streamed, not read.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${LLMIR_BUILD_DIR:-$root/build}/bin"
model="${1:-$root/models/demo-llama-4m}"
output_len="${OUTPUT_LEN:-128}"
prompts="${NUM_PROMPTS:-8}"
work="$(mktemp -d "${TMPDIR:-/tmp}/llmir-served.XXXXXX")"
mesh_pid=""
cleanup() {
  [ -n "$mesh_pid" ] && kill "$mesh_pid" 2>/dev/null && wait "$mesh_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
if [ ! -f "$model/tokenizer.json" ]; then
  mkdir -p "$work/model"
  for f in "$model"/*; do ln -s "$f" "$work/model/"; done
  # The demo's tokenizer with its vocabulary grown to the checkpoint's (" x2048", ...),
  # so that every id a sampled request draws streams as text.
  python3 - "$root/models/demo-llama-4m/tokenizer.json" "$model/config.json" \
    "$work/model/tokenizer.json" <<'PY'
import json, sys
tokenizer = json.load(open(sys.argv[1]))
vocab = tokenizer["model"]["vocab"]
size = json.load(open(sys.argv[2]))["vocab_size"]
for i in range(len(vocab), size):
    vocab["\u0120x%d" % i] = i
json.dump(tokenizer, open(sys.argv[3], "w"))
PY
  model="$work/model"
fi
port=18000
chain="${CHAIN_DECODE:-true}"
TMPDIR="$work" "$root/scripts/mesh.sh" --model "$model" --tp 1 --device "${DEVICE:-cuda}" --port "$port" \
  --compiler-port 18081 --scheduler-arg "--chain-decode=$chain" --scheduler-arg "--chain-depth=${CHAIN_DEPTH:-2}" \
  --worker-arg "--worker.pipeline-decodes=${PIPELINE_DECODES:-auto}" >"$work/mesh.out" 2>&1 &
mesh_pid=$!
for _ in $(seq 600); do
  grep -q "replica ready" "$work/mesh.out" && break
  kill -0 "$mesh_pid" 2>/dev/null || { cat "$work/mesh.out" >&2; exit 1; }
  sleep 0.2
done
grep -q "replica ready" "$work/mesh.out" || { cat "$work/mesh.out" >&2; exit 1; }
worker_log="$(ls "$work"/llmir-mesh.*/worker-0.log)"
worker_port="$(sed -n 's/.*"http_port":\([0-9]*\).*/\1/p' "$worker_log" | head -n 1)"
decode_seconds() { # sum and count of the worker's decode step histogram
  curl -sf "http://127.0.0.1:$worker_port/metrics" |
    awk '/^llmir:worker_step_seconds_sum\{phase="decode"\}/ {s = $2}
         /^llmir:worker_step_seconds_count\{phase="decode"\}/ {c = $2}
         END {print s + 0, c + 0}'
}
"$bin/llmir-bench" --base-url "http://127.0.0.1:$port/v1" --num-prompts 2 --concurrency 1 \
  --output-len 16 --ignore-eos=true --temperature=0 >/dev/null # warm-up (CUDA graphs)
read -r sum0 count0 <<<"$(decode_seconds)"
"$bin/llmir-bench" --base-url "http://127.0.0.1:$port/v1" --num-prompts "$prompts" --concurrency 1 \
  --output-len "$output_len" --ignore-eos=true --temperature="${TEMPERATURE:-0}" \
  --top-p="${TOP_P:-1}" --extra-body="${EXTRA_BODY:-}" --json "$work/bench.json" \
  >"$work/bench.out"
read -r sum1 count1 <<<"$(decode_seconds)"
python3 - "$work/bench.json" "$sum0" "$count0" "$sum1" "$count1" "$model" "$chain" \
  "${TEMPERATURE:-0}" "${TOP_P:-1} ${EXTRA_BODY:-}" <<'PY'
import json, sys
bench = json.load(open(sys.argv[1]))
s0, c0, s1, c1 = map(float, sys.argv[2:6])
step_ms = 1e3 * (s1 - s0) / (c1 - c0)
tpot = bench.get("mean_tpot_ms") or bench.get("tpot_ms", {}).get("mean")
print(f"served at concurrency 1 on {sys.argv[6]} (chain-decode={sys.argv[7]}, temperature {sys.argv[8]}, top-p {sys.argv[9]}): mean TPOT {tpot:.3f} ms (llmir-bench), "
      f"worker decode step {step_ms:.3f} ms over {int(c1 - c0)} steps: "
      f"TPOT / step = {tpot / step_ms:.3f}")
PY

#!/usr/bin/env bash
# The local LLMIR mesh on loopback: llmir-compiler-service, llmir-scheduler
# (OpenAI API) and the workers, serving models/demo-llama-4m. Prints the
# endpoint and a ready-to-paste curl line, then runs until Ctrl-C, which stops
# every process it started (SIGTERM, then SIGKILL after a grace period).
#
# The scheduler runs in mesh mode: it has the compiler service compile the
# model's plan (tp=2 by default), hosts the rendezvous store, and assembles
# the llmir-shard-worker processes into one replica (Gloo over loopback); it
# is ready once every rank has loaded its slices.
#
# Usage: scripts/mesh.sh [--smoke] [--model DIR] [--port N] [--compiler-port N] [--tp N] [--pp M]
#                       [--device cpu|cuda] [--kv-cache-dtype auto|f32|bf16]
#                       [--kv-store] [--kv-store-port N] [--scheduler-arg ARG]...
#                       [--worker-arg ARG]...
#   --tp/--pp  the replica's degrees (default tp=2, pp=1); tp*pp workers start.
#   --kv-store  also start llmir-kv-store (UCX port --kv-store-port, default
#            13337; HTTP 8083): workers write full KV blocks through to it and
#            replicas load prefixes from it (docs/kv-store.md).
#   --device cuda  the workers run on the GPUs (worker i on GPU i % count).
#   --scheduler-arg ARG  one more argument for llmir-scheduler (e.g.
#            --scheduler-arg --chain-decode=false).
#   --worker-arg ARG  one more argument for every llmir-shard-worker (e.g.
#            --worker-arg --worker.pipeline-decodes=on).
#   --smoke  non-interactive: start everything on ephemeral ports, send one
#            greedy completion, check its token ids against the model's
#            reference.json (Hugging Face greedy ids), stop; exit 0 when equal.
#   --smoke-ids N  compare only the first N ids (a bf16 KV cache keeps the
#            first 8 of the f32 references; later ones may drift).
#   --smoke-launched-behind  also check that worker 0 launched greedy
#            decodes behind the running one (worker.pipeline-decodes).
#   --smoke-logprobs TOL  also send every reference prompt with echo and
#            logprobs and compare the served prompt-token logprobs with the
#            log-softmax of reference_logits.safetensors (relative error at
#            most TOL).
# Binaries come from ${LLMIR_BUILD_DIR:-build}/bin (scripts/build.sh builds them).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${LLMIR_BUILD_DIR:-$root/build}/bin"
model="$root/models/demo-llama-4m"
port=8000
compiler_port=8081
smoke=0
smoke_ids=0 # 0: every reference id
smoke_logprobs="" # a tolerance: check the prompt's logprobs too
smoke_launched_behind=0
tp=2
pp=1
device=cpu
kv_cache_dtype=auto
kv_store=0
kv_store_port=13337
kv_store_http_port=8083
scheduler_args=()
worker_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1; port=0; compiler_port=0; kv_store_port=0; kv_store_http_port=0 ;;
    --smoke-ids) smoke_ids="$2"; shift ;;
    --smoke-logprobs) smoke_logprobs="$2"; shift ;;
    --smoke-launched-behind) smoke_launched_behind=1 ;;
    --kv-store) kv_store=1 ;;
    --kv-store-port) kv_store_port="$2"; shift ;;
    --model) model="$2"; shift ;;
    --port) port="$2"; shift ;;
    --compiler-port) compiler_port="$2"; shift ;;
    --tp) tp="$2"; shift ;;
    --pp) pp="$2"; shift ;;
    --device) device="$2"; shift ;;
    --kv-cache-dtype) kv_cache_dtype="$2"; shift ;;
    --scheduler-arg) scheduler_args+=("$2"); shift ;;
    --worker-arg) worker_args+=("$2"); shift ;;
    -h|--help) sed -n '2,36p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "mesh.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
model="$(cd "$model" && pwd)"
name="$(basename "$model")"
binaries="llmir-compiler-service llmir-scheduler llmir-shard-worker"
[ "$kv_store" = 1 ] && binaries="$binaries llmir-kv-store"
for b in $binaries; do
  [ -x "$bin/$b" ] || { echo "mesh.sh: $bin/$b is missing (run scripts/build.sh)" >&2; exit 1; }
done

workdir="$(mktemp -d "${TMPDIR:-/tmp}/llmir-mesh.XXXXXX")"
# A throwaway cluster secret for this mesh (docs/reliability.md): every
# process reads it through LLMIR_CLUSTER_SECRET_FILE, so only they can join
# the workers' port, the rendezvous store and the compiler service.
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$workdir/cluster.secret")
export LLMIR_CLUSTER_SECRET_FILE="$workdir/cluster.secret"
pids=()
names=()

stop_all() {
  local i pid
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
  done
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid="${pids[$i]}"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "mesh.sh: ${names[$i]} ignored SIGTERM for 10 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  pids=()
  rm -rf "$workdir"
}
trap stop_all EXIT
trap 'echo; echo "mesh.sh: stopping"; exit 130' INT
trap 'exit 143' TERM

start() { # start NAME COMMAND...: runs it in the background, logging to $workdir/NAME.log
  local name="$1"; shift
  "$@" >"$workdir/$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
}

fail() { # fail NAME MESSAGE: report with the process's log tail, exit 1
  echo "mesh.sh: $2" >&2
  echo "---- last lines of $1's log:" >&2
  tail -n 20 "$workdir/$1.log" >&2 || true
  exit 1
}

wait_for() { # wait_for NAME SECONDS CHECK...: polls CHECK while NAME's process lives
  local name="$1" seconds="$2" pid="${pids[-1]}"; shift 2
  for _ in $(seq $((seconds * 10))); do
    "$@" && return 0
    kill -0 "$pid" 2>/dev/null || fail "$name" "$name exited before it was ready"
    sleep 0.1
  done
  fail "$name" "$name not ready within $seconds s"
}

logged_port() { # the "port" field of NAME's "listening" log line
  sed -n 's/.*"msg":"listening".*"port":\([0-9]*\).*/\1/p' "$workdir/$1.log" | head -n 1
}
has_logged_port() { [ -n "$(logged_port "$1")" ]; }

echo "== llmir-compiler-service"
start compiler "$bin/llmir-compiler-service" --http.host=127.0.0.1 --http.port="$compiler_port"
wait_for compiler 30 has_logged_port compiler
compiler_port="$(logged_port compiler)"
echo "   http://127.0.0.1:$compiler_port"

kv_store_args=()
if [ "$kv_store" = 1 ]; then
  echo "== llmir-kv-store"
  start kv-store "$bin/llmir-kv-store" --ucx.host=127.0.0.1 --ucx.port="$kv_store_port" \
    --http.host=127.0.0.1 --http.port="$kv_store_http_port"
  wait_for kv-store 30 has_logged_port kv-store
  kv_store_port="$(sed -n 's/.*"msg":"listening".*"ucx_port":\([0-9]*\).*/\1/p' "$workdir/kv-store.log" | head -n 1)"
  kv_store_http_port="$(logged_port kv-store)"
  kv_store_args=(--kv-store.host=127.0.0.1 --kv-store.port="$kv_store_port")
  echo "   ucx 127.0.0.1:$kv_store_port, metrics http://127.0.0.1:$kv_store_http_port/metrics"
fi

echo "== llmir-scheduler (mesh mode, tp=$tp pp=$pp)"
start scheduler "$bin/llmir-scheduler" --model="$model" --http.host=127.0.0.1 --http.port="$port" \
  --http.port-file="$workdir/scheduler.port" --compiler-url="http://127.0.0.1:$compiler_port" \
  --tp="$tp" --pp="$pp" --worker-port=0 --worker-port-file="$workdir/worker.port" \
  ${kv_store_args[@]+"${kv_store_args[@]}"} ${scheduler_args[@]+"${scheduler_args[@]}"}
wait_for scheduler 120 test -s "$workdir/scheduler.port"
wait_for scheduler 30 test -s "$workdir/worker.port"
port="$(cat "$workdir/scheduler.port")"
worker_port="$(cat "$workdir/worker.port")"
base="http://127.0.0.1:$port"

echo "== $((tp * pp)) x llmir-shard-worker (one tp=$tp pp=$pp replica)"
# --device cuda: worker i on GPU i % (GPUs), NCCL when each has its own GPU,
# else Gloo through host memory.
gpus=0
collectives=gloo
if [ "$device" = cuda ]; then
  gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
  [ "$gpus" -gt 0 ] || { echo "mesh.sh: --device cuda but nvidia-smi lists no GPU" >&2; exit 1; }
  [ "$gpus" -ge $((tp * pp)) ] && collectives=nccl
elif [ "$device" != cpu ]; then
  echo "mesh.sh: --device '$device' is not cpu or cuda" >&2; exit 2
fi
for ((rank = 0; rank < tp * pp; rank++)); do
  worker_device=cpu
  [ "$device" = cuda ] && worker_device="cuda:$((rank % gpus))"
  start "worker-$rank" "$bin/llmir-shard-worker" --scheduler.host=127.0.0.1 \
    --scheduler.port="$worker_port" --http.host=127.0.0.1 --http.port=0 --worker.threads=1 \
    --worker.device="$worker_device" --worker.collectives="$collectives" \
    --worker.kv-cache-dtype="$kv_cache_dtype" ${worker_args[@]+"${worker_args[@]}"}
done
# /readyz answers 200 once a replica has every rank ready.
for _ in $(seq 1200); do
  curl -sf -o /dev/null "$base/readyz" && break
  for i in "${!pids[@]}"; do
    kill -0 "${pids[$i]}" 2>/dev/null || fail "${names[$i]}" "${names[$i]} exited before the replica was ready"
  done
  sleep 0.1
done
curl -sf -o /dev/null "$base/readyz" || fail scheduler "the tp=$tp pp=$pp replica was not ready within 120 s"
echo "   replica ready: $base"

# worker_metric RANK SERIES: the value of SERIES (its name and labels) on
# worker RANK's /metrics.
worker_metric() {
  local http
  http="$(sed -n 's/.*"msg":"connected".*"http_port":\([0-9]*\).*/\1/p' \
    "$workdir/worker-$1.log" | head -n 1)"
  curl -sf "http://127.0.0.1:$http/metrics" | awk -v series="$2" '$1 == series {print $2}'
}

if [ "$smoke" = 1 ]; then
  # The case's text, or its token ids for a checkpoint whose reference
  # has no text (the tiny fixtures).
  prompt_and_ids="$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["cases"][0]; print(json.dumps(c.get("prompt_text", c["prompt_ids"]))); print(json.dumps(c["greedy_ids"]))' "$model/reference.json")"
  prompt="$(sed -n 1p <<<"$prompt_and_ids")"
  expected="$(sed -n 2p <<<"$prompt_and_ids")"
  count="$(python3 -c 'import json,sys; print(len(json.loads(sys.argv[1])))' "$expected")"
  reply="$(curl -sf "$base/v1/completions" -H 'Content-Type: application/json' -d \
    "{\"model\": \"$name\", \"prompt\": $prompt, \"max_tokens\": $count, \"temperature\": 0, \"ignore_eos\": true, \"return_token_ids\": true}")" ||
    fail scheduler "POST /v1/completions failed"
  python3 - "$reply" "$expected" "$smoke_ids" <<'PY' || fail scheduler "the completion differs from the reference"
import json, sys
choice = json.loads(sys.argv[1])["choices"][0]
expected = json.loads(sys.argv[2])
n = int(sys.argv[3]) or len(expected)
got = (choice.get("token_ids") or [])[:n]
if got != expected[:n]:
    sys.exit(f"mesh.sh: got ids {choice.get('token_ids')}, reference greedy ids {expected} (first {n} compared)")
print(f"   completion {json.dumps(choice['text'])} equals the reference greedy ids (first {n})")
PY
  if [ -n "$smoke_logprobs" ]; then
    python3 - "$root/tests/integration" "$base" "$name" "$model" "$smoke_logprobs" <<'PY' ||
import json, math, sys, urllib.request
sys.path.insert(0, sys.argv[1])
from generate_reference import read_safetensors
base, name, model, tolerance = sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
cases = json.load(open(f"{model}/reference.json"))["cases"]
try:
    reference = read_safetensors(f"{model}/reference_logits.safetensors")
except FileNotFoundError:
    print(f"   SKIPPED the prompt logprobs: {model} has no reference_logits.safetensors")
    sys.exit(0)
worst = 0.0
for i, case in enumerate(cases):
    ids = case["prompt_ids"]
    body = json.dumps({"model": name, "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0})
    request = urllib.request.Request(f"{base}/v1/completions", body.encode(),
                                     {"Content-Type": "application/json"})
    served = json.load(urllib.request.urlopen(request, timeout=120))["choices"][0]["logprobs"]["token_logprobs"]
    shape, logits = reference[f"prompt{i}.logits"]
    vocab = shape[1]
    # The reference's log-softmax at each next prompt token: what the
    # served logprob of that token must be.
    expected = []
    for pos in range(len(ids) - 1):
        row = logits[pos * vocab:(pos + 1) * vocab]
        top = max(row)
        lse = top + math.log(sum(math.exp(x - top) for x in row))
        expected.append(row[ids[pos + 1]] - lse)
    got = served[1:len(ids)]
    if served[0] is not None or len(got) != len(expected) or None in got:
        sys.exit(f"mesh.sh: case {i}: echo logprobs {served} do not cover the {len(ids)}-token prompt")
    err = math.sqrt(sum((a - b) ** 2 for a, b in zip(got, expected)) / sum(b * b for b in expected))
    if err > tolerance:
        sys.exit(f"mesh.sh: case {i}: prompt logprobs relative error {err:.2e} > {tolerance}")
    worst = max(worst, err)
print(f"   prompt logprobs of {len(cases)} cases within {worst:.2e} of the reference logits")
PY
      fail scheduler "the prompt's logprobs differ from the reference"
  fi
  if [ "$kv_store" = 1 ]; then
    # Every rank writes the completion's full blocks through (in the
    # background): the store holds them shortly after.
    stored=0
    for _ in $(seq 100); do
      stored="$(curl -sf "http://127.0.0.1:$kv_store_http_port/metrics" |
        sed -n 's/^llmir:kv_store_blocks_stored_total \([0-9.e+]*\)$/\1/p')"
      [ -n "$stored" ] && [ "${stored%%.*}" -ge "$((tp * pp))" ] && break
      sleep 0.1
    done
    [ -n "$stored" ] && [ "${stored%%.*}" -ge "$((tp * pp))" ] ||
      fail kv-store "the KV store holds ${stored:-no} blocks after the completion"
    echo "   the KV store holds ${stored%%.*} blocks written through by the workers"
    # ... through each rank's program: its KV_STORE instruction ran.
    for ((rank = 0; rank < tp * pp; rank++)); do
      kv_stores="$(worker_metric "$rank" 'llmir:worker_kv_transfer_instructions_total{op="KV_STORE"}')"
      [ -n "$kv_stores" ] && [ "${kv_stores%%.*}" -ge 1 ] ||
        fail "worker-$rank" "worker $rank ran no KV_STORE instruction (${kv_stores:-no metric})"
    done
    echo "   every rank wrote them through its program's KV_STORE"
  fi
  if [ "$smoke_launched_behind" = 1 ]; then
    behind="$(worker_metric 0 llmir:worker_steps_launched_behind_total)"
    [ -n "$behind" ] && [ "${behind%%.*}" -ge 1 ] ||
      fail worker-0 "worker 0 launched no decode behind the running one (${behind:-no metric})"
    echo "   worker 0 launched ${behind%%.*} decodes behind the running one"
  fi
  echo "mesh.sh --smoke: ok"
  exit 0
fi

cat <<EOF2

LLMIR is serving $name (OpenAI API) at $base/v1
  metrics: $base/metrics   compiler: http://127.0.0.1:$compiler_port/metrics$([ "$kv_store" = 1 ] && echo "
  kv store metrics: http://127.0.0.1:$kv_store_http_port/metrics")
  logs:    $workdir/*.log

curl -s $base/v1/completions -H 'Content-Type: application/json' \\
  -d '{"model": "$name", "prompt": "def fibonacci(n):", "max_tokens": 32, "temperature": 0}'

Press Ctrl-C to stop.
EOF2
while true; do
  for i in "${!pids[@]}"; do
    kill -0 "${pids[$i]}" 2>/dev/null || fail "${names[$i]}" "${names[$i]} exited unexpectedly"
  done
  sleep 1
done

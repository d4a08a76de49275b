#!/usr/bin/env bash
# A/B of llmir-kvstore-bench builds in one run: rounds interleave the
# variants (each invocation runs ucx_perftest itself, one round), then
# summarize.py prints medians (min-max) per variant and block size.
# Usage: bench/kvstore/compare.sh OUTDIR ROUNDS SIZES LABEL=BINARY[:ARGS]...
#   e.g. bench/kvstore/compare.sh /tmp/ab 5 16K,64K,256K,1M,4M \
#          before=/tmp/bench-main after=build/bin/llmir-kvstore-bench \
#          'poll20=build/bin/llmir-kvstore-bench:--poll-us=20'
# Transport: shared memory (UCX_TLS=shm,tcp; perftest UCX_TLS=shm) unless
# KV_TRANSPORT=tcp (or tcp,shm: summarize.py then pools both, so compare one
# transport at a time).
set -euo pipefail
out=$1 rounds=$2 sizes=$3
shift 3
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  for variant in "$@"; do
    label=${variant%%=*} rest=${variant#*=}
    binary=${rest%%:*} args=""
    [[ $rest == *:* ]] && args=${rest#*:}
    # shellcheck disable=SC2086
    "$binary" --transports "${KV_TRANSPORT:-shm}" --sizes "$sizes" --repeats 1 $args >"$out/$label.$r.txt" 2>/dev/null
    echo "round $r $label done, $(uptime | sed 's/.*load/load/')" >&2
  done
done
python3 "$(dirname "$0")/summarize.py" "$out"

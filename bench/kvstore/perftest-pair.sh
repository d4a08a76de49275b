#!/usr/bin/env bash
# One ucx_perftest server/client pair on loopback; prints the client's final
# bandwidth in GB/s (10^9 B/s; perftest's MB/s are MiB/s). Used to measure
# perftest's own sensitivity to its window (-O) beside llmir-kvstore-bench.
# Usage: bench/kvstore/perftest-pair.sh UCX_TLS TEST SIZE_BYTES [perftest args...]
#   e.g. bench/kvstore/perftest-pair.sh tcp ucp_am_bw 1048576 -O 1
set -uo pipefail
tls=$1 test=$2 size=$3
shift 3
port=$((20000 + RANDOM % 20000))
n=$(((256 << 20) / size))
[ "$n" -lt 64 ] && n=64
UCX_TLS=$tls ucx_perftest -t "$test" -s "$size" -n "$n" -w $((n / 10)) -p "$port" "$@" >/dev/null 2>&1 &
server=$!
sleep 0.3
out=$(UCX_TLS=$tls timeout 60 ucx_perftest 127.0.0.1 -t "$test" -s "$size" -n "$n" \
  -w $((n / 10)) -p "$port" -v "$@" 2>&1)
kill "$server" 2>/dev/null
wait "$server" 2>/dev/null
# CSV rows: iterations,p50_lat,avg_lat,overall_lat,avg_bw,overall_bw,avg_mr,overall_mr
echo "$out" | awk -F, 'NF == 8 && $1 ~ /^ *[0-9]/ { v = $6 } END { printf "%.2f\n", v * 1048576 / 1e9 }'

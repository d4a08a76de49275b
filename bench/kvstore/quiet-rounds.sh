#!/usr/bin/env bash
# On a machine shared with other work: one round of llmir-kvstore-bench per
# transport whenever the one-minute load average is below MAX_LOAD, until
# UNTIL (HHMM, local time), each under flock /tmp/llmir-bench.lock; the
# load before and after each round goes beside it (up.N). ucx_perftest
# busy-polls and falls to a fraction when another process takes a core, so
# the ratios need rounds where it ran free (summarize.py DIR/tcp 0.7).
# Usage: bench/kvstore/quiet-rounds.sh OUTDIR UNTIL [MAX_LOAD] [BENCH] [SIZES]
#   e.g. bench/kvstore/quiet-rounds.sh /tmp/quiet 1830 1.3 build/bin/llmir-kvstore-bench 1M,4M
#   then python3 bench/kvstore/summarize.py /tmp/quiet/tcp 0.7 (and .../shm)
set -uo pipefail
out=$1 until=$2 max_load=${3:-1.3} bench=${4:-build/bin/llmir-kvstore-bench} sizes=${5:-1M,4M}
mkdir -p "$out/tcp" "$out/shm"
n=0
while [ "$(date +%H%M)" -lt "$until" ]; do
  load=$(cut -d' ' -f1 /proc/loadavg)
  if ! awk "BEGIN { exit !($load < $max_load) }"; then
    sleep 20
    continue
  fi
  n=$((n + 1))
  for t in tcp shm; do
    flock /tmp/llmir-bench.lock bash -c "
      echo \"before \$(uptime)\" >'$out/$t/up.$n'
      '$bench' --transports $t --sizes $sizes --repeats 1 >'$out/$t/kv.$n.txt' 2>/dev/null
      echo \"after \$(uptime)\" >>'$out/$t/up.$n'"
  done
  echo "round $n at $(date +%T), load $load" >&2
done

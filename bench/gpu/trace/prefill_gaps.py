"""A prefill's wall time between kernels, from cupti_trace.c's CSV: the records split into
segments at gaps over 50 us; for the longest N (default 3): span, kernel time, time with no
kernel running, the gaps summed by kernel pair and the time by kernel.

  python3 bench/gpu/trace/prefill_gaps.py TRACE.csv [N]"""
import collections, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trace_csv import records

rows = [r for r in records(sys.argv[1]) if not r[2].startswith("memcpy")]
segments, current = [], [rows[0]]
for r in rows[1:]:
    if r[0] - max(x[1] for x in current[-3:]) > 50_000:
        segments.append(current)
        current = [r]
    else:
        current.append(r)
segments.append(current)
segments.sort(key=lambda s: -(max(r[1] for r in s) - s[0][0]))
for s in segments[: int(sys.argv[2]) if len(sys.argv) > 2 else 3]:
    span = max(r[1] for r in s) - s[0][0]
    busy = sum(r[1] - r[0] for r in s)
    gaps, pairs, time, count = (collections.Counter() for _ in range(4))
    end, idle = s[0][1], 0
    for x, y in zip(s, s[1:]):
        gaps[(x[2], y[2])] += y[0] - x[1]
        pairs[(x[2], y[2])] += 1
        if y[0] > end:
            idle += y[0] - end
        end = max(end, y[1])
    for r in s:
        time[r[2]] += r[1] - r[0]
        count[r[2]] += 1
    print(f"segment: {len(s)} kernels, span {span / 1e6:.3f} ms, kernel time {busy / 1e6:.3f} ms, "
          f"idle (no kernel running) {idle / 1e6:.3f} ms")
    for key, g in sorted(gaps.items(), key=lambda kv: -kv[1])[:16]:
        print(f"   gap {g / 1e3:9.1f} us over {pairs[key]:4d} ({g / 1e3 / pairs[key]:6.2f} each): "
              f"{key[0]} -> {key[1]}")
    for name, t in time.most_common(20):
        print(f"   time {t / 1e3:9.1f} us over {count[name]:4d} ({t / 1e3 / count[name]:7.2f} each): {name}")

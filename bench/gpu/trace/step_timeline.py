"""One steady decode step from cupti_trace.c's CSV: every operation from the end of one step's
graph through the next step's first kernels, each with its gap after the previous one ended and
its own time; then the step's memcpys and time by kernel.

  python3 bench/gpu/trace/step_timeline.py TRACE.csv [STEP]

A step starts at an embeddingKernel inside a graph that does not follow a linear kernel (the
same kernel gathers SELECT_ROWS' rows after the last layer)."""
import collections, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trace_csv import records

rows = records(sys.argv[1])
starts = [i for i, r in enumerate(rows)
          if i > 0 and r[2] == "embeddingKernel" and r[3] != 0 and not rows[i - 1][2].startswith("linear")]
if len(starts) < 3:
    sys.exit("fewer than three decode steps replayed from graphs")
k = int(sys.argv[2]) if len(sys.argv) > 2 else len(starts) // 2
a, b = starts[k], starts[k + 1]
print(f"step {k}: {(rows[b][0] - rows[a][0]) / 1e3:.2f} us from embedding to embedding")
first = max(a - 8, 1)
shown = rows[first:a + 3] + [None] + rows[b - 8:b + 3]
end = rows[first - 1][1]
for r in shown:
    if r is None:
        print("   ...")
        end = None
        continue
    gap = f"{(r[0] - end) / 1e3:7.2f}" if end is not None else "      -"
    print(f"   gap {gap} us, {(r[1] - r[0]) / 1e3:7.2f} us: {r[2]} (graph {r[3]})")
    end = r[1] if end is None else max(end, r[1])
step = rows[a:b]
time, count = collections.Counter(), collections.Counter()
for r in step:
    time[r[2]] += r[1] - r[0]
    count[r[2]] += 1
print("by name (dependent launches overlap the kernel before them: times include that wait):")
for name, t in time.most_common(12):
    print(f"   {count[name]:4d} x {t / 1e3 / count[name]:8.2f} us: {name}")

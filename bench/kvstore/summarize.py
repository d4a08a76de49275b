#!/usr/bin/env python3
"""Medians (min-max) of compare.sh's one-round bench outputs, per variant and
block size; 'p50 GB/s' is the block size over the median call latency (one
block per call), the typical call on a machine whose load stalls some calls."""
import collections
import glob
import statistics
import sys

COLUMNS = ["put1", "get1", "putN", "getN", "put_us", "get_us", "perftest",
           "ratio_put", "ratio_get", "memcpy", "ratio_get_memcpy", "put_client_cpu",
           "put_store_cpu", "get_client_cpu", "get_store_cpu", "perftestN", "ratio_put1",
           "ratio_get1", "ratio_putN", "ratio_getN", "perftest1", "ratio_put1_d1",
           "ratio_get1_d1", "pingpong", "pingpong_us", "ratio_put1_pp", "ratio_get1_pp"]
SIZE = {"KiB": 1 << 10, "MiB": 1 << 20}


def main(directory, perftest_share=0.0):
    """perftest_share: pool a round's ratios only where that round's perftest
    (at the block size for the one-per-call ratios, at batch x block for the
    batched ones) reached this share of the best such perftest of the same
    variant and size in the directory. perftest busy-polls on both sides, so a
    third process on the two cores drops it to a fraction (TCP 5-6 GB/s to
    0.2-1.5) while the store's sleeping processes lose less: such rounds say
    nothing about the ratio."""
    data = collections.defaultdict(lambda: collections.defaultdict(list))
    rounds = collections.defaultdict(list)  # (label, size) -> per-round values
    labels, sizes = [], []
    batch = "8"  # blocks per call of the batched columns, from the bench's header
    for path in sorted(glob.glob(directory + "/*.txt")):
        label = path.rsplit("/", 1)[-1].split(".")[0]
        labels += [label] if label not in labels else []
        for line in open(path):
            if line.startswith("| block") and "/call)" in line:
                batch = line.split("put GB/s (")[2].split("/call)")[0]
            if not line.startswith("| ") or "block" in line:
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            size = cells[0]
            sizes += [size] if size not in sizes else []
            values = {column: float(cell.split()[0]) for column, cell in zip(COLUMNS, cells[1:])
                      if cell and cell != "-"}
            number, unit = size.split()
            block = int(number) * SIZE[unit]
            for op in ("put", "get"):  # absent when --measure left it out
                # A p50 printed as 0 us (under 0.5 us: a small get served
                # from the index) has no bandwidth to show.
                if values.get(op + "_us", 0) > 0:
                    values[op + "_p50_gbps"] = block / values[op + "_us"] / 1e3
            rounds[(label, size)].append(values)
    reference = {"ratio_put": "perftest", "ratio_get": "perftest", "ratio_put1": "perftest",
                 "ratio_get1": "perftest", "ratio_putN": "perftestN", "ratio_getN": "perftestN",
                 "ratio_put1_d1": "perftest1", "ratio_get1_d1": "perftest1",
                 "ratio_put1_pp": "pingpong", "ratio_get1_pp": "pingpong"}
    for key, per_round in rounds.items():
        best = {ref: max((v.get(ref, 0) for v in per_round), default=0)
                for ref in set(reference.values())}
        row = data[key]
        for values in per_round:
            for column, value in values.items():
                ref = reference.get(column)
                if ref and values.get(ref, 0) < perftest_share * best[ref]:
                    continue
                row[column].append(value)

    def fmt(values, digits=2):
        if not values:
            return "-"
        m = statistics.median(values)
        if len(values) == 1:
            return f"{m:.{digits}f}"
        return f"{m:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"

    shown = [("put1", "put GB/s (1/call)"), ("get1", "get GB/s (1/call)"),
             ("putN", f"put GB/s ({batch}/call)"), ("getN", f"get GB/s ({batch}/call)"),
             ("put_us", "put p50 us"), ("get_us", "get p50 us"),
             ("put_p50_gbps", "put p50 GB/s"), ("get_p50_gbps", "get p50 GB/s"),
             ("perftest", "ucx_perftest GB/s"), ("memcpy", f"memcpy GB/s ({batch} blocks)"),
             ("put_client_cpu", "put CPU us/MiB client"), ("put_store_cpu", "put CPU us/MiB store"),
             ("get_client_cpu", "get CPU us/MiB client"), ("get_store_cpu", "get CPU us/MiB store"),
             ("perftestN", f"ucx_perftest GB/s ({batch} x block)"),
             ("ratio_put1", "put/perftest (1/call)"), ("ratio_get1", "get/perftest (1/call)"),
             ("ratio_putN", f"put/perftest ({batch}/call, {batch} x block)"),
             ("ratio_getN", f"get/perftest ({batch}/call, {batch} x block)"),
             # The same depth on both sides: `batch` messages in flight against
             # perftest's window of 32 at the block size; one call at a time
             # against perftest with one send outstanding (-O 1) and against
             # its ping-pong (each message sent after the previous arrived).
             ("ratio_put", f"put/perftest ({batch}/call, block)"),
             ("ratio_get", f"get/perftest ({batch}/call, block)"),
             ("perftest1", "ucx_perftest -O 1 GB/s"),
             ("ratio_put1_d1", "put/perftest -O 1 (1/call)"),
             ("ratio_get1_d1", "get/perftest -O 1 (1/call)"),
             ("pingpong", "ucx_perftest ping-pong GB/s"),
             ("pingpong_us", "ping-pong p50 us (one way)"),
             ("ratio_put1_pp", "put/ping-pong (1/call)"),
             ("ratio_get1_pp", "get/ping-pong (1/call)")]
    print("| variant | block | " + " | ".join(h for _, h in shown) + " | rounds |")
    print("|" + "---|" * (len(shown) + 3))
    for size in sizes:
        for label in labels:
            row = data.get((label, size))
            if not row:
                continue
            cells = [fmt(row[c], 0 if c.endswith(("_us", "_cpu")) else 2) +
                     (f" [{len(row[c])}]" if perftest_share and c.startswith("ratio") else "")
                     for c, _ in shown]
            print(f"| {label} | {size} | " + " | ".join(cells) + f" | {max(len(v) for v in row.values())} |")
    if perftest_share:
        print(f"\nRatios [rounds] only from rounds whose perftest reached {perftest_share} of "
              "the best perftest of that variant and size.")


if __name__ == "__main__":
    # summarize.py DIR [PERFTEST_SHARE], e.g. 0.7
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)

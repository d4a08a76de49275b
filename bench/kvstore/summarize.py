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
           "ratio_get1", "ratio_putN", "ratio_getN"]
SIZE = {"KiB": 1 << 10, "MiB": 1 << 20}


def main(directory):
    data = collections.defaultdict(lambda: collections.defaultdict(list))
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
            row = data[(label, size)]
            for column, cell in zip(COLUMNS, cells[1:]):
                if cell and cell != "-":
                    row[column].append(float(cell.split()[0]))
            number, unit = size.split()
            block = int(number) * SIZE[unit]
            for op in ("put", "get"):  # absent when --measure left it out
                if len(row[op + "_us"]) > len(row[op + "_p50_gbps"]):
                    row[op + "_p50_gbps"].append(block / row[op + "_us"][-1] / 1e3)

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
             ("ratio_getN", f"get/perftest ({batch}/call, {batch} x block)")]
    print("| variant | block | " + " | ".join(h for _, h in shown) + " | rounds |")
    print("|" + "---|" * (len(shown) + 3))
    for size in sizes:
        for label in labels:
            row = data.get((label, size))
            if not row:
                continue
            cells = [fmt(row[c], 0 if c.endswith(("_us", "_cpu")) else 2) for c, _ in shown]
            print(f"| {label} | {size} | " + " | ".join(cells) + f" | {max(len(v) for v in row.values())} |")


if __name__ == "__main__":
    main(sys.argv[1])

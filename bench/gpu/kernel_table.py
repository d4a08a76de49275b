#!/usr/bin/env python3
"""Per-kernel table of an Nsight Compute CSV (`ncu --csv --metrics
gpu__time_duration.sum[,dram__bytes_read.sum]`): kernels grouped by name
and grid, with their count, mean time, bytes read from DRAM and the
bandwidth that makes, heaviest total first, plus the total. What
bench/gpu/profile.sh prints; the tables in docs/performance.md ("Second
round", "The issue's table") came from it.

usage: kernel_table.py NCU.csv [--steps N]

--steps N divides the totals by N (the profiled kernels covered N decode
steps) to give a time per step. Lines before ncu's header (the profiled
program's own output, ==PROF== notes) are skipped. Each kernel ran alone
under ncu, so a short kernel's time includes ~2 us of its own launch.
"""
import argparse
import collections
import csv
import io
import sys

TIME_UNITS = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3,
              "s": 1e6, "second": 1e6}
BYTE_UNITS = {"byte": 1e-6, "Kbyte": 1e-3, "KB": 1e-3, "Mbyte": 1.0, "MB": 1.0, "Gbyte": 1e3,
              "GB": 1e3}


def kernel_rows(text):
    """{id: {"name", "grid", "us", "mb"}} from ncu's CSV text."""
    lines = text.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if header is None:
        raise ValueError("no ncu CSV header (a line starting with \"ID\")")
    kernels = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines[header:]))):
        if not row.get("Metric Name"):
            continue
        k = kernels.setdefault(row["ID"], {"name": short_name(row["Kernel Name"]),
                                           "grid": row["Grid Size"], "us": 0.0, "mb": None})
        value = float(row["Metric Value"].replace(",", ""))
        unit = row["Metric Unit"]
        if row["Metric Name"] == "gpu__time_duration.sum":
            if unit not in TIME_UNITS:
                raise ValueError(f"time unit {unit!r}")
            k["us"] = value * TIME_UNITS[unit]
        elif row["Metric Name"] == "dram__bytes_read.sum":
            if unit not in BYTE_UNITS:
                raise ValueError(f"byte unit {unit!r}")
            k["mb"] = value * BYTE_UNITS[unit]
    return kernels


def short_name(name):
    """`void unnamed>::linear16Kernel<1, 1>(const float *, ...)` -> `linear16Kernel<1, 1>`."""
    for prefix in ("(anonymous namespace)::", "unnamed>::", "void "):
        name = name.replace(prefix, "")
    return name.split("(")[0]


def table(kernels, steps=1):
    groups = collections.defaultdict(list)
    for k in kernels.values():
        groups[(k["name"], k["grid"])].append(k)
    rows = []
    for (name, grid), ks in groups.items():
        total = sum(k["us"] for k in ks)
        mbs = [k["mb"] for k in ks if k["mb"] is not None]
        mean_mb = sum(mbs) / len(mbs) if mbs else None
        mean_us = total / len(ks)
        rows.append({"kernel": name, "grid": grid, "count": len(ks), "mean_us": mean_us,
                     "mean_mb": mean_mb,
                     "gb_s": mean_mb / mean_us * 1e3 if mean_mb is not None and mean_us else None,
                     "total_us": total / steps})
    rows.sort(key=lambda r: -r["total_us"])
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("csv")
    parser.add_argument("--steps", type=float, default=1.0)
    args = parser.parse_args()
    rows = table(kernel_rows(open(args.csv).read()), args.steps)
    per = " per step" if args.steps != 1 else ""
    print(f"| kernel | grid | count | mean us | MB read | GB/s | total us{per} |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mb = f"{r['mean_mb']:.2f}" if r["mean_mb"] is not None else "-"
        gbs = f"{r['gb_s']:.0f}" if r["gb_s"] is not None else "-"
        print(f"| {r['kernel']} | {r['grid']} | {r['count']} | {r['mean_us']:.2f} | {mb} | {gbs} "
              f"| {r['total_us']:.1f} |")
    print(f"| total | | {sum(r['count'] for r in rows)} | | | | "
          f"{sum(r['total_us'] for r in rows):.1f} |")


if __name__ == "__main__":
    sys.exit(main())

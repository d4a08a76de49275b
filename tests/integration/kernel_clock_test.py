#!/usr/bin/env python3
"""bench/gpu/kernel_clock.py on a real LLMIR_CUDA_KERNEL_CLOCK file: 1.1B
batch-1 decode on an H200 (tests/fixtures/kernel-clock, 256 steps, the
decode graph's 114 nodes replayed 255 times), its per-layer table, and its
refusals of files that are not a clock's.

usage: kernel_clock_test.py --root REPO
"""
import argparse
import importlib.util
import os
import subprocess
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    args = parser.parse_args()
    script = os.path.join(args.root, "bench/gpu/kernel_clock.py")
    spec = importlib.util.spec_from_file_location("kernel_clock", script)
    kc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kc)
    failures = []

    def check(condition, message):
        if not condition:
            failures.append(message)

    fixture = os.path.join(args.root, "tests/fixtures/kernel-clock/h200-1b-decode.tsv")
    nodes = kc.read_clock(open(fixture).read())
    check(len(nodes) == 1113, f"{len(nodes)} grids, expected 1113")
    graph, replays = kc.replayed_nodes(nodes)
    check((len(graph), replays) == (114, 255), f"graph: {len(graph)} nodes x {replays}")
    check(all(b.release >= a.release for a, b in zip(graph, graph[1:])), "nodes in order")
    step = sum(kc.added_times(graph))
    # The step ran 1.09 ms (the bench's own clock); the graph's span is most of it.
    check(900e3 < step < 1090e3, f"graph span {step / 1e3:.1f} us")
    table, shape_of, others = kc.layer_table(graph, ["qkv", "attention", "o", "gate-up", "down"])
    check(all(len(v) == 22 for v in table.values()), f"22 layers: {[len(v) for v in table.values()]}")
    check(shape_of["gate-up"] == (704, 256) and shape_of["qkv"] == (320, 256),
          f"shapes {shape_of}")
    mean = {k: sum(v) / len(v) for k, v in table.items()}
    check(max(mean, key=mean.get) == "gate-up", f"gate/up the heaviest: {mean}")
    check(abs(sum(sum(v) for v in table.values()) + others - step) < 1.0, "the parts sum to the span")

    proc = subprocess.run([sys.executable, script, fixture, "--names", "qkv,attention,o,gate-up,down"],
                          capture_output=True, text=True)
    check(proc.returncode == 0 and "114 graph nodes replayed 255 times" in proc.stdout and
          "\ngate-up | 704 x 256 | 15.88 | 22 | 349.4\n" in proc.stdout,
          f"the script's output: {proc.stdout[:300]} {proc.stderr}")

    # The same file as a build with marks writes it: the attention's (32
    # blocks) at 1 and 2.5 us past its release, no marks elsewhere.
    lines = open(fixture).read().splitlines()
    marked = ["\t".join(lines[0].split() + kc.MARKS)]
    for line in lines[1:]:
        grid = int(line.split()[3])
        marks = ["1000.0", "2500.0"] if grid == 32 else ["0.0", "0.0"]
        marked.append("\t".join(line.split() + marks + ["0.0"] * 6))
    marked_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"kernel-clock-marks-{os.getpid()}.tsv")
    with open(marked_path, "w") as f:
        f.write("\n".join(marked) + "\n")
    try:
        names = ["qkv", "attention", "o", "gate-up", "down"]
        mgraph, _ = kc.replayed_nodes(kc.read_clock(open(marked_path).read()))
        mtable, _, _ = kc.layer_table(mgraph, names)
        marks = kc.layer_marks(mgraph, mtable, names)
        check(marks == {"attention": {0: 1.0, 1: 2.5}}, f"marks {marks}")
        proc = subprocess.run([sys.executable, script, marked_path, "--names", ",".join(names)],
                              capture_output=True, text=True)
        check(proc.returncode == 0 and "\nattention | 0: 1.00, 1: 2.50\n" in proc.stdout,
              f"the script's marks: {proc.stdout[-400:]} {proc.stderr}")
    finally:
        os.unlink(marked_path)

    for bad, why in (("no header\n1 2 3\n", "not a kernel clock file"),
                     ("\t".join(kc.HEADER + kc.MARKS[:3]) + "\n", "not a kernel clock file"),
                     ("\t".join(kc.HEADER) + "\n1\t2\t3\n", "line 2: 3 fields"),
                     ("\t".join(kc.HEADER) + "\n1\t0.0\t1\t8\t256\n", "no replayed graph nodes")):
        try:
            kc.replayed_nodes(kc.read_clock(bad))
            failures.append(f"accepted input: {why}")
        except ValueError as e:
            check(why in str(e), f"error {e!r} does not say {why!r}")
    try:
        kc.layer_table(graph, ["a", "b", "c", "d", "e", "f", "g"])
        failures.append("accepted a period the shapes do not have")
    except ValueError as e:
        check("no period of 7" in str(e), f"error {e!r}")

    for f in failures:
        print("FAIL:", f)
    print(f"{len(failures)} failure(s)" if failures else "ok: kernel_clock on a real clock file")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

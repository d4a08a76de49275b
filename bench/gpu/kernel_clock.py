#!/usr/bin/env python3
"""Where a replayed decode step's time goes, kernel by kernel, in place.

Reads the file LLMIR_CUDA_KERNEL_CLOCK writes (a build configured with
-DLLMIR_CUDA_KERNEL_CLOCK=ON; libs/engine/src/kernels/cuda/KernelClock.h):
one line a grid or CUDA graph node with its first release from the wait for
the kernels before it and its mean release over the runs. Takes the graph
nodes replayed most often (the decode step's graph), in order, and prints
for each what it added to the step: the next node's mean release minus its
own, averaged over the replays. A node's time includes the kernels the
clock does not see that run after it (cuBLAS, NCCL, the IPC all-reduce).

    bench/gpu/kernel_clock.py CLOCK.tsv [--names qkv,attention,o,gate-up,down]

--names labels the kernels of one period of the step (a layer) in order,
from a layer's first kernel: the layers are the whole periods of the
longest run of repeating shapes, ending where it ends (layer_span); the
summary adds up each label over the layers. Files with marks
(recordKernelMark: when block 0 of a kernel reached each of its marks 0-7,
mean us past its release) get a table of them a label (or a node, without
--names).
"""
import argparse
import collections
import signal
import sys

HEADER = ["first_release_ns", "mean_release_past_first_ns", "runs", "grid", "block"]
MARKS = [f"mark{m}_ns" for m in range(8)]
# marks: mean ns past the release at which block 0 reached each mark (0: none)
Node = collections.namedtuple("Node", "release runs grid block marks")


def read_clock(text):
    """The file's grids as Nodes (mean release in ns), in order of first release."""
    lines = text.splitlines()
    header = lines[0].split() if lines else []
    if header not in (HEADER, HEADER + MARKS):
        raise ValueError(f"not a kernel clock file (header {lines[0] if lines else 'missing'!r})")
    nodes = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if len(fields) != len(header):
            raise ValueError(f"line {number}: {len(fields)} fields, expected {len(header)}")
        first, mean, runs, grid, block = fields[:5]
        marks = tuple(float(f) for f in fields[5:])
        nodes.append(Node(int(first) + float(mean), int(runs), int(grid), int(block), marks))
    return nodes


def marks_of(node):
    """{mark: us past the release} for the marks the node's kernel reached."""
    return {m: ns / 1e3 for m, ns in enumerate(node.marks) if ns > 0}


def replayed_nodes(nodes):
    """The nodes of the graph replayed most often, and its replay count."""
    counts = collections.Counter(n.runs for n in nodes if n.runs > 1)
    if not counts:
        raise ValueError("no replayed graph nodes (graphs off, or one step only?)")
    replays = max(counts, key=lambda runs: (counts[runs], runs))
    return [n for n in nodes if n.runs == replays], replays


def added_times(nodes):
    """What each node but the last added to the step (ns)."""
    return [b.release - a.release for a, b in zip(nodes, nodes[1:])]


def layer_span(nodes, period):
    """[start, end): the nodes of whole layers, a layer `period` kernels.

    The layers are the longest run of nodes whose shapes repeat with the
    period, cut into whole periods that end where the run ends: what follows
    the last layer (the final norm, the LM head) differs from a layer's
    first kernel, while the first layer's first kernel may itself differ
    from the later layers' (at the 8B shape its Q/K/V reads the first norm's
    output, the later ones normalise in a looped grid), so aligning to the
    run's start could label a layer from its second kernel on. The nodes
    before `start` (a first layer that differs included) and from `end` are
    the step's others.
    """
    shapes = [(n.grid, n.block) for n in nodes]
    best = None  # (length, first) of the longest run where shape i == shape i + period
    i = 0
    while i + period < len(shapes):
        if shapes[i] != shapes[i + period]:
            i += 1
            continue
        j = i
        while j + period < len(shapes) and shapes[j] == shapes[j + period]:
            j += 1
        if best is None or j - i > best[0]:
            best = (j - i, i)
        i = j
    if best is None or best[0] < period:
        raise ValueError(f"no period of {period} kernels in the step's shapes")
    length, first = best
    stop = first + length + period  # the run's nodes: [first, stop)
    start = first + (stop - first) % period
    return start, stop


def layer_table(nodes, names):
    """{label: [ns added, one a layer]} over the layers (layer_span with
    len(names)'s period), the labels' shapes, and the ns added before and
    after them."""
    period = len(names)
    added = added_times(nodes)
    shapes = [(n.grid, n.block) for n in nodes]
    start, end = layer_span(nodes, period)
    end = min(end, len(added))  # the last node's time is unseen
    end -= (end - start) % period
    table = collections.OrderedDict((name, []) for name in names)
    for i in range(start, end):
        table[names[(i - start) % period]].append(added[i])
    shape_of = {name: shapes[start + k] for k, name in enumerate(names)}
    return table, shape_of, sum(added[:start]) + sum(added[end:])


def layer_marks(nodes, table, names):
    """{label: {mark: us}} averaged over the layers, for labels with marks."""
    period, (start, _) = len(names), layer_span(nodes, len(names))
    layers = len(next(iter(table.values())))
    result = collections.OrderedDict()
    for k, name in enumerate(names):
        sums = collections.Counter()
        for layer in range(layers):
            sums.update(marks_of(nodes[start + layer * period + k]))
        if sums:
            result[name] = {m: sums[m] / layers for m in sorted(sums)}
    return result


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the output quietly
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clock")
    parser.add_argument("--names", default="", help="labels of one layer's kernels, in order")
    args = parser.parse_args()
    try:
        nodes, replays = replayed_nodes(read_clock(open(args.clock).read()))
        names = [n for n in args.names.split(",") if n]
        layers = layer_table(nodes, names) if names else None
    except (OSError, ValueError) as e:
        sys.exit(f"kernel_clock.py: {args.clock}: {e}")
    added = added_times(nodes)
    print(f"{len(nodes)} graph nodes replayed {replays} times; "
          f"{sum(added) / 1e3:.1f} us from the first node's release to the last's")
    if layers:
        table, shape_of, others = layers
        print("\nkernel | grid x block | a layer (us, mean over layers) | layers | a step (us)")
        for label, values in table.items():
            grid, block = shape_of[label]
            print(f"{label} | {grid} x {block} | {sum(values) / len(values) / 1e3:.2f} | "
                  f"{len(values)} | {sum(values) / 1e3:.1f}")
        print(f"before and after the layers | | | | {others / 1e3:.1f}")
        marked = layer_marks(nodes, table, names)
        if marked:
            print("\nkernel | its marks, us past its release (mean over layers)")
            for label, marks in marked.items():
                print(f"{label} | " + ", ".join(f"{m}: {us:.2f}" for m, us in marks.items()))
    print("\nnode | grid x block | added (us)")
    for i, (node, ns) in enumerate(zip(nodes, added)):
        print(f"{i} | {node.grid} x {node.block} | {ns / 1e3:.2f}")
    print(f"{len(nodes) - 1} | {nodes[-1].grid} x {nodes[-1].block} | (last: what follows is unseen)")


if __name__ == "__main__":
    main()

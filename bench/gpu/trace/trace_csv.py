"""Reading cupti_trace.c's CSV: records (start_ns, end_ns, name, graph), kernels by the short name
of their mangled one, memcpys and memsets as "memcpy N B", "memset N B"; runtime and driver calls left out."""
import re

def kernel_name(mangled):
    """The longest identifier ending in Kernel in a mangled name, read by its length prefix (a
    run of digits may end an anonymous namespace's hash before the length), else its start."""
    found = ""
    for m in re.finditer(r"\d+", mangled):
        for i in range(m.start(), m.end()):
            n = int(mangled[i:m.end()])
            word = mangled[m.end():m.end() + n]
            if word.endswith("Kernel") and word.isidentifier() and len(word) > len(found):
                found = word
    return found or mangled[:60]

def records(path):
    rows = []
    for line in open(path):
        p = line.rstrip("\n").split(",", 6)
        if len(p) < 7 or p[2] == "api":
            continue
        name = (f"{p[6][1:-1]} {p[3]} B" if p[6] in ("[memcpy]", "[memset]")
                else kernel_name(p[6]))
        rows.append((int(p[0]), int(p[1]), name, int(p[5])))
    rows.sort()
    return rows

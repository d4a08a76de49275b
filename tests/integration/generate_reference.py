"""What the llmir-generate integration tests share: soft checks that collect
failures, the models under test and their Hugging Face reference cases, and
the command line that asks for a case's greedy ids."""
import argparse
import json
import math
import os
import struct
import subprocess
import sys

failures = []


def visible_gpus():
    """How many GPUs nvidia-smi lists (0 without nvidia-smi)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    except (OSError, subprocess.SubprocessError):
        return 0


def check(condition, message):
    if not condition:
        failures.append(message)
        print("FAIL:", message, flush=True)


def exit_on_failures():
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)


# The model families beyond Llama (docs/models.md), in ../shared/fixtures/families.
FAMILIES = ("tiny-llama31-rope", "tiny-mistral-swa", "tiny-phi3", "tiny-qwen2", "tiny-qwen3")


def models_under_test(models, fixtures):
    """The embedded demo model, plus the ../shared fixtures when present."""
    dirs = [os.path.join(models, "demo-llama-4m")]
    if os.path.isdir(fixtures):
        dirs += [os.path.join(fixtures, name) for name in ("tiny-llama-gqa", "tiny-llama-mha")]
    else:
        print(f"SKIPPED fixtures: {fixtures} not found (../shared absent)")
    return dirs


def family_models(fixtures):
    """The family fixtures present under ../shared/fixtures/families."""
    root = os.path.join(fixtures, "families")
    if not os.path.isdir(root):
        print(f"SKIPPED family fixtures: {root} not found (../shared absent)")
        return []
    return [os.path.join(root, name) for name in FAMILIES]


def reference_cases(model_dir):
    with open(os.path.join(model_dir, "reference.json")) as f:
        return json.load(f)["cases"]


def greedy_args(model_dir, case):
    """Arguments that generate exactly the case's reference token count from
    its prompt ids, printed as JSON."""
    return ["--model", model_dir, "--prompt-ids", ",".join(map(str, case["prompt_ids"])),
            "--max-tokens", str(len(case["greedy_ids"])), "--ignore-eos", "--json"]


def parse_args():
    """The command line every llmir-generate test takes."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--generate", required=True)
    parser.add_argument("--models", required=True)
    parser.add_argument("--fixtures", required=True)
    return parser.parse_args()


def read_safetensors(path):
    """{name: (shape, [floats])} for the F32 tensors of a safetensors file."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{path}: {name} is {info['dtype']}"
        begin, end = info["data_offsets"]
        count = (end - begin) // 4
        tensors[name] = (info["shape"], struct.unpack(f"<{count}f", data[begin:end]))
    return tensors


def relative_error(ours, ref):
    diff = sum((a - b) ** 2 for a, b in zip(ours, ref))
    norm = sum(b * b for b in ref)
    return math.sqrt(diff / norm)

#!/usr/bin/env python3
"""llmir-generate with one rank per GPU (NCCL) against the Hugging Face references.

Every model of gpu_generate_test (the embedded demo model, plus the ../shared
fixtures and family fixtures when present) at each layout of --layouts
("tp=2", "pp=2", "tp=4", "tp=2,pp=2" by default) that has a GPU per rank:
all reference greedy ids and the prompt logits within the reference's
agreement, f32 KV cache. A layout needing more GPUs than are visible is
reported as SKIPPED (the single-GPU runs of gpu_generate_test cover ranks
sharing a GPU). Needs CUDA devices (CTest label multi_gpu); run by
scripts/test-multi-gpu.sh.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate_reference import (exit_on_failures, family_models,  # noqa: E402
                                models_under_test, visible_gpus)
from gpu_generate_test import check_model  # noqa: E402


def main():
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--generate", required=True)
    parser.add_argument("--models", required=True)
    parser.add_argument("--fixtures", required=True)
    parser.add_argument("--layouts", default="tp=2 pp=2 tp=4 tp=2,pp=2")
    args = parser.parse_args()
    gpus = visible_gpus()
    models = models_under_test(args.models, args.fixtures) + family_models(args.fixtures)
    for layout in args.layouts.split():
        degrees = dict(part.split("=") for part in layout.split(","))
        ranks = int(degrees.get("tp", 1)) * int(degrees.get("pp", 1))
        if ranks > gpus:
            print(f"SKIPPED {layout}: {ranks} ranks, {gpus} GPU(s) visible")
            continue
        flags = ["--kv-cache-dtype", "f32", "--collectives", "nccl", "--timeout-s", "30"]
        for name, value in degrees.items():
            flags += [f"--{name}", value]
        for model_dir in models:
            if not os.path.isdir(model_dir):
                print(f"SKIPPED {model_dir}: not present")
                continue
            tolerance = 1e-3 if model_dir.endswith("demo-llama-4m") else 1e-4
            check_model(args.generate, model_dir, flags, f"cuda {layout} nccl", tolerance)
    exit_on_failures()


if __name__ == "__main__":
    main()

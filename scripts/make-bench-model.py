#!/usr/bin/env python3
"""Writes a Llama with random weights for the engine benchmarks.

usage: make-bench-model.py OUT_DIR [--dtype f32|bf16|both] [--shape smollm|1b|8b]

Shapes: smollm = SmolLM-135M (the CPU bench, tied embeddings); 1b =
TinyLlama-1.1B and 8b = Llama-3-8B (the GPU bench, untied, as the
compiled-PyTorch peer builds them).

With --dtype both (the default) it writes OUT_DIR/f32 and OUT_DIR/bf16, each a
Hugging Face directory (config.json + model.safetensors, tied embeddings).
No pip packages: safetensors is written by hand (8-byte header length, JSON
header, raw little-endian data). Values only need to be finite and small, so
every tensor is a window of one pre-generated random pool (fast to write).
"""
import argparse
import array
import json
import os
import random
import struct
import sys

# name: hidden, layers, heads, KV heads, FFN, vocabulary, tied embeddings
SHAPES = {"smollm": (576, 30, 9, 3, 1536, 49152, True),
          "1b": (2048, 22, 32, 4, 5632, 32000, False),
          "8b": (4096, 32, 32, 8, 14336, 128256, False)}
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB, TIED = SHAPES["smollm"]
HEAD_DIM = HIDDEN // HEADS
POOL_SIZE = 1 << 20  # random values; tensors are windows of it


def tensor_shapes():
    shapes = [("model.embed_tokens.weight", [VOCAB, HIDDEN])]
    kv = KV_HEADS * HEAD_DIM
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        shapes += [
            (p + "input_layernorm.weight", [HIDDEN]),
            (p + "self_attn.q_proj.weight", [HIDDEN, HIDDEN]),
            (p + "self_attn.k_proj.weight", [kv, HIDDEN]),
            (p + "self_attn.v_proj.weight", [kv, HIDDEN]),
            (p + "self_attn.o_proj.weight", [HIDDEN, HIDDEN]),
            (p + "post_attention_layernorm.weight", [HIDDEN]),
            (p + "mlp.gate_proj.weight", [FFN, HIDDEN]),
            (p + "mlp.up_proj.weight", [FFN, HIDDEN]),
            (p + "mlp.down_proj.weight", [HIDDEN, FFN]),
        ]
    shapes.append(("model.norm.weight", [HIDDEN]))
    if not TIED:
        shapes.append(("lm_head.weight", [VOCAB, HIDDEN]))
    return shapes


def config(dtype_name):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": TIED,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": dtype_name,
    }


def random_pools(seed):
    rng = random.Random(seed)
    f32 = array.array("f", (rng.uniform(-0.05, 0.05) for _ in range(POOL_SIZE)))
    ones = array.array("f", [1.0]) * HIDDEN
    if sys.byteorder != "little":
        f32.byteswap()
        ones.byteswap()
    # bf16 by truncation of the f32 bits: the upper half of each word.
    bits = array.array("I", f32.tobytes())
    bf16 = array.array("H", (b >> 16 for b in bits))
    ones_bf16 = array.array("H", [0x3F80]) * HIDDEN
    return {"F32": (f32.tobytes(), ones.tobytes(), 4),
            "BF16": (bf16.tobytes(), ones_bf16.tobytes(), 2)}


def write_model(out_dir, dtype, pools):
    pool, ones, size = pools[dtype]
    os.makedirs(out_dir, exist_ok=True)
    header, offset = {}, 0
    shapes = tensor_shapes()
    for name, shape in shapes:
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + n * size]}
        offset += n * size
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # aligned data region
    path = os.path.join(out_dir, "model.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for index, (name, shape) in enumerate(shapes):
            if len(shape) == 1:  # norm weights: ones, as HF initialises them
                f.write(ones)
                continue
            remaining = shape[0] * shape[1] * size
            start = (index * 7919 * size) % len(pool)  # a different window per tensor
            while remaining:
                chunk = pool[start:start + remaining]
                f.write(chunk)
                remaining -= len(chunk)
                start = 0
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config("float32" if dtype == "F32" else "bfloat16"), f, indent=2)
    print(f"wrote {path} ({offset / 1e6:.0f} MB of {dtype} weights)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", choices=["f32", "bf16", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm")
    args = parser.parse_args()
    global HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB, TIED, HEAD_DIM
    HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB, TIED = SHAPES[args.shape]
    HEAD_DIM = HIDDEN // HEADS
    pools = random_pools(args.seed)
    dtypes = ["f32", "bf16"] if args.dtype == "both" else [args.dtype]
    for dtype in dtypes:
        target = os.path.join(args.out_dir, dtype) if args.dtype == "both" else args.out_dir
        write_model(target, dtype.upper(), pools)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes a GGUF file of a bench checkpoint, for llama.cpp's llama-bench.

usage: PYTHONPATH=LLAMA_CPP/gguf-py make-bench-gguf.py MODEL_DIR OUT.gguf

MODEL_DIR is what scripts/make-bench-model.py writes (config.json + one
model.safetensors, f32 or bf16, Llama, tied embeddings). The tensors go into
the file as llama.cpp's convert_hf_to_gguf.py lays them out for a Llama
(its tensor names, q/k rows permuted from Hugging Face's rotate-half order to
GGUF's interleaved one, 1-D norm weights as F32), written with llama.cpp's own
gguf-py (needs only numpy).

Why not convert_hf_to_gguf.py itself: it imports torch and transformers
(neither is in Debian bookworm) and reads a Hugging Face tokenizer, which the
bench checkpoints do not have. llama-bench feeds random token ids and only
needs a vocabulary of the model's size to load, so this writes a minimal
SentencePiece-style one: <unk>, <s>, </s>, the 256 byte tokens llama.cpp
looks up when it loads an SPM vocabulary, and placeholder pieces up to the
vocabulary size.
"""
import json
import struct
import sys

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("make-bench-gguf.py: needs llama.cpp's gguf-py on PYTHONPATH "
             "(PYTHONPATH=/path/to/llama.cpp/gguf-py)")


def read_safetensors(path):
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        base = 8 + header_len
    data = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[base + begin: base + end]
        if info["dtype"] == "F32":
            array = raw.view(np.float32)
        elif info["dtype"] == "BF16":
            array = raw.view(np.uint16)
        else:
            sys.exit(f"make-bench-gguf.py: {name}: dtype {info['dtype']} is not f32 or bf16")
        tensors[name] = (info["dtype"], array.reshape(info["shape"]))
    return tensors


def permute(rows, heads):
    """Hugging Face rotate-half q/k rows -> GGUF interleaved (as convert_hf_to_gguf)."""
    return (rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:])
            .swapaxes(1, 2).reshape(rows.shape))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model_dir, out = sys.argv[1], sys.argv[2]
    with open(f"{model_dir}/config.json") as f:
        cfg = json.load(f)
    if not cfg.get("tie_word_embeddings", False):
        sys.exit("make-bench-gguf.py: expects tied embeddings (the smollm bench shape)")
    tensors = read_safetensors(f"{model_dir}/model.safetensors")
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kv_heads = cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim", hidden // heads)
    vocab = cfg["vocab_size"]
    dtype = tensors["model.embed_tokens.weight"][0]

    w = gguf.GGUFWriter(out, "llama")
    w.add_name("llmir-bench-" + dtype.lower())
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "F32"
                    else gguf.LlamaFileType.MOSTLY_BF16)
    w.add_vocab_size(vocab)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])

    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = ([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
             + [gguf.TokenType.BYTE] * 256)
    pieces += [f"t{i}" for i in range(len(pieces), vocab)]
    types += [gguf.TokenType.NORMAL] * (vocab - len(types))
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores([0.0] * vocab)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(cfg.get("bos_token_id", 1))
    w.add_eos_token_id(cfg.get("eos_token_id", 2))

    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight"}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
                 "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
                 "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, (tensor_dtype, array) in tensors.items():
        if name in names:
            gguf_name = names[name]
        else:
            parts = name.split(".")  # model.layers.N.<module...>.weight
            gguf_name = f"blk.{parts[2]}.{per_layer['.'.join(parts[3:-1])]}.weight"
        if name.endswith("q_proj.weight"):
            array = permute(array, heads)
        elif name.endswith("k_proj.weight"):
            array = permute(array, kv_heads)
        if array.ndim == 1 and tensor_dtype == "BF16":  # norms stay F32, as convert does
            array = (array.astype(np.uint32) << 16).view(np.float32)
            tensor_dtype = "F32"
        if tensor_dtype == "BF16":
            w.add_tensor(gguf_name, np.ascontiguousarray(array),
                         raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(gguf_name, np.ascontiguousarray(array))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out} ({dtype}, {len(tensors)} tensors)")


if __name__ == "__main__":
    main()

//===- LLMTypes.td - types of the llm dialect ---------------*- tablegen -*-===//

#ifndef LLMIR_IR_LLMTYPES_TD
#define LLMIR_IR_LLMTYPES_TD

include "mlir/IR/AttrTypeBase.td"
include "llmir/IR/LLMDialect.td"

class LLM_Type<string name, string typeMnemonic, list<Trait> traits = []>
    : TypeDef<LLM_Dialect, name, traits> {
  let mnemonic = typeMnemonic;
}

// Sizes are int64_t (not unsigned) so that a negative size parses and is then
// rejected by the verifier with a message naming the parameter.
def LLM_ShardedKVCacheType : LLM_Type<"ShardedKVCache", "sharded_kv_cache"> {
  let summary = "KV cache of a sequence split along the sequence over devices";
  let description = [{
    `!llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>`: element
    type, layers, heads, head dim, block size (tokens), maximum sequence
    length, and the number of shards. Shard `i` holds the tokens
    `[i * maxSeqLen / shards, (i + 1) * maxSeqLen / shards)`.
  }];
  let parameters = (ins "Type":$elementType, "int64_t":$numLayers,
                        "int64_t":$numHeads, "int64_t":$headDim,
                        "int64_t":$blockSize, "int64_t":$maxSeqLen,
                        "int64_t":$shards);
  let assemblyFormat = [{
    `<` $elementType `,` $numLayers `,` $numHeads `,` $headDim `,` $blockSize
    `,` $maxSeqLen `,` `shards` `=` $shards `>`
  }];
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    /// Tokens of the sequence held by one shard.
    int64_t getTokensPerShard() const { return getMaxSeqLen() / getShards(); }
  }];
}

def LLM_PagedKVCacheType : LLM_Type<"PagedKVCache", "paged_kv_cache"> {
  let summary = "paged KV cache: fixed-size blocks of tokens, block tables per sequence";
  let description = [{
    `!llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>`: element type, layers,
    key/value heads, head dim, block size (tokens per block), and the maximum
    sequence length.
  }];
  let parameters = (ins "Type":$elementType, "int64_t":$numLayers,
                        "int64_t":$numKvHeads, "int64_t":$headDim,
                        "int64_t":$blockSize, "int64_t":$maxSeqLen);
  let assemblyFormat = [{
    `<` $elementType `,` $numLayers `,` $numKvHeads `,` $headDim `,`
    $blockSize `,` $maxSeqLen `>`
  }];
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    /// Blocks needed to hold one sequence of maxSeqLen tokens.
    int64_t getMaxBlocksPerSequence() const {
      return (getMaxSeqLen() + getBlockSize() - 1) / getBlockSize();
    }
  }];
}

def LLM_DevicePtrType : LLM_Type<"DevicePtr", "device_ptr"> {
  let summary = "address of memory on another device";
}

def LLM_OpHandleType : LLM_Type<"OpHandle", "op"> {
  let summary = "handle naming an operation, used by cost annotations";
}

#endif // LLMIR_IR_LLMTYPES_TD

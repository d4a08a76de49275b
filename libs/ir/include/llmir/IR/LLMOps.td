//===- LLMOps.td - ops of the llm dialect -------------------*- tablegen -*-===//
//
// All tensor types are local (per-device) shapes. docs/ir.md states the
// semantics and verifier rules of every op; the verifiers live in src/.
//
//===----------------------------------------------------------------------===//

#ifndef LLMIR_IR_LLMOPS_TD
#define LLMIR_IR_LLMOPS_TD

include "mlir/IR/OpBase.td"
include "mlir/Interfaces/SideEffectInterfaces.td"
include "llmir/IR/LLMDialect.td"
include "llmir/IR/LLMTypes.td"

// Every op prints as the seed shows: `llm.op(operands) {attrs} : (T...) -> R`.
class LLM_Op<string mnemonic, list<Trait> traits = []>
    : Op<LLM_Dialect, mnemonic, traits> {
  let assemblyFormat =
      "`(` operands `)` attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

defvar LLM_FloatTensor = RankedTensorOf<[AnyFloat]>;
// Activations: [tokens, features], tokens usually dynamic.
defvar LLM_Activation = 2DTensorOf<[AnyFloat]>;
defvar LLM_TokenVector = 1DTensorOf<[I32]>;

//===----------------------------------------------------------------------===//
// Tensor parallelism
//===----------------------------------------------------------------------===//

def LLM_ShardedLinearOp : LLM_Op<"sharded_linear", [NoSideEffect]> {
  let summary = "one shard of a tensor-parallel linear layer: y = x * W^T + b";
  let description = [{
    `weight` is this shard's block of the logical [out, in] weight.
    `shard_dim = 0`: column-parallel, output features split, the result is
    this shard's slice of the output. `shard_dim = 1`: row-parallel, input
    features split, the result is a full-size partial sum to be all-reduced;
    the bias (full [out]) is added by shard 0 only.
  }];
  let arguments = (ins LLM_FloatTensor:$input, LLM_FloatTensor:$weight,
                       Optional<LLM_FloatTensor>:$bias,
                       LLM_I32Attr:$shard_dim, LLM_I32Attr:$num_shards,
                       LLM_I32Attr:$shard_id);
  let results = (outs LLM_FloatTensor:$result);
}

def LLM_AllGatherOp : LLM_Op<"all_gather"> {
  let summary = "concatenate the tensors of a device group along `dim`";
  let arguments = (ins AnyRankedTensor:$input, LLM_I32Attr:$dim,
                       LLM_I32Attr:$group_size,
                       OptionalAttr<LLM_I64Attr>:$padding);
  let results = (outs AnyRankedTensor:$result);
}

def LLM_AllReduceOp : LLM_Op<"all_reduce"> {
  let summary = "element-wise reduction over a device group";
  let arguments = (ins AnyRankedTensor:$input, StrAttr:$reduction,
                       LLM_I32Attr:$group_size);
  let results = (outs AnyRankedTensor:$result);
}

//===----------------------------------------------------------------------===//
// Pipeline parallelism
//===----------------------------------------------------------------------===//

def LLM_PipelineStageOp : LLM_Op<"pipeline_stage"> {
  let summary = "one stage of a pipeline-parallel model";
  let description = [{
    The optional body takes the inputs as block arguments and ends in
    `llm.yield` of the results. Without a body the op names a stage whose
    computation lives elsewhere (e.g. on another device).
  }];
  let arguments = (ins Variadic<AnyType>:$inputs, LLM_I32Attr:$stage_id,
                       LLM_I32Attr:$num_stages, StrAttr:$schedule);
  let results = (outs Variadic<AnyType>:$outputs);
  let regions = (region AnyRegion:$body);
  let assemblyFormat = [{
    `(` operands `)` attr-dict `:` functional-type(operands, results) ($body^)?
  }];
}

def LLM_YieldOp : Op<LLM_Dialect, "yield",
    [NoSideEffect, Terminator, HasParent<"PipelineStageOp">]> {
  let summary = "returns the results of a pipeline stage body";
  let arguments = (ins Variadic<AnyType>:$values);
  let assemblyFormat = "attr-dict ($values^ `:` type($values))?";
}

def LLM_PipelineSendOp : LLM_Op<"pipeline_send"> {
  let summary = "send a tensor to a later pipeline stage";
  let arguments = (ins AnyRankedTensor:$input, LLM_I32Attr:$dest_stage);
}

def LLM_PipelineRecvOp : LLM_Op<"pipeline_recv"> {
  let summary = "receive a tensor from an earlier pipeline stage";
  let arguments = (ins LLM_I32Attr:$source_stage);
  let results = (outs AnyRankedTensor:$result);
}

//===----------------------------------------------------------------------===//
// Sequence parallelism and sharded KV caches
//===----------------------------------------------------------------------===//

def LLM_SequenceParallelAttentionOp : LLM_Op<"sequence_parallel_attention"> {
  let summary = "attention of this device's query rows over the whole sequence";
  let description = [{
    Two forms (docs/ir.md). The seed's: `(q, k, v)`, q [B, seq_length, H, D]
    holds query positions [seq_start, seq_start + seq_length); k, v:
    [B, total_length, H, D]. The decoder form: `(q, k, v, kv_cache)` with
    2-D activations q [T_r, H*D], k/v [T_r, Hkv*D], this device's contiguous
    slice of the step's rows, and `layer`, `num_heads`, `num_kv_heads`,
    `head_dim`, `scale`: the k/v rows of the `shards` devices are gathered,
    every device writes all of them into its (whole) cache and attends its
    own query rows causally; the result is [T_r, H*D].
  }];
  let arguments = (ins LLM_FloatTensor:$query, LLM_FloatTensor:$key,
                       LLM_FloatTensor:$value,
                       Arg<Optional<LLM_ShardedKVCacheType>, "sharded KV cache",
                           [MemRead, MemWrite]>:$kv_cache,
                       OptionalAttr<LLM_I32Attr>:$seq_start,
                       OptionalAttr<LLM_I32Attr>:$seq_length,
                       OptionalAttr<LLM_I32Attr>:$total_length,
                       OptionalAttr<LLM_I32Attr>:$layer,
                       OptionalAttr<LLM_I32Attr>:$num_heads,
                       OptionalAttr<LLM_I32Attr>:$num_kv_heads,
                       OptionalAttr<LLM_I32Attr>:$head_dim,
                       OptionalAttr<F32Attr>:$scale,
                       OptionalAttr<LLM_I32Attr>:$sliding_window,
                       OptionalAttr<LLM_I32Attr>:$kv_group);
  let results = (outs LLM_FloatTensor:$result);
  let extraClassDeclaration = [{
    /// The decoder form: (q, k, v, cache) over this device's rows.
    bool isDecoderForm() { return static_cast<bool>(getKvCache()); }
  }];
}

def LLM_DistributedAttentionOp : LLM_Op<"distributed_attention"> {
  let summary = "attention over a KV cache sharded along the sequence";
  let description = [{
    Two forms (docs/ir.md). The seed's: `(q, kv_cache)` with q [B, S, H, D],
    the result shaped like q. The decoder form: `(q, k, v, kv_cache)` with
    2-D activations q [T, H*D], k/v [T, Hkv*D] and `layer`, `num_kv_heads`:
    every shard writes k/v at the positions of the blocks it owns (logical
    block b belongs to shard b % shards), attends over them and returns its
    partial output with the log-sum-exp; the exact merge of the shards'
    partials is the result [T, H*D].
  }];
  let arguments = (ins RankedTensorOf<[AnyFloat]>:$query,
                       Variadic<LLM_Activation>:$key_value,
                       Arg<LLM_ShardedKVCacheType, "sharded KV cache", [MemRead, MemWrite]>:$kv_cache,
                       OptionalAttr<LLM_I32Attr>:$layer,
                       LLM_I32Attr:$num_heads,
                       OptionalAttr<LLM_I32Attr>:$num_kv_heads,
                       LLM_I32Attr:$head_dim, F32Attr:$scale,
                       OptionalAttr<LLM_I32Attr>:$sliding_window,
                       OptionalAttr<LLM_I32Attr>:$kv_group);
  let results = (outs RankedTensorOf<[AnyFloat]>:$result);
  let extraClassDeclaration = [{
    /// The decoder form: (q, k, v, cache) over 2-D activations.
    bool isDecoderForm() { return !getKeyValue().empty(); }
  }];
}

//===----------------------------------------------------------------------===//
// Remote memory and cost annotations
//===----------------------------------------------------------------------===//

// Two forms each, chosen by the operand type (docs/ir.md). The seed's moves a
// tensor through a `!llm.device_ptr` of another `device`. The cache form
// names KV blocks of a paged or sharded cache, not addresses: "this step's
// blocks to load (store) for layers [layer_begin, layer_end)" -- which blocks
// is data of the step (the lowering's KV_LOAD / KV_STORE), and the store is
// content-keyed. It has no result: the cache operand's memory effects keep
// it before (load) or after (store) the attention that uses those layers.
defvar LLM_RemoteTarget =
    AnyTypeOf<[LLM_DevicePtrType, LLM_PagedKVCacheType, LLM_ShardedKVCacheType]>;

def LLM_RemoteLoadOp : LLM_Op<"remote_load", [MemoryEffects<[MemRead, MemWrite]>]> {
  let summary = "read a tensor from another device's memory, or KV blocks into a cache";
  let arguments = (ins LLM_RemoteTarget:$address, OptionalAttr<LLM_I32Attr>:$device,
                       OptionalAttr<LLM_I32Attr>:$layer_begin,
                       OptionalAttr<LLM_I32Attr>:$layer_end);
  let results = (outs Optional<AnyRankedTensor>:$result);
  let extraClassDeclaration = [{
    /// The cache form: KV blocks of the step into the cache.
    bool isCacheForm() { return !getAddress().getType().isa<DevicePtrType>(); }
  }];
}

def LLM_RemoteStoreOp : LLM_Op<"remote_store", [MemoryEffects<[MemRead, MemWrite]>]> {
  let summary = "write a tensor into another device's memory, or KV blocks out of a cache";
  let arguments = (ins Optional<AnyRankedTensor>:$data, LLM_RemoteTarget:$address,
                       OptionalAttr<LLM_I32Attr>:$device,
                       OptionalAttr<LLM_I32Attr>:$layer_begin,
                       OptionalAttr<LLM_I32Attr>:$layer_end);
  let extraClassDeclaration = [{
    /// The cache form: KV blocks of the step out of the cache to the store.
    bool isCacheForm() { return !getAddress().getType().isa<DevicePtrType>(); }
  }];
}

def LLM_CostAnnotationOp : LLM_Op<"cost_annotation"> {
  let summary = "cost model estimate for an operation";
  let arguments = (ins LLM_OpHandleType:$target, F32Attr:$compute_flops,
                       LLM_I64Attr:$memory_bytes, LLM_I64Attr:$communication_bytes);
}

//===----------------------------------------------------------------------===//
// Decoder building blocks (Llama / Mistral / Qwen2)
//===----------------------------------------------------------------------===//

def LLM_WeightOp : LLM_Op<"weight", [NoSideEffect]> {
  let summary = "a checkpoint tensor by name";
  let description = [{
    With `shard_dim` and `num_shards` the result is one of `num_shards` equal
    slices of the named tensor along `shard_dim`; which slice is decided per
    rank at lowering. With `row_offset` and `tensor_rows` the named tensor
    (of `tensor_rows` rows) is read from row `row_offset` on: a part of a
    fused tensor (Phi-3's qkv_proj, gate_up_proj); a dim-0 shard is then a
    slice of that part. `unpadded_size`: the tensor's size along shard_dim,
    less than num_shards x the slice's; past it the slices hold zeros
    (vocabulary padding, uneven head and MLP splits). `shard_query_heads`,
    `kv_group`, `head_dim`: a k/v projection under an uneven head split;
    shard r starts at KV head (r * shard_query_heads) / kv_group.
  }];
  let arguments = (ins StrAttr:$name, OptionalAttr<LLM_I32Attr>:$shard_dim,
                       OptionalAttr<LLM_I32Attr>:$num_shards,
                       OptionalAttr<LLM_I64Attr>:$row_offset,
                       OptionalAttr<LLM_I64Attr>:$tensor_rows,
                       OptionalAttr<LLM_I64Attr>:$unpadded_size,
                       OptionalAttr<LLM_I64Attr>:$shard_query_heads,
                       OptionalAttr<LLM_I64Attr>:$kv_group,
                       OptionalAttr<LLM_I64Attr>:$head_dim);
  let results = (outs LLM_FloatTensor:$result);
  let assemblyFormat = "$name attr-dict `:` type($result)";
}

def LLM_EmbeddingOp : LLM_Op<"embedding", [NoSideEffect]> {
  let summary = "rows of the embedding table for the step's token ids";
  let arguments = (ins LLM_TokenVector:$tokens, 2DTensorOf<[AnyFloat]>:$table);
  let results = (outs LLM_Activation:$result);
}

def LLM_RMSNormOp : LLM_Op<"rms_norm", [NoSideEffect]> {
  let summary = "x / sqrt(mean(x^2) + epsilon) * weight, per group of weight-size features";
  let arguments = (ins LLM_Activation:$input, 1DTensorOf<[AnyFloat]>:$weight,
                       F32Attr:$epsilon);
  let results = (outs LLM_Activation:$result);
}

def LLM_LinearOp : LLM_Op<"linear", [NoSideEffect]> {
  let summary = "y = x * W^T + b with W in checkpoint layout [out, in]";
  let arguments = (ins LLM_Activation:$input, 2DTensorOf<[AnyFloat]>:$weight,
                       Optional<1DTensorOf<[AnyFloat]>>:$bias);
  let results = (outs LLM_Activation:$result);
}

def LLM_RotaryEmbeddingOp : LLM_Op<"rotary_embedding", [NoSideEffect]> {
  let summary = "rotary position embedding per head (rotate_half convention)";
  let arguments = (ins LLM_Activation:$input, LLM_TokenVector:$positions,
                       LLM_I32Attr:$head_dim, F32Attr:$theta,
                       OptionalAttr<StrAttr>:$scaling,
                       OptionalAttr<F32Attr>:$scaling_factor,
                       OptionalAttr<F32Attr>:$low_freq_factor,
                       OptionalAttr<F32Attr>:$high_freq_factor,
                       OptionalAttr<LLM_I32Attr>:$original_max_position);
  let results = (outs LLM_Activation:$result);
}

def LLM_PagedAttentionOp : LLM_Op<"paged_attention"> {
  let summary = "write k/v into the paged cache, then causal attention over it";
  let arguments = (ins LLM_Activation:$query, LLM_Activation:$key,
                       LLM_Activation:$value,
                       Arg<LLM_PagedKVCacheType, "paged KV cache", [MemRead, MemWrite]>:$cache,
                       LLM_I32Attr:$layer, LLM_I32Attr:$num_heads,
                       LLM_I32Attr:$num_kv_heads, LLM_I32Attr:$head_dim,
                       F32Attr:$scale, OptionalAttr<LLM_I32Attr>:$sliding_window,
                       OptionalAttr<LLM_I32Attr>:$kv_group);
  let results = (outs LLM_Activation:$result);
}

def LLM_SwiGLUOp : LLM_Op<"swiglu", [NoSideEffect]> {
  let summary = "silu(gate) * up";
  let arguments = (ins LLM_Activation:$gate, LLM_Activation:$up);
  let results = (outs LLM_Activation:$result);
}

def LLM_AddOp : LLM_Op<"add", [NoSideEffect]> {
  let summary = "element-wise (residual) add";
  let arguments = (ins LLM_Activation:$lhs, LLM_Activation:$rhs);
  let results = (outs LLM_Activation:$result);
}

def LLM_LogitsOp : LLM_Op<"logits", [NoSideEffect]> {
  let summary = "project the last token of each sequence onto the vocabulary";
  let arguments = (ins LLM_Activation:$input, 2DTensorOf<[AnyFloat]>:$weight);
  let results = (outs LLM_Activation:$result);
}

#endif // LLMIR_IR_LLMOPS_TD

// One case per verifier rule of the llm dialect (docs/ir.md lists the rules).
// Each split is one rule; expected-error carries the full message.
// RUN: llmir-opt %s -split-input-file -verify-diagnostics
// ---- types
// expected-error @+1 {{sharded_kv_cache element type is 'i8', expected a float type}}
func.func @types_0(%c: !llm.sharded_kv_cache<i8, 12, 16, 64, 16, 32768, shards=4>) {
  return
}

// -----

// expected-error @+1 {{sharded_kv_cache numLayers is -1, expected > 0}}
func.func @types_1(%c: !llm.sharded_kv_cache<f16, -1, 16, 64, 16, 32768, shards=4>) {
  return
}

// -----

// expected-error @+1 {{sharded_kv_cache shards is 0, expected > 0}}
func.func @types_2(%c: !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=0>) {
  return
}

// -----


// expected-error @+1 {{sharded_kv_cache maxSeqLen (1000) is not divisible by shards (16)}}
func.func @types_4(%c: !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 1000, shards=16>) {
  return
}

// -----

// expected-error @+1 {{paged_kv_cache blockSize is 0, expected > 0}}
func.func @types_5(%c: !llm.paged_kv_cache<f32, 4, 4, 32, 0, 1024>) {
  return
}

// -----

// expected-error @+1 {{paged_kv_cache element type is 'i32', expected a float type}}
func.func @types_6(%c: !llm.paged_kv_cache<i32, 4, 4, 32, 16, 1024>) {
  return
}

// -----

// ---- sharded_linear
func.func @sharded_linear_7(%x: tensor<16x1024xf16>, %w: tensor<1024x1024xf16>) {
  // expected-error @+1 {{'llm.sharded_linear' op num_shards is 0, expected >= 1}}
  %r = llm.sharded_linear(%x, %w) {shard_dim = 1 : i32, num_shards = 0 : i32, shard_id = 0 : i32} : (tensor<16x1024xf16>, tensor<1024x1024xf16>) -> tensor<16x1024xf16>
  return
}

// -----

func.func @sharded_linear_8(%x: tensor<16x1024xf16>, %w: tensor<1024x1024xf16>) {
  // expected-error @+1 {{'llm.sharded_linear' op shard_id is 8, expected 0 <= shard_id < num_shards (8)}}
  %r = llm.sharded_linear(%x, %w) {shard_dim = 1 : i32, num_shards = 8 : i32, shard_id = 8 : i32} : (tensor<16x1024xf16>, tensor<1024x1024xf16>) -> tensor<16x1024xf16>
  return
}

// -----

func.func @sharded_linear_9(%x: tensor<16x1024xf16>, %w: tensor<1024x1024xf16>) {
  // expected-error @+1 {{'llm.sharded_linear' op shard_id is -1, expected 0 <= shard_id < num_shards (8)}}
  %r = llm.sharded_linear(%x, %w) {shard_dim = 1 : i32, num_shards = 8 : i32, shard_id = -1 : i32} : (tensor<16x1024xf16>, tensor<1024x1024xf16>) -> tensor<16x1024xf16>
  return
}

// -----

func.func @sharded_linear_10(%x: tensor<16x1024xf16>, %w: tensor<1024x1024xf16>) {
  // expected-error @+1 {{'llm.sharded_linear' op shard_dim is 2, expected 0 (column-parallel) or 1 (row-parallel)}}
  %r = llm.sharded_linear(%x, %w) {shard_dim = 2 : i32, num_shards = 8 : i32, shard_id = 2 : i32} : (tensor<16x1024xf16>, tensor<1024x1024xf16>) -> tensor<16x1024xf16>
  return
}

// -----

func.func @sharded_linear_11(%x: tensor<16x1024xf16>, %w: tensor<2x1024x1024xf16>) {
  // expected-error @+1 {{'llm.sharded_linear' op weight has rank 3, expected rank 2 [out_features, in_features]}}
  %r = llm.sharded_linear(%x, %w) {shard_dim = 1 : i32, num_shards = 8 : i32, shard_id = 2 : i32} : (tensor<16x1024xf16>, tensor<2x1024x1024xf16>) -> tensor<16x1024xf16>
  return
}

// -----

func.func @sharded_linear_12(%x: tensor<16x1024xf16>, %w: tensor<?x1024xf16>) {
  // expected-error @+1 {{'llm.sharded_linear' op weight type 'tensor<?x1024xf16>' has a dynamic dim, expected a static shape}}
  %r = llm.sharded_linear(%x, %w) {shard_dim = 1 : i32, num_shards = 8 : i32, shard_id = 2 : i32} : (tensor<16x1024xf16>, tensor<?x1024xf16>) -> tensor<16x1024xf16>
  return
}

// -----

func.func @sharded_linear_13(%x: tensor<f16>, %w: tensor<1024x1024xf16>) {
  // expected-error @+1 {{'llm.sharded_linear' op input has rank 0, expected rank >= 1}}
  %r = llm.sharded_linear(%x, %w) {shard_dim = 1 : i32, num_shards = 8 : i32, shard_id = 2 : i32} : (tensor<f16>, tensor<1024x1024xf16>) -> tensor<16x1024xf16>
  return
}

// -----

func.func @sharded_linear_14(%x: tensor<16x512xf16>, %w: tensor<1024x1024xf16>) {
  // expected-error @+1 {{'llm.sharded_linear' op input dim 1 is 512, expected weight dim 1 (in_features) = 1024}}
  %r = llm.sharded_linear(%x, %w) {shard_dim = 1 : i32, num_shards = 8 : i32, shard_id = 2 : i32} : (tensor<16x512xf16>, tensor<1024x1024xf16>) -> tensor<16x1024xf16>
  return
}

// -----

func.func @sharded_linear_15(%x: tensor<16x1024xf16>, %w: tensor<1024x1024xf16>) {
  // expected-error @+1 {{'llm.sharded_linear' op result has rank 1, expected the input rank 2}}
  %r = llm.sharded_linear(%x, %w) {shard_dim = 1 : i32, num_shards = 8 : i32, shard_id = 2 : i32} : (tensor<16x1024xf16>, tensor<1024x1024xf16>) -> tensor<1024xf16>
  return
}

// -----

func.func @sharded_linear_16(%x: tensor<16x1024xf16>, %w: tensor<1024x1024xf16>) {
  // expected-error @+1 {{'llm.sharded_linear' op result dim 0 is 8, expected input dim 0 = 16}}
  %r = llm.sharded_linear(%x, %w) {shard_dim = 1 : i32, num_shards = 8 : i32, shard_id = 2 : i32} : (tensor<16x1024xf16>, tensor<1024x1024xf16>) -> tensor<8x1024xf16>
  return
}

// -----

func.func @sharded_linear_17(%x: tensor<16x1024xf16>, %w: tensor<128x1024xf16>) {
  // expected-error @+1 {{'llm.sharded_linear' op result dim 1 is 1024, expected weight dim 0 (out_features) = 128}}
  %r = llm.sharded_linear(%x, %w) {shard_dim = 0 : i32, num_shards = 8 : i32, shard_id = 2 : i32} : (tensor<16x1024xf16>, tensor<128x1024xf16>) -> tensor<16x1024xf16>
  return
}

// -----

func.func @sharded_linear_18(%x: tensor<16x1024xf16>, %w: tensor<1024x1024xf16>) {
  // expected-error @+1 {{'llm.sharded_linear' op result element type 'f32' differs from input element type 'f16', expected them equal}}
  %r = llm.sharded_linear(%x, %w) {shard_dim = 1 : i32, num_shards = 8 : i32, shard_id = 2 : i32} : (tensor<16x1024xf16>, tensor<1024x1024xf16>) -> tensor<16x1024xf32>
  return
}

// -----

func.func @sharded_linear_19(%x: tensor<16x1024xf16>, %w: tensor<1024x1024xf16>, %b: tensor<1x1024xf16>) {
  // expected-error @+1 {{'llm.sharded_linear' op bias has rank 2, expected rank 1 [out_features]}}
  %r = llm.sharded_linear(%x, %w, %b) {shard_dim = 1 : i32, num_shards = 8 : i32, shard_id = 2 : i32} : (tensor<16x1024xf16>, tensor<1024x1024xf16>, tensor<1x1024xf16>) -> tensor<16x1024xf16>
  return
}

// -----

func.func @sharded_linear_20(%x: tensor<16x1024xf16>, %w: tensor<1024x1024xf16>, %b: tensor<128xf16>) {
  // expected-error @+1 {{'llm.sharded_linear' op bias dim 0 is 128, expected weight dim 0 (out_features) = 1024}}
  %r = llm.sharded_linear(%x, %w, %b) {shard_dim = 1 : i32, num_shards = 8 : i32, shard_id = 2 : i32} : (tensor<16x1024xf16>, tensor<1024x1024xf16>, tensor<128xf16>) -> tensor<16x1024xf16>
  return
}

// -----

func.func @sharded_linear_21(%x: tensor<16x1024xf16>, %w: tensor<1024x1024xf16>) {
  // expected-error @+1 {{'llm.sharded_linear' op attribute 'shard_dim' failed to satisfy constraint: 32-bit signless integer attribute}}
  %r = llm.sharded_linear(%x, %w) {shard_dim = 1 : i64, num_shards = 8 : i32, shard_id = 2 : i32} : (tensor<16x1024xf16>, tensor<1024x1024xf16>) -> tensor<16x1024xf16>
  return
}

// -----

// ---- all_gather
func.func @all_gather_22(%x: tensor<16x128xf16>) {
  // expected-error @+1 {{'llm.all_gather' op group_size is 0, expected >= 1}}
  %r = llm.all_gather(%x) {dim = 1 : i32, group_size = 0 : i32} : (tensor<16x128xf16>) -> tensor<16x1024xf16>
  return
}

// -----

func.func @all_gather_23(%x: tensor<16x128xf16>) {
  // expected-error @+1 {{'llm.all_gather' op dim is 2, expected 0 <= dim < input rank (2)}}
  %r = llm.all_gather(%x) {dim = 2 : i32, group_size = 8 : i32} : (tensor<16x128xf16>) -> tensor<16x1024xf16>
  return
}

// -----

func.func @all_gather_24(%x: tensor<16x128xf16>) {
  // expected-error @+1 {{'llm.all_gather' op result has rank 3, expected the input rank 2}}
  %r = llm.all_gather(%x) {dim = 1 : i32, group_size = 8 : i32} : (tensor<16x128xf16>) -> tensor<16x8x128xf16>
  return
}

// -----

func.func @all_gather_25(%x: tensor<16x128xf16>) {
  // expected-error @+1 {{'llm.all_gather' op result element type 'f32' differs from input element type 'f16', expected them equal}}
  %r = llm.all_gather(%x) {dim = 1 : i32, group_size = 8 : i32} : (tensor<16x128xf16>) -> tensor<16x1024xf32>
  return
}

// -----

func.func @all_gather_26(%x: tensor<16x128xf16>) {
  // expected-error @+1 {{'llm.all_gather' op result dim 0 is 8, expected input dim 0 = 16}}
  %r = llm.all_gather(%x) {dim = 1 : i32, group_size = 8 : i32} : (tensor<16x128xf16>) -> tensor<8x1024xf16>
  return
}

// -----

func.func @all_gather_27(%x: tensor<16x128xf16>) {
  // expected-error @+1 {{'llm.all_gather' op result dim 1 is 1000, expected group_size (8) x input dim (128) = 1024}}
  %r = llm.all_gather(%x) {dim = 1 : i32, group_size = 8 : i32} : (tensor<16x128xf16>) -> tensor<16x1000xf16>
  return
}

// -----

// ---- all_reduce
func.func @all_reduce_28(%x: tensor<16x1024xf16>) {
  // expected-error @+1 {{'llm.all_reduce' op group_size is -2, expected >= 1}}
  %r = llm.all_reduce(%x) {reduction = "sum", group_size = -2 : i32} : (tensor<16x1024xf16>) -> tensor<16x1024xf16>
  return
}

// -----

func.func @all_reduce_29(%x: tensor<16x1024xf16>) {
  // expected-error @+1 {{'llm.all_reduce' op reduction is "avg", expected one of "sum", "max", "min", "prod"}}
  %r = llm.all_reduce(%x) {reduction = "avg", group_size = 8 : i32} : (tensor<16x1024xf16>) -> tensor<16x1024xf16>
  return
}

// -----

func.func @all_reduce_30(%x: tensor<16x1024xf16>) {
  // expected-error @+1 {{'llm.all_reduce' op result type 'tensor<16x1024xf32>' differs from input type 'tensor<16x1024xf16>', expected them equal}}
  %r = llm.all_reduce(%x) {reduction = "sum", group_size = 8 : i32} : (tensor<16x1024xf16>) -> tensor<16x1024xf32>
  return
}

// -----

// ---- pipeline
func.func @pipeline_31(%x: tensor<4x8xf32>) {
  // expected-error @+1 {{'llm.pipeline_stage' op num_stages is 0, expected >= 1}}
  %r = llm.pipeline_stage(%x) {stage_id = 0 : i32, num_stages = 0 : i32, schedule = "1f1b"} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  return
}

// -----

func.func @pipeline_32(%x: tensor<4x8xf32>) {
  // expected-error @+1 {{'llm.pipeline_stage' op stage_id is 4, expected 0 <= stage_id < num_stages (4)}}
  %r = llm.pipeline_stage(%x) {stage_id = 4 : i32, num_stages = 4 : i32, schedule = "1f1b"} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  return
}

// -----

func.func @pipeline_33(%x: tensor<4x8xf32>) {
  // expected-error @+1 {{'llm.pipeline_stage' op schedule is "interleaved", expected one of "1f1b", "gpipe"}}
  %r = llm.pipeline_stage(%x) {stage_id = 2 : i32, num_stages = 4 : i32, schedule = "interleaved"} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  return
}

// -----

func.func @pipeline_34(%x: tensor<4x8xf32>) {
  // expected-error @+1 {{'llm.pipeline_stage' op body argument types ('tensor<4x4xf32>') differ from the operand types ('tensor<4x8xf32>'), expected them equal}}
  %r = llm.pipeline_stage(%x) {stage_id = 2 : i32, num_stages = 4 : i32, schedule = "1f1b"} : (tensor<4x8xf32>) -> tensor<4x8xf32> {
    ^bb0(%a: tensor<4x4xf32>):
      %r = llm.pipeline_recv() {source_stage = 0 : i32} : () -> tensor<4x8xf32>
      llm.yield %r : tensor<4x8xf32>
    }
  return
}

// -----

func.func @pipeline_35(%x: tensor<4x8xf32>) {
  // expected-error @+1 {{'llm.pipeline_stage' op body yields types () that differ from the result types ('tensor<4x8xf32>'), expected them equal}}
  %r = llm.pipeline_stage(%x) {stage_id = 2 : i32, num_stages = 4 : i32, schedule = "1f1b"} : (tensor<4x8xf32>) -> tensor<4x8xf32> {
    ^bb0(%a: tensor<4x8xf32>):
      llm.yield
    }
  return
}

// -----

func.func @pipeline_36(%x: tensor<4x8xf32>) {
  // expected-error @+1 {{'llm.pipeline_stage' op body does not end in 'llm.yield', expected it to yield the results}}
  %r = llm.pipeline_stage(%x) {stage_id = 2 : i32, num_stages = 4 : i32, schedule = "1f1b"} : (tensor<4x8xf32>) -> tensor<4x8xf32> {
    ^bb0(%a: tensor<4x8xf32>):
      %s = llm.add(%a, %a) : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
    }
  return
}

// -----

func.func @pipeline_37(%x: tensor<4x8xf32>) {
  // expected-error @+1 {{'llm.pipeline_stage' op body has 2 blocks, expected 1}}
  %r = llm.pipeline_stage(%x) {stage_id = 2 : i32, num_stages = 4 : i32, schedule = "1f1b"} : (tensor<4x8xf32>) -> tensor<4x8xf32> {
    ^bb0(%a: tensor<4x8xf32>):
      llm.yield %a : tensor<4x8xf32>
    ^bb1:
      llm.yield %x : tensor<4x8xf32>
    }
  return
}

// -----

func.func @pipeline_38(%x: tensor<4x8xf32>) {
  // expected-error @+1 {{'llm.pipeline_send' op dest_stage is -1, expected >= 0}}
  llm.pipeline_send(%x) {dest_stage = -1 : i32} : (tensor<4x8xf32>) -> ()
  return
}

// -----

func.func @pipeline_39() {
  // expected-error @+1 {{'llm.pipeline_recv' op source_stage is -3, expected >= 0}}
  %r = llm.pipeline_recv() {source_stage = -3 : i32} : () -> tensor<4x8xf32>
  return
}

// -----

// ---- sequence_parallel_attention
func.func @sequence_parallel_attention_40(%q: tensor<2x1024x16x64xf16>, %k: tensor<2x8192x16x64xf16>, %v: tensor<2x8192x16x64xf16>) {
  // expected-error @+1 {{'llm.sequence_parallel_attention' op seq_start is -1, expected >= 0}}
  %r = llm.sequence_parallel_attention(%q, %k, %v) {seq_start = -1 : i32, seq_length = 1024 : i32, total_length = 8192 : i32} : (tensor<2x1024x16x64xf16>, tensor<2x8192x16x64xf16>, tensor<2x8192x16x64xf16>) -> tensor<2x1024x16x64xf16>
  return
}

// -----

func.func @sequence_parallel_attention_41(%q: tensor<2x1024x16x64xf16>, %k: tensor<2x8192x16x64xf16>, %v: tensor<2x8192x16x64xf16>) {
  // expected-error @+1 {{'llm.sequence_parallel_attention' op seq_length is 0, expected >= 1}}
  %r = llm.sequence_parallel_attention(%q, %k, %v) {seq_start = 0 : i32, seq_length = 0 : i32, total_length = 8192 : i32} : (tensor<2x1024x16x64xf16>, tensor<2x8192x16x64xf16>, tensor<2x8192x16x64xf16>) -> tensor<2x1024x16x64xf16>
  return
}

// -----

func.func @sequence_parallel_attention_42(%q: tensor<2x1024x16x64xf16>, %k: tensor<2x8192x16x64xf16>, %v: tensor<2x8192x16x64xf16>) {
  // expected-error @+1 {{'llm.sequence_parallel_attention' op seq_start (7680) + seq_length (1024) = 8704 exceeds total_length (8192), expected the chunk inside the sequence}}
  %r = llm.sequence_parallel_attention(%q, %k, %v) {seq_start = 7680 : i32, seq_length = 1024 : i32, total_length = 8192 : i32} : (tensor<2x1024x16x64xf16>, tensor<2x8192x16x64xf16>, tensor<2x8192x16x64xf16>) -> tensor<2x1024x16x64xf16>
  return
}

// -----

func.func @sequence_parallel_attention_43(%q: tensor<2x1024x16x64xf16>, %k: tensor<2x8192x16x64xf16>, %v: tensor<2x8192x16x64xf16>) {
  // expected-error @+1 {{'llm.sequence_parallel_attention' op query dim 1 is 1024, expected seq_length = 512}}
  %r = llm.sequence_parallel_attention(%q, %k, %v) {seq_start = 0 : i32, seq_length = 512 : i32, total_length = 8192 : i32} : (tensor<2x1024x16x64xf16>, tensor<2x8192x16x64xf16>, tensor<2x8192x16x64xf16>) -> tensor<2x1024x16x64xf16>
  return
}

// -----

func.func @sequence_parallel_attention_44(%q: tensor<2x1024x16x64xf16>, %k: tensor<2x8192x16x64xf16>, %v: tensor<2x8192x16x64xf16>) {
  // expected-error @+1 {{'llm.sequence_parallel_attention' op key dim 1 is 8192, expected total_length = 16384}}
  %r = llm.sequence_parallel_attention(%q, %k, %v) {seq_start = 0 : i32, seq_length = 1024 : i32, total_length = 16384 : i32} : (tensor<2x1024x16x64xf16>, tensor<2x8192x16x64xf16>, tensor<2x8192x16x64xf16>) -> tensor<2x1024x16x64xf16>
  return
}

// -----

func.func @sequence_parallel_attention_45(%q: tensor<2x1024x16x64xf16>, %k: tensor<2x8192x8x64xf16>, %v: tensor<2x8192x16x64xf16>) {
  // expected-error @+1 {{'llm.sequence_parallel_attention' op key dim 2 is 8, expected query dim 2 = 16}}
  %r = llm.sequence_parallel_attention(%q, %k, %v) {seq_start = 0 : i32, seq_length = 1024 : i32, total_length = 8192 : i32} : (tensor<2x1024x16x64xf16>, tensor<2x8192x8x64xf16>, tensor<2x8192x16x64xf16>) -> tensor<2x1024x16x64xf16>
  return
}

// -----

func.func @sequence_parallel_attention_46(%q: tensor<2x1024x16x64xf16>, %k: tensor<2x8192x16x64xf16>, %v: tensor<2x8192x16x64xf32>) {
  // expected-error @+1 {{'llm.sequence_parallel_attention' op value type 'tensor<2x8192x16x64xf32>' differs from key type 'tensor<2x8192x16x64xf16>', expected them equal}}
  %r = llm.sequence_parallel_attention(%q, %k, %v) {seq_start = 0 : i32, seq_length = 1024 : i32, total_length = 8192 : i32} : (tensor<2x1024x16x64xf16>, tensor<2x8192x16x64xf16>, tensor<2x8192x16x64xf32>) -> tensor<2x1024x16x64xf16>
  return
}

// -----

func.func @sequence_parallel_attention_47(%q: tensor<2x1024x16x64xf16>, %k: tensor<2x8192x16x64xf16>, %v: tensor<2x8192x16x64xf16>) {
  // expected-error @+1 {{'llm.sequence_parallel_attention' op result type 'tensor<2x1024x16x64xf32>' differs from query type 'tensor<2x1024x16x64xf16>', expected them equal}}
  %r = llm.sequence_parallel_attention(%q, %k, %v) {seq_start = 0 : i32, seq_length = 1024 : i32, total_length = 8192 : i32} : (tensor<2x1024x16x64xf16>, tensor<2x8192x16x64xf16>, tensor<2x8192x16x64xf16>) -> tensor<2x1024x16x64xf32>
  return
}

// -----

func.func @sequence_parallel_attention_48(%q: tensor<2x1024x16xf16>, %k: tensor<2x8192x16x64xf16>) {
  // expected-error @+1 {{'llm.sequence_parallel_attention' op query has rank 3, expected rank 4 [batch, seq, heads, head_dim]}}
  %r = llm.sequence_parallel_attention(%q, %k, %k) {seq_start = 0 : i32, seq_length = 1024 : i32, total_length = 8192 : i32} : (tensor<2x1024x16xf16>, tensor<2x8192x16x64xf16>, tensor<2x8192x16x64xf16>) -> tensor<2x1024x16xf16>
  return
}

// -----

// ---- sequence_parallel_attention, decoder form (q, k, v, kv_cache)
func.func @sequence_parallel_attention_49(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %c: !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards = 2>) {
  // expected-error @+1 {{'llm.sequence_parallel_attention' op decoder form (q, k, v, kv_cache) has seq_start, seq_length or total_length, expected none (the rows of a step are known at run time)}}
  %r = llm.sequence_parallel_attention(%q, %k, %k, %c) {seq_start = 0 : i32, layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards = 2>) -> tensor<?x256xf32>
  return
}

// -----

func.func @sequence_parallel_attention_50(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %c: !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards = 2>) {
  // expected-error @+1 {{'llm.sequence_parallel_attention' op decoder form (q, k, v, kv_cache) lacks layer, num_heads, num_kv_heads, head_dim or scale, expected all five}}
  %r = llm.sequence_parallel_attention(%q, %k, %k, %c) {num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards = 2>) -> tensor<?x256xf32>
  return
}

// -----

func.func @sequence_parallel_attention_51(%q: tensor<?x256xf32>, %k: tensor<?x64xf32>, %c: !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards = 2>) {
  // expected-error @+1 {{'llm.sequence_parallel_attention' op key dim 1 is 64, expected num_kv_heads x head_dim = 128}}
  %r = llm.sequence_parallel_attention(%q, %k, %k, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x64xf32>, tensor<?x64xf32>, !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards = 2>) -> tensor<?x256xf32>
  return
}

// -----

func.func @sequence_parallel_attention_52(%q: tensor<2x1024x16x64xf16>, %k: tensor<2x8192x16x64xf16>) {
  // expected-error @+1 {{'llm.sequence_parallel_attention' op has layer without kv_cache, expected it only in the decoder form (q, k, v, kv_cache)}}
  %r = llm.sequence_parallel_attention(%q, %k, %k) {layer = 0 : i32, seq_start = 0 : i32, seq_length = 1024 : i32, total_length = 8192 : i32} : (tensor<2x1024x16x64xf16>, tensor<2x8192x16x64xf16>, tensor<2x8192x16x64xf16>) -> tensor<2x1024x16x64xf16>
  return
}

// -----

// ---- distributed_attention
func.func @distributed_attention_49(%q: tensor<2x1x16x64xf16>, %kv: !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>) {
  // expected-error @+1 {{'llm.distributed_attention' op num_heads is 0, expected >= 1}}
  %r = llm.distributed_attention(%q, %kv) {num_heads = 0 : i32, head_dim = 64 : i32, scale = 0.125 : f32} : (tensor<2x1x16x64xf16>, !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>) -> tensor<2x1x16x64xf16>
  return
}

// -----

func.func @distributed_attention_50(%q: tensor<2x1x16x64xf16>, %kv: !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>) {
  // expected-error @+1 {{'llm.distributed_attention' op head_dim is -64, expected >= 1}}
  %r = llm.distributed_attention(%q, %kv) {num_heads = 16 : i32, head_dim = -64 : i32, scale = 0.125 : f32} : (tensor<2x1x16x64xf16>, !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>) -> tensor<2x1x16x64xf16>
  return
}

// -----

func.func @distributed_attention_51(%q: tensor<2x1x16x64xf16>, %kv: !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>) {
  // expected-error @+1 {{'llm.distributed_attention' op scale is 0, expected > 0}}
  %r = llm.distributed_attention(%q, %kv) {num_heads = 16 : i32, head_dim = 64 : i32, scale = 0.0 : f32} : (tensor<2x1x16x64xf16>, !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>) -> tensor<2x1x16x64xf16>
  return
}

// -----

func.func @distributed_attention_52(%q: tensor<2x1x16x64xf16>, %kv: !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>) {
  // expected-error @+1 {{'llm.distributed_attention' op query dim 2 is 16, expected num_heads = 8}}
  %r = llm.distributed_attention(%q, %kv) {num_heads = 8 : i32, head_dim = 64 : i32, scale = 0.125 : f32} : (tensor<2x1x16x64xf16>, !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>) -> tensor<2x1x16x64xf16>
  return
}

// -----

func.func @distributed_attention_53(%q: tensor<2x1x16x64xf16>, %kv: !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>) {
  // expected-error @+1 {{'llm.distributed_attention' op query dim 3 is 64, expected head_dim = 128}}
  %r = llm.distributed_attention(%q, %kv) {num_heads = 16 : i32, head_dim = 128 : i32, scale = 0.125 : f32} : (tensor<2x1x16x64xf16>, !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>) -> tensor<2x1x16x64xf16>
  return
}

// -----

func.func @distributed_attention_54(%q: tensor<2x1x16x64xf16>, %kv: !llm.sharded_kv_cache<f16, 12, 8, 64, 16, 32768, shards=4>) {
  // expected-error @+1 {{'llm.distributed_attention' op kv_cache has 8 heads, expected num_heads (16)}}
  %r = llm.distributed_attention(%q, %kv) {num_heads = 16 : i32, head_dim = 64 : i32, scale = 0.125 : f32} : (tensor<2x1x16x64xf16>, !llm.sharded_kv_cache<f16, 12, 8, 64, 16, 32768, shards=4>) -> tensor<2x1x16x64xf16>
  return
}

// -----

func.func @distributed_attention_55(%q: tensor<2x1x16x64xf16>, %kv: !llm.sharded_kv_cache<f16, 12, 16, 128, 16, 32768, shards=4>) {
  // expected-error @+1 {{'llm.distributed_attention' op kv_cache head dim is 128, expected head_dim (64)}}
  %r = llm.distributed_attention(%q, %kv) {num_heads = 16 : i32, head_dim = 64 : i32, scale = 0.125 : f32} : (tensor<2x1x16x64xf16>, !llm.sharded_kv_cache<f16, 12, 16, 128, 16, 32768, shards=4>) -> tensor<2x1x16x64xf16>
  return
}

// -----

func.func @distributed_attention_56(%q: tensor<2x1x16x64xf16>, %kv: !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>) {
  // expected-error @+1 {{'llm.distributed_attention' op result type 'tensor<2x2x16x64xf16>' differs from query type 'tensor<2x1x16x64xf16>', expected them equal}}
  %r = llm.distributed_attention(%q, %kv) {num_heads = 16 : i32, head_dim = 64 : i32, scale = 0.125 : f32} : (tensor<2x1x16x64xf16>, !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>) -> tensor<2x2x16x64xf16>
  return
}

// -----

// ---- remote
func.func @remote_57(%a: !llm.device_ptr) {
  // expected-error @+1 {{'llm.remote_load' op device is -1, expected >= 0}}
  %r = llm.remote_load(%a) {device = -1 : i32} : (!llm.device_ptr) -> tensor<16x1024xf16>
  return
}

// -----

func.func @remote_58(%a: !llm.device_ptr, %d: tensor<16x1024xf16>) {
  // expected-error @+1 {{'llm.remote_store' op device is -2, expected >= 0}}
  llm.remote_store(%d, %a) {device = -2 : i32} : (tensor<16x1024xf16>, !llm.device_ptr) -> ()
  return
}

// -----

func.func @remote_cache_device(%c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.remote_load' op on a KV cache takes no 'device' (the store is content-keyed)}}
  llm.remote_load(%c) {device = 0 : i32, layer_begin = 0 : i32, layer_end = 4 : i32} : (!llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> ()
  return
}

// -----

func.func @remote_cache_no_layers(%c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.remote_store' op on a KV cache needs layer_begin and layer_end}}
  llm.remote_store(%c) {layer_begin = 0 : i32} : (!llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> ()
  return
}

// -----

func.func @remote_cache_layers_past_the_cache(%c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.remote_load' op layers [2, 5) are not a non-empty range within the cache's 4 layers}}
  llm.remote_load(%c) {layer_begin = 2 : i32, layer_end = 5 : i32} : (!llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> ()
  return
}

// -----

func.func @remote_cache_empty_range(%c: !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) {
  // expected-error @+1 {{'llm.remote_store' op layers [1, 1) are not a non-empty range within the cache's 4 layers}}
  llm.remote_store(%c) {layer_begin = 1 : i32, layer_end = 1 : i32} : (!llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) -> ()
  return
}

// -----

func.func @remote_cache_with_result(%c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.remote_load' op on a KV cache has no tensor result: the step's blocks move in place}}
  %t = llm.remote_load(%c) {layer_begin = 0 : i32, layer_end = 1 : i32} : (!llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<4xf32>
  return
}

// -----

func.func @remote_cache_with_data(%c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>, %d: tensor<4xf32>) {
  // expected-error @+1 {{'llm.remote_store' op on a KV cache has no tensor operand: the step's blocks move in place}}
  llm.remote_store(%d, %c) {layer_begin = 0 : i32, layer_end = 1 : i32} : (tensor<4xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> ()
  return
}

// -----

func.func @remote_ptr_without_device(%a: !llm.device_ptr) {
  // expected-error @+1 {{'llm.remote_load' op on a !llm.device_ptr needs 'device'}}
  %r = llm.remote_load(%a) : (!llm.device_ptr) -> tensor<16x1024xf16>
  return
}

// -----

func.func @remote_ptr_with_layers(%a: !llm.device_ptr, %d: tensor<16x1024xf16>) {
  // expected-error @+1 {{'llm.remote_store' op on a !llm.device_ptr takes no layer_begin / layer_end (those name the layers of a KV cache)}}
  llm.remote_store(%d, %a) {device = 1 : i32, layer_begin = 0 : i32, layer_end = 1 : i32} : (tensor<16x1024xf16>, !llm.device_ptr) -> ()
  return
}

// -----

func.func @remote_ptr_without_result(%a: !llm.device_ptr) {
  // expected-error @+1 {{'llm.remote_load' op on a !llm.device_ptr needs a tensor result}}
  llm.remote_load(%a) {device = 1 : i32} : (!llm.device_ptr) -> ()
  return
}

// -----

// ---- cost_annotation
func.func @cost_annotation_59(%op: !llm.op) {
  // expected-error @+1 {{'llm.cost_annotation' op compute_flops is -1, expected >= 0}}
  llm.cost_annotation(%op) {compute_flops = -1.0 : f32, memory_bytes = 8192 : i64, communication_bytes = 4096 : i64} : (!llm.op) -> ()
  return
}

// -----

func.func @cost_annotation_60(%op: !llm.op) {
  // expected-error @+1 {{'llm.cost_annotation' op memory_bytes is -8, expected >= 0}}
  llm.cost_annotation(%op) {compute_flops = 1024.0 : f32, memory_bytes = -8 : i64, communication_bytes = 4096 : i64} : (!llm.op) -> ()
  return
}

// -----

func.func @cost_annotation_61(%op: !llm.op) {
  // expected-error @+1 {{'llm.cost_annotation' op communication_bytes is -4, expected >= 0}}
  llm.cost_annotation(%op) {compute_flops = 1024.0 : f32, memory_bytes = 8192 : i64, communication_bytes = -4 : i64} : (!llm.op) -> ()
  return
}

// -----

// ---- weight
func.func @weight_62() {
  // expected-error @+1 {{'llm.weight' op name is empty, expected a checkpoint tensor name}}
  %w = llm.weight "" : tensor<4x4xf32>
  return
}

// -----

func.func @weight_63() {
  // expected-error @+1 {{'llm.weight' op result type 'tensor<?x4xf32>' has a dynamic dim, expected a static shape}}
  %w = llm.weight "w" : tensor<?x4xf32>
  return
}

// -----

func.func @weight_64() {
  // expected-error @+1 {{'llm.weight' op has only one of shard_dim and num_shards, expected both or neither}}
  %w = llm.weight "w" {shard_dim = 0 : i32} : tensor<4x4xf32>
  return
}

// -----

func.func @weight_65() {
  // expected-error @+1 {{'llm.weight' op num_shards is 0, expected >= 1}}
  %w = llm.weight "w" {shard_dim = 0 : i32, num_shards = 0 : i32} : tensor<4x4xf32>
  return
}

// -----

func.func @weight_66() {
  // expected-error @+1 {{'llm.weight' op shard_dim is 2, expected 0 <= shard_dim < result rank (2)}}
  %w = llm.weight "w" {shard_dim = 2 : i32, num_shards = 2 : i32} : tensor<4x4xf32>
  return
}

// -----

// ---- embedding
func.func @embedding_67(%t: tensor<?xi32>, %e: tensor<?x256xf32>) {
  // expected-error @+1 {{'llm.embedding' op table type 'tensor<?x256xf32>' has a dynamic dim, expected a static shape}}
  %h = llm.embedding(%t, %e) : (tensor<?xi32>, tensor<?x256xf32>) -> tensor<?x256xf32>
  return
}

// -----

func.func @embedding_68(%t: tensor<4xi32>, %e: tensor<1000x256xf32>) {
  // expected-error @+1 {{'llm.embedding' op result dim 0 is 5, expected tokens dim 0 = 4}}
  %h = llm.embedding(%t, %e) : (tensor<4xi32>, tensor<1000x256xf32>) -> tensor<5x256xf32>
  return
}

// -----

func.func @embedding_69(%t: tensor<?xi32>, %e: tensor<1000x256xf32>) {
  // expected-error @+1 {{'llm.embedding' op result dim 1 is 128, expected table dim 1 (hidden size) = 256}}
  %h = llm.embedding(%t, %e) : (tensor<?xi32>, tensor<1000x256xf32>) -> tensor<?x128xf32>
  return
}

// -----

func.func @embedding_70(%t: tensor<?xi64>, %e: tensor<1000x256xf32>) {
  // expected-error @+1 {{'llm.embedding' op operand #0 must be 1D tensor of 32-bit signless integer values}}
  %h = llm.embedding(%t, %e) : (tensor<?xi64>, tensor<1000x256xf32>) -> tensor<?x256xf32>
  return
}

// -----

// ---- rms_norm
func.func @rms_norm_71(%x: tensor<?x256xf32>, %w: tensor<256xf32>) {
  // expected-error @+1 {{'llm.rms_norm' op epsilon is 0, expected > 0}}
  %y = llm.rms_norm(%x, %w) {epsilon = 0.0 : f32} : (tensor<?x256xf32>, tensor<256xf32>) -> tensor<?x256xf32>
  return
}

// -----

func.func @rms_norm_72(%x: tensor<?x256xf32>, %w: tensor<96xf32>) {
  // expected-error @+1 {{'llm.rms_norm' op weight dim 0 is 96, expected input dim 1 (256) or a divisor of it (a per-head norm)}}
  %y = llm.rms_norm(%x, %w) {epsilon = 1.0e-05 : f32} : (tensor<?x256xf32>, tensor<96xf32>) -> tensor<?x256xf32>
  return
}

// -----

func.func @rms_norm_73(%x: tensor<?x256xf32>, %w: tensor<256xf32>) {
  // expected-error @+1 {{'llm.rms_norm' op result type 'tensor<4x256xf32>' differs from input type 'tensor<?x256xf32>', expected them equal}}
  %y = llm.rms_norm(%x, %w) {epsilon = 1.0e-05 : f32} : (tensor<?x256xf32>, tensor<256xf32>) -> tensor<4x256xf32>
  return
}

// -----

// ---- linear
func.func @linear_74(%x: tensor<?x256xf32>, %w: tensor<128x512xbf16>) {
  // expected-error @+1 {{'llm.linear' op input dim 1 is 256, expected weight dim 1 (in_features) = 512}}
  %y = llm.linear(%x, %w) : (tensor<?x256xf32>, tensor<128x512xbf16>) -> tensor<?x128xf32>
  return
}

// -----

func.func @linear_75(%x: tensor<?x256xf32>, %w: tensor<128x256xbf16>) {
  // expected-error @+1 {{'llm.linear' op result dim 1 is 256, expected weight dim 0 (out_features) = 128}}
  %y = llm.linear(%x, %w) : (tensor<?x256xf32>, tensor<128x256xbf16>) -> tensor<?x256xf32>
  return
}

// -----

func.func @linear_76(%x: tensor<?x256xf32>, %w: tensor<128x256xbf16>, %b: tensor<256xbf16>) {
  // expected-error @+1 {{'llm.linear' op bias dim 0 is 256, expected weight dim 0 (out_features) = 128}}
  %y = llm.linear(%x, %w, %b) : (tensor<?x256xf32>, tensor<128x256xbf16>, tensor<256xbf16>) -> tensor<?x128xf32>
  return
}

// -----

func.func @linear_77(%x: tensor<2x?x256xf32>, %w: tensor<128x256xbf16>) {
  // expected-error @+1 {{'llm.linear' op operand #0 must be 2D tensor of floating-point values}}
  %y = llm.linear(%x, %w) : (tensor<2x?x256xf32>, tensor<128x256xbf16>) -> tensor<2x?x128xf32>
  return
}

// -----

// ---- rotary_embedding
func.func @rotary_embedding_78(%x: tensor<?x256xf32>, %p: tensor<?xi32>) {
  // expected-error @+1 {{'llm.rotary_embedding' op head_dim is 31, expected an even number > 0}}
  %y = llm.rotary_embedding(%x, %p) {head_dim = 31 : i32, theta = 10000.0 : f32} : (tensor<?x256xf32>, tensor<?xi32>) -> tensor<?x256xf32>
  return
}

// -----

func.func @rotary_embedding_79(%x: tensor<?x256xf32>, %p: tensor<?xi32>) {
  // expected-error @+1 {{'llm.rotary_embedding' op head_dim is 0, expected an even number > 0}}
  %y = llm.rotary_embedding(%x, %p) {head_dim = 0 : i32, theta = 10000.0 : f32} : (tensor<?x256xf32>, tensor<?xi32>) -> tensor<?x256xf32>
  return
}

// -----

func.func @rotary_embedding_80(%x: tensor<?x256xf32>, %p: tensor<?xi32>) {
  // expected-error @+1 {{'llm.rotary_embedding' op theta is -1, expected > 0}}
  %y = llm.rotary_embedding(%x, %p) {head_dim = 32 : i32, theta = -1.0 : f32} : (tensor<?x256xf32>, tensor<?xi32>) -> tensor<?x256xf32>
  return
}

// -----

func.func @rotary_embedding_81(%x: tensor<?x256xf32>, %p: tensor<?xi32>) {
  // expected-error @+1 {{'llm.rotary_embedding' op input dim 1 is 256, expected a multiple of head_dim (96)}}
  %y = llm.rotary_embedding(%x, %p) {head_dim = 96 : i32, theta = 10000.0 : f32} : (tensor<?x256xf32>, tensor<?xi32>) -> tensor<?x256xf32>
  return
}

// -----

func.func @rotary_embedding_82(%x: tensor<4x256xf32>, %p: tensor<3xi32>) {
  // expected-error @+1 {{'llm.rotary_embedding' op positions dim 0 is 3, expected input dim 0 (tokens) = 4}}
  %y = llm.rotary_embedding(%x, %p) {head_dim = 32 : i32, theta = 10000.0 : f32} : (tensor<4x256xf32>, tensor<3xi32>) -> tensor<4x256xf32>
  return
}

// -----

func.func @rotary_embedding_83(%x: tensor<?x256xf32>, %p: tensor<?xi32>) {
  // expected-error @+1 {{'llm.rotary_embedding' op result type 'tensor<?x256xf16>' differs from input type 'tensor<?x256xf32>', expected them equal}}
  %y = llm.rotary_embedding(%x, %p) {head_dim = 32 : i32, theta = 10000.0 : f32} : (tensor<?x256xf32>, tensor<?xi32>) -> tensor<?x256xf16>
  return
}

// -----

// ---- paged_attention
func.func @paged_attention_84(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.paged_attention' op num_heads is 0, expected >= 1}}
  %y = llm.paged_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 0 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  return
}

// -----

func.func @paged_attention_85(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.paged_attention' op num_kv_heads is 0, expected >= 1}}
  %y = llm.paged_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 0 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  return
}

// -----

func.func @paged_attention_86(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.paged_attention' op head_dim is -32, expected >= 1}}
  %y = llm.paged_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = -32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  return
}

// -----

func.func @paged_attention_87(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.paged_attention' op scale is -0.5, expected > 0}}
  %y = llm.paged_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = -0.5 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  return
}

// -----

func.func @paged_attention_88(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.paged_attention' op num_heads (6) is not a multiple of num_kv_heads (4)}}
  %y = llm.paged_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 6 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  return
}

// -----

func.func @paged_attention_89(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.paged_attention' op layer is 4, expected 0 <= layer < cache numLayers (4)}}
  %y = llm.paged_attention(%q, %k, %v, %c) {layer = 4 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  return
}

// -----

func.func @paged_attention_90(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.paged_attention' op cache has 4 kv heads, expected num_kv_heads (2)}}
  %y = llm.paged_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 2 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  return
}

// -----

func.func @paged_attention_91(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.paged_attention' op cache head dim is 32, expected head_dim (16)}}
  %y = llm.paged_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 16 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  return
}

// -----

func.func @paged_attention_92(%q: tensor<?x128xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.paged_attention' op query dim 1 is 128, expected num_heads x head_dim = 256}}
  %y = llm.paged_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x128xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x128xf32>
  return
}

// -----

func.func @paged_attention_93(%q: tensor<?x256xf32>, %k: tensor<?x64xf32>, %v: tensor<?x128xf32>, %c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.paged_attention' op key dim 1 is 64, expected num_kv_heads x head_dim = 128}}
  %y = llm.paged_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x64xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  return
}

// -----

func.func @paged_attention_94(%q: tensor<4x256xf32>, %k: tensor<5x128xf32>, %v: tensor<?x128xf32>, %c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.paged_attention' op key dim 0 is 5, expected query dim 0 (tokens) = 4}}
  %y = llm.paged_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<4x256xf32>, tensor<5x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<4x256xf32>
  return
}

// -----

func.func @paged_attention_95(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf16>, %c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.paged_attention' op value type 'tensor<?x128xf16>' differs from key type 'tensor<?x128xf32>', expected them equal}}
  %y = llm.paged_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf16>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  return
}

// -----

func.func @paged_attention_96(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.paged_attention' op result type 'tensor<?x256xf16>' differs from query type 'tensor<?x256xf32>', expected them equal}}
  %y = llm.paged_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf16>
  return
}

// -----

// ---- swiglu
func.func @swiglu_97(%g: tensor<?x512xf32>, %u: tensor<?x256xf32>) {
  // expected-error @+1 {{'llm.swiglu' op up type 'tensor<?x256xf32>' differs from gate type 'tensor<?x512xf32>', expected them equal}}
  %y = llm.swiglu(%g, %u) : (tensor<?x512xf32>, tensor<?x256xf32>) -> tensor<?x512xf32>
  return
}

// -----

func.func @swiglu_98(%g: tensor<?x512xf32>, %u: tensor<?x512xf32>) {
  // expected-error @+1 {{'llm.swiglu' op result type 'tensor<?x256xf32>' differs from gate type 'tensor<?x512xf32>', expected them equal}}
  %y = llm.swiglu(%g, %u) : (tensor<?x512xf32>, tensor<?x512xf32>) -> tensor<?x256xf32>
  return
}

// -----

// ---- add
func.func @add_99(%a: tensor<?x256xf32>, %b: tensor<4x256xf32>) {
  // expected-error @+1 {{'llm.add' op rhs type 'tensor<4x256xf32>' differs from lhs type 'tensor<?x256xf32>', expected them equal}}
  %y = llm.add(%a, %b) : (tensor<?x256xf32>, tensor<4x256xf32>) -> tensor<?x256xf32>
  return
}

// -----

func.func @add_100(%a: tensor<?x256xf32>, %b: tensor<?x256xf32>) {
  // expected-error @+1 {{'llm.add' op result type 'tensor<?x256xbf16>' differs from lhs type 'tensor<?x256xf32>', expected them equal}}
  %y = llm.add(%a, %b) : (tensor<?x256xf32>, tensor<?x256xf32>) -> tensor<?x256xbf16>
  return
}

// -----

// ---- logits
func.func @logits_101(%x: tensor<?x256xf32>, %w: tensor<?x256xbf16>) {
  // expected-error @+1 {{'llm.logits' op weight type 'tensor<?x256xbf16>' has a dynamic dim, expected a static shape}}
  %y = llm.logits(%x, %w) : (tensor<?x256xf32>, tensor<?x256xbf16>) -> tensor<?x1000xf32>
  return
}

// -----

func.func @logits_102(%x: tensor<?x128xf32>, %w: tensor<1000x256xbf16>) {
  // expected-error @+1 {{'llm.logits' op input dim 1 is 128, expected weight dim 1 (hidden size) = 256}}
  %y = llm.logits(%x, %w) : (tensor<?x128xf32>, tensor<1000x256xbf16>) -> tensor<?x1000xf32>
  return
}

// -----

func.func @logits_103(%x: tensor<?x256xf32>, %w: tensor<1000x256xbf16>) {
  // expected-error @+1 {{'llm.logits' op result dim 1 is 999, expected weight dim 0 (vocab size) = 1000}}
  %y = llm.logits(%x, %w) : (tensor<?x256xf32>, tensor<1000x256xbf16>) -> tensor<?x999xf32>
  return
}

// -----

// ---- distributed_attention, decoder form (q, k, v, kv_cache)

func.func @distributed_attention_decoder_104(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) {
  // expected-error @+1 {{'llm.distributed_attention' op decoder form (q, k, v, kv_cache) lacks layer, expected layer and num_kv_heads}}
  %r = llm.distributed_attention(%q, %k, %v, %c) {num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) -> tensor<?x256xf32>
  return
}

// -----

func.func @distributed_attention_decoder_105(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) {
  // expected-error @+1 {{'llm.distributed_attention' op decoder form (q, k, v, kv_cache) lacks num_kv_heads, expected layer and num_kv_heads}}
  %r = llm.distributed_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) -> tensor<?x256xf32>
  return
}

// -----

func.func @distributed_attention_decoder_106(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) {
  // expected-error @+1 {{'llm.distributed_attention' op layer is 4, expected 0 <= layer < kv_cache numLayers (4)}}
  %r = llm.distributed_attention(%q, %k, %v, %c) {layer = 4 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) -> tensor<?x256xf32>
  return
}

// -----

func.func @distributed_attention_decoder_107(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) {
  // expected-error @+1 {{'llm.distributed_attention' op num_heads (6) is not a multiple of num_kv_heads (4)}}
  %r = llm.distributed_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 6 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) -> tensor<?x256xf32>
  return
}

// -----

func.func @distributed_attention_decoder_108(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.sharded_kv_cache<f32, 4, 8, 32, 16, 1024, shards=2>) {
  // expected-error @+1 {{'llm.distributed_attention' op kv_cache has 8 kv heads, expected num_kv_heads (4)}}
  %r = llm.distributed_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.sharded_kv_cache<f32, 4, 8, 32, 16, 1024, shards=2>) -> tensor<?x256xf32>
  return
}

// -----

func.func @distributed_attention_decoder_109(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.sharded_kv_cache<f32, 4, 4, 64, 16, 1024, shards=2>) {
  // expected-error @+1 {{'llm.distributed_attention' op kv_cache head dim is 64, expected head_dim (32)}}
  %r = llm.distributed_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.sharded_kv_cache<f32, 4, 4, 64, 16, 1024, shards=2>) -> tensor<?x256xf32>
  return
}

// -----

func.func @distributed_attention_decoder_110(%q: tensor<?x128xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) {
  // expected-error @+1 {{'llm.distributed_attention' op query dim 1 is 128, expected num_heads x head_dim = 256}}
  %r = llm.distributed_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x128xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) -> tensor<?x128xf32>
  return
}

// -----

func.func @distributed_attention_decoder_111(%q: tensor<?x256xf32>, %k: tensor<?x256xf32>, %v: tensor<?x256xf32>, %c: !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) {
  // expected-error @+1 {{'llm.distributed_attention' op key dim 1 is 256, expected num_kv_heads x head_dim = 128}}
  %r = llm.distributed_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x256xf32>, tensor<?x256xf32>, !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) -> tensor<?x256xf32>
  return
}

// -----

func.func @distributed_attention_decoder_112(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x64xf32>, %c: !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) {
  // expected-error @+1 {{'llm.distributed_attention' op value type 'tensor<?x64xf32>' differs from key type 'tensor<?x128xf32>', expected them equal}}
  %r = llm.distributed_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x64xf32>, !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) -> tensor<?x256xf32>
  return
}

// -----

func.func @distributed_attention_decoder_113(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) {
  // expected-error @+1 {{'llm.distributed_attention' op result type 'tensor<?x128xf32>' differs from query type 'tensor<?x256xf32>', expected them equal}}
  %r = llm.distributed_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) -> tensor<?x128xf32>
  return
}

// -----

func.func @distributed_attention_decoder_114(%q: tensor<2x1x8x32xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) {
  // expected-error @+1 {{'llm.distributed_attention' op query has rank 4, expected rank 2 [tokens, num_heads x head_dim]}}
  %r = llm.distributed_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<2x1x8x32xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) -> tensor<2x1x8x32xf32>
  return
}

// -----

func.func @distributed_attention_decoder_115(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %c: !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) {
  // expected-error @+1 {{'llm.distributed_attention' op has 3 operands, expected (q, kv_cache) or (q, k, v, kv_cache)}}
  %r = llm.distributed_attention(%q, %k, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) -> tensor<?x256xf32>
  return
}

// -----

func.func @distributed_attention_seed_116(%q: tensor<2x1x8x32xf32>, %c: !llm.sharded_kv_cache<f32, 4, 8, 32, 16, 1024, shards=2>) {
  // expected-error @+1 {{'llm.distributed_attention' op has layer without k and v, expected it only in the decoder form (q, k, v, kv_cache)}}
  %r = llm.distributed_attention(%q, %c) {layer = 0 : i32, num_heads = 8 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<2x1x8x32xf32>, !llm.sharded_kv_cache<f32, 4, 8, 32, 16, 1024, shards=2>) -> tensor<2x1x8x32xf32>
  return
}

// -----

func.func @distributed_attention_seed_117(%q: tensor<?x256xf32>, %c: !llm.sharded_kv_cache<f32, 4, 8, 32, 16, 1024, shards=2>) {
  // expected-error @+1 {{'llm.distributed_attention' op query has rank 2, expected rank 4 [batch, seq, heads, head_dim]}}
  %r = llm.distributed_attention(%q, %c) {num_heads = 8 : i32, head_dim = 32 : i32, scale = 0.17 : f32} : (tensor<?x256xf32>, !llm.sharded_kv_cache<f32, 4, 8, 32, 16, 1024, shards=2>) -> tensor<?x256xf32>
  return
}

// -----

// ---- issue 12: row ranges of fused weights, RoPE scaling, sliding window
func.func @weight_rows_118() {
  // expected-error @+1 {{'llm.weight' op has only one of row_offset and tensor_rows, expected both or neither}}
  %w = llm.weight "qkv" {row_offset = 4 : i64} : tensor<4x8xf32>
  return
}

// -----

func.func @weight_rows_119() {
  // expected-error @+1 {{'llm.weight' op rows [8, 16) are outside the tensor's 12 rows (tensor_rows)}}
  %w = llm.weight "qkv" {row_offset = 8 : i64, tensor_rows = 12 : i64, shard_dim = 0 : i32, num_shards = 2 : i32} : tensor<4x8xf32>
  return
}

// -----

func.func @weight_rows_120() {
  // expected-error @+1 {{'llm.weight' op reads a row range (row_offset) and is sharded along dim 1, expected dim 0}}
  %w = llm.weight "qkv" {row_offset = 0 : i64, tensor_rows = 12 : i64, shard_dim = 1 : i32, num_shards = 2 : i32} : tensor<4x4xf32>
  return
}

// -----

func.func @rotary_scaling_121(%x: tensor<?x256xf32>, %p: tensor<?xi32>) {
  // expected-error @+1 {{'llm.rotary_embedding' op scaling is "yarn", expected one of "linear", "llama3"}}
  %y = llm.rotary_embedding(%x, %p) {head_dim = 32 : i32, theta = 10000.0 : f32, scaling = "yarn", scaling_factor = 2.0 : f32} : (tensor<?x256xf32>, tensor<?xi32>) -> tensor<?x256xf32>
  return
}

// -----

func.func @rotary_scaling_122(%x: tensor<?x256xf32>, %p: tensor<?xi32>) {
  // expected-error @+1 {{'llm.rotary_embedding' op has scaling "linear" without scaling_factor}}
  %y = llm.rotary_embedding(%x, %p) {head_dim = 32 : i32, theta = 10000.0 : f32, scaling = "linear"} : (tensor<?x256xf32>, tensor<?xi32>) -> tensor<?x256xf32>
  return
}

// -----

func.func @rotary_scaling_123(%x: tensor<?x256xf32>, %p: tensor<?xi32>) {
  // expected-error @+1 {{'llm.rotary_embedding' op has scaling "llama3", expected low_freq_factor, high_freq_factor and original_max_position}}
  %y = llm.rotary_embedding(%x, %p) {head_dim = 32 : i32, theta = 10000.0 : f32, scaling = "llama3", scaling_factor = 8.0 : f32, low_freq_factor = 1.0 : f32} : (tensor<?x256xf32>, tensor<?xi32>) -> tensor<?x256xf32>
  return
}

// -----

func.func @rotary_scaling_124(%x: tensor<?x256xf32>, %p: tensor<?xi32>) {
  // expected-error @+1 {{'llm.rotary_embedding' op high_freq_factor must exceed low_freq_factor}}
  %y = llm.rotary_embedding(%x, %p) {head_dim = 32 : i32, theta = 10000.0 : f32, scaling = "llama3", scaling_factor = 8.0 : f32, low_freq_factor = 4.0 : f32, high_freq_factor = 1.0 : f32, original_max_position = 64 : i32} : (tensor<?x256xf32>, tensor<?xi32>) -> tensor<?x256xf32>
  return
}

// -----

func.func @rotary_scaling_125(%x: tensor<?x256xf32>, %p: tensor<?xi32>) {
  // expected-error @+1 {{'llm.rotary_embedding' op has llama3 scaling attributes with scaling "linear"}}
  %y = llm.rotary_embedding(%x, %p) {head_dim = 32 : i32, theta = 10000.0 : f32, scaling = "linear", scaling_factor = 8.0 : f32, low_freq_factor = 1.0 : f32} : (tensor<?x256xf32>, tensor<?xi32>) -> tensor<?x256xf32>
  return
}

// -----

func.func @rotary_scaling_126(%x: tensor<?x256xf32>, %p: tensor<?xi32>) {
  // expected-error @+1 {{'llm.rotary_embedding' op has scaling attributes without scaling}}
  %y = llm.rotary_embedding(%x, %p) {head_dim = 32 : i32, theta = 10000.0 : f32, scaling_factor = 8.0 : f32} : (tensor<?x256xf32>, tensor<?xi32>) -> tensor<?x256xf32>
  return
}

// -----

func.func @sliding_window_127(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>, %c: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // expected-error @+1 {{'llm.paged_attention' op sliding_window is 0, expected >= 1}}
  %y = llm.paged_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32, sliding_window = 0 : i32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  return
}

// -----

func.func @sliding_window_128(%q: tensor<2x1x8x32xf32>, %c: !llm.sharded_kv_cache<f32, 4, 8, 32, 16, 1024, shards=2>) {
  // expected-error @+1 {{'llm.distributed_attention' op has sliding_window without k and v, expected it only in the decoder form (q, k, v, kv_cache)}}
  %r = llm.distributed_attention(%q, %c) {num_heads = 8 : i32, head_dim = 32 : i32, scale = 0.17 : f32, sliding_window = 4 : i32} : (tensor<2x1x8x32xf32>, !llm.sharded_kv_cache<f32, 4, 8, 32, 16, 1024, shards=2>) -> tensor<2x1x8x32xf32>
  return
}

// -----

func.func @all_gather_padding_129(%x: tensor<?x389xf32>) {
  // expected-error @+1 {{'llm.all_gather' op result dim 1 is 778, expected group_size (2) x input dim (389) - padding (1) = 777}}
  %g = llm.all_gather(%x) {dim = 1 : i32, group_size = 2 : i32, padding = 1 : i64} : (tensor<?x389xf32>) -> tensor<?x778xf32>
  return
}

// -----

func.func @all_gather_padding_130(%x: tensor<?x389xf32>) {
  // expected-error @+1 {{'llm.all_gather' op padding is 778, expected >= 0 and below the gathered size}}
  %g = llm.all_gather(%x) {dim = 1 : i32, group_size = 2 : i32, padding = 778 : i64} : (tensor<?x389xf32>) -> tensor<?x0xf32>
  return
}

// -----

func.func @weight_padding_131() {
  // expected-error @+1 {{'llm.weight' op has unpadded_size, expected a shard}}
  %w = llm.weight "embed" {unpadded_size = 777 : i64} : tensor<389x64xf32>
  return
}

// -----

func.func @weight_padding_132() {
  // expected-error @+1 {{'llm.weight' op unpadded_size is 800, expected 1 to num_shards x dim 0 (778)}}
  %w = llm.weight "embed" {shard_dim = 0 : i32, num_shards = 2 : i32, unpadded_size = 800 : i64} : tensor<389x64xf32>
  return
}

// -----

func.func @weight_padding_133() {
  // expected-error @+1 {{'llm.weight' op has tensor_rows without row_offset, expected both}}
  %w = llm.weight "qkv" {tensor_rows = 12 : i64} : tensor<4x8xf32>
  return
}

// -----

func.func @weight_heads_134() {
  // expected-error @+1 {{'llm.weight' op has part of shard_query_heads, kv_group, head_dim; expected all three with unpadded_size on a dim-0 shard}}
  %w = llm.weight "k" {shard_dim = 0 : i32, num_shards = 3 : i32, unpadded_size = 32 : i64, kv_group = 4 : i64} : tensor<32x128xf32>
  return
}

// -----

func.func @paged_attention_kv_group_135(%q: tensor<?x48xf32>, %k: tensor<?x32xf32>, %v: tensor<?x32xf32>, %c: !llm.paged_kv_cache<f32, 4, 2, 16, 16, 1024>) {
  // expected-error @+1 {{'llm.paged_attention' op kv_group is 0, expected >= 1}}
  %y = llm.paged_attention(%q, %k, %v, %c) {layer = 0 : i32, num_heads = 3 : i32, num_kv_heads = 2 : i32, head_dim = 16 : i32, scale = 0.25 : f32, kv_group = 0 : i32} : (tensor<?x48xf32>, tensor<?x32xf32>, tensor<?x32xf32>, !llm.paged_kv_cache<f32, 4, 2, 16, 16, 1024>) -> tensor<?x48xf32>
  return
}

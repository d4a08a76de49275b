// Every MLIR snippet of the seed (shared/seed/distributed-deployment.md),
// wrapped in functions whose arguments are the snippets' free values. The
// round trip proves the custom syntax parses, verifies and prints back.
// RUN: llmir-opt %s | llmir-opt | FileCheck %s

// CHECK-LABEL: func.func @tensor_parallel
func.func @tensor_parallel(%input: tensor<16x1024xf16>, %weight: tensor<1024x1024xf16>,
                           %bias: tensor<1024xf16>, %local_output: tensor<16x128xf16>,
                           %partial_sum: tensor<16x1024xf16>)
    -> (tensor<16x1024xf16>, tensor<16x1024xf16>, tensor<16x1024xf16>) {
  // CHECK: llm.sharded_linear(%{{.*}}, %{{.*}}, %{{.*}}) {num_shards = 8 : i32, shard_dim = 1 : i32, shard_id = 2 : i32} : (tensor<16x1024xf16>, tensor<1024x1024xf16>, tensor<1024xf16>) -> tensor<16x1024xf16>
  %output = llm.sharded_linear(%input, %weight, %bias) {
    shard_dim = 1 : i32,
    num_shards = 8 : i32,
    shard_id = 2 : i32
  } : (tensor<16x1024xf16>, tensor<1024x1024xf16>, tensor<1024xf16>) -> tensor<16x1024xf16>

  // CHECK: llm.all_gather(%{{.*}}) {dim = 1 : i32, group_size = 8 : i32} : (tensor<16x128xf16>) -> tensor<16x1024xf16>
  %gathered = llm.all_gather(%local_output) {
    dim = 1 : i32,
    group_size = 8 : i32
  } : (tensor<16x128xf16>) -> tensor<16x1024xf16>

  // CHECK: llm.all_reduce(%{{.*}}) {group_size = 8 : i32, reduction = "sum"} : (tensor<16x1024xf16>) -> tensor<16x1024xf16>
  %reduced = llm.all_reduce(%partial_sum) {
    reduction = "sum",
    group_size = 8 : i32
  } : (tensor<16x1024xf16>) -> tensor<16x1024xf16>
  return %output, %gathered, %reduced : tensor<16x1024xf16>, tensor<16x1024xf16>, tensor<16x1024xf16>
}

// Seed fixes: `llm.pipeline_send` has no result, so it is not bound to
// `%next_input`; the received tensor is `%received` because `%input` is
// already the stage's argument (SSA names are defined once).
// CHECK-LABEL: func.func @pipeline_parallel
func.func @pipeline_parallel(%input: tensor<16x1024xf16>) -> tensor<16x1024xf16> {
  // CHECK: %[[OUT:.*]] = llm.pipeline_stage(%{{.*}}) {num_stages = 4 : i32, schedule = "1f1b", stage_id = 2 : i32} : (tensor<16x1024xf16>) -> tensor<16x1024xf16>
  %output = llm.pipeline_stage(%input) {
    stage_id = 2 : i32,
    num_stages = 4 : i32,
    schedule = "1f1b"  // 1F1B scheduling strategy
  } : (tensor<16x1024xf16>) -> tensor<16x1024xf16>

  // CHECK: llm.pipeline_send(%[[OUT]]) {dest_stage = 3 : i32} : (tensor<16x1024xf16>) -> ()
  llm.pipeline_send(%output) {
    dest_stage = 3 : i32
  } : (tensor<16x1024xf16>) -> ()

  // CHECK: llm.pipeline_recv() {source_stage = 1 : i32} : () -> tensor<16x1024xf16>
  %received = llm.pipeline_recv() {
    source_stage = 1 : i32
  } : () -> tensor<16x1024xf16>
  return %received : tensor<16x1024xf16>
}

// CHECK-LABEL: func.func @sequence_parallel
func.func @sequence_parallel(%query: tensor<16x1024x16x64xf16>, %key: tensor<16x8192x16x64xf16>,
                             %value: tensor<16x8192x16x64xf16>) -> tensor<16x1024x16x64xf16> {
  // CHECK: llm.sequence_parallel_attention(%{{.*}}, %{{.*}}, %{{.*}}) {seq_length = 1024 : i32, seq_start = 0 : i32, total_length = 8192 : i32} : (tensor<16x1024x16x64xf16>, tensor<16x8192x16x64xf16>, tensor<16x8192x16x64xf16>) -> tensor<16x1024x16x64xf16>
  %partial_attn = llm.sequence_parallel_attention(%query, %key, %value) {
    seq_start = 0 : i32,
    seq_length = 1024 : i32,
    total_length = 8192 : i32
  } : (tensor<16x1024x16x64xf16>, tensor<16x8192x16x64xf16>, tensor<16x8192x16x64xf16>) 
      -> tensor<16x1024x16x64xf16>
  return %partial_attn : tensor<16x1024x16x64xf16>
}

!sharded_kv_t = !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>

// CHECK-LABEL: func.func @sharded_kv_cache
// CHECK-SAME: !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards = 4>
func.func @sharded_kv_cache(%query: tensor<2x1x16x64xf16>, %sharded_kv: !sharded_kv_t)
    -> tensor<2x1x16x64xf16> {
  // CHECK: llm.distributed_attention(%{{.*}}, %{{.*}}) {head_dim = 64 : i32, num_heads = 16 : i32, scale = 1.250000e-01 : f32} : (tensor<2x1x16x64xf16>, !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards = 4>) -> tensor<2x1x16x64xf16>
  %output = llm.distributed_attention(%query, %sharded_kv) {
    num_heads = 16 : i32,
    head_dim = 64 : i32,
    scale = 0.125 : f32
  } : (tensor<2x1x16x64xf16>, !sharded_kv_t) -> tensor<2x1x16x64xf16>
  return %output : tensor<2x1x16x64xf16>
}

// CHECK-LABEL: func.func @remote_memory
func.func @remote_memory(%address: !llm.device_ptr, %data: tensor<16x1024xf16>) -> tensor<16x1024xf16> {
  // CHECK: llm.remote_load(%{{.*}}) {device = 2 : i32} : (!llm.device_ptr) -> tensor<16x1024xf16>
  %remote_data = llm.remote_load(%address) {
    device = 2 : i32
  } : (!llm.device_ptr) -> tensor<16x1024xf16>

  // CHECK: llm.remote_store(%{{.*}}, %{{.*}}) {device = 3 : i32} : (tensor<16x1024xf16>, !llm.device_ptr) -> ()
  llm.remote_store(%data, %address) {
    device = 3 : i32
  } : (tensor<16x1024xf16>, !llm.device_ptr) -> ()
  return %remote_data : tensor<16x1024xf16>
}

// The cache form: the step's KV blocks of layers [layer_begin, layer_end)
// into (load) or out of (store) the cache; no tensor moves.
// CHECK-LABEL: func.func @remote_kv_blocks
func.func @remote_kv_blocks(%cache: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) {
  // CHECK: llm.remote_load(%{{.*}}) {layer_begin = 0 : i32, layer_end = 4 : i32} : (!llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> ()
  llm.remote_load(%cache) {layer_begin = 0 : i32, layer_end = 4 : i32} : (!llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> ()
  // CHECK: llm.remote_store(%{{.*}}) {layer_begin = 1 : i32, layer_end = 2 : i32} : (!llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> ()
  llm.remote_store(%cache) {layer_begin = 1 : i32, layer_end = 2 : i32} : (!llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> ()
  return
}

// CHECK-LABEL: func.func @cost_model
func.func @cost_model(%op: !llm.op) {
  // CHECK: llm.cost_annotation(%{{.*}}) {communication_bytes = 4096 : i64, compute_flops = 1.024000e+03 : f32, memory_bytes = 8192 : i64} : (!llm.op) -> ()
  llm.cost_annotation(%op) {
    compute_flops = 1024.0 : f32,
    memory_bytes = 8192 : i64,
    communication_bytes = 4096 : i64
  } : (!llm.op) -> ()
  return
}

// A pipeline stage with its body: the inputs are the block arguments.
// CHECK-LABEL: func.func @pipeline_stage_body
func.func @pipeline_stage_body(%x: tensor<4x8xf32>) -> tensor<4x8xf32> {
  // CHECK: llm.pipeline_stage(%{{.*}}) {num_stages = 2 : i32, schedule = "gpipe", stage_id = 0 : i32} : (tensor<4x8xf32>) -> tensor<4x8xf32> {
  // CHECK-NEXT: ^bb0(%[[ARG:.*]]: tensor<4x8xf32>):
  // CHECK-NEXT: llm.yield %[[ARG]] : tensor<4x8xf32>
  // CHECK-NEXT: }
  %y = llm.pipeline_stage(%x) {stage_id = 0 : i32, num_stages = 2 : i32, schedule = "gpipe"}
      : (tensor<4x8xf32>) -> tensor<4x8xf32> {
  ^bb0(%arg: tensor<4x8xf32>):
    llm.yield %arg : tensor<4x8xf32>
  }
  return %y : tensor<4x8xf32>
}

// Column-parallel shard without bias; the gather restores the full output.
// CHECK-LABEL: func.func @column_parallel
func.func @column_parallel(%x: tensor<16x1024xf16>, %w: tensor<128x1024xf16>) -> tensor<16x1024xf16> {
  // CHECK: llm.sharded_linear(%{{.*}}, %{{.*}}) {num_shards = 8 : i32, shard_dim = 0 : i32, shard_id = 7 : i32} : (tensor<16x1024xf16>, tensor<128x1024xf16>) -> tensor<16x128xf16>
  %local = llm.sharded_linear(%x, %w) {shard_dim = 0 : i32, num_shards = 8 : i32, shard_id = 7 : i32}
      : (tensor<16x1024xf16>, tensor<128x1024xf16>) -> tensor<16x128xf16>
  %full = llm.all_gather(%local) {dim = 1 : i32, group_size = 8 : i32} : (tensor<16x128xf16>) -> tensor<16x1024xf16>
  return %full : tensor<16x1024xf16>
}

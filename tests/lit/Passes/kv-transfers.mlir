// llm-insert-kv-transfers: in each block that runs attention over a KV cache,
// one llm.remote_load of the block's layers right before its first attention
// and one llm.remote_store of the same layers right after its last.
// RUN: llmir-opt %s --llm-insert-kv-transfers -split-input-file | FileCheck %s

// CHECK-LABEL: func.func @two_layers
// CHECK: llm.rms_norm
// CHECK-NEXT: llm.remote_load(%[[CACHE:.*]]) {layer_begin = 0 : i32, layer_end = 2 : i32} : (!llm.paged_kv_cache<f32, 2, 4, 32, 16, 1024>) -> ()
// CHECK-NEXT: llm.paged_attention({{.*}}) {{{.*}}layer = 0 : i32
// CHECK-NEXT: llm.add
// CHECK-NEXT: llm.paged_attention({{.*}}) {{{.*}}layer = 1 : i32
// CHECK-NEXT: llm.remote_store(%[[CACHE]]) {layer_begin = 0 : i32, layer_end = 2 : i32} : (!llm.paged_kv_cache<f32, 2, 4, 32, 16, 1024>) -> ()
// CHECK-NEXT: llm.add
// CHECK-NEXT: return
func.func @two_layers(%x: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>,
                      %w: tensor<256xf32>, %cache: !llm.paged_kv_cache<f32, 2, 4, 32, 16, 1024>) -> tensor<?x256xf32> {
  %n = llm.rms_norm(%x, %w) {epsilon = 1.0e-5 : f32} : (tensor<?x256xf32>, tensor<256xf32>) -> tensor<?x256xf32>
  %a0 = llm.paged_attention(%n, %k, %v, %cache) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32}
      : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 2, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  %h = llm.add(%a0, %x) : (tensor<?x256xf32>, tensor<?x256xf32>) -> tensor<?x256xf32>
  %a1 = llm.paged_attention(%h, %k, %v, %cache) {layer = 1 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32}
      : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 2, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  %out = llm.add(%a1, %h) : (tensor<?x256xf32>, tensor<?x256xf32>) -> tensor<?x256xf32>
  return %out : tensor<?x256xf32>
}

// -----

// Each pipeline stage's body moves the blocks of its own layers.
// CHECK-LABEL: func.func @stages
// CHECK: stage_id = 0
// CHECK: llm.remote_load(%{{.*}}) {layer_begin = 0 : i32, layer_end = 1 : i32}
// CHECK-NEXT: llm.paged_attention({{.*}}layer = 0 : i32
// CHECK-NEXT: llm.remote_store(%{{.*}}) {layer_begin = 0 : i32, layer_end = 1 : i32}
// CHECK-NEXT: llm.yield
// CHECK: stage_id = 1
// CHECK: llm.remote_load(%{{.*}}) {layer_begin = 1 : i32, layer_end = 2 : i32}
// CHECK-NEXT: llm.paged_attention({{.*}}layer = 1 : i32
// CHECK-NEXT: llm.remote_store(%{{.*}}) {layer_begin = 1 : i32, layer_end = 2 : i32}
// CHECK-NEXT: llm.yield
func.func @stages(%x: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>,
                  %cache: !llm.paged_kv_cache<f32, 2, 4, 32, 16, 1024>) -> tensor<?x256xf32> {
  %s0 = llm.pipeline_stage(%x) {stage_id = 0 : i32, num_stages = 2 : i32, schedule = "1f1b"} : (tensor<?x256xf32>) -> tensor<?x256xf32> {
  ^bb0(%in: tensor<?x256xf32>):
    %a = llm.paged_attention(%in, %k, %v, %cache) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32}
        : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 2, 4, 32, 16, 1024>) -> tensor<?x256xf32>
    llm.yield %a : tensor<?x256xf32>
  }
  %s1 = llm.pipeline_stage(%s0) {stage_id = 1 : i32, num_stages = 2 : i32, schedule = "1f1b"} : (tensor<?x256xf32>) -> tensor<?x256xf32> {
  ^bb0(%in: tensor<?x256xf32>):
    %a = llm.paged_attention(%in, %k, %v, %cache) {layer = 1 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32}
        : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 2, 4, 32, 16, 1024>) -> tensor<?x256xf32>
    llm.yield %a : tensor<?x256xf32>
  }
  return %s1 : tensor<?x256xf32>
}

// -----

// The decoder form of distributed attention over a sharded cache.
// CHECK-LABEL: func.func @sharded
// CHECK: llm.remote_load(%{{.*}}) {layer_begin = 3 : i32, layer_end = 4 : i32} : (!llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards = 2>) -> ()
// CHECK-NEXT: llm.distributed_attention
// CHECK-NEXT: llm.remote_store(%{{.*}}) {layer_begin = 3 : i32, layer_end = 4 : i32}
func.func @sharded(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>,
                   %cache: !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) -> tensor<?x256xf32> {
  %o = llm.distributed_attention(%q, %k, %v, %cache) {layer = 3 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32}
      : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>) -> tensor<?x256xf32>
  return %o : tensor<?x256xf32>
}

// -----

// No attention over a cache: nothing to move.
// CHECK-LABEL: func.func @no_cache
// CHECK-NOT: llm.remote_
func.func @no_cache(%a: tensor<?x256xf32>) -> tensor<?x256xf32> {
  %s = llm.add(%a, %a) : (tensor<?x256xf32>, tensor<?x256xf32>) -> tensor<?x256xf32>
  return %s : tensor<?x256xf32>
}

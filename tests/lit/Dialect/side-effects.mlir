// Pure llm ops fold away when unused; ops that touch caches, remote memory or
// other devices stay. Checks the traits the passes rely on.
// RUN: llmir-opt %s --canonicalize | FileCheck %s

// CHECK-LABEL: func.func @unused_results
func.func @unused_results(%x: tensor<?x256xf32>, %k_in: tensor<?x128xf32>, %positions: tensor<?xi32>,
                          %cache: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>,
                          %kv: !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>,
                          %q: tensor<2x1x16x64xf16>, %addr: !llm.device_ptr, %t: tensor<16x1024xf16>) {
  // CHECK-NOT: llm.weight
  // CHECK-NOT: llm.linear
  // CHECK-NOT: llm.rotary_embedding
  %w = llm.weight "model.layers.0.self_attn.k_proj.weight" : tensor<128x256xbf16>
  %k = llm.linear(%x, %w) : (tensor<?x256xf32>, tensor<128x256xbf16>) -> tensor<?x128xf32>
  %q_rot = llm.rotary_embedding(%x, %positions) {head_dim = 32 : i32, theta = 10000.0 : f32} : (tensor<?x256xf32>, tensor<?xi32>) -> tensor<?x256xf32>
  // CHECK: llm.paged_attention
  %attn = llm.paged_attention(%x, %k_in, %k_in, %cache) {layer = 3 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32}
      : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  // CHECK: llm.all_reduce
  %sum = llm.all_reduce(%t) {reduction = "max", group_size = 2 : i32} : (tensor<16x1024xf16>) -> tensor<16x1024xf16>
  // CHECK: llm.remote_store
  llm.remote_store(%t, %addr) {device = 0 : i32} : (tensor<16x1024xf16>, !llm.device_ptr) -> ()
  // The cache forms have no result to be unused: they move KV blocks.
  // CHECK: llm.remote_load(%{{.*}}) {layer_begin
  llm.remote_load(%cache) {layer_begin = 0 : i32, layer_end = 4 : i32} : (!llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> ()
  // CHECK: llm.remote_store(%{{.*}}) {layer_begin
  llm.remote_store(%kv) {layer_begin = 0 : i32, layer_end = 12 : i32} : (!llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>) -> ()
  return
}

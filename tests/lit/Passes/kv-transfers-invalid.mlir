// What llm-insert-kv-transfers refuses, with the reason.
// RUN: llmir-opt %s --llm-insert-kv-transfers -split-input-file -verify-diagnostics

func.func @gap(%x: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>,
               %cache: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32> {
  %a0 = llm.paged_attention(%x, %k, %v, %cache) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32}
      : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  // expected-error @+1 {{'llm.paged_attention' op uses layer 2 after layer 0; llm-insert-kv-transfers needs the attention ops of a block over consecutive layers in order}}
  %a2 = llm.paged_attention(%a0, %k, %v, %cache) {layer = 2 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32}
      : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  return %a2 : tensor<?x256xf32>
}

// -----

func.func @twice(%x: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>,
                 %cache: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32> {
  // expected-error @+1 {{'llm.remote_load' op is already here: llm-insert-kv-transfers runs once}}
  llm.remote_load(%cache) {layer_begin = 0 : i32, layer_end = 1 : i32} : (!llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> ()
  %a0 = llm.paged_attention(%x, %k, %v, %cache) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32}
      : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  return %a0 : tensor<?x256xf32>
}

// -----

func.func @seed_form(%q: tensor<2x1x16x64xf16>, %cache: !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>) -> tensor<2x1x16x64xf16> {
  // expected-error @+1 {{'llm.distributed_attention' op has no 'layer': llm-insert-kv-transfers needs the layer of every attention over the cache}}
  %o = llm.distributed_attention(%q, %cache) {num_heads = 16 : i32, head_dim = 64 : i32, scale = 0.125 : f32}
      : (tensor<2x1x16x64xf16>, !llm.sharded_kv_cache<f16, 12, 16, 64, 16, 32768, shards=4>) -> tensor<2x1x16x64xf16>
  return %o : tensor<2x1x16x64xf16>
}

// -----

func.func @out_of_order(%x: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>,
                        %cache: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32> {
  %a1 = llm.paged_attention(%x, %k, %v, %cache) {layer = 1 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32}
      : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  // expected-error @+1 {{'llm.paged_attention' op uses layer 0 after layer 1; llm-insert-kv-transfers needs the attention ops of a block over consecutive layers in order}}
  %a0 = llm.paged_attention(%a1, %k, %v, %cache) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32}
      : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  return %a0 : tensor<?x256xf32>
}

// Round trip of every decoder op and the paged KV cache type: a Llama-style
// layer (GQA: 8 query heads, 4 kv heads of 32) with the builtin-form checks.
// RUN: llmir-opt %s | llmir-opt | FileCheck %s

// CHECK-LABEL: func.func @decoder_layer
// CHECK-SAME: %[[TOK:[a-z0-9]+]]: tensor<?xi32>, %[[POS:[a-z0-9]+]]: tensor<?xi32>, %[[CACHE:[a-z0-9]+]]: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>
func.func @decoder_layer(%tokens: tensor<?xi32>, %positions: tensor<?xi32>,
                         %cache: !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x1000xf32> {
  // CHECK: %[[EMB_W:.*]] = llm.weight "model.embed_tokens.weight" : tensor<1000x256xbf16>
  %emb_w = llm.weight "model.embed_tokens.weight" : tensor<1000x256xbf16>
  // CHECK: %[[NORM_W:.*]] = llm.weight "model.layers.0.input_layernorm.weight" : tensor<256xf16>
  %norm_w = llm.weight "model.layers.0.input_layernorm.weight" : tensor<256xf16>
  // CHECK: llm.weight "model.layers.0.self_attn.q_proj.weight" {num_shards = 2 : i32, shard_dim = 0 : i32} : tensor<256x256xbf16>
  %q_w = llm.weight "model.layers.0.self_attn.q_proj.weight" {shard_dim = 0 : i32, num_shards = 2 : i32} : tensor<256x256xbf16>
  %q_b = llm.weight "model.layers.0.self_attn.q_proj.bias" : tensor<256xbf16>
  %k_w = llm.weight "model.layers.0.self_attn.k_proj.weight" : tensor<128x256xbf16>
  %v_w = llm.weight "model.layers.0.self_attn.v_proj.weight" : tensor<128x256xbf16>
  %gate_w = llm.weight "model.layers.0.mlp.gate_proj.weight" : tensor<512x256xf32>
  %up_w = llm.weight "model.layers.0.mlp.up_proj.weight" : tensor<512x256xf32>
  %down_w = llm.weight "model.layers.0.mlp.down_proj.weight" : tensor<256x512xf32>
  %lm_head = llm.weight "lm_head.weight" : tensor<1000x256xbf16>

  // CHECK: %[[H:.*]] = llm.embedding(%[[TOK]], %[[EMB_W]]) : (tensor<?xi32>, tensor<1000x256xbf16>) -> tensor<?x256xf32>
  %h = llm.embedding(%tokens, %emb_w) : (tensor<?xi32>, tensor<1000x256xbf16>) -> tensor<?x256xf32>
  // CHECK: %[[X:.*]] = llm.rms_norm(%[[H]], %[[NORM_W]]) {epsilon = 9.99999974E-6 : f32} : (tensor<?x256xf32>, tensor<256xf16>) -> tensor<?x256xf32>
  %x = llm.rms_norm(%h, %norm_w) {epsilon = 1.0e-05 : f32} : (tensor<?x256xf32>, tensor<256xf16>) -> tensor<?x256xf32>
  // CHECK: llm.linear(%[[X]], %{{.*}}, %{{.*}}) : (tensor<?x256xf32>, tensor<256x256xbf16>, tensor<256xbf16>) -> tensor<?x256xf32>
  %q = llm.linear(%x, %q_w, %q_b) : (tensor<?x256xf32>, tensor<256x256xbf16>, tensor<256xbf16>) -> tensor<?x256xf32>
  // CHECK: llm.linear(%[[X]], %{{.*}}) : (tensor<?x256xf32>, tensor<128x256xbf16>) -> tensor<?x128xf32>
  %k = llm.linear(%x, %k_w) : (tensor<?x256xf32>, tensor<128x256xbf16>) -> tensor<?x128xf32>
  %v = llm.linear(%x, %v_w) : (tensor<?x256xf32>, tensor<128x256xbf16>) -> tensor<?x128xf32>
  // CHECK: llm.rotary_embedding(%{{.*}}, %[[POS]]) {head_dim = 32 : i32, theta = 1.000000e+04 : f32} : (tensor<?x256xf32>, tensor<?xi32>) -> tensor<?x256xf32>
  %q_rot = llm.rotary_embedding(%q, %positions) {head_dim = 32 : i32, theta = 10000.0 : f32} : (tensor<?x256xf32>, tensor<?xi32>) -> tensor<?x256xf32>
  %k_rot = llm.rotary_embedding(%k, %positions) {head_dim = 32 : i32, theta = 10000.0 : f32} : (tensor<?x128xf32>, tensor<?xi32>) -> tensor<?x128xf32>
  // CHECK: llm.paged_attention(%{{.*}}, %{{.*}}, %{{.*}}, %[[CACHE]]) {head_dim = 32 : i32, layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, scale = 0.176776692 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  %attn = llm.paged_attention(%q_rot, %k_rot, %v, %cache) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.176776695 : f32}
      : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.paged_kv_cache<f32, 4, 4, 32, 16, 1024>) -> tensor<?x256xf32>
  // CHECK: %[[RES:.*]] = llm.add(%[[H]], %{{.*}}) : (tensor<?x256xf32>, tensor<?x256xf32>) -> tensor<?x256xf32>
  %res = llm.add(%h, %attn) : (tensor<?x256xf32>, tensor<?x256xf32>) -> tensor<?x256xf32>
  %gate = llm.linear(%res, %gate_w) : (tensor<?x256xf32>, tensor<512x256xf32>) -> tensor<?x512xf32>
  %up = llm.linear(%res, %up_w) : (tensor<?x256xf32>, tensor<512x256xf32>) -> tensor<?x512xf32>
  // CHECK: llm.swiglu(%{{.*}}, %{{.*}}) : (tensor<?x512xf32>, tensor<?x512xf32>) -> tensor<?x512xf32>
  %act = llm.swiglu(%gate, %up) : (tensor<?x512xf32>, tensor<?x512xf32>) -> tensor<?x512xf32>
  %down = llm.linear(%act, %down_w) : (tensor<?x512xf32>, tensor<256x512xf32>) -> tensor<?x256xf32>
  // CHECK: %[[OUT:.*]] = llm.add(%[[RES]], %{{.*}})
  %out = llm.add(%res, %down) : (tensor<?x256xf32>, tensor<?x256xf32>) -> tensor<?x256xf32>
  // CHECK: llm.logits(%[[OUT]], %{{.*}}) : (tensor<?x256xf32>, tensor<1000x256xbf16>) -> tensor<?x1000xf32>
  %logits = llm.logits(%out, %lm_head) : (tensor<?x256xf32>, tensor<1000x256xbf16>) -> tensor<?x1000xf32>
  return %logits : tensor<?x1000xf32>
}

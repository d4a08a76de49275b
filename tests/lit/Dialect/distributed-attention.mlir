// The decoder form of llm.distributed_attention (q, k, v, kv_cache) over 2-D
// activations, as CommunicationInsertionPass writes it for sp > 1: GQA heads,
// the layer attribute and a cache sharded 2 ways. The seed's 4-D form is
// covered by seed.mlir. Round trip, then the generic form (operand order).
// RUN: llmir-opt %s | llmir-opt | FileCheck %s
// RUN: llmir-opt %s --mlir-print-op-generic | FileCheck %s --check-prefix=GENERIC
// RUN: llmir-opt %s --canonicalize | FileCheck %s --check-prefix=EFFECTS

!cache_t = !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards=2>

// CHECK-LABEL: func.func @decoder_form
// CHECK: llm.distributed_attention(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}) {head_dim = 32 : i32, layer = 3 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, scale = 0.176776692 : f32} : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !llm.sharded_kv_cache<f32, 4, 4, 32, 16, 1024, shards = 2>) -> tensor<?x256xf32>
// GENERIC: "llm.distributed_attention"(%arg0, %arg1, %arg2, %arg3)
func.func @decoder_form(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>,
                        %cache: !cache_t) -> tensor<?x256xf32> {
  %o = llm.distributed_attention(%q, %k, %v, %cache) {layer = 3 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.176776695 : f32}
      : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !cache_t) -> tensor<?x256xf32>
  return %o : tensor<?x256xf32>
}

// The decoder form writes the cache: it survives canonicalization unused.
// EFFECTS-LABEL: func.func @writes_the_cache
// EFFECTS: llm.distributed_attention
func.func @writes_the_cache(%q: tensor<?x256xf32>, %k: tensor<?x128xf32>, %v: tensor<?x128xf32>,
                            %cache: !cache_t) {
  %o = llm.distributed_attention(%q, %k, %v, %cache) {layer = 0 : i32, num_heads = 8 : i32, num_kv_heads = 4 : i32, head_dim = 32 : i32, scale = 0.17 : f32}
      : (tensor<?x256xf32>, tensor<?x128xf32>, tensor<?x128xf32>, !cache_t) -> tensor<?x256xf32>
  return
}

// A sequence split needs no head split: one KV head in a 2-shard cache (the
// cache of a TP=2 x SP=2 rank of a model with 2 KV heads).
// CHECK-LABEL: func.func @one_kv_head
// CHECK-SAME: !llm.sharded_kv_cache<f32, 4, 1, 32, 16, 1024, shards = 2>
func.func @one_kv_head(%cache: !llm.sharded_kv_cache<f32, 4, 1, 32, 16, 1024, shards=2>) {
  return
}

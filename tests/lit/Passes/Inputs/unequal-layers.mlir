// Four decoder layers of unequal cost: layer 0 has a 4096-wide MLP, layers
// 1-3 a 64-wide one (hidden 64, 2 heads of 32, vocab 128, f32 weights).
module attributes {llm.model = {num_layers = 4 : i64, source = "unequal-layers", vocab_size = 128 : i64}} {
  func.func @prefill(%tokens: tensor<?xi32>, %positions: tensor<?xi32>, %cache: !llm.paged_kv_cache<f32, 4, 2, 32, 16, 1024>) -> tensor<?x128xf32> {
    %v1 = llm.weight "embed" : tensor<128x64xf32>
    %v2 = llm.embedding(%tokens, %v1) : (tensor<?xi32>, tensor<128x64xf32>) -> tensor<?x64xf32>
    %v3 = llm.weight "layers.0.input_norm" : tensor<64xf32>
    %v4 = llm.rms_norm(%v2, %v3) {epsilon = 1.0e-05 : f32} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %v5 = llm.weight "layers.0.q" : tensor<64x64xf32>
    %v6 = llm.linear(%v4, %v5) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v7 = llm.weight "layers.0.k" : tensor<64x64xf32>
    %v8 = llm.linear(%v4, %v7) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v9 = llm.weight "layers.0.v" : tensor<64x64xf32>
    %v10 = llm.linear(%v4, %v9) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v11 = llm.rotary_embedding(%v6, %positions) {head_dim = 32 : i32, theta = 1.0e+04 : f32} : (tensor<?x64xf32>, tensor<?xi32>) -> tensor<?x64xf32>
    %v12 = llm.rotary_embedding(%v8, %positions) {head_dim = 32 : i32, theta = 1.0e+04 : f32} : (tensor<?x64xf32>, tensor<?xi32>) -> tensor<?x64xf32>
    %v13 = llm.paged_attention(%v11, %v12, %v10, %cache) {head_dim = 32 : i32, layer = 0 : i32, num_heads = 2 : i32, num_kv_heads = 2 : i32, scale = 0.176776692 : f32} : (tensor<?x64xf32>, tensor<?x64xf32>, tensor<?x64xf32>, !llm.paged_kv_cache<f32, 4, 2, 32, 16, 1024>) -> tensor<?x64xf32>
    %v14 = llm.weight "layers.0.o" : tensor<64x64xf32>
    %v15 = llm.linear(%v13, %v14) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v16 = llm.add(%v2, %v15) : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %v17 = llm.weight "layers.0.post_norm" : tensor<64xf32>
    %v18 = llm.rms_norm(%v16, %v17) {epsilon = 1.0e-05 : f32} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %v19 = llm.weight "layers.0.gate" : tensor<4096x64xf32>
    %v20 = llm.linear(%v18, %v19) : (tensor<?x64xf32>, tensor<4096x64xf32>) -> tensor<?x4096xf32>
    %v21 = llm.weight "layers.0.up" : tensor<4096x64xf32>
    %v22 = llm.linear(%v18, %v21) : (tensor<?x64xf32>, tensor<4096x64xf32>) -> tensor<?x4096xf32>
    %v23 = llm.swiglu(%v20, %v22) : (tensor<?x4096xf32>, tensor<?x4096xf32>) -> tensor<?x4096xf32>
    %v24 = llm.weight "layers.0.down" : tensor<64x4096xf32>
    %v25 = llm.linear(%v23, %v24) : (tensor<?x4096xf32>, tensor<64x4096xf32>) -> tensor<?x64xf32>
    %v26 = llm.add(%v16, %v25) : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %v27 = llm.weight "layers.1.input_norm" : tensor<64xf32>
    %v28 = llm.rms_norm(%v26, %v27) {epsilon = 1.0e-05 : f32} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %v29 = llm.weight "layers.1.q" : tensor<64x64xf32>
    %v30 = llm.linear(%v28, %v29) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v31 = llm.weight "layers.1.k" : tensor<64x64xf32>
    %v32 = llm.linear(%v28, %v31) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v33 = llm.weight "layers.1.v" : tensor<64x64xf32>
    %v34 = llm.linear(%v28, %v33) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v35 = llm.rotary_embedding(%v30, %positions) {head_dim = 32 : i32, theta = 1.0e+04 : f32} : (tensor<?x64xf32>, tensor<?xi32>) -> tensor<?x64xf32>
    %v36 = llm.rotary_embedding(%v32, %positions) {head_dim = 32 : i32, theta = 1.0e+04 : f32} : (tensor<?x64xf32>, tensor<?xi32>) -> tensor<?x64xf32>
    %v37 = llm.paged_attention(%v35, %v36, %v34, %cache) {head_dim = 32 : i32, layer = 1 : i32, num_heads = 2 : i32, num_kv_heads = 2 : i32, scale = 0.176776692 : f32} : (tensor<?x64xf32>, tensor<?x64xf32>, tensor<?x64xf32>, !llm.paged_kv_cache<f32, 4, 2, 32, 16, 1024>) -> tensor<?x64xf32>
    %v38 = llm.weight "layers.1.o" : tensor<64x64xf32>
    %v39 = llm.linear(%v37, %v38) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v40 = llm.add(%v26, %v39) : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %v41 = llm.weight "layers.1.post_norm" : tensor<64xf32>
    %v42 = llm.rms_norm(%v40, %v41) {epsilon = 1.0e-05 : f32} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %v43 = llm.weight "layers.1.gate" : tensor<64x64xf32>
    %v44 = llm.linear(%v42, %v43) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v45 = llm.weight "layers.1.up" : tensor<64x64xf32>
    %v46 = llm.linear(%v42, %v45) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v47 = llm.swiglu(%v44, %v46) : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %v48 = llm.weight "layers.1.down" : tensor<64x64xf32>
    %v49 = llm.linear(%v47, %v48) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v50 = llm.add(%v40, %v49) : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %v51 = llm.weight "layers.2.input_norm" : tensor<64xf32>
    %v52 = llm.rms_norm(%v50, %v51) {epsilon = 1.0e-05 : f32} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %v53 = llm.weight "layers.2.q" : tensor<64x64xf32>
    %v54 = llm.linear(%v52, %v53) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v55 = llm.weight "layers.2.k" : tensor<64x64xf32>
    %v56 = llm.linear(%v52, %v55) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v57 = llm.weight "layers.2.v" : tensor<64x64xf32>
    %v58 = llm.linear(%v52, %v57) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v59 = llm.rotary_embedding(%v54, %positions) {head_dim = 32 : i32, theta = 1.0e+04 : f32} : (tensor<?x64xf32>, tensor<?xi32>) -> tensor<?x64xf32>
    %v60 = llm.rotary_embedding(%v56, %positions) {head_dim = 32 : i32, theta = 1.0e+04 : f32} : (tensor<?x64xf32>, tensor<?xi32>) -> tensor<?x64xf32>
    %v61 = llm.paged_attention(%v59, %v60, %v58, %cache) {head_dim = 32 : i32, layer = 2 : i32, num_heads = 2 : i32, num_kv_heads = 2 : i32, scale = 0.176776692 : f32} : (tensor<?x64xf32>, tensor<?x64xf32>, tensor<?x64xf32>, !llm.paged_kv_cache<f32, 4, 2, 32, 16, 1024>) -> tensor<?x64xf32>
    %v62 = llm.weight "layers.2.o" : tensor<64x64xf32>
    %v63 = llm.linear(%v61, %v62) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v64 = llm.add(%v50, %v63) : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %v65 = llm.weight "layers.2.post_norm" : tensor<64xf32>
    %v66 = llm.rms_norm(%v64, %v65) {epsilon = 1.0e-05 : f32} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %v67 = llm.weight "layers.2.gate" : tensor<64x64xf32>
    %v68 = llm.linear(%v66, %v67) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v69 = llm.weight "layers.2.up" : tensor<64x64xf32>
    %v70 = llm.linear(%v66, %v69) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v71 = llm.swiglu(%v68, %v70) : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %v72 = llm.weight "layers.2.down" : tensor<64x64xf32>
    %v73 = llm.linear(%v71, %v72) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v74 = llm.add(%v64, %v73) : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %v75 = llm.weight "layers.3.input_norm" : tensor<64xf32>
    %v76 = llm.rms_norm(%v74, %v75) {epsilon = 1.0e-05 : f32} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %v77 = llm.weight "layers.3.q" : tensor<64x64xf32>
    %v78 = llm.linear(%v76, %v77) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v79 = llm.weight "layers.3.k" : tensor<64x64xf32>
    %v80 = llm.linear(%v76, %v79) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v81 = llm.weight "layers.3.v" : tensor<64x64xf32>
    %v82 = llm.linear(%v76, %v81) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v83 = llm.rotary_embedding(%v78, %positions) {head_dim = 32 : i32, theta = 1.0e+04 : f32} : (tensor<?x64xf32>, tensor<?xi32>) -> tensor<?x64xf32>
    %v84 = llm.rotary_embedding(%v80, %positions) {head_dim = 32 : i32, theta = 1.0e+04 : f32} : (tensor<?x64xf32>, tensor<?xi32>) -> tensor<?x64xf32>
    %v85 = llm.paged_attention(%v83, %v84, %v82, %cache) {head_dim = 32 : i32, layer = 3 : i32, num_heads = 2 : i32, num_kv_heads = 2 : i32, scale = 0.176776692 : f32} : (tensor<?x64xf32>, tensor<?x64xf32>, tensor<?x64xf32>, !llm.paged_kv_cache<f32, 4, 2, 32, 16, 1024>) -> tensor<?x64xf32>
    %v86 = llm.weight "layers.3.o" : tensor<64x64xf32>
    %v87 = llm.linear(%v85, %v86) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v88 = llm.add(%v74, %v87) : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %v89 = llm.weight "layers.3.post_norm" : tensor<64xf32>
    %v90 = llm.rms_norm(%v88, %v89) {epsilon = 1.0e-05 : f32} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %v91 = llm.weight "layers.3.gate" : tensor<64x64xf32>
    %v92 = llm.linear(%v90, %v91) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v93 = llm.weight "layers.3.up" : tensor<64x64xf32>
    %v94 = llm.linear(%v90, %v93) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v95 = llm.swiglu(%v92, %v94) : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %v96 = llm.weight "layers.3.down" : tensor<64x64xf32>
    %v97 = llm.linear(%v95, %v96) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %v98 = llm.add(%v88, %v97) : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %v99 = llm.weight "final_norm" : tensor<64xf32>
    %v100 = llm.rms_norm(%v98, %v99) {epsilon = 1.0e-05 : f32} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %v101 = llm.weight "lm_head" : tensor<128x64xf32>
    %v102 = llm.logits(%v100, %v101) : (tensor<?x64xf32>, tensor<128x64xf32>) -> tensor<?x128xf32>
    return %v102 : tensor<?x128xf32>
  }
}

// A prefill's causal attention through cuDNN's fused flash attention
// (cuda::cudnnAttention in llmir/engine/CudaKernels.h). cuDNN is loaded at
// run time (dlopen of libcudnn.so.9): a machine without it runs the
// project's own tensor-core kernel, and nothing links it. Built from
// CudnnAttention.cpp where cuDNN's headers are found, else from
// CudnnAttentionUnavailable.cpp.
#pragma once

#include "llmir/engine/CudaKernels.h"

#include <memory>
#include <string>

namespace llmir::engine::cuda {

class CudnnAttention {
public:
  CudnnAttention();
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention &) = delete;
  CudnnAttention &operator=(const CudnnAttention &) = delete;

  /// Whether run() takes this shape (its pointers are not read): the
  /// library loaded and an execution plan built for its heads and bucket of
  /// rows (cudnnAttentionRows). Plans and refusals are kept, so only a
  /// bucket's first call pays (~1 s on an H200).
  bool takes(const DenseAttention &shape);
  Status run(const DenseAttention &attention, void *stream);
  /// "cudnn <version>", or why cuDNN is not used.
  std::string describe();

private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

} // namespace llmir::engine::cuda

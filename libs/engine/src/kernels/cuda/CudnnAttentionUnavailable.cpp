// CudnnAttention where cuDNN's headers were not found at build time: it
// takes nothing, and the prefill attention runs the project's own kernel.
#include "CudnnAttention.h"

namespace llmir::engine::cuda {

struct CudnnAttention::Impl {};

CudnnAttention::CudnnAttention() = default;
CudnnAttention::~CudnnAttention() = default;

bool CudnnAttention::takes(const DenseAttention &) { return false; }

Status CudnnAttention::run(const DenseAttention &, void *) {
  return Status::error("cudnn attention: built without cuDNN's headers (cudnn_graph.h)");
}

std::string CudnnAttention::describe() {
  return "built without cuDNN's headers (cudnn_graph.h)";
}

} // namespace llmir::engine::cuda

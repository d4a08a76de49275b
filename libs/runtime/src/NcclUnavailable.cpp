// Built instead of NcclBackend.cpp when CUDA/NCCL is not enabled.
#include "Communicator.h"

namespace llmir::runtime::detail {

Result<bool> streamIdle(void *) {
  return Status::error("CUDA streams unavailable: llmir_runtime was built without CUDA");
}

Result<bool> eventDone(void *) {
  return Status::error("CUDA events unavailable: llmir_runtime was built without CUDA");
}

Result<std::unique_ptr<Backend>> createNcclBackend(const RuntimeConfig &) {
  return Status::error("backend 'nccl' unavailable: llmir_runtime was built "
                       "without CUDA (LLMIR_ENABLE_CUDA=OFF or no toolkit)");
}

} // namespace llmir::runtime::detail

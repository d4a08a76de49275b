// The CUDA backend's entry points in a build without the CUDA toolkit: every
// request for a CUDA device is an error saying why.
#include "ExecutionBackend.h"

namespace llmir::engine {

bool cudaBackendBuilt() { return false; }
int cudaDeviceCount() { return 0; }

Result<std::unique_ptr<ExecutionBackend>>
createCudaBackend(const BoundProgram &, int deviceIndex, const BackendOptions &,
                  Communicator *) {
  return Status::error("device cuda:" + std::to_string(deviceIndex) +
                       " requested, but this build has no CUDA backend (the "
                       "CUDA toolkit was not found at configure time)");
}

} // namespace llmir::engine

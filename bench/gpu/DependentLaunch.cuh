// The GPU benches' kernel launch (llmir-launch-bench, llmir-chain-bench):
// standalone programs, apart from the engine's DependentLaunch.cuh, whose
// launches follow the backend's switches.
#pragma once

#include <cuda_runtime.h>

namespace llmir::bench {

/// `kernel<<<grid, block, shared, stream>>>(args...)`, allowed to overlap
/// the stream's kernel before it (programmatic dependent launch) when `pdl`.
template <typename... Params, typename... Args>
cudaError_t launchDependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared,
                            cudaStream_t stream, bool pdl, Args... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = pdl ? 1 : 0;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, args...);
}

} // namespace llmir::bench

// Where an executor keeps its tensors and runs its kernels.
#pragma once

#include "llmir/support/Status.h"

#include <string>
#include <string_view>

namespace llmir::engine {

struct Device {
  enum class Kind { Cpu, Cuda };
  Kind kind = Kind::Cpu;
  int index = 0; // CUDA device ordinal

  /// "cpu", "cuda" (device 0) or "cuda:N"; anything else is an error naming
  /// the accepted forms.
  static Result<Device> parse(std::string_view text);
  std::string name() const;
  bool isCuda() const { return kind == Kind::Cuda; }
};

/// True when this build has the CUDA backend (the toolkit was found).
bool cudaBackendBuilt();
/// CUDA devices visible to this process; 0 without a driver, a device or
/// the CUDA backend.
int cudaDeviceCount();

} // namespace llmir::engine

#include "KernelRegistry.h"

namespace llmir::engine {

void KernelRegistry::add(proto::Opcode op, Kernel kernel) {
  kernels_[static_cast<int>(op)] = std::move(kernel);
}

const Kernel *KernelRegistry::find(proto::Opcode op) const {
  auto it = kernels_.find(static_cast<int>(op));
  return it == kernels_.end() ? nullptr : &it->second;
}

} // namespace llmir::engine

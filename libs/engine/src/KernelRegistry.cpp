#include "llmir/engine/KernelRegistry.h"

#include "llmir/proto/shard_program.pb.h"

#include <string>

namespace llmir::engine {

int64_t KernelCall::intAttr(std::string_view name, int64_t fallback) const {
  auto it = instruction->int_attrs().find(std::string(name));
  return it == instruction->int_attrs().end() ? fallback : it->second;
}

double KernelCall::floatAttr(std::string_view name, double fallback) const {
  auto it = instruction->float_attrs().find(std::string(name));
  return it == instruction->float_attrs().end() ? fallback : it->second;
}

void KernelRegistry::add(proto::Opcode op, Kernel kernel) {
  kernels_[static_cast<int>(op)] = std::move(kernel);
}

const Kernel *KernelRegistry::find(proto::Opcode op) const {
  auto it = kernels_.find(static_cast<int>(op));
  return it == kernels_.end() ? nullptr : &it->second;
}

} // namespace llmir::engine

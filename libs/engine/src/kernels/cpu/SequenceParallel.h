// Kernels of the sequence-parallel opcodes (ATTENTION_PARTIAL,
// ATTENTION_MERGE), registered by cpuKernelRegistry().
#pragma once

#include "llmir/engine/KernelRegistry.h"

namespace llmir::engine {

Status runAttentionPartial(KernelCall &call);
Status runAttentionMerge(KernelCall &call);

} // namespace llmir::engine

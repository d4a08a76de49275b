// Kernels of the sequence-parallel opcodes, registered by
// cpuKernelRegistry(): the key split (ATTENTION_PARTIAL, ATTENTION_MERGE;
// SequenceParallel.cpp) and the token split (SP_SCATTER_ROWS,
// ALL_GATHER_ROWS, SP_ATTENTION; TokenSplit.cpp).
#pragma once

#include "KernelRegistry.h"

namespace llmir::engine {

Status runAttentionPartial(KernelCall &call);
Status runAttentionMerge(KernelCall &call);
Status runSpScatterRows(KernelCall &call);
Status runAllGatherRows(KernelCall &call);
Status runSpAttention(KernelCall &call);

/// OK when `x` is a [rows, width] matrix; otherwise an error naming `what`,
/// its shape and the expected one.
Status expectMatrix(const Tensor &x, int64_t rows, int64_t width, const char *what);

} // namespace llmir::engine

// Element-wise reductions over host memory, used by the Gloo backend:
// out[i] = op(a[i], b[i]). F16 and BF16 are reduced in float and rounded
// back to nearest-even.
#pragma once

#include "llmir/runtime/DistributedRuntime.h"

#include <cstddef>

namespace llmir::runtime::detail {

using HostReduceFn = void (*)(void *out, const void *a, const void *b,
                              size_t count);

HostReduceFn hostReduceFunction(DataType type, ReduceOp op);

float bf16ToFloat(uint16_t bits);
uint16_t floatToBf16(float value);

} // namespace llmir::runtime::detail

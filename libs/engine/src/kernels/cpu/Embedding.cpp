// EMBEDDING with a vocabulary-parallel table: this rank holds rows
// [vocabOffset, vocabOffset + V_local); other ids give zeros, which the
// program's all_reduce fills in from the rank that holds them.
#include "llmir/engine/CpuKernels.h"

#include <algorithm>

namespace llmir::engine::cpu {

void embedding(const int32_t *ids, int64_t T, const WeightView &table,
               int64_t vocabOffset, float *y) {
  const int64_t H = table.cols;
  for (int64_t t = 0; t < T; ++t) {
    int64_t row = static_cast<int64_t>(ids[t]) - vocabOffset;
    float *out = y + t * H;
    if (row >= 0 && row < table.rows)
      table.widenRow(row, out);
    else
      std::fill(out, out + H, 0.0f);
  }
}

} // namespace llmir::engine::cpu

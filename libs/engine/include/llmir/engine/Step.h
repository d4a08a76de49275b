// What one step of the executor processes: T tokens from one or more
// sequences (prefill chunks and decode tokens mixed).
#pragma once

#include "llmir/support/Status.h"

#include <cstdint>
#include <vector>

namespace llmir::engine {

struct KvCacheShape;

struct StepInput {
  std::vector<int32_t> tokenIds;  // T tokens of the step, grouped by sequence
  std::vector<int32_t> positions; // T, position of each token in its sequence
  std::vector<int32_t> tokenSeq;  // T, index into blockTables
  /// Per sequence: physical block ids; block i holds positions
  /// [i * block_size, (i + 1) * block_size).
  std::vector<std::vector<int32_t>> blockTables;
  /// Rows (token indices) whose logits are wanted. Empty means the last
  /// token of each sequence, in sequence order.
  std::vector<int32_t> outputRows;

  int64_t numTokens() const { return static_cast<int64_t>(tokenIds.size()); }
};

/// Checks sizes, sequence indices, positions and block tables against the
/// cache. Returns a message naming the offending token/sequence.
Status validateStepInput(const StepInput &step, const KvCacheShape &cache);

/// Rows [begin, end) of a step.
struct RowRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

/// Sequence-parallel rank `spIndex`'s contiguous slice of a step's
/// `numRows` rows: the first numRows % spSize ranks get one row more; a
/// slice is empty when numRows < spSize.
RowRange sequenceParallelRows(int64_t numRows, int64_t spSize, int64_t spIndex);

/// The rows SELECT_ROWS picks: step.outputRows, or the last token of each
/// sequence when it is empty. Assumes a validated step.
std::vector<int32_t> selectedRows(const StepInput &step);

} // namespace llmir::engine

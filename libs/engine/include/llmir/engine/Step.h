// What one step of the executor processes: T tokens from one or more
// sequences (prefill chunks and decode tokens mixed).
#pragma once

#include "llmir/support/Status.h"

#include <cstdint>
#include <vector>

namespace llmir::engine {

struct KvCacheShape;

/// Consecutive blocks of one sequence that KV_LOAD / KV_STORE move between
/// the KV cache and the KV-block store (docs/kv-store.md): logical blocks
/// firstBlock, firstBlock + 1, ... held in physical blocks `blocks`.
/// `tokenIds` are the sequence's tokens from position 0 through at least the
/// last of them: the store keys a block by its whole token prefix.
struct KvBlockRun {
  std::vector<int32_t> tokenIds;
  int32_t firstBlock = 0;
  std::vector<int32_t> blocks;
};

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
  /// Blocks the program's KV_LOAD instructions fill from the store before
  /// attention reads them (a block that does not come fails the step), and
  /// blocks its KV_STORE instructions copy out after attention wrote them.
  /// Moved through the executor's KvTransferHook (Executor.h).
  std::vector<KvBlockRun> kvLoads;
  std::vector<KvBlockRun> kvStores;
  /// Executor::launchStep only: token r is the token drawn for output row
  /// r of the step launched before this one (tokenIds' size counts the
  /// tokens; their values are not read).
  bool tokensFromLastLaunch = false;

  int64_t numTokens() const { return static_cast<int64_t>(tokenIds.size()); }
};

/// Checks sizes, sequence indices, positions and block tables against the
/// cache. Returns a message naming the offending token/sequence.
Status validateStepInput(const StepInput &step, const KvCacheShape &cache);

/// Checks KV block runs (StepInput kvLoads / kvStores): physical blocks in
/// the cache, firstBlock >= 0, tokens covering the last block. `what` names
/// the list in the error ("load", "store").
Status validateKvBlockRuns(const std::vector<KvBlockRun> &runs, const KvCacheShape &cache,
                           const char *what);

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

#include "llmir/engine/Step.h"

#include "llmir/engine/KvCache.h"

#include <algorithm>
#include <string>

namespace llmir::engine {

Status validateStepInput(const StepInput &step, const KvCacheShape &cache) {
  const size_t T = step.tokenIds.size();
  if (T == 0)
    return Status::error("step input has no tokens");
  if (step.positions.size() != T || step.tokenSeq.size() != T)
    return Status::error(
        "step input sizes differ: " + std::to_string(T) + " token ids, " +
        std::to_string(step.positions.size()) + " positions, " +
        std::to_string(step.tokenSeq.size()) +
        " sequence indices (expected one of each per token)");
  const int64_t numSeqs = static_cast<int64_t>(step.blockTables.size());
  // The message's text only on an error: building it for every token was
  // ~30 us of a 2,048-token prefill's host time.
  const auto where = [](size_t t) { return "step token " + std::to_string(t); };
  for (size_t t = 0; t < T; ++t) {
    int32_t seq = step.tokenSeq[t];
    if (seq < 0 || seq >= numSeqs)
      return Status::error(where(t) + ": sequence index " + std::to_string(seq) +
                           " outside the " + std::to_string(numSeqs) +
                           " block tables");
    int32_t pos = step.positions[t];
    if (pos < 0)
      return Status::error(where(t) + ": negative position " +
                           std::to_string(pos));
    const auto &table = step.blockTables[static_cast<size_t>(seq)];
    int64_t blockIndex = cache.blockSize > 0 ? pos / cache.blockSize : 0;
    if (blockIndex >= static_cast<int64_t>(table.size()))
      return Status::error(
          where(t) + ": position " + std::to_string(pos) + " needs block " +
          std::to_string(blockIndex) + " but sequence " + std::to_string(seq) +
          "'s block table has " + std::to_string(table.size()) +
          " blocks of " + std::to_string(cache.blockSize) + " tokens");
  }
  for (size_t s = 0; s < step.blockTables.size(); ++s)
    for (int32_t block : step.blockTables[s])
      if (block < 0 || block >= cache.numBlocks)
        return Status::error("block table of sequence " + std::to_string(s) +
                             " holds block id " + std::to_string(block) +
                             " outside [0, " +
                             std::to_string(cache.numBlocks) + ")");
  for (size_t i = 0; i < step.outputRows.size(); ++i) {
    int32_t row = step.outputRows[i];
    if (row < 0 || static_cast<size_t>(row) >= T)
      return Status::error("output row " + std::to_string(i) + " is token " +
                           std::to_string(row) + ", outside the step's " +
                           std::to_string(T) + " tokens");
  }
  return Status::ok();
}

Status validateKvBlockRuns(const std::vector<KvBlockRun> &runs, const KvCacheShape &cache,
                           const char *what) {
  for (size_t r = 0; r < runs.size(); ++r) {
    const KvBlockRun &run = runs[r];
    const std::string where = std::string("KV ") + what + " run " + std::to_string(r);
    if (run.firstBlock < 0)
      return Status::error(where + ": first block " + std::to_string(run.firstBlock) +
                           " is negative");
    for (int32_t block : run.blocks)
      if (block < 0 || block >= cache.numBlocks)
        return Status::error(where + ": block id " + std::to_string(block) +
                             " outside [0, " + std::to_string(cache.numBlocks) + ")");
    const int64_t end = (int64_t{run.firstBlock} + static_cast<int64_t>(run.blocks.size())) *
                        cache.blockSize;
    if (static_cast<int64_t>(run.tokenIds.size()) < end)
      return Status::error(where + ": blocks " + std::to_string(run.firstBlock) + " + " +
                           std::to_string(run.blocks.size()) + " end at token " +
                           std::to_string(end) + ", its token ids only " +
                           std::to_string(run.tokenIds.size()));
  }
  return Status::ok();
}

RowRange sequenceParallelRows(int64_t numRows, int64_t spSize, int64_t spIndex) {
  const int64_t base = numRows / spSize, longer = numRows % spSize;
  const int64_t begin = spIndex * base + std::min(spIndex, longer);
  return {begin, begin + base + (spIndex < longer ? 1 : 0)};
}

std::vector<int32_t> selectedRows(const StepInput &step) {
  if (!step.outputRows.empty())
    return step.outputRows;
  std::vector<int32_t> lastToken(step.blockTables.size(), -1);
  for (size_t t = 0; t < step.tokenSeq.size(); ++t)
    lastToken[static_cast<size_t>(step.tokenSeq[t])] = static_cast<int32_t>(t);
  std::vector<int32_t> rows;
  for (int32_t t : lastToken)
    if (t >= 0)
      rows.push_back(t);
  return rows;
}

} // namespace llmir::engine

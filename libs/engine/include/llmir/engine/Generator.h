// Generation of one sequence over one Executor, owning the KV block
// allocation that the scheduler owns in the mesh. Used by llmir-generate
// (single process, or one rank of a multi-process replica) and tests.
//
// Across processes every rank steps its own Executor (its ShardProgram) with
// the same StepInput; the rank that decides — the one holding the logits,
// the last pipeline stage's first TP rank — samples the token, and a
// TokenExchange hands it to every rank, so all ranks feed the same next
// token and stay in lockstep.
#pragma once

#include "llmir/engine/Executor.h"
#include "llmir/engine/Sampler.h"

#include <cstdint>
#include <functional>
#include <vector>

namespace llmir::engine {

struct GenerateRequest {
  std::vector<int32_t> promptIds;
  SamplingParams sampling;
  StopCriteria stop;
};

struct GenerateResult {
  std::vector<int32_t> outputIds;
  /// Logits of the prompt's forward pass, one row per prompt token, when
  /// requested (for comparisons against reference logits).
  Tensor promptLogits;
};

/// Called once per step on every rank: the deciding rank passes the token it
/// sampled, the others pass -1; returns the deciding rank's token (e.g. a
/// broadcast from that rank over the world group).
using TokenExchange = std::function<Result<int32_t>(int32_t decided)>;

class Generator {
public:
  /// Single process: this executor's program has the logits. `executor`
  /// must outlive the generator.
  explicit Generator(Executor &executor);
  /// One rank of a replica. `decides` must be true on exactly one rank, one
  /// whose program has an output; every rank allocates KV blocks the same
  /// way, so block tables agree across ranks.
  Generator(Executor &executor, bool decides, TokenExchange exchange);

  /// Prefills the prompt in one step, then decodes one token per step until
  /// a stop criterion holds. The sequence's KV blocks are freed at the end.
  /// `onToken` (optional) sees each new token as it is produced; prompt
  /// logits are filled on the deciding rank only.
  Result<GenerateResult>
  generate(const GenerateRequest &request, bool wantPromptLogits = false,
           const std::function<void(int32_t)> &onToken = {});

private:
  Executor &executor_;
  bool decides_ = true;
  TokenExchange exchange_; // empty: single process
  BlockAllocator blocks_;
};

} // namespace llmir::engine

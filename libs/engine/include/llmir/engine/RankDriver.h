// One rank's part of a generation that runs across processes. Every rank
// steps its own Executor (its ShardProgram) with the same StepInput; the
// rank that decides — one rank holding the logits, the last pipeline stage's
// first TP rank — samples the token, and a TokenExchange hands it to every
// rank, so all ranks feed the same next token and stay in lockstep.
#pragma once

#include "llmir/engine/Generator.h"

#include <functional>

namespace llmir::engine {

/// Called once per step on every rank: the deciding rank passes the token it
/// sampled, the others pass -1; returns the deciding rank's token (e.g. a
/// broadcast from that rank over the world group).
using TokenExchange = std::function<Result<int32_t>(int32_t decided)>;

class RankDriver {
public:
  /// `executor` must outlive the driver. `decides` must be true on exactly
  /// one rank of the replica, one whose program has an output.
  RankDriver(Executor &executor, bool decides, TokenExchange exchange);

  /// Same contract as Generator::generate, on every rank; onToken and the
  /// stop criteria see the shared token. Prompt logits are filled on the
  /// deciding rank only.
  Result<GenerateResult>
  generate(const GenerateRequest &request, bool wantPromptLogits = false,
           const std::function<void(int32_t)> &onToken = {});

private:
  Executor &executor_;
  bool decides_;
  TokenExchange exchange_;
  BlockAllocator blocks_;
};

} // namespace llmir::engine

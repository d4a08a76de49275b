// Single-process generation over one Executor: owns the KV block allocation
// that the scheduler owns in the mesh. Used by llmir-generate and tests.
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

class Generator {
public:
  /// `executor` must outlive the generator.
  explicit Generator(Executor &executor);

  /// Prefills the prompt in one step, then decodes one token per step until
  /// a stop criterion holds. The sequence's KV blocks are freed at the end.
  /// `onToken` (optional) sees each new token as it is produced.
  Result<GenerateResult>
  generate(const GenerateRequest &request, bool wantPromptLogits = false,
           const std::function<void(int32_t)> &onToken = {});

private:
  Executor &executor_;
  BlockAllocator blocks_;
};

} // namespace llmir::engine

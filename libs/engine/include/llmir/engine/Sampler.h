// Token sampling from logits: greedy, or temperature + top-k + top-p with a
// per-sequence seeded generator (same seed, same logits -> same tokens).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace llmir::engine {

struct SamplingParams {
  float temperature = 1.0f; // 0: greedy
  float topP = 1.0f;        // nucleus mass in (0, 1]
  int topK = 0;             // 0: off
  uint64_t seed = 0;
};

class Sampler {
public:
  explicit Sampler(SamplingParams params);

  /// A token id in [0, logits.size()). Greedy picks the lowest index among
  /// equal maxima. logits must be non-empty.
  int32_t sample(std::span<const float> logits);

private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<int32_t> order_;  // scratch: candidate ids
  std::vector<float> probs_;    // scratch: candidate probabilities
};

/// Greedy choice: lowest index of the maximum.
int32_t argmax(std::span<const float> logits);

/// When a sequence stops generating.
struct StopCriteria {
  std::vector<int32_t> stopTokenIds; // EOS and other stop ids
  int64_t maxNewTokens = 0;          // 0: no limit

  /// True when `token`, the numGenerated-th new token, ends the sequence.
  bool shouldStop(int32_t token, int64_t numGenerated) const;
};

} // namespace llmir::engine

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

  /// The lowest id of the maximum is the token (no draw is made).
  bool greedy() const { return temperature <= 0.0f || topK == 1; }
};

class Sampler {
public:
  explicit Sampler(SamplingParams params);

  /// A token id in [0, logits.size()). Greedy picks the lowest index among
  /// equal maxima. logits must be non-empty.
  int32_t sample(std::span<const float> logits);
  /// The same with the generator's uniform draw in [0, 1) given (what
  /// nextUniform() returns): a device samples with it, and the two agree.
  int32_t sample(std::span<const float> logits, double uniform);
  /// The uniform draw a non-greedy sample() makes (the generator advances).
  double nextUniform();

private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<int32_t> order_;  // scratch: candidate ids
  std::vector<float> probs_;    // scratch: candidate probabilities
};

/// Greedy choice: lowest index of the maximum.
int32_t argmax(std::span<const float> logits);

/// log(sum(exp(logits))), in f64: logits[i] - it is the log-softmax.
double logNormalizer(std::span<const float> logits);

/// One output row's sampling where the logits are (Executor::stepSample):
/// the parameters, the draw Sampler::nextUniform() gives for the row's seed,
/// and whether the token's logprob is wanted.
struct RowSampling {
  SamplingParams params;
  double uniform = 0;
  bool logprob = false;
};
struct SampledToken {
  int32_t id = 0;
  float logprob = 0; // log-softmax of the raw logits at id, when asked
};

/// When a sequence stops generating.
struct StopCriteria {
  std::vector<int32_t> stopTokenIds; // EOS and other stop ids
  int64_t maxNewTokens = 0;          // 0: no limit

  /// True when `token`, the numGenerated-th new token, ends the sequence.
  bool shouldStop(int32_t token, int64_t numGenerated) const;
};

} // namespace llmir::engine

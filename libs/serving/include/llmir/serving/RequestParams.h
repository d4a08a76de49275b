// What a client asks for, in token terms (the HTTP layer turns OpenAI JSON
// into this), and its validation with OpenAI-style messages that name the
// offending parameter.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace llmir::serving {

class OutputGrammar;

struct SamplingOptions {
  float temperature = 1.0f; // 0: greedy
  float topP = 1.0f;        // (0, 1]
  int32_t topK = 0;         // 0: off
  /// Unset: a random seed per sequence (kept by the scheduler, so a retried
  /// step samples the same token).
  std::optional<uint64_t> seed;
};

struct RequestParams {
  std::vector<int32_t> promptIds;
  SamplingOptions sampling;
  int64_t maxTokens = 16;
  /// EOS, stop ids and stop strings are ignored before this many tokens.
  int64_t minTokens = 0;
  std::vector<std::string> stop;      // stop strings (not part of the output)
  std::vector<int32_t> stopTokenIds;  // extra stop ids besides EOS
  bool ignoreEos = false;
  int32_t n = 1;                      // choices sharing the prompt
  bool logprobs = false;              // logprob of each sampled token
  int32_t topLogprobs = 0;            // 0..kMaxTopLogprobs alternatives
  /// Logprobs (and topLogprobs alternatives) of every prompt token after
  /// the first (completions' echo); the prompt is then not served from the
  /// prefix cache, since its logits are needed.
  bool promptLogprobs = false;
  /// Added to the logits before sampling (OpenAI's logit_bias, -100..100).
  std::vector<std::pair<int32_t, float>> logitBias;
  float presencePenalty = 0.0f;   // [-2, 2], per generated token present
  float frequencyPenalty = 0.0f;  // [-2, 2], per occurrence in the output
  float repetitionPenalty = 1.0f; // > 0; 1: off (prompt and output tokens)
  /// Structured output: what the output must match (null: anything).
  std::shared_ptr<const OutputGrammar> grammar;
};

inline constexpr int32_t kMaxTopLogprobs = 20;
inline constexpr int32_t kMaxChoices = 128;
inline constexpr size_t kMaxStopStrings = 16;

/// The model/replica bounds a request is checked against.
struct RequestLimits {
  int64_t maxModelLen = 0; // prompt + max_tokens must fit
  int32_t vocabSize = 0;
};

/// A rejected request: `param` is the OpenAI parameter name ("max_tokens").
struct RequestError {
  std::string message;
  std::string param;
};

/// Nullopt when `params` is servable under `limits`.
std::optional<RequestError> validateRequest(const RequestParams &params,
                                            const RequestLimits &limits);

} // namespace llmir::serving

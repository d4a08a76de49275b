#include "llmir/serving/RequestParams.h"

#include <cmath>

namespace llmir::serving {

std::optional<RequestError> validateRequest(const RequestParams &p,
                                            const RequestLimits &limits) {
  auto error = [](std::string message, std::string param) {
    return RequestError{std::move(message), std::move(param)};
  };
  if (p.promptIds.empty())
    return error("the prompt is empty; expected at least one token", "prompt");
  for (int32_t id : p.promptIds)
    if (id < 0 || id >= limits.vocabSize)
      return error("prompt token id " + std::to_string(id) +
                       " is outside the vocabulary [0, " +
                       std::to_string(limits.vocabSize) + ")",
                   "prompt");
  const float t = p.sampling.temperature;
  if (!std::isfinite(t) || t < 0.0f || t > 2.0f)
    return error("temperature must be in [0, 2], got " + std::to_string(t),
                 "temperature");
  const float topP = p.sampling.topP;
  if (!std::isfinite(topP) || topP <= 0.0f || topP > 1.0f)
    return error("top_p must be in (0, 1], got " + std::to_string(topP), "top_p");
  if (p.sampling.topK < 0)
    return error("top_k must be 0 (off) or positive, got " +
                     std::to_string(p.sampling.topK),
                 "top_k");
  if (p.maxTokens < 0 || (p.maxTokens == 0 && !p.promptLogprobs))
    return error(std::string("max_tokens must be at least ") + (p.promptLogprobs ? "0" : "1") +
                     " (0 only with echo), got " +
                     std::to_string(p.maxTokens),
                 "max_tokens");
  if (p.minTokens < 0 || p.minTokens > p.maxTokens)
    return error("min_tokens must be in [0, max_tokens=" +
                     std::to_string(p.maxTokens) + "], got " +
                     std::to_string(p.minTokens),
                 "min_tokens");
  if (p.n < 1 || p.n > kMaxChoices)
    return error("n must be in [1, " + std::to_string(kMaxChoices) + "], got " +
                     std::to_string(p.n),
                 "n");
  if (p.topLogprobs < 0 || p.topLogprobs > kMaxTopLogprobs)
    return error("logprobs must be in [0, " + std::to_string(kMaxTopLogprobs) +
                     "], got " + std::to_string(p.topLogprobs),
                 "logprobs");
  if (p.stop.size() > kMaxStopStrings)
    return error("at most " + std::to_string(kMaxStopStrings) +
                     " stop sequences are allowed, got " +
                     std::to_string(p.stop.size()),
                 "stop");
  for (const std::string &s : p.stop)
    if (s.empty())
      return error("stop sequences must not be empty", "stop");
  for (int32_t id : p.stopTokenIds)
    if (id < 0 || id >= limits.vocabSize)
      return error("stop token id " + std::to_string(id) +
                       " is outside the vocabulary",
                   "stop_token_ids");
  for (const auto &[id, bias] : p.logitBias) {
    if (id < 0 || id >= limits.vocabSize)
      return error("logit_bias token id " + std::to_string(id) + " is outside the vocabulary",
                   "logit_bias");
    if (!std::isfinite(bias) || bias < -100.0f || bias > 100.0f)
      return error("logit_bias values must be in [-100, 100]", "logit_bias");
  }
  if (!std::isfinite(p.presencePenalty) || std::abs(p.presencePenalty) > 2.0f)
    return error("presence_penalty must be in [-2, 2]", "presence_penalty");
  if (!std::isfinite(p.frequencyPenalty) || std::abs(p.frequencyPenalty) > 2.0f)
    return error("frequency_penalty must be in [-2, 2]", "frequency_penalty");
  if (!std::isfinite(p.repetitionPenalty) || p.repetitionPenalty <= 0.0f ||
      p.repetitionPenalty > 10.0f)
    return error("repetition_penalty must be in (0, 10]", "repetition_penalty");
  const int64_t promptLen = static_cast<int64_t>(p.promptIds.size());
  if (promptLen >= limits.maxModelLen)
    return error("This model's maximum context length is " +
                     std::to_string(limits.maxModelLen) +
                     " tokens. However, your prompt has " +
                     std::to_string(promptLen) +
                     " tokens, which leaves no room for a completion.",
                 "prompt");
  if (promptLen + p.maxTokens > limits.maxModelLen)
    return error("This model's maximum context length is " +
                     std::to_string(limits.maxModelLen) +
                     " tokens. However, you requested " +
                     std::to_string(promptLen + p.maxTokens) + " tokens (" +
                     std::to_string(promptLen) + " in the prompt, " +
                     std::to_string(p.maxTokens) +
                     " for the completion). Please reduce the prompt or max_tokens.",
                 "max_tokens");
  return std::nullopt;
}

} // namespace llmir::serving

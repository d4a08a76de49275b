#include "llmir/engine/Sampler.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <numeric>

namespace llmir::engine {

int32_t argmax(std::span<const float> logits) {
  assert(!logits.empty());
  // max_element returns the first of equal maxima: the lowest index.
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) -
                              logits.begin());
}

Sampler::Sampler(SamplingParams params) : params_(params), rng_(params.seed) {}

double logNormalizer(std::span<const float> logits) {
  const float maxLogit = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (float v : logits)
    sum += std::exp(static_cast<double>(v) - maxLogit);
  return maxLogit + std::log(sum);
}

double Sampler::nextUniform() {
  // uniform_real_distribution(0, keptMass) is keptMass * this draw.
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
}

int32_t Sampler::sample(std::span<const float> logits) {
  assert(!logits.empty());
  if (params_.greedy())
    return argmax(logits);
  return sample(logits, nextUniform());
}

int32_t Sampler::sample(std::span<const float> logits, double uniform) {
  assert(!logits.empty());
  if (params_.greedy())
    return argmax(logits);

  // Candidates by decreasing logit (ties: lower id first), cut to top-k.
  const size_t vocab = logits.size();
  order_.resize(vocab);
  std::iota(order_.begin(), order_.end(), 0);
  const size_t k = params_.topK > 0
                       ? std::min(vocab, static_cast<size_t>(params_.topK))
                       : vocab;
  auto byLogit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(order_.begin(), order_.begin() + static_cast<long>(k),
                    order_.end(), byLogit);
  order_.resize(k);

  // softmax(logits / T) over the candidates, in f64 for the cumulative sums.
  probs_.resize(k);
  const double maxLogit = logits[order_[0]];
  double total = 0.0;
  for (size_t i = 0; i < k; ++i) {
    double p = std::exp((logits[order_[i]] - maxLogit) / params_.temperature);
    probs_[i] = static_cast<float>(p);
    total += p;
  }

  // Nucleus: the smallest prefix whose mass reaches topP.
  size_t keep = k;
  if (params_.topP < 1.0f) {
    double cumulative = 0.0;
    for (size_t i = 0; i < k; ++i) {
      cumulative += probs_[i] / total;
      if (cumulative >= params_.topP) {
        keep = i + 1;
        break;
      }
    }
  }
  double keptMass = 0.0;
  for (size_t i = 0; i < keep; ++i)
    keptMass += probs_[i];

  double draw = keptMass * uniform;
  for (size_t i = 0; i < keep; ++i) {
    draw -= probs_[i];
    if (draw < 0.0)
      return order_[i];
  }
  return order_[keep - 1]; // rounding left a sliver past the last candidate
}

bool StopCriteria::shouldStop(int32_t token, int64_t numGenerated) const {
  if (maxNewTokens > 0 && numGenerated >= maxNewTokens)
    return true;
  return std::find(stopTokenIds.begin(), stopTokenIds.end(), token) !=
         stopTokenIds.end();
}

} // namespace llmir::engine

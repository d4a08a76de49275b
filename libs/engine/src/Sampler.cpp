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
  // Only as long a prefix of that order as the nucleus and the draw reach
  // is sorted, a few times longer each time it falls short: a full sort of
  // a 150k vocabulary per token took ~27 ms, longer than a decode step.
  const size_t vocab = logits.size();
  order_.resize(vocab);
  std::iota(order_.begin(), order_.end(), 0);
  const size_t k = params_.topK > 0
                       ? std::min(vocab, static_cast<size_t>(params_.topK))
                       : vocab;
  auto byLogit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  if (k < vocab)
    std::nth_element(order_.begin(), order_.begin() + static_cast<long>(k), order_.end(),
                     byLogit);
  order_.resize(k);
  const double maxLogit = *std::max_element(logits.begin(), logits.end());
  auto probability = [&](int32_t id) {
    return std::exp((logits[static_cast<size_t>(id)] - maxLogit) / params_.temperature);
  };
  // Below e^-40 of the largest a probability moves no sum it joins by more
  // than 1e-12 of it (the largest is 1): its exp is skipped.
  const double negligible = maxLogit - 40.0 * params_.temperature;
  // softmax(logits / T) over the candidates, in f64 for the cumulative sums;
  // beside it the mass of their f32 probabilities, what is kept when every
  // candidate is (top-p 1).
  double total = 0.0, everyCandidate = 0.0;
  for (int32_t id : order_)
    if (logits[static_cast<size_t>(id)] > negligible) {
      const double p = probability(id);
      total += p;
      everyCandidate += static_cast<float>(p);
    }
  probs_.clear();
  auto sortedUpTo = [&](size_t wanted) { // order_[0, wanted) sorted, probs_ too
    wanted = std::min(wanted, k);
    const size_t done = probs_.size();
    if (wanted <= done)
      return;
    const auto from = order_.begin() + static_cast<long>(done);
    const auto to = order_.begin() + static_cast<long>(wanted);
    std::nth_element(from, to, order_.end(), byLogit);
    std::sort(from, to, byLogit);
    for (size_t i = done; i < wanted; ++i)
      probs_.push_back(static_cast<float>(probability(order_[i])));
  };
  auto grow = [&](size_t i) { sortedUpTo(std::max<size_t>(64, 4 * i)); };

  // Nucleus: the smallest prefix whose mass reaches topP.
  size_t keep = k;
  double keptMass = 0.0;
  if (params_.topP < 1.0f) {
    double cumulative = 0.0;
    for (size_t i = 0; i < k; ++i) {
      if (i == probs_.size())
        grow(i);
      cumulative += probs_[i] / total;
      keptMass += probs_[i];
      if (cumulative >= params_.topP) {
        keep = i + 1;
        break;
      }
    }
  } else {
    keptMass = everyCandidate;
  }

  double draw = keptMass * uniform;
  for (size_t i = 0; i < keep; ++i) {
    if (i == probs_.size())
      grow(i);
    draw -= probs_[i];
    if (draw < 0.0)
      return order_[i];
  }
  sortedUpTo(keep);
  return order_[keep - 1]; // rounding left a sliver past the last candidate
}

bool StopCriteria::shouldStop(int32_t token, int64_t numGenerated) const {
  if (maxNewTokens > 0 && numGenerated >= maxNewTokens)
    return true;
  return std::find(stopTokenIds.begin(), stopTokenIds.end(), token) !=
         stopTokenIds.end();
}

} // namespace llmir::engine

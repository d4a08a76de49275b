#include "llmir/serving/StepSampling.h"

#include "llmir/engine/Sampler.h"
#include "llmir/proto/worker.pb.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace llmir::serving {

engine::StepInput toStepInput(const proto::StepRequest &request) {
  engine::StepInput step;
  for (int i = 0; i < request.sequences_size(); ++i) {
    const proto::StepSequence &seq = request.sequences(i);
    for (int t = 0; t < seq.token_ids_size(); ++t) {
      step.tokenIds.push_back(seq.token_ids(t));
      step.positions.push_back(seq.start_position() + t);
      step.tokenSeq.push_back(i);
    }
    step.blockTables.emplace_back(seq.block_table().begin(), seq.block_table().end());
    if (seq.sample())
      step.outputRows.push_back(static_cast<int32_t>(step.tokenIds.size()) - 1);
  }
  return step;
}

uint64_t tokenSeed(uint64_t seed, int64_t position) {
  uint64_t x = seed ^ (static_cast<uint64_t>(position) * 0x9e3779b97f4a7c15ULL);
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

namespace {

/// log_softmax(row)[id] for the ids asked, computed once per row.
struct LogSoftmax {
  explicit LogSoftmax(std::span<const float> row) : row(row) {
    const float maxLogit = *std::max_element(row.begin(), row.end());
    double sum = 0.0;
    for (float v : row)
      sum += std::exp(static_cast<double>(v) - maxLogit);
    logZ = maxLogit + std::log(sum);
  }
  float operator()(int32_t id) const {
    return static_cast<float>(row[static_cast<size_t>(id)] - logZ);
  }
  std::span<const float> row;
  double logZ = 0.0;
};

} // namespace

Status sampleStep(const proto::StepRequest &request, const engine::Tensor &logits,
                  proto::StepResponse &response) {
  int64_t sampling = 0;
  for (const proto::StepSequence &seq : request.sequences())
    sampling += seq.sample() ? 1 : 0;
  if (sampling == 0)
    return Status::ok();
  if (logits.shape.size() != 2 || logits.rows() != sampling)
    return Status::error("step " + std::to_string(request.step_id()) + ": " +
                         std::to_string(sampling) +
                         " sequences sample but the logits have " +
                         std::to_string(logits.shape.empty() ? 0 : logits.rows()) +
                         " rows");
  const size_t vocab = static_cast<size_t>(logits.rowSize());
  int64_t row = 0;
  std::vector<int32_t> order;
  for (const proto::StepSequence &seq : request.sequences()) {
    if (!seq.sample())
      continue;
    std::span<const float> values(logits.data.data() + row * vocab, vocab);
    ++row;
    const proto::SamplingParams &p = seq.sampling();
    const int64_t position = seq.start_position() + seq.token_ids_size();
    engine::Sampler sampler({p.temperature(), p.top_p(), p.top_k(),
                             tokenSeed(p.seed(), position)});
    proto::SampledToken *out = response.add_tokens();
    out->set_sequence_id(seq.sequence_id());
    const int32_t token = sampler.sample(values);
    out->set_token_id(token);
    if (!seq.want_logprobs() && seq.top_logprobs() == 0)
      continue;
    LogSoftmax logprob(values);
    out->set_logprob(logprob(token));
    const size_t k = std::min<size_t>(seq.top_logprobs(), vocab);
    if (k == 0)
      continue;
    order.resize(vocab);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + static_cast<long>(k), order.end(),
                      [&](int32_t a, int32_t b) {
                        return values[a] > values[b] || (values[a] == values[b] && a < b);
                      });
    for (size_t i = 0; i < k; ++i) {
      proto::TokenLogprob *top = out->add_top_logprobs();
      top->set_token_id(order[i]);
      top->set_logprob(logprob(order[i]));
    }
  }
  return Status::ok();
}

} // namespace llmir::serving

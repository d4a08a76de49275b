#include "llmir/serving/StepSampling.h"

#include "llmir/engine/Executor.h"
#include "llmir/engine/Sampler.h"
#include "llmir/proto/worker.pb.h"

#include <algorithm>
#include <cmath>
#include <limits>
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
    const int32_t end = static_cast<int32_t>(step.tokenIds.size());
    if (seq.prompt_logprobs()) {
      // Every row of the chunk: row t predicts the token after it.
      for (int32_t row = end - seq.token_ids_size(); row < end; ++row)
        step.outputRows.push_back(row);
    } else if (seq.sample()) {
      step.outputRows.push_back(end - 1);
    }
    // Blocks this step fills, for the program's KV_STORE: runs of
    // consecutive logical blocks keyed by the sequence's prefix. An index
    // outside the block table becomes block id -1, which the executor
    // refuses with the step (the scheduler never sends one).
    for (int b = 0; b < seq.store_blocks_size(); ++b) {
      const int32_t index = seq.store_blocks(b);
      const int32_t physical =
          index >= 0 && index < seq.block_table_size() ? seq.block_table(index) : -1;
      engine::KvBlockRun *run = step.kvStores.empty() ? nullptr : &step.kvStores.back();
      if (b == 0 || !run || run->firstBlock + static_cast<int32_t>(run->blocks.size()) != index) {
        run = &step.kvStores.emplace_back();
        run->tokenIds.assign(seq.prefix_token_ids().begin(), seq.prefix_token_ids().end());
        run->firstBlock = index;
      }
      run->blocks.push_back(physical);
    }
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

namespace {

/// Rows of the logits a sequence owns (toStepInput's order).
int64_t rowsOf(const proto::StepSequence &seq) {
  if (seq.prompt_logprobs())
    return seq.token_ids_size();
  return seq.sample() ? 1 : 0;
}

/// The k most likely ids of a row, with their logprobs.
void topLogprobs(std::span<const float> values, const LogSoftmax &logprob, size_t k,
                 std::vector<int32_t> &order,
                 google::protobuf::RepeatedPtrField<proto::TokenLogprob> *out) {
  k = std::min(k, values.size());
  if (k == 0)
    return;
  order.resize(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + static_cast<long>(k), order.end(),
                    [&](int32_t a, int32_t b) {
                      return values[a] > values[b] || (values[a] == values[b] && a < b);
                    });
  for (size_t i = 0; i < k; ++i) {
    proto::TokenLogprob *top = out->Add();
    top->set_token_id(order[i]);
    top->set_logprob(logprob(order[i]));
  }
}

bool processesLogits(const proto::StepSequence &seq) {
  const float rep = seq.repetition_penalty();
  return seq.constrained() || seq.logit_bias_size() > 0 || seq.presence_penalty() != 0 ||
         seq.frequency_penalty() != 0 || (rep != 0 && rep != 1);
}

/// logit_bias, then the repetition, frequency and presence penalties, in
/// vLLM's order.
void processLogits(const proto::StepSequence &seq, std::vector<float> &logits) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  for (const proto::TokenLogprob &bias : seq.logit_bias())
    if (bias.token_id() >= 0 && bias.token_id() < vocab)
      logits[static_cast<size_t>(bias.token_id())] += bias.logprob();
  const float rep = seq.repetition_penalty();
  if (rep != 0 && rep != 1) {
    std::vector<bool> seen(logits.size(), false);
    for (const auto *ids : {&seq.prompt_token_ids(), &seq.output_token_ids()})
      for (int32_t id : *ids)
        if (id >= 0 && id < vocab)
          seen[static_cast<size_t>(id)] = true;
    for (size_t i = 0; i < logits.size(); ++i)
      if (seen[i])
        logits[i] = logits[i] > 0 ? logits[i] / rep : logits[i] * rep;
  }
  if (seq.constrained()) {
    std::vector<float> kept(logits.size(), -std::numeric_limits<float>::infinity());
    for (int32_t id : seq.allowed_token_ids())
      if (id >= 0 && id < vocab)
        kept[static_cast<size_t>(id)] = logits[static_cast<size_t>(id)];
    logits = std::move(kept);
  }
  if (seq.presence_penalty() != 0 || seq.frequency_penalty() != 0) {
    std::vector<int32_t> counts(logits.size(), 0);
    for (int32_t id : seq.output_token_ids())
      if (id >= 0 && id < vocab)
        ++counts[static_cast<size_t>(id)];
    for (size_t i = 0; i < logits.size(); ++i)
      if (counts[i] > 0)
        logits[i] -= seq.frequency_penalty() * static_cast<float>(counts[i]) +
                     seq.presence_penalty();
  }
}

} // namespace

Status sampleStep(const proto::StepRequest &request, const engine::Tensor &logits,
                  proto::StepResponse &response) {
  int64_t rows = 0;
  for (const proto::StepSequence &seq : request.sequences())
    rows += rowsOf(seq);
  if (rows == 0)
    return Status::ok();
  if (logits.shape.size() != 2 || logits.rows() != rows)
    return Status::error("step " + std::to_string(request.step_id()) + ": " +
                         std::to_string(rows) + " logits rows expected but the logits have " +
                         std::to_string(logits.shape.empty() ? 0 : logits.rows()) + " rows");
  const size_t vocab = static_cast<size_t>(logits.rowSize());
  int64_t row = 0;
  std::vector<int32_t> order;
  std::vector<float> processed;
  for (const proto::StepSequence &seq : request.sequences()) {
    const int64_t owned = rowsOf(seq);
    if (owned == 0)
      continue;
    const int64_t firstRow = row;
    row += owned;
    if (seq.prompt_logprobs()) {
      // Row t predicts the prompt token at start_position + t + 1.
      proto::PromptLogprobs *prompt = response.add_prompt_logprobs();
      prompt->set_sequence_id(seq.sequence_id());
      prompt->set_first_position(seq.start_position() + 1);
      for (int t = 0; t < seq.token_ids_size(); ++t) {
        const int32_t target = t + 1 < seq.token_ids_size() ? seq.token_ids(t + 1)
                                                            : seq.next_prompt_token();
        const int64_t position = seq.start_position() + t + 1;
        if (target < 0 || position >= seq.prompt_length() ||
            target >= static_cast<int32_t>(vocab))
          break;
        std::span<const float> values(logits.data.data() + (firstRow + t) * vocab, vocab);
        LogSoftmax logprob(values);
        prompt->add_logprobs(logprob(target));
        topLogprobs(values, logprob, seq.top_logprobs(), order, prompt->add_tops()->mutable_entries());
      }
    }
    if (!seq.sample())
      continue;
    std::span<const float> values(logits.data.data() + (firstRow + owned - 1) * vocab, vocab);
    const proto::SamplingParams &p = seq.sampling();
    const int64_t position = seq.start_position() + seq.token_ids_size();
    engine::Sampler sampler({p.temperature(), p.top_p(), p.top_k(),
                             tokenSeed(p.seed(), position)});
    proto::SampledToken *out = response.add_tokens();
    out->set_sequence_id(seq.sequence_id());
    int32_t token;
    if (processesLogits(seq)) {
      processed.assign(values.begin(), values.end());
      processLogits(seq, processed);
      token = sampler.sample(processed);
    } else {
      token = sampler.sample(values);
    }
    out->set_token_id(token);
    if (!seq.want_logprobs() && seq.top_logprobs() == 0)
      continue;
    LogSoftmax logprob(values);
    out->set_logprob(logprob(token));
    topLogprobs(values, logprob, seq.top_logprobs(), order, out->mutable_top_logprobs());
  }
  return Status::ok();
}

bool samplesOnBackend(const proto::StepRequest &request) {
  bool samples = false;
  for (const proto::StepSequence &seq : request.sequences()) {
    if (seq.prompt_logprobs())
      return false;
    if (!seq.sample())
      continue;
    if (processesLogits(seq) || seq.top_logprobs() > 0)
      return false;
    samples = true;
  }
  return samples;
}

std::vector<engine::RowSampling> backendSampling(const proto::StepRequest &request) {
  std::vector<engine::RowSampling> rows;
  for (const proto::StepSequence &seq : request.sequences()) {
    if (!seq.sample())
      continue;
    const proto::SamplingParams &p = seq.sampling();
    const int64_t position = seq.start_position() + seq.token_ids_size();
    engine::RowSampling row;
    row.params = {p.temperature(), p.top_p(), p.top_k(), tokenSeed(p.seed(), position)};
    row.uniform = engine::Sampler(row.params).nextUniform();
    row.logprob = seq.want_logprobs();
    rows.push_back(row);
  }
  return rows;
}

Status sampledTokens(const proto::StepRequest &request,
                     const std::vector<engine::SampledToken> &tokens,
                     proto::StepResponse &response) {
  size_t sampling = 0;
  for (const proto::StepSequence &seq : request.sequences())
    sampling += seq.sample() ? 1 : 0;
  if (sampling != tokens.size())
    return Status::error("step " + std::to_string(request.step_id()) + ": " +
                         std::to_string(tokens.size()) + " sampled tokens for " +
                         std::to_string(sampling) + " sampling sequences");
  size_t row = 0;
  for (const proto::StepSequence &seq : request.sequences()) {
    if (!seq.sample())
      continue;
    const engine::SampledToken &token = tokens[row++];
    proto::SampledToken *out = response.add_tokens();
    out->set_sequence_id(seq.sequence_id());
    out->set_token_id(token.id);
    if (seq.want_logprobs())
      out->set_logprob(token.logprob);
  }
  return Status::ok();
}

bool DecodeChain::chains(const proto::StepRequest &request) {
  return std::any_of(request.sequences().begin(), request.sequences().end(),
                     [](const proto::StepSequence &seq) { return seq.chained_input(); });
}

const DecodeChain::Sample *DecodeChain::Kept::at(int64_t position) const {
  if (samples.empty() || position < samples.front().position ||
      position > samples.back().position)
    return nullptr;
  return &samples[static_cast<size_t>(position - samples.front().position)];
}

Status DecodeChain::fillChainedInputs(proto::StepRequest &request,
                                      std::vector<uint64_t> &unchained) const {
  auto *sequences = request.mutable_sequences();
  int kept = 0;
  for (int i = 0; i < sequences->size(); ++i) {
    proto::StepSequence &seq = sequences->at(i);
    if (seq.chained_input()) {
      if (seq.token_ids_size() != 0)
        return Status::error("sequence " + std::to_string(seq.sequence_id()) +
                             " is chained_input but carries " +
                             std::to_string(seq.token_ids_size()) + " tokens");
      auto it = kept_.find(seq.sequence_id());
      const Sample *input = it == kept_.end() ? nullptr : it->second.at(seq.start_position());
      // Penalties count the output so far: the tokens drawn here that the
      // scheduler had not seen (through the input).
      std::vector<int32_t> unseen;
      const float rep = seq.repetition_penalty();
      if (input && (seq.presence_penalty() != 0 || seq.frequency_penalty() != 0 ||
                    (rep != 0 && rep != 1))) {
        for (int64_t p = int64_t{seq.prompt_length()} + seq.output_token_ids_size();
             p <= seq.start_position(); ++p) {
          const Sample *sample = it->second.at(p);
          if (!sample) {
            input = nullptr;
            break;
          }
          unseen.push_back(sample->tokenId);
        }
      }
      if (!input) {
        unchained.push_back(seq.sequence_id());
        continue;
      }
      seq.add_token_ids(input->tokenId);
      seq.mutable_output_token_ids()->Add(unseen.begin(), unseen.end());
    }
    if (kept != i)
      sequences->SwapElements(kept, i);
    ++kept;
  }
  sequences->DeleteSubrange(kept, sequences->size() - kept);
  return Status::ok();
}

void DecodeChain::remember(const proto::StepRequest &request,
                           const proto::StepResponse &response, bool ok) {
  ++steps_;
  // response.tokens holds one token per sampling sequence in request order
  // (sampleStep, sampledTokens): walked beside the request, no lookup table
  // built per step.
  int next = 0;
  for (const proto::StepSequence &seq : request.sequences()) {
    const proto::SampledToken *token =
        ok && seq.sample() && next < response.tokens_size() ? &response.tokens(next++) : nullptr;
    if (!token || token->sequence_id() != seq.sequence_id()) {
      kept_.erase(seq.sequence_id());
      continue;
    }
    Kept &kept = kept_[seq.sequence_id()];
    const int64_t position = int64_t{seq.start_position()} + seq.token_ids_size();
    // Consecutive positions only: a step that goes back (a recompute) or
    // skips starts the history again.
    if (!kept.samples.empty() && kept.samples.back().position + 1 != position)
      kept.samples.clear();
    kept.samples.push_back({token->token_id(), position});
    if (kept.samples.size() > kKeptTokens)
      kept.samples.pop_front();
    kept.step = steps_;
  }
  // A chain follows its step within the replica's few steps in flight;
  // what finished sequences left behind goes after a while.
  constexpr uint64_t kKeptSteps = 64;
  if (kept_.size() > 1024)
    std::erase_if(kept_, [&](const auto &entry) { return entry.second.step + kKeptSteps < steps_; });
}

Status stepAndSample(engine::Executor &executor, const proto::StepRequest &request,
                     bool samples, proto::StepResponse &response, DecodeChain *chain) {
  auto run = [&](const proto::StepRequest &step) -> Status {
    const engine::StepInput input = toStepInput(step);
    if (samples && samplesOnBackend(step)) {
      // The sampling runs where the logits are (on a GPU only the ids and
      // logprobs cross to the host).
      const std::vector<engine::RowSampling> rows = backendSampling(step);
      Result<std::vector<engine::SampledToken>> tokens = executor.stepSample(input, rows);
      if (!tokens)
        return tokens.status();
      return sampledTokens(step, *tokens, response);
    }
    Result<engine::Tensor> logits = executor.step(input);
    if (!logits)
      return logits.status();
    return samples ? sampleStep(step, *logits, response) : Status::ok();
  };
  if (!chain)
    return run(request);
  const proto::StepRequest *step = &request;
  proto::StepRequest filled;
  Status status = Status::ok();
  std::vector<uint64_t> unchained; // answered with no token
  if (DecodeChain::chains(request)) {
    filled = request;
    status = chain->fillChainedInputs(filled, unchained);
    step = &filled;
  }
  if (status && step->sequences_size() > 0)
    status = run(*step);
  chain->remember(*step, response, status.isOk());
  return status;
}

} // namespace llmir::serving

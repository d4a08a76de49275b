#include "llmir/serving/DecodePipeline.h"

#include "llmir/engine/Executor.h"
#include "llmir/engine/Sampler.h"
#include "llmir/proto/worker.pb.h"

#include <algorithm>
#include <string>

namespace llmir::serving {

struct DecodePipeline::Launched {
  /// The step as launched: chained inputs filled (a placeholder token where
  /// the device gives it), so the chain remembers each sampled token's
  /// position.
  proto::StepRequest request;
  Clock::time_point at;
  Status launched = Status::ok(); // ok: its ids wait to be collected
  Status failed = Status::ok();   // a step it took its ids from failed
};

DecodePipeline::DecodePipeline(engine::Executor &executor, DecodeChain &chain)
    : executor_(executor), chain_(chain) {}

std::vector<engine::RowSampling> DecodePipeline::sampling(const proto::StepRequest &request) {
  // All greedy without logprobs: no rows, so the backend takes its argmax
  // (one pass a row) instead of the sampling's cuts.
  std::vector<engine::RowSampling> rows = backendSampling(request);
  const bool draws = std::any_of(rows.begin(), rows.end(), [](const engine::RowSampling &row) {
    return row.logprob || !row.params.greedy();
  });
  if (!draws)
    rows.clear();
  return rows;
}

DecodePipeline::~DecodePipeline() {
  // The executor refuses other steps while launched ones wait to be
  // collected: a pipeline dropped mid-flight leaves none behind.
  while (!inFlight_.empty()) {
    double seconds = 0;
    finish(seconds);
  }
}

bool DecodePipeline::takes(const proto::StepRequest &request) {
  if (request.sequences_size() == 0 || !samplesOnBackend(request))
    return false;
  return std::all_of(request.sequences().begin(), request.sequences().end(),
                     [](const proto::StepSequence &seq) {
                       const int tokens = seq.token_ids_size();
                       return seq.sample() && seq.store_blocks_size() == 0 &&
                              (seq.chained_input() ? tokens == 0 : tokens == 1);
                     });
}

bool DecodePipeline::launch(const proto::StepRequest &request) {
  if (!inFlight_.empty() || !takes(request))
    return false;
  Launched step{request, Clock::now()};
  std::vector<uint64_t> unchained;
  if (DecodeChain::chains(request)) {
    const Status filled = chain_.fillChainedInputs(step.request, unchained);
    if (!filled || !unchained.empty())
      return false; // stepAndSample says why, or drops those sequences
  }
  step.launched = executor_.launchStep(toStepInput(step.request), sampling(step.request));
  inFlight_.push_back(std::move(step));
  return true;
}

bool DecodePipeline::launchBehind(const proto::StepRequest &request) {
  if (inFlight_.empty() || inFlight_.size() >= kMostInFlight || !inFlight_.back().launched ||
      !inFlight_.back().failed || !takes(request))
    return false;
  const proto::StepRequest &last = inFlight_.back().request;
  if (request.sequences_size() != last.sequences_size())
    return false;
  for (int i = 0; i < request.sequences_size(); ++i) {
    const proto::StepSequence &seq = request.sequences(i), &before = last.sequences(i);
    if (!seq.chained_input() || seq.sequence_id() != before.sequence_id() ||
        seq.start_position() != before.start_position() + before.token_ids_size())
      return false;
  }
  Launched step{request, Clock::now()};
  for (proto::StepSequence &seq : *step.request.mutable_sequences())
    seq.add_token_ids(0); // the device's id takes its place
  engine::StepInput input = toStepInput(step.request);
  input.tokensFromLastLaunch = true;
  step.launched = executor_.launchStep(input, sampling(step.request));
  inFlight_.push_back(std::move(step));
  return true;
}

proto::StepResponse DecodePipeline::finish(double &seconds) {
  proto::StepResponse response;
  if (inFlight_.empty()) {
    response.set_ok(false);
    response.set_error("no launched step to answer");
    return response;
  }
  Launched step = std::move(inFlight_.front());
  inFlight_.pop_front();
  response.set_step_id(step.request.step_id());
  Status status = step.launched;
  if (status) { // collected even when failed: the executor counts what is in flight
    Result<std::vector<engine::SampledToken>> tokens = executor_.collectStep();
    if (!tokens)
      status = tokens.status();
    else if (status = step.failed; status)
      status = sampledTokens(step.request, *tokens, response);
  }
  if (!status) {
    response.set_ok(false);
    response.set_error(status.message());
    response.clear_tokens();
    // The steps launched behind it took its ids: they fail with it.
    for (Launched &behind : inFlight_)
      if (behind.failed)
        behind.failed = Status::error("the step whose ids it took failed: " + status.message());
  } else {
    response.set_ok(true);
  }
  chain_.remember(step.request, response, status.isOk());
  const Clock::time_point now = Clock::now();
  seconds = std::chrono::duration<double>(now - std::max(step.at, lastAnswer_)).count();
  lastAnswer_ = now;
  return response;
}

} // namespace llmir::serving

#include "llmir/serving/GreedyPipeline.h"

#include "llmir/engine/Executor.h"
#include "llmir/engine/Sampler.h"
#include "llmir/proto/worker.pb.h"

#include <algorithm>
#include <string>

namespace llmir::serving {

struct GreedyPipeline::Launched {
  /// The step as launched: chained inputs filled (a placeholder token where
  /// the device gives it), so the chain remembers each sampled token's
  /// position.
  proto::StepRequest request;
  Clock::time_point at;
  Status launched = Status::ok(); // ok: its ids wait to be collected
  Status failed = Status::ok();   // a step it took its ids from failed
};

GreedyPipeline::GreedyPipeline(engine::Executor &executor, DecodeChain &chain)
    : executor_(executor), chain_(chain) {}

GreedyPipeline::~GreedyPipeline() {
  // The executor refuses other steps while launched ones wait to be
  // collected: a pipeline dropped mid-flight leaves none behind.
  while (!inFlight_.empty()) {
    double seconds = 0;
    finish(seconds);
  }
}

bool GreedyPipeline::takes(const proto::StepRequest &request) {
  if (request.sequences_size() == 0 || !samplesOnBackend(request))
    return false;
  return std::all_of(request.sequences().begin(), request.sequences().end(),
                     [](const proto::StepSequence &seq) {
                       const engine::SamplingParams params{seq.sampling().temperature(),
                                                           seq.sampling().top_p(),
                                                           seq.sampling().top_k(), 0};
                       const int tokens = seq.token_ids_size();
                       return seq.sample() && params.greedy() && !seq.want_logprobs() &&
                              seq.store_blocks_size() == 0 &&
                              (seq.chained_input() ? tokens == 0 : tokens == 1);
                     });
}

bool GreedyPipeline::launch(const proto::StepRequest &request) {
  if (!inFlight_.empty() || !takes(request))
    return false;
  Launched step{request, Clock::now()};
  std::vector<uint64_t> unchained;
  if (DecodeChain::chains(request)) {
    const Status filled = chain_.fillChainedInputs(step.request, unchained);
    if (!filled || !unchained.empty())
      return false; // stepAndSample says why, or drops those sequences
  }
  step.launched = executor_.launchGreedy(toStepInput(step.request));
  inFlight_.push_back(std::move(step));
  return true;
}

bool GreedyPipeline::launchBehind(const proto::StepRequest &request) {
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
  input.tokensFromLastGreedy = true;
  step.launched = executor_.launchGreedy(input);
  inFlight_.push_back(std::move(step));
  return true;
}

proto::StepResponse GreedyPipeline::finish(double &seconds) {
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
    Result<std::vector<int32_t>> ids = executor_.collectGreedy();
    if (!ids) {
      status = ids.status();
    } else if (status = step.failed; status) {
      std::vector<engine::SampledToken> tokens(ids->size());
      for (size_t r = 0; r < ids->size(); ++r)
        tokens[r].id = (*ids)[r];
      status = sampledTokens(step.request, tokens, response);
    }
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

// A one-rank replica's decode steps with the host a step ahead of the
// device (Executor::launchStep): the scheduler sends a sequence's next
// decode before the current one has answered (chained_input, DecodeChain);
// here that next step is launched behind the running one, its tokens those
// the running step drew (greedy or sampled) on the device, so the device
// runs the steps back to back while the host answers the earlier one. Without it, the device idled
// between two steps for the host's answer and its next launch (~10 us a
// token on an H200, 10% of the demo model's step; docs/performance.md).
#pragma once

#include "llmir/serving/StepSampling.h"

#include <chrono>
#include <deque>

namespace llmir::proto {
class StepRequest;
class StepResponse;
} // namespace llmir::proto

namespace llmir::serving {

class DecodePipeline {
public:
  /// At most this many steps launched and not answered (the executor's
  /// bound).
  static constexpr size_t kMostInFlight = 2;

  /// Both must outlive the pipeline; the chain is the one the replica's
  /// other steps use (stepAndSample), kept as they keep it.
  DecodePipeline(engine::Executor &executor, DecodeChain &chain);
  ~DecodePipeline();

  /// Whether `request` is a step this pipeline runs: every sequence decodes
  /// one token (given, or chained_input) and samples it on the backend
  /// (samplesOnBackend: greedy, or temperature / top-k / top-p, with the
  /// token's logprob or not; no top logprobs or logit processing), with no
  /// blocks to store.
  static bool takes(const proto::StepRequest &request);

  /// Launches `request` (takes() holds, nothing in flight), its chained
  /// inputs' tokens from the chain. False, launching nothing, when one has
  /// no token here (stepAndSample then answers it as before).
  bool launch(const proto::StepRequest &request);
  /// Launches `request` behind the last launched step, each of its tokens
  /// that step's id for the sequence on the device: where takes() holds,
  /// fewer than kMostInFlight steps are in flight, the last launched step
  /// succeeded and `request`'s sequences are its sequences in its order,
  /// each chained_input one position on. False, launching nothing,
  /// otherwise.
  bool launchBehind(const proto::StepRequest &request);

  bool empty() const { return inFlight_.empty(); }
  /// The oldest launched step's answer (its tokens, or why it failed: a step
  /// launched behind a failed one fails too), remembered in the chain.
  /// `seconds`: the time it held the device, from the later of its launch
  /// and the previous answer.
  proto::StepResponse finish(double &seconds);

private:
  using Clock = std::chrono::steady_clock;
  struct Launched;

  /// Executor::launchStep's rows for `request`: backendSampling's, or none
  /// when every row is greedy without a logprob (the backend's argmax).
  static std::vector<engine::RowSampling> sampling(const proto::StepRequest &request);

  engine::Executor &executor_;
  DecodeChain &chain_;
  std::deque<Launched> inFlight_;
  Clock::time_point lastAnswer_{};
};

} // namespace llmir::serving

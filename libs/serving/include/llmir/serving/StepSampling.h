// The stateless half of a step that the worker and the in-process backend
// share: turning a StepRequest into the executor's input, and sampling each
// sequence's next token from the logits. The RNG of a token is seeded from
// (sequence seed, position) only, so any replica that retries a step samples
// the same token.
#pragma once

#include "llmir/engine/Sampler.h"
#include "llmir/engine/Step.h"
#include "llmir/engine/Tensor.h"
#include "llmir/support/Status.h"

#include <cstdint>
#include <deque>
#include <unordered_map>
#include <vector>

namespace llmir::proto {
class StepRequest;
class StepResponse;
} // namespace llmir::proto

namespace llmir::engine {
class Executor;
}

namespace llmir::serving {

/// Tokens grouped by sequence in request order, one block table each; the
/// logits rows are the last token of every sequence with `sample` set. The
/// blocks each sequence marks to store (store_blocks, prefix_token_ids)
/// become kvStores, which the program's KV_STORE copies out when the
/// executor has a KvTransferHook (docs/kv-store.md).
engine::StepInput toStepInput(const proto::StepRequest &request);

/// The seed of the token sampled at `position` of a sequence seeded `seed`.
uint64_t tokenSeed(uint64_t seed, int64_t position);

/// Fills response.tokens with one SampledToken per sampling sequence from
/// `logits` (rows as toStepInput chose them), with logprobs when asked.
/// Fails when the logits do not have one row per sampling sequence.
Status sampleStep(const proto::StepRequest &request, const engine::Tensor &logits,
                  proto::StepResponse &response);

/// True when every sequence that samples in `request` needs only what
/// Executor::stepSample computes (its token by temperature / top-k / top-p
/// and that token's logprob), with no top logprobs, prompt logprobs or logit
/// processing (bias, penalties, a grammar), and one does: then the sampling
/// runs where the logits are and on a GPU only ids and logprobs reach the
/// host.
bool samplesOnBackend(const proto::StepRequest &request);

/// Executor::stepSample's rows for such a request: one per sampling
/// sequence, in request order, with the draw sampleStep's Sampler makes
/// (seeded tokenSeed(seed, position)), so both give the same token.
std::vector<engine::RowSampling> backendSampling(const proto::StepRequest &request);

/// Fills response.tokens from stepSample's tokens (one per sampling
/// sequence, in request order); fails on a count that does not match.
Status sampledTokens(const proto::StepRequest &request,
                     const std::vector<engine::SampledToken> &tokens,
                     proto::StepResponse &response);

/// What a replica that chains decode steps (ReplicaInfo::chainsDecode) keeps
/// from one step to the next: the last tokens it sampled for each sequence
/// (kKeptTokens), and the positions they go in. A StepSequence marked
/// chained_input carries no token and takes the one at its start position,
/// so the scheduler can send a sequence's next decode before this step's
/// answer reached it.
class DecodeChain {
public:
  /// Tokens kept per sequence: a chained decode with penalties needs those
  /// the scheduler had not seen when it sent it (one per chained step
  /// queued, chain-depth), besides its input.
  static constexpr size_t kKeptTokens = 8;

  /// True when some sequence of `request` is chained_input.
  static bool chains(const proto::StepRequest &request);
  /// Gives every chained_input sequence of `request` its token, and one
  /// with penalties the output tokens its output_token_ids lack (those
  /// from position prompt_length + output_token_ids_size() through its
  /// input's). A sequence for which no step sampled a token it needs (that
  /// step failed, or has not run here) is taken out of the request and its
  /// id added to `unchained`: the step runs for the others, and the
  /// scheduler, finding no token for it, computes it again. Failing the
  /// whole step instead made every other sequence of it recompute too, and
  /// the steps chained on it fail in turn: with a failure every third step,
  /// a chain of failed steps that never ended (BatchSchedulerTest's
  /// chained-decode failures). A chained_input sequence that carries tokens
  /// is a malformed request: an error naming it.
  Status fillChainedInputs(proto::StepRequest &request, std::vector<uint64_t> &unchained) const;
  /// After a step: keeps each sequence's sampled token; a failed step
  /// (`ok` false), or one where a sequence samples nothing, drops what was
  /// kept for its sequences.
  void remember(const proto::StepRequest &request, const proto::StepResponse &response,
                bool ok);
  /// Drops everything (the replica was set up again).
  void forget() { kept_.clear(); }

private:
  struct Sample {
    int32_t tokenId = 0;
    int64_t position = 0; // where it goes in: the sampling row's position + 1
  };
  struct Kept {
    std::deque<Sample> samples; // consecutive positions, the last kKeptTokens
    uint64_t step = 0;          // steps_ when the last was sampled
    /// The token that goes in at `position`, if kept.
    const Sample *at(int64_t position) const;
  };
  std::unordered_map<uint64_t, Kept> kept_; // by sequence id
  uint64_t steps_ = 0;
};

/// Runs the request's step on `executor`; when `samples` (the rank that
/// decides), fills response.tokens: by stepSample for a samplesOnBackend
/// request, by sampleStep on the logits otherwise. With a `chain` (a
/// single-rank replica), chained inputs are filled from it first and the
/// step's samples kept in it after.
Status stepAndSample(engine::Executor &executor, const proto::StepRequest &request,
                     bool samples, proto::StepResponse &response,
                     DecodeChain *chain = nullptr);

} // namespace llmir::serving

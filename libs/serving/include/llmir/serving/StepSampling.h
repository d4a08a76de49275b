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

/// Runs the request's step on `executor`; when `samples` (the rank that
/// decides), fills response.tokens: by stepSample for a samplesOnBackend
/// request, by sampleStep on the logits otherwise.
Status stepAndSample(engine::Executor &executor, const proto::StepRequest &request,
                     bool samples, proto::StepResponse &response);

} // namespace llmir::serving

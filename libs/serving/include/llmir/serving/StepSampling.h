// The stateless half of a step that the worker and the in-process backend
// share: turning a StepRequest into the executor's input, and sampling each
// sequence's next token from the logits. The RNG of a token is seeded from
// (sequence seed, position) only, so any replica that retries a step samples
// the same token.
#pragma once

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
/// logits rows are the last token of every sequence with `sample` set.
engine::StepInput toStepInput(const proto::StepRequest &request);

/// The seed of the token sampled at `position` of a sequence seeded `seed`.
uint64_t tokenSeed(uint64_t seed, int64_t position);

/// Fills response.tokens with one SampledToken per sampling sequence from
/// `logits` (rows as toStepInput chose them), with logprobs when asked.
/// Fails when the logits do not have one row per sampling sequence.
Status sampleStep(const proto::StepRequest &request, const engine::Tensor &logits,
                  proto::StepResponse &response);

/// True when every sequence that samples in `request` picks greedily (the
/// Sampler's rule: temperature 0 or top_k 1) with no logprobs, prompt
/// logprobs or logit processing (bias, penalties, a grammar), and one does:
/// then the greedy ids of the output rows (Executor::stepGreedy, an argmax on
/// the device) are its tokens and the logits need not reach the host.
bool greedyOnly(const proto::StepRequest &request);

/// Fills response.tokens for a greedyOnly request from the greedy id of each
/// output row (one per sampling sequence, in request order); fails on a count
/// that does not match.
Status greedyTokens(const proto::StepRequest &request, const std::vector<int32_t> &ids,
                    proto::StepResponse &response);

/// Runs the request's step on `executor`; when `samples` (the rank that
/// decides), fills response.tokens: by stepGreedy for a greedyOnly request,
/// by sampleStep on the logits otherwise.
Status stepAndSample(engine::Executor &executor, const proto::StepRequest &request,
                     bool samples, proto::StepResponse &response);

} // namespace llmir::serving

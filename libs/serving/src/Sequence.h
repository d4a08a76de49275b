// One choice of a request as the scheduler tracks it: every token so far,
// how many have KV in the cache, its blocks, and its output text.
#pragma once

#include "llmir/serving/BatchScheduler.h"
#include "llmir/serving/BlockManager.h"
#include "llmir/serving/OutputGrammar.h"
#include "llmir/serving/OutputText.h"

#include <memory>
#include <optional>

#include <cstdint>
#include <vector>

namespace llmir::serving {

struct Sequence {
  Sequence(const model::Tokenizer &tokenizer, std::vector<std::string> stop)
      : text(tokenizer, std::move(stop)) {}

  uint64_t id = 0;
  uint64_t requestId = 0;
  uint32_t index = 0;
  uint64_t seed = 0;
  std::vector<int32_t> tokens; // prompt, then sampled tokens
  int64_t promptLen = 0;
  int64_t numComputed = 0;     // tokens whose KV is in the cache
  SequenceBlocks blocks;
  OutputText text;

  bool running = false;        // in the running queue (holds blocks)
  bool inFlight = false;       // part of a submitted step
  uint64_t stepId = 0;         // that step
  int32_t chunk = 0;           // tokens of the step in flight
  // Steps submitted after it, each decoding the token the one before
  // samples (chained_input; SchedulerOptions::chainDepth at most); the
  // first becomes the step in flight when this one returns.
  std::vector<uint64_t> chainedStepIds;
  bool cancelled = false;      // cancel() while in flight
  bool finished = false;
  bool waitingForLeader = false; // n > 1: until choice 0 has prefilled
  // KV-block store: asked once per admission from empty blocks (reset when
  // the sequence loses its blocks; while the load is out the sequence is
  // inFlight); `adopted` until its first admission after moving here.
  bool storeLookedUp = false;
  bool adopted = false;
  int32_t failures = 0;
  // Prompt logprobs by position (echo): [p] for the prompt token at p >= 1.
  std::vector<float> promptLogprobs;
  std::vector<std::vector<TopLogprob>> promptTopLogprobs;
  bool sentFirstEvent = false;
  std::optional<GrammarMatcher> grammar; // structured output

  int64_t numGenerated() const {
    return static_cast<int64_t>(tokens.size()) - promptLen;
  }
};

/// One request's choices and where their events go. Owned by a scheduler,
/// or by a DetachedRequest between replicas.
struct RequestState {
  uint64_t id = 0;
  RequestParams params;
  std::shared_ptr<const EventCallback> onEvent;
  std::vector<std::unique_ptr<Sequence>> sequences;
  int32_t unfinished = 0;
};

} // namespace llmir::serving

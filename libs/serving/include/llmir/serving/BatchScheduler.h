// Continuous batching for one replica (TensorRT-LLM's batch manager, minus
// the kernels): waiting and running queues, chunked prefill under
// maxBatchTokens and maxNumSeqs, the replica's KV blocks with prefix caching,
// preemption by recompute, stop conditions, cancellation, and up to
// pipelineDepth steps in flight over disjoint sequences.
//
// Every sequence's state (tokens, seed, streamed text) lives here, not in the
// backend, so a failed step is simply re-queued (recomputed) without losing
// what was streamed.
//
// Thread safety: every public method may be called from any thread. Event
// callbacks run on the thread that completed a step (or called cancel()),
// never under the scheduler's lock, so they may call back into it; they
// should return quickly. Once start()ed, the thread that completes a step
// also schedules and submits the next one, before it hands out the step's
// events (unless it is inside the backend's submit: a synchronous backend).
#pragma once

#include "llmir/serving/BlockManager.h"
#include "llmir/serving/RequestParams.h"
#include "llmir/support/Status.h"

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace llmir::model {
class Tokenizer;
}
namespace llmir::proto {
class StepResponse;
class StepSequence;
}

namespace llmir::serving {

class BlockManager;
class ReplicaBackend;
struct RequestState;
struct Sequence;

/// When a replica with a KV-block store writes full blocks to it
/// (docs/kv-store.md): never; once per sequence when it finishes (its full
/// blocks, copied out before they can be reused); or as each step fills them.
enum class KvStoreWritePolicy { Off, OnFinish, WriteThrough };
const char *kvStoreWritePolicyName(KvStoreWritePolicy policy); // "off", "on-finish", ...
/// Parses "off", "on-finish" or "write-through"; the error names them.
Result<KvStoreWritePolicy> parseKvStoreWritePolicy(std::string_view name);

struct SchedulerOptions {
  int32_t maxNumSeqs = 64;       // running sequences
  int32_t maxBatchTokens = 512;  // tokens per step (prefill chunks + decodes)
  bool enablePrefixCaching = true;
  /// Tokens per sequence (prompt + output); 0: the KV cache's capacity.
  int64_t maxModelLen = 0;
  std::vector<int32_t> eosTokenIds;
  /// Times a sequence's step may fail before its request fails.
  int32_t maxStepRetries = 3;
  /// With a store (ReplicaInfo::kvStore); loads happen under every policy.
  KvStoreWritePolicy kvStoreWritePolicy = KvStoreWritePolicy::WriteThrough;
  /// On a replica that chains decodes (ReplicaInfo::chainsDecode): send a
  /// sequence's next decode while its current step is in flight, its input
  /// the token that step samples (vLLM's asynchronous scheduling), so the
  /// replica never idles for the round trip to the scheduler between two
  /// tokens. A step chained after a sequence's last token is wasted.
  bool chainDecode = true;
  /// Chained decodes a sequence may have queued behind its step in flight.
  /// 2 keeps a replica that launches a decode behind the running one (the
  /// shard worker's worker.pipeline-decodes) fed through the round trip to
  /// the scheduler, at one more wasted step after a sequence's last token.
  int32_t chainDepth = 2;
};

enum class FinishReason { Stop, Length, Abort, Error };
const char *finishReasonName(FinishReason reason); // "stop", "length", ...

struct TopLogprob {
  int32_t tokenId = 0;
  float logprob = 0.0f;
};

/// One choice's progress: a new token (with its text delta) and/or its end.
struct SequenceEvent {
  uint64_t requestId = 0;
  uint32_t index = 0;                 // choice index in [0, n)
  std::optional<int32_t> tokenId;     // the sampled token, if any
  std::string text;                   // text released by this event
  std::optional<float> logprob;       // when the request asked for logprobs
  std::vector<TopLogprob> topLogprobs;
  std::optional<FinishReason> finish; // set on the choice's last event
  /// promptLogprobs requests, on the choice's first event: the logprob of
  /// prompt token i+1 at [i] (the first prompt token has none), with its
  /// alternatives.
  std::vector<float> promptLogprobs;
  std::vector<std::vector<TopLogprob>> promptTopLogprobs;
  std::string error;                  // when finish == Error
  int64_t numGenerated = 0;           // tokens sampled so far for this choice
};

using EventCallback = std::function<void(const SequenceEvent &)>;

/// Counters and gauges for metrics and load balancing.
struct SchedulerStats {
  int32_t numRunning = 0;   // sequences holding KV blocks
  int32_t numWaiting = 0;   // sequences waiting for admission
  double kvUsage = 0.0;     // [0, 1]
  uint64_t prefixQueryTokens = 0;
  uint64_t prefixHitTokens = 0;
  uint64_t numPreemptions = 0;
  uint64_t numStepFailures = 0;
  /// Tokens still to compute or generate (least-loaded routing).
  int64_t outstandingTokens = 0;
  /// KV-block store (ReplicaInfo::kvStore): loads asked, loads that failed
  /// (nothing loaded, the tokens were computed), tokens whose KV came from
  /// the store instead of prefill, blocks marked for write-through.
  uint64_t kvStoreLoads = 0;
  uint64_t kvStoreLoadFailures = 0;
  uint64_t kvStoreLoadedTokens = 0;
  uint64_t kvStoreWrittenBlocks = 0;
  /// Sequences moved here from another replica (adopt): tokens they had
  /// whose KV was found (local prefix cache or store) vs. computed again.
  uint64_t adoptedTokensReused = 0;
  uint64_t adoptedTokensRecomputed = 0;
};

/// What one submitted step carried (batch size metrics).
struct StepStats {
  int32_t numSequences = 0;
  int32_t numTokens = 0;
  int32_t numPrefillTokens = 0;
};

/// A request taken out of a scheduler with every choice's state (tokens so
/// far, seed, text already streamed), to continue on another replica: its
/// client sees the stream go on where it stopped.
class DetachedRequest {
public:
  DetachedRequest(DetachedRequest &&) noexcept;
  DetachedRequest &operator=(DetachedRequest &&) noexcept;
  ~DetachedRequest();
  /// Unfinished choices (they are recomputed where the request is adopted).
  int32_t numUnfinished() const;
  /// The id it had in the scheduler it left.
  uint64_t id() const;
  /// Ends every unfinished choice with `reason` (events go to its callback).
  void finish(FinishReason reason, const std::string &error);

private:
  friend class BatchScheduler;
  explicit DetachedRequest(std::unique_ptr<RequestState> state);
  std::unique_ptr<RequestState> state_;
};

class BatchScheduler {
public:
  /// `backend` and `tokenizer` must outlive the scheduler.
  BatchScheduler(ReplicaBackend &backend, const model::Tokenizer &tokenizer,
                 SchedulerOptions options);
  ~BatchScheduler();
  BatchScheduler(const BatchScheduler &) = delete;
  BatchScheduler &operator=(const BatchScheduler &) = delete;

  /// Limits requests must satisfy (validateRequest) before addRequest.
  RequestLimits limits() const;

  /// Queues a validated request as params.n sequences; returns its id.
  /// Invalid params (programmer error) are asserted.
  uint64_t addRequest(RequestParams params, EventCallback onEvent);
  /// Ends the request's sequences with FinishReason::Abort and frees their
  /// blocks (at once, or when their in-flight step returns). Unknown or
  /// finished ids are ignored.
  void cancel(uint64_t requestId);

  /// Schedules and submits one step if a pipeline slot is free and any
  /// sequence can run; false when nothing was submitted.
  bool stepOnce();
  /// Steps until no sequence is left (for a synchronous backend: tests).
  void runUntilIdle();

  /// A background thread that steps whenever work and a slot are there.
  void start();
  /// Stops the thread after the steps in flight return.
  void stop();
  /// Tells the thread to submit no more steps and returns at once (stop()
  /// then joins it): lets a caller fail the steps in flight before joining.
  void requestStop();

  /// Takes every unfinished request out, after the steps in flight have
  /// returned (their failures do not count against the sequences, unless
  /// `keepFailures`: the replica went because a step of theirs failed). The
  /// scheduler must not be stepping (stop() first). Their blocks are freed.
  std::vector<DetachedRequest> detachAll(bool keepFailures = false);
  /// Continues a request detached from another scheduler of the same model;
  /// its choices recompute their tokens so far, then generate on. Returns
  /// its id here.
  uint64_t adopt(DetachedRequest request);

  SchedulerStats stats() const;
  void setStepObserver(std::function<void(const StepStats &)> observer);

private:
  using Request = RequestState;
  struct InFlightStep;

  struct StoreLoad { // becomes a proto::KvLoadRequest outside the lock
    uint64_t sequenceId = 0;
    uint64_t loadId = 0;
    int32_t firstBlock = 0;
    std::vector<int32_t> blockIds;
    std::vector<int32_t> tokens;
    bool store = false; // on-finish write: the blocks go to the store
  };
  /// On-finish policy: queues the write of `seq`'s full blocks and keeps
  /// its blocks out of the allocator until every rank copied them.
  void storeOnFinishLocked(Sequence &seq);
  void onStoreWriteDone(uint64_t loadId);
  std::optional<InFlightStep> scheduleLocked();
  /// Schedules a step (and takes the queued store loads) and submits them
  /// with the lock released; false when there was nothing to send.
  bool submitNextLocked(std::unique_lock<std::mutex> &lock);
  bool startStoreLoadLocked(Sequence &seq);
  void sendStoreLoads(std::vector<StoreLoad> loads);
  void onStoreLoadDone(uint64_t sequenceId, Result<uint32_t> loaded);
  void markWriteThroughLocked(const Sequence &seq, proto::StepSequence &entry);
  bool admitLocked(Sequence &seq, int32_t &budget);
  /// `seq` (in flight) may also go in the step being scheduled, chained.
  bool chainableLocked(Sequence &seq);
  void fillEntryLocked(const Sequence &seq, bool chained, proto::StepSequence &entry);
  /// Frees `seq`'s blocks, or holds them until the step still computing
  /// into them (a chained one) returns.
  void releaseBlocksLocked(Sequence &seq);
  bool preemptForLocked(Sequence &seq);
  void preemptLocked(Sequence &seq);
  void onStepDone(uint64_t stepId, Result<proto::StepResponse> response);
  void finishLocked(Sequence &seq, FinishReason reason, std::string error);
  void onTokenLocked(Sequence &seq, const void *sampledToken);
  void retireLocked(Sequence &seq);
  void emitLocked(Sequence &seq, SequenceEvent event);
  void deliver(std::unique_lock<std::mutex> &lock);
  void submit(InFlightStep step);
  void loop();
  /// No step in flight or completing, no events being handed out.
  bool quiescentLocked() const;

  ReplicaBackend &backend_;
  const model::Tokenizer &tokenizer_;
  SchedulerOptions options_;
  int32_t pipelineDepth_;
  bool chainDecode_ = false; // options_.chainDecode on a replica that chains
  int32_t chainDepth_ = 0;   // options_.chainDepth when chaining, else 0
  int32_t maxInFlight_ = 1;  // pipelineDepth_ + chainDepth_
  int32_t vocabSize_;

  mutable std::mutex mutex_;
  // Two conditions, so that a step's completion wakes only who it concerns:
  // work_ the loop thread (version_ moved: something to schedule), quiet_
  // those waiting for quiescence (detachAll, the loop's end). A completion
  // that scheduled the next step itself notifies quiet_ only (one wake-up of
  // the loop thread per token saved).
  std::condition_variable work_, quiet_;
  /// Both: every change but a completion that scheduled inline.
  void notifyAll() {
    work_.notify_all();
    quiet_.notify_all();
  }
  std::unique_ptr<BlockManager> blocks_;
  std::map<uint64_t, std::unique_ptr<Request>> requests_;
  std::deque<Sequence *> waiting_;
  std::vector<Sequence *> running_; // in admission order
  std::map<uint64_t, std::vector<uint64_t>> inFlight_; // step id -> sequence ids
  std::map<uint64_t, Sequence *> sequences_;
  // Events wait here and are handed out by one thread at a time, in order.
  std::deque<std::pair<std::shared_ptr<const EventCallback>, SequenceEvent>> outbox_;
  bool delivering_ = false;
  int32_t completing_ = 0; // onStepDone calls still handing out events
  uint64_t version_ = 0; // bumped on every change that may unblock scheduling
  uint64_t nextRequestId_ = 1;
  uint64_t nextSequenceId_ = 1;
  uint64_t nextStepId_ = 1;
  uint64_t numPreemptions_ = 0;
  uint64_t numStepFailures_ = 0;
  bool kvStore_ = false; // backend_.info().kvStore
  bool writeThrough_ = false; // kvStore_ under KvStoreWritePolicy::WriteThrough
  std::vector<StoreLoad> storeLoadsToSend_; // filled by scheduleLocked
  int32_t storeLoadsInFlight_ = 0;
  int32_t storeWritesInFlight_ = 0;
  std::map<uint64_t, SequenceBlocks> heldForStore_; // by load id
  // Blocks of sequences that ended while a chained step of theirs was in
  // flight, by that step's id: freed when it returns.
  std::map<uint64_t, std::vector<SequenceBlocks>> heldForStep_;
  uint64_t nextLoadId_ = 1;
  uint64_t kvStoreLoads_ = 0;
  uint64_t kvStoreLoadFailures_ = 0;
  uint64_t kvStoreLoadedTokens_ = 0;
  uint64_t kvStoreWrittenBlocks_ = 0;
  uint64_t adoptedTokensReused_ = 0;
  uint64_t adoptedTokensRecomputed_ = 0;
  std::function<void(const StepStats &)> stepObserver_;
  std::thread thread_;
  bool stopping_ = false;
  /// start() was called (and not stop()): a completed step then schedules
  /// and submits the next one itself, on the thread that completed it.
  bool loopStarted_ = false;
};

} // namespace llmir::serving

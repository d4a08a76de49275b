#include "llmir/serving/BatchScheduler.h"

#include "Sequence.h"

#include "llmir/proto/worker.pb.h"
#include "llmir/serving/ReplicaBackend.h"
#include "llmir/serving/StepSampling.h"

#include <algorithm>
#include <cassert>
#include <random>
#include <utility>

namespace llmir::serving {

const char *kvStoreWritePolicyName(KvStoreWritePolicy policy) {
  switch (policy) {
  case KvStoreWritePolicy::Off:
    return "off";
  case KvStoreWritePolicy::OnFinish:
    return "on-finish";
  case KvStoreWritePolicy::WriteThrough:
    return "write-through";
  }
  return "write-through";
}

Result<KvStoreWritePolicy> parseKvStoreWritePolicy(std::string_view name) {
  for (KvStoreWritePolicy p : {KvStoreWritePolicy::Off, KvStoreWritePolicy::OnFinish,
                               KvStoreWritePolicy::WriteThrough})
    if (name == kvStoreWritePolicyName(p))
      return p;
  return Status::error("unknown KV-store write policy '" + std::string(name) +
                       "' (accepted: off, on-finish, write-through)");
}

const char *finishReasonName(FinishReason reason) {
  switch (reason) {
  case FinishReason::Stop:
    return "stop";
  case FinishReason::Length:
    return "length";
  case FinishReason::Abort:
    return "abort";
  case FinishReason::Error:
    return "error";
  }
  return "error";
}

DetachedRequest::DetachedRequest(std::unique_ptr<RequestState> state)
    : state_(std::move(state)) {}
DetachedRequest::DetachedRequest(DetachedRequest &&) noexcept = default;
DetachedRequest &DetachedRequest::operator=(DetachedRequest &&) noexcept = default;
DetachedRequest::~DetachedRequest() = default;

int32_t DetachedRequest::numUnfinished() const {
  return state_ ? state_->unfinished : 0;
}

uint64_t DetachedRequest::id() const { return state_ ? state_->id : 0; }

void DetachedRequest::finish(FinishReason reason, const std::string &error) {
  if (!state_)
    return;
  for (auto &seq : state_->sequences) {
    if (seq->finished)
      continue;
    seq->finished = true;
    SequenceEvent event;
    event.requestId = state_->id;
    event.index = seq->index;
    event.numGenerated = seq->numGenerated();
    event.finish = reason;
    event.error = error;
    if (reason != FinishReason::Error)
      event.text = seq->text.finish();
    (*state_->onEvent)(event);
  }
  state_->unfinished = 0;
}

struct BatchScheduler::InFlightStep {
  proto::StepRequest request;
  StepStats stats;
};

namespace {
template <typename T> bool contains(const std::vector<T> &v, const T &x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}
template <typename C, typename T> void erase(C &c, const T &x) {
  c.erase(std::remove(c.begin(), c.end(), x), c.end());
}
// Set while this thread is inside backend_.submit: a synchronous backend
// completes the step there, and that completion must not submit the next
// step itself (the stack would grow by a step per token).
thread_local bool insideSubmit = false;
} // namespace

BatchScheduler::BatchScheduler(ReplicaBackend &backend,
                               const model::Tokenizer &tokenizer,
                               SchedulerOptions options)
    : backend_(backend), tokenizer_(tokenizer), options_(std::move(options)) {
  const ReplicaInfo info = backend_.info();
  pipelineDepth_ = std::max(1, info.pipelineDepth);
  chainDecode_ = options_.chainDecode && info.chainsDecode;
  // The chained steps wait on the replica while the one before them runs.
  chainDepth_ = chainDecode_ ? std::max(1, options_.chainDepth) : 0;
  maxInFlight_ = pipelineDepth_ + chainDepth_;
  vocabSize_ = info.vocabSize;
  kvStore_ = info.kvStore;
  writeThrough_ = kvStore_ && options_.kvStoreWritePolicy == KvStoreWritePolicy::WriteThrough;
  blocks_ = std::make_unique<BlockManager>(info.numKvBlocks, info.blockSize,
                                           options_.enablePrefixCaching);
  const int64_t capacity = int64_t{info.numKvBlocks} * info.blockSize;
  options_.maxModelLen = options_.maxModelLen > 0
                             ? std::min(options_.maxModelLen, capacity)
                             : capacity;
}

BatchScheduler::~BatchScheduler() { stop(); }

RequestLimits BatchScheduler::limits() const {
  return RequestLimits{options_.maxModelLen, vocabSize_};
}

uint64_t BatchScheduler::addRequest(RequestParams params, EventCallback onEvent) {
  assert(!validateRequest(params, limits()) && "addRequest needs a valid request");
  std::unique_lock<std::mutex> lock(mutex_);
  auto request = std::make_unique<Request>();
  request->id = nextRequestId_++;
  request->onEvent = std::make_shared<const EventCallback>(std::move(onEvent));
  std::random_device entropy;
  for (int32_t i = 0; i < params.n; ++i) {
    auto seq = std::make_unique<Sequence>(tokenizer_, params.stop);
    seq->id = nextSequenceId_++;
    seq->requestId = request->id;
    seq->index = static_cast<uint32_t>(i);
    seq->seed = params.sampling.seed
                    ? tokenSeed(*params.sampling.seed, -1 - i)
                    : (uint64_t{entropy()} << 32) ^ entropy();
    seq->tokens = params.promptIds;
    seq->promptLen = static_cast<int64_t>(params.promptIds.size());
    if (params.grammar)
      seq->grammar.emplace(params.grammar);
    // Later choices start once choice 0 has cached the prompt's blocks.
    seq->waitingForLeader = i > 0 && options_.enablePrefixCaching;
    sequences_[seq->id] = seq.get();
    waiting_.push_back(seq.get());
    request->sequences.push_back(std::move(seq));
  }
  request->unfinished = params.n;
  request->params = std::move(params);
  const uint64_t id = request->id;
  requests_[id] = std::move(request);
  ++version_;
  notifyAll();
  return id;
}

void BatchScheduler::cancel(uint64_t requestId) {
  std::unique_lock<std::mutex> lock(mutex_);
  auto it = requests_.find(requestId);
  if (it == requests_.end())
    return;
  // finishLocked may erase the request: collect first.
  std::vector<Sequence *> live;
  for (auto &seq : it->second->sequences)
    if (!seq->finished)
      live.push_back(seq.get());
  for (Sequence *seq : live) {
    if (seq->inFlight)
      seq->cancelled = true; // blocks are freed when the step returns
    else
      finishLocked(*seq, FinishReason::Abort, "");
  }
  ++version_;
  notifyAll();
  deliver(lock);
}

void BatchScheduler::emitLocked(Sequence &seq, SequenceEvent event) {
  auto it = requests_.find(seq.requestId);
  assert(it != requests_.end());
  event.requestId = seq.requestId;
  event.index = seq.index;
  event.numGenerated = seq.numGenerated();
  if (!seq.sentFirstEvent && it->second->params.promptLogprobs && event.error.empty()) {
    event.promptLogprobs.assign(seq.promptLogprobs.begin() + (seq.promptLogprobs.empty() ? 0 : 1),
                                seq.promptLogprobs.end());
    if (!seq.promptTopLogprobs.empty())
      event.promptTopLogprobs.assign(seq.promptTopLogprobs.begin() + 1, seq.promptTopLogprobs.end());
  }
  seq.sentFirstEvent = true;
  outbox_.emplace_back(it->second->onEvent, std::move(event));
}

void BatchScheduler::deliver(std::unique_lock<std::mutex> &lock) {
  if (delivering_)
    return; // the thread delivering now hands these out too, in order
  delivering_ = true;
  while (!outbox_.empty()) {
    auto [callback, event] = std::move(outbox_.front());
    outbox_.pop_front();
    lock.unlock();
    (*callback)(event);
    lock.lock();
  }
  delivering_ = false;
  notifyAll(); // detachAll and stop wait for quiescence
}

void BatchScheduler::releaseBlocksLocked(Sequence &seq) {
  // Only a chained step can still be computing into a sequence's blocks when
  // it ends or is preempted: the one it was promoted to (inFlight), or those
  // behind the step that just returned. Steps return in order: the last one
  // holds them.
  const uint64_t busy = !seq.chainedStepIds.empty() ? seq.chainedStepIds.back()
                        : seq.inFlight              ? seq.stepId
                                                    : 0;
  if (busy != 0) {
    heldForStep_[busy].push_back(std::move(seq.blocks));
    seq.blocks = SequenceBlocks{};
  } else {
    blocks_->release(seq.blocks);
  }
  seq.chainedStepIds.clear();
}

void BatchScheduler::retireLocked(Sequence &seq) {
  seq.finished = true;
  if (seq.running)
    erase(running_, &seq);
  else
    erase(waiting_, &seq);
  seq.running = false;
  releaseBlocksLocked(seq);
  sequences_.erase(seq.id);
  auto it = requests_.find(seq.requestId);
  assert(it != requests_.end());
  Request &request = *it->second;
  if (seq.index == 0)
    for (auto &sibling : request.sequences)
      sibling->waitingForLeader = false;
  if (--request.unfinished == 0)
    requests_.erase(it); // destroys `seq`
}

void BatchScheduler::finishLocked(Sequence &seq, FinishReason reason,
                                  std::string error) {
  SequenceEvent event;
  event.finish = reason;
  event.error = std::move(error);
  if (reason != FinishReason::Error)
    event.text = seq.text.finish();
  emitLocked(seq, std::move(event));
  if (reason == FinishReason::Stop || reason == FinishReason::Length)
    storeOnFinishLocked(seq);
  retireLocked(seq);
}

void BatchScheduler::storeOnFinishLocked(Sequence &seq) {
  if (!kvStore_ || options_.kvStoreWritePolicy != KvStoreWritePolicy::OnFinish)
    return;
  const int64_t B = blocks_->blockSize();
  const int64_t full =
      std::min<int64_t>(seq.numComputed / B, static_cast<int64_t>(seq.blocks.table.size()));
  if (full <= 0)
    return;
  StoreLoad write;
  write.loadId = nextLoadId_++;
  write.store = true;
  write.blockIds.assign(seq.blocks.table.begin(), seq.blocks.table.begin() + full);
  write.tokens.assign(seq.tokens.begin(), seq.tokens.begin() + full * B);
  // Not released (so not reused by a later step) until every rank has
  // copied them; then they join the prefix cache as retireLocked would have.
  heldForStore_[write.loadId] = std::move(seq.blocks);
  seq.blocks = SequenceBlocks{};
  storeLoadsToSend_.push_back(std::move(write));
  ++storeWritesInFlight_;
  kvStoreWrittenBlocks_ += static_cast<uint64_t>(full);
  ++version_; // the scheduling loop sends it
}

void BatchScheduler::onStoreWriteDone(uint64_t loadId) {
  std::unique_lock<std::mutex> lock(mutex_);
  --storeWritesInFlight_;
  auto held = heldForStore_.find(loadId);
  if (held != heldForStore_.end()) {
    blocks_->release(held->second);
    heldForStore_.erase(held);
  }
  ++version_; // the blocks may admit a waiting sequence
  notifyAll();
}

void BatchScheduler::onTokenLocked(Sequence &seq, const void *sampledToken) {
  const auto &sampled = *static_cast<const proto::SampledToken *>(sampledToken);
  const RequestParams &params = requests_.at(seq.requestId)->params;
  if (params.maxTokens == 0) { // echo of the prompt only: its token is dropped
    SequenceEvent event;
    event.finish = FinishReason::Length;
    event.text = seq.text.finish();
    emitLocked(seq, std::move(event));
    retireLocked(seq);
    return;
  }
  const int32_t token = sampled.token_id();
  seq.tokens.push_back(token);
  const int64_t generated = seq.numGenerated();
  bool grammarDone = false;
  if (seq.grammar && !contains(options_.eosTokenIds, token)) {
    auto bytes = tokenizer_.tokenBytes(token);
    if (bytes)
      seq.grammar->advance(*bytes);
    grammarDone = seq.grammar->finished();
  }

  SequenceEvent event;
  event.tokenId = token;
  if (params.logprobs || params.topLogprobs > 0) {
    event.logprob = sampled.logprob();
    for (const proto::TokenLogprob &top : sampled.top_logprobs())
      event.topLogprobs.push_back({top.token_id(), top.logprob()});
  }
  const bool mayStop = generated >= params.minTokens;
  const bool isEos = !params.ignoreEos && contains(options_.eosTokenIds, token);
  if (mayStop && (isEos || contains(params.stopTokenIds, token))) {
    event.finish = FinishReason::Stop; // the stop token adds no text
  } else {
    auto delta = seq.text.push(token, mayStop);
    if (!delta) {
      event.finish = FinishReason::Error;
      event.error = delta.message();
    } else {
      event.text = std::move(delta->text);
      if (delta->stopped || grammarDone) // the structured output is complete
        event.finish = FinishReason::Stop;
    }
  }
  if (!event.finish && (generated >= params.maxTokens ||
                        static_cast<int64_t>(seq.tokens.size()) >= options_.maxModelLen))
    event.finish = FinishReason::Length;
  if (event.finish && *event.finish != FinishReason::Error)
    event.text += seq.text.finish();
  const bool done = event.finish.has_value();
  const bool finished = done && *event.finish != FinishReason::Error;
  emitLocked(seq, std::move(event));
  if (finished)
    storeOnFinishLocked(seq);
  if (done)
    retireLocked(seq);
}

void BatchScheduler::preemptLocked(Sequence &seq) {
  assert(seq.running && !seq.inFlight);
  releaseBlocksLocked(seq);
  seq.numComputed = 0;
  seq.storeLookedUp = false; // its blocks may be in the store by now
  seq.running = false;
  erase(running_, &seq);
  waiting_.push_front(&seq);
}

bool BatchScheduler::preemptForLocked(Sequence &seq) {
  // Victim: the latest admitted running sequence, not in flight, not `seq`
  // and not already in this step (those were admitted before `seq`).
  auto self = std::find(running_.begin(), running_.end(), &seq);
  for (auto it = running_.end(); it != self + 1;) {
    --it;
    if (!(*it)->inFlight) {
      preemptLocked(**it);
      ++numPreemptions_;
      return true;
    }
  }
  return false;
}

bool BatchScheduler::admitLocked(Sequence &seq, int32_t &budget) {
  if (seq.blocks.table.empty() && !requests_.at(seq.requestId)->params.promptLogprobs)
    seq.numComputed = blocks_->reuseCachedPrefix(seq.tokens, seq.blocks);
  if (seq.adopted) {
    // Counted once, at its first admission here (after any store load).
    seq.adopted = false;
    adoptedTokensReused_ += static_cast<uint64_t>(seq.numComputed);
    adoptedTokensRecomputed_ += seq.tokens.size() - static_cast<uint64_t>(seq.numComputed);
  }
  const int64_t toCompute = static_cast<int64_t>(seq.tokens.size()) - seq.numComputed;
  const int32_t chunk = static_cast<int32_t>(std::min<int64_t>(toCompute, budget));
  // Keep one block spare per running sequence, so admissions do not force
  // running sequences out as soon as they grow.
  const int32_t reserve = std::min<int32_t>(static_cast<int32_t>(running_.size()),
                                            blocks_->numBlocks() / 8);
  if (blocks_->blocksNeeded(seq.blocks, seq.numComputed + chunk) + reserve >
          blocks_->numAvailable() ||
      !blocks_->ensureCapacity(seq.blocks, seq.numComputed + chunk)) {
    blocks_->release(seq.blocks);
    seq.numComputed = 0;
    return false;
  }
  seq.chunk = chunk;
  return true;
}

bool BatchScheduler::startStoreLoadLocked(Sequence &seq) {
  seq.storeLookedUp = true;
  const int64_t B = blocks_->blockSize();
  if (static_cast<int64_t>(seq.tokens.size()) - 1 < B)
    return false; // no full block to load (admitLocked looks up the cache)
  seq.numComputed = blocks_->reuseCachedPrefix(seq.tokens, seq.blocks);
  // Full blocks past the local prefix cache, leaving the last token to
  // compute (its logits are needed), as reuseCachedPrefix does.
  const int64_t first = seq.numComputed / B;
  const int64_t end = (static_cast<int64_t>(seq.tokens.size()) - 1) / B;
  if (end <= first)
    return false; // admitLocked goes on with the reused blocks
  const int32_t reserve = std::min<int32_t>(static_cast<int32_t>(running_.size()),
                                            blocks_->numBlocks() / 8);
  if (blocks_->blocksNeeded(seq.blocks, end * B) + reserve > blocks_->numAvailable() ||
      !blocks_->ensureCapacity(seq.blocks, end * B))
    return false; // no room to load into: computed as usual
  StoreLoad load;
  load.sequenceId = seq.id;
  load.loadId = nextLoadId_++;
  load.firstBlock = static_cast<int32_t>(first);
  load.blockIds.assign(seq.blocks.table.begin() + first, seq.blocks.table.begin() + end);
  load.tokens.assign(seq.tokens.begin(), seq.tokens.begin() + end * B);
  storeLoadsToSend_.push_back(std::move(load));
  seq.inFlight = true; // cancel() waits for the load like for a step
  ++storeLoadsInFlight_;
  ++kvStoreLoads_;
  return true;
}

void BatchScheduler::sendStoreLoads(std::vector<StoreLoad> loads) {
  for (StoreLoad &load : loads) {
    proto::KvLoadRequest request;
    request.set_load_id(load.loadId);
    request.set_first_block(load.firstBlock);
    request.mutable_block_ids()->Add(load.blockIds.begin(), load.blockIds.end());
    request.mutable_token_ids()->Add(load.tokens.begin(), load.tokens.end());
    if (load.store) {
      request.set_store(true);
      // A failed write only loses the blocks for other replicas.
      backend_.loadBlocks(request, [this, id = load.loadId](Result<uint32_t>) {
        onStoreWriteDone(id);
      });
      continue;
    }
    backend_.loadBlocks(request, [this, id = load.sequenceId](Result<uint32_t> loaded) {
      onStoreLoadDone(id, std::move(loaded));
    });
  }
}

void BatchScheduler::onStoreLoadDone(uint64_t sequenceId, Result<uint32_t> loaded) {
  std::unique_lock<std::mutex> lock(mutex_);
  ++completing_;
  --storeLoadsInFlight_;
  auto found = sequences_.find(sequenceId);
  if (found != sequences_.end()) {
    Sequence &seq = *found->second;
    seq.inFlight = false;
    if (seq.cancelled) {
      finishLocked(seq, FinishReason::Abort, "");
    } else {
      const int64_t B = blocks_->blockSize();
      if (!loaded)
        ++kvStoreLoadFailures_;
      const int64_t tokens = int64_t{loaded ? *loaded : 0u} * B;
      seq.numComputed += tokens;
      kvStoreLoadedTokens_ += static_cast<uint64_t>(tokens);
      blocks_->commitFullBlocks(seq.blocks, seq.tokens, seq.numComputed);
      // Blocks that were not loaded on every rank are computed later.
      blocks_->truncate(seq.blocks, static_cast<size_t>(seq.numComputed / B));
      waiting_.push_front(&seq); // next admission continues from numComputed
    }
  }
  ++version_;
  deliver(lock);
  --completing_;
  notifyAll();
}

void BatchScheduler::markWriteThroughLocked(const Sequence &seq, proto::StepSequence &entry) {
  const int64_t B = blocks_->blockSize();
  const int64_t first = seq.numComputed / B;           // block of the first token
  const int64_t end = (seq.numComputed + seq.chunk) / B; // blocks full after the step
  for (int64_t k = first; k < end; ++k)
    entry.add_store_blocks(static_cast<int32_t>(k));
  if (end > first) {
    entry.mutable_prefix_token_ids()->Add(seq.tokens.begin(), seq.tokens.begin() + end * B);
    kvStoreWrittenBlocks_ += static_cast<uint64_t>(end - first);
  }
}

void BatchScheduler::fillEntryLocked(const Sequence &seq, bool chained,
                                     proto::StepSequence &entry) {
  const RequestParams &params = requests_.at(seq.requestId)->params;
  entry.set_sequence_id(seq.id);
  if (chained) {
    // One decode at the position after the step in flight and the chained
    // ones before it; its token is the one the step before samples
    // (chainableLocked ruled out what would need it here).
    entry.set_chained_input(true);
    entry.set_start_position(static_cast<int32_t>(seq.numComputed + seq.chunk +
                                                  std::ssize(seq.chainedStepIds)));
  } else {
    auto first = seq.tokens.begin() + seq.numComputed;
    entry.mutable_token_ids()->Add(first, first + seq.chunk);
    entry.set_start_position(static_cast<int32_t>(seq.numComputed));
  }
  entry.mutable_block_table()->Add(seq.blocks.table.begin(), seq.blocks.table.end());
  const bool sample =
      chained || seq.numComputed + seq.chunk == static_cast<int64_t>(seq.tokens.size());
  entry.set_sample(sample);
  proto::SamplingParams *sampling = entry.mutable_sampling();
  sampling->set_temperature(params.sampling.temperature);
  sampling->set_top_p(params.sampling.topP);
  sampling->set_top_k(params.sampling.topK);
  sampling->set_seed(seq.seed);
  entry.set_want_logprobs(params.logprobs);
  entry.set_top_logprobs(static_cast<uint32_t>(params.topLogprobs));
  for (const auto &[id, bias] : params.logitBias) {
    proto::TokenLogprob *b = entry.add_logit_bias();
    b->set_token_id(id);
    b->set_logprob(bias);
  }
  const bool repetition = params.repetitionPenalty != 1.0f;
  if (sample && (params.presencePenalty != 0 || params.frequencyPenalty != 0 || repetition)) {
    // The output so far; a chained step's worker appends the tokens it drew
    // since (from prompt_length + this many on: DecodeChain).
    entry.set_presence_penalty(params.presencePenalty);
    entry.set_frequency_penalty(params.frequencyPenalty);
    entry.set_repetition_penalty(params.repetitionPenalty);
    entry.set_prompt_length(static_cast<int32_t>(seq.promptLen));
    entry.mutable_output_token_ids()->Add(seq.tokens.begin() + seq.promptLen, seq.tokens.end());
    if (repetition)
      entry.mutable_prompt_token_ids()->Add(seq.tokens.begin(), seq.tokens.begin() + seq.promptLen);
  }
  if (chained)
    return;
  if (params.promptLogprobs && seq.numComputed + 1 < seq.promptLen) {
    entry.set_prompt_logprobs(true);
    entry.set_prompt_length(static_cast<int32_t>(seq.promptLen));
    const int64_t next = seq.numComputed + seq.chunk;
    entry.set_next_prompt_token(next < seq.promptLen ? seq.tokens[static_cast<size_t>(next)] : -1);
  }
  if (sample && seq.grammar) {
    // The mask of this step, from the output so far.
    entry.set_constrained(true);
    const std::vector<int32_t> allowed =
        seq.grammar->allowedTokens(tokenizer_, vocabSize_, options_.eosTokenIds);
    entry.mutable_allowed_token_ids()->Add(allowed.begin(), allowed.end());
  }
  if (writeThrough_)
    markWriteThroughLocked(seq, entry);
}

bool BatchScheduler::chainableLocked(Sequence &seq) {
  const int64_t ahead = std::ssize(seq.chainedStepIds); // chained steps queued
  if (!chainDecode_ || ahead >= chainDepth_ || seq.cancelled)
    return false;
  if (seq.numComputed + seq.chunk != static_cast<int64_t>(seq.tokens.size()))
    return false; // the step in flight samples nothing
  const int64_t position = seq.numComputed + seq.chunk + ahead; // the chained token's
  const RequestParams &params = requests_.at(seq.requestId)->params;
  // What needs the sampled token on the scheduler's side first: the grammar's
  // next mask. (Penalties count the output so far: the worker adds what it
  // drew since the scheduler last heard, DecodeChain.)
  if (seq.grammar)
    return false;
  // The step in flight samples output token numGenerated() + 1, the chained
  // ones the next: only when this one's may still be wanted.
  if (seq.numGenerated() + ahead + 2 > params.maxTokens || position + 2 > options_.maxModelLen)
    return false;
  // Write-through keys a block by its tokens: a step that fills one must
  // know them all.
  if (writeThrough_ && (position + 1) % blocks_->blockSize() == 0)
    return false;
  return blocks_->ensureCapacity(seq.blocks, position + 1); // never preempts for it
}

std::optional<BatchScheduler::InFlightStep> BatchScheduler::scheduleLocked() {
  if (static_cast<int32_t>(inFlight_.size()) >= maxInFlight_)
    return std::nullopt;
  int32_t budget = options_.maxBatchTokens;
  std::vector<Sequence *> chosen, chained;

  // Running sequences first: decodes and the rest of chunked prefills (and
  // chained decodes of those in flight).
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Sequence &seq = *running_[i];
    if (seq.inFlight) {
      if (chainableLocked(seq)) {
        --budget;
        chained.push_back(&seq);
      }
      continue;
    }
    const int64_t toCompute = static_cast<int64_t>(seq.tokens.size()) - seq.numComputed;
    const int32_t chunk = static_cast<int32_t>(std::min<int64_t>(toCompute, budget));
    bool fits = blocks_->ensureCapacity(seq.blocks, seq.numComputed + chunk);
    while (!fits && preemptForLocked(seq))
      fits = blocks_->ensureCapacity(seq.blocks, seq.numComputed + chunk);
    if (!fits) {
      // Only blocks held by steps in flight or by this step are left: wait
      // for them, unless nothing at all holds them (then recompute later).
      if (chosen.empty() && inFlight_.empty()) {
        preemptLocked(seq);
        ++numPreemptions_;
        --i;
      }
      continue;
    }
    seq.chunk = chunk;
    budget -= chunk;
    chosen.push_back(&seq);
  }

  // Then admissions, in arrival order (preempted sequences were put first).
  for (auto it = waiting_.begin();
       it != waiting_.end() && budget > 0 &&
       static_cast<int32_t>(running_.size()) < options_.maxNumSeqs;) {
    Sequence &seq = **it;
    if (seq.waitingForLeader) {
      ++it;
      continue;
    }
    if (kvStore_ && !seq.storeLookedUp && seq.blocks.table.empty() &&
        !requests_.at(seq.requestId)->params.promptLogprobs && startStoreLoadLocked(seq)) {
      it = waiting_.erase(it); // back at the front once the load returns
      continue;
    }
    if (!admitLocked(seq, budget))
      break;
    it = waiting_.erase(it);
    seq.running = true;
    running_.push_back(&seq);
    budget -= seq.chunk;
    chosen.push_back(&seq);
  }
  if (chosen.empty() && chained.empty())
    return std::nullopt;

  InFlightStep step;
  step.request.set_step_id(nextStepId_++);
  step.request.set_chain_depth(static_cast<uint32_t>(chainDepth_));
  std::vector<uint64_t> ids;
  for (Sequence *seq : chosen) {
    fillEntryLocked(*seq, false, *step.request.add_sequences());
    seq->inFlight = true;
    seq->stepId = step.request.step_id();
    ids.push_back(seq->id);
    ++step.stats.numSequences;
    step.stats.numTokens += seq->chunk;
    if (seq->numComputed < seq->promptLen)
      step.stats.numPrefillTokens += seq->chunk;
  }
  for (Sequence *seq : chained) {
    fillEntryLocked(*seq, true, *step.request.add_sequences());
    seq->chainedStepIds.push_back(step.request.step_id());
    ids.push_back(seq->id);
    ++step.stats.numSequences;
    ++step.stats.numTokens;
  }
  inFlight_[step.request.step_id()] = std::move(ids);
  return step;
}

void BatchScheduler::submit(InFlightStep step) {
  std::function<void(const StepStats &)> observer;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    observer = stepObserver_;
  }
  if (observer)
    observer(step.stats);
  const uint64_t stepId = step.request.step_id();
  const bool outer = !insideSubmit;
  insideSubmit = true;
  backend_.submit(step.request, [this, stepId](Result<proto::StepResponse> response) {
    onStepDone(stepId, std::move(response));
  });
  if (outer)
    insideSubmit = false;
}

void BatchScheduler::onStepDone(uint64_t stepId, Result<proto::StepResponse> response) {
  std::unique_lock<std::mutex> lock(mutex_);
  ++completing_; // until its events are out: detachAll and stop wait for it
  auto node = inFlight_.extract(stepId);
  assert(!node.empty());
  std::string failure;
  if (!response)
    failure = response.message();
  else if (!response->ok())
    failure = response->error();
  if (!failure.empty())
    ++numStepFailures_;

  std::map<uint64_t, const proto::SampledToken *> sampled;
  std::map<uint64_t, const proto::PromptLogprobs *> promptLogprobs;
  if (response) {
    for (const proto::SampledToken &token : response->tokens())
      sampled[token.sequence_id()] = &token;
    for (const proto::PromptLogprobs &p : response->prompt_logprobs())
      promptLogprobs[p.sequence_id()] = &p;
  }

  for (uint64_t id : node.mapped()) {
    auto found = sequences_.find(id);
    if (found == sequences_.end())
      continue;
    Sequence &seq = *found->second;
    if (auto chained = std::find(seq.chainedStepIds.begin(), seq.chainedStepIds.end(), stepId);
        chained != seq.chainedStepIds.end()) {
      // Returned before the step it chains on (a send failed): nothing of
      // it is usable, and the sequence goes on from that step (a step
      // chained behind it finds no token to decode and fails).
      seq.chainedStepIds.erase(chained);
      continue;
    }
    if (!seq.inFlight || seq.stepId != stepId)
      continue; // a chained step whose predecessor failed: the sequence was re-queued
    seq.inFlight = false;
    if (seq.cancelled) {
      finishLocked(seq, FinishReason::Abort, "");
      continue;
    }
    const bool sample =
        seq.numComputed + seq.chunk == static_cast<int64_t>(seq.tokens.size());
    std::string error = failure;
    if (error.empty() && sample && !sampled.count(id))
      error = "step " + std::to_string(stepId) + " returned no token for sequence " +
              std::to_string(id);
    if (!error.empty()) {
      // Recompute on the next step (on this or, later, another replica);
      // the streamed tokens stay in seq.tokens.
      if (++seq.failures > options_.maxStepRetries)
        finishLocked(seq, FinishReason::Error, error);
      else
        preemptLocked(seq);
      continue;
    }
    if (auto p = promptLogprobs.find(id); p != promptLogprobs.end()) {
      const proto::PromptLogprobs &lp = *p->second;
      seq.promptLogprobs.resize(static_cast<size_t>(seq.promptLen), 0.0f);
      seq.promptTopLogprobs.resize(static_cast<size_t>(seq.promptLen));
      for (int i = 0; i < lp.logprobs_size(); ++i) {
        const int64_t position = lp.first_position() + i;
        if (position <= 0 || position >= seq.promptLen)
          continue;
        seq.promptLogprobs[static_cast<size_t>(position)] = lp.logprobs(i);
        auto &tops = seq.promptTopLogprobs[static_cast<size_t>(position)];
        tops.clear();
        if (i < lp.tops_size())
          for (const proto::TokenLogprob &t : lp.tops(i).entries())
            tops.push_back({t.token_id(), t.logprob()});
      }
    }
    seq.numComputed += seq.chunk;
    blocks_->commitFullBlocks(seq.blocks, seq.tokens, seq.numComputed);
    if (seq.index == 0 && seq.numComputed >= seq.promptLen)
      for (auto &sibling : requests_.at(seq.requestId)->sequences)
        sibling->waitingForLeader = false;
    if (!sample)
      continue;
    if (!seq.chainedStepIds.empty()) {
      // Its first chained step now decodes the token just sampled.
      seq.inFlight = true;
      seq.stepId = seq.chainedStepIds.front();
      seq.chainedStepIds.erase(seq.chainedStepIds.begin());
      seq.chunk = 1;
    }
    onTokenLocked(seq, sampled.at(id)); // may end the sequence (blocks held for that step)
  }
  if (auto held = heldForStep_.extract(stepId))
    for (SequenceBlocks &blocks : held.mapped())
      blocks_->release(blocks);
  // The next steps go out before this step's events are handed out: the
  // replica computes while the tokens are framed and streamed to the
  // clients, and no wake-up of the loop thread sits between two steps. All
  // that is schedulable is scheduled here (more than one step when the
  // pipeline has room), so the loop thread would find nothing: version_
  // stays and only quiescence waiters are woken. Otherwise (not started,
  // stopping, or inside a synchronous backend's submit) the loop thread
  // schedules what this step freed.
  const bool scheduleHere = loopStarted_ && !stopping_ && !insideSubmit;
  if (!scheduleHere)
    ++version_;
  while (scheduleHere && submitNextLocked(lock)) {
  }
  deliver(lock);
  --completing_;
  if (scheduleHere)
    quiet_.notify_all();
  else
    notifyAll();
}

bool BatchScheduler::submitNextLocked(std::unique_lock<std::mutex> &lock) {
  std::optional<InFlightStep> step = scheduleLocked();
  std::vector<StoreLoad> loads;
  loads.swap(storeLoadsToSend_);
  if (!step && loads.empty())
    return false;
  lock.unlock();
  sendStoreLoads(std::move(loads));
  if (step)
    submit(std::move(*step));
  lock.lock();
  return true;
}

bool BatchScheduler::stepOnce() {
  std::unique_lock<std::mutex> lock(mutex_);
  return submitNextLocked(lock);
}

void BatchScheduler::runUntilIdle() {
  while (stepOnce()) {
  }
}

void BatchScheduler::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    if (submitNextLocked(lock))
      continue;
    const uint64_t seen = version_;
    work_.wait(lock, [&] { return stopping_ || version_ != seen; });
  }
  quiet_.wait(lock, [&] { return quiescentLocked(); });
}

bool BatchScheduler::quiescentLocked() const {
  return inFlight_.empty() && storeLoadsInFlight_ == 0 && storeWritesInFlight_ == 0 &&
         completing_ == 0 && !delivering_;
}

void BatchScheduler::start() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (thread_.joinable())
    return;
  stopping_ = false;
  loopStarted_ = true;
  thread_ = std::thread([this] { loop(); });
}

void BatchScheduler::requestStop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    ++version_;
  }
  notifyAll();
}

void BatchScheduler::stop() {
  requestStop();
  if (thread_.joinable())
    thread_.join();
  std::lock_guard<std::mutex> lock(mutex_);
  loopStarted_ = false;
}

std::vector<DetachedRequest> BatchScheduler::detachAll(bool keepFailures) {
  std::unique_lock<std::mutex> lock(mutex_);
  quiet_.wait(lock, [&] { return quiescentLocked(); });
  std::vector<Sequence *> cancelled; // while in flight: they end here
  for (auto &[id, seq] : sequences_)
    if (seq->cancelled)
      cancelled.push_back(seq);
  for (Sequence *seq : cancelled)
    finishLocked(*seq, FinishReason::Abort, ""); // may erase its request
  std::vector<DetachedRequest> out;
  for (auto &[id, request] : requests_) {
    for (auto &seq : request->sequences) {
      if (seq->finished)
        continue;
      blocks_->release(seq->blocks);
      sequences_.erase(seq->id);
      seq->numComputed = 0;
      seq->running = false;
      seq->chunk = 0;
      if (!keepFailures)
        seq->failures = 0; // the replica failed, not the sequence
      seq->waitingForLeader = false;
      seq->storeLookedUp = false;
    }
  }
  waiting_.clear();
  running_.clear();
  for (auto &[id, request] : requests_)
    if (request->unfinished > 0)
      out.push_back(DetachedRequest(std::move(request)));
  requests_.clear();
  ++version_;
  deliver(lock);
  return out;
}

uint64_t BatchScheduler::adopt(DetachedRequest detached) {
  std::unique_lock<std::mutex> lock(mutex_);
  std::unique_ptr<Request> request = std::move(detached.state_);
  assert(request && request->unfinished > 0);
  request->id = nextRequestId_++;
  // Ahead of new arrivals: these were admitted (and streamed) earlier.
  std::vector<Sequence *> live;
  for (auto &seq : request->sequences) {
    if (seq->finished)
      continue;
    seq->id = nextSequenceId_++;
    seq->requestId = request->id;
    seq->adopted = true;
    sequences_[seq->id] = seq.get();
    live.push_back(seq.get());
  }
  waiting_.insert(waiting_.begin(), live.begin(), live.end());
  const uint64_t id = request->id;
  requests_[id] = std::move(request);
  ++version_;
  notifyAll();
  return id;
}

SchedulerStats BatchScheduler::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  SchedulerStats s;
  s.numRunning = static_cast<int32_t>(running_.size());
  s.numWaiting = static_cast<int32_t>(waiting_.size());
  s.kvUsage = blocks_->usage();
  s.prefixQueryTokens = blocks_->prefixQueryTokens();
  s.prefixHitTokens = blocks_->prefixHitTokens();
  s.numPreemptions = numPreemptions_;
  s.numStepFailures = numStepFailures_;
  s.kvStoreLoads = kvStoreLoads_;
  s.kvStoreLoadFailures = kvStoreLoadFailures_;
  s.kvStoreLoadedTokens = kvStoreLoadedTokens_;
  s.kvStoreWrittenBlocks = kvStoreWrittenBlocks_;
  s.adoptedTokensReused = adoptedTokensReused_;
  s.adoptedTokensRecomputed = adoptedTokensRecomputed_;
  for (const auto &[id, seq] : sequences_) {
    const int64_t maxTokens = requests_.at(seq->requestId)->params.maxTokens;
    s.outstandingTokens += static_cast<int64_t>(seq->tokens.size()) - seq->numComputed +
                           maxTokens - seq->numGenerated();
  }
  return s;
}

void BatchScheduler::setStepObserver(std::function<void(const StepStats &)> observer) {
  std::lock_guard<std::mutex> lock(mutex_);
  stepObserver_ = std::move(observer);
}

} // namespace llmir::serving

// The batch manager on the real in-process engine with the demo model:
// batched, cached, preempted, cancelled, retried and stopped sequences all
// give Hugging Face's greedy ids.
#include "DemoModel.h"

#include "llmir/model/Safetensors.h"
#include "llmir/serving/BatchScheduler.h"
#include "llmir/serving/OutputGrammar.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <filesystem>

#include <map>

namespace llmir::serving {
namespace {

using testing::DemoModel;

struct Outcome {
  std::vector<int32_t> ids;
  std::string text;
  std::optional<FinishReason> finish;
  std::string error; // when finish is Error
  int events = 0;
};

/// Records every choice's events.
struct Collector {
  std::map<std::pair<uint64_t, uint32_t>, Outcome> outcomes;

  EventCallback callback() {
    return [this](const SequenceEvent &e) {
      Outcome &o = outcomes[{e.requestId, e.index}];
      EXPECT_FALSE(o.finish) << "event after the finish";
      ++o.events;
      if (e.tokenId)
        o.ids.push_back(*e.tokenId);
      o.text += e.text;
      o.finish = e.finish;
      o.error = e.error;
    };
  }
  const Outcome &of(uint64_t request, uint32_t index = 0) {
    return outcomes[{request, index}];
  }
};

/// A Collector for events from other threads (a started scheduler), with a
/// bounded wait for a number of finished choices.
struct ThreadSafeCollector {
  Collector collector;
  std::mutex mutex;
  std::condition_variable cv;
  int finished = 0;

  EventCallback callback() {
    return [this, inner = collector.callback()](const SequenceEvent &e) {
      std::lock_guard<std::mutex> lock(mutex);
      inner(e);
      if (e.finish) {
        ++finished;
        cv.notify_all();
      }
    };
  }
  bool waitForFinished(int n, std::chrono::seconds limit = std::chrono::seconds(120)) {
    std::unique_lock<std::mutex> lock(mutex);
    return cv.wait_for(lock, limit, [&] { return finished >= n; });
  }
  const Outcome &of(uint64_t request) {
    std::lock_guard<std::mutex> lock(mutex);
    return collector.of(request);
  }
};

RequestParams greedy(const std::vector<int32_t> &prompt, int64_t maxTokens = 32) {
  RequestParams p;
  p.promptIds = prompt;
  p.sampling.temperature = 0.0f;
  p.maxTokens = maxTokens;
  p.ignoreEos = true;
  return p;
}

class BatchSchedulerTest : public ::testing::Test {
protected:
  void SetUp() override {
    demo = DemoModel::get();
    ASSERT_TRUE(demo);
  }
  std::unique_ptr<BatchScheduler> scheduler(InProcessBackend &backend,
                                            SchedulerOptions options = {}) {
    options.eosTokenIds = {*demo->tokenizer.eosId()};
    return std::make_unique<BatchScheduler>(backend, demo->tokenizer, options);
  }
  const DemoModel *demo = nullptr;
};

TEST_F(BatchSchedulerTest, ThirtyTwoConcurrentRequestsGiveTheReferenceIds) {
  auto backend = demo->backend(256);
  ASSERT_TRUE(backend);
  auto s = scheduler(*backend);
  int32_t largestBatch = 0;
  s->setStepObserver([&](const StepStats &stats) {
    largestBatch = std::max(largestBatch, stats.numSequences);
  });
  Collector collector;
  std::vector<std::pair<uint64_t, size_t>> requests;
  for (size_t i = 0; i < 32; ++i) {
    const auto &c = demo->cases[i % demo->cases.size()];
    requests.emplace_back(s->addRequest(greedy(c.promptIds), collector.callback()),
                          i % demo->cases.size());
  }
  s->runUntilIdle();
  EXPECT_EQ(largestBatch, 32);
  for (auto [id, caseIndex] : requests) {
    const Outcome &o = collector.of(id);
    EXPECT_EQ(o.ids, demo->cases[caseIndex].greedyIds) << "request " << id;
    EXPECT_EQ(o.finish, FinishReason::Length);
    EXPECT_EQ(o.text, *demo->tokenizer.decode(o.ids, true));
  }
  EXPECT_EQ(s->stats().kvUsage, 0.0);
  EXPECT_EQ(s->stats().numRunning + s->stats().numWaiting, 0);
}

TEST_F(BatchSchedulerTest, ChunkedPrefillUnderATinyTokenBudget) {
  auto backend = demo->backend(64);
  ASSERT_TRUE(backend);
  auto s = scheduler(*backend, {.maxNumSeqs = 3, .maxBatchTokens = 5});
  int32_t largestStep = 0;
  s->setStepObserver([&](const StepStats &stats) {
    largestStep = std::max(largestStep, stats.numTokens);
  });
  Collector collector;
  std::vector<uint64_t> ids;
  for (const auto &c : demo->cases)
    ids.push_back(s->addRequest(greedy(c.promptIds), collector.callback()));
  s->runUntilIdle();
  EXPECT_LE(largestStep, 5);
  for (size_t i = 0; i < ids.size(); ++i)
    EXPECT_EQ(collector.of(ids[i]).ids, demo->cases[i].greedyIds);
}

TEST_F(BatchSchedulerTest, RepeatedPromptHitsThePrefixCacheWithIdenticalOutput) {
  auto backend = demo->backend(64);
  ASSERT_TRUE(backend);
  auto s = scheduler(*backend);
  // Long enough for two full 16-token blocks.
  std::vector<int32_t> prompt;
  for (const auto &c : demo->cases)
    prompt.insert(prompt.end(), c.promptIds.begin(), c.promptIds.end());
  ASSERT_GT(prompt.size(), 16u);
  Collector collector;
  uint64_t first = s->addRequest(greedy(prompt, 16), collector.callback());
  s->runUntilIdle();
  EXPECT_EQ(s->stats().prefixHitTokens, 0u);
  uint64_t second = s->addRequest(greedy(prompt, 16), collector.callback());
  s->runUntilIdle();
  EXPECT_GE(s->stats().prefixHitTokens, 16u);
  EXPECT_EQ(collector.of(first).ids.size(), 16u);
  EXPECT_EQ(collector.of(second).ids, collector.of(first).ids);
}

TEST_F(BatchSchedulerTest, PreemptionUnderATinyBlockBudgetKeepsOutputs) {
  // 8 blocks of 16 tokens: four sequences of up to 43 tokens need 12.
  auto backend = demo->backend(8);
  ASSERT_TRUE(backend);
  auto s = scheduler(*backend);
  Collector collector;
  std::vector<uint64_t> ids;
  for (const auto &c : demo->cases)
    ids.push_back(s->addRequest(greedy(c.promptIds), collector.callback()));
  s->runUntilIdle();
  EXPECT_GT(s->stats().numPreemptions, 0u);
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(collector.of(ids[i]).ids, demo->cases[i].greedyIds);
    EXPECT_EQ(collector.of(ids[i]).text,
              *demo->tokenizer.decode(demo->cases[i].greedyIds, true));
  }
  EXPECT_EQ(s->stats().kvUsage, 0.0);
}

TEST_F(BatchSchedulerTest, CancellationFreesBlocksAndLeavesOthersIntact) {
  auto backend = demo->backend(64);
  ASSERT_TRUE(backend);
  auto s = scheduler(*backend, {.enablePrefixCaching = false});
  Collector collector;
  uint64_t keep = s->addRequest(greedy(demo->cases[0].promptIds), collector.callback());
  uint64_t victim = 0;
  double usageBefore = -1, usageAfter = -1;
  victim = s->addRequest(greedy(demo->cases[1].promptIds),
                         [&, inner = collector.callback()](const SequenceEvent &e) {
                           inner(e);
                           if (e.numGenerated == 3 && !e.finish) {
                             usageBefore = s->stats().kvUsage;
                             s->cancel(victim);
                             usageAfter = s->stats().kvUsage;
                           }
                         });
  s->runUntilIdle();
  EXPECT_EQ(collector.of(victim).finish, FinishReason::Abort);
  EXPECT_EQ(collector.of(victim).ids.size(), 3u);
  EXPECT_LT(usageAfter, usageBefore);
  EXPECT_EQ(collector.of(keep).ids, demo->cases[0].greedyIds);
  EXPECT_EQ(s->stats().kvUsage, 0.0);
  s->cancel(victim); // finished: ignored
}

TEST_F(BatchSchedulerTest, StopStringsStopTokenIdsAndMinTokens) {
  auto backend = demo->backend(64);
  ASSERT_TRUE(backend);
  auto s = scheduler(*backend);
  const auto &c = demo->cases[1];
  const std::string full = *demo->tokenizer.decode(c.greedyIds, true);
  const std::string stop = full.substr(12, 3);

  Collector collector;
  auto byString = greedy(c.promptIds);
  byString.stop = {stop};
  uint64_t a = s->addRequest(byString, collector.callback());

  // Stop at the first occurrence of the reference's 6th token...
  const int32_t stopId = c.greedyIds[5];
  const auto firstAt = std::find(c.greedyIds.begin(), c.greedyIds.end(), stopId) -
                       c.greedyIds.begin();
  auto byId = greedy(c.promptIds);
  byId.stopTokenIds = {stopId};
  uint64_t b = s->addRequest(byId, collector.callback());
  // ...unless min_tokens says to keep going.
  auto withMin = byId;
  withMin.minTokens = 32;
  uint64_t d = s->addRequest(withMin, collector.callback());
  s->runUntilIdle();

  EXPECT_EQ(collector.of(a).finish, FinishReason::Stop);
  EXPECT_EQ(collector.of(a).text, full.substr(0, full.find(stop)));
  EXPECT_EQ(collector.of(b).finish, FinishReason::Stop);
  EXPECT_EQ(collector.of(b).ids.size(), static_cast<size_t>(firstAt + 1));
  EXPECT_EQ(collector.of(d).finish, FinishReason::Length);
  EXPECT_EQ(collector.of(d).ids, c.greedyIds);
}

TEST_F(BatchSchedulerTest, SeveralChoicesShareThePromptBlocks) {
  auto backend = demo->backend(64);
  ASSERT_TRUE(backend);
  auto s = scheduler(*backend);
  std::vector<int32_t> prompt;
  for (const auto &c : demo->cases)
    prompt.insert(prompt.end(), c.promptIds.begin(), c.promptIds.end());
  Collector collector;
  auto params = greedy(prompt, 8);
  params.n = 3;
  uint64_t id = s->addRequest(params, collector.callback());
  s->runUntilIdle();
  EXPECT_GE(s->stats().prefixHitTokens, 2u * 16u);
  EXPECT_EQ(collector.of(id, 0).ids.size(), 8u);
  EXPECT_EQ(collector.of(id, 1).ids, collector.of(id, 0).ids);
  EXPECT_EQ(collector.of(id, 2).ids, collector.of(id, 0).ids);
}

TEST_F(BatchSchedulerTest, SeededSamplingDoesNotDependOnTheBatch) {
  auto backend = demo->backend(64);
  ASSERT_TRUE(backend);
  auto s = scheduler(*backend);
  auto sampled = greedy(demo->cases[2].promptIds, 24);
  sampled.sampling = {.temperature = 1.0f, .topP = 0.9f, .topK = 50, .seed = 1234};
  sampled.logprobs = true;
  sampled.topLogprobs = 2;
  Collector collector;
  uint64_t alone = s->addRequest(sampled, collector.callback());
  s->runUntilIdle();
  uint64_t batched = s->addRequest(sampled, collector.callback());
  for (const auto &c : demo->cases)
    s->addRequest(greedy(c.promptIds), collector.callback());
  s->runUntilIdle();
  EXPECT_EQ(collector.of(alone).ids.size(), 24u);
  EXPECT_EQ(collector.of(batched).ids, collector.of(alone).ids);
}

/// Fails every third step, as a replica that loses a worker would.
/// Fails every third step it is given. With chained decodes on a loaded
/// machine this used to end requests early: a step whose chained sequence's
/// predecessor had failed was refused whole, its other sequences recomputed
/// and the steps chained on it refused in turn, until maxStepRetries
/// (DecodeChain::fillChainedInputs now takes only the broken sequences out).
class FlakyBackend final : public ReplicaBackend {
public:
  /// Fails every `period`th step.
  explicit FlakyBackend(ReplicaBackend &inner, int period = 3) : inner_(inner), period_(period) {}
  ReplicaInfo info() const override { return inner_.info(); }
  void submit(const proto::StepRequest &request, StepDone done) override {
    if (++steps_ % period_ == 0) {
      done(Status::error("worker lost"));
      return;
    }
    inner_.submit(request, std::move(done));
  }

private:
  ReplicaBackend &inner_;
  const int period_;
  std::atomic<int> steps_{0};
};

TEST_F(BatchSchedulerTest, FailedStepsAreRecomputedWithoutLosingTokens) {
  auto backend = demo->backend(64);
  ASSERT_TRUE(backend);
  FlakyBackend flaky(*backend);
  SchedulerOptions options{.maxStepRetries = 100};
  options.eosTokenIds = {*demo->tokenizer.eosId()};
  BatchScheduler s(flaky, demo->tokenizer, options);
  Collector collector;
  std::vector<uint64_t> ids;
  for (const auto &c : demo->cases)
    ids.push_back(s.addRequest(greedy(c.promptIds), collector.callback()));
  s.runUntilIdle();
  EXPECT_GT(s.stats().numStepFailures, 0u);
  for (size_t i = 0; i < ids.size(); ++i)
    EXPECT_EQ(collector.of(ids[i]).ids, demo->cases[i].greedyIds);
}

/// Runs the inner (synchronous) backend's steps on a thread of its own, as
/// a remote replica answers: a step completes after submit() returned, on
/// another thread, so the scheduler's completing thread schedules the next
/// steps itself. Claims a pipeline of `depth` steps in flight.
///
/// With `holdFirstUntil` > 0 the first step starts only once that many are
/// queued (or after 5 s): a scheduler that keeps the pipeline full queues
/// them without waiting for a completion. A test that counts the most in
/// flight holds the first step and lets each of the first requests arrive
/// once the one before is in a step (waitForSubmits), so the count does not
/// hang on which thread the OS ran first: on a loaded host the first step
/// could finish before the loop thread queued the next, or every request
/// could arrive before the loop thread built the first step.
class ThreadedBackend final : public ReplicaBackend {
public:
  ThreadedBackend(ReplicaBackend &inner, int32_t depth, size_t holdFirstUntil = 0)
      : inner_(inner), depth_(depth), holdFirstUntil_(holdFirstUntil) {
    thread_ = std::thread([this] { run(); });
  }
  ~ThreadedBackend() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  ReplicaInfo info() const override {
    ReplicaInfo info = inner_.info();
    info.pipelineDepth = depth_;
    return info;
  }
  void submit(const proto::StepRequest &request, StepDone done) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back({request, std::move(done)});
      ++submits_;
      mostInFlight_ = std::max(mostInFlight_, queue_.size() + (running_ ? 1 : 0));
    }
    wake_.notify_all();
  }
  size_t mostInFlight() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return mostInFlight_;
  }
  /// Waits (up to 5 s) until `n` steps were submitted in all.
  bool waitForSubmits(size_t n) {
    std::unique_lock<std::mutex> lock(mutex_);
    return wake_.wait_for(lock, std::chrono::seconds(5), [&] { return submits_ >= n; });
  }

private:
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    wake_.wait_for(lock, std::chrono::seconds(5),
                   [&] { return stopping_ || queue_.size() >= holdFirstUntil_; });
    for (;;) {
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty())
        return;
      auto [request, done] = std::move(queue_.front());
      queue_.pop_front();
      running_ = true;
      lock.unlock();
      inner_.submit(request, [&, done = std::move(done)](Result<proto::StepResponse> r) mutable {
        {
          std::lock_guard<std::mutex> relock(mutex_);
          running_ = false; // done: the steps its completion submits are the next ones
        }
        done(std::move(r));
      });
      lock.lock();
    }
  }

  ReplicaBackend &inner_;
  int32_t depth_;
  size_t holdFirstUntil_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::pair<proto::StepRequest, StepDone>> queue_;
  bool running_ = false, stopping_ = false;
  size_t mostInFlight_ = 0, submits_ = 0;
  std::thread thread_;
};

// Steps completing on the replica's thread, two allowed in flight: each
// completion schedules the next steps itself (not the loop thread), and no
// request may be left waiting for a wake-up that does not come.
TEST_F(BatchSchedulerTest, StepsCompletingOnTheReplicasThreadKeepThePipelineGoing) {
  auto backend = demo->backend(128);
  ASSERT_TRUE(backend);
  ThreadedBackend threaded(*backend, 2, /*holdFirstUntil=*/2);
  SchedulerOptions options;
  options.eosTokenIds = {*demo->tokenizer.eosId()};
  options.chainDecode = false; // the pipeline's own two steps (chaining adds one)
  auto s = std::make_unique<BatchScheduler>(threaded, demo->tokenizer, options);
  ThreadSafeCollector collector;
  s->start();
  std::vector<uint64_t> ids;
  for (size_t i = 0; i < 8; ++i) {
    ids.push_back(s->addRequest(greedy(demo->cases[i % 4].promptIds), collector.callback()));
    if (i < 2) // the first two in steps of their own, while the first is held
      ASSERT_TRUE(threaded.waitForSubmits(i + 1));
    std::this_thread::sleep_for(std::chrono::milliseconds(1)); // arrivals while steps run
  }
  ASSERT_TRUE(collector.waitForFinished(8)) << collector.finished << " of 8 finished";
  s->stop();
  for (size_t i = 0; i < ids.size(); ++i)
    EXPECT_EQ(collector.of(ids[i]).ids, demo->cases[i % 4].greedyIds);
  EXPECT_EQ(threaded.mostInFlight(), 2u); // both stages kept busy, never more
}

// Chained decodes on a replica that runs its steps in order on a thread of
// its own: the next steps are always queued behind the running one (the
// chain's depth more than the pipeline's), the tokens are the reference's,
// a step chained after a sequence's last token is dropped, and every block
// comes back.
TEST_F(BatchSchedulerTest, ChainedDecodesKeepTheNextStepQueuedAndGiveTheReferenceIds) {
  for (auto [depth, chainDepth] : {std::pair{1, 1}, {2, 1}, {1, 2}, {2, 2}}) {
    SCOPED_TRACE("pipeline depth " + std::to_string(depth) + ", chain depth " +
                 std::to_string(chainDepth));
    auto backend = demo->backend(128);
    ASSERT_TRUE(backend);
    ASSERT_TRUE(backend->info().chainsDecode);
    ThreadedBackend threaded(*backend, depth, /*holdFirstUntil=*/static_cast<size_t>(depth) + 1);
    SchedulerOptions options;
    options.eosTokenIds = {*demo->tokenizer.eosId()};
    options.chainDepth = chainDepth;
    BatchScheduler s(threaded, demo->tokenizer, options);
    ThreadSafeCollector collector;
    s.start();
    std::vector<std::pair<uint64_t, size_t>> requests; // id, tokens asked
    for (size_t i = 0; i < 8; ++i) {
      // Too short to chain, to chain once, twice.
      const size_t maxTokens = i == 5 ? 1 : i == 6 ? 2 : i == 7 ? 3 : 32;
      requests.emplace_back(
          s.addRequest(greedy(demo->cases[i % 4].promptIds, static_cast<int64_t>(maxTokens)),
                       collector.callback()),
          maxTokens);
      if (i <= static_cast<size_t>(depth)) // each of the first in a step, the first held
        ASSERT_TRUE(threaded.waitForSubmits(i + 1));
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_TRUE(collector.waitForFinished(8)) << collector.finished << " of 8 finished";
    s.stop();
    for (size_t i = 0; i < requests.size(); ++i) {
      const auto &reference = demo->cases[i % 4].greedyIds;
      const size_t n = std::min(requests[i].second, reference.size());
      EXPECT_EQ(collector.of(requests[i].first).ids,
                std::vector<int32_t>(reference.begin(), reference.begin() + n))
          << "request " << i << " at depth " << depth;
    }
    EXPECT_EQ(threaded.mostInFlight(), static_cast<size_t>(depth + chainDepth));
    EXPECT_EQ(s.stats().kvUsage, 0.0);
  }
}

// Requests with penalties chain too: the worker appends the tokens it drew
// since the scheduler last heard (DecodeChain) to the output the penalties
// count, so greedy and seeded sampled requests with frequency, presence and
// repetition penalties draw, at chain depths 1 and 2, what they draw with
// chaining off.
TEST_F(BatchSchedulerTest, PenalizedRequestsChainAndDrawWhatTheyDrawUnchained) {
  const auto &c = demo->cases[0];
  std::vector<RequestParams> requests(4, greedy(c.promptIds, 24));
  requests[0].frequencyPenalty = 1.5f;
  requests[1].presencePenalty = 1.0f;
  requests[1].sampling.temperature = 0.8f;
  requests[1].sampling.seed = 3;
  requests[2].repetitionPenalty = 1.3f;
  requests[2].sampling.temperature = 0.9f;
  requests[2].sampling.topP = 0.9f;
  requests[2].sampling.seed = 4;
  requests[3].frequencyPenalty = -0.5f;
  requests[3].presencePenalty = 0.7f;
  requests[3].logitBias = {{c.greedyIds[1], -3.0f}};
  std::vector<std::vector<int32_t>> unchained;
  for (int32_t chainDepth : {0, 1, 2}) {
    SCOPED_TRACE("chain depth " + std::to_string(chainDepth));
    auto backend = demo->backend(128);
    ASSERT_TRUE(backend);
    ThreadedBackend threaded(*backend, 1);
    SchedulerOptions options;
    options.eosTokenIds = {*demo->tokenizer.eosId()};
    options.chainDecode = chainDepth > 0;
    options.chainDepth = std::max(chainDepth, 1);
    BatchScheduler s(threaded, demo->tokenizer, options);
    ThreadSafeCollector collector;
    s.start();
    std::vector<uint64_t> ids;
    for (const RequestParams &params : requests)
      ids.push_back(s.addRequest(params, collector.callback()));
    ASSERT_TRUE(collector.waitForFinished(requests.size()));
    s.stop();
    for (size_t i = 0; i < ids.size(); ++i) {
      const std::vector<int32_t> &got = collector.of(ids[i]).ids;
      EXPECT_EQ(got.size(), 24u) << "request " << i;
      if (chainDepth == 0)
        unchained.push_back(got);
      else
        EXPECT_EQ(got, unchained[i]) << "request " << i;
    }
    EXPECT_EQ(threaded.mostInFlight(), static_cast<size_t>(1 + chainDepth));
  }
  // The penalties changed what was drawn (else this compares nothing).
  EXPECT_NE(unchained[0], c.greedyIds);
}

// Cancelled from its own event while a step and the step chained on it are
// in flight: no token after the cancel, the other request untouched, and
// the blocks the chained step still wrote into come back when it returns.
TEST_F(BatchSchedulerTest, CancellingAChainedSequenceDropsItsStepsAndFreesItsBlocks) {
  for (int32_t chainDepth : {1, 2}) {
    SCOPED_TRACE("chain depth " + std::to_string(chainDepth));
    auto backend = demo->backend(128);
    ASSERT_TRUE(backend);
    ThreadedBackend threaded(*backend, 1);
    SchedulerOptions options;
    options.eosTokenIds = {*demo->tokenizer.eosId()};
    options.enablePrefixCaching = false;
    options.chainDepth = chainDepth;
    BatchScheduler s(threaded, demo->tokenizer, options);
    ThreadSafeCollector collector;
    s.start();
    const uint64_t keep = s.addRequest(greedy(demo->cases[0].promptIds), collector.callback());
    std::atomic<uint64_t> victim{0};
    victim = s.addRequest(greedy(demo->cases[1].promptIds),
                          [&, inner = collector.callback()](const SequenceEvent &e) {
                            inner(e);
                            if (e.numGenerated == 3 && !e.finish)
                              s.cancel(victim);
                          });
    ASSERT_TRUE(collector.waitForFinished(2));
    s.stop();
    EXPECT_EQ(collector.of(victim).finish, FinishReason::Abort);
    EXPECT_EQ(collector.of(victim).ids,
              std::vector<int32_t>(demo->cases[1].greedyIds.begin(),
                                   demo->cases[1].greedyIds.begin() + 3));
    EXPECT_EQ(collector.of(keep).ids, demo->cases[0].greedyIds);
    EXPECT_EQ(threaded.mostInFlight(), static_cast<size_t>(1 + chainDepth));
    EXPECT_EQ(s.stats().kvUsage, 0.0);
  }
}

// A chained step whose predecessor failed is dropped, in both orders: the
// replica fails a step and the chained one after it finds no token (the
// failure in order, as a worker answers), or a step fails at submit before
// the one it chains on returned (a send failure). Nothing is lost.
TEST_F(BatchSchedulerTest, ChainedDecodesAfterAFailedStepAreDroppedAndRecomputed) {
  for (auto [failAtSubmit, chainDepth] : {std::pair{false, 1}, {true, 1}, {false, 2}, {true, 2}}) {
    SCOPED_TRACE("chain depth " + std::to_string(chainDepth));
    auto backend = demo->backend(128);
    ASSERT_TRUE(backend);
    // Not every (chainDepth + 1)th step: a step that recomputes after a
    // failure and the steps chained on it would always hold the next.
    const int period = chainDepth + 2;
    std::unique_ptr<ReplicaBackend> below, top;
    if (failAtSubmit) {
      below = std::make_unique<ThreadedBackend>(*backend, 1);
      top = std::make_unique<FlakyBackend>(*below, period);
    } else {
      below = std::make_unique<FlakyBackend>(*backend, period);
      top = std::make_unique<ThreadedBackend>(*below, 1);
    }
    SchedulerOptions options{.maxStepRetries = 100};
    options.eosTokenIds = {*demo->tokenizer.eosId()};
    options.chainDepth = chainDepth;
    BatchScheduler s(*top, demo->tokenizer, options);
    ThreadSafeCollector collector;
    s.start();
    std::vector<uint64_t> ids;
    for (const auto &c : demo->cases)
      ids.push_back(s.addRequest(greedy(c.promptIds), collector.callback()));
    ASSERT_TRUE(collector.waitForFinished(static_cast<int>(ids.size())));
    s.stop();
    EXPECT_GT(s.stats().numStepFailures, 0u);
    for (size_t i = 0; i < ids.size(); ++i) {
      const Outcome &outcome = collector.of(ids[i]);
      EXPECT_EQ(outcome.ids, demo->cases[i].greedyIds)
          << "request " << i << (failAtSubmit ? ", failing at submit" : ", failing in order")
          << ", finished: " << (outcome.finish ? finishReasonName(*outcome.finish) : "no")
          << " " << outcome.error << ", text: " << outcome.text;
    }
    EXPECT_EQ(s.stats().kvUsage, 0.0);
  }
}

TEST_F(BatchSchedulerTest, BackgroundThreadServesConcurrentSubmitters) {
  auto backend = demo->backend(128);
  ASSERT_TRUE(backend);
  auto s = scheduler(*backend);
  ThreadSafeCollector collector;
  s->start();
  std::vector<uint64_t> ids(8);
  std::vector<std::thread> clients;
  for (size_t i = 0; i < ids.size(); ++i)
    clients.emplace_back([&, i] {
      ids[i] = s->addRequest(greedy(demo->cases[i % 4].promptIds), collector.callback());
    });
  for (auto &t : clients)
    t.join();
  ASSERT_TRUE(collector.waitForFinished(8)) << collector.finished << " of 8 finished";
  s->stop();
  for (size_t i = 0; i < ids.size(); ++i)
    EXPECT_EQ(collector.of(ids[i]).ids, demo->cases[i % 4].greedyIds);
}

} // namespace
} // namespace llmir::serving

namespace llmir::serving {
namespace {

/// log_softmax of Hugging Face's logits (reference_logits.safetensors) at
/// row `row` of prompt `i`, for token `id`.
struct ReferenceLogits {
  static std::optional<ReferenceLogits> load(const std::string &dir = testing::kDemoDir) {
    auto file = model::SafetensorsFile::open(dir + "/reference_logits.safetensors");
    EXPECT_TRUE(file.isOk()) << file.message();
    if (!file)
      return std::nullopt;
    ReferenceLogits out;
    for (size_t i = 0;; ++i) {
      const auto *info = file->find("prompt" + std::to_string(i) + ".logits");
      if (!info)
        break;
      auto values = file->readAsF32(info->name);
      EXPECT_TRUE(values.isOk());
      out.vocab = info->shape[1];
      out.rows.push_back(std::move(*values));
    }
    return out;
  }
  double logprob(size_t prompt, size_t row, int32_t id) const {
    const float *r = rows[prompt].data() + row * static_cast<size_t>(vocab);
    double maxLogit = *std::max_element(r, r + vocab), sum = 0;
    for (int64_t v = 0; v < vocab; ++v)
      sum += std::exp(double(r[v]) - maxLogit);
    return double(r[id]) - maxLogit - std::log(sum);
  }
  int32_t argmax(size_t prompt, size_t row) const {
    const float *r = rows[prompt].data() + row * static_cast<size_t>(vocab);
    return static_cast<int32_t>(std::max_element(r, r + vocab) - r);
  }
  std::vector<std::vector<float>> rows;
  int64_t vocab = 0;
};

TEST_F(BatchSchedulerTest, PromptLogprobsEqualTheReferenceUnderChunkedPrefill) {
  auto reference = ReferenceLogits::load();
  ASSERT_TRUE(reference);
  ASSERT_EQ(reference->rows.size(), demo->cases.size());
  for (int32_t budget : {512, 3}) { // whole prompts, then chunks of 3 tokens
    SCOPED_TRACE("maxBatchTokens " + std::to_string(budget));
    auto backend = demo->backend(64);
    ASSERT_TRUE(backend);
    auto s = scheduler(*backend, {.maxNumSeqs = 4, .maxBatchTokens = budget});
    std::map<uint64_t, SequenceEvent> first;
    std::map<uint64_t, std::vector<int32_t>> generated;
    std::vector<uint64_t> ids;
    for (const auto &c : demo->cases) {
      RequestParams p = greedy(c.promptIds, 0); // max_tokens 0: the prompt alone
      p.promptLogprobs = true;
      p.logprobs = true;
      p.topLogprobs = 2;
      // Twice: once scored alone, once generating after the prompt.
      for (int64_t maxTokens : {0, 2}) {
        p.maxTokens = maxTokens;
        ids.push_back(s->addRequest(p, [&, id = ids.size()](const SequenceEvent &e) {
          if (!first.count(id))
            first[id] = e;
          if (e.tokenId)
            generated[id].push_back(*e.tokenId);
        }));
      }
    }
    s->runUntilIdle();
    for (size_t k = 0; k < ids.size(); ++k) {
      const size_t i = k / 2;
      const auto &prompt = demo->cases[i].promptIds;
      const SequenceEvent &e = first[k];
      ASSERT_EQ(e.promptLogprobs.size(), prompt.size() - 1);
      ASSERT_EQ(e.promptTopLogprobs.size(), prompt.size() - 1);
      for (size_t j = 1; j < prompt.size(); ++j) {
        // demo-llama-4m's reference logits carry up to 3.4e-4 of relative
        // error after the first row (HfReferenceTest says why): up to 7e-3
        // on a logprob of -14, 1.3e-3 on one of -1. The fixtures' test below
        // holds 1e-4.
        const double want = reference->logprob(i, j - 1, prompt[j]);
        EXPECT_NEAR(e.promptLogprobs[j - 1], want, 2e-3 * std::max(1.0, std::abs(want)));
        ASSERT_EQ(e.promptTopLogprobs[j - 1].size(), 2u);
        EXPECT_EQ(e.promptTopLogprobs[j - 1][0].tokenId, reference->argmax(i, j - 1));
      }
      if (k % 2 == 0) {
        EXPECT_EQ(generated[k].size(), 0u) << "max_tokens 0 generates nothing";
        EXPECT_EQ(e.finish, FinishReason::Length);
      } else {
        EXPECT_EQ(generated[k], std::vector<int32_t>(demo->cases[i].greedyIds.begin(),
                                                     demo->cases[i].greedyIds.begin() + 2));
      }
    }
  }
}

// The tiny fixtures of ../shared (float32, a 1e-4 contract with
// transformers): every prompt's logprobs within 1e-4 of the reference
// logits' log-softmax, in one batch, under chunked prefill. Their vocabulary
// is a prefix of the demo tokenizer's ids, which only names tokens here.
TEST_F(BatchSchedulerTest, PromptLogprobsOfTheFixturesWithin1e4) {
  for (const char *name : {"tiny-llama-gqa", "tiny-llama-mha"}) {
    SCOPED_TRACE(name);
    const std::string dir = std::string(LLMIR_FIXTURES_DIR) + "/" + name;
    if (!std::filesystem::exists(dir + "/reference_logits.safetensors"))
      GTEST_SKIP() << dir << " not found (../shared absent)";
    auto compiled = compiler::compileHuggingFace(dir, {});
    ASSERT_TRUE(compiled.isOk()) << compiled.message();
    auto checkpoint = model::Checkpoint::open(dir);
    ASSERT_TRUE(checkpoint.isOk()) << checkpoint.message();
    auto backend = InProcessBackend::create(compiled->programs.at(0),
                                            engine::checkpointWeights(*checkpoint),
                                            {.numKvBlocks = 128, .numThreads = 2});
    ASSERT_TRUE(backend.isOk()) << backend.message();
    auto reference = ReferenceLogits::load(dir);
    ASSERT_TRUE(reference);
    std::ifstream in(dir + "/reference.json");
    std::stringstream text;
    text << in.rdbuf();
    const auto cases = boost::json::parse(text.str()).at("cases").as_array();
    auto s = std::make_unique<BatchScheduler>(**backend, demo->tokenizer,
                                              SchedulerOptions{.maxNumSeqs = 8, .maxBatchTokens = 48});
    std::vector<std::vector<int32_t>> prompts;
    std::map<size_t, SequenceEvent> first;
    for (const auto &c : cases) {
      std::vector<int32_t> ids;
      for (const auto &id : c.at("prompt_ids").as_array())
        ids.push_back(id.to_number<int32_t>());
      RequestParams p = greedy(ids, 0);
      p.promptLogprobs = true;
      p.logprobs = true;
      s->addRequest(p, [&, k = prompts.size()](const SequenceEvent &e) {
        if (!first.count(k))
          first[k] = e;
      });
      prompts.push_back(std::move(ids));
    }
    s->runUntilIdle();
    ASSERT_EQ(reference->rows.size(), prompts.size());
    double worst = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      ASSERT_EQ(first[i].promptLogprobs.size(), prompts[i].size() - 1);
      for (size_t j = 1; j < prompts[i].size(); ++j)
        worst = std::max(worst, std::abs(first[i].promptLogprobs[j - 1] -
                                         reference->logprob(i, j - 1, prompts[i][j])));
    }
    EXPECT_LT(worst, 1e-4);
  }
}

TEST_F(BatchSchedulerTest, LogitBiasAndPenaltiesSteerGreedyDecoding) {
  auto backend = demo->backend(64);
  ASSERT_TRUE(backend);
  auto s = scheduler(*backend);
  const auto &c = demo->cases[0];
  Collector collector;
  RequestParams forced = greedy(c.promptIds, 6);
  forced.logitBias = {{42, 100.0f}};
  const uint64_t a = s->addRequest(forced, collector.callback());
  RequestParams banned = greedy(c.promptIds, 6);
  banned.logitBias = {{c.greedyIds[0], -100.0f}};
  const uint64_t b = s->addRequest(banned, collector.callback());
  // The reference output repeats tokens; a strong repetition penalty makes
  // greedy decoding avoid them.
  RequestParams frequency = greedy(c.promptIds, 32);
  frequency.frequencyPenalty = 2.0f;
  const uint64_t f = s->addRequest(frequency, collector.callback());
  RequestParams repetition = greedy(c.promptIds, 32);
  repetition.repetitionPenalty = 10.0f;
  const uint64_t r = s->addRequest(repetition, collector.callback());
  RequestParams neutral = greedy(c.promptIds, 32);
  neutral.presencePenalty = 0.0f;
  neutral.repetitionPenalty = 1.0f;
  const uint64_t n = s->addRequest(neutral, collector.callback());
  s->runUntilIdle();
  EXPECT_EQ(collector.of(a).ids, std::vector<int32_t>(6, 42));
  ASSERT_FALSE(collector.of(b).ids.empty());
  EXPECT_NE(collector.of(b).ids[0], c.greedyIds[0]);
  EXPECT_EQ(collector.of(n).ids, c.greedyIds);
  auto repeats = [](const std::vector<int32_t> &ids) {
    std::map<int32_t, int> counts;
    int repeated = 0;
    for (int32_t id : ids)
      repeated += counts[id]++ > 0;
    return repeated;
  };
  ASSERT_GT(repeats(c.greedyIds), 0) << "the reference output repeats tokens";
  EXPECT_LT(repeats(collector.of(r).ids), repeats(c.greedyIds))
      << ::testing::PrintToString(collector.of(r).ids);
  // (The trained model's margins exceed a frequency penalty of 2 here:
  // StepSamplingTest checks the arithmetic; this checks it runs.)
  EXPECT_EQ(collector.of(f).ids.size(), 32u);
  // Repetition penalty 10 also discourages the prompt's tokens.
  for (int32_t id : collector.of(r).ids)
    EXPECT_EQ(std::count(c.promptIds.begin(), c.promptIds.end(), id) > 0 &&
                  std::count(collector.of(r).ids.begin(), collector.of(r).ids.end(), id) > 3,
              false);
}

} // namespace
} // namespace llmir::serving

namespace llmir::serving {
namespace {

TEST_F(BatchSchedulerTest, StructuredOutputAlwaysParsesAndValidates) {
  auto backend = demo->backend(256);
  ASSERT_TRUE(backend);
  auto s = scheduler(*backend);
  auto grammar = OutputGrammar::jsonSchema(boost::json::parse(R"({"type": "object", "properties": {
      "name": {"type": "string", "maxLength": 10},
      "age": {"type": "integer"},
      "color": {"enum": ["red", "green", "blue"]},
      "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3}}})"));
  ASSERT_TRUE(grammar.isOk()) << grammar.message();
  Collector collector;
  std::vector<uint64_t> ids;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    RequestParams p = greedy(demo->cases[seed % demo->cases.size()].promptIds, 200);
    p.sampling.temperature = 1.0f;
    p.sampling.seed = seed;
    p.ignoreEos = false;
    p.grammar = *grammar;
    ids.push_back(s->addRequest(p, collector.callback()));
  }
  s->runUntilIdle();
  for (uint64_t id : ids) {
    const Outcome &o = collector.of(id);
    SCOPED_TRACE(o.text);
    EXPECT_EQ(o.finish, FinishReason::Stop);
    boost::system::error_code ec;
    boost::json::value v = boost::json::parse(o.text, ec);
    ASSERT_FALSE(ec) << "the output parses";
    const auto &obj = v.as_object();
    ASSERT_EQ(obj.size(), 4u);
    EXPECT_LE(obj.at("name").as_string().size(), 10u * 4);
    EXPECT_TRUE(obj.at("age").is_int64() || obj.at("age").is_uint64());
    const std::string color(obj.at("color").as_string());
    EXPECT_TRUE(color == "red" || color == "green" || color == "blue");
    EXPECT_LE(obj.at("tags").as_array().size(), 3u);
  }
}

} // namespace
} // namespace llmir::serving

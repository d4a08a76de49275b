// The replica router on real in-process replicas of the demo model: a lost
// replica's requests continue elsewhere with unchanged greedy ids, a drain
// hands back leftovers, no replica fails after the wait; RemoteBackend
// merges every rank's answer.
#include "DemoModel.h"

#include "llmir/serving/RemoteBackend.h"
#include "llmir/serving/ReplicaRouter.h"

#include <gtest/gtest.h>

#include <condition_variable>

namespace llmir::serving {
namespace {

using testing::DemoModel;
using namespace std::chrono_literals;

/// Collects every request's tokens and end.
struct Collector {
  std::mutex mutex;
  std::condition_variable cv;
  std::map<uint64_t, std::vector<int32_t>> tokens;
  std::map<uint64_t, FinishReason> finished;
  std::map<uint64_t, std::string> errors;
  int64_t total = 0;

  EventCallback callback() {
    return [this](const SequenceEvent &e) {
      std::lock_guard<std::mutex> lock(mutex);
      if (e.tokenId) {
        tokens[e.requestId].push_back(*e.tokenId);
        ++total;
      }
      if (e.finish) {
        finished[e.requestId] = *e.finish;
        errors[e.requestId] = e.error;
      }
      cv.notify_all();
    };
  }
  bool waitFor(const std::function<bool()> &done) {
    std::unique_lock<std::mutex> lock(mutex);
    return cv.wait_for(lock, 120s, done);
  }
};

RouterOptions options() {
  RouterOptions o;
  o.scheduler.maxModelLen = 256;
  o.scheduler.eosTokenIds = {};
  o.vocabSize = 256;
  o.noReplicaTimeout = 300ms;
  return o;
}

RequestParams greedy(const std::vector<int32_t> &prompt) {
  RequestParams p;
  p.promptIds = prompt;
  p.maxTokens = 32;
  p.ignoreEos = true;
  p.sampling.temperature = 0;
  return p;
}

TEST(ReplicaRouterTest, LostReplicaRequestsContinueElsewhereWithTheReferenceIds) {
  const DemoModel *model = DemoModel::get();
  ASSERT_NE(model, nullptr);
  RouterOptions o = options();
  o.vocabSize = static_cast<int32_t>(model->program.vocab_size());
  o.policy = BalancePolicy::RoundRobin; // both replicas get work
  ReplicaRouter router(model->tokenizer, o);
  router.addReplica("a", std::shared_ptr<ReplicaBackend>(model->backend(256)));
  router.addReplica("b", std::shared_ptr<ReplicaBackend>(model->backend(256)));
  router.sync();
  Collector out;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 8; ++i)
    ids.push_back(router.addRequest(greedy(model->cases[i % model->cases.size()].promptIds),
                                    out.callback()));
  ASSERT_TRUE(out.waitFor([&] { return out.total >= 40; }));
  router.removeReplica("a", [] {});
  router.sync();
  ASSERT_TRUE(out.waitFor([&] { return out.finished.size() == ids.size(); }));
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(out.finished[ids[i]], FinishReason::Length) << out.errors[ids[i]];
    EXPECT_EQ(out.tokens[ids[i]], model->cases[i % model->cases.size()].greedyIds) << i;
  }
  const RouterStats stats = router.routerStats();
  EXPECT_EQ(stats.replicaFailures, 1u);
  ASSERT_EQ(stats.replicas.size(), 1u);
  EXPECT_EQ(stats.replicas[0].id, "b");
}

TEST(ReplicaRouterTest, DrainHandsBackLeftoversAndNoReplicaFailsAfterTheWait) {
  const DemoModel *model = DemoModel::get();
  ASSERT_NE(model, nullptr);
  RouterOptions o = options();
  o.vocabSize = static_cast<int32_t>(model->program.vocab_size());
  ReplicaRouter router(model->tokenizer, o);
  router.addReplica("a", std::shared_ptr<ReplicaBackend>(model->backend(256)));
  router.sync();
  Collector out;
  const uint64_t id = router.addRequest(greedy(model->cases[0].promptIds), out.callback());
  ASSERT_TRUE(out.waitFor([&] { return out.total >= 4; }));
  bool drained = false; // guarded by out.mutex
  router.drainReplica("a", 0ms, [&] { // no grace: hand back at once
    std::lock_guard<std::mutex> lock(out.mutex);
    drained = true;
    out.cv.notify_all();
  });
  router.sync();
  // The request may also finish on "a" before the drain is processed, so its
  // end and the drain's completion come in either order.
  ASSERT_TRUE(out.waitFor([&] { return out.finished.count(id) > 0 && drained; }));
  EXPECT_FALSE(router.waitForReplica(0ms));
  if (out.finished[id] == FinishReason::Error) // handed back, no replica came
    EXPECT_NE(out.errors[id].find("no replica"), std::string::npos) << out.errors[id];
  EXPECT_EQ(router.routerStats().replicaDrains, 1u);

  // A new replica takes requests that wait for one.
  const uint64_t late = router.addRequest(greedy(model->cases[1].promptIds), out.callback());
  router.addReplica("b", std::shared_ptr<ReplicaBackend>(model->backend(256)));
  ASSERT_TRUE(out.waitFor([&] { return out.finished.count(late) > 0; }));
  EXPECT_EQ(out.tokens[late], model->cases[1].greedyIds);
}

TEST(RemoteBackendTest, CompletesWhenEveryRankAnsweredAndFailsOnRequest) {
  std::vector<std::pair<uint32_t, uint64_t>> sent;
  RemoteBackend backend({16, 16, 100, 1}, 2, [&](uint32_t rank, const proto::StepRequest &r) {
    sent.emplace_back(rank, r.step_id());
    return Status::ok();
  });
  std::optional<Result<proto::StepResponse>> done;
  proto::StepRequest request;
  request.set_step_id(7);
  backend.submit(request, [&](Result<proto::StepResponse> r) { done = std::move(r); });
  ASSERT_EQ(sent.size(), 2u);
  proto::StepResponse deciding;
  deciding.set_step_id(7);
  deciding.set_ok(true);
  deciding.add_tokens()->set_token_id(42);
  deciding.add_prompt_logprobs()->add_logprobs(-1.5f);
  backend.onResponse(0, deciding);
  EXPECT_FALSE(done.has_value()) << "waits for every rank";
  // Issue 14: rank 0 answering twice (or a rank outside the replica) must not
  // stand in for rank 1.
  backend.onResponse(0, deciding);
  backend.onResponse(2, deciding);
  EXPECT_FALSE(done.has_value()) << "a repeated rank is not another rank";
  proto::StepResponse other;
  other.set_step_id(7);
  other.set_ok(true);
  backend.onResponse(1, other);
  ASSERT_TRUE(done.has_value());
  ASSERT_TRUE(done->isOk());
  ASSERT_EQ((*done)->tokens_size(), 1);
  EXPECT_EQ((*done)->tokens(0).token_id(), 42);
  ASSERT_EQ((*done)->prompt_logprobs_size(), 1) << "prompt logprobs (echo) come through";
  EXPECT_EQ((*done)->prompt_logprobs(0).logprobs(0), -1.5f);

  done.reset();
  request.set_step_id(8);
  backend.submit(request, [&](Result<proto::StepResponse> r) { done = std::move(r); });
  backend.fail("rank 1 lost");
  ASSERT_TRUE(done.has_value());
  EXPECT_FALSE(done->isOk());
  done.reset();
  backend.submit(request, [&](Result<proto::StepResponse> r) { done = std::move(r); });
  ASSERT_TRUE(done.has_value() && !done->isOk()) << "a failed replica fails new steps at once";
}

// A step whose ranks answer differently (one failed, another did not; or
// different errors) is reported once, after the step's own failure; ranks
// failing alike (the same error) are not. The step's error names the first
// rank that failed ("rank N: ", added here: workers send the bare error).
TEST(RemoteBackendTest, RanksThatDisagreeOnAStepAreReportedAfterItFails) {
  std::vector<std::string> reported;
  std::vector<std::string> order;
  RemoteBackend backend(
      {16, 16, 100, 1}, 2, [](uint32_t, const proto::StepRequest &) { return Status::ok(); }, {},
      [&](const std::string &why) {
        reported.push_back(why);
        order.push_back("reported");
      });
  const auto answer = [](uint64_t step, bool ok, const std::string &error) {
    proto::StepResponse r;
    r.set_step_id(step);
    r.set_ok(ok);
    r.set_error(error);
    return r;
  };
  const auto run = [&](uint64_t step, const proto::StepResponse &a, const proto::StepResponse &b) {
    proto::StepRequest request;
    request.set_step_id(step);
    std::optional<Result<proto::StepResponse>> done;
    backend.submit(request, [&](Result<proto::StepResponse> r) {
      done = std::move(r);
      order.push_back("done");
    });
    backend.onResponse(0, a);
    backend.onResponse(1, b);
    EXPECT_TRUE(done.has_value());
    return done.has_value() && done->isOk();
  };
  // One ok, one failed: the step fails, then the disagreement is reported.
  EXPECT_FALSE(run(1, answer(1, true, ""), answer(1, false, "out of memory")));
  ASSERT_EQ(reported.size(), 1u);
  EXPECT_NE(reported[0].find("rank 1: out of memory"), std::string::npos) << reported[0];
  EXPECT_EQ(order, (std::vector<std::string>{"done", "reported"}));
  // Failed alike on both ranks: the collectives stay paired.
  EXPECT_FALSE(run(2, answer(2, false, "token id 9 past the vocabulary"),
                   answer(2, false, "token id 9 past the vocabulary")));
  EXPECT_EQ(reported.size(), 1u);
  // Failed differently: one stopped, the other waited its collective out.
  EXPECT_FALSE(run(3, answer(3, false, "cannot allocate"),
                   answer(3, false, "all-reduce timed out")));
  EXPECT_EQ(reported.size(), 2u);
  // Both ok: nothing.
  EXPECT_TRUE(run(4, answer(4, true, ""), answer(4, true, "")));
  EXPECT_EQ(reported.size(), 2u);
}

} // namespace
} // namespace llmir::serving

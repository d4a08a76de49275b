// One shard worker's rank (libs/shardworker) as the mesh drives it: an
// AssignRank names the plan on a compiler endpoint (here an HTTP server on
// loopback serving the demo model's real compiled programs) and the
// replica's rendezvous store; then prefill and decode steps must give
// Hugging Face's greedy ids. A plan that cannot be fetched, or a program for
// another rank, is a RankReady with the reason, and the worker can be set up
// again afterwards.
#include "../serving/DemoModel.h"

#include "llmir/compiler/Compile.h"
#include "llmir/net/Http.h"
#include "llmir/runtime/RendezvousStore.h"
#include "llmir/shardworker/ShardWorker.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <thread>
#include <vector>

namespace llmir::shard_worker {
namespace {

using serving::testing::DemoModel;
using serving::testing::kDemoDir;

constexpr int32_t kBlockSize = 16; // the compile's default

class ShardWorkerTest : public ::testing::Test {
protected:
  void SetUp() override {
    demo = DemoModel::get();
    ASSERT_TRUE(demo);
    // What the compiler service would answer: plan "tp1" (one rank) and
    // "tp2" (two), each rank's program as protobuf bytes.
    for (int tp : {1, 2}) {
      auto compiled = compiler::compileHuggingFace(kDemoDir, {.tp = tp});
      ASSERT_TRUE(compiled.isOk()) << compiled.message();
      for (size_t rank = 0; rank < compiled->programs.size(); ++rank)
        programs["/v1/plans/tp" + std::to_string(tp) + "/ranks/" +
                 std::to_string(rank)] =
            compiled->programs[rank].SerializeAsString();
    }
    compilerEndpoint.routePrefix(
        "GET", "/v1/plans/", [this](const net::HttpRequest &r) {
          auto it = programs.find(r.path);
          if (it == programs.end())
            return net::HttpResponse::error(404, "no plan at " + r.path);
          net::HttpResponse res;
          res.contentType = "application/x-protobuf";
          res.body = it->second;
          return res;
        });
    ASSERT_TRUE(compilerEndpoint.start({.port = 0}).isOk());
    auto started = runtime::RendezvousServer::start("127.0.0.1", 0);
    ASSERT_TRUE(started.isOk()) << started.message();
    store = std::move(*started);
  }

  proto::AssignRank assign(const std::string &planId,
                           const std::string &replica) const {
    proto::AssignRank a;
    a.set_replica_id(replica);
    a.set_rank(0);
    a.set_world_size(1);
    a.set_plan_id(planId);
    a.set_compiler_url("http://127.0.0.1:" +
                       std::to_string(compilerEndpoint.port()));
    a.set_store_host("127.0.0.1");
    a.set_store_port(store->port());
    a.set_store_prefix("test/" + replica);
    a.set_model_dir(kDemoDir);
    a.set_num_kv_blocks(64);
    return a;
  }

  static ShardWorkerOptions options() {
    ShardWorkerOptions o;
    o.threads = 2;
    o.collectiveTimeout = std::chrono::seconds(10);
    o.fetchTimeout = std::chrono::seconds(10);
    return o;
  }

  // Step `step` (id step + 1) of greedy sequence 7: `tokens` from
  // `position`, or, with none, a chained input (the token the step before
  // sampled); blocks for `length` tokens.
  static proto::StepRequest greedyStep(int step, const std::vector<int32_t> &tokens,
                                       int32_t position, int32_t length) {
    proto::StepRequest request;
    request.set_step_id(static_cast<uint64_t>(step + 1));
    proto::StepSequence *seq = request.add_sequences();
    seq->set_sequence_id(7);
    for (int32_t id : tokens)
      seq->add_token_ids(id);
    seq->set_chained_input(tokens.empty());
    seq->set_start_position(position);
    for (int32_t b = 0; b * kBlockSize < length; ++b)
      seq->add_block_table(b);
    seq->set_sample(true);
    seq->mutable_sampling()->set_temperature(0.0f);
    seq->mutable_sampling()->set_top_p(1.0f);
    return request;
  }

  // One greedy sequence of reference case `c`: its prompt, then `decodes`
  // single-token steps, each fed the token the step before sampled.
  std::vector<int32_t> generate(ShardWorker &worker, size_t c, int decodes) {
    const auto &prompt = demo->cases[c].promptIds;
    const int32_t length = static_cast<int32_t>(prompt.size()) + decodes + 1;
    std::vector<int32_t> out;
    int32_t position = 0;
    std::vector<int32_t> feed = prompt;
    for (int step = 0; step <= decodes; ++step) {
      const proto::StepRequest request = greedyStep(step, feed, position, length);
      proto::StepResponse response = worker.step(request);
      EXPECT_TRUE(response.ok()) << response.error();
      EXPECT_EQ(response.step_id(), request.step_id());
      if (!response.ok() || response.tokens_size() != 1)
        break;
      EXPECT_EQ(response.tokens(0).sequence_id(), 7u);
      out.push_back(response.tokens(0).token_id());
      position += static_cast<int32_t>(feed.size());
      feed = {out.back()};
    }
    return out;
  }

  const DemoModel *demo = nullptr;
  std::map<std::string, std::string> programs; // by request path
  net::HttpServer compilerEndpoint;
  std::unique_ptr<runtime::RendezvousServer> store;
};

TEST_F(ShardWorkerTest, AStepBeforeAnyAssignmentFailsWithTheReason) {
  ShardWorker worker(options(), {});
  proto::StepRequest request;
  request.set_step_id(3);
  proto::StepResponse response = worker.step(request);
  EXPECT_FALSE(response.ok());
  EXPECT_EQ(response.step_id(), 3u);
  EXPECT_NE(response.error().find("no rank assigned"), std::string::npos)
      << response.error();
  EXPECT_FALSE(worker.ready());
}

TEST_F(ShardWorkerTest, AnAssignedRankGivesTheReferenceGreedyIds) {
  int steps = 0;
  ShardWorker worker(options(),
                     {.stepSeconds = [&](const char *, double) { ++steps; }});
  proto::RankReady ready = worker.setUp(assign("tp1", "r1"));
  ASSERT_TRUE(ready.ok()) << ready.error();
  EXPECT_EQ(ready.replica_id(), "r1");
  EXPECT_TRUE(worker.ready());
  EXPECT_GT(ready.loaded_bytes(), 0u);
  EXPECT_EQ(ready.loaded_bytes(), worker.loadedBytes());
  const auto &reference = demo->cases[0].greedyIds;
  EXPECT_EQ(generate(worker, 0, 7),
            std::vector<int32_t>(reference.begin(), reference.begin() + 8));
  EXPECT_EQ(steps, 8) << "every step observed";
}

// worker.pipeline-decodes: the greedy decodes launched behind the running
// one give the reference ids; auto leaves a CPU executor (it runs a step at
// its launch) on the synchronous path.
TEST_F(ShardWorkerTest, PipelinedDecodesGiveTheReferenceIdsAndAutoLeavesTheCpuSynchronous) {
  const auto &prompt = demo->cases[0].promptIds;
  const auto &reference = demo->cases[0].greedyIds;
  const int32_t length = static_cast<int32_t>(prompt.size()) + 8;
  for (auto mode : {ShardWorkerOptions::PipelineDecodes::On, ShardWorkerOptions::PipelineDecodes::Auto}) {
    SCOPED_TRACE(mode == ShardWorkerOptions::PipelineDecodes::On ? "on" : "auto");
    ShardWorkerOptions o = options();
    o.pipelineDecodes = mode;
    int decodesObserved = 0;
    ShardWorker worker(o, {.stepSeconds = [&](const char *phase, double) {
                             decodesObserved += std::string(phase) == "decode";
                           }});
    ASSERT_TRUE(worker.setUp(assign("tp1", "pipelined")).ok());
    proto::StepResponse first = worker.step(greedyStep(0, prompt, 0, length));
    ASSERT_TRUE(first.ok()) << first.error();
    ASSERT_EQ(first.tokens_size(), 1);
    std::vector<int32_t> ids = {first.tokens(0).token_id()};
    // Decode 1 carries its token, decode 2 is chained behind it.
    const int32_t position = static_cast<int32_t>(prompt.size());
    const proto::StepRequest one = greedyStep(1, {ids[0]}, position, length);
    const proto::StepRequest two = greedyStep(2, {}, position + 1, length);
    if (mode == ShardWorkerOptions::PipelineDecodes::Auto) {
      EXPECT_FALSE(worker.launchStep(one)) << "a CPU executor runs a step at its launch";
      continue;
    }
    ASSERT_TRUE(worker.launchStep(one));
    ASSERT_TRUE(worker.launchStepBehind(two));
    for (uint64_t id : {2u, 3u}) {
      proto::StepResponse answer = worker.finishStep();
      ASSERT_TRUE(answer.ok()) << answer.error();
      EXPECT_EQ(answer.step_id(), id);
      EXPECT_GT(answer.step_seconds(), 0.0);
      ASSERT_EQ(answer.tokens_size(), 1);
      ids.push_back(answer.tokens(0).token_id());
    }
    EXPECT_EQ(ids, std::vector<int32_t>(reference.begin(), reference.begin() + 3));
    EXPECT_EQ(decodesObserved, 2);
  }
}

// Auto pipelines on an executor that launches ahead of the device, behind a
// scheduler that keeps two chained decodes queued, or behind one that keeps
// one when the decodes are long enough to hide its round trip; On always,
// Off never.
TEST(PipelinesNextDecode, AutoNeedsAnExecutorAheadAndTwoChainedOrALongEnoughDecode) {
  ShardWorkerOptions o;
  EXPECT_EQ(o.pipelineDecodes, ShardWorkerOptions::PipelineDecodes::Auto) << "the default";
  o.pipelineMinStepSeconds = 250e-6;
  EXPECT_FALSE(pipelinesNextDecode(o, true, 1, 0.0)) << "no decode timed yet";
  EXPECT_FALSE(pipelinesNextDecode(o, true, 1, 103e-6)) << "the demo model's step on an H200";
  EXPECT_TRUE(pipelinesNextDecode(o, true, 1, 250e-6));
  EXPECT_TRUE(pipelinesNextDecode(o, true, 1, 950e-6)) << "the 1.1B shape's";
  EXPECT_FALSE(pipelinesNextDecode(o, true, 0, 103e-6)) << "a scheduler that does not chain";
  EXPECT_TRUE(pipelinesNextDecode(o, true, 2, 0.0)) << "two chained: always fed";
  EXPECT_TRUE(pipelinesNextDecode(o, true, 2, 103e-6));
  EXPECT_FALSE(pipelinesNextDecode(o, false, 2, 950e-6)) << "a CPU executor";
  for (bool ahead : {false, true})
    for (uint32_t depth : {0u, 1u, 2u})
      for (double seconds : {0.0, 1e-4, 1e-3}) {
        o.pipelineDecodes = ShardWorkerOptions::PipelineDecodes::On;
        EXPECT_TRUE(pipelinesNextDecode(o, ahead, depth, seconds));
        o.pipelineDecodes = ShardWorkerOptions::PipelineDecodes::Off;
        EXPECT_FALSE(pipelinesNextDecode(o, ahead, depth, seconds));
      }
}

TEST(ParsePipelineDecodes, TakesTheThreeModesAndNamesThemOtherwise) {
  EXPECT_EQ(*parsePipelineDecodes("auto"), ShardWorkerOptions::PipelineDecodes::Auto);
  EXPECT_EQ(*parsePipelineDecodes("on"), ShardWorkerOptions::PipelineDecodes::On);
  EXPECT_EQ(*parsePipelineDecodes("off"), ShardWorkerOptions::PipelineDecodes::Off);
  auto bad = parsePipelineDecodes("sometimes");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.message(), "worker.pipeline-decodes 'sometimes' is not one of auto, on, off");
}

TEST_F(ShardWorkerTest, AFailedSetUpSaysWhyAndTheWorkerCanBeSetUpAgain) {
  ShardWorker worker(options(), {});
  proto::RankReady missing = worker.setUp(assign("no-such-plan", "r1"));
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.error().find("404"), std::string::npos) << missing.error();
  EXPECT_NE(missing.error().find("/v1/plans/no-such-plan/ranks/0"),
            std::string::npos)
      << missing.error();
  EXPECT_FALSE(worker.ready());

  // Rank 0 of a two-rank plan handed to a one-rank replica.
  proto::RankReady mismatch = worker.setUp(assign("tp2", "r2"));
  EXPECT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.error().find("rank 0 of 2, assigned rank 0 of 1"),
            std::string::npos)
      << mismatch.error();
  EXPECT_FALSE(worker.ready());

  proto::AssignRank badDir = assign("tp1", "r3");
  badDir.set_model_dir("/nonexistent/llmir-model");
  proto::RankReady noCheckpoint = worker.setUp(badDir);
  EXPECT_FALSE(noCheckpoint.ok());
  EXPECT_NE(noCheckpoint.error().find("/nonexistent/llmir-model"),
            std::string::npos)
      << noCheckpoint.error();

  proto::RankReady good = worker.setUp(assign("tp1", "r4"));
  ASSERT_TRUE(good.ok()) << good.error();
  const auto &reference = demo->cases[1].greedyIds;
  EXPECT_EQ(generate(worker, 1, 3),
            std::vector<int32_t>(reference.begin(), reference.begin() + 4));
}


// A one-stage replica of two ranks chains decodes (ReplicaInfo::chainsDecode):
// each rank samples from the gathered logits and fills its own chained
// inputs; only the deciding rank (0) answers with tokens. The chained steps
// carry no token ids, so rank 1 decoding the reference ids with rank 0 shows
// both filled the same tokens.
TEST_F(ShardWorkerTest, BothRanksOfATensorParallelReplicaChainTheirDecodes) {
  ShardWorker workers[2] = {ShardWorker(options(), {}), ShardWorker(options(), {})};
  proto::RankReady ready[2];
  {
    std::vector<std::thread> threads;
    for (int r = 0; r < 2; ++r)
      threads.emplace_back([&, r] {
        proto::AssignRank a = assign("tp2", "chained");
        a.set_rank(static_cast<uint32_t>(r));
        a.set_world_size(2);
        ready[r] = workers[r].setUp(a);
      });
    for (auto &t : threads)
      t.join();
  }
  ASSERT_TRUE(ready[0].ok()) << ready[0].error();
  ASSERT_TRUE(ready[1].ok()) << ready[1].error();
  const auto &prompt = demo->cases[0].promptIds;
  const auto &reference = demo->cases[0].greedyIds;
  constexpr int kDecodes = 6;
  std::vector<int32_t> out;
  const int32_t length = static_cast<int32_t>(prompt.size()) + kDecodes + 1;
  for (int step = 0; step <= kDecodes; ++step) {
    // After the prompt, chained inputs only: each rank feeds its own sample.
    const proto::StepRequest request =
        step == 0 ? greedyStep(0, prompt, 0, length)
                  : greedyStep(step, {}, static_cast<int32_t>(prompt.size()) + step - 1, length);
    proto::StepResponse responses[2];
    std::vector<std::thread> threads;
    for (int r = 0; r < 2; ++r)
      threads.emplace_back([&, r] { responses[r] = workers[r].step(request); });
    for (auto &t : threads)
      t.join();
    ASSERT_TRUE(responses[0].ok()) << responses[0].error();
    ASSERT_TRUE(responses[1].ok()) << responses[1].error();
    EXPECT_EQ(responses[1].tokens_size(), 0) << "only the deciding rank answers with tokens";
    ASSERT_EQ(responses[0].tokens_size(), 1) << "step " << step;
    out.push_back(responses[0].tokens(0).token_id());
  }
  EXPECT_EQ(out, std::vector<int32_t>(reference.begin(), reference.begin() + kDecodes + 1));
}

// The communicator a worker hands its executor: every capability and
// stream-ordered call of the runtime's communicator must pass through (a
// virtual left to engine::Communicator's default turns it off: GPU workers
// at tp=2 once ran every all-reduce host-synchronously, without CUDA graphs,
// the IPC all-reduce or the exchange), and only the host-side calls are
// timed (a stream-ordered one returns before it runs).
class RecordingCommunicator final : public engine::Communicator {
public:
  std::vector<std::string> calls;
  Status allReduceSum(float *, size_t, uint32_t) override { return call("allReduceSum"); }
  Status allGather(const float *, size_t, float *, uint32_t) override {
    return call("allGather");
  }
  Status send(const float *, size_t, uint32_t) override { return call("send"); }
  Status recv(float *, size_t, uint32_t) override { return call("recv"); }
  bool takesDeviceMemory() const override { return true; }
  bool ordersOnStream() const override { return true; }
  Status allReduceSumOn(void *, float *, size_t, uint32_t) override {
    return call("allReduceSumOn");
  }
  Status allGatherOn(void *, const float *, size_t, float *, uint32_t) override {
    return call("allGatherOn");
  }
  Status sendOn(void *, const float *, size_t, uint32_t) override { return call("sendOn"); }
  Status recvOn(void *, float *, size_t, uint32_t) override { return call("recvOn"); }
  bool fusesAllReduceAddRmsNorm(const engine::AllReduceAddRmsNorm &op,
                                uint32_t groupId) const override {
    return op.width == 4096 && groupId == 3;
  }
  Status allReduceAddRmsNormOn(void *, const engine::AllReduceAddRmsNorm &, uint32_t) override {
    return call("allReduceAddRmsNormOn");
  }
  engine::PeerExchange peerExchange(uint32_t groupId) const override {
    engine::PeerExchange e;
    e.ranks = 2;
    e.rank = 1;
    e.sites = static_cast<int>(groupId);
    return e;
  }
  Status synchronize(void *) override { return call("synchronize"); }
  Status synchronizeEvent(void *) override { return call("synchronizeEvent"); }

private:
  Status call(const char *name) {
    calls.push_back(name);
    return Status::ok();
  }
};

TEST(TimedCommunicatorTest, ForwardsEveryCallAndTimesTheHostSideOnes) {
  RecordingCommunicator inner;
  int timed = 0;
  WorkerObserver observer;
  observer.collectiveSeconds = [&](double seconds) {
    EXPECT_GE(seconds, 0.0);
    ++timed;
  };
  TimedCommunicator comm(inner, observer);
  EXPECT_TRUE(comm.takesDeviceMemory());
  EXPECT_TRUE(comm.ordersOnStream());
  engine::AllReduceAddRmsNorm op;
  op.width = 4096;
  EXPECT_TRUE(comm.fusesAllReduceAddRmsNorm(op, 3));
  EXPECT_FALSE(comm.fusesAllReduceAddRmsNorm(op, 2));
  const engine::PeerExchange exchange = comm.peerExchange(5);
  EXPECT_EQ(exchange.ranks, 2);
  EXPECT_EQ(exchange.rank, 1);
  EXPECT_EQ(exchange.sites, 5);

  float data[4] = {};
  void *stream = &data[0]; // any pointer: the inner communicator only records
  ASSERT_TRUE(comm.allReduceSumOn(stream, data, 4, 0));
  ASSERT_TRUE(comm.allGatherOn(stream, data, 2, data, 0));
  ASSERT_TRUE(comm.sendOn(stream, data, 4, 1));
  ASSERT_TRUE(comm.recvOn(stream, data, 4, 1));
  ASSERT_TRUE(comm.allReduceAddRmsNormOn(stream, op, 3));
  ASSERT_TRUE(comm.synchronize(stream));
  ASSERT_TRUE(comm.synchronizeEvent(stream));
  EXPECT_EQ(timed, 0) << "a stream-ordered call returns before it runs: not timed";
  ASSERT_TRUE(comm.allReduceSum(data, 4, 0));
  ASSERT_TRUE(comm.allGather(data, 2, data, 0));
  ASSERT_TRUE(comm.send(data, 4, 1));
  ASSERT_TRUE(comm.recv(data, 4, 1));
  EXPECT_EQ(timed, 4);
  EXPECT_EQ(inner.calls,
            (std::vector<std::string>{"allReduceSumOn", "allGatherOn", "sendOn", "recvOn",
                                      "allReduceAddRmsNormOn", "synchronize", "synchronizeEvent",
                                      "allReduceSum", "allGather", "send", "recv"}));
}

} // namespace
} // namespace llmir::shard_worker

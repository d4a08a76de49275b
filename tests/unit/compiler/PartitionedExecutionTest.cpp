// The partitioned programs are what the engine executes: every rank of a
// TP=2, PP=2 and TP=2 x PP=2 compile of the demo model runs in its own thread
// over an in-process communicator, and the last stage's logits equal the
// single-rank program's.
#include "llmir/compiler/Compile.h"
#include "llmir/engine/CheckpointWeights.h"
#include "llmir/engine/Communicator.h"
#include "llmir/engine/Executor.h"
#include "llmir/model/Checkpoint.h"

#include <gtest/gtest.h>

#include <barrier>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <thread>

namespace llmir::compiler {
namespace {

const std::string kDemoModel = std::string(LLMIR_SOURCE_DIR) + "/models/demo-llama-4m";

/// Collectives and point-to-point messages between threads of one process,
/// with the groups of a DeploymentPlan.
class LocalCluster {
  struct Group {
    explicit Group(int size) : sync(size), buffers(static_cast<size_t>(size)) {}
    std::barrier<> sync;
    std::vector<uint32_t> ranks;
    std::vector<std::vector<float>> buffers;
  };

public:
  explicit LocalCluster(const proto::DeploymentPlan &plan) {
    for (const proto::CollectiveGroup &g : plan.groups()) {
      auto group = std::make_unique<Group>(g.ranks_size());
      group->ranks.assign(g.ranks().begin(), g.ranks().end());
      groups[g.id()] = std::move(group);
    }
  }

  class Rank : public engine::Communicator {
  public:
    Rank(LocalCluster &cluster, uint32_t rank) : cluster(cluster), rank(rank) {}

    Status allReduceSum(float *data, size_t count, uint32_t groupId) override {
      Group &g = *cluster.groups.at(groupId);
      std::vector<float> &mine = g.buffers[indexIn(g)];
      mine.assign(data, data + count);
      g.sync.arrive_and_wait();
      std::vector<float> sum(count, 0.0f);
      for (const std::vector<float> &b : g.buffers)
        for (size_t i = 0; i < count; ++i)
          sum[i] += b[i];
      g.sync.arrive_and_wait();
      std::copy(sum.begin(), sum.end(), data);
      return Status::ok();
    }

    Status allGather(const float *in, size_t count, float *out,
                     uint32_t groupId) override {
      Group &g = *cluster.groups.at(groupId);
      g.buffers[indexIn(g)].assign(in, in + count);
      g.sync.arrive_and_wait();
      for (size_t r = 0; r < g.buffers.size(); ++r)
        std::copy(g.buffers[r].begin(), g.buffers[r].end(), out + r * count);
      g.sync.arrive_and_wait();
      return Status::ok();
    }

    Status send(const float *data, size_t count, uint32_t peer) override {
      std::lock_guard lock(cluster.mailMutex);
      cluster.mail[{rank, peer}].emplace_back(data, data + count);
      cluster.mailArrived.notify_all();
      return Status::ok();
    }

    Status recv(float *data, size_t count, uint32_t peer) override {
      std::unique_lock lock(cluster.mailMutex);
      auto &queue = cluster.mail[{peer, rank}];
      cluster.mailArrived.wait(lock, [&] { return !queue.empty(); });
      std::vector<float> message = std::move(queue.front());
      queue.pop_front();
      if (message.size() != count)
        return Status::error("recv of " + std::to_string(count) + " floats got " +
                             std::to_string(message.size()));
      std::copy(message.begin(), message.end(), data);
      return Status::ok();
    }

  private:
    size_t indexIn(const Group &g) const {
      return static_cast<size_t>(
          std::find(g.ranks.begin(), g.ranks.end(), rank) - g.ranks.begin());
    }
    LocalCluster &cluster;
    uint32_t rank;
  };

private:
  std::map<uint32_t, std::unique_ptr<Group>> groups;
  std::mutex mailMutex;
  std::condition_variable mailArrived;
  std::map<std::pair<uint32_t, uint32_t>, std::deque<std::vector<float>>> mail;
};

engine::StepInput promptStep() {
  engine::StepInput step;
  step.tokenIds = {1, 17, 300, 2000, 5, 9, 1024};
  step.positions.resize(step.tokenIds.size());
  std::iota(step.positions.begin(), step.positions.end(), 0);
  step.tokenSeq.assign(step.tokenIds.size(), 0);
  step.blockTables = {{0}};
  return step;
}

/// Runs every rank of `compiled` on one prompt; returns the logits of the
/// rank(s) with an output (all equal for TP ranks of the last stage).
std::vector<std::vector<float>> runReplica(const CompiledModel &compiled,
                                           const model::Checkpoint &checkpoint) {
  LocalCluster cluster(compiled.plan);
  const size_t world = compiled.programs.size();
  std::vector<std::vector<float>> logits(world);
  std::vector<std::string> errors(world);
  std::vector<std::thread> threads;
  for (size_t r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      LocalCluster::Rank comm(cluster, static_cast<uint32_t>(r));
      engine::ExecutorOptions options;
      options.numKvBlocks = 4;
      options.numThreads = 1;
      auto executor = engine::Executor::create(
          compiled.programs[r], engine::checkpointWeights(checkpoint), options, &comm);
      if (!executor) {
        errors[r] = executor.message();
        return;
      }
      auto out = (*executor)->step(promptStep());
      if (!out)
        errors[r] = out.message();
      else
        logits[r] = out->data;
    });
  for (std::thread &t : threads)
    t.join();
  for (size_t r = 0; r < world; ++r)
    EXPECT_EQ(errors[r], "") << "rank " << r;
  return logits;
}

class PartitionedExecution : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(PartitionedExecution, LastStageLogitsEqualTheSingleRankOnes) {
  auto checkpoint = model::Checkpoint::open(kDemoModel);
  ASSERT_TRUE(checkpoint) << checkpoint.message();
  auto single = compileHuggingFace(kDemoModel, CompileOptions{});
  ASSERT_TRUE(single) << single.message();
  std::vector<float> expected = runReplica(*single, *checkpoint)[0];
  ASSERT_EQ(expected.size(), 2048u);

  CompileOptions options;
  options.tp = GetParam().first;
  options.pp = GetParam().second;
  auto compiled = compileHuggingFace(kDemoModel, options);
  ASSERT_TRUE(compiled) << compiled.message();
  ASSERT_EQ(compiled->programs.size(), static_cast<size_t>(options.tp * options.pp));
  std::vector<std::vector<float>> logits = runReplica(*compiled, *checkpoint);
  for (size_t r = 0; r < logits.size(); ++r) {
    bool lastStage = compiled->programs[r].stage_id() + 1 == static_cast<uint32_t>(options.pp);
    EXPECT_EQ(compiled->programs[r].has_output(), lastStage) << "rank " << r;
    if (!lastStage)
      continue;
    ASSERT_EQ(logits[r].size(), expected.size()) << "rank " << r;
    for (size_t i = 0; i < expected.size(); ++i)
      ASSERT_NEAR(logits[r][i], expected[i], 1e-3f * (1 + std::abs(expected[i])))
          << "rank " << r << " logit " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Degrees, PartitionedExecution,
                         ::testing::Values(std::pair{2, 1}, std::pair{1, 2},
                                           std::pair{2, 2}));

} // namespace
} // namespace llmir::compiler

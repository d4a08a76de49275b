// Collectives and point-to-point messages between threads of one process,
// with the groups of a DeploymentPlan: runs every rank of a compiled replica
// in one test process (the real multi-process path is Gloo, tested in
// tests/integration).
#pragma once

#include "llmir/compiler/Compile.h"
#include "llmir/engine/CheckpointWeights.h"
#include "llmir/engine/Communicator.h"
#include "llmir/engine/Executor.h"
#include "llmir/model/Checkpoint.h"
#include "llmir/proto/deployment_plan.pb.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <barrier>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

namespace llmir::compiler {

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

/// Per rank, per step, per instruction: the instruction's first output (an
/// empty vector for instructions without one).
using InstructionTrace = std::vector<std::vector<std::vector<std::vector<float>>>>;

/// Runs every rank of `compiled`, each in its own thread over a LocalCluster,
/// through `steps`; returns per rank the logits of each step (empty for ranks
/// without an output). A rank's error fails the calling test. With `trace`,
/// every instruction's output is recorded too.
inline std::vector<std::vector<std::vector<float>>>
runReplica(const CompiledModel &compiled, const model::Checkpoint &checkpoint,
           const std::vector<engine::StepInput> &steps, int32_t numKvBlocks,
           engine::Device device = {}, InstructionTrace *trace = nullptr) {
  LocalCluster cluster(compiled.plan);
  const size_t world = compiled.programs.size();
  std::vector<std::vector<std::vector<float>>> logits(world);
  std::vector<std::string> errors(world);
  if (trace)
    trace->assign(world, {});
  std::vector<std::thread> threads;
  for (size_t r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      LocalCluster::Rank comm(cluster, static_cast<uint32_t>(r));
      engine::ExecutorOptions options;
      options.numKvBlocks = numKvBlocks;
      options.numThreads = 1;
      options.device = device;
      options.kvCacheDtype = engine::KvCacheDType::F32; // comparisons are f32-exact
      auto executor = engine::Executor::create(
          compiled.programs[r], engine::checkpointWeights(checkpoint), options, &comm);
      if (!executor) {
        errors[r] = executor.message();
        return;
      }
      for (const engine::StepInput &step : steps) {
        engine::InstructionObserver observer;
        if (trace) {
          auto &outputs = (*trace)[r].emplace_back(compiled.programs[r].instructions_size());
          observer = [&outputs](size_t i, const engine::Tensor &t) { outputs[i] = t.data; };
        }
        auto out = (*executor)->step(step, observer);
        if (!out) {
          errors[r] = out.message();
          return;
        }
        logits[r].push_back(out->data);
      }
    });
  for (std::thread &t : threads)
    t.join();
  for (size_t r = 0; r < world; ++r)
    EXPECT_EQ(errors[r], "") << "rank " << r;
  return logits;
}

/// Two sequences in shuffled physical blocks of 4 tokens (24 blocks): seq 0
/// gets a 41-token prompt, then seq 1's 9-token prompt joins a decode step
/// of seq 0, then both decode three times. Token ids below 2048.
inline std::vector<engine::StepInput> mixedBatchSteps() {
  const std::vector<std::vector<int32_t>> tables = {
      {23, 5, 17, 2, 11, 8, 20, 14, 1, 22, 7, 19}, {3, 9, 15, 21}};
  uint32_t state = 12345;
  auto nextId = [&] { return static_cast<int32_t>((state = state * 1103515245u + 12345u) >> 16) % 2048; };
  std::vector<engine::StepInput> out;
  engine::StepInput prefill;
  for (int32_t p = 0; p < 41; ++p) {
    prefill.tokenIds.push_back(nextId());
    prefill.positions.push_back(p);
    prefill.tokenSeq.push_back(0);
  }
  prefill.blockTables = {tables[0]};
  prefill.outputRows.resize(41);
  std::iota(prefill.outputRows.begin(), prefill.outputRows.end(), 0);
  out.push_back(prefill);

  engine::StepInput mixed;
  mixed.tokenIds = {nextId()};
  mixed.positions = {41};
  mixed.tokenSeq = {0};
  for (int32_t p = 0; p < 9; ++p) {
    mixed.tokenIds.push_back(nextId());
    mixed.positions.push_back(p);
    mixed.tokenSeq.push_back(1);
  }
  mixed.blockTables = tables;
  out.push_back(mixed);

  for (int32_t i = 0; i < 3; ++i) {
    engine::StepInput decode;
    decode.tokenIds = {nextId(), nextId()};
    decode.positions = {42 + i, 9 + i};
    decode.tokenSeq = {0, 1};
    decode.blockTables = tables;
    out.push_back(decode);
  }
  return out;
}

} // namespace llmir::compiler

// DistributedRuntime over Gloo between real processes on loopback.
#include "RankProcesses.h"

#include "llmir/runtime/DistributedRuntime.h"
#include "llmir/runtime/RendezvousStore.h"

#include <gtest/gtest.h>

#include <csignal>
#include <cstring>
#include <unistd.h>

using namespace llmir;
using namespace llmir::runtime;
using namespace std::chrono_literals;
using llmir::runtime::testing::RankOutcome;
using llmir::runtime::testing::runRanks;

namespace {

/// Fails the rank with a message naming what differed.
#define RANK_CHECK(cond, what)                                                 \
  do {                                                                         \
    if (!(cond))                                                               \
      return Status::error(std::string("rank check failed: ") + (what));       \
  } while (0)

class DistributedRuntimeTest : public ::testing::Test {
protected:
  void SetUp() override {
    auto server = RendezvousServer::start("127.0.0.1", 0);
    ASSERT_TRUE(server.isOk()) << server.message();
    server_ = std::move(server).value();
  }

  RuntimeConfig config(int worldSize, int rank,
                       std::chrono::milliseconds timeout = 20s) const {
    RuntimeConfig c;
    c.worldSize = worldSize;
    c.rank = rank;
    c.storePort = server_->port();
    c.timeout = timeout;
    c.storePrefix =
        ::testing::UnitTest::GetInstance()->current_test_info()->name();
    return c;
  }

  /// Runs `body` on `worldSize` ranks, each with an initialised runtime.
  std::vector<RankOutcome>
  runWorld(int worldSize,
           const std::function<Status(DistributedRuntime &)> &body) {
    return runRanks(worldSize, [&](int rank) -> Status {
      auto runtime = DistributedRuntime::init(config(worldSize, rank));
      if (!runtime)
        return runtime.status();
      return body(**runtime);
    });
  }

  static void expectAllOk(const std::vector<RankOutcome> &outcomes) {
    for (size_t r = 0; r < outcomes.size(); ++r)
      EXPECT_TRUE(outcomes[r].ok) << "rank " << r << ": " << outcomes[r].message;
  }

  std::unique_ptr<RendezvousServer> server_;
};

class AllReduceTest : public DistributedRuntimeTest,
                      public ::testing::WithParamInterface<int> {};

TEST_P(AllReduceTest, SumMaxMinAreExact) {
  const int world = GetParam();
  expectAllOk(runWorld(world, [world](DistributedRuntime &rt) -> Status {
    const int r = rt.rank();
    const size_t n = 1000;
    std::vector<float> sum(n), max(n);
    for (size_t i = 0; i < n; ++i) {
      sum[i] = static_cast<float>(r * 1000 + i);
      max[i] = (i % world) == static_cast<size_t>(r) ? 7.0f * i : -1.0f;
    }
    LLMIR_RETURN_IF_ERROR(
        rt.allReduce(sum.data(), n, DataType::F32, ReduceOp::Sum, rt.world()));
    LLMIR_RETURN_IF_ERROR(
        rt.allReduce(max.data(), n, DataType::F32, ReduceOp::Max, rt.world()));
    const int rankSum = world * (world - 1) / 2;
    for (size_t i = 0; i < n; ++i) {
      RANK_CHECK(sum[i] == static_cast<float>(rankSum * 1000 + world * i),
                 "f32 sum at " + std::to_string(i) + " = " + std::to_string(sum[i]));
      RANK_CHECK(max[i] == static_cast<float>(7 * i),
                 "f32 max at " + std::to_string(i) + " = " + std::to_string(max[i]));
    }
    std::vector<int32_t> mins = {r + 5, -r, 100 * r};
    LLMIR_RETURN_IF_ERROR(
        rt.allReduce(mins.data(), 3, DataType::I32, ReduceOp::Min, rt.world()));
    RANK_CHECK(mins == (std::vector<int32_t>{5, -(world - 1), 0}), "i32 min");
    // 16-bit floats: small integers are exact in both formats.
    // 0x4000 is 2.0 in f16, 0x4000 is 2.0 in bf16 too.
    std::vector<uint16_t> half = {0x4000, 0x4000};
    LLMIR_RETURN_IF_ERROR(
        rt.allReduce(half.data(), 1, DataType::F16, ReduceOp::Sum, rt.world()));
    LLMIR_RETURN_IF_ERROR(rt.allReduce(half.data() + 1, 1, DataType::BF16,
                                       ReduceOp::Sum, rt.world()));
    const uint16_t f16Expected = world == 2 ? 0x4400 : 0x4600; // 4.0 / 6.0
    const uint16_t bf16Expected = world == 2 ? 0x4080 : 0x40c0;
    RANK_CHECK(half[0] == f16Expected, "f16 sum " + std::to_string(half[0]));
    RANK_CHECK(half[1] == bf16Expected, "bf16 sum " + std::to_string(half[1]));
    return Status::ok();
  }));
}

INSTANTIATE_TEST_SUITE_P(Ranks, AllReduceTest, ::testing::Values(2, 3));

TEST_F(DistributedRuntimeTest, AllGatherOrdersByGroupRank) {
  expectAllOk(runWorld(3, [](DistributedRuntime &rt) -> Status {
    std::vector<int32_t> mine = {rt.rank() * 10, rt.rank() * 10 + 1};
    std::vector<int32_t> all(6, -1);
    LLMIR_RETURN_IF_ERROR(
        rt.allGather(mine.data(), all.data(), 2, DataType::I32, rt.world()));
    RANK_CHECK(all == (std::vector<int32_t>{0, 1, 10, 11, 20, 21}), "world order");
    // A group listed out of rank order gathers in the listed order.
    auto group = rt.createGroup({2, 0, 1});
    if (!group)
      return group.status();
    LLMIR_RETURN_IF_ERROR(
        rt.allGather(mine.data(), all.data(), 2, DataType::I32, *group));
    RANK_CHECK(all == (std::vector<int32_t>{20, 21, 0, 1, 10, 11}), "group order");
    return Status::ok();
  }));
}

TEST_F(DistributedRuntimeTest, BroadcastFromNonZeroRoot) {
  expectAllOk(runWorld(3, [](DistributedRuntime &rt) -> Status {
    std::vector<float> data(300, rt.rank() == 2 ? 3.5f : 0.0f);
    LLMIR_RETURN_IF_ERROR(rt.broadcast(data.data(), data.size(), DataType::F32,
                                       /*rootRank=*/2, rt.world()));
    for (float v : data)
      RANK_CHECK(v == 3.5f, "broadcast value");
    return Status::ok();
  }));
}

TEST_F(DistributedRuntimeTest, SendRecvPingPong) {
  expectAllOk(runWorld(2, [](DistributedRuntime &rt) -> Status {
    std::vector<char> big(3 << 20);
    for (int round = 0; round < 3; ++round) {
      uint64_t value = 0;
      if (rt.rank() == 0) {
        value = 1000 + round;
        LLMIR_RETURN_IF_ERROR(rt.send(&value, sizeof(value), 1));
        LLMIR_RETURN_IF_ERROR(rt.recv(&value, sizeof(value), 1));
        RANK_CHECK(value == 1001u + round, "pong value");
      } else {
        LLMIR_RETURN_IF_ERROR(rt.recv(&value, sizeof(value), 0));
        value += 1;
        LLMIR_RETURN_IF_ERROR(rt.send(&value, sizeof(value), 0));
      }
    }
    // A large transfer arrives intact.
    if (rt.rank() == 0) {
      for (size_t i = 0; i < big.size(); ++i)
        big[i] = static_cast<char>(i * 7);
      return rt.send(big.data(), big.size(), 1);
    }
    LLMIR_RETURN_IF_ERROR(rt.recv(big.data(), big.size(), 0));
    for (size_t i = 0; i < big.size(); ++i)
      RANK_CHECK(big[i] == static_cast<char>(i * 7), "byte " + std::to_string(i));
    return Status::ok();
  }));
}

TEST_F(DistributedRuntimeTest, SubGroupsReduceIndependently) {
  expectAllOk(runWorld(4, [](DistributedRuntime &rt) -> Status {
    std::vector<int> members = rt.rank() < 2 ? std::vector<int>{0, 1}
                                             : std::vector<int>{2, 3};
    auto group = rt.createGroup(members);
    if (!group)
      return group.status();
    RANK_CHECK(group->size() == 2 && group->ranks() == members, "group ranks");
    float value = static_cast<float>(rt.rank() + 1);
    LLMIR_RETURN_IF_ERROR(
        rt.allReduce(&value, 1, DataType::F32, ReduceOp::Sum, *group));
    RANK_CHECK(value == (rt.rank() < 2 ? 3.0f : 7.0f), "group sum");
    LLMIR_RETURN_IF_ERROR(rt.barrier(*group));
    // The same rank list again is a fresh group, and the world still works.
    auto again = rt.createGroup(members);
    if (!again)
      return again.status();
    LLMIR_RETURN_IF_ERROR(
        rt.allReduce(&value, 1, DataType::F32, ReduceOp::Max, *again));
    LLMIR_RETURN_IF_ERROR(rt.barrier());
    return Status::ok();
  }));
}

// The store's memory is bounded (issue 14): once every member of a group has
// connected, the group's rendezvous keys are deleted, so a long-running
// scheduler's store does not fill up with finished rendezvous.
TEST_F(DistributedRuntimeTest, FinishedRendezvousLeaveNoKeysBehind) {
  expectAllOk(runWorld(3, [](DistributedRuntime &rt) -> Status {
    auto group = rt.createGroup({0, 1, 2});
    if (!group)
      return group.status();
    return rt.barrier(*group);
  }));
  EXPECT_EQ(server_->storedBytes(), 0u) << "keys of connected groups stayed in the store";
}

TEST_F(DistributedRuntimeTest, RejectsMisuseWithClearErrors) {
  auto outcomes = runWorld(2, [](DistributedRuntime &rt) -> Status {
    int x = 0;
    Status self = rt.send(&x, sizeof(x), rt.rank());
    RANK_CHECK(!self.isOk() && self.message().find("peer rank") != std::string::npos,
               "send to self: " + self.message());
    auto notMember = rt.createGroup({1 - rt.rank()});
    RANK_CHECK(!notMember.isOk() &&
                   notMember.message().find("not a member") != std::string::npos,
               "non-member createGroup");
    auto outOfRange = rt.createGroup({0, 5});
    RANK_CHECK(!outOfRange.isOk(), "out-of-range createGroup");
    Status badRoot = rt.broadcast(&x, 1, DataType::I32, 7, rt.world());
    RANK_CHECK(!badRoot.isOk(), "broadcast root outside group");
    Status empty = rt.barrier(DeviceGroup());
    RANK_CHECK(!empty.isOk(), "empty group");
    return rt.barrier();
  });
  expectAllOk(outcomes);

  RuntimeConfig bad = config(2, 0);
  bad.backend = "mpi";
  auto r = DistributedRuntime::init(bad);
  ASSERT_FALSE(r.isOk());
  EXPECT_NE(r.message().find("unknown backend 'mpi'"), std::string::npos);
  bad = config(2, 2);
  EXPECT_FALSE(DistributedRuntime::init(bad).isOk());
}

TEST_F(DistributedRuntimeTest, MissingRankIsNamedWithinTimeout) {
  // World of 3, but rank 2 never starts.
  auto outcomes = runRanks(2, [&](int rank) -> Status {
    auto rt = DistributedRuntime::init(config(3, rank, 2s));
    return rt.status();
  });
  for (size_t r = 0; r < outcomes.size(); ++r) {
    EXPECT_FALSE(outcomes[r].ok);
    EXPECT_NE(outcomes[r].message.find("rank 2 of 3 did not join within 2 s"),
              std::string::npos)
        << "rank " << r << ": " << outcomes[r].message;
  }
}

TEST_F(DistributedRuntimeTest, KilledRankMakesPeerFailNotHang) {
  auto outcomes = runRanks(2, [&](int rank) -> Status {
    auto rt = DistributedRuntime::init(config(2, rank, 3s));
    if (!rt)
      return rt.status();
    float v = 1.0f;
    LLMIR_RETURN_IF_ERROR(
        (*rt)->allReduce(&v, 1, DataType::F32, ReduceOp::Sum, (*rt)->world()));
    if (rank == 1)
      ::kill(::getpid(), SIGKILL);
    std::vector<float> data(1 << 16, 1.0f);
    Status first = (*rt)->allReduce(data.data(), data.size(), DataType::F32,
                                    ReduceOp::Sum, (*rt)->world());
    RANK_CHECK(!first.isOk(), "all-reduce with a dead peer succeeded");
    // The failure is sticky: later calls fail fast with the original cause.
    Status second = (*rt)->barrier();
    RANK_CHECK(!second.isOk() &&
                   second.message().find("earlier failure") != std::string::npos,
               "second call: " + second.message());
    return Status::error("peer failure reported: " + first.message());
  });
  ASSERT_EQ(outcomes.size(), 2u);
  EXPECT_NE(outcomes[0].message.find("peer failure reported"), std::string::npos)
      << outcomes[0].message;
  EXPECT_NE(outcomes[1].message.find("signal 9"), std::string::npos)
      << outcomes[1].message;
}

TEST_F(DistributedRuntimeTest, NcclWithoutCudaDeviceFailsCleanly) {
  RuntimeConfig c = config(1, 0, 2s);
  c.backend = "nccl";
  auto rt = DistributedRuntime::init(c);
  if (rt.isOk())
    GTEST_SKIP() << "a CUDA device is present; runtime_nccl_test covers it";
  EXPECT_TRUE(rt.message().find("no CUDA device") != std::string::npos ||
              rt.message().find("built without CUDA") != std::string::npos)
      << rt.message();
}

} // namespace

// IpcAllReduce's parts that need no GPU: the algorithm choice and refusals,
// the store records, and the rendezvous through a real RendezvousServer with
// one client per rank (threads), including the cases where one rank cannot
// take part and every rank must then fail (so all fall back to NCCL).
// runtime_ipc_allreduce_test (label multi_gpu) runs the all-reduce itself.
#include "IpcAllReduceRecord.h"

#include "llmir/runtime/IpcAllReduce.h"
#include "llmir/runtime/LocalLauncher.h"
#include "llmir/runtime/RendezvousStore.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <thread>

using namespace llmir;
using namespace llmir::runtime;
using namespace llmir::runtime::detail;
using namespace std::chrono_literals;

namespace {

bool contains(const std::string &text, const std::string &part) {
  return text.find(part) != std::string::npos;
}

TEST(IpcAllReduceChoiceTest, TwoRanksAlwaysOneShotUpToTheBuffer) {
  IpcAllReduceOptions options;
  options.maxBytes = 1u << 20;
  for (size_t count : {size_t(0), size_t(1), size_t(7), size_t(4096), size_t(1) << 18}) {
    auto algorithm = chooseIpcAllReduceAlgorithm(count, 2, options);
    ASSERT_TRUE(algorithm.isOk()) << count << ": " << algorithm.message();
    EXPECT_EQ(*algorithm, IpcAllReduceAlgorithm::OneShot) << count;
  }
  auto refused = chooseIpcAllReduceAlgorithm((size_t(1) << 18) + 1, 2, options);
  ASSERT_FALSE(refused.isOk());
  EXPECT_TRUE(contains(refused.message(), "262145 floats (1048580 bytes)")) << refused.message();
  EXPECT_TRUE(contains(refused.message(), "use NCCL")) << refused.message();
}

TEST(IpcAllReduceChoiceTest, LargerGroupsSwitchToTwoShotAtVllmsThresholds) {
  IpcAllReduceOptions options; // 8 MiB buffer
  const size_t k512 = (512u << 10) / 4, k256 = (256u << 10) / 4;
  EXPECT_EQ(*chooseIpcAllReduceAlgorithm(k512, 4, options), IpcAllReduceAlgorithm::OneShot);
  EXPECT_EQ(*chooseIpcAllReduceAlgorithm(k512 + 1, 4, options), IpcAllReduceAlgorithm::TwoShot);
  EXPECT_EQ(*chooseIpcAllReduceAlgorithm(k512 + 1, 3, options), IpcAllReduceAlgorithm::TwoShot);
  EXPECT_EQ(*chooseIpcAllReduceAlgorithm(k256, 8, options), IpcAllReduceAlgorithm::OneShot);
  EXPECT_EQ(*chooseIpcAllReduceAlgorithm(k256 + 1, 5, options), IpcAllReduceAlgorithm::TwoShot);
  options.oneShotMaxBytes = 16;
  EXPECT_EQ(*chooseIpcAllReduceAlgorithm(4, 2, options), IpcAllReduceAlgorithm::OneShot);
  EXPECT_EQ(*chooseIpcAllReduceAlgorithm(5, 2, options), IpcAllReduceAlgorithm::TwoShot);
  EXPECT_STREQ(ipcAllReduceAlgorithmName(IpcAllReduceAlgorithm::TwoShot), "two-shot");
}

TEST(IpcAllReduceChoiceTest, ConfigurationErrorsSayWhatIsWrong) {
  IpcAllReduceOptions options;
  EXPECT_TRUE(validateIpcAllReduceConfig(0, 2, options).isOk());
  EXPECT_TRUE(contains(validateIpcAllReduceConfig(0, 9, options).message(), "1 to 8"));
  EXPECT_TRUE(contains(validateIpcAllReduceConfig(2, 2, options).message(), "rank 2 out of range"));
  options.maxBytes = 3;
  EXPECT_TRUE(contains(validateIpcAllReduceConfig(0, 2, options).message(), "holds no float"));
  options.maxBytes = 1024;
  options.timeout = 0ms;
  EXPECT_TRUE(contains(validateIpcAllReduceConfig(0, 2, options).message(), "timeout"));
}

IpcPeerRecord record(const std::string &gpu) {
  IpcPeerRecord r;
  r.machineId = "boot-1";
  r.hostname = "node-a";
  r.pciBusId = gpu;
  r.maxBytes = 8u << 20;
  r.oneShotMaxBytes = 512u << 10;
  for (size_t i = 0; i < r.handle.size(); ++i)
    r.handle[i] = static_cast<char>(i * 7);
  return r;
}

TEST(IpcAllReduceChoiceTest, TheFusedAddRmsNormTakesDecodeRowsAndSaysWhyNotOthers) {
  IpcAllReduceOptions options; // 8 MiB halves
  EXPECT_TRUE(checkIpcAddRmsNormShape(1, 4096, 2, options).isOk());
  EXPECT_TRUE(checkIpcAddRmsNormShape(16, 8192, 4, options).isOk()); // 512 KiB, the one-shot limit
  auto refused = [&](size_t rows, size_t width, int ranks, const std::string &why) {
    Status s = checkIpcAddRmsNormShape(rows, width, ranks, options);
    EXPECT_FALSE(s.isOk()) << rows << " x " << width;
    EXPECT_NE(s.message().find(why), std::string::npos) << s.message();
  };
  refused(0, 4096, 2, "nothing to normalise");
  refused(1, 4098, 2, "whole float4s");
  refused(1, 8196, 2, "at most 8192");
  refused(17, 8192, 4, "over the one-shot size"); // 544 KiB > 512 KiB at 4 ranks
  refused(129, 8192, 2, "exceed the exchange buffer"); // 2 ranks x 4.03 MiB > 8 MiB
}

TEST(IpcPeerRecordTest, RoundTripsAndRejectsDamage) {
  IpcPeerRecord r = record("0000:19:00.0");
  auto bytes = encodeIpcPeerRecord(r);
  auto back = decodeIpcPeerRecord(bytes);
  ASSERT_TRUE(back.isOk()) << back.message();
  EXPECT_EQ(back->machineId, r.machineId);
  EXPECT_EQ(back->hostname, r.hostname);
  EXPECT_EQ(back->pciBusId, r.pciBusId);
  EXPECT_EQ(back->maxBytes, r.maxBytes);
  EXPECT_EQ(back->oneShotMaxBytes, r.oneShotMaxBytes);
  EXPECT_EQ(back->handle, r.handle);
  EXPECT_TRUE(back->error.empty());

  auto truncated = bytes;
  truncated.resize(bytes.size() - 10);
  EXPECT_TRUE(contains(decodeIpcPeerRecord(truncated).message(), "truncated"));
  auto trailing = bytes;
  trailing.push_back('x');
  EXPECT_TRUE(contains(decodeIpcPeerRecord(trailing).message(), "trailing"));
  EXPECT_TRUE(contains(decodeIpcPeerRecord({'n', 'o'}).message(), "not an IpcAllReduce record"));
}

TEST(IpcPeerRecordTest, PeersThatCannotShareBuffersAreNamedWithTheReason) {
  IpcPeerRecord mine = record("0000:19:00.0");
  EXPECT_TRUE(checkIpcPeerRecord(mine, record("0000:3b:00.0"), 1).isOk());

  IpcPeerRecord remote = record("0000:3b:00.0");
  remote.machineId = "boot-2";
  remote.hostname = "node-b";
  Status s = checkIpcPeerRecord(mine, remote, 1);
  EXPECT_TRUE(contains(s.message(), "rank 1 runs on another machine (node-b")) << s.message();

  IpcPeerRecord bigger = record("0000:3b:00.0");
  bigger.maxBytes = 16u << 20;
  s = checkIpcPeerRecord(mine, bigger, 3);
  EXPECT_TRUE(contains(s.message(), "rank 3 was created with maxBytes 16777216")) << s.message();

  s = checkIpcPeerRecord(mine, record("0000:19:00.0"), 2);
  EXPECT_TRUE(contains(s.message(), "rank 2 uses the same GPU (0000:19:00.0)")) << s.message();

  IpcPeerRecord failed;
  failed.error = "no CUDA device";
  s = checkIpcPeerRecord(mine, failed, 1);
  EXPECT_TRUE(contains(s.message(), "rank 1 could not set up: no CUDA device")) << s.message();
}

/// Runs body(rank, client) on one thread per rank, each with its own
/// connection to a real store; returns each rank's outcome.
class IpcRendezvousTest : public ::testing::Test {
protected:
  void SetUp() override {
    auto server = RendezvousServer::start("127.0.0.1", 0);
    ASSERT_TRUE(server.isOk()) << server.message();
    server_ = std::move(server).value();
  }
  std::vector<Status> runRanks(int ranks,
                               const std::function<Status(int, RendezvousClient &)> &body) {
    std::vector<Status> outcomes(ranks);
    std::vector<std::thread> threads;
    for (int r = 0; r < ranks; ++r)
      threads.emplace_back([&, r] {
        auto client = RendezvousClient::connect("127.0.0.1", server_->port(), 5s);
        outcomes[r] = client ? body(r, **client) : client.status();
      });
    for (auto &t : threads)
      t.join();
    return outcomes;
  }
  /// One rank's whole rendezvous: records, then the agreed outcome;
  /// `localFailure` stands for a failure mapping the peers' buffers.
  static Status rendezvous(RendezvousClient &store, int rank, int ranks,
                           const IpcPeerRecord &mine, const std::string &localFailure = "",
                           std::chrono::milliseconds timeout = 5s) {
    auto records = exchangeIpcPeerRecords(store, "ipc/", rank, ranks, mine, timeout);
    Status local = !records ? records.status()
                   : localFailure.empty() ? Status::ok()
                                          : Status::error(localFailure);
    if (records && records->size() != static_cast<size_t>(ranks))
      local = Status::error("wrong number of records");
    return agreeOnIpcOutcome(store, "ipc/", rank, ranks, local, timeout);
  }
  std::unique_ptr<RendezvousServer> server_;
};

TEST_F(IpcRendezvousTest, AllRanksReadyAndTheKeysAreDeletedAfterwards) {
  auto outcomes = runRanks(3, [](int rank, RendezvousClient &store) -> Status {
    IpcPeerRecord mine = record("0000:1" + std::to_string(rank) + ":00.0");
    auto records = exchangeIpcPeerRecords(store, "ipc/", rank, 3, mine, 5s);
    if (!records)
      return records.status();
    for (int p = 0; p < 3; ++p)
      if ((*records)[p].pciBusId != "0000:1" + std::to_string(p) + ":00.0")
        return Status::error("record " + std::to_string(p) + " out of order");
    return agreeOnIpcOutcome(store, "ipc/", rank, 3, Status::ok(), 5s);
  });
  for (int r = 0; r < 3; ++r)
    EXPECT_TRUE(outcomes[r].isOk()) << "rank " << r << ": " << outcomes[r].message();
  auto client = RendezvousClient::connect("127.0.0.1", server_->port(), 5s);
  ASSERT_TRUE(client.isOk());
  auto present = (*client)->check({"ipc/record/0", "ipc/outcome/2", "ipc/done"});
  ASSERT_TRUE(present.isOk());
  EXPECT_EQ(*present, std::vector<bool>({false, false, false}));
}

TEST_F(IpcRendezvousTest, ARankOnAnotherMachineFailsEveryRank) {
  auto outcomes = runRanks(2, [](int rank, RendezvousClient &store) {
    IpcPeerRecord mine = record("0000:1" + std::to_string(rank) + ":00.0");
    if (rank == 1) {
      mine.machineId = "boot-2";
      mine.hostname = "node-b";
    }
    return rendezvous(store, rank, 2, mine);
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_FALSE(outcomes[r].isOk()) << "rank " << r;
    EXPECT_TRUE(contains(outcomes[r].message(), "rank 0: rank 1 runs on another machine (node-b"))
        << outcomes[r].message();
    EXPECT_TRUE(contains(outcomes[r].message(), "rank 1: rank 0 runs on another machine (node-a"))
        << outcomes[r].message();
  }
}

TEST_F(IpcRendezvousTest, ARankThatCannotSetUpOrMapFailsEveryRank) {
  // Rank 1 has no device: the others learn it from its record.
  auto outcomes = runRanks(3, [](int rank, RendezvousClient &store) {
    IpcPeerRecord mine = record("0000:1" + std::to_string(rank) + ":00.0");
    if (rank == 1)
      mine = IpcPeerRecord{.error = "IpcAllReduce: no current CUDA device"};
    return rendezvous(store, rank, 3, mine);
  });
  for (int r = 0; r < 3; ++r) {
    ASSERT_FALSE(outcomes[r].isOk()) << "rank " << r;
    EXPECT_TRUE(contains(outcomes[r].message(), "rank 1: IpcAllReduce: no current CUDA device"))
        << outcomes[r].message();
  }
  // Rank 2 cannot map a peer's buffer (no P2P): records were fine, the
  // agreed outcome carries its failure to ranks 0 and 1.
  server_->stop();
  SetUp();
  outcomes = runRanks(3, [](int rank, RendezvousClient &store) {
    return rendezvous(store, rank, 3, record("0000:1" + std::to_string(rank) + ":00.0"),
                      rank == 2 ? "no peer-to-peer access from device 2" : "");
  });
  for (int r = 0; r < 3; ++r) {
    ASSERT_FALSE(outcomes[r].isOk()) << "rank " << r;
    EXPECT_TRUE(contains(outcomes[r].message(), "rank 2: no peer-to-peer access from device 2"))
        << outcomes[r].message();
    EXPECT_FALSE(contains(outcomes[r].message(), "rank 0:")) << outcomes[r].message();
  }
}

TEST_F(IpcRendezvousTest, ARankThatNeverComesIsNamedAfterTheTimeout) {
  auto outcomes = runRanks(1, [](int rank, RendezvousClient &store) {
    return rendezvous(store, rank, 3, record("0000:10:00.0"), "", 300ms);
  });
  ASSERT_FALSE(outcomes[0].isOk());
  EXPECT_TRUE(contains(outcomes[0].message(),
                       "rank 0: ranks 1, 2 of 3 did not publish a record within 300 ms"))
      << outcomes[0].message();
}


TEST_F(IpcRendezvousTest, CreateWithoutAGpuFailsAtOnceSayingWhy) {
  auto client = RendezvousClient::connect("127.0.0.1", server_->port(), 5s);
  ASSERT_TRUE(client.isOk());
  IpcAllReduceOptions options;
  auto invalid = IpcAllReduce::create(**client, "ipc/", 0, 9, options);
  ASSERT_FALSE(invalid.isOk());
  EXPECT_TRUE(contains(invalid.message(), "group of 9 ranks")) << invalid.message();
  if (runtime::visibleNvidiaGpus() > 0)
    GTEST_SKIP() << "a GPU is visible: runtime_ipc_allreduce_test covers create() there";
  // One rank, so nobody else is waited for: the failure is this rank's own.
  auto start = std::chrono::steady_clock::now();
  auto created = IpcAllReduce::create(**client, "ipc/", 0, 1, options);
  ASSERT_FALSE(created.isOk());
#ifdef LLMIR_RUNTIME_HAS_NCCL
  EXPECT_TRUE(contains(created.message(), "rank 0: IpcAllReduce:")) << created.message();
#else
  EXPECT_TRUE(contains(created.message(), "built without CUDA")) << created.message();
#endif
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
}

} // namespace

// DistributedRuntime over NCCL between real processes, one GPU per rank.
// Skips where no NVIDIA GPU is visible (CI).
#include "RankProcesses.h"

#include "llmir/runtime/DistributedRuntime.h"
#include "llmir/runtime/LocalLauncher.h"
#include "llmir/runtime/RendezvousStore.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

using namespace llmir;
using namespace llmir::runtime;
using namespace std::chrono_literals;

namespace {


Status check(cudaError_t e, const char *what) {
  return e == cudaSuccess ? Status::ok()
                          : Status::error(std::string(what) + ": " +
                                          cudaGetErrorString(e));
}

/// Rank `rank` of `world` over NCCL, meeting at the store on `port`.
Result<std::unique_ptr<DistributedRuntime>> joinNccl(int rank, int world, uint16_t port,
                                                     const std::string &prefix,
                                                     std::chrono::milliseconds timeout) {
  RuntimeConfig config;
  config.worldSize = world;
  config.rank = rank;
  config.storePort = port;
  config.backend = "nccl";
  config.timeout = timeout;
  config.storePrefix = prefix;
  return DistributedRuntime::init(config);
}

TEST(NcclRuntimeTest, CollectivesAndSendRecvOnDeviceBuffers) {
  const int world = std::min(runtime::visibleNvidiaGpus(), 2);
  if (world == 0)
    GTEST_SKIP() << "no NVIDIA GPU visible";
  auto server = RendezvousServer::start("127.0.0.1", 0);
  ASSERT_TRUE(server.isOk()) << server.message();
  const uint16_t port = (*server)->port();

  auto outcomes = llmir::runtime::testing::runRanks(world, [&](int rank) -> Status {
    auto rt = joinNccl(rank, world, port, "nccl-test", 60s);
    if (!rt)
      return rt.status();
    const size_t n = 1 << 20;
    std::vector<float> host(n, static_cast<float>(rank + 1));
    float *device = nullptr;
    LLMIR_RETURN_IF_ERROR(check(cudaMalloc(&device, n * sizeof(float) * world), "malloc"));
    LLMIR_RETURN_IF_ERROR(check(
        cudaMemcpy(device, host.data(), n * sizeof(float), cudaMemcpyHostToDevice), "h2d"));
    LLMIR_RETURN_IF_ERROR(
        (*rt)->allReduce(device, n, DataType::F32, ReduceOp::Sum, (*rt)->world()));
    LLMIR_RETURN_IF_ERROR(check(
        cudaMemcpy(host.data(), device, n * sizeof(float), cudaMemcpyDeviceToHost), "d2h"));
    const float expected = world * (world + 1) / 2.0f;
    for (float v : host)
      if (v != expected)
        return Status::error("allReduce gave " + std::to_string(v));
    LLMIR_RETURN_IF_ERROR((*rt)->barrier());
    if (world == 2) {
      float value = rank == 0 ? 42.0f : 0.0f;
      LLMIR_RETURN_IF_ERROR(check(
          cudaMemcpy(device, &value, sizeof(float), cudaMemcpyHostToDevice), "h2d"));
      LLMIR_RETURN_IF_ERROR(rank == 0 ? (*rt)->send(device, sizeof(float), 1)
                                      : (*rt)->recv(device, sizeof(float), 0));
      LLMIR_RETURN_IF_ERROR(check(
          cudaMemcpy(&value, device, sizeof(float), cudaMemcpyDeviceToHost), "d2h"));
      if (value != 42.0f)
        return Status::error("recv gave " + std::to_string(value));
    }
    // Host buffers are staged through device memory (a generator's token).
    int32_t token = rank == 0 ? 1234 : -1;
    LLMIR_RETURN_IF_ERROR((*rt)->broadcast(&token, 1, DataType::I32, 0, (*rt)->world()));
    if (token != 1234)
      return Status::error("host broadcast gave " + std::to_string(token));
    std::vector<float> small(4, static_cast<float>(rank + 1));
    LLMIR_RETURN_IF_ERROR(
        (*rt)->allReduce(small.data(), small.size(), DataType::F32, ReduceOp::Sum, (*rt)->world()));
    if (small[3] != expected)
      return Status::error("host allReduce gave " + std::to_string(small[3]));
    cudaFree(device);
    return Status::ok();
  });
  for (size_t r = 0; r < outcomes.size(); ++r)
    EXPECT_TRUE(outcomes[r].ok) << "rank " << r << ": " << outcomes[r].message;
}


/// Stream-ordered collectives recorded in a CUDA graph and replayed with new
/// inputs (what a tensor-parallel decode step does), a stream-ordered
/// pipeline transfer, then a blocking collective on the same communicator
/// (it waits for the stream's work first).
TEST(NcclRuntimeTest, StreamOrderedCollectivesReplayInACudaGraph) {
  if (runtime::visibleNvidiaGpus() < 2)
    GTEST_SKIP() << "needs 2 NVIDIA GPUs";
  auto server = RendezvousServer::start("127.0.0.1", 0);
  ASSERT_TRUE(server.isOk()) << server.message();
  const uint16_t port = (*server)->port();
  auto outcomes = llmir::runtime::testing::runRanks(2, [&](int rank) -> Status {
    auto rt = joinNccl(rank, 2, port, "nccl-stream-test", 60s);
    if (!rt)
      return rt.status();
    auto group = (*rt)->createGroup({0, 1});
    if (!group)
      return group.status();
    cudaStream_t stream = nullptr;
    LLMIR_RETURN_IF_ERROR(
        check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream"));
    const size_t n = 4096 * 8; // a decode step's rows at TP=2, batch 8
    float *device = nullptr, *gathered = nullptr;
    LLMIR_RETURN_IF_ERROR(check(cudaMalloc(&device, n * sizeof(float)), "malloc"));
    LLMIR_RETURN_IF_ERROR(check(cudaMalloc(&gathered, 2 * n * sizeof(float)), "malloc"));
    // The graph: all-reduce in place, then all-gather the sums.
    LLMIR_RETURN_IF_ERROR(check(
        cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture"));
    Status enqueued = (*rt)->allReduceOn(stream, device, n, DataType::F32, ReduceOp::Sum, *group);
    if (enqueued.isOk())
      enqueued = (*rt)->allGatherOn(stream, device, gathered, n, DataType::F32, *group);
    cudaGraph_t graph = nullptr;
    LLMIR_RETURN_IF_ERROR(check(cudaStreamEndCapture(stream, &graph), "end capture"));
    LLMIR_RETURN_IF_ERROR(enqueued);
    cudaGraphExec_t exec = nullptr;
    LLMIR_RETURN_IF_ERROR(check(cudaGraphInstantiate(&exec, graph, 0), "instantiate"));
    std::vector<float> host(n), back(2 * n);
    for (int replay = 0; replay < 50; ++replay) {
      for (size_t i = 0; i < n; ++i)
        host[i] = static_cast<float>((rank + 1) * (replay + 1)) + static_cast<float>(i % 7);
      LLMIR_RETURN_IF_ERROR(check(cudaMemcpyAsync(device, host.data(), n * sizeof(float),
                                                  cudaMemcpyHostToDevice, stream),
                                  "h2d"));
      LLMIR_RETURN_IF_ERROR(check(cudaGraphLaunch(exec, stream), "graph launch"));
      LLMIR_RETURN_IF_ERROR(check(cudaMemcpyAsync(back.data(), gathered, 2 * n * sizeof(float),
                                                  cudaMemcpyDeviceToHost, stream),
                                  "d2h"));
      LLMIR_RETURN_IF_ERROR((*rt)->synchronize(stream, {&*group}));
      for (size_t i = 0; i < 2 * n; ++i) {
        const float want = static_cast<float>(3 * (replay + 1)) + 2.0f * static_cast<float>((i % n) % 7);
        if (back[i] != want)
          return Status::error("replay " + std::to_string(replay) + " element " +
                               std::to_string(i) + ": " + std::to_string(back[i]) +
                               " != " + std::to_string(want));
      }
    }
    // A stream-ordered transfer, then a blocking broadcast on the world
    // communicator that carried it.
    float value = rank == 0 ? 7.5f : 0.0f;
    LLMIR_RETURN_IF_ERROR(check(cudaMemcpyAsync(device, &value, sizeof(float),
                                                cudaMemcpyHostToDevice, stream),
                                "h2d"));
    LLMIR_RETURN_IF_ERROR(rank == 0 ? (*rt)->sendOn(stream, device, sizeof(float), 1)
                                    : (*rt)->recvOn(stream, device, sizeof(float), 0));
    int32_t token = rank == 0 ? 99 : -1;
    LLMIR_RETURN_IF_ERROR((*rt)->broadcast(&token, 1, DataType::I32, 0, (*rt)->world()));
    LLMIR_RETURN_IF_ERROR(check(cudaMemcpyAsync(&value, device, sizeof(float),
                                                cudaMemcpyDeviceToHost, stream),
                                "d2h"));
    LLMIR_RETURN_IF_ERROR((*rt)->synchronize(stream, {}));
    if (value != 7.5f || token != 99)
      return Status::error("transfer gave " + std::to_string(value) + ", broadcast " +
                           std::to_string(token));
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaFree(device);
    cudaFree(gathered);
    cudaStreamDestroy(stream);
    return Status::ok();
  });
  for (size_t r = 0; r < outcomes.size(); ++r)
    EXPECT_TRUE(outcomes[r].ok) << "rank " << r << ": " << outcomes[r].message;
}

/// A peer that dies with a stream-ordered all-reduce pending: the survivor's
/// wait fails within the timeout, naming it, instead of hanging.
TEST(NcclRuntimeTest, AWaitOnACollectiveOfADeadPeerFailsInsteadOfHanging) {
  if (runtime::visibleNvidiaGpus() < 2)
    GTEST_SKIP() << "needs 2 NVIDIA GPUs";
  auto server = RendezvousServer::start("127.0.0.1", 0);
  ASSERT_TRUE(server.isOk()) << server.message();
  const uint16_t port = (*server)->port();
  auto outcomes = llmir::runtime::testing::runRanks(2, [&](int rank) -> Status {
    auto rt = joinNccl(rank, 2, port, "nccl-dead-peer-test", 3s);
    if (!rt)
      return rt.status();
    LLMIR_RETURN_IF_ERROR((*rt)->barrier());
    if (rank == 1)
      std::_Exit(0); // dies without joining the all-reduce
    cudaStream_t stream = nullptr;
    LLMIR_RETURN_IF_ERROR(
        check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream"));
    float *device = nullptr;
    LLMIR_RETURN_IF_ERROR(check(cudaMalloc(&device, 1024 * sizeof(float)), "malloc"));
    LLMIR_RETURN_IF_ERROR(
        (*rt)->allReduceOn(stream, device, 1024, DataType::F32, ReduceOp::Sum, (*rt)->world()));
    const auto started = std::chrono::steady_clock::now();
    Status waited = (*rt)->synchronize(stream, {});
    const auto took = std::chrono::steady_clock::now() - started;
    if (waited.isOk())
      return Status::error("the wait succeeded without the peer");
    if (took > 30s)
      return Status::error("the wait took " +
                           std::to_string(std::chrono::duration_cast<std::chrono::seconds>(took).count()) +
                           " s");
    // The group is given up: later operations fail at once with the cause.
    Status later = (*rt)->barrier();
    if (later.isOk() || later.message().find("unusable") == std::string::npos)
      return Status::error("after the failed wait: " + later.message());
    return Status::ok();
  }, 90s);
  ASSERT_EQ(outcomes.size(), 2u);
  EXPECT_TRUE(outcomes[0].ok) << "rank 0: " << outcomes[0].message;
}

} // namespace

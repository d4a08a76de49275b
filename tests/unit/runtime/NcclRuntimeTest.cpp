// DistributedRuntime over NCCL between real processes, one GPU per rank.
// Skips where no NVIDIA GPU is visible (CI).
#include "RankProcesses.h"

#include "llmir/runtime/DistributedRuntime.h"
#include "llmir/runtime/RendezvousStore.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <filesystem>

using namespace llmir;
using namespace llmir::runtime;
using namespace std::chrono_literals;

namespace {

/// Counted without touching CUDA: a parent that initialised CUDA could not
/// use it in forked ranks.
int visibleGpus() {
  std::error_code ec;
  int count = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/driver/nvidia/gpus", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    ++count;
  return count;
}

Status check(cudaError_t e, const char *what) {
  return e == cudaSuccess ? Status::ok()
                          : Status::error(std::string(what) + ": " +
                                          cudaGetErrorString(e));
}

TEST(NcclRuntimeTest, CollectivesAndSendRecvOnDeviceBuffers) {
  const int world = std::min(visibleGpus(), 2);
  if (world == 0)
    GTEST_SKIP() << "no NVIDIA GPU visible";
  auto server = RendezvousServer::start("127.0.0.1", 0);
  ASSERT_TRUE(server.isOk()) << server.message();
  const uint16_t port = (*server)->port();

  auto outcomes = llmir::runtime::testing::runRanks(world, [&](int rank) -> Status {
    RuntimeConfig config;
    config.worldSize = world;
    config.rank = rank;
    config.storePort = port;
    config.backend = "nccl";
    config.timeout = 60s;
    config.storePrefix = "nccl-test";
    auto rt = DistributedRuntime::init(config);
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

} // namespace

// llmir-allreduce-bench: small f32 sum all-reduces between the GPUs of one
// host, one process per GPU (as the shard workers run), at the sizes of
// tensor-parallel decode (4096 floats per token of an 8B model, batch 1, 8,
// 32, 64) and 8 KiB..8 MiB. Microseconds per all-reduce:
//
//   nccl+sync     DistributedRuntime::allReduce: enqueue, then wait for the
//                 stream (the engine's path before stream-ordered collectives)
//   nccl eager    ncclAllReduce back to back on one stream
//   nccl graph    ncclAllReduce captured 10 times in a CUDA graph, replayed
//   1-shot eager  IpcAllReduce one-shot back to back
//   1-shot graph  IpcAllReduce one-shot in a replayed graph
//   2-shot graph  IpcAllReduce two-shot in a replayed graph
//
// Back-to-back and graph times are the total over many calls divided by the
// calls (one host synchronisation at the end), as nccl-tests measures.
//
//   llmir-allreduce-bench [--ranks N (default: every visible GPU, at most 8)]
//                         [--iters N (default 200)]
#include "llmir/net/Config.h"
#include "llmir/runtime/DistributedRuntime.h"
#include "llmir/runtime/IpcAllReduce.h"
#include "llmir/runtime/LocalLauncher.h"
#include "llmir/runtime/RendezvousStore.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <vector>

namespace {

using namespace llmir;
using namespace std::chrono_literals;

constexpr size_t kMaxBytes = 8u << 20;
constexpr int kOpsPerGraph = 10;

[[noreturn]] void fail(const std::string &why) {
  std::fprintf(stderr, "llmir-allreduce-bench: %s\n", why.c_str());
  std::exit(1);
}

Status check(cudaError_t e, const char *what) {
  return e == cudaSuccess ? Status::ok()
                          : Status::error(std::string(what) + ": " + cudaGetErrorString(e));
}

Status check(ncclResult_t r, const char *what) {
  return r == ncclSuccess ? Status::ok()
                          : Status::error(std::string(what) + ": " + ncclGetErrorString(r));
}


/// The message sizes in bytes: the model's rows and powers of two.
std::vector<std::pair<size_t, std::string>> messageSizes() {
  std::set<size_t> bytes;
  std::vector<std::pair<size_t, std::string>> out;
  for (int batch : {1, 8, 32, 64})
    bytes.insert(size_t(4096) * 4 * batch);
  for (size_t b = 8u << 10; b <= kMaxBytes; b *= 2)
    bytes.insert(b);
  for (size_t b : bytes) {
    std::string label;
    for (int batch : {1, 8, 32, 64})
      if (b == size_t(4096) * 4 * batch)
        label = "4096 x " + std::to_string(batch);
    out.emplace_back(b, label);
  }
  return out;
}

class Rank {
public:
  Rank(int rank, int ranks, int iters) : rank_(rank), ranks_(ranks), iters_(iters) {}
  ~Rank() {
    if (comm_)
      ncclCommDestroy(comm_);
    if (buffer_)
      cudaFree(buffer_);
    if (stream_)
      cudaStreamDestroy(stream_);
  }

  Status run(uint16_t port) {
    setenv("NCCL_NVLS_ENABLE", "0", 0); // the lent machines need multicast off
    LLMIR_RETURN_IF_ERROR(check(cudaSetDevice(rank_), "cudaSetDevice"));
    runtime::RuntimeConfig config;
    config.worldSize = ranks_;
    config.rank = rank_;
    config.storePort = port;
    config.backend = "nccl";
    config.timeout = 60s;
    config.storePrefix = "allreduce-bench";
    config.cudaDevice = rank_;
    auto rt = runtime::DistributedRuntime::init(config);
    if (!rt)
      return rt.status();
    runtime_ = std::move(rt).value();
    runtime::IpcAllReduceOptions options;
    options.maxBytes = kMaxBytes;
    auto ipc = runtime_->createIpcAllReduce(runtime_->world(), options);
    if (ipc)
      ipc_ = std::move(ipc).value();
    else if (rank_ == 0)
      std::printf("IpcAllReduce unavailable (its columns stay empty): %s\n", ipc.message().c_str());
    LLMIR_RETURN_IF_ERROR(connectNccl(port));
    LLMIR_RETURN_IF_ERROR(check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream"));
    LLMIR_RETURN_IF_ERROR(check(cudaMalloc(&buffer_, kMaxBytes), "cudaMalloc"));
    LLMIR_RETURN_IF_ERROR(check(cudaMemset(buffer_, 0, kMaxBytes), "cudaMemset"));
    LLMIR_RETURN_IF_ERROR(check(cudaDeviceSynchronize(), "sync"));

    if (ipc_)
      LLMIR_RETURN_IF_ERROR(checkIpcSums());

    if (rank_ == 0) {
      int nccl = 0;
      ncclGetVersion(&nccl);
      cudaDeviceProp prop{};
      cudaGetDeviceProperties(&prop, 0);
      std::printf("f32 sum all-reduce, %d processes, one %s each, NCCL %d; us per all-reduce\n",
                  ranks_, prop.name, nccl);
      std::printf("%10s %-10s %10s %10s %10s %12s %12s %12s\n", "bytes", "(tokens)", "nccl+sync",
                  "nccl eager", "nccl graph", "1-shot eager", "1-shot graph", "2-shot graph");
    }
    for (auto &[bytes, label] : messageSizes()) {
      const size_t count = bytes / sizeof(float);
      double syncUs = 0, eagerUs = 0, graphUs = 0, oneEagerUs = -1, oneGraphUs = -1, twoGraphUs = -1;
      LLMIR_RETURN_IF_ERROR(timeSynchronous(count, syncUs));
      auto nccl = [&] {
        return check(ncclAllReduce(buffer_, buffer_, count, ncclFloat32, ncclSum, comm_, stream_),
                     "ncclAllReduce");
      };
      LLMIR_RETURN_IF_ERROR(timeEager(nccl, eagerUs));
      LLMIR_RETURN_IF_ERROR(timeGraph(nccl, graphUs));
      if (ipc_ && ipc_->handles(count)) {
        auto oneShot = [&] {
          return ipc_->allReduceSum(buffer_, count, stream_,
                                    runtime::IpcAllReduceAlgorithm::OneShot);
        };
        auto twoShot = [&] {
          return ipc_->allReduceSum(buffer_, count, stream_,
                                    runtime::IpcAllReduceAlgorithm::TwoShot);
        };
        LLMIR_RETURN_IF_ERROR(timeEager(oneShot, oneEagerUs));
        LLMIR_RETURN_IF_ERROR(timeGraph(oneShot, oneGraphUs));
        LLMIR_RETURN_IF_ERROR(timeGraph(twoShot, twoGraphUs));
        LLMIR_RETURN_IF_ERROR(ipc_->lastDeviceError());
      }
      if (rank_ == 0) {
        auto cell = [](double us, int width) {
          char text[32];
          if (us < 0)
            std::snprintf(text, sizeof(text), "%*s", width, "-");
          else
            std::snprintf(text, sizeof(text), "%*.1f", width, us);
          return std::string(text);
        };
        std::printf("%10zu %-10s %s %s %s %s %s %s\n", bytes, label.c_str(),
                    cell(syncUs, 10).c_str(), cell(eagerUs, 10).c_str(), cell(graphUs, 10).c_str(),
                    cell(oneEagerUs, 12).c_str(), cell(oneGraphUs, 12).c_str(),
                    cell(twoGraphUs, 12).c_str());
        std::fflush(stdout);
      }
    }
    // Nobody frees its IPC buffer while a peer may still read it.
    return runtime_->barrier();
  }

private:
  Status connectNccl(uint16_t port) {
    auto store = runtime::RendezvousClient::connect("127.0.0.1", port, 60s);
    if (!store)
      return store.status();
    ncclUniqueId id;
    if (rank_ == 0) {
      LLMIR_RETURN_IF_ERROR(check(ncclGetUniqueId(&id), "ncclGetUniqueId"));
      LLMIR_RETURN_IF_ERROR((*store)->set(
          "allreduce-bench/raw-nccl-id",
          std::vector<char>(id.internal, id.internal + sizeof(id.internal))));
    } else {
      auto bytes = (*store)->get("allreduce-bench/raw-nccl-id", 60s);
      if (!bytes)
        return bytes.status();
      if (bytes->size() != sizeof(id.internal))
        return Status::error("NCCL id of the wrong size");
      std::memcpy(id.internal, bytes->data(), sizeof(id.internal));
    }
    return check(ncclCommInitRank(&comm_, ranks_, id, rank_), "ncclCommInitRank");
  }

  /// Times of a wrong kernel mean nothing: one-shot and two-shot must give
  /// the exact sums of small integers first (runtime_ipc_allreduce_test
  /// checks them thoroughly).
  Status checkIpcSums() {
    const size_t count = 4096 * 8 + 3;
    for (auto algorithm : {runtime::IpcAllReduceAlgorithm::OneShot,
                           runtime::IpcAllReduceAlgorithm::TwoShot}) {
      std::vector<float> values(count);
      for (size_t i = 0; i < count; ++i)
        values[i] = float((i % 100) * (rank_ + 1));
      LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(buffer_, values.data(), count * sizeof(float),
                                             cudaMemcpyHostToDevice), "upload"));
      LLMIR_RETURN_IF_ERROR(ipc_->allReduceSum(buffer_, count, stream_, algorithm));
      LLMIR_RETURN_IF_ERROR(check(cudaStreamSynchronize(stream_), "check"));
      LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(values.data(), buffer_, count * sizeof(float),
                                             cudaMemcpyDeviceToHost), "download"));
      const float ranksSum = float(ranks_ * (ranks_ + 1) / 2);
      for (size_t i = 0; i < count; ++i)
        if (values[i] != float(i % 100) * ranksSum)
          return Status::error(std::string(runtime::ipcAllReduceAlgorithmName(algorithm)) +
                               " gave " + std::to_string(values[i]) + " at element " +
                               std::to_string(i) + ", expected " +
                               std::to_string(float(i % 100) * ranksSum));
    }
    LLMIR_RETURN_IF_ERROR(check(cudaMemset(buffer_, 0, kMaxBytes), "cudaMemset"));
    return check(cudaDeviceSynchronize(), "sync");
  }

  /// The ranks start each measurement together.
  Status together() { return runtime_->barrier(); }

  Status timeSynchronous(size_t count, double &us) {
    for (int i = 0; i < 5; ++i)
      LLMIR_RETURN_IF_ERROR(runtime_->allReduce(buffer_, count, runtime::DataType::F32,
                                                runtime::ReduceOp::Sum, runtime_->world()));
    LLMIR_RETURN_IF_ERROR(together());
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < iters_; ++i)
      LLMIR_RETURN_IF_ERROR(runtime_->allReduce(buffer_, count, runtime::DataType::F32,
                                                runtime::ReduceOp::Sum, runtime_->world()));
    us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
             .count() / iters_;
    return Status::ok();
  }

  Status timeEager(const std::function<Status()> &op, double &us) {
    for (int i = 0; i < 5; ++i)
      LLMIR_RETURN_IF_ERROR(op());
    LLMIR_RETURN_IF_ERROR(check(cudaStreamSynchronize(stream_), "warm-up"));
    LLMIR_RETURN_IF_ERROR(together());
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < iters_; ++i)
      LLMIR_RETURN_IF_ERROR(op());
    LLMIR_RETURN_IF_ERROR(check(cudaStreamSynchronize(stream_), "eager calls"));
    us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
             .count() / iters_;
    return Status::ok();
  }

  Status timeGraph(const std::function<Status()> &op, double &us) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    LLMIR_RETURN_IF_ERROR(
        check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "capture"));
    Status captured = Status::ok();
    for (int i = 0; i < kOpsPerGraph && captured.isOk(); ++i)
      captured = op();
    LLMIR_RETURN_IF_ERROR(check(cudaStreamEndCapture(stream_, &graph), "end capture"));
    LLMIR_RETURN_IF_ERROR(captured);
    LLMIR_RETURN_IF_ERROR(check(cudaGraphInstantiate(&exec, graph, 0), "instantiate"));
    const int replays = std::max(1, iters_ / kOpsPerGraph);
    Status status = [&]() -> Status {
      for (int i = 0; i < 2; ++i)
        LLMIR_RETURN_IF_ERROR(check(cudaGraphLaunch(exec, stream_), "replay"));
      LLMIR_RETURN_IF_ERROR(check(cudaStreamSynchronize(stream_), "warm-up"));
      LLMIR_RETURN_IF_ERROR(together());
      auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < replays; ++i)
        LLMIR_RETURN_IF_ERROR(check(cudaGraphLaunch(exec, stream_), "replay"));
      LLMIR_RETURN_IF_ERROR(check(cudaStreamSynchronize(stream_), "replays"));
      us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
               .count() / (replays * kOpsPerGraph);
      return Status::ok();
    }();
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    return status;
  }

  int rank_, ranks_, iters_;
  std::unique_ptr<runtime::DistributedRuntime> runtime_;
  std::unique_ptr<runtime::IpcAllReduce> ipc_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  float *buffer_ = nullptr;
};

} // namespace

int main(int argc, char **argv) {
  int ranks = std::min(runtime::visibleNvidiaGpus(), llmir::runtime::kIpcAllReduceMaxRanks);
  int iters = 200;
  int workerRank = -1;
  uint16_t port = 0;
  net::Config config("llmir-allreduce-bench");
  config.add("ranks", &ranks, "processes, one GPU each (default: the visible GPUs, at most 8)");
  config.add("iters", &iters, "all-reduces timed per size and path");
  config.add("worker-rank", &workerRank, "internal: one rank");
  config.add("store-port", &port, "internal: the launcher's rendezvous store");
  config.loadOrExit(argc, argv);
  if (iters < kOpsPerGraph)
    fail("--iters must be >= " + std::to_string(kOpsPerGraph));
  if (workerRank >= 0) {
    Rank rank(workerRank, ranks, iters);
    Status status = rank.run(port);
    if (!status.isOk())
      fail("rank " + std::to_string(workerRank) + ": " + status.message());
    return 0;
  }
  if (ranks < 2 || ranks > llmir::runtime::kIpcAllReduceMaxRanks)
    fail("needs 2 to 8 ranks, one GPU each; " + std::to_string(runtime::visibleNvidiaGpus()) +
         " GPU(s) visible, --ranks " + std::to_string(ranks));

  auto server = runtime::RendezvousServer::start("127.0.0.1", 0);
  if (!server)
    fail(server.message());
  runtime::LaunchOptions launch;
  launch.worldSize = ranks;
  launch.stdoutRank = 0;
  launch.argsOf = [&](int rank) {
    return std::vector<std::string>{argv[0], "--ranks", std::to_string(ranks), "--iters",
                                    std::to_string(iters), "--worker-rank", std::to_string(rank),
                                    "--store-port", std::to_string((*server)->port())};
  };
  if (Status s = runtime::launchLocalRanks(launch); !s.isOk())
    fail(s.message());
  return 0;
}

// IpcAllReduce between real processes, one GPU per rank (label multi_gpu):
// one-shot, two-shot and the automatic choice, eagerly and inside a CUDA
// graph replayed 100 times with new inputs and no host synchronisation in
// between, against NCCL's all-reduce (DistributedRuntime over nccl) and
// against the same sums computed on the host in rank order, which the
// device must match bit for bit (so every rank holds the same bits). Skips
// when fewer than 2 GPUs are visible (CI) or the GPUs have no peer access.
#include "RankProcesses.h"

#include "llmir/runtime/DistributedRuntime.h"
#include "llmir/runtime/IpcAllReduce.h"
#include "llmir/runtime/LocalLauncher.h"
#include "llmir/runtime/RendezvousStore.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

using namespace llmir;
using namespace llmir::runtime;
using namespace std::chrono_literals;

namespace {

constexpr const char *kSkip = "SKIP: ";


Status check(cudaError_t e, const std::string &what) {
  return e == cudaSuccess ? Status::ok()
                          : Status::error(what + ": " + cudaGetErrorString(e));
}

/// Rank `rank`'s input element i for test case `seed`: mixed signs and
/// exponents, so that sums round and their order matters.
float inputValue(int rank, uint64_t seed, size_t i) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + uint64_t(rank) * 0xBF58476D1CE4E5B9ull +
               i * 0x94D049BB133111EBull;
  x ^= x >> 31;
  x *= 0xD6E8FEB86659FD93ull;
  x ^= x >> 32;
  const float unit = float(x & 0xFFFFFF) / float(1 << 24) * 2.0f - 1.0f; // [-1, 1)
  return std::ldexp(unit, int((x >> 24) % 9) - 4);
}

std::vector<float> inputs(int rank, uint64_t seed, size_t count) {
  std::vector<float> v(count);
  for (size_t i = 0; i < count; ++i)
    v[i] = inputValue(rank, seed, i);
  return v;
}

/// The sums in rank order 0..n-1, as the kernels add them.
std::vector<float> rankOrderSum(int ranks, uint64_t seed, size_t count) {
  std::vector<float> sum = inputs(0, seed, count);
  for (int p = 1; p < ranks; ++p)
    for (size_t i = 0; i < count; ++i)
      sum[i] += inputValue(p, seed, i);
  return sum;
}

/// `got` must equal `want` bit for bit; names the first difference.
Status bitEqual(const std::vector<float> &got, const std::vector<float> &want,
                const std::string &what) {
  for (size_t i = 0; i < want.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0)
      return Status::error(what + ": element " + std::to_string(i) + " is " +
                           std::to_string(got[i]) + ", the rank-order sum " +
                           std::to_string(want[i]));
  return Status::ok();
}

uint64_t fnv1a(const std::vector<float> &v) {
  uint64_t h = 1469598103934665603ull;
  const unsigned char *p = reinterpret_cast<const unsigned char *>(v.data());
  for (size_t i = 0; i < v.size() * sizeof(float); ++i)
    h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

struct Case {
  size_t count;
  size_t offset; // floats from a 256-byte aligned allocation: 1 = unaligned
  std::optional<IpcAllReduceAlgorithm> algorithm; // unset: the automatic choice
};

std::string describe(const Case &c) {
  return std::to_string(c.count) + " floats at offset " + std::to_string(c.offset) + ", " +
         (c.algorithm ? ipcAllReduceAlgorithmName(*c.algorithm) : "automatic");
}

/// The per-rank setup shared by the tests: runtime over NCCL on GPU `rank`,
/// an IpcAllReduce over the world, a stream.
struct RankSetup {
  std::unique_ptr<DistributedRuntime> runtime;
  std::unique_ptr<IpcAllReduce> ipc;
  cudaStream_t stream = nullptr;
  ~RankSetup() {
    if (stream)
      cudaStreamDestroy(stream);
  }
};

Status setUpRank(RankSetup &s, int rank, int world, uint16_t port) {
  setenv("NCCL_NVLS_ENABLE", "0", 0); // the lent machines need multicast off
  LLMIR_RETURN_IF_ERROR(check(cudaSetDevice(rank), "cudaSetDevice"));
  RuntimeConfig config;
  config.worldSize = world;
  config.rank = rank;
  config.storePort = port;
  config.backend = "nccl";
  config.timeout = 60s;
  config.storePrefix = "ipc-test";
  config.cudaDevice = rank;
  auto rt = DistributedRuntime::init(config);
  if (!rt)
    return rt.status();
  s.runtime = std::move(rt).value();
  auto ipc = s.runtime->createIpcAllReduce(s.runtime->world());
  if (!ipc) {
    if (ipc.message().find("no peer-to-peer access") != std::string::npos)
      return Status::error(kSkip + ipc.message());
    return ipc.status();
  }
  s.ipc = std::move(ipc).value();
  if (s.ipc->device() != rank)
    return Status::error("IpcAllReduce on device " + std::to_string(s.ipc->device()));
  return check(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), "stream");
}

/// Runs `body` on `world` forked ranks; fails the test with each rank's
/// error, or skips when every rank says why it cannot run.
void expectRanksPass(int world, const std::function<Status(int)> &body) {
  auto outcomes = llmir::runtime::testing::runRanks(world, body, 240s);
  bool allSkip = true;
  for (auto &o : outcomes)
    allSkip = allSkip && !o.ok && o.message.rfind(kSkip, 0) == 0;
  if (allSkip)
    GTEST_SKIP() << outcomes[0].message;
  for (size_t r = 0; r < outcomes.size(); ++r)
    EXPECT_TRUE(outcomes[r].ok) << "rank " << r << ": " << outcomes[r].message;
}

int testWorld() { return std::min(runtime::visibleNvidiaGpus(), kIpcAllReduceMaxRanks); }

class IpcAllReduceTest : public ::testing::Test {
protected:
  void SetUp() override {
    world_ = testWorld();
    if (world_ < 2)
      GTEST_SKIP() << "needs 2 or more GPUs; " << world_ << " visible";
    auto server = RendezvousServer::start("127.0.0.1", 0);
    ASSERT_TRUE(server.isOk()) << server.message();
    server_ = std::move(server).value();
  }
  int world_ = 0;
  std::unique_ptr<RendezvousServer> server_;
};

TEST_F(IpcAllReduceTest, EagerCallsMatchNcclAndTheRankOrderSumBitForBit) {
  const int world = world_;
  const uint16_t port = server_->port();
  expectRanksPass(world, [&](int rank) -> Status {
    RankSetup s;
    LLMIR_RETURN_IF_ERROR(setUpRank(s, rank, world, port));
    std::vector<Case> cases;
    for (size_t count : {size_t(1), size_t(7), size_t(1023), size_t(1024), size_t(4096),
                         size_t(4097), size_t(4096 * 8), size_t(4096 * 64),
                         size_t(4096 * 64 + 3), size_t(100003)})
      for (size_t offset : {size_t(0), size_t(1)})
        for (auto algorithm : {std::optional<IpcAllReduceAlgorithm>(),
                               std::optional(IpcAllReduceAlgorithm::OneShot),
                               std::optional(IpcAllReduceAlgorithm::TwoShot)})
          cases.push_back({count, offset, algorithm});
    const size_t capacity = 4096 * 64 + 3 + 8;
    float *ipcBuffer = nullptr, *ncclBuffer = nullptr;
    LLMIR_RETURN_IF_ERROR(check(cudaMalloc(&ipcBuffer, capacity * sizeof(float)), "malloc"));
    LLMIR_RETURN_IF_ERROR(check(cudaMalloc(&ncclBuffer, capacity * sizeof(float)), "malloc"));
    const float sentinel = 12345.0f;
    std::vector<float> guard(capacity, sentinel);
    for (size_t k = 0; k < cases.size(); ++k) {
      const Case &c = cases[k];
      const std::string what = describe(c);
      const uint64_t seed = 1000 + k;
      const std::vector<float> in = inputs(rank, seed, c.count);
      // Sentinels around the message catch a store past either end.
      LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(ipcBuffer, guard.data(), capacity * sizeof(float),
                                             cudaMemcpyHostToDevice), "guard"));
      LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(ipcBuffer + c.offset, in.data(),
                                             c.count * sizeof(float), cudaMemcpyHostToDevice),
                                  "upload"));
      LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(ncclBuffer, in.data(), c.count * sizeof(float),
                                             cudaMemcpyHostToDevice), "upload"));
      Status reduced = c.algorithm ? s.ipc->allReduceSum(ipcBuffer + c.offset, c.count,
                                                         s.stream, *c.algorithm)
                                   : s.ipc->allReduceSum(ipcBuffer + c.offset, c.count, s.stream);
      LLMIR_RETURN_IF_ERROR(reduced.withContext(what));
      LLMIR_RETURN_IF_ERROR(check(cudaStreamSynchronize(s.stream), what));
      LLMIR_RETURN_IF_ERROR(s.runtime->allReduce(ncclBuffer, c.count, DataType::F32,
                                                 ReduceOp::Sum, s.runtime->world()));
      std::vector<float> all(capacity), nccl(c.count);
      LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(all.data(), ipcBuffer, capacity * sizeof(float),
                                             cudaMemcpyDeviceToHost), "download"));
      LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(nccl.data(), ncclBuffer, c.count * sizeof(float),
                                             cudaMemcpyDeviceToHost), "download"));
      for (size_t i = 0; i < capacity; ++i)
        if ((i < c.offset || i >= c.offset + c.count) && all[i] != sentinel)
          return Status::error(what + ": wrote element " + std::to_string(i) +
                               " outside the message");
      std::vector<float> got(all.begin() + c.offset, all.begin() + c.offset + c.count);
      LLMIR_RETURN_IF_ERROR(bitEqual(got, rankOrderSum(world, seed, c.count), what));
      // NCCL adds in its own order: equal within float rounding of the sum
      // of magnitudes (bit-equal with 2 ranks, where a + b is the only sum).
      for (size_t i = 0; i < c.count; ++i) {
        double magnitude = 0;
        for (int p = 0; p < world; ++p)
          magnitude += std::fabs(inputValue(p, seed, i));
        if (std::fabs(double(got[i]) - double(nccl[i])) > world * FLT_EPSILON * magnitude)
          return Status::error(what + ": element " + std::to_string(i) + " is " +
                               std::to_string(got[i]) + ", NCCL's " + std::to_string(nccl[i]));
      }
      // Every rank holds the same bits.
      int64_t mine = static_cast<int64_t>(fnv1a(got));
      std::vector<int64_t> everyone(world);
      LLMIR_RETURN_IF_ERROR(s.runtime->allGather(&mine, everyone.data(), 2, DataType::I32,
                                                 s.runtime->world()));
      for (int p = 0; p < world; ++p)
        if (everyone[p] != mine)
          return Status::error(what + ": rank " + std::to_string(p) +
                               " holds different bits than rank " + std::to_string(rank));
    }
    LLMIR_RETURN_IF_ERROR(s.ipc->lastDeviceError());
    cudaFree(ipcBuffer);
    cudaFree(ncclBuffer);
    return s.runtime->barrier(); // nobody frees its buffer while a peer reads it
  });
}

TEST_F(IpcAllReduceTest, AGraphReplayedWithNewInputsGivesEveryReplaysSums) {
  const int world = world_;
  const uint16_t port = server_->port();
  expectRanksPass(world, [&](int rank) -> Status {
    RankSetup s;
    LLMIR_RETURN_IF_ERROR(setUpRank(s, rank, world, port));
    // Four calls per replay: A one-shot, B (unaligned) two-shot, C with the
    // automatic choice, then A again two-shot (the sum of the sums), so
    // consecutive calls alternate buffer halves within and across replays.
    struct Slot {
      size_t count, offset;
      float *device = nullptr;
    };
    Slot a{4096, 0}, b{1023, 1}, c{4096 * 16 + 5, 0};
    for (Slot *slot : {&a, &b, &c})
      LLMIR_RETURN_IF_ERROR(check(
          cudaMalloc(&slot->device, (slot->count + slot->offset) * sizeof(float)), "malloc"));
    auto capture = [&]() -> Status {
      LLMIR_RETURN_IF_ERROR(s.ipc->allReduceSum(a.device, a.count, s.stream,
                                                IpcAllReduceAlgorithm::OneShot));
      LLMIR_RETURN_IF_ERROR(s.ipc->allReduceSum(b.device + b.offset, b.count, s.stream,
                                                IpcAllReduceAlgorithm::TwoShot));
      LLMIR_RETURN_IF_ERROR(s.ipc->allReduceSum(c.device, c.count, s.stream));
      return s.ipc->allReduceSum(a.device, a.count, s.stream, IpcAllReduceAlgorithm::TwoShot);
    };
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    LLMIR_RETURN_IF_ERROR(
        check(cudaStreamBeginCapture(s.stream, cudaStreamCaptureModeThreadLocal), "capture"));
    Status captured = capture();
    LLMIR_RETURN_IF_ERROR(check(cudaStreamEndCapture(s.stream, &graph), "end capture"));
    LLMIR_RETURN_IF_ERROR(captured.withContext("capturing"));
    LLMIR_RETURN_IF_ERROR(check(cudaGraphInstantiate(&exec, graph, 0), "instantiate"));

    // All replays queued at once from pinned memory: inputs in, graph, out.
    constexpr int kReplays = 100;
    const size_t perReplay = a.count + b.count + c.count;
    float *in = nullptr, *out = nullptr;
    LLMIR_RETURN_IF_ERROR(check(cudaMallocHost(&in, kReplays * perReplay * sizeof(float)), "pin"));
    LLMIR_RETURN_IF_ERROR(check(cudaMallocHost(&out, kReplays * perReplay * sizeof(float)), "pin"));
    auto seedOf = [](int replay, int slot) { return uint64_t(50000 + replay * 3 + slot); };
    for (int r = 0; r < kReplays; ++r) {
      float *dst = in + r * perReplay;
      int slotIndex = 0;
      for (Slot *slot : {&a, &b, &c}) {
        std::vector<float> v = inputs(rank, seedOf(r, slotIndex++), slot->count);
        std::memcpy(dst, v.data(), v.size() * sizeof(float));
        dst += slot->count;
      }
    }
    for (int r = 0; r < kReplays; ++r) {
      float *src = in + r * perReplay, *dst = out + r * perReplay;
      for (Slot *slot : {&a, &b, &c}) {
        LLMIR_RETURN_IF_ERROR(check(cudaMemcpyAsync(slot->device + slot->offset, src,
                                                    slot->count * sizeof(float),
                                                    cudaMemcpyHostToDevice, s.stream),
                                    "upload"));
        src += slot->count;
      }
      LLMIR_RETURN_IF_ERROR(check(cudaGraphLaunch(exec, s.stream), "replay"));
      for (Slot *slot : {&a, &b, &c}) {
        LLMIR_RETURN_IF_ERROR(check(cudaMemcpyAsync(dst, slot->device + slot->offset,
                                                    slot->count * sizeof(float),
                                                    cudaMemcpyDeviceToHost, s.stream),
                                    "download"));
        dst += slot->count;
      }
    }
    LLMIR_RETURN_IF_ERROR(check(cudaStreamSynchronize(s.stream), "replays"));
    LLMIR_RETURN_IF_ERROR(s.ipc->lastDeviceError());
    for (int r = 0; r < kReplays; ++r) {
      const float *got = out + r * perReplay;
      int slotIndex = 0;
      for (Slot *slot : {&a, &b, &c}) {
        std::vector<float> want = rankOrderSum(world, seedOf(r, slotIndex), slot->count);
        if (slot == &a) // reduced twice: every rank then adds the same sum
          for (float &v : want) {
            const float once = v;
            for (int p = 1; p < world; ++p)
              v += once;
          }
        LLMIR_RETURN_IF_ERROR(bitEqual(std::vector<float>(got, got + slot->count), want,
                                       "replay " + std::to_string(r) + ", slot " +
                                           std::to_string(slotIndex)));
        got += slot->count;
        ++slotIndex;
      }
    }

    // Eager calls continue the same epochs after the replays.
    std::vector<float> eager = inputs(rank, 7, a.count);
    LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(a.device, eager.data(), a.count * sizeof(float),
                                           cudaMemcpyHostToDevice), "upload"));
    LLMIR_RETURN_IF_ERROR(s.ipc->allReduceSum(a.device, a.count, s.stream));
    LLMIR_RETURN_IF_ERROR(check(cudaStreamSynchronize(s.stream), "eager after replays"));
    LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(eager.data(), a.device, a.count * sizeof(float),
                                           cudaMemcpyDeviceToHost), "download"));
    LLMIR_RETURN_IF_ERROR(bitEqual(eager, rankOrderSum(world, 7, a.count), "eager after replays"));

    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaFreeHost(in);
    cudaFreeHost(out);
    for (Slot *slot : {&a, &b, &c})
      cudaFree(slot->device);
    return s.runtime->barrier();
  });
}

/// The host's fused add + RMS norm of one row, as the engine's kernels do
/// it (sum of squares in double; the device's order of that sum differs, so
/// normed values are compared within a few float roundings).
void addRmsNormOnHost(const std::vector<float> &reduced, const std::vector<float> &residual,
                      const std::vector<float> &weight, size_t rows, size_t width, float eps,
                      std::vector<float> &sum, std::vector<float> &normed) {
  sum.assign(rows * width, 0.f);
  normed.assign(rows * width, 0.f);
  for (size_t r = 0; r < rows; ++r) {
    double squares = 0;
    for (size_t i = 0; i < width; ++i) {
      const float h = reduced[r * width + i] + residual[r * width + i];
      sum[r * width + i] = h;
      squares += double(h) * h;
    }
    const float scale = 1.0f / std::sqrt(float(squares / double(width)) + eps);
    for (size_t i = 0; i < width; ++i)
      normed[r * width + i] = weight[i] * (sum[r * width + i] * scale);
  }
}

TEST_F(IpcAllReduceTest, FusedAddRmsNormGivesTheSumsBitForBitEagerAndInAGraph) {
  const int world = world_;
  const uint16_t port = server_->port();
  expectRanksPass(world, [&](int rank) -> Status {
    RankSetup s;
    LLMIR_RETURN_IF_ERROR(setUpRank(s, rank, world, port));
    const float eps = 1e-5f;
    struct Shape {
      size_t rows, width;
    };
    // Decode rows of 1.1B- and 8B-shaped models, the widest row, more rows
    // than blocks (33 x 1024, 64 x 4), a row of three float4s.
    const std::vector<Shape> shapes = {{1, 4096}, {3, 2048}, {8, 4096}, {1, 8192},
                                       {33, 1024}, {64, 4}, {1, 12}};
    const size_t capacity = 33 * 1024; // the largest shape
    float *partial, *residual, *sum, *normed, *weight, *plain;
    for (float **p : {&partial, &residual, &sum, &normed, &weight, &plain})
      LLMIR_RETURN_IF_ERROR(check(cudaMalloc(p, capacity * sizeof(float)), "malloc"));
    auto upload = [&](float *to, const std::vector<float> &v) {
      return check(cudaMemcpy(to, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice),
                   "upload");
    };
    auto download = [&](const float *from, size_t count) {
      std::vector<float> v(count);
      cudaMemcpy(v.data(), from, count * sizeof(float), cudaMemcpyDeviceToHost);
      return v;
    };
    // One fused call checked against the host: `seed` picks the inputs.
    auto expectCall = [&](const Shape &shape, uint64_t seed, const std::string &what,
                          const std::vector<float> &sumGot,
                          const std::vector<float> &normedGot) -> Status {
      const size_t count = shape.rows * shape.width;
      const std::vector<float> reduced = rankOrderSum(world, seed, count);
      const std::vector<float> res = inputs(100, seed, count), w = inputs(200, seed, shape.width);
      std::vector<float> sumWant, normedWant;
      addRmsNormOnHost(reduced, res, w, shape.rows, shape.width, eps, sumWant, normedWant);
      LLMIR_RETURN_IF_ERROR(bitEqual(sumGot, sumWant, what + ": sum"));
      for (size_t i = 0; i < count; ++i)
        if (std::fabs(normedGot[i] - normedWant[i]) > 4 * FLT_EPSILON * std::fabs(normedWant[i]))
          return Status::error(what + ": normed element " + std::to_string(i) + " is " +
                               std::to_string(normedGot[i]) + ", the host's " +
                               std::to_string(normedWant[i]));
      return Status::ok();
    };
    auto operands = [&](const Shape &shape) {
      engine::AllReduceAddRmsNorm op;
      op.partial = partial;
      op.residual = residual;
      op.sum = sum;
      op.weight = weight;
      op.normed = normed;
      op.rows = static_cast<int64_t>(shape.rows);
      op.width = static_cast<int64_t>(shape.width);
      op.eps = eps;
      return op;
    };
    auto uploadCase = [&](const Shape &shape, uint64_t seed) -> Status {
      const size_t count = shape.rows * shape.width;
      LLMIR_RETURN_IF_ERROR(upload(partial, inputs(rank, seed, count)));
      LLMIR_RETURN_IF_ERROR(upload(residual, inputs(100, seed, count)));
      return upload(weight, inputs(200, seed, shape.width));
    };

    // Eager, each fused call between plain all-reduces (pull and push calls
    // take alternate halves in one sequence).
    for (size_t k = 0; k < shapes.size(); ++k) {
      const Shape &shape = shapes[k];
      const std::string what = std::to_string(shape.rows) + " x " + std::to_string(shape.width);
      const uint64_t seed = 3000 + k;
      const size_t count = shape.rows * shape.width;
      if (!s.ipc->fusesAddRmsNorm(shape.rows, shape.width))
        return Status::error(what + ": refused");
      LLMIR_RETURN_IF_ERROR(uploadCase(shape, seed));
      LLMIR_RETURN_IF_ERROR(upload(plain, inputs(rank, seed + 77, 4096)));
      LLMIR_RETURN_IF_ERROR(s.ipc->allReduceSum(plain, 4096, s.stream));
      LLMIR_RETURN_IF_ERROR(s.ipc->allReduceAddRmsNorm(operands(shape), s.stream));
      LLMIR_RETURN_IF_ERROR(check(cudaStreamSynchronize(s.stream), what));
      LLMIR_RETURN_IF_ERROR(
          expectCall(shape, seed, what, download(sum, count), download(normed, count)));
      LLMIR_RETURN_IF_ERROR(bitEqual(download(partial, count), inputs(rank, seed, count),
                                     what + ": the partial sums (left as they were)"));
      LLMIR_RETURN_IF_ERROR(
          bitEqual(download(plain, 4096), rankOrderSum(world, seed + 77, 4096), what + ": plain"));
    }

    // In a graph with a plain all-reduce after it, replayed with new inputs.
    const Shape shape{1, 4096};
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    LLMIR_RETURN_IF_ERROR(
        check(cudaStreamBeginCapture(s.stream, cudaStreamCaptureModeThreadLocal), "capture"));
    Status captured = s.ipc->allReduceAddRmsNorm(operands(shape), s.stream);
    if (captured.isOk())
      captured = s.ipc->allReduceSum(plain, 4096, s.stream);
    LLMIR_RETURN_IF_ERROR(check(cudaStreamEndCapture(s.stream, &graph), "end capture"));
    LLMIR_RETURN_IF_ERROR(captured.withContext("capturing"));
    LLMIR_RETURN_IF_ERROR(check(cudaGraphInstantiate(&exec, graph, 0), "instantiate"));
    for (int replay = 0; replay < 20; ++replay) {
      const uint64_t seed = 9000 + replay;
      LLMIR_RETURN_IF_ERROR(uploadCase(shape, seed));
      LLMIR_RETURN_IF_ERROR(upload(plain, inputs(rank, seed + 77, 4096)));
      LLMIR_RETURN_IF_ERROR(check(cudaGraphLaunch(exec, s.stream), "replay"));
      LLMIR_RETURN_IF_ERROR(check(cudaStreamSynchronize(s.stream), "replay"));
      const std::string what = "replay " + std::to_string(replay);
      LLMIR_RETURN_IF_ERROR(
          expectCall(shape, seed, what, download(sum, 4096), download(normed, 4096)));
      LLMIR_RETURN_IF_ERROR(
          bitEqual(download(plain, 4096), rankOrderSum(world, seed + 77, 4096), what + ": plain"));
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);

    // Refused, on the host before any launch (every rank refuses alike, so
    // the group's call sequence stays in step): an unaligned operand, a row
    // past the widest.
    engine::AllReduceAddRmsNorm unaligned = operands(shape);
    unaligned.residual = residual + 1;
    if (s.ipc->allReduceAddRmsNorm(unaligned, s.stream).isOk())
      return Status::error("an unaligned residual was taken");
    if (s.ipc->fusesAddRmsNorm(1, kIpcAddRmsNormMaxWidth + 4) ||
        s.ipc->allReduceAddRmsNorm(operands({1, kIpcAddRmsNormMaxWidth + 4}), s.stream).isOk())
      return Status::error("a row past the widest was taken");
    LLMIR_RETURN_IF_ERROR(s.ipc->lastDeviceError());
    for (float *p : {partial, residual, sum, normed, weight, plain})
      cudaFree(p);
    return s.runtime->barrier();
  });
}

TEST_F(IpcAllReduceTest, MessagesOverTheBufferAreRefusedUntouched) {
  const int world = world_;
  const uint16_t port = server_->port();
  expectRanksPass(world, [&](int rank) -> Status {
    RankSetup s;
    LLMIR_RETURN_IF_ERROR(setUpRank(s, rank, world, port));
    const size_t limit = s.ipc->maxBytes() / sizeof(float);
    if (!s.ipc->handles(limit) || s.ipc->handles(limit + 1))
      return Status::error("handles() disagrees with maxBytes " +
                           std::to_string(s.ipc->maxBytes()));
    float *device = nullptr;
    LLMIR_RETURN_IF_ERROR(check(cudaMalloc(&device, 16 * sizeof(float)), "malloc"));
    std::vector<float> values(16, 3.0f);
    LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(device, values.data(), 64, cudaMemcpyHostToDevice),
                                "upload"));
    for (auto algorithm : {IpcAllReduceAlgorithm::OneShot, IpcAllReduceAlgorithm::TwoShot}) {
      Status refused = s.ipc->allReduceSum(device, limit + 1, s.stream, algorithm);
      if (refused.isOk() || refused.message().find("use NCCL") == std::string::npos)
        return Status::error("a message over the buffer was not refused: " + refused.message());
    }
    Status refused = s.ipc->allReduceSum(device, limit + 1, s.stream);
    if (refused.isOk())
      return Status::error("a message over the buffer was not refused");
    LLMIR_RETURN_IF_ERROR(check(cudaStreamSynchronize(s.stream), "sync"));
    LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(values.data(), device, 64, cudaMemcpyDeviceToHost),
                                "download"));
    for (float v : values)
      if (v != 3.0f)
        return Status::error("a refused call changed the buffer");
    // Still usable afterwards.
    LLMIR_RETURN_IF_ERROR(s.ipc->allReduceSum(device, 16, s.stream));
    LLMIR_RETURN_IF_ERROR(check(cudaStreamSynchronize(s.stream), "sync"));
    LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(values.data(), device, 64, cudaMemcpyDeviceToHost),
                                "download"));
    if (values[15] != 3.0f * world)
      return Status::error("sum after a refusal: " + std::to_string(values[15]));
    cudaFree(device);
    return s.runtime->barrier();
  });
}

TEST_F(IpcAllReduceTest, APeerThatNeverCallsIsNamedAfterTheTimeoutAndTheContextLives) {
  // Two ranks over the store only (no NCCL): rank 0 all-reduces, rank 1
  // does not. Rank 0's kernel must give up after its timeout and name rank
  // 1, its data untouched past its own copy-in; a second call queued behind
  // it must return at once instead of waiting out another timeout; and the
  // CUDA context must still work (it used to trap and lose it). Rank 1 stays
  // alive (its buffer mapped) until then.
  const uint16_t port = server_->port();
  expectRanksPass(2, [&](int rank) -> Status {
    LLMIR_RETURN_IF_ERROR(check(cudaSetDevice(rank), "cudaSetDevice"));
    auto store = RendezvousClient::connect("127.0.0.1", port, 30s);
    if (!store)
      return store.status();
    IpcAllReduceOptions options;
    options.timeout = 2s;
    auto ipc = IpcAllReduce::create(**store, "ipc-timeout/", rank, 2, options);
    if (!ipc)
      return ipc.message().find("no peer-to-peer access") != std::string::npos
                 ? Status::error(kSkip + ipc.message())
                 : ipc.status();
    if (rank == 1) {
      auto done = (*store)->get("rank0-done", 60s);
      return done ? Status::ok() : done.status();
    }
    float *device = nullptr;
    LLMIR_RETURN_IF_ERROR(check(cudaMalloc(&device, 64 * sizeof(float)), "malloc"));
    const auto start = std::chrono::steady_clock::now();
    LLMIR_RETURN_IF_ERROR((*ipc)->allReduceSum(device, 64, nullptr));
    LLMIR_RETURN_IF_ERROR((*ipc)->allReduceSum(device, 64, nullptr)); // queued behind
    cudaError_t e = cudaDeviceSynchronize();
    const auto waited = std::chrono::steady_clock::now() - start;
    Status named = (*ipc)->lastDeviceError();
    (void)(*store)->set("rank0-done", "1");
    if (e != cudaSuccess)
      return Status::error(std::string("the kernel faulted: ") + cudaGetErrorString(e));
    if (waited >= 2 * options.timeout)
      return Status::error("two calls waited " +
                           std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                              waited)
                                              .count()) +
                           " ms: the second did not return at once");
    if (named.isOk() || named.message().find("for rank 1") == std::string::npos)
      return Status::error("lastDeviceError does not name rank 1: '" + named.message() + "'");
    Status refused = (*ipc)->allReduceSum(device, 64, nullptr);
    if (refused.isOk())
      return Status::error("a call after the timeout was accepted");
    // The context lives: a copy round trip works.
    std::vector<float> host(64, 3.0f), back(64, 0.0f);
    LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(device, host.data(), 64 * sizeof(float),
                                           cudaMemcpyHostToDevice),
                                "copy in after the timeout"));
    LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(back.data(), device, 64 * sizeof(float),
                                           cudaMemcpyDeviceToHost),
                                "copy out after the timeout"));
    if (back != host)
      return Status::error("the copy after the timeout came back different");
    return check(cudaFree(device), "free");
  });
}

} // namespace

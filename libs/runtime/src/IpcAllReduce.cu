// IpcAllReduce over CUDA IPC (see llmir/runtime/IpcAllReduce.h).
//
// Memory of each rank: one cudaMalloc'd region, mapped by every peer:
//
//   Flags   arrived[block][sender]: the barrier value `sender` last reached
//           for this block, written by the sender over P2P;
//           calls[block]: how many all-reduces this block has run (written
//           by this rank only; it survives graph replays, which is what
//           makes replays safe: epochs never come from kernel arguments)
//   data    two halves of maxBytes (rounded up to 16 bytes); call c uses
//           half c % 2
//
// Every call launches the same grid (kBlocks x kThreads), so calls[b] is
// the same number for every block b and every rank: the call's epoch. Work
// is split into float4 units of the exchange buffer (unit u = elements
// 4u..4u+3, the last one zero-padded), and unit u belongs to one (block,
// thread) by the grid-stride rule, the same on every rank whatever the
// alignment of `data`. So block b of every rank touches exactly the units
// block b of its peers touches, and a barrier between the blocks b of all
// ranks (not the whole grid) orders everything that matters.
//
// Why alternate halves are enough (no barrier at the end of a call): a rank
// that starts call c has finished call c-1, whose barrier every peer
// reached, so every peer has finished call c-2 (a rank's calls are stream
// ordered). Peers may still read half (c-1) % 2 of this rank; call c writes
// half c % 2.
//
// Barrier values are 2c (after the copy-in) and 2c+1 (two-shot, after the
// reduce-scatter): they only grow, and a peer can be at most one barrier
// ahead, so waiting for `arrived >= value` is exact. The writes before a
// barrier are made visible by __syncthreads() and a release store at system
// scope (cumulative over the block's writes); the reads after it are ordered
// by an acquire load at system scope and __syncthreads().
#include "IpcAllReduceRecord.h"

#include "llmir/runtime/IpcAllReduce.h"
#include "llmir/runtime/RendezvousStore.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace llmir::runtime {
namespace {

constexpr int kMaxRanks = kIpcAllReduceMaxRanks;
constexpr int kBlocks = 32;
constexpr int kThreads = 512;

static_assert(sizeof(cudaIpcMemHandle_t) == detail::kIpcHandleBytes,
              "the store record carries a cudaIpcMemHandle_t");

struct Flags {
  unsigned long long arrived[kBlocks][kMaxRanks];
  unsigned long long calls[kBlocks];
  /// Set by a block of this rank that gave up on a peer; read by this
  /// rank's blocks before and while they wait. Device memory: reading the
  /// host-mapped DeviceFailure there instead put a PCIe round trip into
  /// every call and every turn of the barrier's spin (TP=2 decode on two
  /// H200s: ~67 us an all-reduce inside the step, against NCCL's ~13).
  unsigned gaveUp;
};
/// The data halves start after the flags, 256-byte aligned.
constexpr size_t kFlagsBytes = (sizeof(Flags) + 255) / 256 * 256;

/// Written by a kernel (host-mapped memory) that gave up on a peer.
struct DeviceFailure {
  int waitedForRank; // -1: none
  int block;
  unsigned long long barrierValue;
  int exchangeWaitedFor; // the PeerExchange's: the peer rank + 1 (0: none)
};

struct KernelArgs {
  float4 *buffers[kMaxRanks]; // each rank's data area, as mapped here
  Flags *flags[kMaxRanks];
  DeviceFailure *failure;
  float *data;
  size_t count;
  size_t halfUnits; // float4 units per half
  unsigned long long timeoutNs;
  int rank;
  int ranks;
};

__device__ __forceinline__ unsigned long long globalTimerNs() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ void storeRelease(unsigned long long *p,
                                             unsigned long long v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ unsigned long long loadAcquire(unsigned long long *p) {
  unsigned long long v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

/// Whether a kernel of this rank gave up on a peer (then every later call
/// returns at once: its sums are void, and waiting out the timeout once per
/// all-reduce of a step would stall the rank for minutes).
__device__ __forceinline__ bool failed(const KernelArgs &a) {
  return *static_cast<volatile unsigned *>(&a.flags[a.rank]->gaveUp) != 0;
}

/// Blocks b of all ranks meet: thread p signals rank p and waits for rank
/// p's signal. A peer that does not come within the timeout (or a failure
/// another block already reported) makes the block give up: the first to
/// give up reports the peer to the host through the mapped DeviceFailure,
/// and the kernel returns without its sums. It used to trap, which cost the
/// process its CUDA context; the host now learns of it from
/// lastDeviceError() (EngineCommunicator::synchronize checks it after each
/// step) and gives the group up as it does an NCCL error. False when the
/// block gave up.
__device__ bool barrier(const KernelArgs &a, unsigned long long value) {
  __shared__ bool gaveUp;
  if (threadIdx.x == 0)
    gaveUp = false;
  __syncthreads();
  const int peer = threadIdx.x;
  if (peer < a.ranks) {
    storeRelease(&a.flags[peer]->arrived[blockIdx.x][a.rank], value);
    unsigned long long *mine = &a.flags[a.rank]->arrived[blockIdx.x][peer];
    if (loadAcquire(mine) < value) {
      const unsigned long long start = globalTimerNs();
      while (loadAcquire(mine) < value) {
        if (failed(a)) {
          gaveUp = true;
          break;
        }
        if (globalTimerNs() - start > a.timeoutNs) {
          // Plain stores (atomics on host memory need support PCIe hosts
          // lack): blocks giving up at once may mix their reports, each
          // naming a peer that did not come.
          *static_cast<volatile unsigned *>(&a.flags[a.rank]->gaveUp) = 1;
          volatile DeviceFailure *f = a.failure;
          f->block = blockIdx.x;
          f->barrierValue = value;
          __threadfence_system();
          f->waitedForRank = peer;
          __threadfence_system();
          gaveUp = true;
          break;
        }
      }
    }
  }
  __syncthreads();
  return !gaveUp;
}

__device__ __forceinline__ float4 add(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

/// Unit u of `data`; lanes past `count` read as 0.
template <bool Aligned>
__device__ __forceinline__ float4 loadUnit(const float *data, size_t u, size_t count) {
  const size_t i = 4 * u;
  if (Aligned && i + 4 <= count)
    return reinterpret_cast<const float4 *>(data)[u];
  float4 v = make_float4(data[i], 0.f, 0.f, 0.f);
  if (i + 1 < count)
    v.y = data[i + 1];
  if (i + 2 < count)
    v.z = data[i + 2];
  if (i + 3 < count)
    v.w = data[i + 3];
  return v;
}

template <bool Aligned>
__device__ __forceinline__ void storeUnit(float *data, size_t u, size_t count, float4 v) {
  const size_t i = 4 * u;
  if (Aligned && i + 4 <= count) {
    reinterpret_cast<float4 *>(data)[u] = v;
    return;
  }
  data[i] = v.x;
  if (i + 1 < count)
    data[i + 1] = v.y;
  if (i + 2 < count)
    data[i + 2] = v.z;
  if (i + 3 < count)
    data[i + 3] = v.w;
}

/// Unit u of every rank's half `half`, summed in rank order 0..n-1 (the
/// loads are issued before the adds).
__device__ __forceinline__ float4 sumOverRanks(const KernelArgs &a, size_t half,
                                               size_t u) {
  float4 v[kMaxRanks];
#pragma unroll
  for (int p = 0; p < kMaxRanks; ++p)
    if (p < a.ranks)
      v[p] = __ldcg(a.buffers[p] + half + u);
  float4 sum = v[0];
#pragma unroll
  for (int p = 1; p < kMaxRanks; ++p)
    if (p < a.ranks)
      sum = add(sum, v[p]);
  return sum;
}

/// This call's epoch (the same on every block and rank), from device memory;
/// 0 once this rank has given up on a peer (failed): the call does nothing.
__device__ __forceinline__ unsigned long long beginCall(const KernelArgs &a) {
  __shared__ unsigned long long call;
  if (threadIdx.x == 0) {
    if (failed(a)) {
      call = 0;
    } else {
      volatile unsigned long long *calls = &a.flags[a.rank]->calls[blockIdx.x];
      call = *calls + 1;
      *calls = call;
    }
  }
  __syncthreads();
  return call;
}

template <bool Aligned>
__global__ void __launch_bounds__(kThreads) oneShotKernel(KernelArgs a) {
  const unsigned long long call = beginCall(a);
  if (call == 0)
    return;
  const size_t half = (call & 1) * a.halfUnits;
  const size_t units = (a.count + 3) / 4;
  const size_t first = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  float4 *own = a.buffers[a.rank] + half;
  for (size_t u = first; u < units; u += stride)
    own[u] = loadUnit<Aligned>(a.data, u, a.count);
  if (!barrier(a, 2 * call))
    return;
  for (size_t u = first; u < units; u += stride)
    storeUnit<Aligned>(a.data, u, a.count, sumOverRanks(a, half, u));
}

template <bool Aligned>
__global__ void __launch_bounds__(kThreads) twoShotKernel(KernelArgs a) {
  const unsigned long long call = beginCall(a);
  if (call == 0)
    return;
  const size_t half = (call & 1) * a.halfUnits;
  const size_t units = (a.count + 3) / 4;
  // Chunk p (rank p's to reduce) is units [begin(p), begin(p + 1)); within a
  // chunk, units go to (block, thread) by the grid-stride rule.
  const size_t chunk = (units + a.ranks - 1) / a.ranks;
  auto begin = [&](int p) {
    const size_t b = size_t(p) * chunk;
    return b < units ? b : units;
  };
  const size_t first = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  float4 *own = a.buffers[a.rank] + half;
  for (int p = 0; p < a.ranks; ++p)
    for (size_t u = begin(p) + first; u < begin(p + 1); u += stride)
      own[u] = loadUnit<Aligned>(a.data, u, a.count);
  if (!barrier(a, 2 * call))
    return;
  // Reduce-scatter: this rank's chunk, in place in its own buffer (peers
  // read only their own chunks of it until the next barrier).
  for (size_t u = begin(a.rank) + first; u < begin(a.rank + 1); u += stride)
    own[u] = sumOverRanks(a, half, u);
  if (!barrier(a, 2 * call + 1))
    return;
  // All-gather: each chunk from the rank that reduced it.
  for (int p = 0; p < a.ranks; ++p)
    for (size_t u = begin(p) + first; u < begin(p + 1); u += stride)
      storeUnit<Aligned>(a.data, u, a.count, __ldcg(a.buffers[p] + half + u));
}

// --- all-reduce + residual add + RMS norm (allReduceAddRmsNorm) -------------
//
// Rows go to blocks by r = block, block + kBlocks, ...; blocks without a row
// only count the call (beginCall) and return, the same ones on every rank,
// so their barrier flags simply skip this call's value. Each rank pushes its
// rows into every rank's half at its own slot (sender s, row r: units
// [(s * rows + r) * widthUnits, ...)): the stores cross NVLink before the
// barrier, and the reads after it are local. The alternate-halves argument
// above holds unchanged: a rank in call c has finished call c-1, in which
// every peer reached block 0's barrier, so no peer still reads half c % 2.

constexpr int kNormUnitsPerThread = static_cast<int>(kIpcAddRmsNormMaxWidth / 4 / kThreads);
static_assert(kNormUnitsPerThread * 4 * kThreads == kIpcAddRmsNormMaxWidth,
              "a block's threads cover the widest row");

struct NormArgs {
  const float4 *partial;
  const float4 *residual;
  float4 *sum;
  const float4 *weight;
  float4 *normed;
  int rows;
  int widthUnits;
  int width;
  float eps;
};

/// The block's total of each thread's `value` (every thread gets it): warp
/// shuffles, then the warps in order.
__device__ double blockTotal(double value) {
  __shared__ double partial[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  if (threadIdx.x % 32 == 0)
    partial[threadIdx.x / 32] = value;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < kThreads / 32; ++w)
    total += partial[w];
  __syncthreads(); // the next row's partials overwrite these
  return total;
}

__device__ __forceinline__ double squares(float4 v) {
  return static_cast<double>(v.x) * v.x + static_cast<double>(v.y) * v.y +
         static_cast<double>(v.z) * v.z + static_cast<double>(v.w) * v.w;
}

__global__ void __launch_bounds__(kThreads) oneShotAddRmsNormKernel(KernelArgs a, NormArgs n) {
  // The norm's weights are written by no kernel: requested before waiting
  // for the kernel that produces `partial` (dependent launch).
  float4 w[kNormUnitsPerThread];
#pragma unroll
  for (int j = 0; j < kNormUnitsPerThread; ++j) {
    const int u = threadIdx.x + j * kThreads;
    w[j] = u < n.widthUnits ? n.weight[u] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
  const unsigned long long call = beginCall(a);
  if (call == 0 || int(blockIdx.x) >= n.rows)
    return;
  const size_t half = (call & 1) * a.halfUnits;
  const size_t slot = size_t(n.rows) * n.widthUnits; // one sender's rows
  // Each loop's loads are issued before its stores: a store between two
  // loads (pointers the compiler cannot tell apart) kept the next load
  // behind it, one memory latency a unit a thread.
  for (int r = blockIdx.x; r < n.rows; r += gridDim.x) {
    const size_t row = size_t(r) * n.widthUnits;
    float4 v[kNormUnitsPerThread];
#pragma unroll
    for (int j = 0; j < kNormUnitsPerThread; ++j) {
      const int u = threadIdx.x + j * kThreads;
      if (u < n.widthUnits)
        v[j] = n.partial[row + u];
    }
#pragma unroll
    for (int j = 0; j < kNormUnitsPerThread; ++j) {
      const int u = threadIdx.x + j * kThreads;
      if (u < n.widthUnits)
        for (int p = 0; p < a.ranks; ++p)
          a.buffers[p][half + a.rank * slot + row + u] = v[j];
    }
  }
  if (!barrier(a, 2 * call))
    return;
  const float4 *own = a.buffers[a.rank] + half;
  for (int r = blockIdx.x; r < n.rows; r += gridDim.x) {
    const size_t row = size_t(r) * n.widthUnits;
    float4 h[kNormUnitsPerThread];
#pragma unroll
    for (int j = 0; j < kNormUnitsPerThread; ++j) {
      const int u = threadIdx.x + j * kThreads;
      if (u < n.widthUnits) {
        float4 v[kMaxRanks];
#pragma unroll
        for (int p = 0; p < kMaxRanks; ++p)
          if (p < a.ranks)
            v[p] = __ldcg(own + p * slot + row + u);
        float4 total = v[0];
#pragma unroll
        for (int p = 1; p < kMaxRanks; ++p)
          if (p < a.ranks)
            total = add(total, v[p]);
        h[j] = add(total, n.residual[row + u]);
      }
    }
    double sum = 0.0;
#pragma unroll
    for (int j = 0; j < kNormUnitsPerThread; ++j) {
      const int u = threadIdx.x + j * kThreads;
      if (u < n.widthUnits) {
        n.sum[row + u] = h[j];
        sum += squares(h[j]);
      }
    }
    const float meanSquare = static_cast<float>(blockTotal(sum) / static_cast<double>(n.width));
    const float scale = 1.0f / sqrtf(meanSquare + n.eps);
#pragma unroll
    for (int j = 0; j < kNormUnitsPerThread; ++j) {
      const int u = threadIdx.x + j * kThreads;
      if (u < n.widthUnits)
        n.normed[row + u] = make_float4(w[j].x * (h[j].x * scale), w[j].y * (h[j].y * scale),
                                        w[j].z * (h[j].z * scale), w[j].w * (h[j].w * scale));
    }
  }
}

Status cudaFailure(const std::string &what, cudaError_t e) {
  return Status::error("IpcAllReduce: " + what + ": " + cudaGetErrorString(e) +
                       " (" + cudaGetErrorName(e) + ")");
}

} // namespace

struct IpcAllReduce::Impl {
  int rank = 0;
  int ranks = 1;
  int device = 0;
  IpcAllReduceOptions options;
  void *own = nullptr;                 // this rank's region (cudaMalloc)
  std::vector<void *> opened;          // peers' regions (cudaIpcOpenMemHandle)
  DeviceFailure *failure = nullptr;    // host-mapped (cudaHostAlloc)
  DeviceFailure *failureOnDevice = nullptr;
  KernelArgs args{};

  ~Impl() {
    if (!own && !failure && opened.empty())
      return; // nothing was allocated (no device): touch no CUDA state
    int current = -1;
    cudaGetDevice(&current);
    cudaSetDevice(device);
    for (void *p : opened)
      if (p)
        cudaIpcCloseMemHandle(p);
    if (own)
      cudaFree(own);
    if (failure)
      cudaFreeHost(failure);
    if (current >= 0)
      cudaSetDevice(current);
  }

  /// The PeerExchange's sites after the all-reduce's flags and halves.
  size_t exchangeOffset() const {
    return (kFlagsBytes + 2 * args.halfUnits * sizeof(float4) + 255) / 256 * 256;
  }
  size_t exchangeBytes() const {
    return options.exchangeSites > 0
               ? engine::exchangeBufferBytes(ranks, options.exchangeWidth, options.exchangeSites)
               : 0;
  }

  /// Allocates and zeroes this rank's region, and fills `record`.
  Status setUp(detail::IpcPeerRecord &record) {
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess)
      return cudaFailure("selecting device " + std::to_string(device), e);
    char bus[32] = {};
    if ((e = cudaDeviceGetPCIBusId(bus, sizeof(bus), device)) != cudaSuccess)
      return cudaFailure("reading device " + std::to_string(device) + "'s PCI bus id", e);
    record.pciBusId = bus;
    const size_t bytes = exchangeOffset() + exchangeBytes();
    if ((e = cudaMalloc(&own, bytes)) != cudaSuccess)
      return cudaFailure("allocating " + std::to_string(bytes) + " bytes of exchange buffer", e);
    // Zero flags before any peer can map them (peers map after reading the
    // record, published after this synchronisation).
    if ((e = cudaMemset(own, 0, bytes)) != cudaSuccess)
      return cudaFailure("zeroing the exchange buffer", e);
    // The PeerExchange's rows empty (their counters stay 0).
    if (options.exchangeSites > 0) {
      const size_t site = engine::exchangeSiteBytes(ranks, options.exchangeWidth);
      const size_t rows = engine::exchangeRowsBytes(ranks, options.exchangeWidth);
      if ((e = cudaMemset2D(static_cast<char *>(own) + exchangeOffset(), site, 0xff, rows,
                            size_t(options.exchangeSites))) != cudaSuccess)
        return cudaFailure("emptying the peer exchange's rows", e);
    }
    if ((e = cudaDeviceSynchronize()) != cudaSuccess)
      return cudaFailure("zeroing the exchange buffer", e);
    if ((e = cudaHostAlloc(reinterpret_cast<void **>(&failure), sizeof(DeviceFailure),
                           cudaHostAllocMapped)) != cudaSuccess)
      return cudaFailure("allocating the host-mapped failure record", e);
    failure->waitedForRank = -1;
    failure->block = -1;
    failure->barrierValue = 0;
    failure->exchangeWaitedFor = 0;
    if ((e = cudaHostGetDevicePointer(reinterpret_cast<void **>(&failureOnDevice),
                                      failure, 0)) != cudaSuccess)
      return cudaFailure("mapping the failure record", e);
    cudaIpcMemHandle_t handle;
    if ((e = cudaIpcGetMemHandle(&handle, own)) != cudaSuccess)
      return cudaFailure("exporting the exchange buffer", e);
    std::memcpy(record.handle.data(), &handle, sizeof(handle));
    return Status::ok();
  }

  /// Calls are queued on the calling thread's current device: it must be
  /// this rank's.
  Status expectCurrentDevice() const {
    int current = -1;
    const cudaError_t e = cudaGetDevice(&current);
    if (e != cudaSuccess)
      return cudaFailure("reading the current device", e);
    if (current != device)
      return Status::error("IpcAllReduce: the current device is " + std::to_string(current) +
                           " but this rank's buffers are on device " + std::to_string(device) +
                           "; cudaSetDevice first");
    return Status::ok();
  }

  /// Checks peer access to each peer's GPU and maps its region.
  Status openPeers(const std::vector<detail::IpcPeerRecord> &records) {
    opened.assign(ranks, nullptr);
    for (int p = 0; p < ranks; ++p) {
      if (p == rank)
        continue;
      const std::string who = "rank " + std::to_string(p) + "'s GPU " + records[p].pciBusId;
      int peerDevice = -1;
      cudaError_t e = cudaDeviceGetByPCIBusId(&peerDevice, records[p].pciBusId.c_str());
      if (e != cudaSuccess) {
        cudaGetLastError();
        return Status::error("IpcAllReduce: " + who +
                             " is not visible to this process (CUDA_VISIBLE_DEVICES?), "
                             "so peer-to-peer access cannot be checked: " +
                             cudaGetErrorString(e));
      }
      int canAccess = 0;
      if ((e = cudaDeviceCanAccessPeer(&canAccess, device, peerDevice)) != cudaSuccess)
        return cudaFailure("checking peer access to " + who, e);
      if (!canAccess)
        return Status::error("IpcAllReduce: no peer-to-peer access from device " +
                             std::to_string(device) + " to " + who +
                             " (device " + std::to_string(peerDevice) +
                             "); use NCCL for this group");
      cudaIpcMemHandle_t handle;
      std::memcpy(&handle, records[p].handle.data(), sizeof(handle));
      if ((e = cudaIpcOpenMemHandle(&opened[p], handle,
                                    cudaIpcMemLazyEnablePeerAccess)) != cudaSuccess) {
        opened[p] = nullptr;
        return cudaFailure("mapping " + who + "'s exchange buffer", e);
      }
    }
    for (int p = 0; p < ranks; ++p) {
      char *base = static_cast<char *>(p == rank ? own : opened[p]);
      args.flags[p] = reinterpret_cast<Flags *>(base);
      args.buffers[p] = reinterpret_cast<float4 *>(base + kFlagsBytes);
    }
    return Status::ok();
  }
};

Result<std::unique_ptr<IpcAllReduce>>
IpcAllReduce::create(RendezvousClient &store, const std::string &prefix, int groupRank,
                     int groupSize, const IpcAllReduceOptions &options) {
  LLMIR_RETURN_IF_ERROR(validateIpcAllReduceConfig(groupRank, groupSize, options));
  if (prefix.empty())
    return Status::error("IpcAllReduce: empty store prefix");
  const std::string keys = prefix.back() == '/' ? prefix : prefix + "/";
  auto impl = std::make_unique<Impl>();
  impl->rank = groupRank;
  impl->ranks = groupSize;
  impl->options = options;
  impl->args.rank = groupRank;
  impl->args.ranks = groupSize;
  impl->args.halfUnits = (options.maxBytes + sizeof(float4) - 1) / sizeof(float4);
  impl->args.timeoutNs =
      static_cast<unsigned long long>(options.timeout.count()) * 1000000ull;

  detail::IpcPeerRecord mine;
  mine.machineId = detail::localMachineId();
  mine.hostname = detail::localHostname();
  mine.maxBytes = options.maxBytes;
  mine.oneShotMaxBytes = detail::resolvedOneShotMaxBytes(groupSize, options);
  impl->device = options.device;
  const Status setUp = [&]() -> Status {
    if (impl->device < 0) {
      cudaError_t e = cudaGetDevice(&impl->device);
      if (e != cudaSuccess)
        return cudaFailure("no current CUDA device", e);
    }
    return impl->setUp(mine);
  }();
  if (!setUp.isOk())
    mine.error = setUp.message();

  auto records = detail::exchangeIpcPeerRecords(store, keys, groupRank, groupSize, mine,
                                                options.timeout);
  Status local = records ? impl->openPeers(*records) : records.status();
  impl->args.failure = impl->failureOnDevice;
  Status agreed =
      detail::agreeOnIpcOutcome(store, keys, groupRank, groupSize, local, options.timeout);
  if (!agreed.isOk())
    return agreed.withContext("IpcAllReduce over " + std::to_string(groupSize) +
                              " ranks (this is rank " + std::to_string(groupRank) + ")");
  return std::unique_ptr<IpcAllReduce>(new IpcAllReduce(std::move(impl)));
}

IpcAllReduce::IpcAllReduce(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
IpcAllReduce::~IpcAllReduce() = default;

int IpcAllReduce::groupRank() const { return impl_->rank; }
int IpcAllReduce::groupSize() const { return impl_->ranks; }
int IpcAllReduce::device() const { return impl_->device; }
size_t IpcAllReduce::maxBytes() const { return impl_->options.maxBytes; }

bool IpcAllReduce::handles(size_t count) const {
  return count <= impl_->options.maxBytes / sizeof(float);
}

Status IpcAllReduce::lastDeviceError() const {
  const DeviceFailure *f = impl_->failure;
  if (const int peer = *static_cast<const volatile int *>(&f->exchangeWaitedFor); peer > 0)
    return Status::error("IpcAllReduce: rank " + std::to_string(impl_->rank) +
                         " waited over " + std::to_string(impl_->options.timeout.count()) +
                         " ms for rank " + std::to_string(peer - 1) +
                         "'s rows at a product's exchange; the peer died or ran other "
                         "steps: this rank's results since are void");
  // Volatile: the kernel writes it through the mapping.
  const int waited = *static_cast<const volatile int *>(&f->waitedForRank);
  if (waited < 0)
    return Status::ok();
  return Status::error(
      "IpcAllReduce: rank " + std::to_string(impl_->rank) + " waited over " +
      std::to_string(impl_->options.timeout.count()) + " ms for rank " +
      std::to_string(waited) + " at barrier " + std::to_string(f->barrierValue) +
      " (block " + std::to_string(f->block) +
      "); the peer died or called a different sequence of collectives: the kernel gave "
      "up, this rank's sums since are void and later calls are refused");
}

engine::PeerExchange IpcAllReduce::peerExchange() const {
  const Impl &i = *impl_;
  engine::PeerExchange x;
  if (i.options.exchangeSites <= 0 || !i.own)
    return x;
  x.rank = i.rank;
  x.ranks = i.ranks;
  for (int q = 0; q < i.ranks; ++q)
    x.buffers[q] = static_cast<char *>(q == i.rank ? i.own : i.opened[q]) + i.exchangeOffset();
  x.width = i.options.exchangeWidth;
  x.sites = i.options.exchangeSites;
  x.timedOut = &i.failureOnDevice->exchangeWaitedFor;
  x.timeoutNs = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(i.options.timeout).count());
  return x;
}

bool IpcAllReduce::fusesAddRmsNorm(size_t rows, size_t width) const {
  return checkIpcAddRmsNormShape(rows, width, impl_->ranks, impl_->options).isOk();
}

Status IpcAllReduce::allReduceAddRmsNorm(const engine::AllReduceAddRmsNorm &op,
                                         CUstream_st *stream) {
  LLMIR_RETURN_IF_ERROR(lastDeviceError());
  const size_t rows = op.rows > 0 ? static_cast<size_t>(op.rows) : 0;
  const size_t width = op.width > 0 ? static_cast<size_t>(op.width) : 0;
  LLMIR_RETURN_IF_ERROR(checkIpcAddRmsNormShape(rows, width, impl_->ranks, impl_->options));
  auto aligned = [](const void *p) {
    return p && reinterpret_cast<uintptr_t>(p) % 16 == 0;
  };
  if (!aligned(op.partial) || !aligned(op.residual) || !aligned(op.sum) ||
      !aligned(op.weight) || !aligned(op.normed))
    return Status::error("IpcAllReduce: fused add + RMS norm needs non-null, 16-byte "
                         "aligned operands");
  LLMIR_RETURN_IF_ERROR(impl_->expectCurrentDevice());
  NormArgs n;
  n.partial = reinterpret_cast<const float4 *>(op.partial);
  n.residual = reinterpret_cast<const float4 *>(op.residual);
  n.sum = reinterpret_cast<float4 *>(op.sum);
  n.weight = reinterpret_cast<const float4 *>(op.weight);
  n.normed = reinterpret_cast<float4 *>(op.normed);
  n.rows = static_cast<int>(rows);
  n.width = static_cast<int>(width);
  n.widthUnits = static_cast<int>(width / 4);
  n.eps = op.eps;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = op.dependentLaunch ? 1 : 0;
  cudaLaunchConfig_t config{};
  config.gridDim = kBlocks;
  config.blockDim = kThreads;
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = 1;
  if (const cudaError_t e = cudaLaunchKernelEx(&config, oneShotAddRmsNormKernel, impl_->args, n);
      e != cudaSuccess)
    return cudaFailure("launching the fused add + RMS norm kernel", e);
  return Status::ok();
}

Status IpcAllReduce::allReduceSum(float *data, size_t count, CUstream_st *stream) {
  auto algorithm = chooseIpcAllReduceAlgorithm(count, impl_->ranks, impl_->options);
  if (!algorithm)
    return algorithm.status();
  return allReduceSum(data, count, stream, *algorithm);
}

Status IpcAllReduce::allReduceSum(float *data, size_t count, CUstream_st *stream,
                                  IpcAllReduceAlgorithm algorithm) {
  LLMIR_RETURN_IF_ERROR(lastDeviceError());
  if (!handles(count))
    return chooseIpcAllReduceAlgorithm(count, impl_->ranks, impl_->options).status();
  if (count == 0)
    return Status::ok();
  if (!data)
    return Status::error("IpcAllReduce: null buffer for " + std::to_string(count) +
                         " floats");
  LLMIR_RETURN_IF_ERROR(impl_->expectCurrentDevice());
  KernelArgs args = impl_->args;
  args.data = data;
  args.count = count;
  const bool aligned = reinterpret_cast<uintptr_t>(data) % sizeof(float4) == 0;
  cudaStream_t s = stream;
  if (algorithm == IpcAllReduceAlgorithm::OneShot)
    aligned ? oneShotKernel<true><<<kBlocks, kThreads, 0, s>>>(args)
            : oneShotKernel<false><<<kBlocks, kThreads, 0, s>>>(args);
  else
    aligned ? twoShotKernel<true><<<kBlocks, kThreads, 0, s>>>(args)
            : twoShotKernel<false><<<kBlocks, kThreads, 0, s>>>(args);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess)
    return cudaFailure(std::string("launching the ") + ipcAllReduceAlgorithmName(algorithm) +
                           " kernel",
                       e);
  return Status::ok();
}

} // namespace llmir::runtime

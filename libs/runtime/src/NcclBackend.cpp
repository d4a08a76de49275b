// NCCL backend: device buffers on this rank's CUDA device, one stream per
// group. Communicators are non-blocking so that every wait can be bounded:
// on timeout or error the communicator is aborted instead of hanging.
#include "Communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <thread>

namespace llmir::runtime::detail {
namespace {

Status cudaError(const std::string &what, cudaError_t error) {
  return Status::error(what + ": " + cudaGetErrorString(error));
}

/// A stream's or event's query read: done, not yet, or the error it reported.
Result<bool> queried(cudaError_t query, const char *what) {
  if (query == cudaSuccess)
    return true;
  if (query == cudaErrorNotReady)
    return false;
  return cudaError(what, query);
}

Status ncclError(const std::string &what, ncclResult_t result) {
  return Status::error(what + ": " + ncclGetErrorString(result));
}

ncclDataType_t ncclType(DataType type) {
  switch (type) {
  case DataType::F32:
    return ncclFloat32;
  case DataType::F16:
    return ncclFloat16;
  case DataType::BF16:
    return ncclBfloat16;
  case DataType::I32:
    return ncclInt32;
  }
  return ncclFloat32;
}

ncclRedOp_t ncclOp(ReduceOp op) {
  switch (op) {
  case ReduceOp::Sum:
    return ncclSum;
  case ReduceOp::Max:
    return ncclMax;
  case ReduceOp::Min:
    return ncclMin;
  }
  return ncclSum;
}

class NcclCommunicator : public Communicator {
public:
  NcclCommunicator(ncclComm_t comm, int device, cudaStream_t stream,
                   int *scratch, std::chrono::milliseconds timeout, int size)
      : comm_(comm), device_(device), stream_(stream), scratch_(scratch),
        timeout_(timeout), size_(size) {}

  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    if (comm_)
      healthy_ ? ncclCommDestroy(comm_) : ncclCommAbort(comm_);
    cudaFree(scratch_);
    if (staging_)
      cudaFree(staging_);
    cudaStreamDestroy(stream_);
  }

  Status allReduce(void *data, size_t count, DataType type,
                   ReduceOp op) override {
    const size_t bytes = count * dataTypeSize(type);
    return staged(data, bytes, true, true, [&](void *buffer) {
      return run([&] {
        return ncclAllReduce(buffer, buffer, count, ncclType(type), ncclOp(op),
                             comm_, stream_);
      });
    });
  }
  Status allGather(const void *send, void *recv, size_t count,
                   DataType type) override {
    if (isDevice(send) && isDevice(recv))
      return run([&] {
        return ncclAllGather(send, recv, count, ncclType(type), comm_, stream_);
      });
    // Host buffers: stage both (send first, the gathered result after it).
    const size_t bytes = count * dataTypeSize(type);
    const size_t total = bytes * (1 + static_cast<size_t>(size_));
    LLMIR_RETURN_IF_ERROR(reserveStaging(total));
    char *stage = static_cast<char *>(staging_);
    LLMIR_RETURN_IF_ERROR(copy(stage, send, bytes, cudaMemcpyDefault));
    LLMIR_RETURN_IF_ERROR(run([&] {
      return ncclAllGather(stage, stage + bytes, count, ncclType(type), comm_,
                           stream_);
    }));
    return copy(recv, stage + bytes, bytes * static_cast<size_t>(size_),
                cudaMemcpyDefault);
  }
  Status broadcast(void *data, size_t count, DataType type,
                   int rootGroupRank) override {
    const size_t bytes = count * dataTypeSize(type);
    return staged(data, bytes, true, true, [&](void *buffer) {
      return run([&] {
        return ncclBroadcast(buffer, buffer, count, ncclType(type),
                             rootGroupRank, comm_, stream_);
      });
    });
  }
  Status barrier() override {
    return run([&] {
      return ncclAllReduce(scratch_, scratch_, 1, ncclInt32, ncclSum, comm_,
                           stream_);
    });
  }
  Status send(const void *data, size_t bytes, int peer) override {
    return staged(const_cast<void *>(data), bytes, true, false, [&](void *buffer) {
      return run([&] {
        return ncclSend(buffer, bytes, ncclUint8, peer, comm_, stream_);
      });
    });
  }
  Status recv(void *data, size_t bytes, int peer) override {
    return staged(data, bytes, false, true, [&](void *buffer) {
      return run([&] {
        return ncclRecv(buffer, bytes, ncclUint8, peer, comm_, stream_);
      });
    });
  }

  Status allReduceOn(void *stream, void *data, size_t count, DataType type,
                     ReduceOp op) override {
    return enqueue(stream, [&](cudaStream_t s) {
      return ncclAllReduce(data, data, count, ncclType(type), ncclOp(op), comm_, s);
    });
  }
  Status allGatherOn(void *stream, const void *send, void *recv, size_t count,
                     DataType type) override {
    return enqueue(stream, [&](cudaStream_t s) {
      return ncclAllGather(send, recv, count, ncclType(type), comm_, s);
    });
  }
  Status sendOn(void *stream, const void *data, size_t bytes, int peer) override {
    return enqueue(stream, [&](cudaStream_t s) {
      return ncclSend(data, bytes, ncclUint8, peer, comm_, s);
    });
  }
  Status recvOn(void *stream, void *data, size_t bytes, int peer) override {
    return enqueue(stream, [&](cudaStream_t s) {
      return ncclRecv(data, bytes, ncclUint8, peer, comm_, s);
    });
  }

  Status asyncError() override {
    if (!comm_)
      return Status::ok(); // given up already: its failure is recorded
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    if (async == ncclSuccess || async == ncclInProgress)
      return Status::ok();
    return ncclError("nccl: communicator error", async);
  }

protected:
  void abortTransport() override {
    if (healthy_ && comm_)
      ncclCommAbort(comm_);
    comm_ = nullptr;
    healthy_ = false;
  }

private:
  /// Enqueues one NCCL call on the caller's stream without waiting for it.
  template <typename Call> Status enqueue(void *stream, Call &&call) {
    if (!comm_)
      return Status::error("nccl: communicator aborted");
    cudaError_t set = cudaSetDevice(device_);
    if (set != cudaSuccess)
      return cudaError("nccl: selecting device", set);
    ncclResult_t result = call(static_cast<cudaStream_t>(stream));
    // A non-blocking communicator may return while still enqueueing; NCCL
    // wants that finished before the next call on the communicator.
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    while (result == ncclInProgress) {
      if (std::chrono::steady_clock::now() > deadline)
        return fail(Status::error("nccl: enqueueing did not finish within " +
                                  std::to_string(timeout_.count()) + " ms"));
      std::this_thread::yield();
      ncclCommGetAsyncError(comm_, &result);
    }
    if (result != ncclSuccess)
      return fail(ncclError("nccl: enqueue", result));
    pendingStream_ = static_cast<cudaStream_t>(stream);
    return Status::ok();
  }

  /// Operations on the communicator's own stream wait for those enqueued on
  /// another stream first: NCCL kernels of one communicator must not run
  /// concurrently.
  Status settlePending() {
    if (!pendingStream_)
      return Status::ok();
    LLMIR_RETURN_IF_ERROR(awaitStream(pendingStream_, "stream-ordered operations"));
    pendingStream_ = nullptr;
    return Status::ok();
  }

  /// Waits until `stream` ran its work, within the timeout; the
  /// communicator's asynchronous error or the timeout aborts it.
  Status awaitStream(cudaStream_t stream, const char *what) {
    const auto started = std::chrono::steady_clock::now();
    const auto deadline = started + timeout_;
    for (;;) {
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress)
        return fail(ncclError("nccl: communicator error", async));
      if (async == ncclSuccess) {
        const Result<bool> idle = queried(cudaStreamQuery(stream), "nccl: stream");
        if (!idle)
          return fail(idle.status());
        if (*idle)
          return Status::ok();
      }
      if (std::chrono::steady_clock::now() > deadline)
        return fail(Status::error(std::string("nccl: ") + what + " did not complete within " +
                                  std::to_string(timeout_.count()) +
                                  " ms (a peer may have died)"));
      // A token's broadcast between decode steps takes microseconds: spin
      // (yielding) through the first milliseconds, sleep after them.
      if (std::chrono::steady_clock::now() - started < std::chrono::milliseconds(2))
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  static bool isDevice(const void *p) {
    cudaPointerAttributes attributes{};
    if (cudaPointerGetAttributes(&attributes, p) != cudaSuccess) {
      cudaGetLastError(); // not a CUDA pointer: clear the error
      return false;
    }
    return attributes.type == cudaMemoryTypeDevice ||
           attributes.type == cudaMemoryTypeManaged;
  }

  Status reserveStaging(size_t bytes) {
    if (bytes <= stagingBytes_)
      return Status::ok();
    if (staging_)
      cudaFree(staging_);
    staging_ = nullptr;
    stagingBytes_ = 0;
    cudaError_t e = cudaMalloc(&staging_, bytes);
    if (e != cudaSuccess)
      return cudaError("nccl: allocating a staging buffer", e);
    stagingBytes_ = bytes;
    return Status::ok();
  }

  Status copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    if (bytes == 0)
      return Status::ok();
    cudaError_t e = cudaMemcpy(dst, src, bytes, kind);
    return e == cudaSuccess ? Status::ok() : cudaError("nccl: staging copy", e);
  }

  /// NCCL reads and writes device memory only: a host buffer (the token a
  /// generator shares, a control message) goes through a device copy.
  template <typename Call>
  Status staged(void *data, size_t bytes, bool in, bool out, Call &&call) {
    cudaError_t set = cudaSetDevice(device_);
    if (set != cudaSuccess)
      return cudaError("nccl: selecting device", set);
    if (bytes == 0 || isDevice(data))
      return call(data);
    LLMIR_RETURN_IF_ERROR(reserveStaging(bytes));
    if (in)
      LLMIR_RETURN_IF_ERROR(copy(staging_, data, bytes, cudaMemcpyHostToDevice));
    LLMIR_RETURN_IF_ERROR(call(staging_));
    if (out)
      LLMIR_RETURN_IF_ERROR(copy(data, staging_, bytes, cudaMemcpyDeviceToHost));
    return Status::ok();
  }

  /// Enqueues one NCCL call and waits for the stream within the timeout.
  template <typename Enqueue> Status run(Enqueue &&enqueue) {
    cudaError_t set = cudaSetDevice(device_);
    if (set != cudaSuccess)
      return cudaError("nccl: selecting device", set);
    if (!comm_)
      return Status::error("nccl: communicator aborted");
    LLMIR_RETURN_IF_ERROR(settlePending());
    ncclResult_t result = enqueue();
    if (result != ncclSuccess && result != ncclInProgress)
      return fail(ncclError("nccl: enqueue", result));
    return awaitStream(stream_, "operation");
  }

  Status fail(Status status) {
    // Aborting releases peers' resources and unblocks the stream.
    abortTransport();
    return status;
  }

  ncclComm_t comm_;
  int device_;
  cudaStream_t stream_;
  int *scratch_;
  std::chrono::milliseconds timeout_;
  bool healthy_ = true;
  int size_; // ranks in the group
  void *staging_ = nullptr;
  size_t stagingBytes_ = 0;
  cudaStream_t pendingStream_ = nullptr; // last stream-ordered operation's
};

class NcclBackend : public Backend {
public:
  NcclBackend(int device, std::chrono::milliseconds timeout)
      : device_(device), timeout_(timeout) {}

  Result<std::unique_ptr<Communicator>> connect(RendezvousClient &store,
                                                const std::string &prefix,
                                                int groupRank,
                                                int groupSize) override {
    cudaError_t set = cudaSetDevice(device_);
    if (set != cudaSuccess)
      return cudaError("nccl: selecting device " + std::to_string(device_), set);
    ncclUniqueId id;
    const std::string idKey = prefix + "unique_id";
    if (groupRank == 0) {
      ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess)
        return ncclError("nccl: creating unique id", r);
      LLMIR_RETURN_IF_ERROR(store.set(
          idKey, std::vector<char>(id.internal, id.internal + sizeof(id.internal))));
    } else {
      auto bytes = store.get(idKey, timeout_);
      if (!bytes)
        return bytes.status().withContext("nccl: fetching unique id");
      if (bytes->size() != sizeof(id.internal))
        return Status::error("nccl: unique id under '" + idKey + "' has " +
                             std::to_string(bytes->size()) + " bytes, expected " +
                             std::to_string(sizeof(id.internal)));
      std::memcpy(id.internal, bytes->data(), sizeof(id.internal));
    }

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclComm_t comm = nullptr;
    ncclResult_t r =
        ncclCommInitRankConfig(&comm, groupSize, id, groupRank, &config);
    auto deadline = std::chrono::steady_clock::now() + timeout_;
    while (r == ncclInProgress) {
      if (std::chrono::steady_clock::now() > deadline) {
        ncclCommAbort(comm);
        return Status::error("nccl: communicator of " +
                             std::to_string(groupSize) +
                             " ranks not ready within " +
                             std::to_string(timeout_.count()) + " ms");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      ncclCommGetAsyncError(comm, &r);
    }
    if (r != ncclSuccess) {
      if (comm)
        ncclCommAbort(comm);
      return ncclError("nccl: initialising communicator", r);
    }

    cudaStream_t stream = nullptr;
    int *scratch = nullptr;
    cudaError_t e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    if (e == cudaSuccess)
      e = cudaMalloc(&scratch, sizeof(int));
    if (e != cudaSuccess) {
      ncclCommAbort(comm);
      if (stream)
        cudaStreamDestroy(stream);
      return cudaError("nccl: allocating stream and scratch", e);
    }
    return std::unique_ptr<Communicator>(
        new NcclCommunicator(comm, device_, stream, scratch, timeout_, groupSize));
  }

private:
  int device_;
  std::chrono::milliseconds timeout_;
};

} // namespace

Result<bool> streamIdle(void *stream) {
  return queried(cudaStreamQuery(static_cast<cudaStream_t>(stream)), "stream");
}

Result<bool> eventDone(void *event) {
  return queried(cudaEventQuery(static_cast<cudaEvent_t>(event)), "event");
}

Result<std::unique_ptr<Backend>> createNcclBackend(const RuntimeConfig &config) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0)
    return Status::error(std::string("backend 'nccl': no CUDA device (") +
                         (e != cudaSuccess ? cudaGetErrorString(e)
                                           : "0 devices visible") +
                         ")");
  int device = config.cudaDevice >= 0 ? config.cudaDevice : config.rank % count;
  if (device >= count)
    return Status::error("backend 'nccl': cudaDevice " + std::to_string(device) +
                         " out of range; " + std::to_string(count) +
                         " device(s) visible");
  return std::unique_ptr<Backend>(new NcclBackend(device, config.timeout));
}

} // namespace llmir::runtime::detail

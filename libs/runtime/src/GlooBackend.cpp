// Gloo backend: TCP transport, host buffers. Gloo reports failures by
// throwing; every entry point here catches and returns a Status.
#include "Communicator.h"
#include "HostReduce.h"

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>
#include <gloo/types.h>

#include <csignal>
#include <mutex>

namespace llmir::runtime::detail {
namespace {

// Slot of point-to-point transfers; Gloo's collectives use prefixes 1..8.
const uint64_t kPointToPointSlot = gloo::Slot::build(0x70, 0);

template <typename Operation> Status catchGloo(Operation &&operation) {
  try {
    operation();
    return Status::ok();
  } catch (const std::exception &e) {
    return Status::error(std::string("gloo: ") + e.what());
  } catch (...) {
    return Status::error("gloo: unknown exception");
  }
}

/// Gloo's view of our rendezvous store, under one group's key prefix.
class StoreAdapter : public gloo::rendezvous::Store {
public:
  StoreAdapter(RendezvousClient &client, std::string prefix,
               std::chrono::milliseconds timeout)
      : client_(client), prefix_(std::move(prefix)), timeout_(timeout) {}

  void set(const std::string &key, const std::vector<char> &data) override {
    throwIfFailed(client_.set(prefix_ + key, data));
  }
  std::vector<char> get(const std::string &key) override {
    auto value = client_.get(prefix_ + key, timeout_);
    throwIfFailed(value.status());
    return std::move(value).value();
  }
  void wait(const std::vector<std::string> &keys) override {
    wait(keys, timeout_);
  }
  void wait(const std::vector<std::string> &keys,
            const std::chrono::milliseconds &timeout) override {
    std::vector<std::string> prefixed;
    for (const auto &k : keys)
      prefixed.push_back(prefix_ + k);
    throwIfFailed(client_.wait(prefixed, std::min(timeout, timeout_)));
  }

private:
  static void throwIfFailed(const Status &status) {
    if (!status.isOk())
      throw gloo::IoException(status.message());
  }
  RendezvousClient &client_;
  std::string prefix_;
  std::chrono::milliseconds timeout_;
};

class GlooCommunicator : public Communicator {
public:
  GlooCommunicator(std::shared_ptr<gloo::Context> context,
                   std::chrono::milliseconds timeout)
      : context_(std::move(context)), timeout_(timeout) {}

  Status allReduce(void *data, size_t count, DataType type,
                   ReduceOp op) override {
    return catchGloo([&] {
      gloo::AllreduceOptions options(context_);
      setElements(options, data, count, type);
      options.setReduceFunction(hostReduceFunction(type, op));
      options.setTimeout(timeout_);
      gloo::allreduce(options);
    });
  }

  Status allGather(const void *send, void *recv, size_t count,
                   DataType type) override {
    size_t bytes = count * dataTypeSize(type);
    return catchGloo([&] {
      gloo::AllgatherOptions options(context_);
      // Gloo only reads the input buffer.
      options.setInput(static_cast<char *>(const_cast<void *>(send)), bytes);
      options.setOutput(static_cast<char *>(recv), bytes * context_->size);
      options.setTimeout(timeout_);
      gloo::allgather(options);
    });
  }

  Status broadcast(void *data, size_t count, DataType type,
                   int rootGroupRank) override {
    return catchGloo([&] {
      gloo::BroadcastOptions options(context_);
      options.setOutput(static_cast<char *>(data), count * dataTypeSize(type));
      options.setRoot(rootGroupRank);
      options.setTimeout(timeout_);
      gloo::broadcast(options);
    });
  }

  Status barrier() override {
    return catchGloo([&] {
      gloo::BarrierOptions options(context_);
      options.setTimeout(timeout_);
      gloo::barrier(options);
    });
  }

  Status send(const void *data, size_t bytes, int peer) override {
    return catchGloo([&] {
      auto buffer =
          context_->createUnboundBuffer(const_cast<void *>(data), bytes);
      buffer->send(peer, kPointToPointSlot);
      if (!buffer->waitSend(timeout_))
        throw gloo::IoException("send to peer aborted");
    });
  }

  Status recv(void *data, size_t bytes, int peer) override {
    return catchGloo([&] {
      auto buffer = context_->createUnboundBuffer(data, bytes);
      buffer->recv(peer, kPointToPointSlot);
      if (!buffer->waitRecv(timeout_))
        throw gloo::IoException("recv from peer aborted");
    });
  }

private:
  // The reduce function carries the type; Gloo only needs the element size.
  static void setElements(gloo::AllreduceOptions &options, void *data,
                          size_t count, DataType type) {
    if (dataTypeSize(type) == 2)
      options.setOutput(static_cast<uint16_t *>(data), count);
    else
      options.setOutput(static_cast<uint32_t *>(data), count);
  }

  std::shared_ptr<gloo::Context> context_;
  std::chrono::milliseconds timeout_;
};

class GlooBackend : public Backend {
public:
  GlooBackend(std::shared_ptr<gloo::transport::Device> device,
              std::chrono::milliseconds timeout)
      : device_(std::move(device)), timeout_(timeout) {}

  Result<std::unique_ptr<Communicator>> connect(RendezvousClient &store,
                                                const std::string &prefix,
                                                int groupRank,
                                                int groupSize) override {
    auto context =
        std::make_shared<gloo::rendezvous::Context>(groupRank, groupSize);
    context->setTimeout(timeout_);
    StoreAdapter adapter(store, prefix, timeout_);
    Status status =
        catchGloo([&] { context->connectFullMesh(adapter, device_); });
    if (!status.isOk())
      return status.withContext("connecting " + std::to_string(groupSize) +
                                " ranks");
    return std::unique_ptr<Communicator>(
        new GlooCommunicator(std::move(context), timeout_));
  }

private:
  std::shared_ptr<gloo::transport::Device> device_;
  std::chrono::milliseconds timeout_;
};

/// Writing to a socket whose peer died raises SIGPIPE, which would kill the
/// surviving ranks; they must see an error instead. Only a default
/// disposition is changed, so a handler the process installed is kept.
void ignoreSigpipeOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current {};
    if (::sigaction(SIGPIPE, nullptr, &current) == 0 &&
        current.sa_handler == SIG_DFL)
      ::signal(SIGPIPE, SIG_IGN);
  });
}

} // namespace

Result<std::unique_ptr<Backend>> createGlooBackend(const RuntimeConfig &config) {
  ignoreSigpipeOnce();
  std::shared_ptr<gloo::transport::Device> device;
  gloo::transport::tcp::attr attr;
  attr.hostname = config.hostname;
  Status status =
      catchGloo([&] { device = gloo::transport::tcp::CreateDevice(attr); });
  if (!status.isOk())
    return status.withContext("creating TCP device on '" + config.hostname +
                              "'");
  return std::unique_ptr<Backend>(new GlooBackend(device, config.timeout));
}

} // namespace llmir::runtime::detail

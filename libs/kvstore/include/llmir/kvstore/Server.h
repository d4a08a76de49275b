// The KV-block store server: a ucp listener on host:port (UCX picks the
// transport: TCP, shared memory, RDMA; UCX_TLS narrows it) answering batched
// put / get / exists requests from Client (protocol: docs/kv-store.md),
// behind the cluster secret when one is set.
// One progress thread owns every UCX object; it sleeps on the worker's event
// fd when idle rather than spinning.
#pragma once

#include "llmir/kvstore/BlockPool.h"
#include "llmir/support/Status.h"

#include <chrono>
#include <cstdint>
#include <optional>
#include <functional>
#include <memory>
#include <string>

namespace llmir::kvstore {

struct ServerOptions {
  std::string host = "127.0.0.1"; // internal listeners default to loopback
  uint16_t port = 0; // 0: ephemeral (port() names it)
  uint64_t capacityBytes = 1ull << 30;
  uint64_t maxBlockBytes = 64ull << 20; // a larger block is rejected
  /// A get reply of one block larger than twice this, to a client that asks
  /// for parts (GetParts, over UCX), goes as messages of this many bytes,
  /// so the client copies and hashes part k while part k+1 travels
  /// (docs/kv-store.md, "Blocks in parts"). A multiple of 1024; 0: whole.
  uint64_t partBytes = 512 << 10;
  /// When set, a client must prove it (the cluster handshake of
  /// llmir/support/ClusterAuth.h, as the endpoint's first exchange) before
  /// any put, get or exists is served; one that does not is disconnected
  /// unanswered.
  std::optional<std::string> clusterSecret;
  /// Hold blocks in a shared-memory segment (a sealed memfd of twice the
  /// capacity, sparse) that clients on the same host map, so their bytes
  /// move by one memcpy instead of through UCX (docs/kv-store.md).
  bool sharedMemory = true;
  /// An endpoint that has not finished the handshake by then is closed.
  std::chrono::milliseconds handshakeTimeout{5000};
  /// After the last activity, keep polling the UCX worker this long before
  /// sleeping on its event fd (0: sleep at once). A client's next request
  /// often follows within tens of microseconds; polling catches it without
  /// a wake-up, at the cost of a busy core meanwhile.
  std::chrono::microseconds pollBeforeSleep{0};
  /// After a request that came through a same-host client's channel
  /// (docs/kv-store.md, "Request channel"), keep checking the channels this
  /// long before sleeping (memory loads, and a UCX progress every few
  /// microseconds). 0 (sleep at once) measured fastest on the shared 2-core
  /// machine: a spinning store took the core its client needed
  /// (docs/performance.md).
  std::chrono::microseconds channelSpin{0};
  /// The same spin, but only when the host has a CPU to spare as the spin
  /// begins (its runnable threads, the store's included, no more than the
  /// CPUs it may run on: /proc/loadavg). Then a spinning store delays
  /// nobody, and a client that finds it awake posts its next request
  /// without waking it: a pipelined 1 MiB put no longer pays the wake-up
  /// (docs/performance.md, "kv12"; 200 us also covers the copy of a 4 MiB
  /// block). On a busy host it sleeps at once, as with channelSpin 0. 0:
  /// off. The longer of the two applies.
  std::chrono::microseconds idleChannelSpin{200};
  /// With no channel open (clients over TCP, or on other hosts), keep
  /// polling the UCX worker this long after the last activity, but only
  /// when the host has a CPU to spare as the poll begins (the rule of
  /// idleChannelSpin, /proc/loadavg read at most once a millisecond): a
  /// client's next request, which follows its reply within tens of
  /// microseconds, is then read as it arrives instead of after a wake-up
  /// (TCP, one 1 MiB block per call: put p50 ~205 -> ~185 us with the
  /// trailing checksum, docs/performance.md "kv16"). On a busy host it sleeps at once (or
  /// after pollBeforeSleep). 0: off. The longer of the two applies.
  std::chrono::microseconds idlePoll{300};
  /// The TCP congestion control of the store's UCX sockets: the first of
  /// these (comma-separated) the kernel lets the process set; "": the
  /// host's default. Over TCP loopback on a host whose default is BBR, a
  /// 1 MiB get took ~3x as long (docs/performance.md, "branch kv14").
  std::string tcpCongestion = "cubic,reno";
};

enum class Operation { Put, Get, Exists };
const char *operationName(Operation op);

/// One served request, reported when its reply has been sent.
struct OperationRecord {
  Operation op;
  double seconds = 0; // request arrival to reply sent
  uint64_t bytes = 0; // payload bytes moved (put: received, get: sent)
  uint32_t blocks = 0;
  bool sharedMemory = false; // the bytes moved through the shared segment
};
using OperationObserver = std::function<void(const OperationRecord &)>;

/// What Server::start refuses in `options` before it opens anything (sizes,
/// part size, the secret's length): for a service's --check-config.
Status validate(const ServerOptions &options);

class Server {
public:
  /// Binds the listener and starts the progress thread. `observer` runs on
  /// the progress thread (keep it short).
  static Result<std::unique_ptr<Server>> start(const ServerOptions &options,
                                                OperationObserver observer = {});
  ~Server(); // stops
  /// Closes every connection and the listener and joins the thread.
  void stop();

  uint16_t port() const;
  PoolStats stats() const;
  uint64_t connections() const;
  /// "off", "<n> bytes", or why the segment could not be made (the store
  /// then serves over UCX only).
  std::string sharedMemoryStatus() const;

  class Impl;

private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

} // namespace llmir::kvstore

// The scheduler <-> worker transport: protobuf Envelopes (worker.proto) over
// TCP, one per frame; a frame is a u32 little-endian byte length, then the
// serialized Envelope. A peer that sends a frame over the size limit, bytes
// that do not parse, or an Envelope of an unknown protocol_version is answered
// with an Error envelope (when possible) and disconnected.
//
// With a cluster secret (FramedOptions::clusterSecret) every connection first
// runs the challenge-response of llmir/support/ClusterAuth.h: the server
// hands a connection to onOpen only once the peer proved the secret (and
// drops it when that takes longer than handshakeTimeout), the client's
// connect() returns only once the server proved it. No envelope is read or
// sent before.
#pragma once

#include "llmir/proto/worker.pb.h"
#include "llmir/support/Status.h"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace llmir::net {

/// The version this build speaks; send() stamps it on envelopes that leave
/// protocol_version unset.
constexpr proto::WorkerProtocolVersion kWorkerProtocolVersion =
    proto::WORKER_PROTOCOL_VERSION_1;

struct FramedOptions {
  /// Larger frames are refused. A frame's body is read as it arrives (64 KiB
  /// at a time), so an announced size costs no memory before its bytes come.
  uint32_t maxFrameBytes = 64u << 20;
  /// When set, both sides must hold this secret (see above).
  std::optional<std::string> clusterSecret;
  /// Server side: a connection that has not finished the handshake by then
  /// is closed.
  std::chrono::milliseconds handshakeTimeout{5000};
  /// Outgoing messages queued beyond this many bytes fail send() (a peer
  /// that stopped reading must not grow our memory without bound).
  uint64_t maxQueuedBytes = 256u << 20;
};

class FramedConnection {
public:
  virtual ~FramedConnection() = default;
  /// Queues `envelope` for sending; thread-safe, never blocks on the peer.
  /// Fails when the connection is closed or the frame would be too large.
  virtual Status send(const proto::Envelope &envelope) = 0;
  /// Closes after the queued frames are written; onClose gets an OK status.
  virtual void close() = 0;
  /// Closes at once, dropping queued frames (a peer that stopped reading
  /// would keep close() waiting); onClose gets `why`. Any thread.
  virtual void abort(Status why) = 0;
  virtual bool isOpen() const = 0;
  /// "ip:port" of the other side.
  virtual const std::string &peer() const = 0;
  /// Unique within the process.
  virtual uint64_t id() const = 0;
};
using FramedConnectionPtr = std::shared_ptr<FramedConnection>;

/// Callbacks run on the channel's I/O thread, one at a time: keep them short
/// (hand long work to another thread).
struct FramedHandlers {
  std::function<void(const FramedConnectionPtr &)> onOpen;
  std::function<void(const FramedConnectionPtr &, proto::Envelope)> onMessage;
  /// Once per connection. OK when closed locally; otherwise why (peer closed,
  /// reset, frame too large, garbage, unknown version).
  std::function<void(const FramedConnectionPtr &, const Status &)> onClose;
};

class FramedServer {
public:
  /// Listens on host:port (0 = ephemeral) and accepts connections.
  static Result<std::unique_ptr<FramedServer>>
  start(const std::string &host, uint16_t port, FramedHandlers handlers,
        FramedOptions options = {});
  ~FramedServer(); // stop()s
  uint16_t port() const;
  /// Stops accepting, closes every connection (onClose runs for each) and
  /// joins the I/O thread. Not callable from a callback.
  void stop();

  struct Impl;

private:
  explicit FramedServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class FramedClient {
public:
  /// Connects, retrying refused connections until `connectTimeout`. When
  /// handlers.onMessage is empty, received envelopes queue for receive().
  static Result<std::unique_ptr<FramedClient>>
  connect(const std::string &host, uint16_t port,
          std::chrono::milliseconds connectTimeout, FramedHandlers handlers = {},
          FramedOptions options = {});
  ~FramedClient(); // close()s
  Status send(const proto::Envelope &envelope);
  /// The next queued envelope; fails on timeout or once the connection has
  /// closed and the queue is empty (the message says why it closed).
  Result<proto::Envelope> receive(std::chrono::microseconds timeout);
  const FramedConnectionPtr &connection() const;
  /// Closes the connection and joins the I/O thread. Not callable from a callback.
  void close();

  struct Impl;

private:
  explicit FramedClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

} // namespace llmir::net

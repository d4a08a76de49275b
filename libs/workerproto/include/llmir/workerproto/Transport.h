// The seam between the worker protocol and what carries its envelopes.
//
// Scheduler side: every worker is a net::FramedConnection (send, close,
// abort) whose events arrive through net::FramedHandlers; a WorkerListener
// owns the endpoint that produces them. Worker side: a SchedulerLink sends
// envelopes and receives them in order. The services use TCP (listenTcp,
// connectTcp: libs/net's framed channel, with the cluster-secret handshake
// before any envelope); the protocol's tests run both sides in one process
// over loopback, rogue peers included.
#pragma once

#include "llmir/net/Framed.h"
#include "llmir/proto/worker.pb.h"
#include "llmir/support/Status.h"

#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace llmir::workerproto {

/// The scheduler's endpoint for workers.
class WorkerListener {
public:
  virtual ~WorkerListener() = default;
  virtual uint16_t port() const = 0;
  /// Stops accepting and closes every connection (onClose runs for each).
  virtual void stop() = 0;
};

/// Starts a listener that hands its connections' events to `handlers`.
using ListenFunction =
    std::function<Result<std::unique_ptr<WorkerListener>>(net::FramedHandlers handlers)>;

/// TCP on host:port (0: ephemeral), with `options` (cluster secret, frame
/// bound, handshake deadline).
Result<std::unique_ptr<WorkerListener>> listenTcp(const std::string &host, uint16_t port,
                                                  net::FramedHandlers handlers,
                                                  net::FramedOptions options);
/// listenTcp bound to its arguments, for WorkerMembership::start.
ListenFunction tcpListener(std::string host, uint16_t port, net::FramedOptions options);

/// A worker's connection to the scheduler.
class SchedulerLink {
public:
  virtual ~SchedulerLink() = default;
  /// Queues `envelope`; fails when the connection is closed or the peer
  /// stopped reading (queue bound).
  virtual Status send(const proto::Envelope &envelope) = 0;
  /// The next envelope; fails on timeout or once closed (then isOpen() is false).
  virtual Result<proto::Envelope> receive(std::chrono::microseconds timeout) = 0;
  virtual bool isOpen() const = 0;
  /// "ip:port" of the scheduler.
  virtual std::string peer() const = 0;
  /// Drops the connection at once (queued envelopes are lost); any thread.
  virtual void abort(Status why) = 0;
  /// Flushes what was queued, closes and releases the transport; from the
  /// thread that owns the link, once.
  virtual void close() = 0;
};

/// Connects over TCP, retrying refused connections until `connectTimeout`;
/// with a secret in `options`, returns only once the handshake succeeded.
Result<std::unique_ptr<SchedulerLink>> connectTcp(const std::string &host, uint16_t port,
                                                  std::chrono::milliseconds connectTimeout,
                                                  net::FramedOptions options);

} // namespace llmir::workerproto

// The envelopes of the worker protocol (worker.proto), built in one place so
// both sides stamp the protocol version the same way, and the bounds on what
// a worker sends that may reach a log line.
#pragma once

#include "llmir/proto/worker.pb.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace llmir::workerproto {

/// A worker_id outside [1, kMaxWorkerIdBytes] bytes is refused at
/// registration (before it reaches a log line or a metric label).
constexpr size_t kMaxWorkerIdBytes = 256;
/// Error texts from workers are cut to this many bytes in logs.
constexpr size_t kMaxLoggedErrorBytes = 4096;

proto::Envelope registerWorkerMessage(const std::string &workerId, const std::string &host,
                                      const std::string &device);
proto::Envelope heartbeatMessage(const std::string &workerId, uint64_t unixMillis);
proto::Envelope drainMessage(const std::string &reason);
proto::Envelope rankReadyMessage(proto::RankReady ready);
proto::Envelope stepRequestMessage(const proto::StepRequest &request);
proto::Envelope stepResponseMessage(proto::StepResponse response);
proto::Envelope kvLoadRequestMessage(const proto::KvLoadRequest &request);
proto::Envelope kvLoadResponseMessage(proto::KvLoadResponse response);
proto::Envelope errorMessage(const std::string &message);

/// Milliseconds since the Unix epoch (heartbeats carry it for the logs).
uint64_t unixMillisNow();

} // namespace llmir::workerproto

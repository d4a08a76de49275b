// Whether the scheduler takes a new request now, and when to tell a client
// it may retry. Two refusals, both with a Retry-After:
//  - 503 no_replica: no replica became ready within noReplicaTimeout;
//  - 429 queue_full (load shedding): the waiting queue already holds
//    maxWaitingRequests sequences; queueing more only adds latency every
//    waiting client pays, and an autoscaler (llmir:num_requests_waiting)
//    needs the time Retry-After buys to add workers.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace llmir::serving {

struct AdmissionOptions {
  /// Sequences waiting for admission (summed over replicas) at which new
  /// requests are refused with 429; 0: never refuse.
  int64_t maxWaitingRequests = 0;
  /// Retry-After of a 429.
  std::chrono::seconds shedRetryAfter{1};
  /// Retry-After of the no-replica 503 (a worker takes a while to join).
  std::chrono::seconds noReplicaRetryAfter{5};
};

struct Refusal {
  int httpStatus = 0;            // 429 or 503
  std::string code;              // OpenAI error code: queue_full, no_replica
  std::string message;
  int64_t retryAfterSeconds = 0; // the Retry-After header (>= 1)
};

/// The 429 for a request arriving while `waitingSequences` wait, or none.
/// `requestedSequences` (the request's n) counts too: a request is refused
/// when it would push the queue past the bound, unless the queue is empty
/// (a single request larger than the bound still gets served).
std::optional<Refusal> shedLoad(int64_t waitingSequences, int64_t requestedSequences,
                                const AdmissionOptions &options);

/// The 503 for a request that waited `waited` without a ready replica.
Refusal noReplica(std::chrono::milliseconds waited, const AdmissionOptions &options);

/// Retry-After as a header value: whole seconds, at least 1.
std::string retryAfterHeader(std::chrono::seconds after);

} // namespace llmir::serving

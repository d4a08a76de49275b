// Whether the scheduler takes a new request now, and when to tell a client
// it may retry. Two refusals, both with a Retry-After:
//  - 503 no_replica: no replica became ready within noReplicaTimeout;
//  - 429 queue_full (load shedding): the waiting queue already holds
//    maxWaitingRequests sequences; queueing more only adds latency every
//    waiting client pays, and an autoscaler (llmir:num_requests_waiting)
//    needs the time Retry-After buys to add workers.
#pragma once

#include "llmir/support/Status.h"

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

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

/// Per-API-key bounds on requests in flight, so one key flooding the server
/// (each of its requests holds a slot from arrival, through any wait for a
/// replica, to its last byte) cannot starve the others: past its limit a key
/// gets 429 too_many_concurrent_requests with Retry-After.
struct KeyLimitOptions {
  /// Requests in flight per key when the key has no limit of its own; 0: none.
  uint32_t defaultLimit = 0;
  /// Keys with their own limit (0: none for that key).
  std::map<std::string, uint32_t> perKey;
  /// Retry-After of the 429.
  std::chrono::seconds retryAfter{1};
};

class KeyConcurrencyLimiter {
public:
  /// One request's slot; releases it when destroyed (or release()d).
  class Lease {
  public:
    Lease() = default;
    Lease(Lease &&other) noexcept;
    Lease &operator=(Lease &&other) noexcept;
    Lease(const Lease &) = delete;
    Lease &operator=(const Lease &) = delete;
    ~Lease() { release(); }
    void release();

  private:
    friend class KeyConcurrencyLimiter;
    struct State;
    std::shared_ptr<State> state_;
    std::string key_;
  };

  explicit KeyConcurrencyLimiter(KeyLimitOptions options);
  /// A slot for one more request of `key` (the bearer token; "" when none),
  /// or the 429 to answer. Thread-safe.
  std::variant<Lease, Refusal> acquire(const std::string &key);
  /// Requests of `key` in flight now.
  uint32_t inFlight(const std::string &key) const;
  /// Requests of every key in flight now.
  uint64_t totalInFlight() const;

private:
  std::shared_ptr<Lease::State> state_;
};

/// An API keys file: one key per line, optionally followed by whitespace and
/// its own limit on concurrent requests ("sk-team-a 8"); blank lines and
/// lines starting with '#' are skipped. Errors name the line (never the key).
struct ApiKeyEntry {
  std::string key;
  std::optional<uint32_t> maxConcurrentRequests;
};
Result<std::vector<ApiKeyEntry>> parseApiKeys(std::string_view text);

} // namespace llmir::serving

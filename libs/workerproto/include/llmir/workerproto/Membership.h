// The scheduler's side of the worker protocol. Workers register over a
// WorkerListener (Transport.h); every tp x pp idle workers (first registered
// first) form a replica: AssignRank with a fresh store prefix, and once every
// rank answered RankReady{ok} the replica joins the router. Each worker's
// state (idle, joining, serving, draining; lost = gone) is kept with
// heartbeat, registration and join deadlines: a replica with a lost rank is
// torn down (its survivors go back to the pool), a worker's Drain drains its
// replica and then releases the worker with Drain. A StepResponse (and a
// KvLoadResponse) counts only from a serving rank of the replica it was
// asked of, once per rank.
//
// Every send is checked: a send that fails (connection closed, peer not
// reading) is logged and the worker's connection dropped, which tears its
// replica down like any lost worker.
#pragma once

#include "llmir/serving/ReplicaRouter.h"
#include "llmir/support/Status.h"
#include "llmir/workerproto/Transport.h"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace llmir::workerproto {

struct MembershipOptions {
  /// What AssignRank tells the workers.
  std::string planId;
  uint32_t worldSize = 1; // ranks per replica (tp x pp)
  std::string compilerUrl;
  std::string modelDir;
  std::string storeHost = "127.0.0.1";
  uint16_t storePort = 0;
  int64_t kvBlocks = 1024; // per rank
  /// The KV-block store the ranks write through to and load from
  /// (docs/kv-store.md); none when unset.
  std::optional<proto::KvStoreConfig> kvStore;
  /// What the router must know of a replica.
  int32_t kvBlockSize = 16;
  int32_t vocabSize = 0;
  int32_t pp = 1;
  /// A registered worker silent this long is lost.
  std::chrono::milliseconds heartbeatTimeout{5000};
  /// A replica not ready this long after AssignRank is torn down.
  std::chrono::milliseconds joinTimeout{120000};
  /// A draining replica's sequences finish this long, then move.
  std::chrono::milliseconds drainGrace{30000};
  /// A connection that has not sent RegisterWorker this long after it was
  /// handed over (after the handshake) is closed.
  std::chrono::milliseconds registerTimeout{5000};
  /// How often the deadlines above are checked.
  std::chrono::milliseconds monitorPeriod{100};
};

struct MeshCounts {
  int32_t workersIdle = 0;     // registered, in no replica
  int32_t workersJoining = 0;  // assigned, RankReady pending
  int32_t workersServing = 0;  // rank of a ready replica
  int32_t workersDraining = 0; // SIGTERM received, handing back work
  int32_t replicasJoining = 0;
  uint64_t workersLost = 0;    // connection closed or heartbeat timeout
  uint64_t sendFailures = 0;   // sends that failed (their connection was dropped)
};

class WorkerMembership {
public:
  /// Starts the listener (`listen`, e.g. tcpListener(...)) and the deadline
  /// monitor; ready replicas go to `router`, which must outlive this.
  static Result<std::unique_ptr<WorkerMembership>>
  start(MembershipOptions options, serving::ReplicaRouter &router, const ListenFunction &listen);
  ~WorkerMembership(); // stop()s
  WorkerMembership(const WorkerMembership &) = delete;
  WorkerMembership &operator=(const WorkerMembership &) = delete;

  uint16_t port() const;
  MeshCounts counts() const;
  /// Closes every worker connection, fails the replicas' steps in flight
  /// (nothing waits on a dead step) and stops. Idempotent.
  void stop();

  struct Impl;

private:
  explicit WorkerMembership(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

} // namespace llmir::workerproto

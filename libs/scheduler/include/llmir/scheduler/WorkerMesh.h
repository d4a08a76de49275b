// Mesh mode: compiles the plan on the compiler service, hosts the rendezvous
// store and the workers' endpoint. The protocol with the workers (membership,
// heartbeats, join, drain, steps) is libs/workerproto's WorkerMembership:
// idle workers form replicas of world_size ranks that join the router once
// every rank reported RankReady (docs/reliability.md).
#pragma once

#include "llmir/scheduler/Metrics.h"

#include "llmir/serving/ReplicaRouter.h"
#include "llmir/support/Status.h"

#include <chrono>
#include <memory>
#include <optional>
#include <string>

namespace llmir::scheduler {

struct MeshOptions {
  std::string compilerUrl;   // llmir-compiler-service
  std::string modelDir;      // checkpoint directory readable by the workers
  int32_t tp = 1;
  int32_t pp = 1;
  int32_t kvBlockSize = 16;
  int64_t kvBlocks = 1024;   // per rank
  int32_t vocabSize = 0;
  std::string workerHost = "127.0.0.1"; // framed server for workers
  uint16_t workerPort = 0;               // 0: ephemeral
  std::string storeHost = "127.0.0.1";   // rendezvous store, as workers reach it
  uint16_t storePort = 0;                // store listens on workerHost:storePort (0: ephemeral)
  std::chrono::milliseconds heartbeatTimeout{5000};
  std::chrono::milliseconds joinTimeout{120000};
  std::chrono::milliseconds drainGrace{30000};
  std::chrono::milliseconds compileTimeout{300000};
  /// The internal plane's secret: workers and store clients must prove it
  /// (docs/reliability.md); sent as a derived bearer to the compiler service.
  std::optional<std::string> clusterSecret;
  /// A connection that has not registered (after the handshake) this long
  /// after connecting is closed.
  std::chrono::milliseconds registerTimeout{5000};
  /// Frames from workers larger than this close their connection.
  uint32_t maxFrameBytes = 64u << 20;
  /// The KV-block store the workers write full blocks through to and load
  /// prefixes from (docs/kv-store.md); empty host: none.
  std::string kvStoreHost;
  uint16_t kvStorePort = 13337;
  uint32_t kvStoreTimeoutMs = 1000;
  uint64_t kvStoreMaxQueuedBytes = 64ull << 20;
};

class WorkerMesh {
public:
  /// Compiles the plan on the compiler service, starts the rendezvous store
  /// and the workers' endpoint.
  static Result<std::unique_ptr<WorkerMesh>> start(MeshOptions options,
                                                   serving::ReplicaRouter &router);
  ~WorkerMesh(); // stop()s
  uint16_t workerPort() const;
  const std::string &planId() const;
  MeshCounts counts() const;
  /// Closes every worker connection (their replicas' steps fail) and stops.
  void stop();

  struct Impl;

private:
  explicit WorkerMesh(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

} // namespace llmir::scheduler

// The scheduler's Prometheus metrics, named like vLLM's with the llmir:
// prefix (docs/metrics.md lists them). prometheus-cpp stays behind a pimpl.
#pragma once

#include "llmir/serving/BatchScheduler.h"
#include "llmir/serving/ReplicaRouter.h"
#include "llmir/workerproto/Membership.h"

#include <memory>
#include <string>

namespace llmir::scheduler {

/// The worker pool as the mesh sees it (mesh mode only; libs/workerproto).
using MeshCounts = workerproto::MeshCounts;

class Metrics {
public:
  explicit Metrics(const std::string &modelName);
  ~Metrics();

  void observeStep(const serving::StepStats &step);
  /// Gauges and the counters the batch manager keeps (prefix cache,
  /// preemptions) from a stats snapshot.
  void update(const serving::SchedulerStats &stats);
  void observeFirstToken(double seconds);
  void observeInterToken(double seconds);
  /// A finished choice (stop, length, abort, error).
  void observeFinished(serving::FinishReason reason, int64_t generatedTokens);
  /// A finished request: its prompt tokens and end-to-end latency.
  void observeRequest(int64_t promptTokens, double e2eSeconds);

  /// A request refused before it was queued, by code (queue_full: shed
  /// with 429, no_replica: 503 after waiting for a replica).
  void observeRefusal(const std::string &code);
  /// API requests accepted and not finished (waiting for a replica included).
  void setRequestsInFlight(int64_t count);

  /// Replicas by state, re-queues, drains, failures, balancing choices.
  void updateCluster(const serving::RouterStats &router, const MeshCounts &mesh);

  /// The Prometheus text exposition of every metric.
  std::string render() const;

private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

} // namespace llmir::scheduler

#include "llmir/scheduler/Metrics.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <map>
#include <mutex>

namespace llmir::scheduler {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

namespace {
// vLLM's buckets, so dashboards' quantiles line up.
const Histogram::BucketBoundaries kTtftBuckets = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
const Histogram::BucketBoundaries kItlBuckets = {
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0,  2.5,   5.0,  7.5,   10.0, 20.0, 40.0, 80.0};
const Histogram::BucketBoundaries kE2eBuckets = {
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
const Histogram::BucketBoundaries kBatchBuckets = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
const Histogram::BucketBoundaries kTokenBuckets = {1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};

/// Adds to `counter` what the cumulative `now` gained since `seen`, the value
/// last exported (stats come as running totals, Prometheus counters take deltas).
void advance(prometheus::Counter &counter, uint64_t now, uint64_t &seen) {
  if (now > seen)
    counter.Increment(static_cast<double>(now - seen));
  seen = std::max(seen, now);
}
} // namespace

struct Metrics::Impl {
  explicit Impl(const std::string &model) : labels{{"model_name", model}} {}

  prometheus::Labels labels;
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::mutex mutex; // Increment-by-delta bookkeeping
  serving::SchedulerStats last;

  Histogram &histogram(const char *name, const char *help,
                       const Histogram::BucketBoundaries &buckets) {
    return BuildHistogram().Name(name).Help(help).Register(*registry).Add(labels, buckets);
  }
  prometheus::Gauge &gauge(const char *name, const char *help) {
    return BuildGauge().Name(name).Help(help).Register(*registry).Add(labels);
  }
  prometheus::Counter &counter(const char *name, const char *help) {
    return BuildCounter().Name(name).Help(help).Register(*registry).Add(labels);
  }
  prometheus::Labels with(const char *name, const char *value) const {
    prometheus::Labels out = labels;
    out[name] = value;
    return out;
  }

  Histogram &ttft = histogram("llmir:time_to_first_token_seconds",
                              "Histogram of time to first token in seconds.", kTtftBuckets);
  Histogram &itl = histogram("llmir:inter_token_latency_seconds",
                             "Histogram of inter-token latency in seconds.", kItlBuckets);
  Histogram &tpot = histogram("llmir:time_per_output_token_seconds",
                              "Histogram of time per output token in seconds.", kItlBuckets);
  Histogram &e2e = histogram("llmir:e2e_request_latency_seconds",
                             "Histogram of end to end request latency in seconds.", kE2eBuckets);
  Histogram &promptTokensPerRequest =
      histogram("llmir:request_prompt_tokens", "Number of prefill tokens processed.", kTokenBuckets);
  Histogram &batchSize = histogram("llmir:batch_size_sequences",
                                   "Histogram of sequences per scheduled step.", kBatchBuckets);
  Histogram &iterationTokens = histogram("llmir:iteration_tokens",
                                         "Histogram of tokens per scheduled step.", kTokenBuckets);
  prometheus::Gauge &running =
      gauge("llmir:num_requests_running", "Number of sequences in the running queue (holding KV blocks).");
  prometheus::Gauge &waiting =
      gauge("llmir:num_requests_waiting", "Number of sequences waiting to be scheduled.");
  prometheus::Gauge &kvUsage =
      gauge("llmir:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.");
  prometheus::Counter &prefixQueries = counter(
      "llmir:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.");
  prometheus::Counter &prefixHits = counter(
      "llmir:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.");
  prometheus::Counter &promptTokens =
      counter("llmir:prompt_tokens_total", "Number of prefill tokens processed.");
  prometheus::Counter &generationTokens =
      counter("llmir:generation_tokens_total", "Number of generation tokens processed.");
  prometheus::Counter &preemptions =
      counter("llmir:num_preemptions_total", "Cumulative number of preemptions.");
  prometheus::Counter &stepFailures =
      counter("llmir:step_failures_total", "Steps that failed on a replica and were re-queued.");
  // KV-block store (docs/kv-store.md).
  prometheus::Counter &kvStorePrefillSkipped =
      counter("llmir:kv_store_prefill_tokens_skipped_total",
              "Prompt and re-queued tokens whose KV was loaded from the KV-block store instead "
              "of being computed.");
  prometheus::Family<prometheus::Counter> &kvStoreLoadFamily =
      BuildCounter()
          .Name("llmir:kv_store_load_requests_total")
          .Help("Sequence loads asked of a replica's workers, by outcome (ok: answered, "
                "possibly with 0 blocks; failed: nothing usable, the tokens were computed).")
          .Register(*registry);
  prometheus::Counter &kvStoreLoadsOk = kvStoreLoadFamily.Add(with("outcome", "ok"));
  prometheus::Counter &kvStoreLoadsFailed = kvStoreLoadFamily.Add(with("outcome", "failed"));
  prometheus::Counter &kvStoreWriteThrough =
      counter("llmir:kv_store_write_through_blocks_total",
              "KV blocks the workers were asked to write to the store: as steps filled them "
              "(write-through) or when their sequence finished (on-finish); per replica, every "
              "rank writes its part.");
  prometheus::Family<prometheus::Counter> &requeuedTokensFamily =
      BuildCounter()
          .Name("llmir:requeued_tokens_total")
          .Help("Tokens of sequences moved to another replica, by whether their KV was reused "
                "there (prefix cache or KV-block store) or recomputed.")
          .Register(*registry);
  prometheus::Counter &requeuedTokensReused = requeuedTokensFamily.Add(with("kv", "reused"));
  prometheus::Counter &requeuedTokensRecomputed =
      requeuedTokensFamily.Add(with("kv", "recomputed"));
  prometheus::Family<prometheus::Counter> &success =
      BuildCounter()
          .Name("llmir:request_success_total")
          .Help("Count of finished requests (choices) by finished_reason.")
          .Register(*registry);
  std::map<serving::FinishReason, prometheus::Counter *> successByReason;

  // Elastic serving (docs/reliability.md).
  prometheus::Family<prometheus::Gauge> &replicas =
      BuildGauge().Name("llmir:replicas").Help("Replicas by state (joining, ready, draining).").Register(*registry);
  prometheus::Family<prometheus::Gauge> &workers =
      BuildGauge().Name("llmir:workers").Help("Registered shard workers by state (idle, joining, serving, draining).").Register(*registry);
  prometheus::Family<prometheus::Gauge> &replicaSpeed =
      BuildGauge().Name("llmir:replica_tokens_per_second").Help("Measured step throughput of each replica (tokens per second), the balancer's weight.").Register(*registry);
  prometheus::Family<prometheus::Counter> &decisions =
      BuildCounter().Name("llmir:lb_decisions_total").Help("Load-balancing choices by replica and reason.").Register(*registry);
  prometheus::Gauge &requestsInFlight =
      gauge("llmir:api_requests_in_flight",
            "API requests accepted and not finished, waiting for a replica included.");
  prometheus::Gauge &waitingForReplica =
      gauge("llmir:requests_waiting_for_replica", "Requests held while no replica is ready.");
  prometheus::Counter &requeued =
      counter("llmir:requeued_sequences_total", "Sequences moved to another replica (tokens kept).");
  prometheus::Counter &replicaFailures =
      counter("llmir:replica_failures_total",
              "Replicas torn down because a rank was lost or the ranks disagreed on a step.");
  prometheus::Counter &replicaDrains =
      counter("llmir:replica_drains_total", "Replicas drained (a worker received SIGTERM).");
  prometheus::Counter &workersLost =
      counter("llmir:workers_lost_total", "Workers lost (connection closed or heartbeat timeout).");
  prometheus::Counter &workerSendFailures =
      counter("llmir:worker_send_failures_total",
              "Sends to workers that failed (the worker's connection was dropped).");
  prometheus::Counter &noReplicaTimeouts =
      counter("llmir:no_replica_timeouts_total", "Requests failed after waiting for a replica.");
  prometheus::Family<prometheus::Counter> &refused =
      BuildCounter()
          .Name("llmir:requests_refused_total")
          .Help("Requests refused before queueing, by code (queue_full: 429, "
                "too_many_concurrent_requests: 429 per API key, no_replica: 503).")
          .Register(*registry);
  std::map<std::string, prometheus::Counter *> refusedByCode;
  serving::RouterStats lastRouter;
  uint64_t lastLost = 0;
  uint64_t lastSendFailures = 0;
  std::map<std::string, prometheus::Gauge *> speedByReplica;
};

Metrics::Metrics(const std::string &modelName) : impl_(std::make_unique<Impl>(modelName)) {
  for (auto reason : {serving::FinishReason::Stop, serving::FinishReason::Length,
                      serving::FinishReason::Abort, serving::FinishReason::Error}) {
    prometheus::Labels labels = impl_->labels;
    labels["finished_reason"] = serving::finishReasonName(reason);
    impl_->successByReason[reason] = &impl_->success.Add(labels);
  }
  for (const char *code : {"queue_full", "no_replica", "too_many_concurrent_requests"}) {
    prometheus::Labels labels = impl_->labels;
    labels["code"] = code;
    impl_->refusedByCode[code] = &impl_->refused.Add(labels);
  }
}

void Metrics::setRequestsInFlight(int64_t count) {
  impl_->requestsInFlight.Set(static_cast<double>(count));
}

void Metrics::observeRefusal(const std::string &code) {
  if (auto it = impl_->refusedByCode.find(code); it != impl_->refusedByCode.end())
    it->second->Increment();
}

Metrics::~Metrics() = default;

void Metrics::observeStep(const serving::StepStats &step) {
  impl_->batchSize.Observe(step.numSequences);
  impl_->iterationTokens.Observe(step.numTokens);
}

void Metrics::update(const serving::SchedulerStats &s) {
  impl_->running.Set(s.numRunning);
  impl_->waiting.Set(s.numWaiting);
  impl_->kvUsage.Set(s.kvUsage);
  std::lock_guard<std::mutex> lock(impl_->mutex);
  serving::SchedulerStats &last = impl_->last;
  advance(impl_->prefixQueries, s.prefixQueryTokens, last.prefixQueryTokens);
  advance(impl_->prefixHits, s.prefixHitTokens, last.prefixHitTokens);
  advance(impl_->preemptions, s.numPreemptions, last.numPreemptions);
  advance(impl_->stepFailures, s.numStepFailures, last.numStepFailures);
  advance(impl_->kvStorePrefillSkipped, s.kvStoreLoadedTokens, last.kvStoreLoadedTokens);
  // ok = asked - failed; `last` keeps both totals.
  const uint64_t okNow = s.kvStoreLoads - s.kvStoreLoadFailures;
  const uint64_t okBefore = last.kvStoreLoads - last.kvStoreLoadFailures;
  if (okNow > okBefore)
    impl_->kvStoreLoadsOk.Increment(static_cast<double>(okNow - okBefore));
  last.kvStoreLoads = s.kvStoreLoads;
  advance(impl_->kvStoreLoadsFailed, s.kvStoreLoadFailures, last.kvStoreLoadFailures);
  advance(impl_->kvStoreWriteThrough, s.kvStoreWrittenBlocks, last.kvStoreWrittenBlocks);
  advance(impl_->requeuedTokensReused, s.adoptedTokensReused, last.adoptedTokensReused);
  advance(impl_->requeuedTokensRecomputed, s.adoptedTokensRecomputed,
          last.adoptedTokensRecomputed);
}

void Metrics::observeFirstToken(double seconds) { impl_->ttft.Observe(seconds); }

void Metrics::observeInterToken(double seconds) {
  impl_->itl.Observe(seconds);
  impl_->tpot.Observe(seconds);
}

void Metrics::observeFinished(serving::FinishReason reason, int64_t generatedTokens) {
  impl_->successByReason.at(reason)->Increment();
  impl_->generationTokens.Increment(static_cast<double>(generatedTokens));
}

void Metrics::observeRequest(int64_t promptTokens, double e2eSeconds) {
  impl_->promptTokens.Increment(static_cast<double>(promptTokens));
  impl_->promptTokensPerRequest.Observe(static_cast<double>(promptTokens));
  impl_->e2e.Observe(e2eSeconds);
}

void Metrics::updateCluster(const serving::RouterStats &router, const MeshCounts &mesh) {
  Impl &m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  auto labeled = [&](const char *key, const std::string &value) {
    prometheus::Labels labels = m.labels;
    labels[key] = value;
    return labels;
  };
  int32_t ready = 0, draining = 0;
  for (const auto &replica : router.replicas)
    (replica.state == serving::ReplicaState::Ready ? ready : draining) += 1;
  m.replicas.Add(labeled("state", "joining")).Set(mesh.replicasJoining);
  m.replicas.Add(labeled("state", "ready")).Set(ready);
  m.replicas.Add(labeled("state", "draining")).Set(draining);
  m.workers.Add(labeled("state", "idle")).Set(mesh.workersIdle);
  m.workers.Add(labeled("state", "joining")).Set(mesh.workersJoining);
  m.workers.Add(labeled("state", "serving")).Set(mesh.workersServing);
  m.workers.Add(labeled("state", "draining")).Set(mesh.workersDraining);
  m.waitingForReplica.Set(router.waitingForReplica);

  std::map<std::string, prometheus::Gauge *> speeds;
  for (const auto &replica : router.replicas) {
    auto *gauge = &m.replicaSpeed.Add(labeled("replica", replica.id));
    gauge->Set(replica.tokensPerSecond);
    speeds[replica.id] = gauge;
  }
  for (auto &[id, gauge] : m.speedByReplica)
    if (!speeds.count(id))
      m.replicaSpeed.Remove(gauge); // the replica is gone
  m.speedByReplica = std::move(speeds);

  serving::RouterStats &last = m.lastRouter;
  advance(m.requeued, router.requeuedSequences, last.requeuedSequences);
  advance(m.replicaFailures, router.replicaFailures, last.replicaFailures);
  advance(m.replicaDrains, router.replicaDrains, last.replicaDrains);
  advance(m.noReplicaTimeouts, router.noReplicaTimeouts, last.noReplicaTimeouts);
  advance(m.workersLost, mesh.workersLost, m.lastLost);
  advance(m.workerSendFailures, mesh.sendFailures, m.lastSendFailures);
  for (const auto &[key, count] : router.decisions) {
    prometheus::Labels labels = labeled("replica", key.first);
    labels["reason"] = key.second;
    advance(m.decisions.Add(labels), count, last.decisions[key]);
  }
}

std::string Metrics::render() const {
  return prometheus::TextSerializer().Serialize(impl_->registry->Collect());
}

} // namespace llmir::scheduler

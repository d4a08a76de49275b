#include "llmir/kvstore/StoreMetrics.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <mutex>

namespace llmir::kvstore {

// Operations are recorded on the store's progress thread while /metrics
// reads on an HTTP thread; prometheus-cpp's metrics are thread-safe.
struct StoreMetrics::Impl {
  std::shared_ptr<prometheus::Registry> registry =
      std::make_shared<prometheus::Registry>();
  prometheus::Gauge &bytesHeld =
      gauge("llmir:kv_store_bytes", "Bytes of KV blocks held.");
  prometheus::Gauge &capacity = gauge("llmir:kv_store_capacity_bytes",
                                      "The store's memory budget in bytes.");
  prometheus::Gauge &blocks = gauge("llmir:kv_store_blocks", "KV blocks held.");
  prometheus::Gauge &connections =
      gauge("llmir:kv_store_connections", "Clients connected through UCX.");
  // Pool counters are cumulative in the library; exported as counters by
  // adding the difference since the last scrape.
  prometheus::Counter &hits = counter("llmir:kv_store_hits_total",
                                      "Blocks asked for by get and found.");
  prometheus::Counter &misses = counter(
      "llmir:kv_store_misses_total", "Blocks asked for by get and not held.");
  prometheus::Counter &evictions =
      counter("llmir:kv_store_evictions_total",
              "Blocks evicted (least recently used) to make room.");
  prometheus::Counter &stored =
      counter("llmir:kv_store_blocks_stored_total", "Blocks stored by put.");
  prometheus::Counter &rejected = counter(
      "llmir:kv_store_blocks_rejected_total",
      "Blocks rejected: dtype, size or checksum did not match (put or get).");
  prometheus::Family<prometheus::Histogram> &seconds =
      prometheus::BuildHistogram()
          .Name("llmir:kv_store_request_seconds")
          .Help(
              "Request arrival to reply sent, by operation (put, get, exists).")
          .Register(*registry);
  prometheus::Family<prometheus::Histogram> &throughput =
      prometheus::BuildHistogram()
          .Name("llmir:kv_store_request_bytes_per_second")
          .Help("Block bytes moved per request over its duration (put, get).")
          .Register(*registry);
  prometheus::Family<prometheus::Counter> &bytesMoved =
      prometheus::BuildCounter()
          .Name("llmir:kv_store_transferred_bytes_total")
          .Help("Block bytes received by put and sent by get.")
          .Register(*registry);
  prometheus::Family<prometheus::Counter> &sharedBytes =
      prometheus::BuildCounter()
          .Name("llmir:kv_store_shared_memory_bytes_total")
          .Help("Of those, the block bytes that clients on this host moved "
                "through the "
                "store's shared-memory segment (put, get).")
          .Register(*registry);

  std::mutex mu;
  PoolStats last;

  prometheus::Gauge &gauge(const char *name, const char *help) {
    return prometheus::BuildGauge()
        .Name(name)
        .Help(help)
        .Register(*registry)
        .Add({});
  }
  prometheus::Counter &counter(const char *name, const char *help) {
    return prometheus::BuildCounter()
        .Name(name)
        .Help(help)
        .Register(*registry)
        .Add({});
  }

  void record(const OperationRecord &r) {
    static const prometheus::Histogram::BucketBoundaries latency = {
        25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3,   2.5e-3,
        5e-3,  10e-3, 25e-3,  50e-3,  100e-3, 250e-3, 1};
    static const prometheus::Histogram::BucketBoundaries bandwidth = {
        1e8, 2.5e8, 5e8, 1e9, 2e9, 4e9, 8e9, 16e9, 32e9};
    const char *op = operationName(r.op);
    seconds.Add({{"op", op}}, latency).Observe(r.seconds);
    if (r.op != Operation::Exists && r.bytes > 0) {
      bytesMoved.Add({{"op", op}}).Increment(double(r.bytes));
      if (r.sharedMemory)
        sharedBytes.Add({{"op", op}}).Increment(double(r.bytes));
      if (r.seconds > 0)
        throughput.Add({{"op", op}}, bandwidth)
            .Observe(double(r.bytes) / r.seconds);
    }
  }

  void refresh(const PoolStats &s, uint64_t clients) {
    std::lock_guard lock(mu);
    bytesHeld.Set(double(s.bytesHeld));
    capacity.Set(double(s.capacityBytes));
    blocks.Set(double(s.blocks));
    connections.Set(double(clients));
    hits.Increment(double(s.hits - last.hits));
    misses.Increment(double(s.misses - last.misses));
    evictions.Increment(double(s.evictions - last.evictions));
    stored.Increment(double(s.stored - last.stored));
    rejected.Increment(double(s.rejected - last.rejected));
    // Gets that same-host clients served from the store's index moved their
    // bytes through the segment without a request (no request histogram).
    if (s.clientServedBytes > last.clientServedBytes) {
      double moved = double(s.clientServedBytes - last.clientServedBytes);
      bytesMoved.Add({{"op", "get"}}).Increment(moved);
      sharedBytes.Add({{"op", "get"}}).Increment(moved);
    }
    last = s;
  }
};

StoreMetrics::StoreMetrics() : impl_(std::make_unique<Impl>()) {}
StoreMetrics::~StoreMetrics() = default;

void StoreMetrics::record(const OperationRecord &record) {
  impl_->record(record);
}

void StoreMetrics::refresh(const PoolStats &stats, uint64_t clients) {
  impl_->refresh(stats, clients);
}

std::string StoreMetrics::render() const {
  return prometheus::TextSerializer().Serialize(impl_->registry->Collect());
}

} // namespace llmir::kvstore

// The KV-block store's Prometheus metrics (llmir: names, docs/metrics.md):
// what the server's operations and its pool's counters say, rendered for
// llmir-kv-store's /metrics. prometheus-cpp stays in src/.
#pragma once

#include "llmir/kvstore/BlockPool.h"
#include "llmir/kvstore/Server.h"

#include <cstdint>
#include <memory>
#include <string>

namespace llmir::kvstore {

class StoreMetrics {
public:
  StoreMetrics();
  ~StoreMetrics();
  StoreMetrics(const StoreMetrics &) = delete;
  StoreMetrics &operator=(const StoreMetrics &) = delete;

  /// One request (the server's OperationObserver; its progress thread).
  void record(const OperationRecord &record);
  /// The pool's gauges, and its cumulative counters as the difference
  /// since the last refresh; `clients`: UCX connections now.
  void refresh(const PoolStats &stats, uint64_t clients);
  /// The Prometheus text exposition of every metric.
  std::string render() const;

private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

} // namespace llmir::kvstore

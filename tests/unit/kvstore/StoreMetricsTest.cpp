// The store's Prometheus metrics (kvstore/StoreMetrics.h): requests by
// operation, bytes moved (and of those through shared memory), the pool's
// cumulative counters exported as the difference since the last scrape.
#include "llmir/kvstore/StoreMetrics.h"

#include <gtest/gtest.h>

namespace llmir::kvstore {
namespace {

bool has(const std::string &text, const std::string &line) {
  return text.find(line + "\n") != std::string::npos;
}

TEST(StoreMetrics, RequestsAndBytesByOperation) {
  StoreMetrics metrics;
  metrics.record(
      {.op = Operation::Put, .seconds = 0.001, .bytes = 1 << 20, .blocks = 1});
  metrics.record({.op = Operation::Get,
                  .seconds = 0.0005,
                  .bytes = 2 << 20,
                  .blocks = 2,
                  .sharedMemory = true});
  metrics.record({.op = Operation::Exists, .seconds = 0.0001, .blocks = 4});
  const std::string text = metrics.render();
  EXPECT_TRUE(
      has(text, "llmir:kv_store_transferred_bytes_total{op=\"put\"} 1048576"))
      << text;
  EXPECT_TRUE(
      has(text, "llmir:kv_store_transferred_bytes_total{op=\"get\"} 2097152"))
      << text;
  EXPECT_TRUE(
      has(text, "llmir:kv_store_shared_memory_bytes_total{op=\"get\"} 2097152"))
      << text;
  EXPECT_EQ(text.find("llmir:kv_store_shared_memory_bytes_total{op=\"put\"}"),
            std::string::npos)
      << "the put went over UCX";
  EXPECT_TRUE(
      has(text, "llmir:kv_store_request_seconds_count{op=\"exists\"} 1"))
      << text;
  EXPECT_TRUE(has(
      text, "llmir:kv_store_request_seconds_bucket{op=\"put\",le=\"0.001\"} 1"))
      << text;
  EXPECT_TRUE(
      has(text,
          "llmir:kv_store_request_seconds_bucket{op=\"put\",le=\"0.0005\"} 0"))
      << text;
  // 1 MiB in a millisecond: ~1.05 GB/s, in the 2 GB/s bucket, not the 1 GB/s
  // one.
  EXPECT_TRUE(has(text, "llmir:kv_store_request_bytes_per_second_bucket{op="
                        "\"put\",le=\"1000000000\"} 0"))
      << text;
  EXPECT_TRUE(has(text, "llmir:kv_store_request_bytes_per_second_bucket{op="
                        "\"put\",le=\"2000000000\"} 1"))
      << text;
  EXPECT_EQ(
      text.find("llmir:kv_store_request_bytes_per_second_count{op=\"exists\"}"),
      std::string::npos)
      << "exists moves no block bytes";
}

TEST(StoreMetrics, PoolCountersAreTheDifferenceSinceTheLastScrape) {
  StoreMetrics metrics;
  PoolStats stats{.capacityBytes = 1 << 30,
                  .bytesHeld = 3 << 20,
                  .blocks = 3,
                  .hits = 5,
                  .misses = 2,
                  .evictions = 1,
                  .stored = 4,
                  .rejected = 1};
  metrics.refresh(stats, 2);
  stats.hits = 9;
  stats.stored = 6;
  stats.clientServedBytes = 4096;
  stats.blocks = 5;
  metrics.refresh(stats, 1);
  metrics.refresh(stats, 1); // nothing new: no counter moves
  const std::string text = metrics.render();
  EXPECT_TRUE(has(text, "llmir:kv_store_hits_total 9")) << text;
  EXPECT_TRUE(has(text, "llmir:kv_store_misses_total 2")) << text;
  EXPECT_TRUE(has(text, "llmir:kv_store_blocks_stored_total 6")) << text;
  EXPECT_TRUE(has(text, "llmir:kv_store_evictions_total 1")) << text;
  EXPECT_TRUE(has(text, "llmir:kv_store_blocks_rejected_total 1")) << text;
  EXPECT_TRUE(has(text, "llmir:kv_store_blocks 5")) << text;
  EXPECT_TRUE(has(text, "llmir:kv_store_connections 1")) << text;
  EXPECT_TRUE(has(text, "llmir:kv_store_capacity_bytes 1073741824")) << text;
  // Gets that same-host clients served from the index count as get bytes,
  // through shared memory.
  EXPECT_TRUE(
      has(text, "llmir:kv_store_transferred_bytes_total{op=\"get\"} 4096"))
      << text;
  EXPECT_TRUE(
      has(text, "llmir:kv_store_shared_memory_bytes_total{op=\"get\"} 4096"))
      << text;
}

} // namespace
} // namespace llmir::kvstore

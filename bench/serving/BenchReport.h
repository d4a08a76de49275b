// Aggregates a benchmark run into vLLM benchmark_serving's metrics:
// throughputs, and mean/median/p90/p99 of TTFT, TPOT, ITL and end-to-end
// latency (milliseconds), printed as a table or written as JSON.
#pragma once

#include "ServingBenchmark.h"

#include <map>
#include <string>
#include <vector>

namespace llmir::bench {

struct LatencySummary {
  size_t count = 0; // all statistics are 0 when count is 0
  double mean = 0, median = 0, p90 = 0, p99 = 0;
};

/// Percentile of sorted `values` by linear interpolation between closest
/// ranks (numpy's default), p in [0, 100].
double percentile(const std::vector<double> &sorted, double p);
LatencySummary summarize(std::vector<double> values);

struct BenchmarkReport {
  int completed = 0;
  int failed = 0;
  double durationSeconds = 0;
  int64_t totalInputTokens = 0;
  int64_t totalOutputTokens = 0;
  double requestThroughput = 0; // completed requests / s
  double outputThroughput = 0;  // output tokens / s
  double totalTokenThroughput = 0;
  LatencySummary ttftMs, tpotMs, itlMs, e2elMs;
  std::map<std::string, int> errors; // message -> count
};

/// Successful requests count toward tokens and latencies; TPOT is
/// (e2e - ttft) / (output tokens - 1) for requests with more than one token.
BenchmarkReport buildReport(const BenchmarkRun &run);

std::string formatTable(const BenchmarkReport &report, const BenchmarkOptions &options,
                        const std::string &model);
/// vLLM-style keys (completed, request_throughput, mean_ttft_ms, ...) plus
/// the options and the error messages.
std::string formatJson(const BenchmarkReport &report, const BenchmarkOptions &options,
                       const std::string &model);

} // namespace llmir::bench

#include "BenchReport.h"

#include <boost/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

namespace llmir::bench {
namespace json = boost::json;

double percentile(const std::vector<double> &sorted, double p) {
  if (sorted.empty())
    return 0;
  const double rank = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t below = static_cast<size_t>(std::floor(rank));
  const size_t above = std::min(below + 1, sorted.size() - 1);
  const double fraction = rank - static_cast<double>(below);
  return sorted[below] + (sorted[above] - sorted[below]) * fraction;
}

LatencySummary summarize(std::vector<double> values) {
  LatencySummary s;
  s.count = values.size();
  if (values.empty())
    return s;
  std::sort(values.begin(), values.end());
  s.mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(s.count);
  s.median = percentile(values, 50);
  s.p90 = percentile(values, 90);
  s.p99 = percentile(values, 99);
  return s;
}

BenchmarkReport buildReport(const BenchmarkRun &run) {
  BenchmarkReport report;
  report.durationSeconds = run.durationSeconds;
  std::vector<double> ttft, tpot, itl, e2el;
  for (const RequestResult &r : run.results) {
    if (!r.success) {
      ++report.failed;
      ++report.errors[r.error];
      continue;
    }
    ++report.completed;
    report.totalInputTokens += r.promptTokens;
    report.totalOutputTokens += r.outputTokens;
    ttft.push_back(r.ttft * 1e3);
    e2el.push_back(r.e2e * 1e3);
    if (r.outputTokens > 1)
      tpot.push_back((r.e2e - r.ttft) * 1e3 / static_cast<double>(r.outputTokens - 1));
    for (double gap : r.itl)
      itl.push_back(gap * 1e3);
  }
  if (report.durationSeconds > 0) {
    report.requestThroughput = report.completed / report.durationSeconds;
    report.outputThroughput = static_cast<double>(report.totalOutputTokens) / report.durationSeconds;
    report.totalTokenThroughput =
        static_cast<double>(report.totalInputTokens + report.totalOutputTokens) /
        report.durationSeconds;
  }
  report.ttftMs = summarize(std::move(ttft));
  report.tpotMs = summarize(std::move(tpot));
  report.itlMs = summarize(std::move(itl));
  report.e2elMs = summarize(std::move(e2el));
  return report;
}

namespace {

std::string rateText(double rate) {
  return std::isfinite(rate) ? std::to_string(rate) : std::string("inf");
}

void appendLine(std::string &out, const char *label, const std::string &value) {
  char line[160];
  std::snprintf(line, sizeof line, "%-40s %16s\n", label, value.c_str());
  out += line;
}

std::string number(double value, int decimals = 2) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals, value);
  return text;
}

void appendLatency(std::string &out, const char *title, const char *name,
                   const LatencySummary &s) {
  out += "---------------" + std::string(title) + "---------------\n";
  const std::string n(name);
  appendLine(out, ("Mean " + n + " (ms):").c_str(), number(s.mean));
  appendLine(out, ("Median " + n + " (ms):").c_str(), number(s.median));
  appendLine(out, ("P90 " + n + " (ms):").c_str(), number(s.p90));
  appendLine(out, ("P99 " + n + " (ms):").c_str(), number(s.p99));
}

void putLatency(json::object &out, const std::string &name, const LatencySummary &s) {
  out["mean_" + name + "_ms"] = s.mean;
  out["median_" + name + "_ms"] = s.median;
  out["p90_" + name + "_ms"] = s.p90;
  out["p99_" + name + "_ms"] = s.p99;
}

} // namespace

std::string formatTable(const BenchmarkReport &r, const BenchmarkOptions &o,
                        const std::string &model) {
  std::string out = "============ Serving Benchmark Result ============\n";
  appendLine(out, "Model:", model);
  appendLine(out, "Concurrency (0 = no limit):", std::to_string(o.concurrency));
  appendLine(out, "Request rate (req/s):", rateText(o.requestRate));
  appendLine(out, "Successful requests:", std::to_string(r.completed));
  appendLine(out, "Failed requests:", std::to_string(r.failed));
  appendLine(out, "Benchmark duration (s):", number(r.durationSeconds));
  appendLine(out, "Total input tokens:", std::to_string(r.totalInputTokens));
  appendLine(out, "Total generated tokens:", std::to_string(r.totalOutputTokens));
  appendLine(out, "Request throughput (req/s):", number(r.requestThroughput));
  appendLine(out, "Output token throughput (tok/s):", number(r.outputThroughput));
  appendLine(out, "Total token throughput (tok/s):", number(r.totalTokenThroughput));
  appendLatency(out, "Time to First Token", "TTFT", r.ttftMs);
  appendLatency(out, "Time per Output Token (excl. 1st token)", "TPOT", r.tpotMs);
  appendLatency(out, "Inter-token Latency", "ITL", r.itlMs);
  appendLatency(out, "End-to-end Latency", "E2EL", r.e2elMs);
  out += "==================================================\n";
  for (const auto &[message, count] : r.errors)
    out += "error x" + std::to_string(count) + ": " + message + "\n";
  return out;
}

std::string formatJson(const BenchmarkReport &r, const BenchmarkOptions &o,
                       const std::string &model) {
  json::object out;
  out["model"] = model;
  out["base_url"] = o.baseUrl;
  out["num_prompts"] = o.numPrompts;
  out["concurrency"] = o.concurrency;
  out["request_rate"] = rateText(o.requestRate);
  out["prompt_len"] = o.promptsFile.empty() ? json::value(o.promptLen) : json::value(nullptr);
  out["prompts_file"] = o.promptsFile;
  out["output_len"] = o.outputLen;
  out["ignore_eos"] = o.ignoreEos;
  out["completed"] = r.completed;
  out["failed"] = r.failed;
  out["duration"] = r.durationSeconds;
  out["total_input_tokens"] = r.totalInputTokens;
  out["total_output_tokens"] = r.totalOutputTokens;
  out["request_throughput"] = r.requestThroughput;
  out["output_throughput"] = r.outputThroughput;
  out["total_token_throughput"] = r.totalTokenThroughput;
  putLatency(out, "ttft", r.ttftMs);
  putLatency(out, "tpot", r.tpotMs);
  putLatency(out, "itl", r.itlMs);
  putLatency(out, "e2el", r.e2elMs);
  json::array errors;
  for (const auto &[message, count] : r.errors)
    errors.push_back(json::object{{"message", message}, {"count", count}});
  out["errors"] = std::move(errors);
  return json::serialize(out);
}

} // namespace llmir::bench

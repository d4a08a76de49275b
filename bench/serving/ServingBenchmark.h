// The serving benchmark's load generator: sends streamed completions to an
// OpenAI-compatible endpoint at a Poisson request rate, at most
// `concurrency` in flight, and times every streamed chunk (like vLLM's
// benchmark_serving).
#pragma once

#include "llmir/support/Status.h"

#include <chrono>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace llmir::bench {

struct BenchmarkOptions {
  std::string baseUrl = "http://127.0.0.1:8000/v1";
  std::string model;  // empty: the first id of GET {baseUrl}/models
  std::string apiKey; // sent as a Bearer token when set
  int numPrompts = 100;
  int concurrency = 0; // max requests in flight; 0: no limit
  double requestRate = std::numeric_limits<double>::infinity(); // requests/s
  int promptLen = 128;  // words of random text (about one token each)
  int outputLen = 128;  // max_tokens
  std::string promptsFile; // one prompt per line, cycled; overrides promptLen
  bool ignoreEos = false;
  double temperature = 0.0;
  double topP = 1.0; // sent only below 1
  /// A JSON object whose members go into every request's body (over the
  /// ones above): presence_penalty, logit_bias, ... ("" : none).
  std::string extraBody;
  uint64_t seed = 0;
  std::chrono::milliseconds requestTimeout{600000};
};

/// What one request measured. Times are seconds from sending the request.
struct RequestResult {
  bool success = false;
  std::string error;
  int64_t promptTokens = 0; // usage.prompt_tokens, 0 when not reported
  int64_t outputTokens = 0; // usage.completion_tokens, else content chunks
  double ttft = 0;          // first chunk carrying text
  double e2e = 0;           // the stream's end
  std::vector<double> itl;  // gaps between successive text chunks
  std::string text;
};

struct BenchmarkRun {
  std::vector<RequestResult> results;
  double durationSeconds = 0;
};

/// Checks the options a user can get wrong (counts, rate, URL).
Status validate(const BenchmarkOptions &options);

/// The prompts of the run: `numPrompts` lines of the prompts file (cycled),
/// or random word sequences of `promptLen` words drawn with `seed`.
Result<std::vector<std::string>> makePrompts(const BenchmarkOptions &options);

/// The model id to request: options.model, or the first served model.
Result<std::string> resolveModel(const BenchmarkOptions &options);

/// One streamed completion of `prompt` for `model`; failures are results
/// (success=false, error says why), never exceptions.
RequestResult sendCompletion(const BenchmarkOptions &options, const std::string &model,
                             const std::string &prompt);

/// Sends every prompt (arrival times drawn from the rate with `seed`) and
/// returns the results in prompt order and the wall time of the whole run.
BenchmarkRun runBenchmark(const BenchmarkOptions &options, const std::string &model,
                          const std::vector<std::string> &prompts);

} // namespace llmir::bench

// llmir-bench --base-url http://host:port/v1 [--model M] [--num-prompts N]
//   [--concurrency C] [--request-rate R|inf] [--prompt-len L | --prompts-file F]
//   [--output-len O] [--ignore-eos] [--json FILE]
//
// A serving benchmark against any OpenAI-compatible endpoint, like vLLM's
// benchmark_serving: streamed completions measure TTFT, TPOT, ITL and
// end-to-end latency; the run reports throughputs and percentiles as a
// table (stdout) and optionally as JSON. Exits 1 when any request failed.
#include "BenchReport.h"
#include "ServingBenchmark.h"

#include "llmir/net/Config.h"

#include <fstream>
#include <iostream>

namespace {

using namespace llmir;

struct Flags {
  bench::BenchmarkOptions options;
  std::string jsonPath;
  int64_t requestTimeoutSeconds = 600;
};

void bind(net::Config &config, Flags &f) {
  bench::BenchmarkOptions &o = f.options;
  config.add("base-url", &o.baseUrl, "OpenAI API root, e.g. http://127.0.0.1:8000/v1");
  config.add("model", &o.model, "model id (default: the first of GET /models)");
  config.add("api-key", &o.apiKey, "sent as 'Authorization: Bearer <key>' when set");
  config.add("num-prompts", &o.numPrompts, "requests to send");
  config.add("concurrency", &o.concurrency, "max requests in flight (0: no limit)");
  config.add("request-rate", &o.requestRate,
             "Poisson arrival rate in requests/s (inf: all at once)");
  config.add("prompt-len", &o.promptLen, "words of random text per prompt (~1 token each)");
  config.add("prompts-file", &o.promptsFile, "one prompt per line, cycled (overrides --prompt-len)");
  config.add("output-len", &o.outputLen, "max_tokens of every request");
  config.add("ignore-eos", &o.ignoreEos, "ask the server to generate output-len tokens (vLLM extension)");
  config.add("temperature", &o.temperature, "sampling temperature (0: greedy)");
  config.add("top-p", &o.topP, "nucleus mass in (0, 1] (sent below 1)");
  config.add("extra-body", &o.extraBody,
             "a JSON object merged into every request's body, e.g. "
             "'{\"presence_penalty\": 0.5}'");
  config.add("seed", &o.seed, "seed of the random prompts and arrival times");
  config.add("request-timeout-s", &f.requestTimeoutSeconds, "bound on one request");
  config.add("json", &f.jsonPath, "also write the results as JSON to this file");
}

int run(Flags &f) {
  bench::BenchmarkOptions &o = f.options;
  while (!o.baseUrl.empty() && o.baseUrl.back() == '/')
    o.baseUrl.pop_back();
  o.requestTimeout = std::chrono::seconds(f.requestTimeoutSeconds);
  if (Status valid = bench::validate(o); !valid) {
    std::cerr << "llmir-bench: " << valid.message() << "\n";
    return 2;
  }
  auto prompts = bench::makePrompts(o);
  if (!prompts) {
    std::cerr << "llmir-bench: " << prompts.message() << "\n";
    return 2;
  }
  auto model = bench::resolveModel(o);
  if (!model) {
    std::cerr << "llmir-bench: " << model.message() << "\n";
    return 1;
  }
  // One request first, as benchmark_serving does: a wrong URL, key or model
  // fails here with its message instead of num-prompts times.
  bench::RequestResult probe = bench::sendCompletion(o, *model, prompts->front());
  if (!probe.success) {
    std::cerr << "llmir-bench: the test request to " << o.baseUrl
              << "/completions failed: " << probe.error << "\n";
    return 1;
  }
  std::cerr << "llmir-bench: " << o.numPrompts << " requests to " << o.baseUrl << " (model "
            << *model << ")\n";
  bench::BenchmarkRun result = bench::runBenchmark(o, *model, *prompts);
  bench::BenchmarkReport report = bench::buildReport(result);
  std::cout << bench::formatTable(report, o, *model);
  if (!f.jsonPath.empty()) {
    std::ofstream out(f.jsonPath);
    out << bench::formatJson(report, o, *model) << "\n";
    if (!out) {
      std::cerr << "llmir-bench: cannot write '" << f.jsonPath << "'\n";
      return 1;
    }
  }
  return report.failed == 0 ? 0 : 1;
}

} // namespace

int main(int argc, char **argv) {
  Flags flags;
  net::Config config("llmir-bench");
  bind(config, flags);
  config.loadOrExit(argc, argv);
  return run(flags);
}

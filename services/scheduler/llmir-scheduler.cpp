// llmir-scheduler --model HF_DIR [--port N] [--port-file PATH] [--api-key K] ...
//
// Serves the OpenAI API over one in-process replica (tp = 1): compiles the
// checkpoint, loads it on the CPU engine and batches every request through
// the continuous-batching scheduler. `--help` lists every key; each is also
// settable from a YAML file (--config) or LLMIR_<KEY> environment variables.
#include "Metrics.h"
#include "OpenAiServer.h"

#include "llmir/compiler/Compile.h"
#include "llmir/engine/CheckpointWeights.h"
#include "llmir/model/Checkpoint.h"
#include "llmir/model/ModelConfig.h"
#include "llmir/model/Tokenizer.h"
#include "llmir/net/Config.h"
#include "llmir/net/Http.h"
#include "llmir/net/Log.h"
#include "llmir/net/Signals.h"
#include "llmir/serving/BatchScheduler.h"
#include "llmir/serving/InProcessBackend.h"

#include <boost/json.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

namespace {

using namespace llmir;
namespace fs = std::filesystem;

struct Settings {
  std::string model;
  std::string servedModelName;
  std::string host = "127.0.0.1";
  uint16_t port = 8000;
  std::string portFile;
  std::string apiKey;
  int maxNumSeqs = 64;
  int maxBatchTokens = 512;
  int64_t kvBlocks = 1024;
  int64_t maxModelLen = 0;
  bool prefixCaching = true;
  int engineThreads = 0;
  int httpThreads = 4;
  uint64_t maxBodyBytes = 1 << 20;
  std::string logLevel = "info";
};

void bind(net::Config &config, Settings &s) {
  config.add("model", &s.model, "Hugging Face checkpoint directory to serve (required)");
  config.add("served-model-name", &s.servedModelName,
             "model id in the API (default: the directory's name)");
  config.add("host", &s.host, "address to listen on");
  config.add("port", &s.port, "HTTP port (0: any free port)");
  config.add("port-file", &s.portFile, "write the bound port to this file once serving");
  config.add("api-key", &s.apiKey, "require 'Authorization: Bearer <key>' when set");
  config.add("max-num-seqs", &s.maxNumSeqs, "sequences running at once");
  config.add("max-batch-tokens", &s.maxBatchTokens, "tokens per step (chunked prefill)");
  config.add("kv-blocks", &s.kvBlocks, "KV-cache blocks of the replica");
  config.add("max-model-len", &s.maxModelLen,
             "tokens per sequence (0: the model's max_position_embeddings)");
  config.add("enable-prefix-caching", &s.prefixCaching, "reuse KV blocks of equal prefixes");
  config.add("engine-threads", &s.engineThreads, "CPU kernel threads (0: all cores)");
  config.add("http-threads", &s.httpThreads, "HTTP I/O threads");
  config.add("max-body-bytes", &s.maxBodyBytes, "larger request bodies get 413");
  config.add("log-level", &s.logLevel, "debug, info, warn or error");
}

void warnAboutChatTemplate(const std::string &dir) {
  std::ifstream in(fs::path(dir) / "tokenizer_config.json");
  if (!in)
    return;
  std::stringstream text;
  text << in.rdbuf();
  boost::system::error_code ec;
  boost::json::value config = boost::json::parse(text.str(), ec);
  if (!ec && config.is_object() && config.as_object().contains("chat_template"))
    net::logWarn("the model's Jinja chat_template is not interpreted; chat uses the "
                 "default template (docs/api.md)");
}

int run(const Settings &s) {
  if (s.model.empty()) {
    std::cerr << "llmir-scheduler: --model is required (see --help)\n";
    return 2;
  }
  auto modelConfig = model::loadModelConfig(s.model);
  if (!modelConfig) {
    net::logError("cannot read the model config", {{"error", modelConfig.message()}});
    return 1;
  }
  auto tokenizer = model::Tokenizer::load((fs::path(s.model) / "tokenizer.json").string());
  if (!tokenizer) {
    net::logError("cannot load the tokenizer", {{"error", tokenizer.message()}});
    return 1;
  }
  warnAboutChatTemplate(s.model);
  auto compiled = compiler::compileHuggingFace(s.model, {});
  if (!compiled) {
    net::logError("cannot compile the model", {{"error", compiled.message()}});
    return 1;
  }
  auto checkpoint = model::Checkpoint::open(s.model);
  if (!checkpoint) {
    net::logError("cannot open the checkpoint", {{"error", checkpoint.message()}});
    return 1;
  }
  auto backend = serving::InProcessBackend::create(
      compiled->programs.at(0), engine::checkpointWeights(*checkpoint),
      {.numKvBlocks = s.kvBlocks, .numThreads = static_cast<unsigned>(s.engineThreads)});
  if (!backend) {
    net::logError("cannot load the model", {{"error", backend.message()}});
    return 1;
  }

  serving::SchedulerOptions options;
  options.maxNumSeqs = s.maxNumSeqs;
  options.maxBatchTokens = s.maxBatchTokens;
  options.enablePrefixCaching = s.prefixCaching;
  options.maxModelLen = s.maxModelLen > 0 ? s.maxModelLen : modelConfig->maxPositionEmbeddings;
  for (int64_t eos : modelConfig->eosTokenIds)
    options.eosTokenIds.push_back(static_cast<int32_t>(eos));
  if (auto eos = tokenizer->eosId(); eos && options.eosTokenIds.empty())
    options.eosTokenIds.push_back(*eos);
  serving::BatchScheduler scheduler(**backend, *tokenizer, options);

  const std::string name = s.servedModelName.empty()
                               ? fs::path(s.model).lexically_normal().filename().string()
                               : s.servedModelName;
  scheduler::Metrics metrics(name);
  scheduler.setStepObserver([&](const serving::StepStats &step) {
    metrics.observeStep(step);
    metrics.update(scheduler.stats());
  });
  scheduler::OpenAiServer api({.modelName = name, .apiKey = s.apiKey}, *tokenizer,
                              scheduler, metrics);
  net::HttpServer server;
  api.addRoutes(server);
  scheduler.start();
  Status started = server.start({.host = s.host,
                                 .port = s.port,
                                 .threads = static_cast<unsigned>(s.httpThreads),
                                 .maxBodyBytes = s.maxBodyBytes});
  if (!started) {
    net::logError("cannot start the HTTP server", {{"error", started.message()}});
    return 1;
  }
  api.setReady(true);
  if (!s.portFile.empty()) {
    const std::string tmp = s.portFile + ".tmp";
    std::ofstream(tmp) << server.port() << "\n";
    fs::rename(tmp, s.portFile);
  }
  net::logInfo("serving", {{"model", name},
                           {"url", "http://" + s.host + ":" + std::to_string(server.port())},
                           {"max_model_len", scheduler.limits().maxModelLen}});

  const int received = net::waitForTerminationSignal();
  net::logInfo("shutting down", {{"signal", received}});
  api.setReady(false);
  server.stop(); // open streams see their clients go: their requests cancel
  scheduler.stop();
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  net::installTerminationHandler();
  Settings settings;
  net::Config config("scheduler");
  bind(config, settings);
  if (Status loaded = config.load(argc, argv); !loaded) {
    std::cerr << "llmir-scheduler: " << loaded.message() << "\n";
    return 2;
  }
  if (config.helpRequested()) {
    std::cout << config.usage();
    return 0;
  }
  net::LogLevel level = net::LogLevel::Info;
  if (!net::parseLogLevel(settings.logLevel, level)) {
    std::cerr << "llmir-scheduler: --log-level must be debug, info, warn or error\n";
    return 2;
  }
  net::initLogging("scheduler", level);
  return run(settings);
}

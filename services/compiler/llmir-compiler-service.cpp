// llmir-compiler-service: compiles Hugging Face checkpoints into deployment
// plans (cached by content hash) and serves each rank's ShardProgram.
//
// The API is libs/compiler (CompilerService.h); here are its settings.
#include "llmir/compiler/CompilerService.h"
#include "llmir/net/ClusterSecret.h"
#include "llmir/net/Config.h"
#include "llmir/net/Http.h"
#include "llmir/net/Log.h"
#include "llmir/net/Signals.h"

#include <chrono>
#include <iostream>

namespace {

struct Settings {
  std::string host = "127.0.0.1";
  uint16_t port = 8081;
  unsigned threads = 4;
  uint64_t maxBodyBytes = 1 << 20;
  llmir::net::LogLevel logLevel = llmir::net::LogLevel::Info;
  std::string clusterSecretFile;
  uint64_t planCacheBytes = uint64_t(1) << 30;
  unsigned compileMaxConcurrent = 2;
  uint64_t compileTimeoutMs = 300'000;
};

} // namespace

int main(int argc, char **argv) {
  llmir::net::installTerminationHandler();
  Settings s;
  llmir::net::Config config("llmir-compiler-service");
  config.add("http.host", &s.host, "address the HTTP API listens on");
  config.add("http.port", &s.port, "HTTP port (0 = ephemeral; the log line 'listening' names it)");
  config.add("http.threads", &s.threads, "HTTP threads (a compile occupies one)");
  config.add("http.max-body-bytes", &s.maxBodyBytes, "larger request bodies get 413");
  config.add("log.level", &s.logLevel, "the lowest level of the lines logged");
  config.add("plans.cache-bytes", &s.planCacheBytes,
             "plans (and their programs) kept in memory; the least recently used "
             "are dropped past this many serialized bytes");
  config.add("compile.max-concurrent", &s.compileMaxConcurrent,
             "compiles of different plans running at once; more get 503 with Retry-After "
             "(must be below http.threads, so that probes and plan fetches keep a thread)");
  config.add("compile.timeout-ms", &s.compileTimeoutMs,
             "a compile running longer is cancelled (between layers, passes and ranks) "
             "and answered 504; 0 = no deadline");
  config.add("cluster.secret-file", &s.clusterSecretFile,
             "file holding the cluster secret; /v1/* then needs its derived bearer token "
             "(else $LLMIR_CLUSTER_SECRET; docs/reliability.md)");
  auto validate = [&]() -> llmir::Status {
    if (s.threads < 1)
      return llmir::Status::error("http.threads must be at least 1");
    if (s.compileMaxConcurrent < 1 || s.compileMaxConcurrent >= s.threads)
      return llmir::Status::error(
          "compile.max-concurrent (" + std::to_string(s.compileMaxConcurrent) +
          ") must be at least 1 and below http.threads (" + std::to_string(s.threads) +
          "): a compile holds an HTTP thread, and probes and plan fetches need one");
    return llmir::Status::ok();
  };
  if (std::optional<int> exitCode = config.loadService(argc, argv, validate))
    return *exitCode;
  llmir::net::initLogging("compiler", s.logLevel);

  auto clusterSecret = llmir::net::loadServiceClusterSecret(
      {.secretFile = s.clusterSecretFile,
       .listeners = {{"llmir-compiler-service", s.host}},
       .withoutSecret = "any local process can compile and fetch plans"});
  if (!clusterSecret) {
    std::cerr << "llmir-compiler-service: " << clusterSecret.message() << "\n";
    return 2;
  }

  llmir::compiler::CompilerService service(
      {.store = {.maxBytes = s.planCacheBytes,
                 .maxConcurrent = s.compileMaxConcurrent,
                 .deadline = std::chrono::milliseconds(s.compileTimeoutMs)},
       .clusterSecret = *clusterSecret});
  llmir::net::HttpServer server;
  service.addRoutes(server);

  llmir::net::HttpServerConfig http;
  http.host = s.host;
  http.port = s.port;
  http.threads = s.threads;
  http.maxBodyBytes = s.maxBodyBytes;
  if (auto st = server.start(http); !st) {
    llmir::net::logError("cannot start", {{"error", st.message()}});
    return 1;
  }
  llmir::net::logInfo("listening", {{"host", s.host}, {"port", unsigned(server.port())}});
  int sig = llmir::net::waitForTerminationSignal();
  llmir::net::logInfo("stopping", {{"signal", sig}});
  server.stop();
  llmir::net::logInfo("stopped");
  return 0;
}

// llmir-compiler-service: compiles Hugging Face checkpoints into deployment
// plans (cached by content hash) and serves each rank's ShardProgram.
//
//   POST /v1/compile  CompileRequest {"model_dir", "tp", "pp", "sp", "kv_block_size", "kv_store"}
//                     -> CompileResponse {"plan_id", "cache_hit", "plan": DeploymentPlan}
//                     (proto/compile_service.proto as JSON: compiler/CompileApi.h)
//   GET  /v1/plans/{id}               -> the plan as JSON
//   GET  /v1/plans/{id}/ranks/{rank}  -> ShardProgram bytes (application/x-protobuf)
//   GET  /healthz /readyz /metrics
#include "llmir/compiler/PlanStore.h"

#include "llmir/compiler/CompileApi.h"
#include "llmir/net/ClusterSecret.h"
#include "llmir/net/Config.h"
#include "llmir/net/Http.h"
#include "llmir/net/Log.h"
#include "llmir/net/Signals.h"
#include "llmir/support/ClusterAuth.h"

#include <google/protobuf/util/json_util.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <charconv>
#include <chrono>
#include <iostream>

using llmir::net::HttpRequest;
using llmir::net::HttpResponse;

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

struct Metrics {
  std::shared_ptr<prometheus::Registry> registry =
      std::make_shared<prometheus::Registry>();
  prometheus::Histogram &compileSeconds =
      prometheus::BuildHistogram()
          .Name("llmir:compile_seconds")
          .Help("Time to compile a model into a plan (cache misses only).")
          .Register(*registry)
          .Add({}, prometheus::Histogram::BucketBoundaries{
                       0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120});
  prometheus::Counter &cacheHits =
      prometheus::BuildCounter()
          .Name("llmir:compile_cache_hits_total")
          .Help("Compile requests answered from the plan cache.")
          .Register(*registry)
          .Add({});
  prometheus::Family<prometheus::Counter> &requests =
      prometheus::BuildCounter()
          .Name("llmir:compile_requests_total")
          .Help("Compile requests by outcome (ok, bad_request, failed, busy, "
                "deadline_exceeded).")
          .Register(*registry);
  prometheus::Gauge &compilesRunning =
      prometheus::BuildGauge()
          .Name("llmir:compiles_running")
          .Help("Compiles running now (at most compile.max-concurrent).")
          .Register(*registry)
          .Add({});
  prometheus::Counter &programsServed =
      prometheus::BuildCounter()
          .Name("llmir:compiler_programs_served_total")
          .Help("ShardPrograms fetched by workers.")
          .Register(*registry)
          .Add({});
};

std::string planJson(const llmir::proto::DeploymentPlan &plan) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(plan, &out, options);
  return out;
}

llmir::Result<llmir::compiler::CompileRequest> parseCompileRequest(const std::string &body) {
  auto parsed = llmir::compiler::parseCompileRequest(body);
  if (!parsed)
    return parsed.status();
  llmir::compiler::CompileRequest r;
  r.modelDir = parsed->model_dir();
  r.options.tp = parsed->tp();
  r.options.pp = parsed->pp();
  r.options.sp = parsed->sp();
  r.options.kvBlockSize = parsed->kv_block_size();
  r.options.kvStore = parsed->kv_store();
  return r;
}

// "/v1/plans/{id}" or "/v1/plans/{id}/ranks/{rank}".
struct PlanPath {
  std::string id;
  std::optional<uint32_t> rank;
};
std::optional<PlanPath> parsePlanPath(std::string_view path) {
  constexpr std::string_view prefix = "/v1/plans/";
  path.remove_prefix(prefix.size());
  size_t slash = path.find('/');
  PlanPath out{std::string(path.substr(0, slash)), std::nullopt};
  if (out.id.empty())
    return std::nullopt;
  if (slash == std::string_view::npos)
    return out;
  std::string_view rest = path.substr(slash);
  constexpr std::string_view ranks = "/ranks/";
  if (!rest.starts_with(ranks))
    return std::nullopt;
  rest.remove_prefix(ranks.size());
  uint32_t rank = 0;
  auto [end, err] = std::from_chars(rest.data(), rest.data() + rest.size(), rank);
  if (err != std::errc() || end != rest.data() + rest.size() || rest.empty())
    return std::nullopt;
  out.rank = rank;
  return out;
}

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

  Metrics metrics;
  llmir::compiler::PlanStoreOptions storeOptions;
  storeOptions.maxBytes = s.planCacheBytes;
  storeOptions.maxConcurrent = s.compileMaxConcurrent;
  storeOptions.deadline = std::chrono::milliseconds(s.compileTimeoutMs);
  llmir::compiler::PlanStore store(storeOptions);
  llmir::net::HttpServer server;
  // /v1/* (compiles, plans, programs) needs the bearer derived from the
  // cluster secret; health and metrics stay open for probes and scrapers.
  auto authorized = [secret = *clusterSecret](const HttpRequest &req) {
    return !secret ||
           llmir::auth::checkBearer(*secret, llmir::auth::kCompilerAudience,
                                    req.header("authorization").value_or(""));
  };
  const auto unauthorized = [] {
    HttpResponse res = HttpResponse::error(
        401, "the compiler service needs the cluster's bearer token (docs/reliability.md)");
    res.headers.emplace_back("WWW-Authenticate", "Bearer");
    return res;
  };

  server.route("POST", "/v1/compile", [&](const HttpRequest &req) {
    if (!authorized(req))
      return unauthorized();
    auto request = parseCompileRequest(req.body);
    if (!request) {
      metrics.requests.Add({{"outcome", "bad_request"}}).Increment();
      return HttpResponse::error(400, request.message());
    }
    auto start = std::chrono::steady_clock::now();
    auto lookup = store.compile(*request);
    double seconds = std::chrono::duration<double>(
                         std::chrono::steady_clock::now() - start).count();
    using Outcome = llmir::compiler::PlanStore::Outcome;
    if (lookup.outcome == Outcome::Busy) {
      metrics.requests.Add({{"outcome", "busy"}}).Increment();
      HttpResponse res = HttpResponse::error(503, lookup.error);
      res.headers.emplace_back("Retry-After", "1");
      return res;
    }
    if (lookup.outcome == Outcome::DeadlineExceeded) {
      metrics.requests.Add({{"outcome", "deadline_exceeded"}}).Increment();
      llmir::net::log(llmir::net::LogLevel::Warn, "compile cancelled at its deadline",
                      {{"model_dir", request->modelDir}, {"seconds", seconds}},
                      req.requestId);
      return HttpResponse::error(504, lookup.error);
    }
    if (lookup.outcome == Outcome::Failed) {
      metrics.requests.Add({{"outcome", "failed"}}).Increment();
      llmir::net::log(llmir::net::LogLevel::Warn, "compile failed",
                      {{"model_dir", request->modelDir}, {"error", lookup.error}},
                      req.requestId);
      return HttpResponse::error(422, lookup.error);
    }
    metrics.requests.Add({{"outcome", "ok"}}).Increment();
    if (lookup.cacheHit)
      metrics.cacheHits.Increment();
    else
      metrics.compileSeconds.Observe(seconds);
    llmir::net::log(llmir::net::LogLevel::Info, "compiled",
                    {{"plan_id", lookup.plan->id}, {"cache_hit", lookup.cacheHit},
                     {"seconds", seconds}, {"model_dir", request->modelDir}},
                    req.requestId);
    llmir::proto::CompileResponse response;
    response.set_plan_id(lookup.plan->id);
    response.set_cache_hit(lookup.cacheHit);
    *response.mutable_plan() = lookup.plan->compiled.plan;
    return HttpResponse::json(200, llmir::compiler::compileResponseJson(response));
  });

  server.routePrefix("GET", "/v1/plans/", [&](const HttpRequest &req) {
    if (!authorized(req))
      return unauthorized();
    auto path = parsePlanPath(req.path);
    if (!path)
      return HttpResponse::error(404, "expected /v1/plans/{id} or /v1/plans/{id}/ranks/{rank}");
    auto plan = store.find(path->id);
    if (!plan)
      return HttpResponse::error(404, "no plan '" + path->id + "' (POST /v1/compile first)");
    if (!path->rank)
      return HttpResponse::json(200, planJson(plan->compiled.plan));
    const auto &programs = plan->compiled.programs;
    if (*path->rank >= programs.size())
      return HttpResponse::error(404, "plan " + path->id + " has ranks 0.." +
                                          std::to_string(programs.size() - 1));
    metrics.programsServed.Increment();
    HttpResponse res;
    res.contentType = "application/x-protobuf";
    res.body = programs[*path->rank].SerializeAsString();
    return res;
  });

  llmir::net::addProbeRoutes(server, {.metricsText = [&] {
    metrics.compilesRunning.Set(store.compilesRunning());
    return prometheus::TextSerializer().Serialize(metrics.registry->Collect());
  }});

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

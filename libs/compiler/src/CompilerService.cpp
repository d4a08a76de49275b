#include "llmir/compiler/CompilerService.h"

#include "llmir/compiler/CompileApi.h"
#include "llmir/net/Log.h"
#include "llmir/support/ClusterAuth.h"

#include <google/protobuf/util/json_util.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <charconv>
#include <chrono>

namespace llmir::compiler {
namespace {

using net::HttpRequest;
using net::HttpResponse;

struct ServiceMetrics {
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

std::string planJson(const proto::DeploymentPlan &plan) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(plan, &out, options);
  return out;
}

// The compile call's JSON as the plan cache's request.
Result<CompileRequest> planRequest(const std::string &body) {
  auto parsed = parseCompileRequest(body);
  if (!parsed)
    return parsed.status();
  CompileRequest r;
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
  auto [end, err] =
      std::from_chars(rest.data(), rest.data() + rest.size(), rank);
  if (err != std::errc() || end != rest.data() + rest.size() || rest.empty())
    return std::nullopt;
  out.rank = rank;
  return out;
}

} // namespace

struct CompilerService::Impl {
  explicit Impl(CompilerServiceOptions o)
      : options(std::move(o)), store(options.store) {}
  CompilerServiceOptions options;
  PlanStore store;
  ServiceMetrics metrics;
};

CompilerService::CompilerService(CompilerServiceOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

CompilerService::~CompilerService() = default;

void CompilerService::addRoutes(net::HttpServer &server) {
  const CompilerServiceOptions &options = impl_->options;
  auto authorized = [secret = options.clusterSecret](const HttpRequest &req) {
    return !secret ||
           auth::checkBearer(*secret, auth::kCompilerAudience,
                             req.header("authorization").value_or(""));
  };
  const auto unauthorized = [] {
    HttpResponse res =
        HttpResponse::error(401, "the compiler service needs the cluster's "
                                 "bearer token (docs/reliability.md)");
    res.headers.emplace_back("WWW-Authenticate", "Bearer");
    return res;
  };

  server.route(
      "POST", "/v1/compile",
      [this, authorized, unauthorized](const HttpRequest &req) {
        if (!authorized(req))
          return unauthorized();
        auto request = planRequest(req.body);
        if (!request) {
          impl_->metrics.requests.Add({{"outcome", "bad_request"}}).Increment();
          return HttpResponse::error(400, request.message());
        }
        auto start = std::chrono::steady_clock::now();
        auto lookup = impl_->store.compile(*request);
        double seconds = std::chrono::duration<double>(
                             std::chrono::steady_clock::now() - start)
                             .count();
        using Outcome = PlanStore::Outcome;
        if (lookup.outcome == Outcome::Busy) {
          impl_->metrics.requests.Add({{"outcome", "busy"}}).Increment();
          HttpResponse res = HttpResponse::error(503, lookup.error);
          res.headers.emplace_back("Retry-After", "1");
          return res;
        }
        if (lookup.outcome == Outcome::DeadlineExceeded) {
          impl_->metrics.requests.Add({{"outcome", "deadline_exceeded"}})
              .Increment();
          net::log(net::LogLevel::Warn, "compile cancelled at its deadline",
                   {{"model_dir", request->modelDir}, {"seconds", seconds}},
                   req.requestId);
          return HttpResponse::error(504, lookup.error);
        }
        if (lookup.outcome == Outcome::Failed) {
          impl_->metrics.requests.Add({{"outcome", "failed"}}).Increment();
          net::log(net::LogLevel::Warn, "compile failed",
                   {{"model_dir", request->modelDir}, {"error", lookup.error}},
                   req.requestId);
          return HttpResponse::error(422, lookup.error);
        }
        impl_->metrics.requests.Add({{"outcome", "ok"}}).Increment();
        if (lookup.cacheHit)
          impl_->metrics.cacheHits.Increment();
        else
          impl_->metrics.compileSeconds.Observe(seconds);
        net::log(net::LogLevel::Info, "compiled",
                 {{"plan_id", lookup.plan->id},
                  {"cache_hit", lookup.cacheHit},
                  {"seconds", seconds},
                  {"model_dir", request->modelDir}},
                 req.requestId);
        proto::CompileResponse response;
        response.set_plan_id(lookup.plan->id);
        response.set_cache_hit(lookup.cacheHit);
        *response.mutable_plan() = lookup.plan->compiled.plan;
        return HttpResponse::json(200, compileResponseJson(response));
      });

  server.routePrefix(
      "GET", "/v1/plans/",
      [this, authorized, unauthorized](const HttpRequest &req) {
        if (!authorized(req))
          return unauthorized();
        auto path = parsePlanPath(req.path);
        if (!path)
          return HttpResponse::error(
              404, "expected /v1/plans/{id} or /v1/plans/{id}/ranks/{rank}");
        auto plan = impl_->store.find(path->id);
        if (!plan)
          return HttpResponse::error(404, "no plan '" + path->id +
                                              "' (POST /v1/compile first)");
        if (!path->rank)
          return HttpResponse::json(200, planJson(plan->compiled.plan));
        const auto &programs = plan->compiled.programs;
        if (*path->rank >= programs.size())
          return HttpResponse::error(404,
                                     "plan " + path->id + " has ranks 0.." +
                                         std::to_string(programs.size() - 1));
        impl_->metrics.programsServed.Increment();
        HttpResponse res;
        res.contentType = "application/x-protobuf";
        res.body = programs[*path->rank].SerializeAsString();
        return res;
      });

  net::addProbeRoutes(server, {.metricsText = [this] {
                        impl_->metrics.compilesRunning.Set(
                            impl_->store.compilesRunning());
                        return prometheus::TextSerializer().Serialize(
                            impl_->metrics.registry->Collect());
                      }});
}

} // namespace llmir::compiler

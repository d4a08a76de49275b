// The compiler service's HTTP API (llmir-compiler-service serves it):
//
//   POST /v1/compile  CompileRequest {"model_dir", "tp", "pp", "sp", "kv_block_size", "kv_store"}
//                     -> CompileResponse {"plan_id", "cache_hit", "plan": DeploymentPlan}
//                     (proto/compile_service.proto as JSON: compiler/CompileApi.h)
//   GET  /v1/plans/{id}               -> the plan as JSON
//   GET  /v1/plans/{id}/ranks/{rank}  -> ShardProgram bytes (application/x-protobuf)
//   GET  /healthz /readyz /metrics
//
// /v1/* needs the bearer token derived from the cluster secret when there is
// one; the probes and the scrape stay open. prometheus-cpp stays in src/.
#pragma once

#include "llmir/compiler/PlanStore.h"
#include "llmir/net/Http.h"

#include <memory>
#include <optional>
#include <string>

namespace llmir::compiler {

struct CompilerServiceOptions {
  PlanStoreOptions store;
  /// The cluster secret (net::loadServiceClusterSecret); none: /v1/* is open.
  std::optional<std::string> clusterSecret;
};

class CompilerService {
public:
  explicit CompilerService(CompilerServiceOptions options);
  ~CompilerService();
  CompilerService(const CompilerService &) = delete;
  CompilerService &operator=(const CompilerService &) = delete;

  /// Registers every route on `server` (before it starts); the service must
  /// outlive the server's serving.
  void addRoutes(net::HttpServer &server);

private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

} // namespace llmir::compiler

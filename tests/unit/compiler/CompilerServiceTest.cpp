// The compiler service's HTTP API (compiler/CompilerService.h) on loopback
// with the demo model: compile, cache hit, the plan and each rank's program,
// the errors a client can cause, the bearer check, and the metrics.
#include "llmir/compiler/CompilerService.h"

#include "llmir/net/Http.h"
#include "llmir/net/HttpClient.h"
#include "llmir/proto/shard_program.pb.h"
#include "llmir/support/ClusterAuth.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

namespace llmir::compiler {
namespace {

const std::string kDemoDir =
    std::string(LLMIR_SOURCE_DIR) + "/models/demo-llama-4m";

class CompilerServiceTest : public ::testing::Test {
protected:
  void start(CompilerServiceOptions options) {
    service = std::make_unique<CompilerService>(std::move(options));
    service->addRoutes(server);
    ASSERT_TRUE(server.start({.port = 0}).isOk());
    base = "http://127.0.0.1:" + std::to_string(server.port());
  }

  Result<net::HttpClientResponse> call(const std::string &method,
                                       const std::string &path,
                                       const std::string &body = "",
                                       const std::string &bearer = "") {
    net::HttpClientRequest request;
    request.method = method;
    request.url = base + path;
    request.body = body;
    if (!bearer.empty())
      request.headers.emplace_back("Authorization", "Bearer " + bearer);
    return net::httpRequest(request);
  }

  std::string compileBody(int tp = 1) const {
    return boost::json::serialize(
        boost::json::object{{"model_dir", kDemoDir}, {"tp", tp}});
  }

  void TearDown() override { server.stop(); }

  net::HttpServer server;
  std::unique_ptr<CompilerService> service;
  std::string base;
};

TEST_F(CompilerServiceTest, ACompiledPlanIsCachedAndServedRankByRank) {
  start({});
  auto first = call("POST", "/v1/compile", compileBody(2));
  ASSERT_TRUE(first.isOk()) << first.message();
  ASSERT_EQ(first->status, 200) << first->body;
  const auto compiled = boost::json::parse(first->body).as_object();
  const std::string id(compiled.at("plan_id").as_string());
  EXPECT_FALSE(compiled.at("cache_hit").as_bool());
  auto second = call("POST", "/v1/compile", compileBody(2));
  ASSERT_TRUE(second.isOk()) << second.message();
  ASSERT_EQ(second->status, 200) << second->body;
  EXPECT_TRUE(boost::json::parse(second->body).at("cache_hit").as_bool());
  EXPECT_EQ(boost::json::parse(second->body).at("plan_id").as_string(), id);

  auto plan = call("GET", "/v1/plans/" + id);
  ASSERT_TRUE(plan.isOk()) << plan.message();
  EXPECT_EQ(plan->status, 200) << plan->body;
  EXPECT_TRUE(boost::json::parse(plan->body).is_object());
  for (int rank = 0; rank < 2; ++rank) {
    auto program =
        call("GET", "/v1/plans/" + id + "/ranks/" + std::to_string(rank));
    ASSERT_TRUE(program.isOk()) << program.message();
    ASSERT_EQ(program->status, 200) << program->body;
    EXPECT_EQ(program->header("content-type").value_or(""),
              "application/x-protobuf");
    proto::ShardProgram parsed;
    ASSERT_TRUE(parsed.ParseFromString(program->body));
    EXPECT_EQ(parsed.rank(), static_cast<uint32_t>(rank));
    EXPECT_EQ(parsed.world_size(), 2u);
  }
  for (const std::string &path : std::vector<std::string>{
           "/v1/plans/" + id + "/ranks/2", "/v1/plans/nope",
           "/v1/plans/" + id + "/ranks/x", "/v1/plans/" + id + "/other"}) {
    auto missing = call("GET", path);
    ASSERT_TRUE(missing.isOk()) << missing.message();
    EXPECT_EQ(missing->status, 404) << path;
  }

  auto scrape = call("GET", "/metrics");
  ASSERT_TRUE(scrape.isOk()) << scrape.message();
  EXPECT_NE(scrape->body.find("llmir:compile_requests_total{outcome=\"ok\"} 2"),
            std::string::npos)
      << scrape->body;
  EXPECT_NE(scrape->body.find("llmir:compile_cache_hits_total 1"),
            std::string::npos)
      << scrape->body;
  EXPECT_NE(scrape->body.find("llmir:compiler_programs_served_total 2"),
            std::string::npos)
      << scrape->body;
}

TEST_F(CompilerServiceTest, WhatAClientGetsWrongIsAnsweredWithTheReason) {
  start({.store = {.deadline = std::chrono::nanoseconds(1)}});
  auto bad = call("POST", "/v1/compile", R"({"model_dir": 5})");
  ASSERT_TRUE(bad.isOk()) << bad.message();
  EXPECT_EQ(bad->status, 400) << bad->body;
  EXPECT_NE(bad->body.find("model_dir"), std::string::npos) << bad->body;
  auto missing = call("POST", "/v1/compile",
                      boost::json::serialize(boost::json::object{
                          {"model_dir", "/nonexistent/m"}}));
  ASSERT_TRUE(missing.isOk()) << missing.message();
  EXPECT_EQ(missing->status, 422) << missing->body;
  // The demo model's compile takes longer than a nanosecond's deadline.
  auto late = call("POST", "/v1/compile", compileBody());
  ASSERT_TRUE(late.isOk()) << late.message();
  EXPECT_EQ(late->status, 504) << late->body;
  auto scrape = call("GET", "/metrics");
  ASSERT_TRUE(scrape.isOk()) << scrape.message();
  for (const char *outcome : {"bad_request", "failed", "deadline_exceeded"})
    EXPECT_NE(scrape->body.find("llmir:compile_requests_total{outcome=\"" +
                                std::string(outcome) + "\"} 1"),
              std::string::npos)
        << outcome << "\n"
        << scrape->body;
}

TEST_F(CompilerServiceTest,
       WithAClusterSecretTheApiNeedsItsBearerAndTheProbesDoNot) {
  const std::string secret = "a-cluster-secret-of-32-characters";
  start({.clusterSecret = secret});
  auto refused = call("POST", "/v1/compile", compileBody());
  ASSERT_TRUE(refused.isOk()) << refused.message();
  EXPECT_EQ(refused->status, 401) << refused->body;
  EXPECT_EQ(refused->header("www-authenticate").value_or(""), "Bearer");
  auto wrong = call("POST", "/v1/compile", compileBody(), "not-the-token");
  ASSERT_TRUE(wrong.isOk()) << wrong.message();
  EXPECT_EQ(wrong->status, 401) << wrong->body;
  const std::string token = auth::bearerToken(secret, auth::kCompilerAudience);
  auto compiled = call("POST", "/v1/compile", compileBody(), token);
  ASSERT_TRUE(compiled.isOk()) << compiled.message();
  ASSERT_EQ(compiled->status, 200) << compiled->body;
  const std::string id(
      boost::json::parse(compiled->body).at("plan_id").as_string());
  auto program = call("GET", "/v1/plans/" + id + "/ranks/0");
  ASSERT_TRUE(program.isOk()) << program.message();
  EXPECT_EQ(program->status, 401) << "programs need the bearer too";
  for (const char *probe : {"/healthz", "/readyz", "/metrics"}) {
    auto open = call("GET", probe);
    ASSERT_TRUE(open.isOk()) << open.message();
    EXPECT_EQ(open->status, 200) << probe;
  }
}

} // namespace
} // namespace llmir::compiler

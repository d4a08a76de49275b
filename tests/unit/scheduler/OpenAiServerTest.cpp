// llmir-scheduler's HTTP surface (libs/scheduler) on loopback: the probes
// follow readiness and replicas, a completion over the demo model returns
// Hugging Face's greedy tokens, the API key is enforced, and /metrics counts
// what was served.
#include "../serving/DemoModel.h"

#include "llmir/net/Http.h"
#include "llmir/net/HttpClient.h"
#include "llmir/scheduler/Metrics.h"
#include "llmir/scheduler/OpenAiServer.h"
#include "llmir/serving/ReplicaRouter.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <string>

namespace {

using namespace llmir;
using serving::testing::DemoModel;

constexpr const char *kModelName = "demo";

class OpenAiServerTest : public ::testing::Test {
protected:
  void SetUp() override {
    demo = DemoModel::get();
    ASSERT_TRUE(demo);
    serving::RouterOptions options;
    options.scheduler.maxModelLen = 256;
    options.scheduler.eosTokenIds = {*demo->tokenizer.eosId()};
    options.vocabSize = static_cast<int32_t>(demo->tokenizer.vocabSize());
    options.noReplicaTimeout = std::chrono::milliseconds(50);
    router = std::make_unique<serving::ReplicaRouter>(demo->tokenizer, options);
  }

  void start(scheduler::OpenAiServerOptions options) {
    options.modelName = kModelName;
    api = std::make_unique<scheduler::OpenAiServer>(
        std::move(options), demo->tokenizer, *router, metrics);
    api->addRoutes(server);
    ASSERT_TRUE(server.start({.port = 0}).isOk());
    base = "http://127.0.0.1:" + std::to_string(server.port());
  }

  void addReplica() {
    auto backend = demo->backend(128);
    ASSERT_TRUE(backend);
    router->addReplica(
        "local", std::shared_ptr<serving::ReplicaBackend>(std::move(backend)));
    router->sync();
  }

  Result<net::HttpClientResponse> post(const std::string &path,
                                       const boost::json::value &body,
                                       const std::string &bearer = "") {
    net::HttpClientRequest request;
    request.method = "POST";
    request.url = base + path;
    request.body = boost::json::serialize(body);
    if (!bearer.empty())
      request.headers.emplace_back("Authorization", "Bearer " + bearer);
    return net::httpRequest(request);
  }

  // A greedy completion of the first reference prompt, as token ids.
  boost::json::object greedyCompletion(int64_t maxTokens) const {
    boost::json::array prompt;
    for (int32_t id : demo->cases[0].promptIds)
      prompt.push_back(id);
    return {{"model", kModelName},
            {"prompt", prompt},
            {"max_tokens", maxTokens},
            {"temperature", 0},
            {"ignore_eos", true}};
  }

  const DemoModel *demo = nullptr;
  scheduler::Metrics metrics{kModelName};
  std::unique_ptr<serving::ReplicaRouter> router;
  net::HttpServer server; // stopped before the API and router it calls go
  std::unique_ptr<scheduler::OpenAiServer> api;
  std::string base;

  void TearDown() override { server.stop(); }
};

TEST_F(OpenAiServerTest, ReadinessFollowsTheServerAndItsReplicas) {
  start({});
  auto status = [&](const std::string &path) {
    auto r = net::httpGet(base + path);
    EXPECT_TRUE(r.isOk()) << r.message();
    return r ? std::make_pair(r->status, r->body)
             : std::make_pair(0, std::string());
  };
  EXPECT_EQ(status("/healthz"), std::make_pair(200, std::string("ok\n")));
  EXPECT_EQ(status("/readyz"), std::make_pair(503, std::string("not ready\n")));
  api->setReady(true);
  EXPECT_EQ(status("/readyz"),
            std::make_pair(503, std::string("no replica ready\n")));
  addReplica();
  EXPECT_EQ(status("/readyz"), std::make_pair(200, std::string("ready\n")));
  auto models = net::httpGet(base + "/v1/models");
  ASSERT_TRUE(models.isOk()) << models.message();
  ASSERT_EQ(models->status, 200) << models->body;
  const auto listed = boost::json::parse(models->body).at("data").as_array();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].at("id").as_string(), kModelName);
}

TEST_F(OpenAiServerTest, AGreedyCompletionIsTheReferenceAndIsCounted) {
  start({});
  api->setReady(true);
  addReplica();
  auto r = post("/v1/completions", greedyCompletion(8));
  ASSERT_TRUE(r.isOk()) << r.message();
  ASSERT_EQ(r->status, 200) << r->body;
  const auto body = boost::json::parse(r->body).as_object();
  const auto &reference = demo->cases[0].greedyIds;
  auto text = demo->tokenizer.decode(
      std::vector<int32_t>(reference.begin(), reference.begin() + 8));
  ASSERT_TRUE(text.isOk()) << text.message();
  EXPECT_EQ(body.at("choices").as_array()[0].at("text").as_string(), *text);
  EXPECT_EQ(body.at("usage").at("completion_tokens").to_number<int64_t>(), 8);
  EXPECT_EQ(body.at("usage").at("prompt_tokens").to_number<int64_t>(),
            static_cast<int64_t>(demo->cases[0].promptIds.size()));

  auto scrape = net::httpGet(base + "/metrics");
  ASSERT_TRUE(scrape.isOk()) << scrape.message();
  EXPECT_NE(scrape->body.find("llmir:request_success_total{finished_reason="
                              "\"length\",model_name=\"demo\"} 1"),
            std::string::npos)
      << scrape->body;
  EXPECT_NE(
      scrape->body.find("llmir:generation_tokens_total{model_name=\"demo\"} 8"),
      std::string::npos)
      << scrape->body;
}

TEST_F(OpenAiServerTest, AnApiKeyIsRequiredWhenSet) {
  start({.apiKey = "sk-test"});
  api->setReady(true);
  addReplica();
  auto refused = post("/v1/completions", greedyCompletion(2));
  ASSERT_TRUE(refused.isOk()) << refused.message();
  EXPECT_EQ(refused->status, 401) << refused->body;
  auto wrong = post("/v1/completions", greedyCompletion(2), "sk-other");
  ASSERT_TRUE(wrong.isOk()) << wrong.message();
  EXPECT_EQ(wrong->status, 401) << wrong->body;
  auto served = post("/v1/completions", greedyCompletion(2), "sk-test");
  ASSERT_TRUE(served.isOk()) << served.message();
  EXPECT_EQ(served->status, 200) << served->body;
  // The probes stay open to kubelets and scrapers.
  auto ready = net::httpGet(base + "/readyz");
  ASSERT_TRUE(ready.isOk()) << ready.message();
  EXPECT_EQ(ready->status, 200);
}

TEST_F(OpenAiServerTest, WithNoReplicaARequestIsRefusedWithRetryAfter) {
  start({.noReplicaTimeout = std::chrono::milliseconds(50)});
  api->setReady(true);
  auto r = post("/v1/completions", greedyCompletion(2));
  ASSERT_TRUE(r.isOk()) << r.message();
  EXPECT_EQ(r->status, 503) << r->body;
  EXPECT_TRUE(r->header("retry-after").has_value());
  auto scrape = net::httpGet(base + "/metrics");
  ASSERT_TRUE(scrape.isOk()) << scrape.message();
  EXPECT_NE(
      scrape->body.find("llmir:requests_refused_total{code=\"no_replica\""),
      std::string::npos)
      << scrape->body;
}

} // namespace

// Issue 14, finding 1: a process that reached the scheduler's worker port
// could register as a worker, receive other users' prompts in StepRequests
// and write their completions. Here the real mesh (compiler service,
// llmir-scheduler in mesh mode, two llmir-shard-workers) runs with a cluster
// secret; rogue peers without it (or with a wrong one) connect first, and
// receive nothing while the real workers serve the reference completion.
#include "llmir/net/Framed.h"
#include "llmir/net/HttpClient.h"
#include "llmir/support/ClusterAuth.h"

#include "Processes.h"
#include "ServiceWaits.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

using namespace llmir;
using llmir::testing::freePort;
using llmir::testing::Process;
using llmir::testing::readFile;
using llmir::testing::waitForPortFile;
using llmir::testing::waitForStatus;
using namespace std::chrono_literals;
namespace json = boost::json;
namespace fs = std::filesystem;

namespace {

const std::string kModelDir = std::string(LLMIR_SOURCE_DIR) + "/models/demo-llama-4m";
const std::string kBin = LLMIR_BIN_DIR;

TEST(RogueWorkerTest, PeersWithoutTheClusterSecretGetNothingAndChangeNothing) {
  const fs::path dir = fs::temp_directory_path() /
                       ("llmir-rogue-test-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string secret = auth::toHex(auth::randomBytes(32));
  std::ofstream(dir / "cluster.secret") << secret << "\n";
  const std::string secretFlag = "--cluster.secret-file=" + (dir / "cluster.secret").string();

  // The compiler service: /v1/* needs the derived bearer token.
  const uint16_t compilerPort = freePort();
  Process compiler({kBin + "/llmir-compiler-service", "--http.host=127.0.0.1",
                    "--http.port=" + std::to_string(compilerPort), secretFlag});
  ASSERT_TRUE(compiler.started());
  const std::string compilerUrl = "http://127.0.0.1:" + std::to_string(compilerPort);
  ASSERT_TRUE(waitForStatus(compilerUrl + "/readyz", 200, 30s));
  const std::string compileBody = "{\"model_dir\":\"" + kModelDir + "\",\"tp\":2}";
  auto anonymous = net::httpPost(compilerUrl + "/v1/compile", compileBody);
  ASSERT_TRUE(anonymous.isOk()) << anonymous.message();
  EXPECT_EQ(anonymous->status, 401) << anonymous->body;
  EXPECT_EQ(net::httpGet(compilerUrl + "/v1/plans/any/ranks/0")->status, 401);
  net::HttpClientRequest wrongBearer;
  wrongBearer.url = compilerUrl + "/v1/plans/any/ranks/0";
  wrongBearer.headers.emplace_back(
      "Authorization", "Bearer " + auth::bearerToken("not-the-secret-0123456789",
                                                     auth::kCompilerAudience));
  EXPECT_EQ(net::httpRequest(wrongBearer)->status, 401);

  // The scheduler in mesh mode, tp=2.
  Process scheduler({kBin + "/llmir-scheduler", "--model=" + kModelDir, "--http.host=127.0.0.1",
                     "--http.port=0", "--http.port-file=" + (dir / "http.port").string(),
                     "--compiler-url=" + compilerUrl, "--tp=2", "--worker-port=0",
                     "--worker-port-file=" + (dir / "worker.port").string(),
                     "--register-timeout-ms=1000", secretFlag});
  ASSERT_TRUE(scheduler.started());
  const uint16_t workerPort = waitForPortFile(dir / "worker.port");
  ASSERT_NE(workerPort, 0) << "the scheduler did not open its workers' port";
  const uint16_t httpPort = waitForPortFile(dir / "http.port");
  ASSERT_NE(httpPort, 0);
  const std::string base = "http://127.0.0.1:" + std::to_string(httpPort);

  // A rogue tp=2 pair registers first, as the attack in the issue did.
  std::vector<std::unique_ptr<net::FramedClient>> rogues;
  for (int i = 0; i < 2; ++i) {
    auto rogue = net::FramedClient::connect("127.0.0.1", workerPort, 5s);
    ASSERT_TRUE(rogue.isOk()) << rogue.message(); // TCP connects; nothing more
    proto::Envelope reg;
    reg.mutable_register_worker()->set_worker_id("rogue-" + std::to_string(i));
    (void)(*rogue)->send(reg);
    rogues.push_back(std::move(*rogue));
  }
  // A peer with the wrong secret does not get past connect().
  net::FramedOptions wrong;
  wrong.clusterSecret = "not-the-secret-0123456789";
  auto impostor = net::FramedClient::connect("127.0.0.1", workerPort, 5s, {}, wrong);
  EXPECT_FALSE(impostor.isOk());

  // The real workers.
  std::vector<std::unique_ptr<Process>> workers;
  for (int w = 0; w < 2; ++w) {
    workers.push_back(std::make_unique<Process>(std::vector<std::string>{
        kBin + "/llmir-shard-worker", "--scheduler.host=127.0.0.1",
        "--scheduler.port=" + std::to_string(workerPort), "--http.host=127.0.0.1",
        "--http.port=0", "--worker.threads=1", secretFlag}));
    ASSERT_TRUE(workers.back()->started());
  }
  ASSERT_TRUE(waitForStatus(base + "/readyz", 200, 120s)) << "no replica became ready";

  json::value reference = json::parse(readFile(kModelDir + "/reference.json"));
  const json::object &first = reference.at("cases").as_array()[0].as_object();
  const json::array &expected = first.at("greedy_ids").as_array();
  json::object request{{"model", "demo-llama-4m"},
                       {"prompt", first.at("prompt_text")},
                       {"max_tokens", expected.size()},
                       {"temperature", 0},
                       {"ignore_eos", true},
                       {"return_token_ids", true}};
  auto completion = net::httpPost(base + "/v1/completions", json::serialize(request),
                                  "application/json", 60s);
  ASSERT_TRUE(completion.isOk()) << completion.message();
  ASSERT_EQ(completion->status, 200) << completion->body;
  json::value body = json::parse(completion->body);
  EXPECT_EQ(body.at("choices").as_array()[0].at("token_ids").as_array(), expected)
      << completion->body;

  // The rogues were dropped without a single envelope (no AssignRank with
  // the model directory, no StepRequest with prompt ids).
  for (auto &rogue : rogues) {
    auto got = rogue->receive(2s);
    EXPECT_FALSE(got.isOk()) << "a rogue received " << got->DebugString();
    EXPECT_FALSE(rogue->connection()->isOpen());
  }

  scheduler.signal(SIGTERM);
  EXPECT_EQ(scheduler.wait(20s), 0);
  for (auto &w : workers)
    w->wait(10s);
  compiler.signal(SIGTERM);
  EXPECT_EQ(compiler.wait(10s), 0);
  fs::remove_all(dir);
}

} // namespace

// Issue 14: load on the API must not fail the probes, and one API key must
// not starve another. Real processes on loopback, real HTTP clients.
//  - Finding 8: in mesh mode with no replica, requests waiting for one held
//    every HTTP thread and /healthz took 9.5 s (a liveness probe would
//    restart a healthy scheduler). Now the probes and /metrics answer on the
//    I/O thread within 1 s while every handler thread waits.
//  - Per-key limits: a key at its limit gets 429 with Retry-After and an
//    OpenAI error body, another key is served, and a slot comes back when a
//    request ends, also when its client disconnects mid-stream.
#include "llmir/net/HttpClient.h"

#include "Processes.h"
#include "ServiceWaits.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>

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

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string &name)
      : path(fs::temp_directory_path() / (name + "-" + std::to_string(::getpid()))) {
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

net::HttpClientRequest completion(const std::string &base, const std::string &key,
                                  int maxTokens, bool stream,
                                  std::chrono::milliseconds timeout = 60s) {
  net::HttpClientRequest request;
  request.method = "POST";
  request.url = base + "/v1/completions";
  request.body = json::serialize(json::object{{"model", "demo-llama-4m"},
                                              {"prompt", "Once upon a time"},
                                              {"max_tokens", maxTokens},
                                              {"temperature", 0},
                                              {"ignore_eos", true},
                                              {"stream", stream}});
  if (!key.empty())
    request.headers.emplace_back("Authorization", "Bearer " + key);
  request.timeout = timeout;
  return request;
}

/// The value of the first sample of `name` in /metrics text whose labels
/// contain `label` (e.g. code="queue_full"); -1 when there is none.
double metricValue(const std::string &text, const std::string &name,
                   const std::string &label = "") {
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (!line.starts_with(name) || line.size() == name.size() ||
        (line[name.size()] != ' ' && line[name.size()] != '{'))
      continue;
    const size_t space = line.rfind(' ');
    if (line.substr(0, space).find(label) == std::string::npos)
      continue;
    return std::stod(line.substr(space + 1));
  }
  return -1;
}

TEST(AdmissionUnderLoadTest, ProbesAnswerWhileEveryHttpThreadWaitsForAReplica) {
  TempDir dir("llmir-probes-test");
  const uint16_t compilerPort = freePort();
  Process compiler({kBin + "/llmir-compiler-service", "--http.host=127.0.0.1",
                    "--http.port=" + std::to_string(compilerPort)});
  ASSERT_TRUE(compiler.started());
  const std::string compilerUrl = "http://127.0.0.1:" + std::to_string(compilerPort);
  ASSERT_TRUE(waitForStatus(compilerUrl + "/readyz", 200, 30s));
  // Mesh mode, no worker ever: every request waits for a replica.
  Process scheduler({kBin + "/llmir-scheduler", "--model=" + kModelDir, "--http.host=127.0.0.1",
                     "--http.port=0", "--http.port-file=" + (dir.path / "http.port").string(),
                     "--compiler-url=" + compilerUrl, "--worker-port=0", "--http.threads=2",
                     "--no-replica-timeout-ms=4000"});
  ASSERT_TRUE(scheduler.started());
  const uint16_t httpPort = waitForPortFile(dir.path / "http.port");
  ASSERT_NE(httpPort, 0);
  const std::string base = "http://127.0.0.1:" + std::to_string(httpPort);
  ASSERT_TRUE(waitForStatus(base + "/healthz", 200, 30s));

  std::atomic<int> refused503{0};
  std::vector<std::jthread> waiting;
  for (int i = 0; i < 4; ++i) // twice the HTTP threads
    waiting.emplace_back([&] {
      auto r = net::httpRequest(completion(base, "", 4, false));
      if (r && r->status == 503)
        ++refused503;
    });
  std::this_thread::sleep_for(1s); // both handler threads are waiting now
  for (int i = 0; i < 3; ++i) {
    const auto start = std::chrono::steady_clock::now();
    auto health = net::httpGet(base + "/healthz", 1s);
    ASSERT_TRUE(health.isOk()) << "/healthz under load: " << health.message();
    EXPECT_EQ(health->status, 200);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
  }
  auto ready = net::httpGet(base + "/readyz", 1s);
  ASSERT_TRUE(ready.isOk()) << "/readyz under load: " << ready.message();
  EXPECT_EQ(ready->status, 503); // no replica: not ready, but answered
  auto metrics = net::httpGet(base + "/metrics", 1s);
  ASSERT_TRUE(metrics.isOk()) << "/metrics under load: " << metrics.message();
  EXPECT_EQ(metrics->status, 200);
  // Both handler threads hold a request (the other two are queued for them).
  EXPECT_GE(metricValue(metrics->body, "llmir:api_requests_in_flight"), 2) << metrics->body;
  for (auto &t : waiting)
    t.join();
  EXPECT_EQ(refused503, 4); // each waited its turn and got the no-replica 503

  scheduler.signal(SIGTERM);
  EXPECT_EQ(scheduler.wait(20s), 0);
  compiler.signal(SIGTERM);
  EXPECT_EQ(compiler.wait(10s), 0);
}

TEST(AdmissionUnderLoadTest, AKeyAtItsConcurrencyLimitGets429AndOthersAreServed) {
  TempDir dir("llmir-key-limits-test");
  // sk-flood: 2 in flight; sk-calm: the default (3); sk-one: 1.
  std::ofstream(dir.path / "api-keys") << "# test keys\nsk-flood 2\nsk-calm\nsk-one 1\n";
  const uint16_t compilerPort = freePort();
  Process compiler({kBin + "/llmir-compiler-service", "--http.host=127.0.0.1",
                    "--http.port=" + std::to_string(compilerPort)});
  ASSERT_TRUE(compiler.started());
  const std::string compilerUrl = "http://127.0.0.1:" + std::to_string(compilerPort);
  ASSERT_TRUE(waitForStatus(compilerUrl + "/readyz", 200, 30s));
  // Mesh mode without a worker first: requests wait for a replica, holding
  // their key's slot, so the limit is reached deterministically.
  Process scheduler({kBin + "/llmir-scheduler", "--model=" + kModelDir, "--http.host=127.0.0.1",
                     "--http.port=0", "--http.port-file=" + (dir.path / "http.port").string(),
                     "--compiler-url=" + compilerUrl, "--worker-port=0",
                     "--worker-port-file=" + (dir.path / "worker.port").string(),
                     "--http.threads=8", "--no-replica-timeout-ms=60000",
                     "--api-keys-file=" + (dir.path / "api-keys").string(),
                     "--limits.max-concurrent-requests-per-key=3",
                     "--limits.concurrency-retry-after-s=2"});
  ASSERT_TRUE(scheduler.started());
  const uint16_t httpPort = waitForPortFile(dir.path / "http.port");
  ASSERT_NE(httpPort, 0);
  const uint16_t workerPort = waitForPortFile(dir.path / "worker.port");
  ASSERT_NE(workerPort, 0);
  const std::string base = "http://127.0.0.1:" + std::to_string(httpPort);
  ASSERT_TRUE(waitForStatus(base + "/healthz", 200, 30s));

  // An unknown key is still 401, before any limit.
  auto unknown = net::httpRequest(completion(base, "sk-nobody", 4, false, 5s));
  ASSERT_TRUE(unknown.isOk()) << unknown.message();
  EXPECT_EQ(unknown->status, 401);

  // sk-flood fills its 2 slots with requests that wait for a replica.
  std::vector<std::jthread> flood; // joined even when an assertion ends the test
  std::atomic<int> floodServed{0};
  for (int i = 0; i < 2; ++i)
    flood.emplace_back([&] {
      auto r = net::httpRequest(completion(base, "sk-flood", 8, false, 120s));
      if (r && r->status == 200)
        ++floodServed;
    });
  auto metricsText = [&] {
    auto m = net::httpGet(base + "/metrics", 5s);
    return m ? m->body : std::string();
  };
  for (int i = 0; i < 200 && metricValue(metricsText(), "llmir:api_requests_in_flight") < 2; ++i)
    std::this_thread::sleep_for(50ms);
  ASSERT_EQ(metricValue(metricsText(), "llmir:api_requests_in_flight"), 2);

  // Its third is refused at once: 429, Retry-After, an OpenAI error body.
  for (int i = 0; i < 5; ++i) {
    auto over = net::httpRequest(completion(base, "sk-flood", 8, false, 5s));
    ASSERT_TRUE(over.isOk()) << over.message();
    ASSERT_EQ(over->status, 429) << over->body;
    EXPECT_EQ(over->header("retry-after").value_or(""), "2");
    json::value body = json::parse(over->body);
    EXPECT_EQ(body.at("error").at("type").as_string(), "rate_limit_error");
    EXPECT_EQ(body.at("error").at("code").as_string(), "too_many_concurrent_requests");
    EXPECT_EQ(over->body.find("sk-flood"), std::string::npos) << "the key is not echoed";
  }
  // Another key is not starved: its request is taken (it waits for the
  // replica like the others, then is served).
  std::atomic<int> calmStatus{0};
  std::jthread calm([&] {
    auto r = net::httpRequest(completion(base, "sk-calm", 8, false, 120s));
    calmStatus = r ? r->status : -1;
  });
  for (int i = 0; i < 200 && metricValue(metricsText(), "llmir:api_requests_in_flight") < 3; ++i)
    std::this_thread::sleep_for(50ms);
  EXPECT_EQ(metricValue(metricsText(), "llmir:api_requests_in_flight"), 3);
  EXPECT_EQ(calmStatus, 0) << "sk-calm was answered before a replica existed";

  // A worker joins: every waiting request is served, the slots come back.
  Process worker({kBin + "/llmir-shard-worker", "--scheduler.host=127.0.0.1",
                  "--scheduler.port=" + std::to_string(workerPort), "--http.host=127.0.0.1",
                  "--http.port=0", "--worker.threads=1"});
  ASSERT_TRUE(worker.started());
  calm.join();
  for (auto &t : flood)
    t.join();
  EXPECT_EQ(calmStatus, 200);
  EXPECT_EQ(floodServed, 2);
  auto again = net::httpRequest(completion(base, "sk-flood", 4, false, 60s));
  ASSERT_TRUE(again.isOk()) << again.message();
  EXPECT_EQ(again->status, 200) << again->body;

  // A client that disconnects mid-stream gives its slot back: sk-one (limit
  // 1) streams a long completion, reads one chunk and hangs up; the request
  // is aborted and sk-one is served again.
  int chunks = 0;
  auto cut = net::httpRequestStreaming(completion(base, "sk-one", 1000, true, 60s),
                                       [&](std::string_view) { return ++chunks < 2; });
  EXPECT_GE(chunks, 1);
  bool servedAgain = false;
  for (int i = 0; i < 100 && !servedAgain; ++i) {
    auto r = net::httpRequest(completion(base, "sk-one", 2, false, 60s));
    ASSERT_TRUE(r.isOk()) << r.message();
    servedAgain = r->status == 200;
    if (!servedAgain) {
      EXPECT_EQ(r->status, 429) << r->body;
      std::this_thread::sleep_for(50ms);
    }
  }
  EXPECT_TRUE(servedAgain) << "sk-one's slot did not come back after its client went";
  const std::string after = metricsText();
  EXPECT_EQ(metricValue(after, "llmir:request_success_total", "finished_reason=\"abort\""), 1)
      << "the disconnected stream was not aborted (it finished on its own?)\n" << after;
  EXPECT_GE(metricValue(after, "llmir:requests_refused_total",
                        "code=\"too_many_concurrent_requests\""),
            5);

  scheduler.signal(SIGTERM);
  EXPECT_EQ(scheduler.wait(20s), 0);
  worker.wait(10s);
  compiler.signal(SIGTERM);
  EXPECT_EQ(compiler.wait(10s), 0);
}

} // namespace

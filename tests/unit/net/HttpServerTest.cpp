#include "RawSocket.h"
#include "llmir/net/Http.h"
#include "llmir/net/HttpClient.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace llmir::net;
using llmir::net::testing::RawSocket;

namespace {

class HttpServerTest : public ::testing::Test {
protected:
  void SetUp() override {
    server.route("GET", "/hello", [](const HttpRequest &r) {
      return HttpResponse::text(200, "hello " + r.queryParam("name").value_or("?"));
    });
    server.route("POST", "/echo", [](const HttpRequest &r) {
      HttpResponse res = HttpResponse::json(201, r.body);
      res.headers.emplace_back("X-Seen-Id", r.requestId);
      return res;
    });
    server.routePrefix("GET", "/v1/plans/", [](const HttpRequest &r) {
      return HttpResponse::text(200, "plan path " + r.path);
    });
    server.route("GET", "/throws", [](const HttpRequest &) -> HttpResponse {
      throw std::runtime_error("boom");
    });
    server.route("GET", "/stream", [this](const HttpRequest &) {
      return HttpResponse::sse([this](std::shared_ptr<ResponseStream> s) {
        std::lock_guard lock(mu);
        stream = std::move(s);
        cv.notify_all();
      });
    });
    HttpServerConfig config;
    config.port = 0;
    config.maxBodyBytes = 1024;
    ASSERT_TRUE(server.start(config).isOk());
    base = "http://127.0.0.1:" + std::to_string(server.port());
  }

  std::shared_ptr<ResponseStream> waitForStream() {
    std::unique_lock lock(mu);
    cv.wait_for(lock, std::chrono::seconds(10), [&] { return stream != nullptr; });
    return stream;
  }

  HttpServer server;
  std::string base;
  std::mutex mu;
  std::condition_variable cv;
  std::shared_ptr<ResponseStream> stream;
};

TEST_F(HttpServerTest, RoutesExactAndPrefixWithQuery) {
  auto r = httpGet(base + "/hello?name=a%20b");
  ASSERT_TRUE(r.isOk()) << r.message();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "hello a b");
  EXPECT_TRUE(r->header("x-request-id").has_value());

  auto p = httpGet(base + "/v1/plans/abc/ranks/1");
  ASSERT_TRUE(p.isOk()) << p.message();
  EXPECT_EQ(p->body, "plan path /v1/plans/abc/ranks/1");
}

TEST_F(HttpServerTest, PostEchoesBodyAndRequestId) {
  HttpClientRequest req;
  req.method = "POST";
  req.url = base + "/echo";
  req.body = R"({"x":1})";
  req.headers.emplace_back("X-Request-Id", "abc-123");
  auto r = httpRequest(req);
  ASSERT_TRUE(r.isOk()) << r.message();
  EXPECT_EQ(r->status, 201);
  EXPECT_EQ(r->body, R"({"x":1})");
  EXPECT_EQ(r->header("x-seen-id"), "abc-123");
  EXPECT_EQ(r->header("X-Request-Id"), "abc-123");
}

TEST_F(HttpServerTest, UnknownPathIs404AndWrongMethodIs405) {
  auto r = httpGet(base + "/nope");
  ASSERT_TRUE(r.isOk());
  EXPECT_EQ(r->status, 404);
  EXPECT_NE(r->body.find("/nope"), std::string::npos);
  auto m = httpPost(base + "/hello", "{}");
  ASSERT_TRUE(m.isOk());
  EXPECT_EQ(m->status, 405);
}

TEST_F(HttpServerTest, HandlerExceptionIs500AndServerKeepsServing) {
  auto r = httpGet(base + "/throws");
  ASSERT_TRUE(r.isOk());
  EXPECT_EQ(r->status, 500);
  EXPECT_EQ(httpGet(base + "/hello")->status, 200);
}

TEST_F(HttpServerTest, OversizedBodyIs413) {
  auto r = httpPost(base + "/echo", std::string(4096, 'x'));
  ASSERT_TRUE(r.isOk()) << r.message();
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(httpPost(base + "/echo", "small")->status, 201);
}

TEST_F(HttpServerTest, MalformedRequestIs400) {
  RawSocket sock(server.port());
  ASSERT_TRUE(sock.connected());
  ASSERT_TRUE(sock.sendAll("THIS IS NOT HTTP\r\n\r\n"));
  std::string reply = sock.readUntilClosed();
  EXPECT_TRUE(reply.starts_with("HTTP/1.1 400")) << reply;

  RawSocket badLength(server.port());
  ASSERT_TRUE(badLength.sendAll("POST /echo HTTP/1.1\r\nHost: x\r\n"
                                "Content-Length: banana\r\n\r\n"));
  EXPECT_TRUE(badLength.readUntilClosed().starts_with("HTTP/1.1 400"));
  EXPECT_EQ(httpGet(base + "/hello")->status, 200);
}

TEST_F(HttpServerTest, StreamsChunksFromAnotherThread) {
  std::vector<std::string> chunks;
  std::thread writer([&] {
    auto s = waitForStream();
    ASSERT_NE(s, nullptr);
    for (int i = 0; i < 3; ++i)
      EXPECT_TRUE(s->writeEvent("tok" + std::to_string(i)));
    EXPECT_TRUE(s->writeEvent("[DONE]"));
    s->close();
  });
  HttpClientRequest req;
  req.url = base + "/stream";
  std::string all;
  auto r = httpRequestStreaming(req, [&](std::string_view c) {
    all.append(c);
    return true;
  });
  writer.join();
  ASSERT_TRUE(r.isOk()) << r.message();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->header("content-type"), "text/event-stream");
  EXPECT_EQ(all, "data: tok0\n\ndata: tok1\n\ndata: tok2\n\ndata: [DONE]\n\n");
}

TEST_F(HttpServerTest, ClientDisconnectIsDetected) {
  std::atomic<bool> notified{false};
  std::thread client([&] {
    HttpClientRequest req;
    req.url = base + "/stream";
    // Hang up after the first event.
    auto r = httpRequestStreaming(req, [](std::string_view) { return false; });
    EXPECT_TRUE(r.isOk()) << r.message();
  });
  auto s = waitForStream();
  ASSERT_NE(s, nullptr);
  s->onClientGone([&] { notified = true; });
  EXPECT_TRUE(s->writeEvent("first"));
  client.join();
  // The server learns of the hang-up from its pending read or a failed write.
  bool gone = false;
  for (int i = 0; i < 500 && !gone; ++i) {
    gone = !s->writeEvent("more");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(gone);
  EXPECT_TRUE(s->clientGone());
  EXPECT_TRUE(notified);
  bool late = false;
  s->onClientGone([&] { late = true; });
  EXPECT_TRUE(late) << "a callback registered after the hang-up runs at once";
}

TEST_F(HttpServerTest, StopClosesOpenStreams) {
  std::thread client([&] {
    HttpClientRequest req;
    req.url = base + "/stream";
    auto r = httpRequestStreaming(req, [](std::string_view) { return true; });
    // The server went away mid-stream: an error, but no hang.
    EXPECT_FALSE(r.isOk());
  });
  auto s = waitForStream();
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->writeEvent("x"));
  server.stop();
  client.join();
  EXPECT_TRUE(s->clientGone());
  EXPECT_FALSE(s->writeEvent("after stop"));
}

// Issue 14, finding 10: HTTP/1.0 clients got chunked responses, which they
// cannot parse.
TEST_F(HttpServerTest, AStreamToAnHttp10ClientIsNotChunked) {
  std::thread writer([&] {
    auto s = waitForStream();
    ASSERT_NE(s, nullptr);
    EXPECT_TRUE(s->writeEvent("tok0"));
    EXPECT_TRUE(s->writeEvent("[DONE]"));
    s->close();
  });
  RawSocket sock(server.port());
  ASSERT_TRUE(sock.sendAll("GET /stream HTTP/1.0\r\n\r\n"));
  const std::string response = sock.readUntilClosed();
  writer.join();
  EXPECT_EQ(response.find("Transfer-Encoding"), std::string::npos) << response;
  const size_t body = response.find("\r\n\r\n");
  ASSERT_NE(body, std::string::npos) << response;
  EXPECT_EQ(response.substr(body + 4), "data: tok0\n\ndata: [DONE]\n\n");
}

// Issue 14, finding 6: a streaming client that never reads grew the server
// without bound. Past maxStreamQueueBytes its stream counts as gone.
TEST(HttpServerBoundsTest, AStreamWhoseClientStopsReadingIsDropped) {
  HttpServer server;
  std::mutex mu;
  std::condition_variable cv;
  std::shared_ptr<ResponseStream> stream;
  std::atomic<bool> goneFired{false};
  server.route("GET", "/stream", [&](const HttpRequest &) {
    return HttpResponse::sse([&](std::shared_ptr<ResponseStream> s) {
      s->onClientGone([&] { goneFired = true; });
      std::lock_guard lock(mu);
      stream = std::move(s);
      cv.notify_all();
    });
  });
  HttpServerConfig config;
  config.maxStreamQueueBytes = 1 << 20;
  ASSERT_TRUE(server.start(config).isOk());
  RawSocket reader(server.port()); // sends the request, then never reads
  ASSERT_TRUE(reader.sendAll("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::shared_ptr<ResponseStream> s;
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return stream != nullptr; }));
    s = stream;
  }
  const std::string event(16 * 1024, 'x');
  uint64_t accepted = 0;
  // Loopback socket buffers take some megabytes before the queue grows.
  while (accepted < (uint64_t(256) << 20) && s->writeEvent(event)) {
    accepted += event.size();
    if (accepted % (uint64_t(4) << 20) == 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(20)); // let the writes flush
  }
  EXPECT_LT(accepted, uint64_t(256) << 20) << "write() never refused";
  EXPECT_TRUE(s->clientGone());
  for (int i = 0; i < 200 && !goneFired; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(goneFired) << "the producer is told, so it can cancel the request";
}

// Issue 14, finding 8: out of file descriptors, the accept loop spun (12
// CPU-seconds per 10 s) and /healthz timed out. In a child process whose
// descriptor limit is reached, pending connections now cost (almost) no CPU,
// and the server answers again once descriptors are free.
TEST(HttpServerBoundsTest, OutOfDescriptorsTheAcceptLoopBacksOff) {
  int toChild[2], fromChild[2];
  ASSERT_EQ(::pipe(toChild), 0);
  ASSERT_EQ(::pipe(fromChild), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    HttpServer server;
    server.route("GET", "/healthz", [](const HttpRequest &) {
      return HttpResponse::text(200, "ok\n");
    });
    HttpServerConfig config;
    config.threads = 2;
    if (!server.start(config))
      ::_exit(3);
    // Use up every descriptor but none: accept() now fails with EMFILE.
    std::vector<int> hogs;
    for (int fd; (fd = ::dup(0)) >= 0;)
      hogs.push_back(fd);
    uint16_t port = server.port();
    (void)!::write(fromChild[1], &port, sizeof port);
    char go;
    (void)!::read(toChild[0], &go, 1); // the parent's connections are pending
    rusage before{}, after{};
    ::getrusage(RUSAGE_SELF, &before);
    std::this_thread::sleep_for(std::chrono::seconds(1));
    ::getrusage(RUSAGE_SELF, &after);
    auto cpu = [](const rusage &r) {
      return r.ru_utime.tv_sec + r.ru_stime.tv_sec +
             (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
    };
    const int32_t cpuMillis = static_cast<int32_t>((cpu(after) - cpu(before)) * 1000);
    for (int fd : hogs)
      ::close(fd);
    (void)!::write(fromChild[1], &cpuMillis, sizeof cpuMillis);
    (void)!::read(toChild[0], &go, 1); // the parent checked /healthz
    server.stop();
    ::_exit(0);
  }
  uint16_t port = 0;
  ASSERT_EQ(::read(fromChild[0], &port, sizeof port), static_cast<ssize_t>(sizeof port));
  std::vector<std::unique_ptr<RawSocket>> pending;
  for (int i = 0; i < 4; ++i)
    pending.push_back(std::make_unique<RawSocket>(port, 2000));
  ASSERT_EQ(::write(toChild[1], "g", 1), 1);
  int32_t cpuMillis = -1;
  ASSERT_EQ(::read(fromChild[0], &cpuMillis, sizeof cpuMillis),
            static_cast<ssize_t>(sizeof cpuMillis));
  EXPECT_LT(cpuMillis, 300) << "CPU milliseconds used in 1 s with connections pending";
  auto health = httpGet("http://127.0.0.1:" + std::to_string(port) + "/healthz",
                        std::chrono::seconds(10));
  ASSERT_TRUE(health.isOk()) << health.message();
  EXPECT_EQ(health->status, 200);
  ASSERT_EQ(::write(toChild[1], "g", 1), 1);
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

// Issue 14, finding 8: requests that block in their handler (waiting for a
// replica) held every server thread, and /healthz took as long as they
// waited. Handlers now run on their own threads; Io routes answer at once.
TEST(HttpServerThreadsTest, ProbesAnswerWhileEveryHandlerThreadIsBlocked) {
  HttpServer server;
  std::mutex mu;
  std::condition_variable cv;
  int blocked = 0;
  bool release = false;
  server.route("POST", "/wait", [&](const HttpRequest &) {
    std::unique_lock lock(mu);
    ++blocked;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
    return HttpResponse::text(200, "waited\n");
  });
  addProbeRoutes(server, {.metricsText = [] { return std::string("up 1\n"); }});
  server.route("GET", "/pooled", [](const HttpRequest &) {
    return HttpResponse::text(200, "pooled\n");
  });
  HttpServerConfig config;
  config.threads = 2;
  ASSERT_TRUE(server.start(config).isOk());
  const std::string base = "http://127.0.0.1:" + std::to_string(server.port());

  std::vector<std::thread> waiting;
  std::atomic<int> answered{0};
  for (int i = 0; i < 4; ++i) // more than there are handler threads
    waiting.emplace_back([&] {
      auto r = httpPost(base + "/wait", "{}", "application/json", std::chrono::seconds(30));
      if (r && r->status == 200)
        ++answered;
    });
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return blocked == 2; }));
  }
  // Every handler thread is blocked; the probe answers regardless, three times.
  for (int i = 0; i < 3; ++i) {
    const auto start = std::chrono::steady_clock::now();
    auto health = httpGet(base + "/healthz", std::chrono::seconds(1));
    ASSERT_TRUE(health.isOk()) << health.message();
    EXPECT_EQ(health->status, 200);
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
  }
  for (const char *path : {"/readyz", "/metrics"}) { // and so do the others
    auto probe = httpGet(base + path, std::chrono::seconds(1));
    ASSERT_TRUE(probe.isOk()) << path << ": " << probe.message();
    EXPECT_EQ(probe->status, 200) << path;
  }
  // A pool route waits its turn (it is queued, not refused).
  auto pooled = httpGet(base + "/pooled", std::chrono::milliseconds(300));
  EXPECT_FALSE(pooled.isOk());
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  for (auto &t : waiting)
    t.join();
  EXPECT_EQ(answered, 4);
  auto after = httpGet(base + "/pooled", std::chrono::seconds(5));
  ASSERT_TRUE(after.isOk()) << after.message();
  EXPECT_EQ(after->status, 200);
}

// Every service's probes: liveness always, readiness with the reason it
// is not, the scrape in Prometheus' text format.
TEST(HttpServerProbesTest, ReadinessGivesItsReasonAndMetricsAreTheTextFormat) {
  HttpServer server;
  std::atomic<bool> ready{false};
  std::atomic<int> scrapes{0};
  addProbeRoutes(server, {.notReady = [&]() -> std::optional<std::string> {
                            if (ready)
                              return std::nullopt;
                            return "no replica ready";
                          },
                          .metricsText = [&] {
                            ++scrapes;
                            return "llmir:up " + std::to_string(scrapes.load()) + "\n";
                          }});
  ASSERT_TRUE(server.start({}).isOk());
  const std::string base = "http://127.0.0.1:" + std::to_string(server.port());
  auto health = httpGet(base + "/healthz");
  ASSERT_TRUE(health.isOk()) << health.message();
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "ok\n");
  auto notReady = httpGet(base + "/readyz");
  ASSERT_TRUE(notReady.isOk()) << notReady.message();
  EXPECT_EQ(notReady->status, 503);
  EXPECT_EQ(notReady->body, "no replica ready\n");
  ready = true;
  auto isReady = httpGet(base + "/readyz");
  ASSERT_TRUE(isReady.isOk()) << isReady.message();
  EXPECT_EQ(isReady->status, 200);
  for (int i = 1; i <= 2; ++i) { // rendered afresh for every scrape
    auto metrics = httpGet(base + "/metrics");
    ASSERT_TRUE(metrics.isOk()) << metrics.message();
    EXPECT_EQ(metrics->status, 200);
    EXPECT_EQ(metrics->body, "llmir:up " + std::to_string(i) + "\n");
    EXPECT_EQ(metrics->header("content-type").value_or(""),
              "text/plain; version=0.0.4; charset=utf-8");
  }
  auto post = httpPost(base + "/metrics", "{}");
  ASSERT_TRUE(post.isOk()) << post.message();
  EXPECT_EQ(post->status, 405);
}

TEST(HttpClientTest, ConnectionRefusedAndBadUrlAreErrors) {
  EXPECT_FALSE(httpGet("http://127.0.0.1:1/x", std::chrono::milliseconds(2000)).isOk());
  EXPECT_FALSE(httpGet("https://example.com/").isOk());
  EXPECT_FALSE(parseHttpUrl("http://:80/").isOk());
  auto u = parseHttpUrl("http://host:81/a?b=c");
  ASSERT_TRUE(u.isOk());
  EXPECT_EQ(u->host, "host");
  EXPECT_EQ(u->port, "81");
  EXPECT_EQ(u->target, "/a?b=c");
}

TEST(HttpServerStartTest, PortInUseIsAnError) {
  HttpServer a, b;
  ASSERT_TRUE(a.start({}).isOk());
  HttpServerConfig config;
  config.port = a.port();
  EXPECT_FALSE(b.start(config).isOk());
}

} // namespace

#include "RawSocket.h"
#include "llmir/net/Http.h"
#include "llmir/net/HttpClient.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

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

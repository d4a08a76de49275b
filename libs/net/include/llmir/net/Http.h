// HTTP/1.1 server (Beast + Asio behind a pimpl): routes by method and exact
// path or path prefix; a handler answers with a response, or takes over the
// connection to stream (Server-Sent Events) from any thread.
#pragma once

#include "llmir/support/Status.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace llmir::net {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::string method;    // "GET", "POST", ...
  std::string target;    // as sent: "/v1/plans/x?y=1"
  std::string path;      // target up to '?'
  std::string query;     // after '?', undecoded; empty when none
  HttpHeaders headers;   // names lower-cased
  std::string body;
  /// X-Request-Id when the client sent one, a generated id otherwise; the
  /// response carries it back in X-Request-Id.
  std::string requestId;

  /// First header with this name (case-insensitive).
  std::optional<std::string> header(std::string_view name) const;
  /// Value of `name` in the query string (percent-decoded), if present.
  std::optional<std::string> queryParam(std::string_view name) const;
};

/// A response being streamed (chunked transfer encoding). Thread-safe:
/// write() and close() may be called from any thread; they queue the bytes
/// and return at once.
class ResponseStream {
public:
  virtual ~ResponseStream() = default;
  /// Queues `chunk`; false once the client has gone (or close() was called).
  virtual bool write(std::string_view chunk) = 0;
  /// Queues one SSE event: "data: <data>\n\n".
  bool writeEvent(std::string_view data);
  /// Ends the response and closes the connection after queued bytes are sent.
  virtual void close() = 0;
  /// True once the client disconnected or a write failed.
  virtual bool clientGone() const = 0;
  /// `callback` runs once (on a server thread) when the client goes away
  /// before close(); at once if it already has.
  virtual void onClientGone(std::function<void()> callback) = 0;
  virtual const std::string &requestId() const = 0;
};

struct HttpResponse {
  int status = 200;
  std::string contentType = "application/json";
  std::string body;
  HttpHeaders headers;
  /// When set, the server sends status + headers with chunked encoding and
  /// hands the connection to this function (body is ignored). It keeps the
  /// stream and writes to it from any thread.
  std::function<void(std::shared_ptr<ResponseStream>)> stream;

  static HttpResponse json(int status, std::string body);
  static HttpResponse text(int status, std::string body);
  /// {"error": {"message": ..., "code": status}}.
  static HttpResponse error(int status, std::string_view message);
  /// A streamed text/event-stream response.
  static HttpResponse sse(std::function<void(std::shared_ptr<ResponseStream>)> start);
};

using HttpHandler = std::function<HttpResponse(const HttpRequest &)>;

/// Where a route's handler runs.
enum class HandlerThread {
  /// The handler threads (HttpServerConfig::threads): a handler may block
  /// there (a request waiting for a replica) without stopping the server
  /// from reading other requests.
  Pool,
  /// The I/O thread, as soon as the request is read: for handlers that never
  /// block (health, readiness, metrics), so they answer even while every
  /// handler thread is busy (a liveness probe must not fail under load).
  Io,
};

struct HttpServerConfig {
  std::string host = "127.0.0.1";
  uint16_t port = 0;              // 0 = ephemeral (see HttpServer::port())
  unsigned threads = 2;           // handler threads (HandlerThread::Pool)
  unsigned ioThreads = 1;         // accept, read, write; HandlerThread::Io handlers
  uint64_t maxBodyBytes = 1 << 20; // larger bodies get 413
  unsigned stopGraceMillis = 5000; // stop() waits this long for requests in flight
  /// A streamed response whose client lets this many bytes queue up (it
  /// stopped reading) is dropped: write() returns false, onClientGone fires.
  uint64_t maxStreamQueueBytes = 4u << 20;
};

class HttpServer {
public:
  HttpServer();
  ~HttpServer(); // stop()s
  HttpServer(const HttpServer &) = delete;
  HttpServer &operator=(const HttpServer &) = delete;

  /// Routes; register before start(). An exact route wins over a prefix
  /// route, a longer prefix over a shorter one. A known path with another
  /// method answers 405, an unknown path 404.
  void route(std::string method, std::string path, HttpHandler handler,
             HandlerThread where = HandlerThread::Pool);
  void routePrefix(std::string method, std::string prefix, HttpHandler handler,
                   HandlerThread where = HandlerThread::Pool);

  /// Binds and starts serving; fails when the address cannot be bound.
  Status start(const HttpServerConfig &config);
  /// The bound port (the ephemeral one when config.port was 0).
  uint16_t port() const;
  /// Stops accepting, waits up to stopGraceMillis for handlers in flight,
  /// closes every connection (open streams see clientGone) and joins threads.
  void stop();

  struct Impl; // defined in src/ (keeps Beast out of this header)

private:
  std::shared_ptr<Impl> impl_;
};

/// The probes and scrape every service answers, on the I/O thread (a busy
/// handler pool never fails a liveness check or a scrape): GET /healthz
/// "ok"; GET /readyz 200 "ready", or 503 with the reason notReady() gives;
/// GET /metrics the Prometheus text exposition metricsText() renders.
struct ProbeRoutes {
  std::function<std::optional<std::string>()> notReady; // empty: always ready
  std::function<std::string()> metricsText;
};
void addProbeRoutes(HttpServer &server, ProbeRoutes probes);

} // namespace llmir::net

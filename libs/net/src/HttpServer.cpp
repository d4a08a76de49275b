// HttpServer on Beast: one Session per connection, all of its I/O on one
// strand. A streamed response is the Session itself (ResponseStream): writes
// from other threads are posted to the strand and queued; a pending read on
// the socket notices when the client goes away.
#include "llmir/net/Http.h"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <thread>

namespace llmir::net {
namespace {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr auto kIdleTimeout = std::chrono::seconds(120);
constexpr auto kDrainTimeout = std::chrono::seconds(2);
constexpr auto kAcceptBackoff = std::chrono::milliseconds(50);
constexpr uint32_t kHeaderLimit = 64 * 1024;

std::string toLower(std::string_view s) {
  std::string out(s);
  for (char &c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string percentDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() &&
               std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
               std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

struct Route {
  std::string method;
  std::string path;
  HttpHandler handler;
  HandlerThread where = HandlerThread::Pool;
};
} // namespace

std::optional<std::string> HttpRequest::header(std::string_view name) const {
  std::string lower = toLower(name);
  for (const auto &[k, v] : headers)
    if (k == lower)
      return v;
  return std::nullopt;
}

std::optional<std::string>
HttpRequest::queryParam(std::string_view name) const {
  std::string_view rest = query;
  while (!rest.empty()) {
    size_t amp = rest.find('&');
    std::string_view pair = rest.substr(0, amp);
    size_t eq = pair.find('=');
    if (percentDecode(pair.substr(0, eq)) == name)
      return eq == std::string_view::npos ? std::string()
                                          : percentDecode(pair.substr(eq + 1));
    if (amp == std::string_view::npos)
      break;
    rest.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

bool ResponseStream::writeEvent(std::string_view data) {
  std::string event = "data: ";
  event += data;
  event += "\n\n";
  return write(event);
}

HttpResponse HttpResponse::json(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

HttpResponse HttpResponse::text(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.contentType = "text/plain; charset=utf-8";
  r.body = std::move(body);
  return r;
}

HttpResponse HttpResponse::error(int status, std::string_view message) {
  boost::json::object error;
  error["message"] = message;
  error["code"] = status;
  return json(status, boost::json::serialize(boost::json::object{{"error", error}}));
}

HttpResponse HttpResponse::sse(
    std::function<void(std::shared_ptr<ResponseStream>)> start) {
  HttpResponse r;
  r.contentType = "text/event-stream";
  r.headers.emplace_back("Cache-Control", "no-cache");
  r.stream = std::move(start);
  return r;
}

class Session;

struct HttpServer::Impl {
  std::vector<Route> exactRoutes;
  std::vector<Route> prefixRoutes;
  HttpServerConfig config;
  asio::io_context ioc;
  // Handlers of HandlerThread::Pool routes run here, never on the I/O
  // threads: however many of them block, accept and read go on, and the
  // HandlerThread::Io routes (probes, metrics) answer (issue 14, finding 8).
  std::optional<asio::thread_pool> handlerPool;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::optional<tcp::acceptor> acceptor;
  std::vector<std::thread> threads;
  std::atomic<uint16_t> boundPort{0};
  std::atomic<bool> running{false};
  std::atomic<int> inFlight{0};
  std::atomic<int> openConnections{0};
  std::mutex sessionsMu;
  std::map<Session *, std::weak_ptr<Session>> sessions;
  std::string idPrefix;
  std::atomic<uint64_t> nextId{1};

  /// The route for `request`, or the 404/405 to answer instead.
  const Route *resolve(const HttpRequest &request, HttpResponse &refusal) const;
  void doAccept(const std::shared_ptr<Impl> &self);
  std::string newRequestId() {
    return idPrefix + std::to_string(nextId.fetch_add(1));
  }
};

class Session : public ResponseStream,
                public std::enable_shared_from_this<Session> {
public:
  Session(tcp::socket socket, std::shared_ptr<HttpServer::Impl> server)
      : stream_(std::move(socket)), server_(std::move(server)) {}

  ~Session() override {
    std::lock_guard lock(server_->sessionsMu);
    server_->sessions.erase(this);
  }

  void start() {
    {
      std::lock_guard lock(server_->sessionsMu);
      server_->sessions[this] = weak_from_this();
    }
    server_->openConnections++;
    asio::dispatch(stream_.get_executor(),
                   [self = shared_from_this()] { self->doRead(); });
  }

  // Called by HttpServer::stop() from its own thread.
  void forceClose() {
    gone_ = true;
    asio::post(stream_.get_executor(), [self = shared_from_this()] {
      self->markGone();
    });
  }

  // ResponseStream.
  bool write(std::string_view chunk) override {
    if (gone_ || closed_)
      return false;
    if (chunk.empty())
      return true; // an empty chunk would end the chunked body
    std::string framed;
    if (http10_) { // no chunked encoding: the body ends when the connection does
      framed = chunk;
    } else {
      char size[20];
      std::snprintf(size, sizeof size, "%zx\r\n", chunk.size());
      framed = size;
      framed.append(chunk);
      framed += "\r\n";
    }
    // A client that stops reading must not grow our memory without bound:
    // past the limit it counts as gone (its request is cancelled).
    if (queuedBytes_ + framed.size() > server_->config.maxStreamQueueBytes) {
      gone_ = true;
      asio::post(stream_.get_executor(), [self = shared_from_this()] { self->markGone(); });
      return false;
    }
    asio::post(stream_.get_executor(),
               [self = shared_from_this(), framed = std::move(framed)]() mutable {
                 self->enqueue(std::move(framed));
               });
    return true;
  }

  void close() override {
    if (closed_.exchange(true))
      return;
    asio::post(stream_.get_executor(), [self = shared_from_this()] {
      self->closeAfterDrain_ = true;
      if (self->http10_)
        self->flush();
      else
        self->enqueue("0\r\n\r\n");
    });
  }

  bool clientGone() const override { return gone_; }

  void onClientGone(std::function<void()> callback) override {
    std::unique_lock lock(goneMu_);
    if (goneFired_) {
      lock.unlock();
      callback();
      return;
    }
    goneCallback_ = std::move(callback);
  }

  const std::string &requestId() const override { return requestId_; }

private:
  void doRead() {
    parser_.emplace();
    parser_->body_limit(server_->config.maxBodyBytes);
    parser_->header_limit(kHeaderLimit);
    stream_.expires_after(kIdleTimeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->onRead(ec);
                     });
  }

  void onRead(beast::error_code ec) {
    if (ec == http::error::end_of_stream || gone_) {
      shutdown();
      return;
    }
    if (ec == http::error::body_limit) {
      sendErrorAndDrain(413, "request body exceeds " +
                                 std::to_string(server_->config.maxBodyBytes) +
                                 " bytes");
      return;
    }
    if (ec && ec.category() == beast::http::make_error_code(
                                   http::error::bad_target).category()) {
      sendErrorAndDrain(400, "malformed HTTP request: " + ec.message());
      return;
    }
    if (ec) { // network error or idle timeout
      shutdown();
      return;
    }
    http::request<http::string_body> req = parser_->release();
    HttpRequest request;
    request.method = std::string(req.method_string());
    request.target = std::string(req.target());
    size_t q = request.target.find('?');
    request.path = request.target.substr(0, q);
    if (q != std::string::npos)
      request.query = request.target.substr(q + 1);
    for (const auto &field : req)
      request.headers.emplace_back(toLower(field.name_string()),
                                   std::string(field.value()));
    request.body = std::move(req.body());
    request.requestId =
        request.header("x-request-id").value_or(server_->newRequestId());
    requestId_ = request.requestId;
    keepAlive_ = req.keep_alive();
    http10_ = req.version() < 11;

    HttpResponse refusal;
    const Route *route = server_->resolve(request, refusal);
    if (!route) {
      sendResponse(refusal);
      return;
    }
    server_->inFlight++;
    if (route->where == HandlerThread::Io) {
      respond(invoke(*route, request));
      server_->inFlight--;
      return;
    }
    asio::post(*server_->handlerPool, [self = shared_from_this(), route,
                                       request = std::move(request)] {
      HttpResponse response = invoke(*route, request);
      // Back on the connection's strand for the I/O.
      asio::dispatch(self->stream_.get_executor(),
                     [self, response = std::move(response)] { self->respond(response); });
      self->server_->inFlight--;
    });
  }

  static HttpResponse invoke(const Route &route, const HttpRequest &request) {
    try {
      return route.handler(request);
    } catch (const std::exception &e) {
      HttpResponse response =
          HttpResponse::error(500, std::string("handler failed: ") + e.what());
      response.stream = nullptr;
      return response;
    }
  }

  void respond(const HttpResponse &response) {
    if (response.stream)
      startStream(response);
    else
      sendResponse(response);
  }

  void sendResponse(const HttpResponse &response) {
    auto res = std::make_shared<http::response<http::string_body>>();
    res->version(11);
    res->result(static_cast<unsigned>(response.status));
    res->set(http::field::server, "llmir");
    res->set(http::field::content_type, response.contentType);
    res->set("X-Request-Id", requestId_);
    for (const auto &[k, v] : response.headers)
      res->set(k, v);
    res->keep_alive(keepAlive_ && server_->running);
    res->body() = response.body;
    res->prepare_payload();
    http::async_write(stream_, *res,
                      [self = shared_from_this(), res](beast::error_code ec, size_t) {
                        if (ec || !res->keep_alive())
                          self->shutdown();
                        else
                          self->doRead();
                      });
  }

  // After 413/400 the client may still be sending: answer, stop sending, and
  // read what is left for a while so the answer is not lost to a reset.
  void sendErrorAndDrain(int status, const std::string &message) {
    keepAlive_ = false;
    auto res = std::make_shared<http::response<http::string_body>>();
    HttpResponse err = HttpResponse::error(status, message);
    res->version(11);
    res->result(static_cast<unsigned>(status));
    res->set(http::field::content_type, err.contentType);
    res->set(http::field::connection, "close");
    res->body() = err.body;
    res->prepare_payload();
    http::async_write(stream_, *res,
                      [self = shared_from_this(), res](beast::error_code ec, size_t) {
                        if (ec) {
                          self->shutdown();
                          return;
                        }
                        beast::error_code ignored;
                        self->stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
                        self->stream_.expires_after(kDrainTimeout);
                        self->drain();
                      });
  }

  void drain() {
    stream_.async_read_some(asio::buffer(scratch_),
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              if (ec)
                                self->shutdown();
                              else
                                self->drain();
                            });
  }

  void startStream(const HttpResponse &response) {
    std::string head = "HTTP/1.1 " + std::to_string(response.status) + " " +
                       std::string(http::obsolete_reason(
                           static_cast<http::status>(response.status))) +
                       "\r\nServer: llmir\r\nContent-Type: " +
                       response.contentType +
                       (http10_ ? "\r\n" : "\r\nTransfer-Encoding: chunked\r\n") +
                       "Connection: close\r\nX-Request-Id: " + requestId_ + "\r\n";
    for (const auto &[k, v] : response.headers)
      head += k + ": " + v + "\r\n";
    head += "\r\n";
    stream_.expires_never();
    enqueue(std::move(head));
    watchForDisconnect();
    response.stream(shared_from_this());
  }

  void watchForDisconnect() {
    stream_.async_read_some(asio::buffer(scratch_),
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              if (ec)
                                self->markGone();
                              else
                                self->watchForDisconnect();
                            });
  }

  void enqueue(std::string bytes) {
    if (gone_)
      return;
    queuedBytes_ += bytes.size();
    outQueue_.push_back(std::move(bytes));
    flush();
  }

  void flush() {
    if (writing_)
      return;
    if (outQueue_.empty()) {
      if (closeAfterDrain_)
        shutdown();
      return;
    }
    writing_ = true;
    asio::async_write(stream_, asio::buffer(outQueue_.front()),
                      [self = shared_from_this()](beast::error_code ec, size_t) {
                        self->writing_ = false;
                        if (ec) {
                          self->markGone();
                          return;
                        }
                        self->queuedBytes_ -= self->outQueue_.front().size();
                        self->outQueue_.pop_front();
                        self->flush();
                      });
  }

  void markGone() {
    gone_ = true;
    shutdown();
    if (closed_)
      return;
    std::function<void()> callback;
    {
      std::lock_guard lock(goneMu_);
      if (goneFired_)
        return;
      goneFired_ = true;
      callback = std::move(goneCallback_);
    }
    if (callback)
      callback();
  }

  void shutdown() {
    if (socketClosed_)
      return;
    socketClosed_ = true;
    server_->openConnections--;
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
    // The queue stays: a write in flight still points into its front.
  }

  beast::tcp_stream stream_;
  std::shared_ptr<HttpServer::Impl> server_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::string requestId_;
  bool keepAlive_ = false;
  std::array<char, 512> scratch_;
  // Streaming state: the queue and flags are touched on the strand only.
  std::deque<std::string> outQueue_;
  std::atomic<uint64_t> queuedBytes_{0}; // bytes in outQueue_
  bool http10_ = false;
  bool writing_ = false;
  bool socketClosed_ = false;
  bool closeAfterDrain_ = false;
  std::atomic<bool> gone_{false};
  std::atomic<bool> closed_{false};
  std::mutex goneMu_;
  bool goneFired_ = false;
  std::function<void()> goneCallback_;
};

const Route *HttpServer::Impl::resolve(const HttpRequest &request,
                                      HttpResponse &refusal) const {
  bool pathKnown = false;
  for (const Route &r : exactRoutes) {
    if (r.path != request.path)
      continue;
    pathKnown = true;
    if (r.method == request.method)
      return &r;
  }
  const Route *best = nullptr;
  for (const Route &r : prefixRoutes) {
    if (!request.path.starts_with(r.path))
      continue;
    pathKnown = true;
    if (r.method == request.method &&
        (!best || r.path.size() > best->path.size()))
      best = &r;
  }
  if (best)
    return best;
  refusal = pathKnown ? HttpResponse::error(405, "method " + request.method +
                                                     " is not allowed on " + request.path)
                      : HttpResponse::error(404, "no route for " + request.path);
  return nullptr;
}

void HttpServer::Impl::doAccept(const std::shared_ptr<Impl> &self) {
  acceptor->async_accept(
      asio::make_strand(ioc), [self](beast::error_code ec, tcp::socket socket) {
        if (!self->running)
          return;
        if (!ec) {
          std::make_shared<Session>(std::move(socket), self)->start();
        } else if (ec != asio::error::operation_aborted) {
          // Out of descriptors (EMFILE/ENFILE) or memory: the pending
          // connection stays in the backlog and accept would fail again at
          // once; accepting in a loop burned a core (issue 14). Wait a bit;
          // open connections finish meanwhile.
          auto timer = std::make_shared<asio::steady_timer>(self->ioc);
          timer->expires_after(kAcceptBackoff);
          timer->async_wait([self, timer](beast::error_code) {
            if (self->running)
              self->doAccept(self);
          });
          return;
        }
        self->doAccept(self);
      });
}

HttpServer::HttpServer() : impl_(std::make_shared<Impl>()) {}

HttpServer::~HttpServer() { stop(); }

void HttpServer::route(std::string method, std::string path, HttpHandler handler,
                       HandlerThread where) {
  impl_->exactRoutes.push_back({std::move(method), std::move(path), std::move(handler), where});
}

void HttpServer::routePrefix(std::string method, std::string prefix, HttpHandler handler,
                             HandlerThread where) {
  impl_->prefixRoutes.push_back(
      {std::move(method), std::move(prefix), std::move(handler), where});
}

Status HttpServer::start(const HttpServerConfig &config) {
  if (impl_->running)
    return Status::error("HttpServer::start: already started");
  impl_->config = config;
  std::random_device rd;
  char prefix[24];
  std::snprintf(prefix, sizeof prefix, "%08x-", rd());
  impl_->idPrefix = prefix;
  beast::error_code ec;
  auto address = asio::ip::make_address(config.host, ec);
  if (ec)
    return Status::error("HTTP server: bad host '" + config.host + "': " + ec.message());
  tcp::endpoint endpoint(address, config.port);
  impl_->acceptor.emplace(asio::make_strand(impl_->ioc));
  tcp::acceptor &acceptor = *impl_->acceptor;
  if (acceptor.open(endpoint.protocol(), ec);
      !ec && (acceptor.set_option(asio::socket_base::reuse_address(true), ec), !ec) &&
      (acceptor.bind(endpoint, ec), !ec))
    acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    impl_->acceptor.reset();
    return Status::error("HTTP server: cannot listen on " + config.host + ":" +
                         std::to_string(config.port) + ": " + ec.message());
  }
  impl_->boundPort = acceptor.local_endpoint().port();
  impl_->running = true;
  impl_->work.emplace(impl_->ioc.get_executor());
  impl_->handlerPool.emplace(std::max(1u, config.threads));
  impl_->doAccept(impl_);
  for (unsigned i = 0; i < std::max(1u, config.ioThreads); ++i)
    impl_->threads.emplace_back([impl = impl_.get()] { impl->ioc.run(); });
  return Status::ok();
}

uint16_t HttpServer::port() const { return impl_->boundPort; }

void HttpServer::stop() {
  if (!impl_->running.exchange(false))
    return;
  asio::post(impl_->acceptor->get_executor(), [impl = impl_] {
    beast::error_code ignored;
    impl->acceptor->close(ignored);
  });
  auto deadline = std::chrono::steady_clock::now() +
                  std::chrono::milliseconds(impl_->config.stopGraceMillis);
  while (impl_->inFlight > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard lock(impl_->sessionsMu);
    for (auto &[ptr, weak] : impl_->sessions)
      if (auto s = weak.lock())
        live.push_back(std::move(s));
  }
  for (auto &s : live)
    s->forceClose();
  live.clear();
  impl_->work.reset();
  // Give the posted closes a moment to run, then stop the loop.
  auto closeDeadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (impl_->openConnections > 0 &&
         std::chrono::steady_clock::now() < closeDeadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  // Handlers not started yet are dropped; running ones finish (their
  // connections are closed, so what they answer goes nowhere).
  impl_->handlerPool->stop();
  impl_->handlerPool->join();
  impl_->ioc.stop();
  for (auto &t : impl_->threads)
    t.join();
  impl_->threads.clear();
}

void addProbeRoutes(HttpServer &server, ProbeRoutes probes) {
  server.route("GET", "/healthz", [](const HttpRequest &) {
    return HttpResponse::text(200, "ok\n");
  }, HandlerThread::Io);
  server.route("GET", "/readyz", [notReady = std::move(probes.notReady)](const HttpRequest &) {
    if (notReady)
      if (std::optional<std::string> why = notReady())
        return HttpResponse::text(503, *why + "\n");
    return HttpResponse::text(200, "ready\n");
  }, HandlerThread::Io);
  server.route("GET", "/metrics", [text = std::move(probes.metricsText)](const HttpRequest &) {
    HttpResponse res = HttpResponse::text(200, text());
    res.contentType = "text/plain; version=0.0.4; charset=utf-8";
    return res;
  }, HandlerThread::Io);
}

} // namespace llmir::net

// Framed channel on Asio: every connection reads frames in a loop on its
// strand and writes from a queue; send() serialises on the caller's thread
// and writes the frame there when nothing is queued, else queues it (under the
// same lock, so frames keep their order) and wakes the strand.
#include "llmir/net/Framed.h"

#include "llmir/support/ClusterAuth.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include <sys/socket.h>

namespace llmir::net {
namespace {
namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

std::atomic<uint64_t> nextConnectionId{1};

// Bodies are read in pieces of this size: memory follows the bytes received,
// not the size a peer announces.
constexpr size_t kReadChunk = 64 * 1024;

enum class Role { Client, Server };

class Connection : public FramedConnection,
                   public std::enable_shared_from_this<Connection> {
public:
  Connection(tcp::socket socket, std::shared_ptr<asio::io_context> ioc,
             std::shared_ptr<const FramedHandlers> handlers, FramedOptions options,
             Role role)
      : socket_(std::move(socket)), ioc_(std::move(ioc)),
        handlers_(std::move(handlers)), options_(options), role_(role),
        handshakeTimer_(socket_.get_executor()), id_(nextConnectionId++) {
    error_code ec;
    auto ep = socket_.remote_endpoint(ec);
    peer_ = ec ? "?" : ep.address().to_string() + ":" + std::to_string(ep.port());
    socket_.set_option(tcp::no_delay(true), ec);
    socket_.set_option(asio::socket_base::keep_alive(true), ec);
  }

  void start() {
    asio::post(socket_.get_executor(), [self = shared_from_this()] {
      if (!self->options_.clusterSecret)
        return self->opened();
      if (self->role_ == Role::Client)
        self->clientHandshake();
      else
        self->serverHandshake();
    });
  }

  Status send(const proto::Envelope &envelope) override {
    if (!open_)
      return Status::error("framed send to " + peer_ + ": connection is closed");
    std::string frame(4, '\0');
    if (envelope.protocol_version() == proto::WORKER_PROTOCOL_VERSION_UNSPECIFIED) {
      proto::Envelope stamped = envelope;
      stamped.set_protocol_version(kWorkerProtocolVersion);
      stamped.AppendToString(&frame);
    } else {
      envelope.AppendToString(&frame);
    }
    uint64_t size = frame.size() - 4;
    if (size > options_.maxFrameBytes)
      return Status::error("framed send to " + peer_ + ": frame of " +
                           std::to_string(size) + " bytes exceeds the limit of " +
                           std::to_string(options_.maxFrameBytes));
    if (queuedBytes_.fetch_add(frame.size()) + frame.size() > options_.maxQueuedBytes) {
      queuedBytes_ -= frame.size();
      return Status::error("framed send to " + peer_ + ": " +
                           std::to_string(options_.maxQueuedBytes) +
                           " bytes already queued (peer not reading)");
    }
    for (int i = 0; i < 4; ++i)
      frame[i] = static_cast<char>((size >> (8 * i)) & 0xff);
    {
      // The frame takes its place in the order under the write lock: either
      // written here whole, or (partly written, or behind others) put in the
      // queue before the lock is released, so no later send() overtakes it.
      std::lock_guard lock(writeMu_);
      if (!open_) {
        queuedBytes_ -= frame.size();
        return Status::error("framed send to " + peer_ + ": connection is closed");
      }
      if (!authenticated_) { // nothing of the application's before the handshake
        heldFrames_.push_back(std::move(frame));
        return Status::ok();
      }
      if (!writing_ && outQueue_.empty()) {
        // Nothing queued or being written: write from this thread, without
        // waking the I/O thread (a step's round trip crosses this twice).
        const ssize_t n = ::send(socket_.native_handle(), frame.data(), frame.size(),
                                 MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n == static_cast<ssize_t>(frame.size())) {
          queuedBytes_ -= frame.size();
          return Status::ok();
        }
        if (n > 0) { // the rest goes through the I/O thread, ahead of later frames
          queuedBytes_ -= static_cast<uint64_t>(n);
          frame.erase(0, static_cast<size_t>(n));
        } // n < 0: a full socket buffer waits there; an error ends it there
      }
      outQueue_.push_back(std::move(frame));
    }
    // The I/O thread writes the queue; on that thread (a handler answering a
    // message) the write starts at once, not after the handler returns.
    asio::dispatch(socket_.get_executor(), [self = shared_from_this()] { self->flush(); });
    return Status::ok();
  }

  void close() override {
    asio::post(socket_.get_executor(), [self = shared_from_this()] {
      self->closeAfterFlush_ = true;
      self->flush();
    });
  }

  /// Closes at once (stop()); safe from any thread.
  void abort(Status reason) override {
    asio::post(socket_.get_executor(), [self = shared_from_this(), reason] {
      self->finish(reason);
    });
  }

  bool isOpen() const override { return open_; }
  const std::string &peer() const override { return peer_; }
  uint64_t id() const override { return id_; }

private:
  // Authenticated (or no secret): the connection is the application's now.
  void opened() {
    if (!open_)
      return;
    handshakeTimer_.cancel();
    {
      std::lock_guard lock(writeMu_);
      authenticated_ = true;
      for (std::string &frame : heldFrames_)
        outQueue_.push_back(std::move(frame));
      heldFrames_.clear();
    }
    if (handlers_->onOpen)
      handlers_->onOpen(shared_from_this());
    flush();
    if (open_)
      readHeader();
  }

  Status handshakeError(const error_code &ec) const {
    return Status::error("cluster handshake with " + peer_ + " failed: " +
                         (ec == asio::error::eof ? std::string("the peer closed the connection")
                                                 : ec.message()) +
                         " (does it hold the same cluster secret?)");
  }

  // Reads exactly n handshake bytes, then calls next(bytes).
  void readExactly(size_t n, std::function<void(std::string)> next) {
    handshakeIn_.assign(n, '\0');
    asio::async_read(socket_, asio::buffer(handshakeIn_),
                     [self = shared_from_this(), next = std::move(next)](error_code ec, size_t) {
                       if (ec)
                         return self->finish(self->handshakeError(ec));
                       next(std::move(self->handshakeIn_));
                     });
  }

  void writeRaw(std::string bytes) {
    queuedBytes_ += bytes.size();
    {
      std::lock_guard lock(writeMu_);
      outQueue_.push_back(std::move(bytes));
    }
    flush();
  }

  void clientHandshake() {
    auto handshake = std::make_shared<auth::ClientHandshake>(*options_.clusterSecret);
    writeRaw(handshake->hello());
    readExactly(auth::kAnswerBytes, [self = shared_from_this(), handshake](std::string answer) {
      auto proof = handshake->answer(answer);
      if (!proof)
        return self->finish(proof.status().withContext("server " + self->peer_));
      self->writeRaw(std::move(*proof));
      self->readExactly(auth::kAcceptBytes, [self](std::string accept) {
        if (accept[0] != auth::kAcceptByte)
          return self->finish(Status::error("server " + self->peer_ +
                                            " did not accept the cluster handshake"));
        self->opened();
      });
    });
  }

  void serverHandshake() {
    handshakeTimer_.expires_after(options_.handshakeTimeout);
    handshakeTimer_.async_wait([self = shared_from_this()](error_code ec) {
      if (!ec && !self->authenticated_)
        self->finish(Status::error("peer " + self->peer_ +
                                   " did not complete the cluster handshake within " +
                                   std::to_string(self->options_.handshakeTimeout.count()) +
                                   " ms"));
    });
    auto handshake = std::make_shared<auth::ServerHandshake>(*options_.clusterSecret);
    readExactly(auth::kHelloBytes, [self = shared_from_this(), handshake](std::string hello) {
      auto answer = handshake->hello(hello);
      if (!answer)
        return self->finish(answer.status().withContext("peer " + self->peer_));
      self->writeRaw(std::move(*answer));
      self->readExactly(auth::kProofBytes, [self, handshake](std::string proof) {
        if (Status checked = handshake->proof(proof); !checked)
          return self->finish(checked.withContext("peer " + self->peer_));
        self->writeRaw(std::string(1, auth::kAcceptByte));
        self->opened();
      });
    });
  }

  void readHeader() {
    asio::async_read(socket_, asio::buffer(header_),
                     [self = shared_from_this()](error_code ec, size_t) {
                       if (ec)
                         return self->finish(self->readError(ec));
                       uint32_t size = 0;
                       for (int i = 0; i < 4; ++i)
                         size |= uint32_t(self->header_[i]) << (8 * i);
                       if (size > self->options_.maxFrameBytes)
                         return self->reject("frame of " + std::to_string(size) +
                                             " bytes exceeds the limit of " +
                                             std::to_string(self->options_.maxFrameBytes));
                       self->readBody(size);
                     });
  }

  void readBody(uint32_t size) {
    body_.clear();
    bodyRemaining_ = size;
    readBodyChunk();
  }

  void readBodyChunk() {
    if (bodyRemaining_ == 0)
      return deliver();
    const size_t n = std::min<size_t>(bodyRemaining_, kReadChunk);
    const size_t at = body_.size();
    body_.resize(at + n);
    asio::async_read(socket_, asio::buffer(body_.data() + at, n),
                     [self = shared_from_this(), n](error_code ec, size_t) {
                       if (ec)
                         return self->finish(self->readError(ec));
                       self->bodyRemaining_ -= n;
                       self->readBodyChunk();
                     });
  }

  void deliver() {
    proto::Envelope envelope;
    if (!envelope.ParseFromString(body_))
      return reject("a frame of " + std::to_string(body_.size()) +
                    " bytes is not a valid llmir.proto.Envelope");
    if (envelope.protocol_version() != kWorkerProtocolVersion)
      return reject("protocol_version " +
                    std::to_string(envelope.protocol_version()) +
                    " is not supported; this peer speaks " +
                    std::to_string(kWorkerProtocolVersion));
    body_ = std::string(); // a large frame's buffer is not kept for the next one
    if (handlers_->onMessage)
      handlers_->onMessage(shared_from_this(), std::move(envelope));
    if (open_)
      readHeader();
  }

  Status readError(const error_code &ec) const {
    if (ec == asio::error::eof)
      return Status::error("peer " + peer_ + " closed the connection");
    return Status::error("connection to " + peer_ + " failed: " + ec.message());
  }

  // Tells the peer why (best effort) and disconnects.
  void reject(const std::string &why) {
    if (!authenticated_)
      return finish(Status::error("from " + peer_ + ": " + why));
    proto::Envelope error;
    error.set_protocol_version(kWorkerProtocolVersion);
    error.mutable_error()->set_message(why);
    std::string frame(4, '\0');
    error.AppendToString(&frame);
    uint32_t size = static_cast<uint32_t>(frame.size() - 4);
    for (int i = 0; i < 4; ++i)
      frame[i] = static_cast<char>((size >> (8 * i)) & 0xff);
    rejectReason_ = Status::error("from " + peer_ + ": " + why);
    closeAfterFlush_ = true;
    enqueue(std::move(frame));
  }

  // On the I/O thread (reject()).
  void enqueue(std::string frame) {
    {
      std::lock_guard lock(writeMu_);
      if (!open_)
        return;
      if (!authenticated_) { // nothing of the application's before the handshake
        heldFrames_.push_back(std::move(frame));
        return;
      }
      outQueue_.push_back(std::move(frame));
    }
    flush();
  }

  void flush() {
    std::unique_lock lock(writeMu_);
    if (writing_ || !open_)
      return;
    if (outQueue_.empty()) {
      lock.unlock();
      if (closeAfterFlush_)
        finish(rejectReason_);
      return;
    }
    writing_ = true;
    // The front frame stays put: the deque only grows at the back meanwhile.
    asio::async_write(socket_, asio::buffer(outQueue_.front()),
                      [self = shared_from_this()](error_code ec, size_t n) {
                        {
                          std::lock_guard lock(self->writeMu_);
                          self->writing_ = false;
                          self->queuedBytes_ -= self->outQueue_.front().size();
                          self->outQueue_.pop_front();
                        }
                        if (ec)
                          return self->finish(Status::error(
                              "writing to " + self->peer_ + " failed: " + ec.message()));
                        self->flush();
                      });
  }

  void finish(const Status &reason) {
    if (!open_.exchange(false))
      return;
    error_code ignored;
    handshakeTimer_.cancel();
    {
      std::lock_guard lock(writeMu_); // no direct write into a closed descriptor
      socket_.shutdown(tcp::socket::shutdown_both, ignored);
      socket_.close(ignored);
    }
    // The queue stays: a write in flight still points into its front.
    if (handlers_->onClose)
      handlers_->onClose(shared_from_this(), reason);
  }

  tcp::socket socket_;
  std::shared_ptr<asio::io_context> ioc_; // keeps the executor alive
  std::shared_ptr<const FramedHandlers> handlers_;
  FramedOptions options_;
  Role role_;
  asio::steady_timer handshakeTimer_;
  bool authenticated_ = false;
  std::string handshakeIn_;
  std::vector<std::string> heldFrames_;
  uint64_t bodyRemaining_ = 0;
  uint64_t id_;
  std::string peer_;
  std::atomic<bool> open_{true};
  std::atomic<uint64_t> queuedBytes_{0};
  std::array<unsigned char, 4> header_{};
  std::string body_;
  // Guards the write side (send() writes directly from other threads):
  // outQueue_, writing_, heldFrames_, authenticated_ and
  // the descriptor's closing.
  std::mutex writeMu_;
  std::deque<std::string> outQueue_;
  bool writing_ = false;
  bool closeAfterFlush_ = false;
  Status rejectReason_;
};

// One io_context with one thread, shared by server and client.
struct Loop {
  std::shared_ptr<asio::io_context> ioc = std::make_shared<asio::io_context>();
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work{
      ioc->get_executor()};
  std::thread thread;

  void run() {
    thread = std::thread([ioc = ioc] { ioc->run(); });
  }
  void stop() {
    work.reset();
    ioc->stop();
    if (thread.joinable())
      thread.join();
  }
};

// Wraps user handlers so the channel can track its connections.
std::shared_ptr<FramedHandlers>
trackingHandlers(FramedHandlers user, std::mutex &mu,
                 std::map<uint64_t, std::weak_ptr<Connection>> &live) {
  auto handlers = std::make_shared<FramedHandlers>(std::move(user));
  auto onClose = handlers->onClose;
  handlers->onClose = [onClose, &mu, &live](const FramedConnectionPtr &c,
                                            const Status &reason) {
    {
      std::lock_guard lock(mu);
      live.erase(c->id());
    }
    if (onClose)
      onClose(c, reason);
  };
  return handlers;
}

void closeAll(std::mutex &mu, std::map<uint64_t, std::weak_ptr<Connection>> &live) {
  std::vector<std::shared_ptr<Connection>> conns;
  {
    std::lock_guard lock(mu);
    for (auto &[id, weak] : live)
      if (auto c = weak.lock())
        conns.push_back(std::move(c));
  }
  for (auto &c : conns)
    c->abort(Status::ok());
}

void waitUntilEmpty(std::mutex &mu,
                    std::map<uint64_t, std::weak_ptr<Connection>> &live) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (std::chrono::steady_clock::now() < deadline) {
    {
      std::lock_guard lock(mu);
      if (live.empty())
        return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}
} // namespace

// ---------------------------------------------------------------- server

struct FramedServer::Impl {
  Loop loop;
  std::optional<tcp::acceptor> acceptor;
  std::shared_ptr<FramedHandlers> handlers;
  FramedOptions options;
  uint16_t port = 0;
  std::atomic<bool> running{true};
  std::mutex mu;
  std::map<uint64_t, std::weak_ptr<Connection>> live;

  void accept() {
    acceptor->async_accept([this](error_code ec, tcp::socket socket) {
      if (!running)
        return;
      if (!ec) {
        auto conn = std::make_shared<Connection>(std::move(socket), loop.ioc,
                                                 handlers, options, Role::Server);
        {
          std::lock_guard lock(mu);
          live[conn->id()] = conn;
        }
        conn->start();
      }
      accept();
    });
  }
};

FramedServer::FramedServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FramedServer::~FramedServer() { stop(); }

Result<std::unique_ptr<FramedServer>>
FramedServer::start(const std::string &host, uint16_t port,
                    FramedHandlers handlers, FramedOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->handlers = trackingHandlers(std::move(handlers), impl->mu, impl->live);
  error_code ec;
  auto address = asio::ip::make_address(host, ec);
  if (ec)
    return Status::error("framed server: bad host '" + host + "': " + ec.message());
  tcp::endpoint endpoint(address, port);
  impl->acceptor.emplace(*impl->loop.ioc);
  auto &acc = *impl->acceptor;
  if (acc.open(endpoint.protocol(), ec); !ec) {
    acc.set_option(asio::socket_base::reuse_address(true), ec);
    if (acc.bind(endpoint, ec); !ec)
      acc.listen(asio::socket_base::max_listen_connections, ec);
  }
  if (ec)
    return Status::error("framed server: cannot listen on " + host + ":" +
                         std::to_string(port) + ": " + ec.message());
  impl->port = acc.local_endpoint().port();
  impl->accept();
  impl->loop.run();
  return std::unique_ptr<FramedServer>(new FramedServer(std::move(impl)));
}

uint16_t FramedServer::port() const { return impl_->port; }

void FramedServer::stop() {
  if (!impl_->running.exchange(false))
    return;
  asio::post(*impl_->loop.ioc, [impl = impl_.get()] {
    error_code ignored;
    impl->acceptor->close(ignored);
  });
  closeAll(impl_->mu, impl_->live);
  waitUntilEmpty(impl_->mu, impl_->live);
  impl_->loop.stop();
}

// ---------------------------------------------------------------- client

struct FramedClient::Impl {
  Loop loop;
  std::mutex mu; // guards live, inbox, closeReason
  std::map<uint64_t, std::weak_ptr<Connection>> live;
  std::condition_variable cv;
  std::deque<proto::Envelope> inbox;
  std::optional<Status> closeReason;
  FramedConnectionPtr connection;
  bool opened = false;
  bool closed = false;
};

FramedClient::FramedClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FramedClient::~FramedClient() { close(); }

Result<std::unique_ptr<FramedClient>>
FramedClient::connect(const std::string &host, uint16_t port,
                      std::chrono::milliseconds connectTimeout,
                      FramedHandlers handlers, FramedOptions options) {
  auto impl = std::make_unique<Impl>();
  Impl *raw = impl.get();
  if (!handlers.onMessage)
    handlers.onMessage = [raw](const FramedConnectionPtr &, proto::Envelope e) {
      std::lock_guard lock(raw->mu);
      raw->inbox.push_back(std::move(e));
      raw->cv.notify_all();
    };
  auto userOpen = handlers.onOpen;
  handlers.onOpen = [raw, userOpen](const FramedConnectionPtr &c) {
    {
      std::lock_guard lock(raw->mu);
      raw->opened = true;
      raw->cv.notify_all();
    }
    if (userOpen)
      userOpen(c);
  };
  auto userClose = handlers.onClose;
  handlers.onClose = [raw, userClose](const FramedConnectionPtr &c, const Status &s) {
    {
      std::lock_guard lock(raw->mu);
      raw->closeReason = s.isOk() ? Status::error("connection closed locally") : s;
      raw->cv.notify_all();
    }
    if (userClose)
      userClose(c, s);
  };
  auto shared = trackingHandlers(std::move(handlers), impl->mu, impl->live);
  // trackingHandlers' onClose takes impl->mu; our inner onClose takes it too,
  // after the first lock is released.

  auto deadline = std::chrono::steady_clock::now() + connectTimeout;
  error_code ec;
  tcp::resolver resolver(*impl->loop.ioc);
  auto endpoints = resolver.resolve(host, std::to_string(port), ec);
  if (ec)
    return Status::error("framed client: cannot resolve " + host + ": " + ec.message());
  tcp::socket socket(*impl->loop.ioc);
  for (;;) {
    asio::connect(socket, endpoints, ec);
    if (!ec)
      break;
    if (std::chrono::steady_clock::now() >= deadline)
      return Status::error("framed client: cannot connect to " + host + ":" +
                           std::to_string(port) + " within " +
                           std::to_string(connectTimeout.count()) + " ms: " +
                           ec.message());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  auto conn = std::make_shared<Connection>(std::move(socket), impl->loop.ioc,
                                           shared, options, Role::Client);
  impl->live[conn->id()] = conn;
  impl->connection = conn;
  conn->start();
  impl->loop.run();
  auto client = std::unique_ptr<FramedClient>(new FramedClient(std::move(impl)));
  // With a secret, the connection is usable once the server proved it.
  std::optional<Status> failed;
  {
    std::unique_lock lock(raw->mu);
    const auto left = std::max(deadline - std::chrono::steady_clock::now(),
                               std::chrono::steady_clock::duration(
                                   std::chrono::milliseconds(options.handshakeTimeout)));
    if (!raw->cv.wait_for(lock, left, [&] { return raw->opened || raw->closeReason; }))
      failed = Status::error("framed client: the cluster handshake with " + host + ":" +
                             std::to_string(port) + " did not finish in time");
    else if (!raw->opened)
      failed = *raw->closeReason;
  }
  if (failed) {
    client->close();
    return failed->withContext("framed client");
  }
  return client;
}

Status FramedClient::send(const proto::Envelope &envelope) {
  return impl_->connection->send(envelope);
}

Result<proto::Envelope> FramedClient::receive(std::chrono::microseconds timeout) {
  std::unique_lock lock(impl_->mu);
  impl_->cv.wait_for(lock, timeout, [&] {
    return !impl_->inbox.empty() || impl_->closeReason.has_value();
  });
  if (!impl_->inbox.empty()) {
    proto::Envelope e = std::move(impl_->inbox.front());
    impl_->inbox.pop_front();
    return e;
  }
  if (impl_->closeReason)
    return impl_->closeReason->withContext("framed receive");
  const int64_t us = timeout.count();
  return Status::error("framed receive from " + impl_->connection->peer() + ": nothing within " +
                       (us % 1000 == 0 ? std::to_string(us / 1000) + " ms"
                                       : std::to_string(us) + " us"));
}

const FramedConnectionPtr &FramedClient::connection() const {
  return impl_->connection;
}

void FramedClient::close() {
  if (impl_->closed)
    return;
  impl_->closed = true;
  impl_->connection->close(); // flushes what send() queued
  waitUntilEmpty(impl_->mu, impl_->live);
  closeAll(impl_->mu, impl_->live);
  waitUntilEmpty(impl_->mu, impl_->live);
  impl_->loop.stop();
}

} // namespace llmir::net

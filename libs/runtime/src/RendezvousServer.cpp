// The rendezvous store's server: one thread runs a poll(2) event loop over
// the listening socket and every connection (non-blocking sockets), so
// connections and blocked GET/WAITs cost a buffer each, never a thread (issue
// 14: 200 abandoned GETs once held 213 threads). Blocked requests are parked
// on their connection and answered when a SET/ADD makes their keys present,
// when their deadline passes, or dropped when their client goes.
#include "llmir/runtime/RendezvousStore.h"

#include "SocketAddress.h"
#include "StoreWire.h"

#include "llmir/support/ClusterAuth.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <list>
#include <map>
#include <thread>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

namespace llmir::runtime {

namespace {

using Clock = std::chrono::steady_clock;

// Bytes read from a socket per recv().
constexpr size_t kReadChunk = 64 * 1024;
// No new request of a connection is read while this much of its output is
// unsent: a client that pipelines requests without reading the answers
// cannot grow the server's memory past one answer beyond this.
constexpr size_t kOutputHighWater = 1 << 20;
// After EMFILE/ENFILE/ENOBUFS/ENOMEM at accept, the listener rests this long
// instead of spinning on a connection it cannot take.
constexpr std::chrono::milliseconds kAcceptBackoff{50};
// Memory counted per stored key besides its bytes (map node, vector).
constexpr uint64_t kPerKeyOverhead = 64;

wire::Frame reply(wire::Outcome outcome, std::vector<char> payload = {}) {
  wire::Frame f;
  f.code = outcome;
  f.payload = std::move(payload);
  return f;
}

wire::Frame message(wire::Outcome outcome, const std::string &text) {
  return reply(outcome, std::vector<char>(text.begin(), text.end()));
}

std::optional<std::vector<std::string>> readKeys(wire::PayloadReader &in) {
  auto n = in.u32();
  if (!n)
    return std::nullopt;
  std::vector<std::string> keys;
  for (uint32_t i = 0; i < *n; ++i) {
    auto key = in.str();
    if (!key)
      return std::nullopt;
    keys.push_back(std::move(*key));
  }
  return keys;
}

uint64_t entryBytes(const std::string &key, size_t valueBytes) {
  return key.size() + valueBytes + kPerKeyOverhead;
}

} // namespace

struct RendezvousServer::State {
  int listenFd = -1;
  int wakeFd = -1; // eventfd: stop() wakes the loop
  uint16_t port = 0;
  StoreServerOptions options;
  std::atomic<bool> stopping{false};
  std::atomic<size_t> connectionCount{0};
  std::atomic<uint64_t> storedBytesNow{0};
  std::atomic<uint64_t> bufferedBytesNow{0}; // as of the last read or close
  std::thread loop;

  // Everything below belongs to the loop thread.
  std::map<std::string, std::vector<char>> values;
  uint64_t storedBytes = 0;

  struct Connection {
    int fd = -1;
    enum class Phase { Hello, Proof, Frames } phase = Phase::Frames;
    std::optional<auth::ServerHandshake> handshake;
    Clock::time_point handshakeDeadline;
    std::vector<char> in;   // received, not yet consumed
    std::vector<char> out;  // to send, from outPos on
    size_t outPos = 0;
    bool closeWhenFlushed = false; // after a bad request or the client's EOF
    bool peerClosed = false;
    // A GET or WAIT waiting for its keys.
    bool blocked = false;
    uint8_t blockedOp = 0;
    std::vector<std::string> blockedKeys;
    Clock::time_point blockedDeadline;
    bool closed = false;
  };
  std::list<Connection> connections;
  Clock::time_point acceptResumes{};

  void run();
  void acceptNew();
  /// Reads what the socket has; false when the connection is to be closed.
  bool receive(Connection &c);
  /// Received bytes not yet consumed, over every open connection.
  uint64_t bufferedBytes() const {
    uint64_t total = 0;
    for (const Connection &c : connections)
      total += c.closed ? 0 : c.in.size();
    return total;
  }
  /// Consumes complete handshake messages and frames from c.in until the
  /// connection blocks, must flush first, or needs more bytes.
  void pump(Connection &c);
  /// Sends what the socket takes; false on a socket error.
  bool flush(Connection &c);
  void queue(Connection &c, const wire::Frame &frame);
  void close(Connection &c);
  /// Serves one request; nullopt when it blocks (parked on `c`).
  std::optional<wire::Frame> handle(Connection &c, const wire::Frame &request);
  bool allPresent(const std::vector<std::string> &keys) const;
  wire::Frame answerBlocked(Connection &c, bool present);
  /// Answers parked requests whose keys exist or whose deadline passed.
  void wakeWaiters(Clock::time_point now);
  wire::Frame store(const std::string &key, std::vector<char> value);
  void erase(std::map<std::string, std::vector<char>>::iterator it);
  void shutdownAll();
};

bool RendezvousServer::State::allPresent(const std::vector<std::string> &keys) const {
  return std::all_of(keys.begin(), keys.end(),
                     [&](const std::string &k) { return values.count(k) != 0; });
}

void RendezvousServer::State::erase(std::map<std::string, std::vector<char>>::iterator it) {
  storedBytes -= entryBytes(it->first, it->second.size());
  values.erase(it);
}

wire::Frame RendezvousServer::State::store(const std::string &key, std::vector<char> value) {
  auto it = values.find(key);
  const uint64_t before = it == values.end() ? 0 : entryBytes(key, it->second.size());
  const uint64_t after = entryBytes(key, value.size());
  if (storedBytes - before + after > options.maxStoredBytes)
    return message(wire::kRefused,
                   "store full: key '" + key.substr(0, 256) + "' needs " +
                       std::to_string(after) + " bytes, " +
                       std::to_string(storedBytes - before) + " of " +
                       std::to_string(options.maxStoredBytes) +
                       " are in use (StoreServerOptions::maxStoredBytes); delete "
                       "finished keys first");
  storedBytes = storedBytes - before + after;
  values[key] = std::move(value);
  return reply(wire::kOk);
}

std::optional<wire::Frame> RendezvousServer::State::handle(Connection &c,
                                                           const wire::Frame &request) {
  wire::PayloadReader in(request.payload);
  switch (request.code) {
  case wire::kSet: {
    auto key = in.str();
    auto value = in.bytes();
    if (!key || !value || !in.atEnd())
      return message(wire::kBadRequest, "SET expects key and value");
    return store(*key, std::move(*value));
  }
  case wire::kGet:
  case wire::kWait: {
    std::vector<std::string> keys;
    if (request.code == wire::kGet) {
      auto key = in.str();
      if (!key)
        return message(wire::kBadRequest, "GET expects key and timeout");
      keys.push_back(std::move(*key));
    } else {
      auto read = readKeys(in);
      if (!read)
        return message(wire::kBadRequest, "WAIT expects keys and timeout");
      keys = std::move(*read);
    }
    auto timeoutMs = in.u64();
    if (!timeoutMs || !in.atEnd())
      return message(wire::kBadRequest, request.code == wire::kGet
                                            ? "GET expects key and timeout"
                                            : "WAIT expects keys and timeout");
    c.blockedOp = request.code;
    c.blockedKeys = std::move(keys);
    if (allPresent(c.blockedKeys))
      return answerBlocked(c, true);
    const uint64_t maxBlock = static_cast<uint64_t>(options.maxBlock.count());
    c.blockedDeadline =
        Clock::now() + std::chrono::milliseconds(std::min(*timeoutMs, maxBlock));
    c.blocked = true;
    return std::nullopt;
  }
  case wire::kAdd: {
    auto key = in.str();
    auto delta = in.u64();
    if (!key || !delta || !in.atEnd())
      return message(wire::kBadRequest, "ADD expects key and delta");
    int64_t current = 0;
    if (auto it = values.find(*key); it != values.end()) {
      const char *begin = it->second.data();
      const char *end = begin + it->second.size();
      auto [ptr, ec] = std::from_chars(begin, end, current);
      if (ec != std::errc() || ptr != end)
        return message(wire::kBadRequest, "ADD on key '" + *key +
                                              "' whose value is not a decimal counter");
    }
    int64_t next = 0;
    if (__builtin_add_overflow(current, static_cast<int64_t>(*delta), &next))
      return message(wire::kBadRequest,
                     "ADD on key '" + *key + "' overflows a 64-bit counter");
    std::string text = std::to_string(next);
    wire::Frame stored = store(*key, std::vector<char>(text.begin(), text.end()));
    if (stored.code != wire::kOk)
      return stored;
    return reply(wire::kOk, wire::PayloadWriter().u64(static_cast<uint64_t>(next)).take());
  }
  case wire::kCheck: {
    auto keys = readKeys(in);
    if (!keys || !in.atEnd())
      return message(wire::kBadRequest, "CHECK expects keys");
    wire::PayloadWriter out;
    out.u32(static_cast<uint32_t>(keys->size()));
    for (const auto &k : *keys)
      out.u8(values.count(k) ? 1 : 0);
    return reply(wire::kOk, out.take());
  }
  case wire::kDelete: {
    auto keys = readKeys(in);
    if (!keys || !in.atEnd())
      return message(wire::kBadRequest, "DELETE expects keys");
    uint32_t deleted = 0;
    for (const auto &k : *keys)
      if (auto it = values.find(k); it != values.end()) {
        erase(it);
        ++deleted;
      }
    return reply(wire::kOk, wire::PayloadWriter().u32(deleted).take());
  }
  case wire::kDeletePrefix: {
    auto prefix = in.str();
    if (!prefix || !in.atEnd())
      return message(wire::kBadRequest, "DELETE_PREFIX expects a prefix");
    if (prefix->empty())
      return message(wire::kBadRequest,
                     "DELETE_PREFIX with an empty prefix would delete every key");
    uint64_t deleted = 0;
    for (auto it = values.lower_bound(*prefix);
         it != values.end() && it->first.compare(0, prefix->size(), *prefix) == 0;) {
      auto next = std::next(it);
      erase(it);
      it = next;
      ++deleted;
    }
    return reply(wire::kOk, wire::PayloadWriter().u64(deleted).take());
  }
  default:
    return message(wire::kBadRequest, "unknown operation " + std::to_string(request.code));
  }
}

wire::Frame RendezvousServer::State::answerBlocked(Connection &c, bool present) {
  c.blocked = false;
  std::vector<std::string> keys = std::move(c.blockedKeys);
  c.blockedKeys.clear();
  if (!present)
    return reply(wire::kTimeout);
  if (c.blockedOp == wire::kGet)
    return reply(wire::kOk, values[keys.front()]);
  return reply(wire::kOk);
}

void RendezvousServer::State::queue(Connection &c, const wire::Frame &frame) {
  std::vector<char> bytes = wire::encodeFrame(frame);
  if (c.outPos == c.out.size()) {
    c.out.clear();
    c.outPos = 0;
  }
  c.out.insert(c.out.end(), bytes.begin(), bytes.end());
  if (frame.code == wire::kBadRequest)
    c.closeWhenFlushed = true; // the stream may be out of step: end it
}

void RendezvousServer::State::pump(Connection &c) {
  while (!c.closed && !c.blocked && !c.closeWhenFlushed &&
         c.out.size() - c.outPos < kOutputHighWater) {
    if (c.phase != Connection::Phase::Frames) {
      const bool hello = c.phase == Connection::Phase::Hello;
      const size_t need = hello ? auth::kHelloBytes : auth::kProofBytes;
      if (c.in.size() < need)
        return;
      std::string_view bytes(c.in.data(), need);
      if (hello) {
        auto answer = c.handshake->hello(bytes);
        if (!answer)
          return close(c); // unanswered: a stranger learns nothing
        c.out.insert(c.out.end(), answer->begin(), answer->end());
        c.phase = Connection::Phase::Proof;
      } else {
        if (!c.handshake->proof(bytes))
          return close(c);
        c.out.push_back(auth::kAcceptByte);
        c.phase = Connection::Phase::Frames;
        c.handshake.reset();
      }
      c.in.erase(c.in.begin(), c.in.begin() + static_cast<ptrdiff_t>(need));
      continue;
    }
    if (c.in.size() < wire::kHeaderBytes)
      return;
    const auto *header = reinterpret_cast<const unsigned char *>(c.in.data());
    if (header[0] != wire::kVersion) {
      queue(c, message(wire::kBadRequest,
                       "protocol version " + std::to_string(header[0]) +
                           " not supported; expected " + std::to_string(wire::kVersion)));
      return;
    }
    const uint32_t size = wire::announcedPayload(header);
    if (size > wire::kMaxPayload) {
      queue(c, message(wire::kBadRequest, "frame payload over 64 MiB"));
      return;
    }
    if (c.in.size() < wire::kHeaderBytes + size)
      return;
    wire::Frame request;
    request.version = header[0];
    request.code = header[1];
    request.payload.assign(c.in.begin() + wire::kHeaderBytes,
                           c.in.begin() + static_cast<ptrdiff_t>(wire::kHeaderBytes + size));
    c.in.erase(c.in.begin(), c.in.begin() + static_cast<ptrdiff_t>(wire::kHeaderBytes + size));
    if (auto response = handle(c, request))
      queue(c, *response);
  }
}

bool RendezvousServer::State::receive(Connection &c) {
  // Memory follows the bytes received: at most one chunk beyond what the
  // current frame still needs is read (the frame bound is checked at its header).
  char chunk[kReadChunk];
  for (;;) {
    ssize_t n = ::recv(c.fd, chunk, sizeof chunk, MSG_DONTWAIT);
    if (n > 0) {
      if (bufferedBytes() + static_cast<uint64_t>(n) > options.maxBufferedBytes)
        return false; // closed: half-sent requests of all clients are bounded
      c.in.insert(c.in.end(), chunk, chunk + n);
      pump(c);
      bufferedBytesNow = bufferedBytes();
      if (c.closed || c.blocked || c.closeWhenFlushed ||
          c.out.size() - c.outPos >= kOutputHighWater)
        return !c.closed;
      continue;
    }
    if (n == 0) {
      c.peerClosed = true;
      return true;
    }
    if (errno == EINTR)
      continue;
    return errno == EAGAIN || errno == EWOULDBLOCK;
  }
}

bool RendezvousServer::State::flush(Connection &c) {
  while (c.outPos < c.out.size()) {
    ssize_t n = ::send(c.fd, c.out.data() + c.outPos, c.out.size() - c.outPos,
                       MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c.outPos += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return true;
    return false;
  }
  c.out.clear();
  c.outPos = 0;
  return true;
}

void RendezvousServer::State::close(Connection &c) {
  if (c.closed)
    return;
  ::close(c.fd);
  c.closed = true;
  c.blocked = false;
}

void RendezvousServer::State::wakeWaiters(Clock::time_point now) {
  // A waiter's answer may let its connection go on with pipelined requests
  // (a SET among them wakes others): repeat until nothing changes.
  for (bool changed = true; changed;) {
    changed = false;
    for (Connection &c : connections) {
      if (c.closed || !c.blocked)
        continue;
      const bool present = allPresent(c.blockedKeys);
      if (!present && now < c.blockedDeadline)
        continue;
      queue(c, answerBlocked(c, present));
      pump(c);
      changed = true;
    }
  }
}

void RendezvousServer::State::acceptNew() {
  for (;;) {
    int fd = ::accept4(listenFd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
        acceptResumes = Clock::now() + kAcceptBackoff;
      return; // EAGAIN: none left
    }
    if (connections.size() >= options.maxConnections) {
      ::close(fd); // over the bound: the client sees EOF
      continue;
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    Connection &c = connections.emplace_back();
    c.fd = fd;
    if (options.clusterSecret) {
      c.phase = Connection::Phase::Hello;
      c.handshake.emplace(*options.clusterSecret);
      c.handshakeDeadline = Clock::now() + options.handshakeTimeout;
    }
  }
}

void RendezvousServer::State::run() {
  std::vector<pollfd> fds;
  std::vector<Connection *> polled;
  while (!stopping.load()) {
    const auto now = Clock::now();
    fds.clear();
    polled.clear();
    fds.push_back({wakeFd, POLLIN, 0});
    const bool accepting = now >= acceptResumes;
    fds.push_back({accepting ? listenFd : -1, POLLIN, 0});
    auto wakeAt = Clock::time_point::max();
    if (!accepting)
      wakeAt = acceptResumes;
    for (Connection &c : connections) {
      // POLLRDHUP: a blocked request's client that goes away is noticed
      // although its socket is not read meanwhile (a request it pipelined
      // after the blocking one does not count as going away).
      short events = POLLRDHUP;
      if (!c.blocked && !c.closeWhenFlushed && !c.peerClosed &&
          c.out.size() - c.outPos < kOutputHighWater)
        events |= POLLIN;
      if (c.outPos < c.out.size())
        events |= POLLOUT;
      fds.push_back({c.fd, events, 0});
      polled.push_back(&c);
      if (c.blocked)
        wakeAt = std::min(wakeAt, c.blockedDeadline);
      if (c.phase != Connection::Phase::Frames)
        wakeAt = std::min(wakeAt, c.handshakeDeadline);
    }
    int timeoutMs = -1;
    if (wakeAt != Clock::time_point::max())
      timeoutMs = static_cast<int>(std::clamp<int64_t>(
          std::chrono::duration_cast<std::chrono::milliseconds>(wakeAt - now).count() + 1, 0,
          60'000));
    if (::poll(fds.data(), fds.size(), timeoutMs) < 0 && errno != EINTR)
      break;
    if (stopping.load())
      break;
    if (fds[1].revents & POLLIN)
      acceptNew();
    for (size_t i = 0; i < polled.size(); ++i) {
      Connection &c = *polled[i];
      const short revents = fds[i + 2].revents;
      if (c.closed || revents == 0)
        continue;
      if (revents & (POLLERR | POLLNVAL)) {
        close(c);
        continue;
      }
      if (c.blocked && (revents & (POLLRDHUP | POLLHUP))) {
        close(c); // nothing will read the answer: the wait ends
        continue;
      }
      if ((revents & (POLLIN | POLLRDHUP | POLLHUP)) && !c.blocked && !c.peerClosed)
        if (!receive(c)) {
          close(c);
          continue;
        }
      if ((revents & POLLHUP) && !(revents & POLLIN))
        c.peerClosed = true;
    }
    // Output that drained makes room for requests already buffered (no
    // socket event announces those), then waiters whose keys just appeared
    // or whose deadline passed are answered.
    const auto after = Clock::now();
    for (Connection &c : connections) {
      if (c.closed)
        continue;
      if (c.phase != Connection::Phase::Frames && after >= c.handshakeDeadline) {
        close(c); // unanswered, as a wrong secret is
        continue;
      }
      if (!flush(c))
        close(c);
      else
        pump(c);
    }
    wakeWaiters(after);
    for (Connection &c : connections) {
      if (c.closed)
        continue;
      if (!flush(c)) {
        close(c);
        continue;
      }
      const bool flushed = c.outPos == c.out.size();
      if (flushed && (c.closeWhenFlushed || (c.peerClosed && !c.blocked)))
        close(c);
      else if (c.peerClosed && c.blocked)
        close(c);
    }
    connections.remove_if([](const Connection &c) { return c.closed; });
    bufferedBytesNow = bufferedBytes();
    connectionCount.store(connections.size());
    storedBytesNow.store(storedBytes);
  }
  shutdownAll();
}

void RendezvousServer::State::shutdownAll() {
  for (Connection &c : connections)
    close(c);
  connections.clear();
  connectionCount.store(0);
}

RendezvousServer::RendezvousServer(std::shared_ptr<State> state)
    : state_(std::move(state)) {}

Result<std::unique_ptr<RendezvousServer>>
RendezvousServer::start(const std::string &host, uint16_t port,
                        StoreServerOptions options) {
  if (options.maxStoredBytes == 0)
    return Status::error("rendezvous server: maxStoredBytes must be at least 1");
  if (options.maxBufferedBytes < kReadChunk)
    return Status::error("rendezvous server: maxBufferedBytes must be at least " +
                         std::to_string(kReadChunk) + " (one read)");
  auto address = resolveTcp(host, port);
  if (!address)
    return address.status().withContext("rendezvous server");
  int fd = ::socket(address->family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return Status::error(std::string("rendezvous server: socket: ") +
                         std::strerror(errno));
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd, address->sockaddr(), address->length) != 0 ||
      ::listen(fd, 128) != 0) {
    std::string why = std::strerror(errno);
    ::close(fd);
    return Status::error("rendezvous server: cannot listen on " + host + ":" +
                         std::to_string(port) + ": " + why);
  }
  auto bound = boundPort(fd);
  if (!bound) {
    ::close(fd);
    return bound.status().withContext("rendezvous server");
  }
  int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    std::string why = std::strerror(errno);
    ::close(fd);
    return Status::error("rendezvous server: eventfd: " + why);
  }
  auto state = std::make_shared<State>();
  state->options = std::move(options);
  state->listenFd = fd;
  state->wakeFd = wake;
  state->port = *bound;
  state->loop = std::thread([raw = state.get()] { raw->run(); });
  return std::unique_ptr<RendezvousServer>(new RendezvousServer(state));
}

uint16_t RendezvousServer::port() const { return state_->port; }

size_t RendezvousServer::numConnections() const { return state_->connectionCount.load(); }

uint64_t RendezvousServer::storedBytes() const { return state_->storedBytesNow.load(); }

uint64_t RendezvousServer::bufferedBytes() const { return state_->bufferedBytesNow.load(); }

void RendezvousServer::stop() {
  if (state_->stopping.exchange(true))
    return;
  const uint64_t one = 1;
  (void)!::write(state_->wakeFd, &one, sizeof one);
  if (state_->loop.joinable())
    state_->loop.join();
  ::close(state_->listenFd);
  ::close(state_->wakeFd);
}

RendezvousServer::~RendezvousServer() { stop(); }

} // namespace llmir::runtime

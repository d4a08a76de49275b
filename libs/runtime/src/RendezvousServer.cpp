#include "llmir/runtime/RendezvousStore.h"

#include "SocketAddress.h"
#include "StoreWire.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <list>
#include <map>
#include <thread>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace llmir::runtime {

// A blocked GET/WAIT looks this often whether its client is still there.
constexpr std::chrono::milliseconds kClientCheck{200};

struct RendezvousServer::State {
  int listenFd = -1;
  uint16_t port = 0;
  StoreServerOptions options;

  std::mutex mutex;
  std::condition_variable changed;
  std::map<std::string, std::vector<char>> values;
  bool stopping = false;

  struct Connection {
    int fd;
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::mutex connectionsMutex;
  std::list<Connection> connections;
  std::thread acceptor;

  void acceptLoop();
  void serve(int fd);
  wire::Frame handle(int fd, const wire::Frame &request);
  /// Blocks until every key exists, the deadline passes, the client on `fd`
  /// disconnects or the server stops.
  bool waitForKeys(std::unique_lock<std::mutex> &lock, int fd,
                   const std::vector<std::string> &keys, uint64_t timeoutMs);
  void reapFinished();
};

namespace {

wire::Frame reply(wire::Outcome outcome, std::vector<char> payload = {}) {
  wire::Frame f;
  f.code = outcome;
  f.payload = std::move(payload);
  return f;
}

wire::Frame badRequest(const std::string &message) {
  return reply(wire::kBadRequest,
               std::vector<char>(message.begin(), message.end()));
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

// A client that closed its end (or reset) while its request blocks: nothing
// will read the answer, so the wait ends. A request it pipelined after the
// blocking one does not count as going away.
bool clientGone(int fd) {
  pollfd p{fd, POLLRDHUP, 0};
  if (::poll(&p, 1, 0) <= 0)
    return false;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

} // namespace

bool RendezvousServer::State::waitForKeys(std::unique_lock<std::mutex> &lock, int fd,
                                          const std::vector<std::string> &keys,
                                          uint64_t timeoutMs) {
  const uint64_t maxBlock = static_cast<uint64_t>(options.maxBlock.count());
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(std::min(timeoutMs, maxBlock));
  auto allPresent = [&] {
    return std::all_of(keys.begin(), keys.end(),
                       [&](const std::string &k) { return values.count(k); });
  };
  while (!stopping && !allPresent()) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline)
      break;
    changed.wait_until(lock, std::min(deadline, now + kClientCheck),
                       [&] { return stopping || allPresent(); });
    if (!allPresent() && clientGone(fd))
      break;
  }
  return allPresent();
}

wire::Frame RendezvousServer::State::handle(int fd, const wire::Frame &request) {
  wire::PayloadReader in(request.payload);
  std::unique_lock<std::mutex> lock(mutex);
  switch (request.code) {
  case wire::kSet: {
    auto key = in.str();
    auto value = in.bytes();
    if (!key || !value || !in.atEnd())
      return badRequest("SET expects key and value");
    values[*key] = std::move(*value);
    changed.notify_all();
    return reply(wire::kOk);
  }
  case wire::kGet: {
    auto key = in.str();
    auto timeoutMs = in.u64();
    if (!key || !timeoutMs || !in.atEnd())
      return badRequest("GET expects key and timeout");
    if (!waitForKeys(lock, fd, {*key}, *timeoutMs))
      return reply(wire::kTimeout);
    return reply(wire::kOk, values[*key]);
  }
  case wire::kAdd: {
    auto key = in.str();
    auto delta = in.u64();
    if (!key || !delta || !in.atEnd())
      return badRequest("ADD expects key and delta");
    int64_t current = 0;
    if (auto it = values.find(*key); it != values.end()) {
      const char *begin = it->second.data();
      const char *end = begin + it->second.size();
      auto [ptr, ec] = std::from_chars(begin, end, current);
      if (ec != std::errc() || ptr != end)
        return badRequest("ADD on key '" + *key +
                          "' whose value is not a decimal counter");
    }
    int64_t next = 0;
    if (__builtin_add_overflow(current, static_cast<int64_t>(*delta), &next))
      return badRequest("ADD on key '" + *key + "' overflows a 64-bit counter");
    std::string text = std::to_string(next);
    values[*key] = std::vector<char>(text.begin(), text.end());
    changed.notify_all();
    return reply(wire::kOk, wire::PayloadWriter().u64(static_cast<uint64_t>(next)).take());
  }
  case wire::kWait: {
    auto keys = readKeys(in);
    auto timeoutMs = in.u64();
    if (!keys || !timeoutMs || !in.atEnd())
      return badRequest("WAIT expects keys and timeout");
    return reply(waitForKeys(lock, fd, *keys, *timeoutMs) ? wire::kOk
                                                      : wire::kTimeout);
  }
  case wire::kCheck: {
    auto keys = readKeys(in);
    if (!keys || !in.atEnd())
      return badRequest("CHECK expects keys");
    wire::PayloadWriter out;
    out.u32(static_cast<uint32_t>(keys->size()));
    for (const auto &k : *keys)
      out.u8(values.count(k) ? 1 : 0);
    return reply(wire::kOk, out.take());
  }
  default:
    return badRequest("unknown operation " + std::to_string(request.code));
  }
}

void RendezvousServer::State::serve(int fd) {
  if (options.clusterSecret) {
    setSocketTimeout(fd, options.handshakeTimeout);
    if (!wire::serverHandshake(fd, *options.clusterSecret))
      return; // unanswered: a stranger learns nothing
    setSocketTimeout(fd, std::chrono::milliseconds(0)); // requests may block long
  }
  for (;;) {
    bool tooLarge = false;
    auto request = wire::readFrame(fd, &tooLarge);
    if (!request) {
      if (tooLarge)
        (void)wire::writeFrame(fd, badRequest("frame payload over 64 MiB"));
      return;
    }
    if (request->version != wire::kVersion) {
      (void)wire::writeFrame(
          fd, badRequest("protocol version " + std::to_string(request->version) +
                         " not supported; expected " +
                         std::to_string(wire::kVersion)));
      return;
    }
    wire::Frame response = handle(fd, *request);
    if (!wire::writeFrame(fd, response) || response.code == wire::kBadRequest)
      return;
  }
}

void RendezvousServer::State::reapFinished() {
  std::lock_guard<std::mutex> guard(connectionsMutex);
  for (auto it = connections.begin(); it != connections.end();) {
    if (it->done->load()) {
      it->thread.join();
      ::close(it->fd);
      it = connections.erase(it);
    } else {
      ++it;
    }
  }
}

void RendezvousServer::State::acceptLoop() {
  for (;;) {
    int fd = ::accept(listenFd, nullptr, nullptr);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      return; // listening socket shut down by stop()
    }
    {
      std::lock_guard<std::mutex> guard(mutex);
      if (stopping) {
        ::close(fd);
        return;
      }
    }
    reapFinished();
    std::lock_guard<std::mutex> guard(connectionsMutex);
    if (connections.size() >= options.maxConnections) {
      // Over the bound: refused at once (no thread), the client sees EOF.
      ::close(fd);
      continue;
    }
    auto done = std::make_shared<std::atomic<bool>>(false);
    connections.push_back(Connection{fd, std::thread([this, fd, done] {
                                       serve(fd);
                                       // The peer sees EOF now; the fd is
                                       // closed when the thread is reaped.
                                       ::shutdown(fd, SHUT_RDWR);
                                       done->store(true);
                                     }),
                                     done});
  }
}

RendezvousServer::RendezvousServer(std::shared_ptr<State> state)
    : state_(std::move(state)) {}

Result<std::unique_ptr<RendezvousServer>>
RendezvousServer::start(const std::string &host, uint16_t port,
                        StoreServerOptions options) {
  auto address = resolveTcp(host, port);
  if (!address)
    return address.status().withContext("rendezvous server");
  int fd = ::socket(address->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
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
  auto state = std::make_shared<State>();
  state->options = std::move(options);
  state->listenFd = fd;
  state->port = *bound;
  state->acceptor = std::thread([raw = state.get()] { raw->acceptLoop(); });
  return std::unique_ptr<RendezvousServer>(new RendezvousServer(state));
}

uint16_t RendezvousServer::port() const { return state_->port; }

size_t RendezvousServer::numConnections() const {
  state_->reapFinished();
  std::lock_guard<std::mutex> guard(state_->connectionsMutex);
  return state_->connections.size();
}

void RendezvousServer::stop() {
  {
    std::lock_guard<std::mutex> guard(state_->mutex);
    if (state_->stopping)
      return;
    state_->stopping = true;
    state_->changed.notify_all();
  }
  ::shutdown(state_->listenFd, SHUT_RDWR);
  state_->acceptor.join();
  ::close(state_->listenFd);
  std::lock_guard<std::mutex> guard(state_->connectionsMutex);
  for (auto &c : state_->connections)
    ::shutdown(c.fd, SHUT_RDWR);
  for (auto &c : state_->connections) {
    c.thread.join();
    ::close(c.fd);
  }
  state_->connections.clear();
}

RendezvousServer::~RendezvousServer() { stop(); }

} // namespace llmir::runtime

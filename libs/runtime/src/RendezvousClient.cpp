#include "llmir/runtime/RendezvousStore.h"

#include "SocketAddress.h"
#include "StoreWire.h"

#include <cerrno>
#include <cstring>
#include <thread>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

namespace llmir::runtime {

// Extra time granted on top of a blocking call's own timeout before the
// client gives up on the server.
constexpr std::chrono::milliseconds kServerGrace = std::chrono::seconds(5);

Result<std::unique_ptr<RendezvousClient>>
RendezvousClient::connect(const std::string &host, uint16_t port,
                          std::chrono::milliseconds timeout,
                          const std::optional<std::string> &clusterSecret) {
  std::string endpoint = host + ":" + std::to_string(port);
  auto address = resolveTcp(host, port);
  if (!address)
    return address.status().withContext("rendezvous client");
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string lastError;
  do {
    int fd = ::socket(address->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
      return Status::error(std::string("rendezvous client: socket: ") +
                           std::strerror(errno));
    setSocketTimeout(fd, timeout);
    if (::connect(fd, address->sockaddr(), address->length) == 0) {
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      if (clusterSecret)
        if (Status shook = wire::clientHandshake(fd, *clusterSecret); !shook) {
          ::close(fd);
          return shook.withContext("rendezvous client: store at " + endpoint);
        }
      return std::unique_ptr<RendezvousClient>(
          new RendezvousClient(fd, endpoint, timeout));
    }
    lastError = std::strerror(errno);
    ::close(fd);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (std::chrono::steady_clock::now() < deadline);
  return Status::error("rendezvous client: cannot connect to store at " +
                       endpoint + " within " + std::to_string(timeout.count()) +
                       " ms: " + lastError);
}

RendezvousClient::RendezvousClient(int fd, std::string endpoint,
                                   std::chrono::milliseconds ioTimeout)
    : fd_(fd), endpoint_(std::move(endpoint)), ioTimeout_(ioTimeout) {}

RendezvousClient::~RendezvousClient() { ::close(fd_); }

Result<std::vector<char>>
RendezvousClient::call(uint8_t op, const std::vector<char> &payload,
                       std::chrono::milliseconds waitBudget, bool *timedOut) {
  std::lock_guard<std::mutex> guard(mutex_);
  if (fd_ < 0)
    return Status::error("rendezvous store at " + endpoint_ +
                         ": connection lost earlier");
  auto fail = [&](const std::string &what) {
    // A half-read response would desynchronise the stream: drop it.
    ::close(fd_);
    fd_ = -1;
    return Status::error("rendezvous store at " + endpoint_ + ": " + what);
  };
  setSocketTimeout(fd_, ioTimeout_ + waitBudget + kServerGrace);
  wire::Frame request;
  request.code = op;
  request.payload = payload;
  if (!wire::writeFrame(fd_, request))
    return fail(std::string("send failed: ") + std::strerror(errno));
  auto response = wire::readFrame(fd_);
  if (!response)
    return fail("no response (server gone or timed out)");
  if (response->version != wire::kVersion)
    return fail("response has protocol version " +
                std::to_string(response->version) + ", expected " +
                std::to_string(wire::kVersion));
  *timedOut = response->code == wire::kTimeout;
  if (response->code == wire::kBadRequest)
    return Status::error(
        "rendezvous store at " + endpoint_ + " rejected request: " +
        std::string(response->payload.begin(), response->payload.end()));
  if (response->code == wire::kRefused) // the connection stays usable
    return Status::error(
        "rendezvous store at " + endpoint_ + " refused: " +
        std::string(response->payload.begin(), response->payload.end()));
  return std::move(response->payload);
}

Status RendezvousClient::set(const std::string &key,
                             const std::vector<char> &value) {
  bool timedOut = false;
  auto r = call(wire::kSet,
                wire::PayloadWriter().str(key).bytes(value.data(), value.size()).take(),
                std::chrono::milliseconds(0), &timedOut);
  return r.status();
}

Status RendezvousClient::set(const std::string &key, const std::string &value) {
  return set(key, std::vector<char>(value.begin(), value.end()));
}

Result<std::vector<char>> RendezvousClient::get(const std::string &key,
                                                std::chrono::milliseconds timeout) {
  bool timedOut = false;
  auto r = call(wire::kGet,
                wire::PayloadWriter().str(key).u64(timeout.count()).take(),
                timeout, &timedOut);
  if (r && timedOut)
    return Status::error("rendezvous store: key '" + key +
                         "' did not appear within " +
                         std::to_string(timeout.count()) + " ms");
  return r;
}

Result<int64_t> RendezvousClient::add(const std::string &key, int64_t delta) {
  bool timedOut = false;
  auto r = call(wire::kAdd,
                wire::PayloadWriter().str(key).u64(static_cast<uint64_t>(delta)).take(),
                std::chrono::milliseconds(0), &timedOut);
  if (!r)
    return r.status();
  wire::PayloadReader in(*r);
  auto value = in.u64();
  if (!value)
    return Status::error("rendezvous store: malformed ADD response for key '" +
                         key + "'");
  return static_cast<int64_t>(*value);
}

namespace {
wire::PayloadWriter &writeKeys(wire::PayloadWriter &out,
                               const std::vector<std::string> &keys) {
  out.u32(static_cast<uint32_t>(keys.size()));
  for (const auto &k : keys)
    out.str(k);
  return out;
}
} // namespace

Status RendezvousClient::wait(const std::vector<std::string> &keys,
                              std::chrono::milliseconds timeout) {
  wire::PayloadWriter out;
  writeKeys(out, keys).u64(timeout.count());
  bool timedOut = false;
  auto r = call(wire::kWait, out.take(), timeout, &timedOut);
  if (!r)
    return r.status();
  if (timedOut)
    return Status::error("rendezvous store: " + std::to_string(keys.size()) +
                         " key(s) did not all appear within " +
                         std::to_string(timeout.count()) + " ms");
  return Status::ok();
}

Result<std::vector<bool>>
RendezvousClient::check(const std::vector<std::string> &keys) {
  wire::PayloadWriter out;
  writeKeys(out, keys);
  bool timedOut = false;
  auto r = call(wire::kCheck, out.take(), std::chrono::milliseconds(0),
                &timedOut);
  if (!r)
    return r.status();
  wire::PayloadReader in(*r);
  auto n = in.u32();
  if (!n || *n != keys.size())
    return Status::error("rendezvous store: malformed CHECK response");
  std::vector<bool> present;
  for (uint32_t i = 0; i < *n; ++i) {
    auto b = in.u8();
    if (!b)
      return Status::error("rendezvous store: malformed CHECK response");
    present.push_back(*b != 0);
  }
  return present;
}

Result<uint32_t> RendezvousClient::remove(const std::vector<std::string> &keys) {
  wire::PayloadWriter out;
  writeKeys(out, keys);
  bool timedOut = false;
  auto r = call(wire::kDelete, out.take(), std::chrono::milliseconds(0), &timedOut);
  if (!r)
    return r.status();
  wire::PayloadReader in(*r);
  auto n = in.u32();
  if (!n || !in.atEnd())
    return Status::error("rendezvous store: malformed DELETE response");
  return *n;
}

Result<uint64_t> RendezvousClient::removePrefix(const std::string &prefix) {
  if (prefix.empty())
    return Status::error("rendezvous store: removePrefix needs a non-empty prefix");
  bool timedOut = false;
  auto r = call(wire::kDeletePrefix, wire::PayloadWriter().str(prefix).take(),
                std::chrono::milliseconds(0), &timedOut);
  if (!r)
    return r.status();
  wire::PayloadReader in(*r);
  auto n = in.u64();
  if (!n || !in.atEnd())
    return Status::error("rendezvous store: malformed DELETE_PREFIX response");
  return *n;
}

} // namespace llmir::runtime

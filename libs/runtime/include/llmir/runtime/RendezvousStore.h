// Rendezvous key-value store: a small TCP server that ranks use to exchange
// addresses and ids before they can talk to each other, and its client.
//
// Wire protocol (version 1). Every frame, request or response, is
//
//   u8 version (= 1) | u8 code | u32 payload length (little endian) | payload
//
// For a request `code` is the operation, for a response it is the outcome:
// 0 ok, 1 timeout, 2 bad request (payload = message; the server closes the
// connection), 3 refused (payload = message, e.g. the store is full; the
// connection stays usable). Inside payloads, an integer is little endian and
// a string/bytes value is `u32 length | bytes`.
//
//   op 1 SET   key, value                  -> ok
//   op 2 GET   key, u64 timeout ms         -> ok value | timeout (key absent)
//   op 3 ADD   key, i64 delta              -> ok i64 new value (absent = 0;
//                                             stored as decimal text)
//   op 4 WAIT  u32 n, n keys, u64 timeout  -> ok | timeout (some key absent)
//   op 5 CHECK u32 n, n keys               -> ok u32 n, n x u8 (1 = present)
//   op 6 DELETE u32 n, n keys              -> ok u32 keys deleted
//   op 7 DELETE_PREFIX prefix (non-empty)  -> ok u64 keys deleted
//
// SET and ADD are refused (3) when the stored bytes would pass the server's
// maxStoredBytes (each key counts its key and value bytes plus 64).
//
// A frame with another version or a payload over 64 MiB is answered with
// "bad request" and the connection is closed.
//
// With a cluster secret, a connection first runs the handshake of
// llmir/support/ClusterAuth.h (raw bytes, before any frame); a peer that does
// not finish it within the handshake timeout is dropped unanswered.
#pragma once

#include "llmir/support/Status.h"

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace llmir::runtime {

struct StoreServerOptions {
  /// When set, clients must prove it before their first request.
  std::optional<std::string> clusterSecret;
  /// Connections served at once; more are closed at accept.
  uint32_t maxConnections = 256;
  /// A connection that has not finished the handshake by then is closed.
  std::chrono::milliseconds handshakeTimeout{5000};
  /// Longest a GET/WAIT may block, whatever the client asks for.
  std::chrono::milliseconds maxBlock{std::chrono::minutes(10)};
  /// Bytes of keys and values held at once (64 bytes counted per key on
  /// top); a SET/ADD past it is refused with "store full". Rendezvous data is
  /// addresses and ids: a replica's keys take kilobytes.
  uint64_t maxStoredBytes = 256ull << 20;
  /// Bytes received and not yet consumed, over all connections (a request
  /// arrives in pieces, up to a 64 MiB frame each): a connection whose next
  /// piece would pass it is closed. Bounds what many half-sent frames hold.
  uint64_t maxBufferedBytes = 256ull << 20;
};

/// Serves the store on host:port from one thread (a poll loop over every
/// connection; blocked GET/WAITs hold no thread), until stopped or
/// destroyed. Values live in memory only. A GET/WAIT ends when its client
/// disconnects.
class RendezvousServer {
public:
  /// Binds and starts listening; port 0 picks an ephemeral port.
  static Result<std::unique_ptr<RendezvousServer>>
  start(const std::string &host, uint16_t port, StoreServerOptions options = {});
  ~RendezvousServer();
  RendezvousServer(const RendezvousServer &) = delete;
  RendezvousServer &operator=(const RendezvousServer &) = delete;

  uint16_t port() const;
  /// Connections being served now.
  size_t numConnections() const;
  /// Bytes counted against maxStoredBytes now.
  uint64_t storedBytes() const;
  /// Bytes received and not yet consumed (maxBufferedBytes), as of the
  /// server's last read.
  uint64_t bufferedBytes() const;
  /// Closes every connection and wakes blocked GET/WAIT calls. Idempotent.
  void stop();

  struct State;

private:
  explicit RendezvousServer(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

/// One connection to a RendezvousServer. Calls are serialised, so one client
/// may be shared between threads. Every call is bounded in time: blocking
/// calls by their timeout, the others by the client's I/O timeout.
class RendezvousClient {
public:
  /// Connects, retrying until `timeout` passes (the server may start later),
  /// and runs the cluster handshake when `clusterSecret` is set.
  static Result<std::unique_ptr<RendezvousClient>>
  connect(const std::string &host, uint16_t port,
          std::chrono::milliseconds timeout,
          const std::optional<std::string> &clusterSecret = std::nullopt);
  ~RendezvousClient();
  RendezvousClient(const RendezvousClient &) = delete;
  RendezvousClient &operator=(const RendezvousClient &) = delete;

  Status set(const std::string &key, const std::vector<char> &value);
  Status set(const std::string &key, const std::string &value);
  /// Waits up to `timeout` for the key to exist.
  Result<std::vector<char>> get(const std::string &key,
                                std::chrono::milliseconds timeout);
  /// Adds `delta` to the counter at `key` (absent counts as 0).
  Result<int64_t> add(const std::string &key, int64_t delta);
  /// Waits up to `timeout` for all keys to exist.
  Status wait(const std::vector<std::string> &keys,
              std::chrono::milliseconds timeout);
  /// Which of `keys` exist now, in order.
  Result<std::vector<bool>> check(const std::vector<std::string> &keys);
  /// Deletes `keys` (absent ones are skipped); how many existed.
  Result<uint32_t> remove(const std::vector<std::string> &keys);
  /// Deletes every key that starts with `prefix` (non-empty); how many.
  Result<uint64_t> removePrefix(const std::string &prefix);

private:
  RendezvousClient(int fd, std::string endpoint,
                   std::chrono::milliseconds ioTimeout);
  /// Sends one request frame and reads the response; `waitBudget` is how
  /// long the server may legitimately block before answering.
  Result<std::vector<char>> call(uint8_t op, const std::vector<char> &payload,
                                 std::chrono::milliseconds waitBudget,
                                 bool *timedOut);

  std::mutex mutex_;
  int fd_;
  std::string endpoint_;
  std::chrono::milliseconds ioTimeout_;
};

} // namespace llmir::runtime

// The client of the KV-block store (one per worker thread; not thread-safe).
// Every call is batched (one message per up to maxBlocksPerMessage() blocks,
// all in flight together) and bounded by a deadline: a store that is down,
// slow or restarted yields an error Status within the deadline, never a
// hang. After a failure the connection is dropped and the next call
// reconnects, so a restarted store is used again without a new Client.
//
// Validation: a block comes back only if its key, dtype and size are the
// ones asked for and its XXH3 checksum matches its bytes; otherwise its
// status is Rejected and the destination's contents are unspecified.
#pragma once

#include "llmir/kvstore/BlockKey.h"
#include "llmir/support/Status.h"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace llmir::kvstore {

struct ClientOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  /// Deadline of an operation that does not name its own.
  std::chrono::milliseconds timeout{2000};
  /// When set, every connection first runs the cluster handshake (within the
  /// operation's deadline); a store that cannot prove the same secret, or
  /// holds none, is refused.
  std::optional<std::string> clusterSecret;
  /// Move block bytes through the store's shared-memory segment when the
  /// store offers one, this process can map it (same host, same pid
  /// namespace, same user) and the UCX environment allows shared memory
  /// (UCX_TLS unset, or naming shm, sm, posix, sysv, cma or all). The UCX
  /// endpoint stays open: its peer-failure reporting tells the client that
  /// the store died. Otherwise bytes travel in active messages.
  bool sharedMemory = true;
  /// While waiting for a reply, keep polling the UCX worker this long after
  /// the last activity before sleeping on its event fd: a reply that comes
  /// within it skips a wake-up (docs/performance.md, "KV-block store").
  /// 0: sleep at once.
  std::chrono::microseconds pollBeforeSleep{0};
  /// The same poll, but only when the host has a CPU to spare as the wait
  /// for a call's replies over UCX begins (its runnable threads, this one
  /// included, no more than the CPUs it may run on: /proc/loadavg), so a
  /// polling client delays nobody: a get's reply is read as it arrives
  /// instead of after a wake-up (TCP 1 MiB get p50 ~450 -> ~230 us where the
  /// client had a core; docs/performance.md, "branch kv13"). The longer of
  /// the two applies. 0: off.
  std::chrono::microseconds idlePoll{200};
  /// The TCP congestion control of this client's UCX sockets: the first
  /// of these (comma-separated) the kernel lets the process set; "": the
  /// host's default. Over TCP loopback on a host whose default is BBR, a
  /// 1 MiB put took ~3x as long (docs/performance.md, "branch kv14").
  std::string tcpCongestion = "cubic,reno";
  /// With the store's shared-memory segment mapped, requests and replies of
  /// the shared-memory operations go through a channel in the segment
  /// instead of the UCX endpoint (docs/kv-store.md, "Request channel"); the
  /// endpoint stays for setup and for noticing that the store died. While
  /// waiting for a reply there, check for it `channelSpin` before sleeping
  /// on a futex; 0 (sleep at once) measured as fast or faster on the shared
  /// 2-core machine (docs/performance.md).
  bool requestChannel = true;
  std::chrono::microseconds channelSpin{0};
  /// With the request channel open and a store that publishes its index in
  /// the segment, serve gets here: look the key up, copy and hash the
  /// block, and prove it was not freed meanwhile, without a request
  /// (docs/kv-store.md, "Gets served by the client"). A key its bucket does
  /// not hold is Missing without a request; blocks the index may hold
  /// without an entry, or that changed during the copy, are asked of the
  /// store.
  bool indexedGets = true;
  /// With the request channel open, put through rooms the store handed out
  /// ahead with their budget reserved: the client copies the blocks in and
  /// posts their commit without waiting for it (its reply is read at the
  /// next call), so a put costs the copy while the store commits the one
  /// before (docs/kv-store.md, "Pipelined puts"). Such a put returns
  /// Stored for every block; the store stores it when it reads the commit.
  bool pipelinedPuts = true;
  /// A same-host put of a block of at least this many bytes writes the
  /// store's segment with non-temporal stores (where the CPU has AVX-512):
  /// its room, one of several that take turns, is not in the caches, and
  /// storing past them saves reading it in first (docs/performance.md,
  /// "kv16"). 0: never.
  uint64_t streamingPutBytes = 4 << 20;
  /// A same-host get of a block of at least this many bytes (through the
  /// segment) writes the caller's destination with non-temporal stores
  /// (where the CPU has AVX-512 and the destination is on a cache line or a
  /// multiple of 4 bytes past one): the destination is not read in first,
  /// and the copy does not evict what the caches hold; its bytes are in
  /// memory, not in the caches, after the call. At 4 MiB on the Zen 5
  /// guest of docs/performance.md ("branch kv17") the copy ran 1.2-1.3x
  /// faster so, even into a destination the caches held. 0: never.
  uint64_t streamingGetBytes = 4 << 20;
  /// Over UCX (no shared segment), a put's block of more than twice this
  /// many bytes (above 1 MiB by default) goes in parts of this size
  /// (PutPart), hashed part by part:
  /// the client hashes part k+1 while part k travels and the store copies
  /// and hashes part k while part k+1 does (docs/kv-store.md, "Blocks in
  /// parts"; 512 KiB measured faster than 256 KiB). A multiple of 1024 up
  /// to 1 MiB; 0: every block in one message (a store before kv12 refuses
  /// parts).
  uint64_t partBytes = 512 << 10;
  /// Over UCX, a put's block of at least this many bytes (and at least 2048)
  /// goes as PutPart messages whose last carries the checksum and only the
  /// block's last 1-2 KiB: the client hands the other bytes to UCX first and
  /// hashes them while the kernel and the store move them, instead of
  /// hashing the whole block before its first byte leaves (docs/kv-store.md,
  /// "Blocks in parts"). 0: the checksum goes with the first message (whole
  /// blocks up to twice partBytes, larger ones in parts each hashed before
  /// it is sent).
  uint64_t trailingChecksumBytes = 512 << 10;
};

enum class BlockStatus {
  Stored,   // put: the store holds it
  Found,    // get: the destination holds the block; exists: present
  Missing,  // get/exists: not held (never stored, or evicted)
  Rejected, // dtype, size, key or checksum did not match: not stored / not returned
  NoSpace,  // put: larger than the store, or its budget is held by puts in flight
};
const char *blockStatusName(BlockStatus status);

struct PutBlock {
  BlockKey key;
  std::string dtype;
  const void *data = nullptr;
  uint64_t bytes = 0;
};

struct GetBlock {
  BlockKey key;
  std::string dtype;
  void *destination = nullptr; // `bytes` bytes; the block must have this size
  uint64_t bytes = 0;
};

struct BlockQuery {
  BlockKey key;
  std::string dtype;
  uint64_t bytes = 0;
};

class Client {
public:
  /// Creates the UCX worker; the connection is made by the first operation.
  static Result<std::unique_ptr<Client>> create(const ClientOptions &options);
  ~Client();

  using Timeout = std::optional<std::chrono::milliseconds>;
  /// One status per block, in order (Stored, Rejected or NoSpace).
  Result<std::vector<BlockStatus>> put(std::span<const PutBlock> blocks,
                                       Timeout timeout = std::nullopt);
  /// One status per block (Found, Missing or Rejected).
  Result<std::vector<BlockStatus>> get(std::span<const GetBlock> blocks,
                                       Timeout timeout = std::nullopt);
  /// One status per block (Found, Missing or Rejected); moves no block bytes.
  Result<std::vector<BlockStatus>> exists(std::span<const BlockQuery> blocks,
                                          Timeout timeout = std::nullopt);

  /// Blocks per message, from the transport's largest active-message header.
  size_t maxBlocksPerMessage() const;
  /// How block bytes move ("shared memory ..." or "active messages ...")
  /// and UCX's description of the current connection's lanes (which
  /// transport carries what); empty before the first call.
  std::string describeConnection() const;
  /// Whether the current connection moves block bytes through the store's
  /// shared-memory segment.
  bool usesSharedMemory() const;
  /// Whether the current connection carries shared-memory requests and
  /// replies through the channel in the store's segment.
  bool usesRequestChannel() const;
  /// Whether the current connection serves gets from the store's index.
  bool usesIndexedGets() const;
  /// Blocks of pipelined puts the store did not store after all (it
  /// answered other than Stored to their commit); 0 unless a peer breaks
  /// the protocol.
  uint64_t pipelinedPutsRefused() const;

  class Impl;

private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

} // namespace llmir::kvstore

// A shard worker's use of the KV-block store: full blocks are written
// through in the background as steps fill them, and a sequence's blocks are
// loaded back on the scheduler's request instead of being recomputed.
//
// Writes never hold a step back beyond copying the block: the caller copies
// the block's bytes into a queue (bounded in bytes; past the bound the block
// is dropped and counted) and one writer thread puts them in batches. A
// store that is down, slow, full or restarted only shows up in the counters
// (and a log line by the caller): the store is a cache, the worker can
// always recompute. Loads are synchronous and bounded by the client's
// deadline; only the leading run of blocks that came back Found (key, dtype,
// size and checksum verified by the client) is handed to the caller. After a
// call to the store failed (either client), loads fail at once for
// `failureBackoff` instead of each waiting for the deadline again: a store
// that hangs costs one deadline per backoff period, not one per admission.
#pragma once

#include "llmir/kvstore/Client.h"
#include "llmir/support/Status.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace llmir::kvstore {

/// Everything of a block's key that is fixed for one rank (BlockKeyFields
/// without the token prefix).
struct RankBlockFields {
  std::string model;        // the plan's content hash: same plan, same bytes
  uint32_t layerBegin = 0;
  uint32_t layerEnd = 0;
  uint32_t shard = 0;
  uint32_t shardCount = 1;
  std::string dtype;        // "f32", "bf16"
  uint32_t blockTokens = 0;
};

struct WorkerBlockStoreOptions {
  ClientOptions client;     // store address and per-operation deadline
  /// Bytes of copied blocks waiting to be put; past it blocks are dropped.
  uint64_t maxQueuedBytes = 64ull << 20;
  /// Blocks per put call of the writer thread.
  size_t maxBlocksPerPut = 64;
  /// After a failed store call, loads fail at once for this long (puts go
  /// on: a put that succeeds ends the backoff early).
  std::chrono::milliseconds failureBackoff{5000};
};

/// Monotonic counters (metrics).
struct WorkerBlockStoreCounters {
  uint64_t blocksStored = 0;     // put answered Stored
  uint64_t blocksRefused = 0;    // put answered NoSpace or Rejected
  uint64_t blocksPutFailed = 0;  // in a put call that failed (store down, deadline)
  uint64_t blocksDropped = 0;    // queue full: never sent
  uint64_t putCallsFailed = 0;
  uint64_t blocksLoaded = 0;     // handed to the caller by load()
  uint64_t blocksMissed = 0;     // load: the first block not Found ended the run
  uint64_t loadCallsFailed = 0;  // load: the get call failed
  uint64_t loadsSkipped = 0;     // load: refused at once during a backoff
  uint64_t bytesStored = 0;
  uint64_t bytesLoaded = 0;
  /// KV_LOAD / KV_STORE instructions run through RankKvStore (0 here).
  uint64_t loadInstructions = 0;
  uint64_t storeInstructions = 0;
};

class WorkerBlockStore {
public:
  /// Checks the fields (as makeBlockKey does) and creates the two clients
  /// (one for the writer thread, one for load()); connects lazily.
  static Result<std::unique_ptr<WorkerBlockStore>>
  create(const WorkerBlockStoreOptions &options, RankBlockFields fields, uint64_t blockBytes);
  /// Stops the writer after its current put; blocks still queued are dropped.
  ~WorkerBlockStore();
  WorkerBlockStore(const WorkerBlockStore &) = delete;
  WorkerBlockStore &operator=(const WorkerBlockStore &) = delete;

  uint64_t blockBytes() const { return blockBytes_; }
  const RankBlockFields &fields() const { return fields_; }

  /// Fills the block's bytes with `read` (blockBytes() of them) and queues
  /// its put. `tokenPrefix` runs from position 0 through the block's last
  /// token. Returns false when the block was not queued: the queue is full
  /// (counted as dropped), `read` failed or the prefix is not a whole number
  /// of blocks (the error).
  Result<bool> enqueue(std::span<const int32_t> tokenPrefix,
                       const std::function<Status(std::span<std::byte>)> &read);

  using WriteBlock = std::function<Status(uint32_t index, std::span<const std::byte> bytes)>;
  /// Gets blocks firstBlock .. firstBlock+count-1 of the sequence `tokens`
  /// (which covers at least their end) and hands the leading run of Found
  /// ones to `write(i, bytes)` (i counts from 0). Returns how many were
  /// written; an error when the get call failed or `write` did.
  Result<uint32_t> load(std::span<const int32_t> tokens, uint32_t firstBlock, uint32_t count,
                        const WriteBlock &write);

  /// Waits until every queued block was put (or failed); false on timeout.
  bool waitIdle(std::chrono::milliseconds timeout);
  WorkerBlockStoreCounters counters() const;

private:
  WorkerBlockStore(RankBlockFields fields, uint64_t blockBytes, WorkerBlockStoreOptions options,
                   std::unique_ptr<Client> writer, std::unique_ptr<Client> loader);
  Result<BlockKey> keyOf(std::span<const int32_t> tokenPrefix) const;
  void writerLoop();

  struct Pending {
    BlockKey key;
    std::vector<std::byte> bytes;
  };

  RankBlockFields fields_;
  uint64_t blockBytes_;
  WorkerBlockStoreOptions options_;
  std::unique_ptr<Client> writer_;
  std::unique_ptr<Client> loader_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Pending> queue_;
  uint64_t queuedBytes_ = 0;
  size_t putting_ = 0; // blocks in the writer's current put
  std::chrono::steady_clock::time_point backoffUntil_{};
  bool stopping_ = false;
  WorkerBlockStoreCounters counters_;
  std::thread thread_;
};

} // namespace llmir::kvstore

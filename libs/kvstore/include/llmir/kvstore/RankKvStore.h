// One shard worker rank's KV cache connected to the KV-block store: the
// worker.proto side of WorkerBlockStore. After a step, the blocks the
// scheduler marked as filled (StepSequence.store_blocks) are copied out of
// the executor's cache and written through in the background; a
// KvLoadRequest fills blocks of the cache from the store.
//
// Keys: model = the plan id (it fixes the model, the partition and the block
// size), layers [0, layers held by this rank), shard = rank, shard count =
// world size, dtype = the cache's element type; so replicas of one plan share
// blocks rank by rank.
#pragma once

#include "llmir/kvstore/WorkerBlockStore.h"
#include "llmir/proto/worker.pb.h"
#include "llmir/support/Status.h"

#include <memory>
#include <optional>
#include <string>

namespace llmir::engine {
class Executor;
}

namespace llmir::kvstore {

class RankKvStore {
public:
  /// `executor` must outlive the RankKvStore. Fails on an unusable config
  /// (no host or port) or key fields. With `clusterSecret` the store must
  /// prove it (and is proven it) before any block moves.
  static Result<std::unique_ptr<RankKvStore>>
  create(const proto::KvStoreConfig &config, const proto::AssignRank &assign,
         engine::Executor &executor,
         const std::optional<std::string> &clusterSecret = std::nullopt);

  /// After `request` ran successfully: queues every block it filled. Returns
  /// the first error (a bad block index or prefix from the scheduler); the
  /// step itself is not affected, a full queue only drops blocks (counted).
  Status writeThrough(const proto::StepRequest &request);
  /// Loads the blocks of `request` (between steps: none of its blocks is
  /// used by a step in flight); with `request.store()`, copies them out and
  /// queues them for the store instead (the on-finish write policy). A store that fails answers ok with the
  /// blocks loaded so far (0): the scheduler recomputes the rest; `loadError`
  /// then says why (for the worker's log).
  proto::KvLoadResponse load(const proto::KvLoadRequest &request, uint32_t rank,
                             std::string *loadError = nullptr);

  WorkerBlockStoreCounters counters() const { return store_->counters(); }
  /// Tests: waits until every queued block was put.
  bool waitIdle(std::chrono::milliseconds timeout) { return store_->waitIdle(timeout); }

private:
  RankKvStore(std::unique_ptr<WorkerBlockStore> store, engine::Executor &executor)
      : store_(std::move(store)), executor_(executor) {}
  std::unique_ptr<WorkerBlockStore> store_;
  engine::Executor &executor_;
};

} // namespace llmir::kvstore

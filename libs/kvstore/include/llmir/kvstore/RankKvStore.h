// One shard worker rank's KV cache connected to the KV-block store: the
// executor's KvTransferHook over WorkerBlockStore. The rank's program
// (compiled with kv_store) carries KV_LOAD / KV_STORE instructions; the
// executor runs them through this hook with the blocks the step names:
// KV_STORE copies the blocks a step filled (StepSequence.store_blocks,
// serving::toStepInput) out of the cache into the write-through queue,
// KV_LOAD gets blocks from the store into the cache. A KvLoadRequest from the
// scheduler runs the same instructions between steps
// (Executor::transferKvBlocks), so every block moves through the program.
//
// Keys: model = the plan id (it fixes the model, the partition and the block
// size), layers [0, layers held by this rank), shard = rank, shard count =
// world size, dtype = the cache's element type; so replicas of one plan share
// blocks rank by rank.
#pragma once

#include "llmir/engine/Executor.h"
#include "llmir/kvstore/WorkerBlockStore.h"
#include "llmir/proto/worker.pb.h"
#include "llmir/support/Status.h"

#include <atomic>
#include <memory>
#include <optional>
#include <string>

namespace llmir::kvstore {

class RankKvStore final : public engine::KvTransferHook {
public:
  /// Becomes `executor`'s KvTransferHook until destroyed; `executor` must
  /// outlive the RankKvStore. Fails on an unusable config (no host or port),
  /// key fields, or a program without KV_LOAD / KV_STORE (not compiled with
  /// kv_store: the rank then serves without the store). With `clusterSecret`
  /// the store must prove it (and is proven it) before any block moves.
  static Result<std::unique_ptr<RankKvStore>>
  create(const proto::KvStoreConfig &config, const proto::AssignRank &assign,
         engine::Executor &executor,
         const std::optional<std::string> &clusterSecret = std::nullopt);
  ~RankKvStore() override;

  /// Loads the blocks of `request` through the program's KV_LOAD (between
  /// steps: none of its blocks is used by a step in flight); with
  /// `request.store()`, copies them out through its KV_STORE and queues them
  /// for the store instead (the on-finish write policy). A store that fails
  /// answers ok with the blocks loaded so far (0): the scheduler recomputes
  /// the rest; `loadError` then says why (for the worker's log).
  proto::KvLoadResponse load(const proto::KvLoadRequest &request, uint32_t rank,
                             std::string *loadError = nullptr);

  /// KV_LOAD: the leading run of Found blocks of each run into the cache.
  Result<std::vector<uint32_t>> loadKvBlocks(const std::vector<engine::KvBlockRun> &runs,
                                             uint32_t layerBegin, uint32_t layerEnd) override;
  /// KV_STORE: copies each block into the write-through queue (the puts run
  /// in the background; a full queue drops blocks, counted).
  Result<uint32_t> storeKvBlocks(const std::vector<engine::KvBlockRun> &runs,
                                 uint32_t layerBegin, uint32_t layerEnd) override;

  /// The store's counters and the KV_LOAD / KV_STORE instructions run.
  WorkerBlockStoreCounters counters() const;
  /// Tests: waits until every queued block was put.
  bool waitIdle(std::chrono::milliseconds timeout) { return store_->waitIdle(timeout); }

private:
  RankKvStore(std::unique_ptr<WorkerBlockStore> store, engine::Executor &executor);
  /// The store keys a rank's blocks over all of its layers.
  Status checkLayers(const char *op, uint32_t layerBegin, uint32_t layerEnd) const;

  std::unique_ptr<WorkerBlockStore> store_;
  engine::Executor &executor_;
  std::atomic<uint64_t> loadInstructions_{0};
  std::atomic<uint64_t> storeInstructions_{0};
};

} // namespace llmir::kvstore

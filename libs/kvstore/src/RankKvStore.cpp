#include "llmir/kvstore/RankKvStore.h"

namespace llmir::kvstore {

Result<std::unique_ptr<RankKvStore>>
RankKvStore::create(const proto::KvStoreConfig &config, const proto::AssignRank &assign,
                    engine::Executor &executor, const std::optional<std::string> &clusterSecret) {
  if (config.host().empty() || config.port() == 0 || config.port() > 65535)
    return Status::error("kv store address '" + config.host() + ":" +
                         std::to_string(config.port()) + "' is not usable");
  if (!executor.hasKvTransfers())
    return Status::error("the rank's program has no KV_LOAD / KV_STORE: its plan was "
                         "compiled without kv_store");
  const engine::KvCacheShape &shape = executor.kvCacheShape();
  RankBlockFields fields;
  fields.model = assign.plan_id();
  fields.layerBegin = 0;
  fields.layerEnd = static_cast<uint32_t>(shape.numLayers);
  fields.shard = assign.rank();
  fields.shardCount = assign.world_size();
  fields.dtype = executor.kvCacheDtypeName();
  fields.blockTokens = static_cast<uint32_t>(shape.blockSize);
  WorkerBlockStoreOptions options;
  options.client.host = config.host();
  options.client.port = static_cast<uint16_t>(config.port());
  options.client.clusterSecret = clusterSecret;
  if (config.timeout_ms() > 0)
    options.client.timeout = std::chrono::milliseconds(config.timeout_ms());
  if (config.max_queued_bytes() > 0)
    options.maxQueuedBytes = config.max_queued_bytes();
  auto store = WorkerBlockStore::create(options, std::move(fields), executor.kvBlockBytes());
  if (!store)
    return store.status();
  return std::unique_ptr<RankKvStore>(new RankKvStore(std::move(*store), executor));
}

RankKvStore::RankKvStore(std::unique_ptr<WorkerBlockStore> store, engine::Executor &executor)
    : store_(std::move(store)), executor_(executor) {
  executor_.setKvTransferHook(this);
}

RankKvStore::~RankKvStore() { executor_.setKvTransferHook(nullptr); }

WorkerBlockStoreCounters RankKvStore::counters() const {
  WorkerBlockStoreCounters c = store_->counters();
  c.loadInstructions = loadInstructions_.load();
  c.storeInstructions = storeInstructions_.load();
  return c;
}

Status RankKvStore::checkLayers(const char *op, uint32_t layerBegin, uint32_t layerEnd) const {
  const auto &fields = store_->fields();
  if (layerBegin != fields.layerBegin || layerEnd != fields.layerEnd)
    return Status::error(std::string(op) + " names layers [" + std::to_string(layerBegin) +
                         ", " + std::to_string(layerEnd) +
                         "); the store keys this rank's blocks over all of its layers [" +
                         std::to_string(fields.layerBegin) + ", " +
                         std::to_string(fields.layerEnd) + ")");
  return Status::ok();
}

Result<std::vector<uint32_t>>
RankKvStore::loadKvBlocks(const std::vector<engine::KvBlockRun> &runs, uint32_t layerBegin,
                          uint32_t layerEnd) {
  ++loadInstructions_;
  LLMIR_RETURN_IF_ERROR(checkLayers("KV_LOAD", layerBegin, layerEnd));
  std::vector<uint32_t> loaded;
  for (const engine::KvBlockRun &run : runs) {
    if (run.blocks.empty()) {
      loaded.push_back(0);
      continue;
    }
    auto got = store_->load(
        std::span<const int32_t>(run.tokenIds), static_cast<uint32_t>(run.firstBlock),
        static_cast<uint32_t>(run.blocks.size()),
        [&](uint32_t i, std::span<const std::byte> bytes) {
          return executor_.writeKvBlock(run.blocks[i], bytes);
        });
    if (!got)
      return got.status();
    loaded.push_back(*got);
  }
  return loaded;
}

Result<uint32_t> RankKvStore::storeKvBlocks(const std::vector<engine::KvBlockRun> &runs,
                                            uint32_t layerBegin, uint32_t layerEnd) {
  ++storeInstructions_;
  LLMIR_RETURN_IF_ERROR(checkLayers("KV_STORE", layerBegin, layerEnd));
  const int64_t B = executor_.kvCacheShape().blockSize;
  uint32_t queued = 0;
  for (const engine::KvBlockRun &run : runs) {
    std::span<const int32_t> tokens(run.tokenIds);
    for (size_t i = 0; i < run.blocks.size(); ++i) {
      const int32_t physical = run.blocks[i];
      // The executor checked that the tokens cover every block of the run.
      auto enqueued = store_->enqueue(
          tokens.first(static_cast<size_t>((int64_t{run.firstBlock} + int64_t(i) + 1) * B)),
          [&](std::span<std::byte> out) { return executor_.readKvBlock(physical, out); });
      if (!enqueued)
        return enqueued.status();
      queued += *enqueued ? 1 : 0;
    }
  }
  return queued;
}

proto::KvLoadResponse RankKvStore::load(const proto::KvLoadRequest &request, uint32_t rank,
                                        std::string *loadError) {
  proto::KvLoadResponse response;
  response.set_load_id(request.load_id());
  response.set_rank(rank);
  const int64_t B = executor_.kvCacheShape().blockSize;
  const auto count = static_cast<uint32_t>(request.block_ids_size());
  if (request.first_block() < 0 ||
      (int64_t{request.first_block()} + count) * B > request.token_ids_size()) {
    response.set_ok(false);
    response.set_error("load " + std::to_string(request.load_id()) + ": blocks " +
                       std::to_string(request.first_block()) + " + " + std::to_string(count) +
                       " are not covered by its " + std::to_string(request.token_ids_size()) +
                       " tokens");
    return response;
  }
  std::vector<engine::KvBlockRun> runs(1);
  runs[0].tokenIds.assign(request.token_ids().begin(), request.token_ids().end());
  runs[0].firstBlock = request.first_block();
  runs[0].blocks.assign(request.block_ids().begin(), request.block_ids().end());
  response.set_ok(true);
  // Through the program's KV_LOAD / KV_STORE, as a step would move them.
  auto moved = request.store() ? executor_.transferKvBlocks({}, runs)
                               : executor_.transferKvBlocks(runs, {});
  if (!moved) {
    // The store failed (or a block id is outside the cache): nothing
    // usable, the scheduler computes the blocks.
    if (loadError)
      *loadError = moved.message();
    response.set_blocks_loaded(0);
    return response;
  }
  response.set_blocks_loaded(request.store() ? moved->stored : moved->loaded[0]);
  return response;
}

} // namespace llmir::kvstore

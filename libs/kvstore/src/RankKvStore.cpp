#include "llmir/kvstore/RankKvStore.h"

#include "llmir/engine/Executor.h"

namespace llmir::kvstore {

Result<std::unique_ptr<RankKvStore>>
RankKvStore::create(const proto::KvStoreConfig &config, const proto::AssignRank &assign,
                    engine::Executor &executor, const std::optional<std::string> &clusterSecret) {
  if (config.host().empty() || config.port() == 0 || config.port() > 65535)
    return Status::error("kv store address '" + config.host() + ":" +
                         std::to_string(config.port()) + "' is not usable");
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

Status RankKvStore::writeThrough(const proto::StepRequest &request) {
  const int64_t B = executor_.kvCacheShape().blockSize;
  Status first = Status::ok();
  for (const proto::StepSequence &seq : request.sequences()) {
    std::span<const int32_t> prefix(seq.prefix_token_ids().data(),
                                    static_cast<size_t>(seq.prefix_token_ids_size()));
    for (int32_t index : seq.store_blocks()) {
      Status status = Status::ok();
      if (index < 0 || index >= seq.block_table_size() ||
          (int64_t{index} + 1) * B > static_cast<int64_t>(prefix.size())) {
        status = Status::error("sequence " + std::to_string(seq.sequence_id()) +
                               ": store block " + std::to_string(index) +
                               " is outside its block table or token prefix");
      } else {
        const int32_t physical = seq.block_table(index);
        auto queued = store_->enqueue(
            prefix.first(static_cast<size_t>((int64_t{index} + 1) * B)),
            [&](std::span<std::byte> out) { return executor_.readKvBlock(physical, out); });
        if (!queued)
          status = queued.status();
      }
      if (!status && first)
        first = status;
    }
  }
  return first;
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
  std::span<const int32_t> tokens(request.token_ids().data(),
                                  static_cast<size_t>(request.token_ids_size()));
  response.set_ok(true);
  if (request.store()) {
    // On-finish writes: copied now (the scheduler holds the blocks until
    // every rank answered), put in the background like write-through.
    uint32_t queued = 0;
    for (uint32_t i = 0; i < count; ++i) {
      const int32_t physical = request.block_ids(static_cast<int>(i));
      auto enqueued = store_->enqueue(
          tokens.first(static_cast<size_t>((int64_t{request.first_block()} + i + 1) * B)),
          [&](std::span<std::byte> out) { return executor_.readKvBlock(physical, out); });
      if (!enqueued) {
        if (loadError && loadError->empty())
          *loadError = enqueued.message();
      } else if (*enqueued) {
        ++queued;
      }
    }
    response.set_blocks_loaded(queued);
    return response;
  }
  auto loaded = store_->load(tokens, static_cast<uint32_t>(request.first_block()), count,
                             [&](uint32_t i, std::span<const std::byte> bytes) {
                               return executor_.writeKvBlock(request.block_ids(static_cast<int>(i)),
                                                             bytes);
                             });
  response.set_ok(true);
  if (!loaded) {
    if (loadError)
      *loadError = loaded.message();
    response.set_blocks_loaded(0);
  } else {
    response.set_blocks_loaded(*loaded);
  }
  return response;
}

} // namespace llmir::kvstore

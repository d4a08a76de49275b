#include "llmir/kvstore/WorkerBlockStore.h"

#include <algorithm>

namespace llmir::kvstore {

Result<std::unique_ptr<WorkerBlockStore>>
WorkerBlockStore::create(const WorkerBlockStoreOptions &options, RankBlockFields fields,
                         uint64_t blockBytes) {
  if (blockBytes == 0)
    return Status::error("a KV block of 0 bytes cannot be stored");
  if (options.maxBlocksPerPut == 0)
    return Status::error("maxBlocksPerPut must be positive");
  // The fields are checked once here (a prefix of one block stands in).
  std::vector<int32_t> probe(std::max<uint32_t>(fields.blockTokens, 1), 0);
  BlockKeyFields check{fields.model,  fields.layerBegin, fields.layerEnd,  fields.shard,
                       fields.shardCount, fields.dtype, fields.blockTokens, probe};
  if (auto key = makeBlockKey(check); !key)
    return key.status();
  auto writer = Client::create(options.client);
  if (!writer)
    return writer.status().withContext("KV store client (writer)");
  auto loader = Client::create(options.client);
  if (!loader)
    return loader.status().withContext("KV store client (loads)");
  return std::unique_ptr<WorkerBlockStore>(new WorkerBlockStore(
      std::move(fields), blockBytes, options, std::move(*writer), std::move(*loader)));
}

WorkerBlockStore::WorkerBlockStore(RankBlockFields fields, uint64_t blockBytes,
                                   WorkerBlockStoreOptions options,
                                   std::unique_ptr<Client> writer,
                                   std::unique_ptr<Client> loader)
    : fields_(std::move(fields)), blockBytes_(blockBytes), options_(std::move(options)),
      writer_(std::move(writer)), loader_(std::move(loader)) {
  thread_ = std::thread([this] { writerLoop(); });
}

WorkerBlockStore::~WorkerBlockStore() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

Result<BlockKey> WorkerBlockStore::keyOf(std::span<const int32_t> tokenPrefix) const {
  BlockKeyFields f{fields_.model,      fields_.layerBegin, fields_.layerEnd,
                   fields_.shard,      fields_.shardCount, fields_.dtype,
                   fields_.blockTokens, tokenPrefix};
  return makeBlockKey(f);
}

Result<bool> WorkerBlockStore::enqueue(std::span<const int32_t> tokenPrefix,
                                       const std::function<Status(std::span<std::byte>)> &read) {
  auto key = keyOf(tokenPrefix);
  if (!key)
    return key.status();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (queuedBytes_ + blockBytes_ > options_.maxQueuedBytes) {
      ++counters_.blocksDropped;
      return false;
    }
    queuedBytes_ += blockBytes_; // reserved while the bytes are copied
  }
  Pending pending{*key, std::vector<std::byte>(blockBytes_)};
  Status copied = read(pending.bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  if (!copied) {
    queuedBytes_ -= blockBytes_;
    return copied;
  }
  queue_.push_back(std::move(pending));
  wake_.notify_all();
  return true;
}

void WorkerBlockStore::writerLoop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (stopping_)
      return;
    std::vector<Pending> batch;
    while (!queue_.empty() && batch.size() < options_.maxBlocksPerPut) {
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    putting_ = batch.size();
    lock.unlock();
    std::vector<PutBlock> puts;
    puts.reserve(batch.size());
    for (const Pending &p : batch)
      puts.push_back({p.key, fields_.dtype, p.bytes.data(), p.bytes.size()});
    auto statuses = writer_->put(puts);
    lock.lock();
    if (!statuses) {
      ++counters_.putCallsFailed;
      counters_.blocksPutFailed += batch.size();
      backoffUntil_ = std::chrono::steady_clock::now() + options_.failureBackoff;
    } else {
      backoffUntil_ = {}; // the store answers again
      for (BlockStatus s : *statuses)
        if (s == BlockStatus::Stored) {
          ++counters_.blocksStored;
          counters_.bytesStored += blockBytes_;
        } else {
          ++counters_.blocksRefused;
        }
    }
    queuedBytes_ -= blockBytes_ * batch.size();
    putting_ = 0;
    wake_.notify_all(); // waitIdle
  }
}

Result<uint32_t> WorkerBlockStore::load(std::span<const int32_t> tokens, uint32_t firstBlock,
                                        uint32_t count, const WriteBlock &write) {
  const uint64_t B = fields_.blockTokens;
  if (count == 0)
    return 0u;
  if ((uint64_t{firstBlock} + count) * B > tokens.size())
    return Status::error("blocks " + std::to_string(firstBlock) + ".." +
                         std::to_string(firstBlock + count - 1) + " need " +
                         std::to_string((uint64_t{firstBlock} + count) * B) + " tokens, got " +
                         std::to_string(tokens.size()));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (std::chrono::steady_clock::now() < backoffUntil_) {
      ++counters_.loadsSkipped;
      return Status::error("kv store " + options_.client.host + ":" +
                           std::to_string(options_.client.port) +
                           " failed a call recently; not asked again before the backoff ends");
    }
  }
  std::vector<std::byte> scratch(blockBytes_ * count);
  std::vector<GetBlock> gets;
  gets.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    auto key = keyOf(tokens.first(static_cast<size_t>((uint64_t{firstBlock} + i + 1) * B)));
    if (!key)
      return key.status();
    gets.push_back({*key, fields_.dtype, scratch.data() + blockBytes_ * i, blockBytes_});
  }
  auto statuses = loader_->get(gets);
  if (!statuses) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++counters_.loadCallsFailed;
    backoffUntil_ = std::chrono::steady_clock::now() + options_.failureBackoff;
    return statuses.status();
  }
  uint32_t loaded = 0;
  while (loaded < count && (*statuses)[loaded] == BlockStatus::Found) {
    LLMIR_RETURN_IF_ERROR(write(loaded, std::span<const std::byte>(
                                            scratch.data() + blockBytes_ * loaded, blockBytes_)));
    ++loaded;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  counters_.blocksLoaded += loaded;
  counters_.bytesLoaded += blockBytes_ * loaded;
  if (loaded < count)
    ++counters_.blocksMissed;
  return loaded;
}

bool WorkerBlockStore::waitIdle(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  return wake_.wait_for(lock, timeout, [&] { return queue_.empty() && putting_ == 0; });
}

WorkerBlockStoreCounters WorkerBlockStore::counters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return counters_;
}

} // namespace llmir::kvstore

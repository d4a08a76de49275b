// The batch manager with the KV-block store, on real pieces in one process:
// replicas are engine Executors of the demo model whose caches are connected
// to a real kvstore::Server over UCX (TCP loopback) through RankKvStore, as a
// shard worker's are: the demo compiled with kv_store, so every block moves
// through the program's KV_LOAD / KV_STORE instructions (counted). A prefix written through by one replica is loaded by
// another; a request moved between replicas resumes from stored blocks; a
// store that is down changes nothing but the counters. Every output equals
// the store-less engine's greedy ids. RemoteBackend's loads (the smallest
// run of all ranks) are checked on their own.
#include "DemoModel.h"

#include "llmir/kvstore/RankKvStore.h"
#include "llmir/kvstore/Server.h"
#include "llmir/serving/BatchScheduler.h"
#include "llmir/serving/RemoteBackend.h"
#include "llmir/serving/StepSampling.h"

#include <cstdlib>
#include <map>

namespace llmir::serving {
namespace {

using namespace std::chrono_literals;
using testing::DemoModel;

/// The demo's rank-0 program compiled with kv_store (KV_LOAD / KV_STORE).
const proto::ShardProgram *kvStoreProgram() {
  static const proto::ShardProgram *program = [] {
    compiler::CompileOptions options;
    options.kvStore = true;
    auto compiled = compiler::compileHuggingFace(testing::kDemoDir, options);
    EXPECT_TRUE(compiled.isOk()) << compiled.message();
    return compiled ? new proto::ShardProgram(compiled->programs.at(0)) : nullptr;
  }();
  return program;
}

/// One replica of one rank: the engine plus its cache's store connection.
class StoreReplica final : public ReplicaBackend {
public:
  static std::unique_ptr<StoreReplica> create(const DemoModel &demo, uint16_t storePort) {
    const proto::ShardProgram *program = kvStoreProgram();
    if (!program)
      return nullptr;
    auto checkpoint = model::Checkpoint::open(testing::kDemoDir);
    EXPECT_TRUE(checkpoint.isOk()) << checkpoint.message();
    if (!checkpoint)
      return nullptr;
    auto replica = std::unique_ptr<StoreReplica>(new StoreReplica(std::move(*checkpoint)));
    auto executor = engine::Executor::create(*program,
                                             engine::checkpointWeights(replica->checkpoint_),
                                             {.numKvBlocks = 128, .numThreads = 2});
    EXPECT_TRUE(executor.isOk()) << executor.message();
    if (!executor)
      return nullptr;
    replica->executor_ = std::move(*executor);
    proto::AssignRank assign;
    assign.set_plan_id("demo-plan");
    assign.set_rank(0);
    assign.set_world_size(1);
    proto::KvStoreConfig config;
    config.set_host("127.0.0.1");
    config.set_port(storePort);
    config.set_timeout_ms(2000);
    auto kv = kvstore::RankKvStore::create(config, assign, *replica->executor_);
    EXPECT_TRUE(kv.isOk()) << kv.message();
    if (!kv)
      return nullptr;
    replica->kv_ = std::move(*kv);
    const engine::KvCacheShape &shape = replica->executor_->kvCacheShape();
    replica->info_ = {static_cast<int32_t>(shape.numBlocks), static_cast<int32_t>(shape.blockSize),
                      static_cast<int32_t>(demo.program.vocab_size()), 1, true};
    return replica;
  }

  ReplicaInfo info() const override { return info_; }

  void submit(const proto::StepRequest &request, StepDone done) override {
    auto logits = executor_->step(toStepInput(request));
    if (!logits)
      return done(logits.status());
    proto::StepResponse response;
    response.set_step_id(request.step_id());
    response.set_ok(true);
    if (Status s = sampleStep(request, *logits, response); !s)
      return done(s);
    // The step's KV_STORE copied the blocks it filled into the queue.
    done(std::move(response));
  }

  void loadBlocks(const proto::KvLoadRequest &request, LoadDone done) override {
    ++loads;
    std::string error;
    proto::KvLoadResponse response = kv_->load(request, 0, &error);
    if (!response.ok())
      return done(Status::error(response.error()));
    done(response.blocks_loaded()); // 0 when the store failed (error says why)
  }

  kvstore::RankKvStore &kv() { return *kv_; }
  engine::Executor &executor() { return *executor_; }
  int loads = 0;

private:
  explicit StoreReplica(model::Checkpoint checkpoint) : checkpoint_(std::move(checkpoint)) {}
  model::Checkpoint checkpoint_;
  std::unique_ptr<engine::Executor> executor_;
  std::unique_ptr<kvstore::RankKvStore> kv_;
  ReplicaInfo info_;
};

RequestParams greedy(const std::vector<int32_t> &prompt, int64_t maxTokens) {
  RequestParams p;
  p.promptIds = prompt;
  p.sampling.temperature = 0.0f;
  p.maxTokens = maxTokens;
  p.ignoreEos = true;
  return p;
}

class KvStoreSchedulerTest : public ::testing::Test {
protected:
  void SetUp() override {
    setenv("UCX_TLS", "tcp", 1);
    demo = DemoModel::get();
    ASSERT_TRUE(demo);
    kvstore::ServerOptions o;
    o.host = "127.0.0.1";
    o.capacityBytes = 64 << 20;
    auto s = kvstore::Server::start(o);
    ASSERT_TRUE(s) << s.message();
    server = std::move(*s);
    for (const auto &c : demo->cases) {
      longPrompt.insert(longPrompt.end(), c.promptIds.begin(), c.promptIds.end());
      longPrompt.insert(longPrompt.end(), c.greedyIds.begin(), c.greedyIds.end());
    }
  }

  SchedulerOptions options() const {
    SchedulerOptions o;
    o.eosTokenIds = {*demo->tokenizer.eosId()};
    return o;
  }

  /// Greedy ids of `prompt` on a replica without a store.
  std::vector<int32_t> reference(const std::vector<int32_t> &prompt, int64_t maxTokens) {
    auto backend = demo->backend(128);
    BatchScheduler s(*backend, demo->tokenizer, options());
    std::vector<int32_t> ids;
    s.addRequest(greedy(prompt, maxTokens), [&](const SequenceEvent &e) {
      if (e.tokenId)
        ids.push_back(*e.tokenId);
    });
    s.runUntilIdle();
    return ids;
  }

  std::vector<int32_t> run(BatchScheduler &s, const std::vector<int32_t> &prompt,
                           int64_t maxTokens) {
    std::vector<int32_t> ids;
    s.addRequest(greedy(prompt, maxTokens), [&](const SequenceEvent &e) {
      if (e.tokenId)
        ids.push_back(*e.tokenId);
    });
    s.runUntilIdle();
    return ids;
  }

  const DemoModel *demo = nullptr;
  std::unique_ptr<kvstore::Server> server;
  std::vector<int32_t> longPrompt;
};

TEST_F(KvStoreSchedulerTest, APrefixWrittenThroughByOneReplicaIsLoadedByAnother) {
  const std::vector<int32_t> expected = reference(longPrompt, 16);
  auto a = StoreReplica::create(*demo, server->port());
  auto b = StoreReplica::create(*demo, server->port());
  ASSERT_TRUE(a && b);
  BatchScheduler onA(*a, demo->tokenizer, options());
  EXPECT_EQ(run(onA, longPrompt, 16), expected);
  ASSERT_TRUE(a->kv().waitIdle(10s));
  const int64_t B = a->info().blockSize;
  const int64_t fullPromptBlocks = (static_cast<int64_t>(longPrompt.size()) - 1) / B;
  // Every block the prompt and the output filled was written through.
  const int64_t computed = static_cast<int64_t>(longPrompt.size()) + 16 - 1;
  EXPECT_EQ(onA.stats().kvStoreWrittenBlocks, static_cast<uint64_t>(computed / B));
  EXPECT_EQ(a->kv().counters().blocksStored, static_cast<uint64_t>(computed / B));
  EXPECT_EQ(onA.stats().kvStoreLoadedTokens, 0u) << "the store was empty";
  // The blocks went through the program: one KV_STORE per step that filled
  // blocks, and A's one (empty) load through its KV_LOAD.
  EXPECT_GT(a->kv().counters().storeInstructions, 0u);
  EXPECT_LE(a->kv().counters().storeInstructions, static_cast<uint64_t>(computed / B));
  EXPECT_EQ(a->kv().counters().loadInstructions, 1u);

  BatchScheduler onB(*b, demo->tokenizer, options());
  EXPECT_EQ(run(onB, longPrompt, 16), expected);
  const SchedulerStats stats = onB.stats();
  EXPECT_EQ(stats.kvStoreLoads, 1u);
  EXPECT_EQ(stats.kvStoreLoadFailures, 0u);
  EXPECT_EQ(stats.kvStoreLoadedTokens, static_cast<uint64_t>(fullPromptBlocks * B));
  EXPECT_EQ(b->kv().counters().blocksLoaded, static_cast<uint64_t>(fullPromptBlocks));
  EXPECT_EQ(b->kv().counters().loadInstructions, 1u);

  // The loaded blocks joined B's prefix cache: the same prompt again needs
  // no second load.
  EXPECT_EQ(run(onB, longPrompt, 16), expected);
  EXPECT_EQ(b->loads, 1);
  EXPECT_GE(onB.stats().prefixHitTokens, static_cast<uint64_t>(fullPromptBlocks * B));
}

TEST_F(KvStoreSchedulerTest, OnFinishWritesASequencesBlocksOnceItFinishes) {
  const std::vector<int32_t> expected = reference(longPrompt, 16);
  auto a = StoreReplica::create(*demo, server->port());
  auto b = StoreReplica::create(*demo, server->port());
  ASSERT_TRUE(a && b);
  SchedulerOptions onFinish = options();
  onFinish.kvStoreWritePolicy = KvStoreWritePolicy::OnFinish;
  BatchScheduler onA(*a, demo->tokenizer, onFinish);
  std::vector<int32_t> ids;
  onA.addRequest(greedy(longPrompt, 16), [&](const SequenceEvent &e) {
    if (e.tokenId)
      ids.push_back(*e.tokenId);
  });
  while (ids.size() < 8 && onA.stepOnce()) {
  }
  ASSERT_EQ(ids.size(), 8u);
  ASSERT_TRUE(a->kv().waitIdle(10s));
  // Mid-generation nothing was written: the prompt's blocks are long full.
  EXPECT_EQ(a->kv().counters().blocksStored, 0u);
  EXPECT_EQ(a->kv().counters().storeInstructions, 0u);
  EXPECT_EQ(server->stats().blocks, 0u);
  EXPECT_EQ(onA.stats().kvStoreWrittenBlocks, 0u);
  onA.runUntilIdle();
  EXPECT_EQ(ids, expected);
  ASSERT_TRUE(a->kv().waitIdle(10s));
  const int64_t B = a->info().blockSize;
  // Every full block of the finished sequence (the last token has no KV).
  const int64_t computed = static_cast<int64_t>(longPrompt.size()) + 16 - 1;
  EXPECT_EQ(onA.stats().kvStoreWrittenBlocks, static_cast<uint64_t>(computed / B));
  EXPECT_EQ(a->kv().counters().blocksStored, static_cast<uint64_t>(computed / B));
  EXPECT_EQ(server->stats().blocks, static_cast<uint64_t>(computed / B));
  EXPECT_EQ(a->kv().counters().storeInstructions, 1u) << "one on-finish KvLoadRequest{store}";
  // The held blocks went back: the replica serves the prompt again from its
  // prefix cache, and the write was not repeated for blocks still cached.
  EXPECT_EQ(run(onA, longPrompt, 16), expected);

  BatchScheduler onB(*b, demo->tokenizer, onFinish);
  EXPECT_EQ(run(onB, longPrompt, 16), expected);
  const int64_t fullPromptBlocks = (static_cast<int64_t>(longPrompt.size()) - 1) / B;
  EXPECT_EQ(onB.stats().kvStoreLoadedTokens, static_cast<uint64_t>(fullPromptBlocks * B));
}

TEST_F(KvStoreSchedulerTest, OffWritesNothingButStillLoads) {
  const std::vector<int32_t> expected = reference(longPrompt, 8);
  auto a = StoreReplica::create(*demo, server->port());
  auto b = StoreReplica::create(*demo, server->port());
  ASSERT_TRUE(a && b);
  SchedulerOptions off = options();
  off.kvStoreWritePolicy = KvStoreWritePolicy::Off;
  BatchScheduler offA(*a, demo->tokenizer, off);
  EXPECT_EQ(run(offA, longPrompt, 8), expected);
  ASSERT_TRUE(a->kv().waitIdle(10s));
  EXPECT_EQ(offA.stats().kvStoreWrittenBlocks, 0u);
  EXPECT_EQ(a->kv().counters().blocksStored, 0u);
  EXPECT_EQ(server->stats().blocks, 0u);
  EXPECT_EQ(offA.stats().kvStoreLoads, 1u) << "it still asks the (empty) store";

  // Filled by a write-through replica, the store serves the off replica.
  BatchScheduler throughB(*b, demo->tokenizer, options());
  EXPECT_EQ(run(throughB, longPrompt, 8), expected);
  ASSERT_TRUE(b->kv().waitIdle(10s));
  auto c = StoreReplica::create(*demo, server->port());
  ASSERT_TRUE(c);
  BatchScheduler offC(*c, demo->tokenizer, off);
  EXPECT_EQ(run(offC, longPrompt, 8), expected);
  const int64_t B = c->info().blockSize;
  const int64_t fullPromptBlocks = (static_cast<int64_t>(longPrompt.size()) - 1) / B;
  EXPECT_EQ(offC.stats().kvStoreLoadedTokens, static_cast<uint64_t>(fullPromptBlocks * B));
  EXPECT_EQ(c->kv().counters().blocksStored, 0u);
}

TEST(KvStoreWritePolicy, NamesRoundTripAndOthersAreRefusedNamingTheAccepted) {
  for (KvStoreWritePolicy p : {KvStoreWritePolicy::Off, KvStoreWritePolicy::OnFinish,
                               KvStoreWritePolicy::WriteThrough}) {
    auto parsed = parseKvStoreWritePolicy(kvStoreWritePolicyName(p));
    ASSERT_TRUE(parsed) << parsed.message();
    EXPECT_EQ(*parsed, p);
  }
  for (const char *bad : {"", "on_finish", "Write-Through", "always"}) {
    auto parsed = parseKvStoreWritePolicy(bad);
    ASSERT_FALSE(parsed) << bad;
    EXPECT_NE(parsed.message().find("accepted: off, on-finish, write-through"),
              std::string::npos)
        << parsed.message();
  }
}

TEST_F(KvStoreSchedulerTest, AMovedRequestResumesFromStoredBlocks) {
  const std::vector<int32_t> prompt = demo->cases[2].promptIds;
  const std::vector<int32_t> expected = reference(prompt, 96);
  ASSERT_EQ(std::vector<int32_t>(expected.begin(), expected.begin() + 32), demo->cases[2].greedyIds);
  auto a = StoreReplica::create(*demo, server->port());
  auto b = StoreReplica::create(*demo, server->port());
  ASSERT_TRUE(a && b);
  BatchScheduler onA(*a, demo->tokenizer, options());
  std::vector<int32_t> ids;
  auto callback = [&](const SequenceEvent &e) {
    if (e.tokenId)
      ids.push_back(*e.tokenId);
  };
  onA.addRequest(greedy(prompt, 96), callback);
  while (ids.size() < 60 && onA.stepOnce()) {
  }
  ASSERT_EQ(ids.size(), 60u);
  ASSERT_TRUE(a->kv().waitIdle(10s));
  std::vector<DetachedRequest> moved = onA.detachAll();
  ASSERT_EQ(moved.size(), 1u);

  BatchScheduler onB(*b, demo->tokenizer, options());
  onB.adopt(std::move(moved[0]));
  onB.runUntilIdle();
  EXPECT_EQ(ids, expected);
  const SchedulerStats stats = onB.stats();
  // prompt + 60 generated tokens had KV; the full blocks among them (less
  // the last token, whose logits are needed) came from the store.
  const int64_t B = b->info().blockSize;
  const int64_t had = static_cast<int64_t>(prompt.size()) + 60;
  const uint64_t reusable = static_cast<uint64_t>((had - 1) / B * B);
  EXPECT_EQ(stats.adoptedTokensReused, reusable);
  EXPECT_EQ(stats.adoptedTokensRecomputed, static_cast<uint64_t>(had) - reusable);
  EXPECT_EQ(stats.kvStoreLoadedTokens, reusable);
}

TEST_F(KvStoreSchedulerTest, AStoreThatIsDownOnlyCostsRecompute) {
  const std::vector<int32_t> expected = reference(longPrompt, 8);
  const uint16_t port = server->port();
  auto a = StoreReplica::create(*demo, port);
  ASSERT_TRUE(a);
  server.reset(); // connection refused from now on
  BatchScheduler onA(*a, demo->tokenizer, options());
  EXPECT_EQ(run(onA, longPrompt, 8), expected);
  ASSERT_TRUE(a->kv().waitIdle(10s));
  const SchedulerStats stats = onA.stats();
  EXPECT_EQ(stats.kvStoreLoads, 1u);
  EXPECT_EQ(stats.kvStoreLoadedTokens, 0u);
  const auto counters = a->kv().counters();
  EXPECT_EQ(counters.loadCallsFailed, 1u);
  EXPECT_EQ(counters.blocksStored, 0u);
  EXPECT_GT(counters.blocksPutFailed, 0u);
}

/// One sequence's step: `tokens` from position `first`, block table `table`.
engine::StepInput sequenceStep(const std::vector<int32_t> &tokens, int32_t first,
                               const std::vector<int32_t> &table) {
  engine::StepInput step;
  for (size_t i = 0; i < tokens.size(); ++i) {
    step.tokenIds.push_back(tokens[i]);
    step.positions.push_back(first + static_cast<int32_t>(i));
    step.tokenSeq.push_back(0);
  }
  step.blockTables = {table};
  return step;
}

// KV_LOAD inside a compute step, through RankKvStore and the real store:
// replica B's step over the prompt's tail loads the blocks A's KV_STORE
// wrote and attends over them: its logits equal A's for the same step. With
// the store down, that step fails naming the store (it cannot attend over
// blocks that did not come).
TEST_F(KvStoreSchedulerTest, AStepLoadsStoredBlocksThroughItsKvLoad) {
  auto a = StoreReplica::create(*demo, server->port());
  auto b = StoreReplica::create(*demo, server->port());
  ASSERT_TRUE(a && b);
  const int32_t B = a->info().blockSize;
  const int32_t full = static_cast<int32_t>(longPrompt.size() - 1) / B;
  ASSERT_GE(full, 2);
  const std::vector<int32_t> head(longPrompt.begin(), longPrompt.begin() + full * B);
  const std::vector<int32_t> tail(longPrompt.begin() + full * B, longPrompt.end());
  std::vector<int32_t> tableA, tableB;
  for (int32_t i = 0; i <= full; ++i) {
    tableA.push_back(i);
    tableB.push_back(100 - i);
  }
  engine::StepInput prefill = sequenceStep(head, 0, tableA);
  prefill.kvStores = {{longPrompt, 0, {tableA.begin(), tableA.begin() + full}}};
  ASSERT_TRUE(a->executor().step(prefill).isOk());
  ASSERT_TRUE(a->kv().waitIdle(10s));
  EXPECT_EQ(a->kv().counters().blocksStored, static_cast<uint64_t>(full));
  auto computed = a->executor().step(sequenceStep(tail, full * B, tableA));
  ASSERT_TRUE(computed) << computed.message();

  engine::StepInput loadThenCompute = sequenceStep(tail, full * B, tableB);
  loadThenCompute.kvLoads = {{longPrompt, 0, {tableB.begin(), tableB.begin() + full}}};
  auto loaded = b->executor().step(loadThenCompute);
  ASSERT_TRUE(loaded) << loaded.message();
  EXPECT_EQ(loaded->data, computed->data);
  EXPECT_EQ(b->kv().counters().loadInstructions, 1u);
  EXPECT_EQ(b->kv().counters().blocksLoaded, static_cast<uint64_t>(full));

  const uint16_t port = server->port();
  server.reset();
  auto c = StoreReplica::create(*demo, port);
  ASSERT_TRUE(c);
  auto failed = c->executor().step(loadThenCompute);
  ASSERT_FALSE(failed);
  EXPECT_NE(failed.message().find("(KV_LOAD): kv store 127.0.0.1:" + std::to_string(port)),
            std::string::npos)
      << failed.message();
}

TEST_F(KvStoreSchedulerTest, AProgramCompiledWithoutTheStoreIsNotConnected) {
  auto checkpoint = model::Checkpoint::open(testing::kDemoDir);
  ASSERT_TRUE(checkpoint) << checkpoint.message();
  auto executor = engine::Executor::create(demo->program, engine::checkpointWeights(*checkpoint),
                                           {.numKvBlocks = 16, .numThreads = 1});
  ASSERT_TRUE(executor) << executor.message();
  EXPECT_FALSE((*executor)->hasKvTransfers());
  proto::AssignRank assign;
  assign.set_plan_id("demo-plan");
  assign.set_world_size(1);
  proto::KvStoreConfig config;
  config.set_host("127.0.0.1");
  config.set_port(server->port());
  auto kv = kvstore::RankKvStore::create(config, assign, **executor);
  ASSERT_FALSE(kv);
  EXPECT_NE(kv.message().find("compiled without kv_store"), std::string::npos) << kv.message();
}

TEST(RemoteBackendLoads, TheResultIsTheShortestRunOfAllRanks) {
  std::map<uint32_t, proto::KvLoadRequest> sent;
  RemoteBackend backend(
      ReplicaInfo{16, 16, 100, 1, true}, 3,
      [](uint32_t, const proto::StepRequest &) { return Status::ok(); },
      [&](uint32_t rank, const proto::KvLoadRequest &r) {
        sent[rank] = r;
        return Status::ok();
      });
  EXPECT_TRUE(backend.info().kvStore);
  proto::KvLoadRequest request;
  request.set_load_id(7);
  for (int i = 0; i < 4; ++i)
    request.add_block_ids(i);
  std::optional<Result<uint32_t>> result;
  backend.loadBlocks(request, [&](Result<uint32_t> r) { result = std::move(r); });
  EXPECT_EQ(sent.size(), 3u);
  auto answer = [&](uint32_t rank, uint32_t loaded, uint64_t id = 7) {
    proto::KvLoadResponse response;
    response.set_load_id(id);
    response.set_rank(rank);
    response.set_ok(true);
    response.set_blocks_loaded(loaded);
    backend.onLoadResponse(rank, response);
  };
  answer(0, 4);
  answer(0, 0);    // a second answer from a rank does not count
  answer(1, 3, 8); // nor one for another load
  answer(5, 0);    // nor a rank outside the replica
  EXPECT_FALSE(result);
  answer(1, 2);
  answer(2, 3);
  ASSERT_TRUE(result);
  ASSERT_TRUE(result->isOk());
  EXPECT_EQ(**result, 2u);

  // fail() ends a load in flight with an error, and later ones at once.
  std::optional<Result<uint32_t>> failed;
  request.set_load_id(9);
  backend.loadBlocks(request, [&](Result<uint32_t> r) { failed = std::move(r); });
  backend.fail("rank 1 lost");
  ASSERT_TRUE(failed);
  EXPECT_FALSE(failed->isOk());
  std::optional<Result<uint32_t>> later;
  backend.loadBlocks(request, [&](Result<uint32_t> r) { later = std::move(r); });
  ASSERT_TRUE(later);
  EXPECT_NE(later->message().find("rank 1 lost"), std::string::npos);

  // Without a way to send loads the replica has no store.
  RemoteBackend noStore(ReplicaInfo{16, 16, 100, 1, true}, 1,
                        [](uint32_t, const proto::StepRequest &) { return Status::ok(); });
  EXPECT_FALSE(noStore.info().kvStore);
}

} // namespace
} // namespace llmir::serving

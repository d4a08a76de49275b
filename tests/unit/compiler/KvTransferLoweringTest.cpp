// CompileOptions::kvStore: llm-insert-kv-transfers and the lowering of its
// ops to KV_LOAD / KV_STORE, on the demo model; the programs bind in the
// engine (whose tests run the instructions).
#include "LocalCluster.h"

#include <gtest/gtest.h>

namespace llmir::compiler {
namespace {

const std::string kDemoModel = std::string(LLMIR_SOURCE_DIR) + "/models/demo-llama-4m";

/// The ops of `program` in order, KV_LOAD / KV_STORE with their layers.
std::vector<std::string> transfersAndAttention(const proto::ShardProgram &program) {
  std::vector<std::string> ops;
  for (const proto::Instruction &inst : program.instructions()) {
    if (inst.op() == proto::ATTENTION)
      ops.push_back("ATTENTION " + std::to_string(inst.int_attrs().at("layer")));
    if (inst.op() == proto::KV_LOAD || inst.op() == proto::KV_STORE)
      ops.push_back(proto::Opcode_Name(inst.op()) + " [" +
                    std::to_string(inst.int_attrs().at("layer_begin")) + ", " +
                    std::to_string(inst.int_attrs().at("layer_end")) + ")");
  }
  return ops;
}

TEST(KvTransferLowering, OneLoadBeforeTheFirstAttentionAndOneStoreAfterTheLast) {
  CompileOptions options;
  options.kvStore = true;
  auto compiled = compileHuggingFace(kDemoModel, options);
  ASSERT_TRUE(compiled) << compiled.message();
  ASSERT_EQ(compiled->programs.size(), 1u);
  const proto::ShardProgram &program = compiled->programs[0];
  EXPECT_EQ(transfersAndAttention(program),
            (std::vector<std::string>{"KV_LOAD [0, 4)", "ATTENTION 0", "ATTENTION 1",
                                      "ATTENTION 2", "ATTENTION 3", "KV_STORE [0, 4)"}));
  // Right before / after: the load's successor is the attention, the
  // store's predecessor too.
  for (int i = 0; i < program.instructions_size(); ++i) {
    if (program.instructions(i).op() == proto::KV_LOAD)
      EXPECT_EQ(program.instructions(i + 1).op(), proto::ATTENTION);
    if (program.instructions(i).op() == proto::KV_STORE)
      EXPECT_EQ(program.instructions(i - 1).op(), proto::ATTENTION);
  }
  EXPECT_NE(compiled->partitionedMlir.find("llm.remote_load(%arg2) {layer_begin = 0 : i32, "
                                           "layer_end = 4 : i32}"),
            std::string::npos);

  // The same plan without the store has neither instruction, and the rest of
  // the program is the same.
  auto plain = compileHuggingFace(kDemoModel, CompileOptions{});
  ASSERT_TRUE(plain) << plain.message();
  EXPECT_EQ(transfersAndAttention(plain->programs[0]),
            (std::vector<std::string>{"ATTENTION 0", "ATTENTION 1", "ATTENTION 2",
                                      "ATTENTION 3"}));
  EXPECT_EQ(plain->programs[0].instructions_size() + 2, program.instructions_size());

  // The program binds; its executor reports the transfers.
  auto checkpoint = model::Checkpoint::open(kDemoModel);
  ASSERT_TRUE(checkpoint) << checkpoint.message();
  auto executor = engine::Executor::create(program, engine::checkpointWeights(*checkpoint),
                                           {.numKvBlocks = 8, .numThreads = 1});
  ASSERT_TRUE(executor) << executor.message();
  EXPECT_TRUE((*executor)->hasKvTransfers());
}

TEST(KvTransferLowering, EachRankMovesItsOwnLocalLayers) {
  CompileOptions options;
  options.kvStore = true;
  options.tp = 2;
  options.pp = 2;
  auto compiled = compileHuggingFace(kDemoModel, options);
  ASSERT_TRUE(compiled) << compiled.message();
  ASSERT_EQ(compiled->programs.size(), 4u);
  for (const proto::ShardProgram &program : compiled->programs)
    EXPECT_EQ(transfersAndAttention(program),
              (std::vector<std::string>{"KV_LOAD [0, 2)", "ATTENTION 0", "ATTENTION 1",
                                        "KV_STORE [0, 2)"}))
        << "rank " << program.rank();
}

// Under tensor x sequence parallelism (SP_ATTENTION over the sharded cache)
// every rank's program binds with its transfers and, with no store
// attached, computes exactly what the plan without them computes.
TEST(KvTransferLowering, ShardedCachePlansBindAndComputeAsWithout) {
  auto checkpoint = model::Checkpoint::open(kDemoModel);
  ASSERT_TRUE(checkpoint) << checkpoint.message();
  CompileOptions options;
  options.kvBlockSize = 4;
  options.tp = 2;
  options.sp = 2;
  auto plain = compileHuggingFace(kDemoModel, options);
  options.kvStore = true;
  auto withStore = compileHuggingFace(kDemoModel, options);
  ASSERT_TRUE(plain && withStore) << plain.message() << withStore.message();
  for (const proto::ShardProgram &program : withStore->programs)
    EXPECT_EQ(transfersAndAttention(program),
              (std::vector<std::string>{"KV_LOAD [0, 4)", "KV_STORE [0, 4)"}))
        << "rank " << program.rank() << " (SP_ATTENTION between them)";
  const std::vector<engine::StepInput> inputs = mixedBatchSteps();
  const auto expected = runReplica(*plain, *checkpoint, inputs, 24);
  const auto logits = runReplica(*withStore, *checkpoint, inputs, 24);
  ASSERT_EQ(logits[0].size(), inputs.size()) << "rank 0 has the logits";
  EXPECT_EQ(logits, expected);
}

} // namespace
} // namespace llmir::compiler

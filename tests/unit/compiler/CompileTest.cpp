#include "llmir/compiler/Compile.h"

#include <gtest/gtest.h>

namespace llmir::compiler {
namespace {

const std::string kDemoModel = std::string(LLMIR_SOURCE_DIR) + "/models/demo-llama-4m";

TEST(CompileHuggingFace, SingleRankProgramHasEveryLayerAndTheLogits) {
  auto compiled = compileHuggingFace(kDemoModel, CompileOptions{});
  ASSERT_TRUE(compiled) << compiled.message();
  EXPECT_EQ(compiled->plan.world_size(), 1u);
  EXPECT_EQ(compiled->plan.tp(), 1u);
  ASSERT_EQ(compiled->programs.size(), 1u);
  const proto::ShardProgram &program = compiled->programs[0];
  EXPECT_TRUE(program.has_output());
  EXPECT_EQ(program.kv_cache().num_layers(), 4u);
  EXPECT_EQ(program.vocab_size(), 2048u);
  EXPECT_EQ(program.groups_size(), 0);
  for (const proto::WeightSlice &w : program.weights())
    EXPECT_EQ(w.dim(), -1) << w.tensor_name() << " is sliced on one rank";
  EXPECT_NE(compiled->partitionedMlir.find("func.func @prefill"), std::string::npos);
}

TEST(CompileHuggingFace, MissingDirectoryIsAnErrorNamingIt) {
  auto compiled = compileHuggingFace("/nonexistent/model", CompileOptions{});
  ASSERT_FALSE(compiled);
  EXPECT_NE(compiled.message().find("/nonexistent/model"), std::string::npos)
      << compiled.message();
}

TEST(CompileModule, UnparseableTextIsAnErrorWithTheParserMessage) {
  auto compiled = compileModule("func.func @prefill(", CompileOptions{});
  ASSERT_FALSE(compiled);
  EXPECT_NE(compiled.message().find("parsing"), std::string::npos) << compiled.message();
}

} // namespace
} // namespace llmir::compiler

// models/demo-llama-4m, compiled once per test binary, with its tokenizer
// and Hugging Face greedy references.
#pragma once

#include "llmir/compiler/Compile.h"
#include "llmir/engine/CheckpointWeights.h"
#include "llmir/model/Checkpoint.h"
#include "llmir/model/Tokenizer.h"
#include "llmir/serving/InProcessBackend.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>

namespace llmir::serving::testing {

inline const std::string kDemoDir = std::string(LLMIR_SOURCE_DIR) + "/models/demo-llama-4m";

struct ReferenceCase {
  std::vector<int32_t> promptIds;
  std::vector<int32_t> greedyIds; // 32 tokens, EOS ignored
};

struct DemoModel {
  proto::ShardProgram program;
  model::Tokenizer tokenizer;
  std::vector<ReferenceCase> cases;

  /// The shared instance; fails the calling test when it cannot load.
  static const DemoModel *get() {
    static const DemoModel *model = load();
    return model;
  }

  /// A fresh replica with `numKvBlocks` blocks.
  std::unique_ptr<InProcessBackend> backend(int64_t numKvBlocks) const {
    auto checkpoint = model::Checkpoint::open(kDemoDir);
    EXPECT_TRUE(checkpoint.isOk()) << checkpoint.message();
    if (!checkpoint)
      return nullptr;
    auto backend = InProcessBackend::create(
        program, engine::checkpointWeights(*checkpoint),
        {.numKvBlocks = numKvBlocks, .numThreads = 2});
    EXPECT_TRUE(backend.isOk()) << backend.message();
    return backend ? std::move(*backend) : nullptr;
  }

private:
  static std::vector<int32_t> ids(const boost::json::value &array) {
    std::vector<int32_t> out;
    for (const auto &id : array.as_array())
      out.push_back(id.to_number<int32_t>());
    return out;
  }

  static const DemoModel *load() {
    auto compiled = compiler::compileHuggingFace(kDemoDir, {});
    EXPECT_TRUE(compiled.isOk()) << compiled.message();
    auto tokenizer = model::Tokenizer::load(kDemoDir + "/tokenizer.json");
    EXPECT_TRUE(tokenizer.isOk()) << tokenizer.message();
    if (!compiled || !tokenizer)
      return nullptr;
    std::ifstream in(kDemoDir + "/reference.json");
    std::stringstream text;
    text << in.rdbuf();
    const boost::json::value reference = boost::json::parse(text.str());
    std::vector<ReferenceCase> cases;
    for (const auto &c : reference.at("cases").as_array())
      cases.push_back({ids(c.at("prompt_ids")), ids(c.at("greedy_ids"))});
    return new DemoModel{std::move(compiled->programs.at(0)), std::move(*tokenizer),
                         std::move(cases)};
  }
};

} // namespace llmir::serving::testing

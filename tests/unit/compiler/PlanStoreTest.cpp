// The compiler service's plan cache (compiler/PlanStore.h) on the demo
// model: plans keyed by content, the least recently used evicted by bytes,
// a compile cancelled at its deadline, a bad directory failing cleanly.
#include "llmir/compiler/PlanStore.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace llmir::compiler {
namespace {

namespace fs = std::filesystem;

const std::string kDemoDir =
    std::string(LLMIR_SOURCE_DIR) + "/models/demo-llama-4m";

CompileRequest request(const std::string &dir, int tp = 1, int pp = 1) {
  CompileRequest r;
  r.modelDir = dir;
  r.options.tp = tp;
  r.options.pp = pp;
  return r;
}

// A copy of the demo checkpoint the test may change.
fs::path copyOfDemo(const std::string &name) {
  const fs::path dir = fs::temp_directory_path() / ("llmir_plan_store_" + name);
  fs::remove_all(dir);
  fs::copy(kDemoDir, dir);
  return dir;
}

std::string readFile(const fs::path &path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void writeFile(const fs::path &path, const std::string &bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

TEST(PlanStore, ASecondRequestForTheSameContentIsACacheHit) {
  PlanStore store;
  auto first = store.compile(request(kDemoDir));
  ASSERT_EQ(first.outcome, PlanStore::Outcome::Ok) << first.error;
  EXPECT_FALSE(first.cacheHit);
  auto second = store.compile(request(kDemoDir));
  ASSERT_EQ(second.outcome, PlanStore::Outcome::Ok) << second.error;
  EXPECT_TRUE(second.cacheHit);
  EXPECT_EQ(second.plan, first.plan) << "the same plan object, not a recompile";
  auto other = store.compile(request(kDemoDir, 2));
  ASSERT_EQ(other.outcome, PlanStore::Outcome::Ok) << other.error;
  EXPECT_FALSE(other.cacheHit);
  EXPECT_NE(other.plan->id, first.plan->id) << "the options are part of the id";
  EXPECT_EQ(store.find(first.plan->id), first.plan);
  EXPECT_EQ(store.cachedBytes(), first.plan->bytes + other.plan->bytes);
  EXPECT_EQ(store.compilesRunning(), 0u);
}

// The id hashes config.json and the safetensors headers, not the weights'
// bytes: a plan depends on names and shapes only.
TEST(PlanStore, TheIdFollowsTheConfigAndHeadersNotTheWeights) {
  const fs::path dir = copyOfDemo("id");
  auto original = planId(request(dir.string()));
  ASSERT_TRUE(original.isOk()) << original.message();
  EXPECT_EQ(*planId(request(kDemoDir)), *original)
      << "the path is not part of the id";

  std::string weights = readFile(dir / "model.safetensors");
  weights[weights.size() - 1] ^= 0x5a; // a weight's last byte, past the header
  writeFile(dir / "model.safetensors", weights);
  EXPECT_EQ(*planId(request(dir.string())), *original);

  std::string config = readFile(dir / "config.json");
  const size_t brace = config.rfind('}');
  ASSERT_NE(brace, std::string::npos);
  config.insert(brace, ",\n  \"llmir_test_field\": 1\n");
  writeFile(dir / "config.json", config);
  auto changed = planId(request(dir.string()));
  ASSERT_TRUE(changed.isOk()) << changed.message();
  EXPECT_NE(*changed, *original);
  fs::remove_all(dir);
}

TEST(PlanStore, TheLeastRecentlyUsedPlanIsEvictedPastTheBudget) {
  uint64_t a = 0, b = 0, c = 0;
  {
    PlanStore sizes;
    a = sizes.compile(request(kDemoDir, 1)).plan->bytes;
    b = sizes.compile(request(kDemoDir, 2)).plan->bytes;
    c = sizes.compile(request(kDemoDir, 1, 2)).plan->bytes;
  }
  PlanStore store({.maxBytes = a + std::max(b, c)});
  auto planA = store.compile(request(kDemoDir, 1));
  auto planB = store.compile(request(kDemoDir, 2));
  ASSERT_EQ(planB.outcome, PlanStore::Outcome::Ok) << planB.error;
  ASSERT_TRUE(store.find(planA.plan->id)) << "both fit";
  // A was used last: C's arrival evicts B.
  auto planC = store.compile(request(kDemoDir, 1, 2));
  ASSERT_EQ(planC.outcome, PlanStore::Outcome::Ok) << planC.error;
  EXPECT_TRUE(store.find(planA.plan->id));
  EXPECT_FALSE(store.find(planB.plan->id));
  EXPECT_TRUE(store.find(planC.plan->id));
  EXPECT_EQ(store.cachedBytes(), a + c);

  PlanStore tiny({.maxBytes = 1});
  auto only = tiny.compile(request(kDemoDir));
  ASSERT_EQ(only.outcome, PlanStore::Outcome::Ok) << only.error;
  EXPECT_TRUE(tiny.find(only.plan->id))
      << "the newest plan stays, even alone over the budget";
}

TEST(PlanStore, ACompilePastItsDeadlineIsCancelledAndNotCached) {
  // The shortest deadline there is: a compile of the demo model (imports,
  // passes, lowering: under a millisecond on a fast machine with warm
  // caches) is checked against it between layers, passes and ranks.
  PlanStore store({.deadline = std::chrono::nanoseconds(1)});
  auto late = store.compile(request(kDemoDir));
  ASSERT_EQ(late.outcome, PlanStore::Outcome::DeadlineExceeded) << late.error;
  EXPECT_NE(late.error.find("compile.timeout-ms"), std::string::npos)
      << late.error;
  EXPECT_EQ(store.cachedBytes(), 0u);
  EXPECT_EQ(store.compilesRunning(), 0u);
}

TEST(PlanStore, ABadDirectoryFailsAndLeavesTheStoreAsItWas) {
  PlanStore store;
  auto missing = store.compile(request("/nonexistent/llmir-model"));
  EXPECT_EQ(missing.outcome, PlanStore::Outcome::Failed);
  EXPECT_FALSE(missing.error.empty());
  EXPECT_EQ(store.cachedBytes(), 0u);
  auto good = store.compile(request(kDemoDir));
  EXPECT_EQ(good.outcome, PlanStore::Outcome::Ok) << good.error;
}

} // namespace
} // namespace llmir::compiler

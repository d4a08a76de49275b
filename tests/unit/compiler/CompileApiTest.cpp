// The compile call's JSON (compiler/CompileApi.h), as the scheduler writes
// it and the compiler service reads it.
#include "llmir/compiler/CompileApi.h"

#include <gtest/gtest.h>

namespace llmir::compiler {
namespace {

TEST(CompileApi, ARequestRoundTripsWithItsDefaultsFilledIn) {
  auto parsed = parseCompileRequest(R"({"model_dir": "/models/m", "tp": 2})");
  ASSERT_TRUE(parsed.isOk()) << parsed.message();
  EXPECT_EQ(parsed->model_dir(), "/models/m");
  EXPECT_EQ(parsed->tp(), 2);
  EXPECT_EQ(parsed->pp(), 1);
  EXPECT_EQ(parsed->sp(), 1);
  EXPECT_EQ(parsed->kv_block_size(), 16);
  // What the scheduler sends is what the service reads.
  auto again = parseCompileRequest(compileRequestJson(*parsed));
  ASSERT_TRUE(again.isOk()) << again.message();
  EXPECT_EQ(again->SerializeAsString(), parsed->SerializeAsString());
  EXPECT_NE(compileRequestJson(*parsed).find("\"kv_block_size\":16"), std::string::npos)
      << compileRequestJson(*parsed);
}

// kv_store asks for KV_LOAD / KV_STORE in the programs; absent, no store.
TEST(CompileApi, KvStoreIsAnOptionalFlag) {
  auto without = parseCompileRequest(R"({"model_dir": "m"})");
  ASSERT_TRUE(without.isOk()) << without.message();
  EXPECT_FALSE(without->kv_store());
  auto with = parseCompileRequest(R"({"model_dir": "m", "kv_store": true})");
  ASSERT_TRUE(with.isOk()) << with.message();
  EXPECT_TRUE(with->kv_store());
  EXPECT_NE(compileRequestJson(*with).find("\"kv_store\":true"), std::string::npos);
  auto bad = parseCompileRequest(R"({"model_dir": "m", "kv_store": [true]})");
  EXPECT_FALSE(bad.isOk());
}

TEST(CompileApi, BadRequestsNameWhatIsWrong) {
  struct Case {
    const char *body, *says;
  };
  for (const Case &c : {Case{"", "compile request"},
                        Case{"[1, 2]", "compile request"},
                        Case{R"({"tp": 2})", "'model_dir'"},
                        Case{R"({"model_dir": ""})", "'model_dir'"},
                        Case{R"({"model_dir": "m", "tp": 0})", "'tp' must be in [1, 4096], got 0"},
                        Case{R"({"model_dir": "m", "pp": -3})", "'pp' must be in [1, 4096]"},
                        Case{R"({"model_dir": "m", "kv_block_size": 5000})", "'kv_block_size'"},
                        Case{R"({"model_dir": "m", "tp": "two"})", "compile request"},
                        Case{R"({"model_dir": "m", "kv_blocksize": 32})", "kv_blocksize"}}) {
    auto parsed = parseCompileRequest(c.body);
    ASSERT_FALSE(parsed.isOk()) << c.body;
    EXPECT_NE(parsed.message().find(c.says), std::string::npos)
        << c.body << " -> " << parsed.message();
  }
}

TEST(CompileApi, AResponseCarriesThePlanAndIgnoresNewerFields) {
  proto::CompileResponse response;
  response.set_plan_id("abc123");
  response.set_cache_hit(true);
  response.mutable_plan()->set_world_size(4);
  const std::string json = compileResponseJson(response);
  EXPECT_NE(json.find("\"plan_id\":\"abc123\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"world_size\":4"), std::string::npos) << json;
  response.set_cache_hit(false);
  EXPECT_NE(compileResponseJson(response).find("\"cache_hit\":false"), std::string::npos)
      << "a false cache_hit is written, not left out";
  auto parsed = parseCompileResponse(json.substr(0, json.size() - 1) + ",\"later\":1}");
  ASSERT_TRUE(parsed.isOk()) << parsed.message();
  EXPECT_EQ(parsed->plan_id(), "abc123");
  EXPECT_TRUE(parsed->cache_hit());
  EXPECT_EQ(parsed->plan().world_size(), 4u);
  // A plan without ranks, or no plan id: not a plan the scheduler can use.
  EXPECT_FALSE(parseCompileResponse(R"({"plan_id": "x", "plan": {}})").isOk());
  EXPECT_FALSE(parseCompileResponse(R"({"plan": {"world_size": 2}})").isOk());
  EXPECT_FALSE(parseCompileResponse("not json").isOk());
}

} // namespace
} // namespace llmir::compiler

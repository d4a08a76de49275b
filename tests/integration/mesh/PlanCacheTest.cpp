// Issue 14, finding 2: the compiler service's plan cache never evicted (five
// compiles with distinct options: 430 MB -> 2.1 GB). With a byte bound, the
// least recently used plan goes; the newest always stays.
#include "llmir/net/HttpClient.h"

#include "Processes.h"
#include "ServiceWaits.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

using namespace llmir;
using llmir::testing::freePort;
using llmir::testing::Process;
using llmir::testing::waitForStatus;
using namespace std::chrono_literals;
namespace json = boost::json;

namespace {

TEST(PlanCacheTest, TheLeastRecentlyUsedPlanIsEvictedPastTheByteBound) {
  const std::string modelDir = std::string(LLMIR_SOURCE_DIR) + "/models/demo-llama-4m";
  const uint16_t port = freePort();
  Process compiler({std::string(LLMIR_BIN_DIR) + "/llmir-compiler-service",
                    "--http.host=127.0.0.1", "--http.port=" + std::to_string(port),
                    "--plans.cache-bytes=1"});
  ASSERT_TRUE(compiler.started());
  const std::string url = "http://127.0.0.1:" + std::to_string(port);
  ASSERT_TRUE(waitForStatus(url + "/readyz", 200, 30s));
  auto compile = [&](int tp) {
    auto r = net::httpPost(url + "/v1/compile", "{\"model_dir\":\"" + modelDir +
                                                    "\",\"tp\":" + std::to_string(tp) + "}");
    EXPECT_TRUE(r.isOk() && r->status == 200) << (r ? r->body : r.message());
    return json::parse(r->body).as_object();
  };
  auto tp1 = compile(1);
  const std::string tp1Id(tp1["plan_id"].as_string());
  EXPECT_EQ(net::httpGet(url + "/v1/plans/" + tp1Id)->status, 200);
  auto tp2 = compile(2);
  const std::string tp2Id(tp2["plan_id"].as_string());
  EXPECT_EQ(net::httpGet(url + "/v1/plans/" + tp2Id + "/ranks/1")->status, 200)
      << "the newest plan stays even when it alone is over the bound";
  EXPECT_EQ(net::httpGet(url + "/v1/plans/" + tp1Id)->status, 404) << "evicted";
  EXPECT_FALSE(compile(1)["cache_hit"].as_bool()) << "compiled again after eviction";
  compiler.signal(SIGTERM);
  EXPECT_EQ(compiler.wait(10s), 0);
}

} // namespace

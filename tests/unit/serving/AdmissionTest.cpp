#include "llmir/serving/Admission.h"

#include <gtest/gtest.h>

using namespace llmir::serving;
using namespace std::chrono_literals;

TEST(AdmissionTest, UnboundedQueueNeverSheds) {
  AdmissionOptions options; // maxWaitingRequests 0
  EXPECT_FALSE(shedLoad(1'000'000, 1, options));
}

TEST(AdmissionTest, ShedsWhenTheRequestWouldPassTheBound) {
  AdmissionOptions options{.maxWaitingRequests = 4, .shedRetryAfter = 3s};
  EXPECT_FALSE(shedLoad(0, 1, options));
  EXPECT_FALSE(shedLoad(3, 1, options)) << "fills the queue to the bound";
  auto refusal = shedLoad(4, 1, options);
  ASSERT_TRUE(refusal);
  EXPECT_EQ(refusal->httpStatus, 429);
  EXPECT_EQ(refusal->code, "queue_full");
  EXPECT_EQ(refusal->retryAfterSeconds, 3);
  EXPECT_NE(refusal->message.find("4 sequences are waiting"), std::string::npos) << refusal->message;
  // n choices are n sequences.
  EXPECT_TRUE(shedLoad(2, 3, options));
  EXPECT_FALSE(shedLoad(2, 2, options));
}

TEST(AdmissionTest, AnEmptyQueueTakesEvenARequestLargerThanTheBound) {
  AdmissionOptions options{.maxWaitingRequests = 2};
  EXPECT_FALSE(shedLoad(0, 8, options)) << "else it could never be served";
  EXPECT_TRUE(shedLoad(1, 8, options));
}

TEST(AdmissionTest, NoReplicaIs503WithItsOwnRetryAfter) {
  AdmissionOptions options{.noReplicaRetryAfter = 7s};
  Refusal refusal = noReplica(1500ms, options);
  EXPECT_EQ(refusal.httpStatus, 503);
  EXPECT_EQ(refusal.code, "no_replica");
  EXPECT_EQ(refusal.retryAfterSeconds, 7);
  EXPECT_NE(refusal.message.find("waited 1500 ms"), std::string::npos) << refusal.message;
}

TEST(AdmissionTest, RetryAfterIsWholeSecondsAtLeastOne) {
  EXPECT_EQ(retryAfterHeader(0s), "1");
  EXPECT_EQ(retryAfterHeader(-5s), "1");
  EXPECT_EQ(retryAfterHeader(12s), "12");
  EXPECT_EQ(noReplica(0ms, {.noReplicaRetryAfter = 0s}).retryAfterSeconds, 1);
  AdmissionOptions zero{.maxWaitingRequests = 1, .shedRetryAfter = 0s};
  EXPECT_EQ(shedLoad(1, 1, zero)->retryAfterSeconds, 1);
}

namespace llmir::serving {
namespace {

TEST(KeyConcurrencyLimiterTest, EachKeyHasItsOwnBoundAndLeasesReleaseIt) {
  KeyConcurrencyLimiter limiter({.defaultLimit = 2, .perKey = {{"big", 3}, {"free", 0}},
                                 .retryAfter = std::chrono::seconds(2)});
  std::vector<KeyConcurrencyLimiter::Lease> held;
  for (int i = 0; i < 2; ++i)
    held.push_back(std::get<KeyConcurrencyLimiter::Lease>(limiter.acquire("sk-secret-a")));
  auto refused = limiter.acquire("sk-secret-a");
  ASSERT_TRUE(std::holds_alternative<Refusal>(refused));
  const Refusal &refusal = std::get<Refusal>(refused);
  EXPECT_EQ(refusal.httpStatus, 429);
  EXPECT_EQ(refusal.code, "too_many_concurrent_requests");
  EXPECT_EQ(refusal.retryAfterSeconds, 2);
  EXPECT_EQ(refusal.message.find("sk-secret"), std::string::npos) << "the key is not echoed";
  // Another key is not affected; a key with its own limit uses it.
  EXPECT_TRUE(std::holds_alternative<KeyConcurrencyLimiter::Lease>(limiter.acquire("b")));
  for (int i = 0; i < 3; ++i)
    held.push_back(std::get<KeyConcurrencyLimiter::Lease>(limiter.acquire("big")));
  EXPECT_TRUE(std::holds_alternative<Refusal>(limiter.acquire("big")));
  for (int i = 0; i < 10; ++i) // 0: no bound for this key
    held.push_back(std::get<KeyConcurrencyLimiter::Lease>(limiter.acquire("free")));
  EXPECT_EQ(limiter.inFlight("sk-secret-a"), 2u);
  EXPECT_EQ(limiter.totalInFlight(), 2u + 3u + 10u); // "b"'s lease was a temporary: gone
  held.erase(held.begin()); // one of "a"'s requests ends
  EXPECT_EQ(limiter.inFlight("sk-secret-a"), 1u);
  EXPECT_TRUE(std::holds_alternative<KeyConcurrencyLimiter::Lease>(limiter.acquire("sk-secret-a")));
  held.clear();
  EXPECT_EQ(limiter.inFlight("sk-secret-a"), 0u);
  EXPECT_EQ(limiter.inFlight("free"), 0u);
  // A moved-from lease releases nothing twice.
  auto lease = std::get<KeyConcurrencyLimiter::Lease>(limiter.acquire("sk-secret-a"));
  KeyConcurrencyLimiter::Lease moved = std::move(lease);
  lease.release();
  EXPECT_EQ(limiter.inFlight("sk-secret-a"), 1u);
  moved.release();
  EXPECT_EQ(limiter.inFlight("sk-secret-a"), 0u);
}

TEST(ParseApiKeysTest, KeysWithOptionalLimitsCommentsAndErrorsByLine) {
  auto keys = parseApiKeys("# team keys\nsk-a 4\n\n  sk-b  \r\nsk-c\t0\n");
  ASSERT_TRUE(keys.isOk()) << keys.message();
  ASSERT_EQ(keys->size(), 3u);
  EXPECT_EQ((*keys)[0].key, "sk-a");
  EXPECT_EQ((*keys)[0].maxConcurrentRequests, 4u);
  EXPECT_EQ((*keys)[1].key, "sk-b");
  EXPECT_FALSE((*keys)[1].maxConcurrentRequests.has_value());
  EXPECT_EQ((*keys)[2].maxConcurrentRequests, 0u);
  auto bad = parseApiKeys("sk-a 4\nsk-secret lots\n");
  ASSERT_FALSE(bad.isOk());
  EXPECT_NE(bad.message().find("line 2"), std::string::npos) << bad.message();
  EXPECT_EQ(bad.message().find("sk-secret"), std::string::npos) << "the key is not echoed";
  EXPECT_FALSE(parseApiKeys("sk-a 99999999999\n").isOk());
  EXPECT_FALSE(parseApiKeys("sk-a -1\n").isOk());
}

} // namespace
} // namespace llmir::serving

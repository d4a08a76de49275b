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

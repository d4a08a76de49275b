// Request validation: each bad parameter is rejected with its name.
#include "llmir/serving/RequestParams.h"

#include <gtest/gtest.h>

namespace llmir::serving {
namespace {

RequestParams valid() {
  RequestParams p;
  p.promptIds = {1, 2, 3};
  p.maxTokens = 4;
  return p;
}

const RequestLimits kLimits{/*maxModelLen=*/16, /*vocabSize=*/10};

std::string paramOf(const RequestParams &p) {
  auto error = validateRequest(p, kLimits);
  return error ? error->param : "";
}

TEST(RequestParams, AcceptsAValidRequest) {
  EXPECT_FALSE(validateRequest(valid(), kLimits));
}

TEST(RequestParams, NamesTheOffendingParameter) {
  auto p = valid();
  p.promptIds.clear();
  EXPECT_EQ(paramOf(p), "prompt");
  p = valid();
  p.promptIds.push_back(10);
  EXPECT_EQ(paramOf(p), "prompt");
  p = valid();
  p.sampling.temperature = -0.5f;
  EXPECT_EQ(paramOf(p), "temperature");
  p = valid();
  p.sampling.topP = 0.0f;
  EXPECT_EQ(paramOf(p), "top_p");
  p = valid();
  p.sampling.topK = -2;
  EXPECT_EQ(paramOf(p), "top_k");
  p = valid();
  p.maxTokens = 0;
  EXPECT_EQ(paramOf(p), "max_tokens");
  p = valid();
  p.minTokens = 5;
  EXPECT_EQ(paramOf(p), "min_tokens");
  p = valid();
  p.n = 0;
  EXPECT_EQ(paramOf(p), "n");
  p = valid();
  p.topLogprobs = 21;
  EXPECT_EQ(paramOf(p), "logprobs");
  p = valid();
  p.stop = {""};
  EXPECT_EQ(paramOf(p), "stop");
}

TEST(RequestParams, ContextLimitCountsPromptAndCompletion) {
  auto p = valid();
  p.maxTokens = 13; // 3 + 13 = 16 fits exactly
  EXPECT_FALSE(validateRequest(p, kLimits));
  p.maxTokens = 14;
  auto error = validateRequest(p, kLimits);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->param, "max_tokens");
  EXPECT_NE(error->message.find("maximum context length is 16"), std::string::npos);
  p.promptIds.assign(16, 1);
  p.maxTokens = 1;
  EXPECT_EQ(paramOf(p), "prompt");
}

} // namespace
} // namespace llmir::serving

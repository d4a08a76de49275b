// llmir-bench's parts that need no server: SSE framing across arbitrary
// chunk boundaries, percentiles, and the report's aggregation rules.
#include "BenchReport.h"
#include "SseParser.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <algorithm>

namespace llmir::bench {
namespace {

std::vector<std::string> parseInPieces(const std::string &stream, size_t pieceSize) {
  SseParser parser;
  std::vector<std::string> events;
  for (size_t i = 0; i < stream.size(); i += pieceSize)
    parser.feed(std::string_view(stream).substr(i, pieceSize),
                [&](std::string_view data) { events.emplace_back(data); });
  return events;
}

TEST(SseParser, EventsSurviveEverySplit) {
  const std::string stream = "data: {\"a\":1}\n\n"
                             ": keep-alive comment\n\n"
                             "data: {\"b\":2}\r\n\r\n"
                             "event: x\ndata:no-space\n\n"
                             "data: line1\ndata: line2\n\n"
                             "data: [DONE]\n\n";
  const std::vector<std::string> expected = {"{\"a\":1}", "{\"b\":2}", "no-space",
                                             "line1\nline2", "[DONE]"};
  for (size_t piece = 1; piece <= stream.size(); ++piece)
    EXPECT_EQ(parseInPieces(stream, piece), expected) << "piece size " << piece;
}

TEST(SseParser, IncompleteEventIsHeldBack) {
  EXPECT_TRUE(parseInPieces("data: {\"a\":1}\n", 4).empty());
}

TEST(Percentile, InterpolatesLikeNumpy) {
  const std::vector<double> sorted = {1, 2, 3, 4};
  EXPECT_DOUBLE_EQ(percentile(sorted, 0), 1);
  EXPECT_DOUBLE_EQ(percentile(sorted, 50), 2.5);
  EXPECT_DOUBLE_EQ(percentile(sorted, 90), 3.7);
  EXPECT_DOUBLE_EQ(percentile(sorted, 100), 4);
  EXPECT_DOUBLE_EQ(percentile({7}, 99), 7);
  EXPECT_EQ(summarize({}).count, 0u);
  LatencySummary s = summarize({3, 1, 2});
  EXPECT_DOUBLE_EQ(s.mean, 2);
  EXPECT_DOUBLE_EQ(s.median, 2);
}

TEST(BenchReport, AggregatesSuccessesAndCountsFailures) {
  BenchmarkRun run;
  run.durationSeconds = 2.0;
  RequestResult a;
  a.success = true;
  a.promptTokens = 10;
  a.outputTokens = 5;
  a.ttft = 0.1;
  a.e2e = 0.5; // TPOT (0.5 - 0.1) / 4 = 100 ms
  a.itl = {0.1, 0.1, 0.1, 0.1};
  RequestResult b = a;
  b.outputTokens = 1; // no TPOT for a single token
  b.itl.clear();
  RequestResult failed;
  failed.error = "HTTP 500: boom";
  run.results = {a, b, failed, failed};

  BenchmarkReport r = buildReport(run);
  EXPECT_EQ(r.completed, 2);
  EXPECT_EQ(r.failed, 2);
  EXPECT_EQ(r.errors.at("HTTP 500: boom"), 2);
  EXPECT_EQ(r.totalInputTokens, 20);
  EXPECT_EQ(r.totalOutputTokens, 6);
  EXPECT_DOUBLE_EQ(r.requestThroughput, 1.0);
  EXPECT_DOUBLE_EQ(r.outputThroughput, 3.0);
  EXPECT_DOUBLE_EQ(r.totalTokenThroughput, 13.0);
  EXPECT_EQ(r.tpotMs.count, 1u);
  EXPECT_NEAR(r.tpotMs.mean, 100.0, 1e-9);
  EXPECT_EQ(r.itlMs.count, 4u);
  EXPECT_NEAR(r.ttftMs.median, 100.0, 1e-9);

  BenchmarkOptions options;
  boost::json::value json = boost::json::parse(formatJson(r, options, "m"));
  EXPECT_EQ(json.at("completed").as_int64(), 2);
  EXPECT_EQ(json.at("failed").as_int64(), 2);
  EXPECT_EQ(json.at("request_rate").as_string(), "inf");
  EXPECT_NEAR(json.at("mean_tpot_ms").as_double(), 100.0, 1e-9);
  EXPECT_NE(formatTable(r, options, "m").find("Failed requests:"), std::string::npos);
}

TEST(BenchmarkOptions, RejectsBadValues) {
  BenchmarkOptions o;
  EXPECT_TRUE(validate(o).isOk());
  o.numPrompts = 0;
  EXPECT_FALSE(validate(o).isOk());
  o = {};
  o.requestRate = 0;
  EXPECT_FALSE(validate(o).isOk());
  o = {};
  o.baseUrl = "ftp://x";
  EXPECT_FALSE(validate(o).isOk());
  for (double topP : {0.0, -0.5, 1.5}) {
    o = {};
    o.topP = topP;
    EXPECT_FALSE(validate(o).isOk()) << topP;
  }
  o = {};
  o.topP = 0.9;
  EXPECT_TRUE(validate(o).isOk());
  for (const char *extra : {"[1]", "{\"a\":", "0.5"}) {
    o = {};
    o.extraBody = extra;
    EXPECT_FALSE(validate(o).isOk()) << extra;
  }
  o.extraBody = "{\"presence_penalty\": 0.5}";
  EXPECT_TRUE(validate(o).isOk());
}

TEST(MakePrompts, RandomPromptsHavePromptLenWordsAndDependOnSeed) {
  BenchmarkOptions o;
  o.numPrompts = 3;
  o.promptLen = 7;
  auto prompts = makePrompts(o);
  ASSERT_TRUE(prompts.isOk());
  ASSERT_EQ(prompts->size(), 3u);
  for (const std::string &p : *prompts)
    EXPECT_EQ(std::count(p.begin(), p.end(), ' '), 6);
  o.seed = 1;
  EXPECT_NE(makePrompts(o)->front(), prompts->front());
  o.promptsFile = "/nonexistent/prompts.txt";
  EXPECT_FALSE(makePrompts(o).isOk());
}

} // namespace
} // namespace llmir::bench

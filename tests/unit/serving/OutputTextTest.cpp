// Output text: deltas concatenate to the decoded ids, stop strings cut the
// text and are never streamed.
#include "DemoModel.h"

#include "llmir/serving/OutputText.h"

namespace llmir::serving {
namespace {

using testing::DemoModel;

TEST(OutputText, DeltasConcatenateToTheDecodedText) {
  const DemoModel *demo = DemoModel::get();
  ASSERT_TRUE(demo);
  const auto &ids = demo->cases[0].greedyIds;
  OutputText out(demo->tokenizer, {});
  std::string streamed;
  for (int32_t id : ids) {
    auto delta = out.push(id, true);
    ASSERT_TRUE(delta.isOk()) << delta.message();
    EXPECT_FALSE(delta->stopped);
    streamed += delta->text;
  }
  streamed += out.finish();
  EXPECT_EQ(streamed, *demo->tokenizer.decode(ids, /*skipSpecialTokens=*/true));
}

TEST(OutputText, StopStringCutsTheTextAndIsNeverStreamed) {
  const DemoModel *demo = DemoModel::get();
  ASSERT_TRUE(demo);
  const auto &ids = demo->cases[1].greedyIds;
  const std::string full = *demo->tokenizer.decode(ids, true);
  ASSERT_GT(full.size(), 20u);
  const std::string stop = full.substr(10, 4);
  const size_t cut = full.find(stop);
  OutputText out(demo->tokenizer, {stop, "never-in-output"});
  std::string streamed;
  bool stopped = false;
  for (int32_t id : ids) {
    auto delta = out.push(id, true);
    ASSERT_TRUE(delta.isOk());
    streamed += delta->text;
    // Nothing past the cut is ever released.
    EXPECT_LE(streamed.size(), cut);
    if (delta->stopped) {
      stopped = true;
      break;
    }
  }
  EXPECT_TRUE(stopped);
  streamed += out.finish();
  EXPECT_EQ(streamed, full.substr(0, cut));
}

} // namespace
} // namespace llmir::serving

#include "llmir/support/Strings.h"

#include <gtest/gtest.h>

using llmir::splitNonEmpty;
using Items = std::vector<std::string>;

TEST(StringsTest, SplitNonEmptyKeepsTheItemsInOrderAndDropsEmptyOnes) {
  EXPECT_EQ(splitNonEmpty("cubic,reno"), (Items{"cubic", "reno"}));
  EXPECT_EQ(splitNonEmpty(",a,,b,"), (Items{"a", "b"}));
  EXPECT_EQ(splitNonEmpty("ADD"), (Items{"ADD"}));
  EXPECT_EQ(splitNonEmpty(""), Items{});
  EXPECT_EQ(splitNonEmpty(",,,"), Items{});
  EXPECT_EQ(splitNonEmpty("x:y", ':'), (Items{"x", "y"}));
}

#include "llmir/support/NestingDepth.h"

#include <gtest/gtest.h>

using llmir::checkNestingDepth;

TEST(NestingDepthTest, CountsBracketsOutsideStringsAndComments) {
  EXPECT_TRUE(checkNestingDepth("{ ( [ ] ) }", "x", 3).isOk());
  auto deep = checkNestingDepth("a\n{ ( [ [ ] ] ) }", "in.mlir", 3);
  ASSERT_FALSE(deep.isOk());
  EXPECT_EQ(deep.message(),
            "in.mlir:2: brackets nest deeper than 3 levels (refused before parsing; "
            "docs/reliability.md)");
  // Brackets in a string literal (with an escaped quote) or a comment do not count.
  EXPECT_TRUE(checkNestingDepth("{ \"((((\\\"((((\" }", "x", 1).isOk());
  EXPECT_TRUE(checkNestingDepth("{ // ((((((\n}", "x", 1).isOk());
  // Unbalanced closers never go below zero.
  EXPECT_TRUE(checkNestingDepth("))))]]]}}} { }", "x", 1).isOk());
}

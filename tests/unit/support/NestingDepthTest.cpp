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

TEST(NestingDepthTest, CountsTypeAndAttributeBrackets) {
  EXPECT_TRUE(checkNestingDepth("tensor<4xvector<2xf32>>", "x", 2).isOk());
  auto deep = checkNestingDepth("!a<!b<!c<i8>>>", "t.mlir", 2);
  ASSERT_FALSE(deep.isOk());
  EXPECT_NE(deep.message().find("t.mlir:1: brackets nest deeper than 2"), std::string::npos);
  // Mixed with the other brackets, one depth.
  EXPECT_FALSE(checkNestingDepth("{ tensor<( > }", "x", 2).isOk());
  // `->` and `>=` close nothing (were they counted as closers, these would
  // stay within the bound).
  EXPECT_TRUE(checkNestingDepth("(i32) -> i32", "x", 1).isOk());
  EXPECT_FALSE(checkNestingDepth("(a -> (", "x", 1).isOk());
  EXPECT_FALSE(checkNestingDepth("affine_set<(d0 >= 0 <", "x", 2).isOk());
  EXPECT_TRUE(checkNestingDepth("affine_set<(d0) : (d0 >= 0)> <", "x", 2).isOk());
  std::string deepAngles(10000, '<');
  EXPECT_FALSE(checkNestingDepth("%0 = \"t.x\"() : () -> " + deepAngles, "x").isOk());
}

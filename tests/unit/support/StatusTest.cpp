#include "llmir/support/Status.h"

#include <gtest/gtest.h>

namespace {

llmir::Result<int> parsePositive(int v) {
  if (v <= 0)
    return llmir::Status::error("value " + std::to_string(v) +
                                " must be positive");
  return v;
}

llmir::Status chain(int v) {
  LLMIR_RETURN_IF_ERROR(parsePositive(v).status());
  return llmir::Status::ok();
}

TEST(Status, OkAndError) {
  EXPECT_TRUE(llmir::Status::ok().isOk());
  llmir::Status e = llmir::Status::error("bad");
  EXPECT_FALSE(e.isOk());
  EXPECT_EQ(e.withContext("loading x").message(), "loading x: bad");
}

TEST(Result, CarriesValueOrStatus) {
  auto good = parsePositive(3);
  ASSERT_TRUE(good.isOk());
  EXPECT_EQ(*good, 3);
  auto bad = parsePositive(-1);
  ASSERT_FALSE(bad.isOk());
  EXPECT_EQ(bad.message(), "value -1 must be positive");
  EXPECT_FALSE(chain(0).isOk());
  EXPECT_TRUE(chain(1).isOk());
}

// The value of a temporary Result is moved out, not copied: a type that
// counts its copies sees none.
struct CopyCounter {
  int *copies;
  explicit CopyCounter(int *c) : copies(c) {}
  CopyCounter(const CopyCounter &o) : copies(o.copies) { ++*copies; }
  CopyCounter(CopyCounter &&) noexcept = default;
  CopyCounter &operator=(const CopyCounter &) = default;
  CopyCounter &operator=(CopyCounter &&) noexcept = default;
};

llmir::Result<CopyCounter> makeCounter(int *copies) { return CopyCounter(copies); }

TEST(Result, ValueOfATemporaryIsMovedOut) {
  int copies = 0;
  CopyCounter moved = *makeCounter(&copies);
  CopyCounter alsoMoved = std::move(*makeCounter(&copies));
  EXPECT_EQ(copies, 0);
  auto held = makeCounter(&copies);
  CopyCounter copied = *held; // an lvalue Result still copies
  EXPECT_EQ(copies, 1);
  (void)moved, (void)alsoMoved, (void)copied;
}

} // namespace

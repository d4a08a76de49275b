// A bound on bracket nesting in textual IR, checked before MLIR's recursive
// descent parser sees the text: 10,000 nested regions overflowed its stack
// and segfaulted llmir-opt and llmir-compile (issue 14), and so did
// 10,000 nested type brackets (`<`).
#pragma once

#include "llmir/support/Status.h"

#include <cstddef>
#include <string_view>

namespace llmir {

/// Deepest nesting real IR needs is a few dozen; this leaves room.
constexpr size_t kMaxIrNestingDepth = 512;

/// Fails when `(`, `[`, `{` and `<` nest deeper than `maxDepth` in `text`,
/// outside string literals and `//` comments. `<...>` counts because MLIR's
/// type and attribute parsers recurse on it as on the others (10,000 nested
/// `tensor<` overflowed the stack too); `->` and `>=` do not close it.
/// `source` names the input in the error.
Status checkNestingDepth(std::string_view text, std::string_view source,
                         size_t maxDepth = kMaxIrNestingDepth);

} // namespace llmir

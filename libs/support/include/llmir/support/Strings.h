// Small string helpers shared by the libraries.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace llmir {

/// The non-empty items of `text` between `separator`s, in order: "a,,b,"
/// gives {"a", "b"}. For option values such as LLMIR_CUDA_SKIP_OPS or a
/// list of TCP congestion algorithms.
std::vector<std::string> splitNonEmpty(std::string_view text, char separator = ',');

} // namespace llmir

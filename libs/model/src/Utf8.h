// UTF-8 validation and lossy decoding (invalid bytes become U+FFFD the way
// Rust's String::from_utf8_lossy does, so decode matches Hugging Face).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace llmir::model::utf8 {

/// Byte offset of the first invalid or truncated sequence, nullopt if valid.
std::optional<size_t> firstInvalid(std::string_view text);

/// Appends `bytes` to `out` as valid UTF-8, replacing each maximal invalid
/// subsequence with U+FFFD. When `final` is false, an incomplete sequence at
/// the very end is left unconsumed (it may be completed by later bytes).
/// Returns the number of bytes consumed.
size_t appendLossy(std::string_view bytes, bool final, std::string &out);

/// Appends the UTF-8 encoding of a code point (must be a scalar value).
void appendCodepoint(uint32_t codepoint, std::string &out);

/// Decodes the code point starting at `text[pos]` (text must be valid) and
/// advances `pos` past it.
uint32_t nextCodepoint(std::string_view text, size_t &pos);

} // namespace llmir::model::utf8

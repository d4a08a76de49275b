// GPT-2's byte-level alphabet: every byte maps to a printable code point so
// that BPE vocabularies never contain raw control bytes or spaces.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace llmir::model::bytelevel {

/// Appends the byte-level spelling of `bytes` (one code point per byte).
void encode(std::string_view bytes, std::string &out);

/// The byte a byte-level code point stands for; nullopt for other code points.
std::optional<uint8_t> byteFor(uint32_t codepoint);

/// GPT-2's pre-tokenization regex, used by ByteLevel when use_regex is true.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

} // namespace llmir::model::bytelevel

#include "Utf8.h"

namespace llmir::model::utf8 {
namespace {

enum class SequenceKind { Valid, Invalid, Truncated };

struct Sequence {
  SequenceKind kind;
  size_t length; // bytes of the valid sequence, or of the maximal invalid prefix
};

/// Classifies the sequence at bytes[pos] per the Unicode "maximal subpart"
/// rule: second-byte ranges exclude overlongs, surrogates and > U+10FFFF.
Sequence classify(std::string_view bytes, size_t pos) {
  const auto byteAt = [&](size_t i) { return static_cast<uint8_t>(bytes[i]); };
  const uint8_t lead = byteAt(pos);
  if (lead < 0x80)
    return {SequenceKind::Valid, 1};
  size_t needed = 0;
  uint8_t low = 0x80, high = 0xbf;
  if (lead >= 0xc2 && lead <= 0xdf) {
    needed = 2;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    needed = 3;
    if (lead == 0xe0)
      low = 0xa0;
    if (lead == 0xed)
      high = 0x9f;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    needed = 4;
    if (lead == 0xf0)
      low = 0x90;
    if (lead == 0xf4)
      high = 0x8f;
  } else {
    return {SequenceKind::Invalid, 1};
  }
  for (size_t i = 1; i < needed; ++i) {
    if (pos + i >= bytes.size())
      return {SequenceKind::Truncated, i};
    const uint8_t next = byteAt(pos + i);
    const uint8_t lo = i == 1 ? low : 0x80;
    const uint8_t hi = i == 1 ? high : 0xbf;
    if (next < lo || next > hi)
      return {SequenceKind::Invalid, i};
  }
  return {SequenceKind::Valid, needed};
}

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

} // namespace

std::optional<size_t> firstInvalid(std::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    const Sequence sequence = classify(text, pos);
    if (sequence.kind != SequenceKind::Valid)
      return pos;
    pos += sequence.length;
  }
  return std::nullopt;
}

size_t appendLossy(std::string_view bytes, bool final, std::string &out) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Sequence sequence = classify(bytes, pos);
    if (sequence.kind == SequenceKind::Valid) {
      out.append(bytes.substr(pos, sequence.length));
    } else if (sequence.kind == SequenceKind::Truncated && !final) {
      return pos;
    } else {
      out.append(kReplacement);
    }
    pos += sequence.length;
  }
  return pos;
}

void appendCodepoint(uint32_t codepoint, std::string &out) {
  if (codepoint < 0x80) {
    out += static_cast<char>(codepoint);
  } else if (codepoint < 0x800) {
    out += static_cast<char>(0xc0 | (codepoint >> 6));
    out += static_cast<char>(0x80 | (codepoint & 0x3f));
  } else if (codepoint < 0x10000) {
    out += static_cast<char>(0xe0 | (codepoint >> 12));
    out += static_cast<char>(0x80 | ((codepoint >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (codepoint & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (codepoint >> 18));
    out += static_cast<char>(0x80 | ((codepoint >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((codepoint >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (codepoint & 0x3f));
  }
}

uint32_t nextCodepoint(std::string_view text, size_t &pos) {
  const uint8_t lead = static_cast<uint8_t>(text[pos]);
  const size_t length = lead < 0x80 ? 1 : lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4;
  uint32_t codepoint = length == 1   ? lead
                       : length == 2 ? lead & 0x1fu
                       : length == 3 ? lead & 0x0fu
                                     : lead & 0x07u;
  for (size_t i = 1; i < length && pos + i < text.size(); ++i)
    codepoint = (codepoint << 6) | (static_cast<uint8_t>(text[pos + i]) & 0x3fu);
  pos += length;
  return codepoint;
}

} // namespace llmir::model::utf8

// UTF-8 helpers: Python strings count, index and slice by code point, and a
// few of its string methods look at character classes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace llmir::jinja::utf8 {

/// The code point at s[i] and its byte length (invalid bytes count as one
/// code point each, U+FFFD).
inline uint32_t decode(std::string_view s, size_t i, size_t &length) {
  auto b = static_cast<unsigned char>(s[i]);
  auto cont = [&](size_t k) {
    return i + k < s.size() && (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
  };
  auto at = [&](size_t k) { return uint32_t(static_cast<unsigned char>(s[i + k]) & 0x3F); };
  if (b < 0x80) {
    length = 1;
    return b;
  }
  if ((b & 0xE0) == 0xC0 && b >= 0xC2 && cont(1)) {
    length = 2;
    return (uint32_t(b & 0x1F) << 6) | at(1);
  }
  if ((b & 0xF0) == 0xE0 && cont(1) && cont(2)) {
    length = 3;
    return (uint32_t(b & 0x0F) << 12) | (at(1) << 6) | at(2);
  }
  if ((b & 0xF8) == 0xF0 && b <= 0xF4 && cont(1) && cont(2) && cont(3)) {
    length = 4;
    return (uint32_t(b & 0x07) << 18) | (at(1) << 12) | (at(2) << 6) | at(3);
  }
  length = 1;
  return 0xFFFD;
}

inline void append(std::string &out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

inline bool isAscii(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80)
      return false;
  return true;
}

/// Byte offsets of each code point's start, plus s.size() at the end.
inline std::vector<size_t> offsets(std::string_view s) {
  std::vector<size_t> out;
  out.reserve(s.size() + 1);
  for (size_t i = 0; i < s.size();) {
    out.push_back(i);
    size_t n = 1;
    decode(s, i, n);
    i += n;
  }
  out.push_back(s.size());
  return out;
}

inline size_t length(std::string_view s) {
  if (isAscii(s))
    return s.size();
  size_t count = 0;
  for (size_t i = 0; i < s.size(); ++count) {
    size_t n = 1;
    decode(s, i, n);
    i += n;
  }
  return count;
}

/// Python's str.isspace() for one code point.
inline bool isSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/// Simple case mapping for ASCII, Latin-1, Latin Extended-A, Greek and
/// Cyrillic (what chat templates meet); other code points are unchanged.
inline uint32_t toUpper(uint32_t c) {
  if (c >= 'a' && c <= 'z') return c - 32;
  if (c < 0x80) return c;
  if ((c >= 0xE0 && c <= 0xFE && c != 0xF7)) return c - 32;
  if (c == 0xFF) return 0x178;
  if (c >= 0x100 && c <= 0x17F && c != 0x130 && c != 0x131 && c != 0x138 && c != 0x149 && c != 0x17F) {
    bool oddPairs = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E);
    if (oddPairs ? (c % 2 == 0) : (c % 2 == 1)) return c - 1;
    return c;
  }
  if (c >= 0x3B1 && c <= 0x3C9 && c != 0x3C2) return c - 32;
  if (c == 0x3C2) return 0x3A3;
  if (c >= 0x430 && c <= 0x44F) return c - 32;
  if (c >= 0x450 && c <= 0x45F) return c - 80;
  return c;
}

inline uint32_t toLower(uint32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c < 0x80) return c;
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;
  if (c == 0x178) return 0xFF;
  if (c >= 0x100 && c <= 0x17F && c != 0x130 && c != 0x131 && c != 0x138 && c != 0x149 && c != 0x17F) {
    bool oddPairs = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E);
    if (oddPairs ? (c % 2 == 1) : (c % 2 == 0)) return c + 1;
    return c;
  }
  if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 32;
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  if (c >= 0x400 && c <= 0x40F) return c + 80;
  return c;
}

inline bool isAlpha(uint32_t c) {
  if (c < 0x80) return (c | 32) >= 'a' && (c | 32) <= 'z';
  return toUpper(c) != c || toLower(c) != c || (c >= 0x4E00 && c <= 0x9FFF) ||
         (c >= 0x3040 && c <= 0x30FF) || (c >= 0xAC00 && c <= 0xD7A3);
}

inline bool isDigit(uint32_t c) { return c >= '0' && c <= '9'; }

} // namespace llmir::jinja::utf8

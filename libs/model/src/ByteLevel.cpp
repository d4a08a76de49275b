#include "ByteLevel.h"

#include "Utf8.h"

#include <array>

namespace llmir::model::bytelevel {
namespace {

struct Alphabet {
  std::array<uint32_t, 256> codepointOf{};
  std::array<std::string, 256> spelling;

  Alphabet() {
    // Printable Latin-1 bytes keep their own code point; the rest (control
    // bytes, space, DEL, NBSP, soft hyphen) move to U+0100 upwards in order.
    uint32_t next = 256;
    for (uint32_t byte = 0; byte < 256; ++byte) {
      const bool printable = (byte >= 0x21 && byte <= 0x7e) ||
                             (byte >= 0xa1 && byte <= 0xac) || (byte >= 0xae);
      codepointOf[byte] = printable ? byte : next++;
      utf8::appendCodepoint(codepointOf[byte], spelling[byte]);
    }
  }
};

const Alphabet &alphabet() {
  static const Alphabet instance;
  return instance;
}

} // namespace

void encode(std::string_view bytes, std::string &out) {
  const Alphabet &table = alphabet();
  for (char byte : bytes)
    out += table.spelling[static_cast<uint8_t>(byte)];
}

std::optional<uint8_t> byteFor(uint32_t codepoint) {
  if (codepoint < 256) {
    const bool printable = (codepoint >= 0x21 && codepoint <= 0x7e) ||
                           (codepoint >= 0xa1 && codepoint <= 0xac) || codepoint >= 0xae;
    if (printable)
      return static_cast<uint8_t>(codepoint);
    return std::nullopt;
  }
  static const std::array<int, 68> remapped = [] {
    std::array<int, 68> bytes{};
    const Alphabet &table = alphabet();
    for (uint32_t byte = 0; byte < 256; ++byte)
      if (table.codepointOf[byte] >= 256)
        bytes[table.codepointOf[byte] - 256] = static_cast<int>(byte);
    return bytes;
  }();
  if (codepoint - 256 < remapped.size())
    return static_cast<uint8_t>(remapped[codepoint - 256]);
  return std::nullopt;
}

} // namespace llmir::model::bytelevel

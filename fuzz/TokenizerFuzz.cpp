// tokenizer.json load, encode and decode. The first byte picks the mode:
// even: the input is a tokenizer.json (parsed; when it loads, it encodes a
// fixed text and decodes the result); odd: the rest is text for the demo
// model's tokenizer to encode, and ids (4 bytes each) for it to decode and
// stream-decode.
#include "llmir/model/Tokenizer.h"

#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

using llmir::model::Tokenizer;

namespace {
const Tokenizer &demo() {
  static const Tokenizer tokenizer = [] {
    auto loaded = Tokenizer::load(std::string(LLMIR_SOURCE_DIR) +
                                  "/models/demo-llama-4m/tokenizer.json");
    if (!loaded)
      __builtin_trap();
    return std::move(*loaded);
  }();
  return tokenizer;
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0)
    return 0;
  std::string_view rest(reinterpret_cast<const char *>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    auto parsed = Tokenizer::parse(rest, "fuzz/tokenizer.json");
    if (parsed) {
      auto ids = parsed->encode("def fibonacci(n): return n <|endoftext|> é 😀");
      if (ids)
        (void)parsed->decode(*ids);
    }
    return 0;
  }
  const Tokenizer &tokenizer = demo();
  auto ids = tokenizer.encode(rest);
  if (ids) {
    auto text = tokenizer.decode(*ids);
    if (!text)
      __builtin_trap(); // encode's ids must decode
  }
  std::vector<int32_t> raw(rest.size() / 4);
  if (!raw.empty())
    std::memcpy(raw.data(), rest.data(), raw.size() * 4);
  (void)tokenizer.decode(raw, data[0] & 2);
  llmir::model::StreamDecoder stream(tokenizer);
  for (int32_t id : raw)
    if (!stream.push(id))
      break;
  (void)stream.flush();
  return 0;
}

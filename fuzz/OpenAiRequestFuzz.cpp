// The OpenAI request parser: any body for either endpoint gives a request or
// an error naming a parameter.
#include "llmir/openai/OpenAiProtocol.h"

#include <cstdint>
#include <string_view>
#include <variant>

using namespace llmir::openai;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0)
    return 0;
  const Endpoint endpoint = data[0] % 2 ? Endpoint::Chat : Endpoint::Completions;
  auto parsed = parseRequest(
      endpoint, std::string_view(reinterpret_cast<const char *>(data) + 1, size - 1));
  if (auto *error = std::get_if<ApiError>(&parsed); error && error->message.empty())
    __builtin_trap(); // an error must say what is wrong
  return 0;
}

// config.json: any text gives a ModelConfig within the documented bounds, or
// an error.
#include "llmir/model/ModelConfig.h"

#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  auto config = llmir::model::parseModelConfig(
      std::string_view(reinterpret_cast<const char *>(data), size), "config.json");
  if (config && (config->vocabSize > llmir::model::kMaxVocabSize || config->numLayers > 4096 ||
                 config->numLayers < 1 || config->numHeads < 1))
    __builtin_trap(); // accepted outside the bounds
  return 0;
}

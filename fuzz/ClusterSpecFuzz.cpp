// cluster-spec YAML: any text gives a spec or an error (yaml-cpp throws are
// caught at the edge).
#include "llmir/compiler/ClusterSpec.h"

#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  (void)llmir::compiler::parseClusterSpec(
      std::string(reinterpret_cast<const char *>(data), size), "fuzz.yaml");
  return 0;
}

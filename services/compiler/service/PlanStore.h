// The compiler service's plans: compiled once per content hash (model config,
// safetensors headers and compile options) and kept in memory.
#pragma once

#include "llmir/compiler/Compile.h"
#include "llmir/support/Status.h"

#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace llmir::compiler_service {

struct CompileRequest {
  std::string modelDir;
  compiler::CompileOptions options;
};

struct Plan {
  std::string id;
  compiler::CompiledModel compiled;
};

/// The content hash of a compile: config.json, every *.safetensors header
/// (and the index, when sharded) and the options. Changing a weight's bytes
/// without its header keeps the id: a plan depends only on names and shapes.
Result<std::string> planId(const CompileRequest &request);

class PlanStore {
public:
  struct Lookup {
    std::shared_ptr<const Plan> plan;
    bool cacheHit = false;
  };
  /// The cached plan for this content, or compiles it (one compile at a time).
  Result<Lookup> compile(const CompileRequest &request);
  /// A plan compiled earlier, or null.
  std::shared_ptr<const Plan> find(const std::string &id) const;

private:
  mutable std::mutex mu_;
  std::mutex compileMu_;
  std::map<std::string, std::shared_ptr<const Plan>> plans_;
};

} // namespace llmir::compiler_service

// The compiler service's plans: compiled once per content hash (model config,
// safetensors headers and compile options) and kept in memory.
#pragma once

#include "llmir/compiler/Compile.h"
#include "llmir/support/Status.h"

#include <list>
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
  /// Serialized size of the plan and its programs: what the cache counts.
  uint64_t bytes = 0;
};

/// The content hash of a compile: config.json, every *.safetensors header
/// (and the index, when sharded) and the options. Changing a weight's bytes
/// without its header keeps the id: a plan depends only on names and shapes.
Result<std::string> planId(const CompileRequest &request);

/// Plans kept in memory, least recently used evicted past `maxBytes` (issue
/// 14: five distinct compiles took the service from 430 MB to 2.1 GB). The
/// newest plan always stays, even when it alone is larger.
class PlanStore {
public:
  explicit PlanStore(uint64_t maxBytes = uint64_t(1) << 30) : maxBytes_(maxBytes) {}
  struct Lookup {
    std::shared_ptr<const Plan> plan;
    bool cacheHit = false;
  };
  /// The cached plan for this content, or compiles it (one compile at a time).
  Result<Lookup> compile(const CompileRequest &request);
  /// A plan compiled earlier and still cached, or null.
  std::shared_ptr<const Plan> find(const std::string &id);
  uint64_t cachedBytes() const;

private:
  mutable std::mutex mu_;
  std::mutex compileMu_;
  uint64_t maxBytes_;
  uint64_t bytes_ = 0;
  std::list<std::string> recency_; // most recently used first
  struct Entry {
    std::shared_ptr<const Plan> plan;
    std::list<std::string>::iterator position;
  };
  std::map<std::string, Entry> plans_;
};

} // namespace llmir::compiler_service

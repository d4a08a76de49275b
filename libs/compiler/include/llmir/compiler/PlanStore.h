// The compiler service's plans: compiled once per content hash (model config,
// safetensors headers and compile options) and kept in memory.
#pragma once

#include "llmir/compiler/Compile.h"
#include "llmir/support/Status.h"

#include <chrono>
#include <condition_variable>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace llmir::compiler {

struct CompileRequest {
  std::string modelDir;
  CompileOptions options;
};

struct Plan {
  std::string id;
  CompiledModel compiled;
  /// Serialized size of the plan and its programs: what the cache counts.
  uint64_t bytes = 0;
};

/// The content hash of a compile: config.json, every *.safetensors header
/// (and the index, when sharded) and the options. Changing a weight's bytes
/// without its header keeps the id: a plan depends only on names and shapes.
Result<std::string> planId(const CompileRequest &request);

struct PlanStoreOptions {
  /// Serialized bytes of the plans kept; least recently used evicted past it.
  uint64_t maxBytes = uint64_t(1) << 30;
  /// Compiles running at once; a request for another plan beyond it is
  /// answered Busy at once (it holds no thread waiting).
  unsigned maxConcurrent = 2;
  /// A compile running longer is cancelled (checked between layers, passes
  /// and ranks); zero: no deadline. Finer than the milliseconds of
  /// compile.timeout-ms so that a test can set one no compile meets.
  std::chrono::nanoseconds deadline{std::chrono::minutes(5)};
};

/// Plans kept in memory, least recently used evicted past `maxBytes` (issue
/// 14: five distinct compiles took the service from 430 MB to 2.1 GB). The
/// newest plan always stays, even when it alone is larger. Compiles of
/// different plans run concurrently up to `maxConcurrent`; requests for a
/// plan already being compiled wait for that compile instead of starting
/// another (issue 14: compiles were serialised, one slow compile blocked all).
class PlanStore {
public:
  explicit PlanStore(PlanStoreOptions options = {}) : options_(options) {}
  enum class Outcome {
    Ok,
    Busy,             // maxConcurrent compiles are running: retry later
    DeadlineExceeded, // cancelled at the deadline
    Failed,           // bad model directory, compile error
  };
  struct Lookup {
    Outcome outcome = Outcome::Failed;
    std::shared_ptr<const Plan> plan; // set when Ok
    bool cacheHit = false;
    std::string error; // set unless Ok
  };
  /// The cached plan for this content, or compiles it.
  Lookup compile(const CompileRequest &request);
  /// Compiles running now.
  unsigned compilesRunning() const;
  /// A plan compiled earlier and still cached, or null.
  std::shared_ptr<const Plan> find(const std::string &id);
  uint64_t cachedBytes() const;

private:
  /// The outcome of a compile others may be waiting for.
  struct InFlight {
    bool done = false;
    Lookup result;
  };
  Lookup runCompile(const CompileRequest &request, const std::string &id);
  void insert(std::shared_ptr<const Plan> plan);

  mutable std::mutex mu_;
  std::condition_variable compiled_;
  PlanStoreOptions options_;
  std::map<std::string, std::shared_ptr<InFlight>> inFlight_; // by plan id
  uint64_t bytes_ = 0;
  std::list<std::string> recency_; // most recently used first
  struct Entry {
    std::shared_ptr<const Plan> plan;
    std::list<std::string>::iterator position;
  };
  std::map<std::string, Entry> plans_;
};

} // namespace llmir::compiler

#include "llmir/compiler/PlanStore.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

namespace llmir::compiler {
namespace {
namespace fs = std::filesystem;

// Two FNV-1a lanes with different offsets: 128 bits, stable across builds.
struct ContentHash {
  uint64_t a = 0xcbf29ce484222325ull, b = 0x84222325cbf29ce4ull;
  void add(std::string_view bytes) {
    for (unsigned char c : bytes) {
      a = (a ^ c) * 0x100000001b3ull;
      b = (b ^ c) * 0x100000001b3ull;
      b ^= b >> 29;
    }
    a = (a ^ 0xff) * 0x100000001b3ull; // field separator
  }
  std::string hex() const {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%016llx%016llx", (unsigned long long)a,
                  (unsigned long long)b);
    return buf;
  }
};

Result<std::string> readFile(const fs::path &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return Status::error("cannot read " + path.string());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The 8-byte length and the JSON header of a safetensors file.
Result<std::string> safetensorsHeader(const fs::path &path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char len[8];
  if (!in.read(reinterpret_cast<char *>(len), 8))
    return Status::error(path.string() + ": shorter than a safetensors header");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | len[i];
  if (n > (uint64_t(100) << 20))
    return Status::error(path.string() + ": safetensors header of " +
                         std::to_string(n) + " bytes is implausible");
  std::string header(n, '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(n)))
    return Status::error(path.string() + ": truncated safetensors header");
  return std::string(reinterpret_cast<char *>(len), 8) + header;
}
} // namespace

Result<std::string> planId(const CompileRequest &request) {
  fs::path dir(request.modelDir);
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    return Status::error("model_dir '" + request.modelDir + "' is not a directory");
  ContentHash hash;
  auto config = readFile(dir / "config.json");
  if (!config)
    return config.status().withContext("model_dir " + request.modelDir);
  hash.add(*config);
  std::vector<fs::path> shards;
  for (const auto &entry : fs::directory_iterator(dir, ec))
    if (entry.path().extension() == ".safetensors" &&
        entry.path().filename().string().find("reference") == std::string::npos)
      shards.push_back(entry.path());
  std::sort(shards.begin(), shards.end());
  if (shards.empty())
    return Status::error("model_dir " + request.modelDir + " has no *.safetensors");
  for (const auto &shard : shards) {
    auto header = safetensorsHeader(shard);
    if (!header)
      return header.status();
    hash.add(shard.filename().string());
    hash.add(*header);
  }
  const auto &o = request.options;
  hash.add("tp=" + std::to_string(o.tp) + ",pp=" + std::to_string(o.pp) +
           ",sp=" + std::to_string(o.sp) + ",kv=" + std::to_string(o.kvBlockSize) +
           (o.kvStore ? ",kv_store" : ""));
  if (!o.clusterSpecPath.empty()) {
    auto spec = readFile(o.clusterSpecPath);
    if (!spec)
      return spec.status();
    hash.add(*spec);
  }
  return hash.hex();
}

PlanStore::Lookup PlanStore::compile(const CompileRequest &request) {
  auto id = planId(request);
  if (!id)
    return Lookup{Outcome::Failed, nullptr, false, id.message()};
  std::shared_ptr<InFlight> flight;
  {
    std::unique_lock lock(mu_);
    if (auto it = plans_.find(*id); it != plans_.end()) {
      recency_.splice(recency_.begin(), recency_, it->second.position);
      return Lookup{Outcome::Ok, it->second.plan, true, {}};
    }
    if (auto it = inFlight_.find(*id); it != inFlight_.end()) {
      // Compiled for another request right now: its outcome is ours.
      auto other = it->second;
      compiled_.wait(lock, [&] { return other->done; });
      Lookup shared = other->result;
      shared.cacheHit = shared.outcome == Outcome::Ok;
      return shared;
    }
    if (inFlight_.size() >= options_.maxConcurrent)
      return Lookup{Outcome::Busy, nullptr, false,
                    std::to_string(inFlight_.size()) +
                        " compiles are running, the limit of compile.max-concurrent; "
                        "retry later"};
    flight = std::make_shared<InFlight>();
    inFlight_[*id] = flight;
  }
  Lookup result = runCompile(request, *id);
  std::lock_guard lock(mu_);
  if (result.outcome == Outcome::Ok)
    insert(result.plan);
  flight->result = result;
  flight->done = true;
  inFlight_.erase(*id);
  compiled_.notify_all();
  return result;
}

PlanStore::Lookup PlanStore::runCompile(const CompileRequest &request, const std::string &id) {
  CompileOptions options = request.options;
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + options_.deadline;
  if (options_.deadline.count() > 0)
    options.cancelled = [deadline] { return std::chrono::steady_clock::now() >= deadline; };
  auto compiled = compileHuggingFace(request.modelDir, options);
  if (!compiled) {
    if (compiled.message().rfind(kCompileCancelled, 0) == 0) {
      std::ostringstream ms; // "100", or "1e-06" for a test's nanosecond
      ms << std::chrono::duration<double, std::milli>(options_.deadline).count();
      return Lookup{Outcome::DeadlineExceeded, nullptr, false,
                    "the compile of '" + request.modelDir + "' was cancelled at its deadline of " +
                        ms.str() + " ms (compile.timeout-ms): " + compiled.message()};
    }
    return Lookup{Outcome::Failed, nullptr, false, compiled.message()};
  }
  auto plan = std::make_shared<Plan>(Plan{id, std::move(*compiled), 0});
  plan->bytes = plan->compiled.plan.ByteSizeLong();
  for (const auto &program : plan->compiled.programs)
    plan->bytes += program.ByteSizeLong();
  return Lookup{Outcome::Ok, plan, false, {}};
}

void PlanStore::insert(std::shared_ptr<const Plan> plan) {
  const std::string id = plan->id;
  recency_.push_front(id);
  bytes_ += plan->bytes;
  plans_[id] = Entry{std::move(plan), recency_.begin()};
  while (bytes_ > options_.maxBytes && recency_.size() > 1) {
    auto evicted = plans_.find(recency_.back());
    bytes_ -= evicted->second.plan->bytes;
    plans_.erase(evicted);
    recency_.pop_back();
  }
}

unsigned PlanStore::compilesRunning() const {
  std::lock_guard lock(mu_);
  return static_cast<unsigned>(inFlight_.size());
}

std::shared_ptr<const Plan> PlanStore::find(const std::string &id) {
  std::lock_guard lock(mu_);
  auto it = plans_.find(id);
  if (it == plans_.end())
    return nullptr;
  recency_.splice(recency_.begin(), recency_, it->second.position);
  return it->second.plan;
}

uint64_t PlanStore::cachedBytes() const {
  std::lock_guard lock(mu_);
  return bytes_;
}

} // namespace llmir::compiler

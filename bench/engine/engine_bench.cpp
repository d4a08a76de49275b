// llmir-engine-bench: prefill and decode tokens/s of the CPU executor on
// Hugging Face Llama checkpoints, at several thread counts, next to the
// machine's memory read bandwidth measured in the same run. Decode is
// reported as a fraction of the bandwidth ceiling: a decode token reads every
// weight once (the embedding table only one row) and the keys and values of
// every position of its context in every layer, so
// ceiling = bandwidth / (weight bytes + KV-cache bytes per token), the KV
// bytes averaged over the decode tokens measured (contexts prefill + 1 to
// prefill + decode). The bandwidth is measured right before and right after
// each repeat at the row's thread count (best of 3 passes, best over the
// repeats), so that on a shared machine it sees the load that the decode
// beside it saw; the lowest of those probes is printed too (`lowest probe`),
// as the 2-thread bandwidth of the machine in docs/performance.md switches
// between two modes, sometimes within a repeat.
//
// With --llama-bench PATH --gguf-dir DIR it runs llama.cpp's llama-bench on
// DIR/<model dir name>.gguf in the same invocation, each repeat right after
// LLMIR's (interleaved, so both see the same load on a shared machine), and
// prints both and the ratio: prefill = `-p N -n 0`, decode = `-p 0 -n M -d N`
// (M tokens generated after N already in the context, as LLMIR's decode).
//
//   llmir-engine-bench [--threads 1,2] [--prefill 512] [--decode 128]
//                      [--repeats 5] [--kv-cache-dtype auto|f32|bf16]
//                      [--matmul-precision highest|medium]
//                      [--llama-bench PATH --gguf-dir DIR] MODEL_DIR...
// (--kv-cache-dtype: LLMIR's; llama-bench keeps its default f16 cache.
// --matmul-precision: LLMIR's; medium rounds the activations of products with
// bf16 weights to bf16, as llama.cpp's bf16 matmuls always do.)
// --cpu-time times LLMIR by the process's CPU time instead of the wall
// clock: for comparing two LLMIR builds at 1 thread on a machine shared with
// other work (time spent descheduled does not count); not comparable with
// llama.cpp's wall-clock numbers, and with more threads it counts the
// pool's spinning too.
#include "BandwidthProbe.h"
#include "LlamaBench.h"
#include "llmir/compiler/Compile.h"
#include "llmir/engine/CheckpointWeights.h"
#include "llmir/engine/Executor.h"
#include "llmir/model/Checkpoint.h"
#include "llmir/model/ModelConfig.h"
#include "llmir/net/Config.h"
#include "llmir/proto/shard_program.pb.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

using namespace llmir;

struct Options {
  std::vector<int> threads = {1, 2};
  int prefillTokens = 512;
  int decodeTokens = 128;
  // Five, as llama-bench's default: a 128-token decode takes seconds and its
  // ceiling is the best of many short probe passes, so on a shared machine
  // the decode needs as many chances at a quiet minute (docs/performance.md,
  // "Twentieth round").
  int repeats = 5;
  engine::KvCacheDType kvCacheDtype = engine::KvCacheDType::Auto;
  std::string kvCacheDtypeName = "auto";
  engine::MatmulPrecision matmulPrecision = engine::MatmulPrecision::Highest;
  std::string matmulPrecisionName = "highest";
  bool cpuTime = false;
  std::string llamaBench; // the peer's llama-bench binary, if given
  std::string ggufDir;    // where its GGUF files are
  std::vector<std::string> models;
};

[[noreturn]] void fail(const std::string &why) {
  std::fprintf(stderr, "llmir-engine-bench: %s\n", why.c_str());
  std::exit(2);
}

/// The flags through net::Config, as every service and bench reads its own;
/// the checkpoints are the arguments without "--".
Options parseOptions(int argc, char **argv) {
  Options o;
  net::Config config("llmir-engine-bench");
  config.add("threads", &o.threads, "thread counts, comma-separated");
  config.add("prefill", &o.prefillTokens, "prompt tokens of the prefill timed");
  config.add("decode", &o.decodeTokens, "decode tokens timed after the prefill");
  config.add("repeats", &o.repeats, "repeats (the best is shown)");
  config.add("kv-cache-dtype", &o.kvCacheDtypeName, "auto, f32 or bf16 (LLMIR's KV cache)");
  config.add("matmul-precision", &o.matmulPrecisionName,
             "highest or medium (bf16 activations in products with bf16 weights)");
  config.add("cpu-time", &o.cpuTime, "time LLMIR by process CPU time (A/B at 1 thread)");
  config.add("llama-bench", &o.llamaBench, "llama.cpp's llama-bench, run in the same invocation");
  config.add("gguf-dir", &o.ggufDir, "the GGUF files of the models, for --llama-bench");
  config.addPositional("MODEL_DIR", &o.models, "Hugging Face checkpoints to time");
  config.loadOrExit(argc, argv);
  if (o.prefillTokens < 1 || o.decodeTokens < 1 || o.repeats < 1)
    fail("prefill, decode and repeats must be >= 1");
  Result<engine::KvCacheDType> dtype = engine::parseKvCacheDType(o.kvCacheDtypeName);
  if (!dtype)
    fail(dtype.message());
  o.kvCacheDtype = *dtype;
  Result<engine::MatmulPrecision> precision = engine::parseMatmulPrecision(o.matmulPrecisionName);
  if (!precision)
    fail(precision.message());
  o.matmulPrecision = *precision;
  if (o.models.empty())
    fail("no model directory given (llmir-engine-bench [--key=value ...] MODEL_DIR...)");
  if (o.llamaBench.empty() != o.ggufDir.empty())
    fail("--llama-bench and --gguf-dir go together");
  return o;
}

// A loaded model: its single-rank program (compiled by the real compiler)
// and the checkpoint its weights come from.
struct BenchModel {
  model::ModelConfig config;
  model::Checkpoint checkpoint;
  proto::ShardProgram program;
  std::string dtype;      // of the LM head weight, e.g. "BF16"
  double weightBytesPerToken = 0;
};

Result<BenchModel> loadModel(const std::string &dir) {
  Result<model::ModelConfig> config = model::loadModelConfig(dir);
  if (!config)
    return config.status();
  Result<model::Checkpoint> checkpoint = model::Checkpoint::open(dir);
  if (!checkpoint)
    return checkpoint.status();
  Result<compiler::CompiledModel> compiled = compiler::compileHuggingFace(dir, {});
  if (!compiled)
    return compiled.status();
  BenchModel model{*config, std::move(*checkpoint),
                   std::move(compiled->programs.front()), "", 0};
  // A decode token reads every weight once, except the embedding table, of
  // which it reads one row, unless the LM head reads it too (tied
  // embeddings: the compiler gives both the same slot).
  std::set<uint32_t> embeddingSlots, otherInputs;
  for (const proto::Instruction &inst : model.program.instructions()) {
    if (inst.op() == proto::EMBEDDING)
      embeddingSlots.insert(inst.inputs(0));
    else
      otherInputs.insert(inst.inputs().begin(), inst.inputs().end());
  }
  for (uint32_t slot : otherInputs)
    embeddingSlots.erase(slot);
  for (const proto::WeightSlice &slice : model.program.weights()) {
    const model::TensorInfo *info = model.checkpoint.find(slice.tensor_name());
    if (!info)
      return Status::error("checkpoint has no tensor '" + slice.tensor_name() + "'");
    if (embeddingSlots.count(slice.slot()))
      continue;
    model.weightBytesPerToken += static_cast<double>(info->byteSize);
    model.dtype = std::string(model::dtypeName(info->dtype));
  }
  return model;
}

// Seconds on the wall clock, or of the process's CPU time (--cpu-time).
double now(bool cpuTime) {
  if (cpuTime) {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
  }
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Throughput {
  double prefill = 0, decode = 0; // tokens per second, best of the repeats
  double bandwidth = 0;           // bytes per second, best of the repeats' probes
  double lowestBandwidth = 0;     // the lowest of the same probes
  double kvBytesPerToken = 0;     // KV cache read per decode token, on average
};

// `afterRepeat` runs after each of LLMIR's repeats (the peer's turn).
Result<Throughput> measure(const BenchModel &model, unsigned threads,
                           const Options &options, bench::ReadBandwidthProbe &probe,
                           const std::function<Status()> &afterRepeat) {
  const int64_t positions = options.prefillTokens + options.decodeTokens;
  const int64_t blockSize = model.program.kv_cache().block_size();
  const int64_t numBlocks = (positions + blockSize - 1) / blockSize;
  Result<std::unique_ptr<engine::Executor>> executor = engine::Executor::create(
      model.program, engine::checkpointWeights(model.checkpoint),
      {.numKvBlocks = numBlocks, .numThreads = threads,
       .kvCacheDtype = options.kvCacheDtype,
       .matmulPrecision = options.matmulPrecision});
  if (!executor)
    return executor.status();

  std::vector<int32_t> table(static_cast<size_t>(numBlocks));
  for (int32_t b = 0; b < numBlocks; ++b)
    table[static_cast<size_t>(b)] = b;
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> anyToken(
      0, static_cast<int32_t>(model.config.vocabSize - 1));
  engine::StepInput prefill;
  prefill.blockTables = {table};
  for (int i = 0; i < options.prefillTokens; ++i) {
    prefill.tokenIds.push_back(anyToken(rng));
    prefill.positions.push_back(i);
    prefill.tokenSeq.push_back(0);
  }
  engine::StepInput decode;
  decode.blockTables = {table};
  decode.tokenSeq = {0};

  Throughput best;
  best.kvBytesPerToken =
      static_cast<double>(engine::decodeKvBytesRead(
          (*executor)->kvCacheShape(), (*executor)->kvElementBytes(), options.prefillTokens,
          options.decodeTokens)) /
      options.decodeTokens;
  // Probed before and after each repeat: the 2-thread probe here has two
  // modes (about one core's bandwidth, or twice that) that can change
  // between the probe and the decode beside it, so the row shows the
  // lowest probe too.
  auto probeNow = [&] {
    const double bandwidth = probe.measure(threads, 3);
    best.bandwidth = std::max(best.bandwidth, bandwidth);
    best.lowestBandwidth =
        best.lowestBandwidth > 0 ? std::min(best.lowestBandwidth, bandwidth) : bandwidth;
  };
  for (int r = 0; r < options.repeats; ++r) {
    probeNow();
    double start = now(options.cpuTime);
    Result<engine::Tensor> logits = (*executor)->step(prefill);
    if (!logits)
      return logits.status().withContext("prefill");
    best.prefill =
        std::max(best.prefill, options.prefillTokens / (now(options.cpuTime) - start));

    start = now(options.cpuTime);
    for (int i = 0; i < options.decodeTokens; ++i) {
      decode.tokenIds = {anyToken(rng)};
      decode.positions = {options.prefillTokens + i};
      Result<engine::Tensor> next = (*executor)->step(decode);
      if (!next)
        return next.status().withContext("decode step " + std::to_string(i));
    }
    best.decode = std::max(best.decode,
                           options.decodeTokens / (now(options.cpuTime) - start));
    probeNow();
    if (Status peer = afterRepeat(); !peer.isOk())
      return peer;
  }
  return best;
}

} // namespace

int main(int argc, char **argv) {
  Options options = parseOptions(argc, argv);
  const bool withPeer = !options.llamaBench.empty();
  const size_t probeBytes = size_t{1} << 30; // >> any LLC here
  Result<bench::ReadBandwidthProbe> probe = bench::ReadBandwidthProbe::create(probeBytes);
  if (!probe) {
    std::fprintf(stderr, "llmir-engine-bench: %s\n", probe.message().c_str());
    return 1;
  }

  std::printf("# llmir-engine-bench: prefill %d tokens, decode %d tokens "
              "(after the prefill), best of %d%s; KV cache %s; matmul "
              "precision %s%s\n",
              options.prefillTokens, options.decodeTokens, options.repeats,
              withPeer ? ", each repeat followed by llama.cpp's" : "",
              options.kvCacheDtypeName.c_str(), options.matmulPrecisionName.c_str(),
              options.cpuTime ? "; LLMIR timed by process CPU time" : "");
  if (withPeer)
    std::printf("# llama.cpp: %s\n#            %s\n",
                bench::llamaBenchCommand({options.llamaBench, options.ggufDir + "/MODEL.gguf",
                                   1, options.prefillTokens, 0, 0})
                    .c_str(),
                bench::llamaBenchCommand({options.llamaBench, options.ggufDir + "/MODEL.gguf",
                                   1, 0, options.decodeTokens,
                                   options.prefillTokens})
                    .c_str());
  std::printf("# probe: memory read bandwidth, a 1 GiB stream on huge pages read by the "
              "row's threads right before and after each repeat (best of 3 passes in each load "
              "width, 256- and 512-bit; the ceiling takes the best, `lowest` is the lowest)\n#\n");
  std::printf("# %-16s %5s %7s %9s %9s %9s %9s %8s %8s %9s %8s %8s %9s %9s\n", "model",
              "dtype", "threads", "prefill", "decode", "weights", "KV cache", "probe",
              "lowest", "ceiling", "decode", "of", "llama.cpp", "llama.cpp");
  std::printf("# %-16s %5s %7s %9s %9s %9s %9s %8s %8s %9s %8s %8s %9s %9s\n", "", "", "",
              "(tok/s)", "(tok/s)", "(MB/tok)", "(MB/tok)", "(GB/s)", "probe", "(tok/s)",
              "(GB/s)", "ceiling", "prefill", "decode");

  int failures = 0;
  for (const std::string &dir : options.models) {
    Result<BenchModel> model = loadModel(dir);
    if (!model) {
      std::fprintf(stderr, "%s: %s\n", dir.c_str(), model.message().c_str());
      ++failures;
      continue;
    }
    const std::string name =
        std::filesystem::path(dir).lexically_normal().filename().empty()
            ? std::filesystem::path(dir).lexically_normal().parent_path().filename().string()
            : std::filesystem::path(dir).lexically_normal().filename().string();
    const std::string gguf = options.ggufDir + "/" + name + ".gguf";
    if (withPeer && !std::filesystem::exists(gguf)) {
      std::fprintf(stderr, "%s: no %s for llama.cpp (scripts/make-bench-gguf.py "
                           "writes it)\n", dir.c_str(), gguf.c_str());
      ++failures;
      continue;
    }
    std::string label = name.size() > 16 ? "..." + name.substr(name.size() - 13) : name;
    for (const unsigned threads : options.threads) { // positive: Config checks
      Throughput peer;
      auto runPeer = [&]() -> Status {
        if (!withPeer)
          return Status::ok();
        Result<double> prefill = bench::runLlamaBench(
            {options.llamaBench, gguf, threads, options.prefillTokens, 0, 0});
        if (!prefill)
          return prefill.status();
        Result<double> decode =
            bench::runLlamaBench({options.llamaBench, gguf, threads, 0,
                           options.decodeTokens, options.prefillTokens});
        if (!decode)
          return decode.status();
        peer.prefill = std::max(peer.prefill, *prefill);
        peer.decode = std::max(peer.decode, *decode);
        return Status::ok();
      };
      Result<Throughput> t = measure(*model, threads, options, *probe, runPeer);
      if (!t) {
        std::fprintf(stderr, "%s, %u threads: %s\n", dir.c_str(), threads,
                     t.message().c_str());
        ++failures;
        continue;
      }
      const double bytesPerToken = model->weightBytesPerToken + t->kvBytesPerToken;
      const double ceiling = t->bandwidth / bytesPerToken;
      std::printf("  %-16s %5s %7u %9.1f %9.1f %9.1f %9.1f %8.1f %8.1f %9.1f %8.1f %7.0f%%",
                  label.c_str(), model->dtype.c_str(), threads, t->prefill,
                  t->decode, model->weightBytesPerToken / 1e6,
                  t->kvBytesPerToken / 1e6, t->bandwidth / 1e9,
                  t->lowestBandwidth / 1e9, ceiling,
                  t->decode * bytesPerToken / 1e9, 100.0 * t->decode / ceiling);
      if (withPeer)
        std::printf(" %9.1f %9.1f   LLMIR/llama.cpp: prefill %.2fx, decode %.2fx",
                    peer.prefill, peer.decode, t->prefill / peer.prefill,
                    t->decode / peer.decode);
      std::printf("\n");
      std::fflush(stdout);
    }
  }
  return failures ? 1 : 0;
}

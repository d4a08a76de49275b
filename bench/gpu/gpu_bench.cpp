// llmir-gpu-bench: LLMIR's engine on one CUDA device, measured as the
// compiled-PyTorch peer measures itself (../shared/peers/compiled_torch_decoder.py):
// decode at several batch sizes (each sequence a 128-token prompt, then 128
// new tokens; tok/s summed over the batch, decode steps only), and one
// prefill of 2,048 tokens. Prints one JSON object with the numbers, the
// device's copy bandwidth measured in the same run and the batch-1 roofline
// (bandwidth / weight bytes read per token).
//
//   llmir-gpu-bench --model DIR [--device cuda:0] [--batches 1,8,32,128]
//                   [--prompt 128] [--new-tokens 128] [--prefill 2048]
//                   [--cluster-spec FILE] [--predict-only]
// The JSON also carries the compiler's cost-model prediction of each timed
// step (predicted_decode_ms per batch, predicted_prefill_N_ms) on the cluster
// spec's device, for the calibration in docs/performance.md.
#include "llmir/compiler/ClusterSpec.h"
#include "llmir/compiler/Compile.h"
#include "llmir/engine/CheckpointWeights.h"
#include "llmir/engine/Executor.h"
#include "llmir/model/Checkpoint.h"
#include "llmir/model/ModelConfig.h"
#include "llmir/net/Config.h"
#include "llmir/proto/shard_program.pb.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

using namespace llmir;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string device = "cuda:0";
  std::string batchList = "1,8,32,128";
  std::vector<int> batches;
  int prompt = 128, newTokens = 128, prefill = 2048;
  std::string model;
  std::string clusterSpec; // the cost model's device (default: the ideal H100)
  bool predictOnly = false;
  std::string matmulPrecision = "highest";
};

[[noreturn]] void fail(const std::string &why) {
  std::fprintf(stderr, "llmir-gpu-bench: %s\n", why.c_str());
  std::exit(2);
}

/// The flags through net::Config, as every service reads its own.
Options parse(int argc, char **argv) {
  Options o;
  net::Config config("llmir-gpu-bench");
  config.add("model", &o.model, "Hugging Face checkpoint directory (required)");
  config.add("device", &o.device, "cuda or cuda:N");
  config.add("batches", &o.batchList, "decode batch sizes, comma-separated");
  config.add("prompt", &o.prompt, "prompt tokens per sequence before decoding");
  config.add("new-tokens", &o.newTokens, "decode steps timed per batch size");
  config.add("prefill", &o.prefill, "tokens of the timed single prefill");
  config.add("cluster-spec", &o.clusterSpec,
             "cluster spec YAML whose device prices the predicted steps "
             "(bench/gpu/h100-calibrated.yaml; default: the ideal H100 roofline)");
  config.add("predict-only", &o.predictOnly,
             "print the cost model's predictions only (no GPU needed)");
  config.add("matmul-precision", &o.matmulPrecision,
             "highest (products within f32 rounding) or medium (activations rounded to bf16 "
             "for the tensor cores, as the peer's bf16 model computes)");
  if (Status st = config.load(argc, argv); !st)
    fail(st.message());
  if (config.helpRequested()) {
    std::printf("%s", config.usage().c_str());
    std::exit(0);
  }
  for (size_t b = 0; b <= o.batchList.size();) {
    const size_t e = std::min(o.batchList.find(',', b), o.batchList.size());
    const int batch = std::atoi(o.batchList.substr(b, e - b).c_str());
    if (batch <= 0)
      fail("batches: '" + o.batchList + "' is not a list of positive numbers");
    o.batches.push_back(batch);
    b = e + 1;
  }
  if (o.model.empty())
    fail("model is required (--model DIR)");
  if (o.prompt <= 0 || o.newTokens <= 0 || o.prefill <= 0)
    fail("prompt, new-tokens and prefill must be positive");
  return o;
}

double since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

/// Device-to-device copy bandwidth, bytes read plus written per second.
double copyBandwidth() {
  const size_t bytes = size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess)
    return 0;
  cudaMemset(a, 1, bytes);
  cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  cudaDeviceSynchronize();
  double best = 0;
  for (int r = 0; r < 5; ++r) {
    auto start = Clock::now();
    for (int i = 0; i < 10; ++i)
      cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaDeviceSynchronize();
    best = std::max(best, 2.0 * 10 * bytes / since(start));
  }
  cudaFree(a);
  cudaFree(b);
  return best;
}

/// The cost model's step times for the bench's steps, as a JSON fragment:
/// "predicted_decode_ms": {batch: ms}, "predicted_prefill_N_ms": ms.
std::string predictions(const Options &o) {
  compiler::ClusterSpec spec;
  if (!o.clusterSpec.empty()) {
    auto loaded = compiler::loadClusterSpec(o.clusterSpec);
    if (!loaded)
      fail(loaded.message());
    spec = *loaded;
  }
  std::vector<compiler::StepShape> steps;
  for (int batch : o.batches) {
    compiler::StepShape step;
    step.tokens = batch;
    // The timed decode steps' mean context: prompt + half the new tokens.
    step.context = o.prompt + o.newTokens / 2;
    steps.push_back(step);
  }
  compiler::StepShape prefill;
  prefill.tokens = o.prefill;
  prefill.decode = false;
  steps.push_back(prefill);
  auto seconds = compiler::predictStepSeconds(o.model, spec, steps);
  if (!seconds)
    fail(seconds.message());
  std::string decode;
  for (size_t i = 0; i < o.batches.size(); ++i)
    decode += (decode.empty() ? "" : ", ") + std::string("\"") +
              std::to_string(o.batches[i]) + "\": " + std::to_string((*seconds)[i] * 1e3);
  return "\"predicted_decode_ms\": {" + decode + "}, \"predicted_prefill_" +
         std::to_string(o.prefill) + "_ms\": " + std::to_string(seconds->back() * 1e3);
}

int run(const Options &o) {
  const std::string predicted = predictions(o);
  if (o.predictOnly) {
    std::printf("{\"engine\": \"llmir cost model\", %s}\n", predicted.c_str());
    return 0;
  }
  auto device = engine::Device::parse(o.device);
  if (!device || !device->isCuda())
    fail("device must be cuda or cuda:N");
  auto config = model::loadModelConfig(o.model);
  auto checkpoint = model::Checkpoint::open(o.model);
  if (!config || !checkpoint) {
    std::fprintf(stderr, "llmir-gpu-bench: %s\n",
                 (!config ? config.message() : checkpoint.message()).c_str());
    return 1;
  }
  auto compiled = compiler::compileHuggingFace(o.model, {});
  if (!compiled) {
    std::fprintf(stderr, "llmir-gpu-bench: %s\n", compiled.message().c_str());
    return 1;
  }
  const proto::ShardProgram &program = compiled->programs.front();
  // Bytes a decode token reads: every weight but the embedding table.
  std::set<uint32_t> embedding;
  for (const proto::Instruction &inst : program.instructions())
    if (inst.op() == proto::EMBEDDING)
      embedding.insert(inst.inputs(0));
  double weightBytes = 0;
  for (const proto::WeightSlice &slice : program.weights())
    if (!embedding.count(slice.slot()))
      weightBytes += static_cast<double>(checkpoint->find(slice.tensor_name())->byteSize);

  const int64_t blockSize = program.kv_cache().block_size();
  const int maxBatch = *std::max_element(o.batches.begin(), o.batches.end());
  const int64_t perSequence = (o.prompt + o.newTokens + blockSize - 1) / blockSize;
  const int64_t prefillBlocks = (o.prefill + blockSize - 1) / blockSize;
  engine::ExecutorOptions options;
  options.device = *device;
  options.numKvBlocks = std::max(perSequence * maxBatch, prefillBlocks);
  auto precision = engine::parseMatmulPrecision(o.matmulPrecision);
  if (!precision)
    fail("--matmul-precision: " + precision.message());
  options.matmulPrecision = *precision;
  auto start = Clock::now();
  auto executor =
      engine::Executor::create(program, engine::checkpointWeights(*checkpoint), options);
  if (!executor) {
    std::fprintf(stderr, "llmir-gpu-bench: %s\n", executor.message().c_str());
    return 1;
  }
  const double loadSeconds = since(start);
  const double bandwidth = copyBandwidth();

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> anyToken(
      0, static_cast<int32_t>(config->vocabSize - 1));
  std::string rows;
  for (int batch : o.batches) {
    engine::StepInput prefill, decode;
    for (int s = 0; s < batch; ++s) {
      std::vector<int32_t> table(static_cast<size_t>(perSequence));
      for (int64_t b = 0; b < perSequence; ++b)
        table[static_cast<size_t>(b)] = static_cast<int32_t>(s * perSequence + b);
      prefill.blockTables.push_back(table);
      for (int p = 0; p < o.prompt; ++p) {
        prefill.tokenIds.push_back(anyToken(rng));
        prefill.positions.push_back(p);
        prefill.tokenSeq.push_back(s);
      }
      decode.tokenIds.push_back(anyToken(rng));
      decode.positions.push_back(o.prompt);
      decode.tokenSeq.push_back(s);
    }
    decode.blockTables = prefill.blockTables;
    auto logits = (*executor)->step(prefill);
    if (!logits) {
      std::fprintf(stderr, "llmir-gpu-bench: prefill: %s\n", logits.message().c_str());
      return 1;
    }
    start = Clock::now();
    for (int n = 0; n < o.newTokens; ++n) {
      for (int s = 0; s < batch; ++s)
        decode.positions[static_cast<size_t>(s)] = o.prompt + n;
      // Greedy on the device, as a server's greedy request: only the ids
      // come back (synchronous), and they are the next step's tokens.
      auto ids = (*executor)->stepGreedy(decode);
      if (!ids) {
        std::fprintf(stderr, "llmir-gpu-bench: decode: %s\n", ids.message().c_str());
        return 1;
      }
      decode.tokenIds = *ids;
    }
    const double tokPerS = double(batch) * o.newTokens / since(start);
    rows += (rows.empty() ? "" : ", ") + std::string("\"") + std::to_string(batch) +
            "\": " + std::to_string(tokPerS);
    std::fprintf(stderr, "decode batch %d: %.1f tok/s\n", batch, tokPerS);
  }

  engine::StepInput prefill;
  std::vector<int32_t> table(static_cast<size_t>(prefillBlocks));
  for (int64_t b = 0; b < prefillBlocks; ++b)
    table[static_cast<size_t>(b)] = static_cast<int32_t>(b);
  prefill.blockTables = {table};
  for (int p = 0; p < o.prefill; ++p) {
    prefill.tokenIds.push_back(anyToken(rng));
    prefill.positions.push_back(p);
    prefill.tokenSeq.push_back(0);
  }
  double prefillMs = 1e30;
  for (int r = 0; r < 3; ++r) {
    start = Clock::now();
    auto logits = (*executor)->step(prefill);
    if (!logits) {
      std::fprintf(stderr, "llmir-gpu-bench: prefill: %s\n", logits.message().c_str());
      return 1;
    }
    prefillMs = std::min(prefillMs, 1e3 * since(start));
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, device->index);
  std::printf("{\"engine\": \"llmir\", \"gpu\": \"%s\", \"matmul_precision\": \"%s\", "
              "\"weight_bytes\": %.0f, "
              "\"copy_bandwidth_gbs\": %.1f, \"roofline_batch1_tok_s\": %.1f, "
              "\"load_s\": %.2f, \"decode_tok_s\": {%s}, \"prefill_%d_ms\": %.3f, %s}\n",
              prop.name, o.matmulPrecision.c_str(), weightBytes, bandwidth / 1e9,
              bandwidth / weightBytes, loadSeconds, rows.c_str(), o.prefill, prefillMs,
              predicted.c_str());
  return 0;
}

} // namespace

int main(int argc, char **argv) { return run(parse(argc, argv)); }

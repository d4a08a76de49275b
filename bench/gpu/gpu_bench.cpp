// llmir-gpu-bench: LLMIR's engine on one CUDA device, measured as the
// compiled-PyTorch peer measures itself (../shared/peers/compiled_torch_decoder.py):
// decode at several batch sizes (each sequence a 128-token prompt, then 128
// new tokens; tok/s summed over the batch, decode steps only), and one
// prefill of 2,048 tokens. Prints one JSON object with the numbers, the
// device's copy bandwidth measured in the same run and the batch-1 roofline
// (bandwidth / weight bytes read per token).
//
//   llmir-gpu-bench [--device cuda:0] [--batches 1,8,32,128] [--prompt 128]
//                   [--new 128] [--prefill 2048] MODEL_DIR
#include "llmir/compiler/Compile.h"
#include "llmir/engine/CheckpointWeights.h"
#include "llmir/engine/Executor.h"
#include "llmir/model/Checkpoint.h"
#include "llmir/model/ModelConfig.h"
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
  std::vector<int> batches = {1, 8, 32, 128};
  int prompt = 128, newTokens = 128, prefill = 2048;
  std::string model;
};

[[noreturn]] void usage(const std::string &why) {
  std::fprintf(stderr,
               "llmir-gpu-bench: %s\nusage: llmir-gpu-bench [--device cuda:0] "
               "[--batches 1,8,32,128] [--prompt 128] [--new 128] [--prefill 2048] "
               "MODEL_DIR\n",
               why.c_str());
  std::exit(2);
}

int positive(const std::string &text, const std::string &flag) {
  char *end = nullptr;
  long v = std::strtol(text.c_str(), &end, 10);
  if (*end != '\0' || v <= 0 || v > (1 << 20))
    usage(flag + " needs a positive integer");
  return static_cast<int>(v);
}

Options parse(int argc, char **argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc)
        usage(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--device") {
      o.device = value();
    } else if (arg == "--batches") {
      o.batches.clear();
      std::string list = value();
      for (size_t b = 0; b <= list.size();) {
        size_t e = std::min(list.find(',', b), list.size());
        o.batches.push_back(positive(list.substr(b, e - b), "--batches"));
        b = e + 1;
      }
    } else if (arg == "--prompt") {
      o.prompt = positive(value(), arg);
    } else if (arg == "--new") {
      o.newTokens = positive(value(), arg);
    } else if (arg == "--prefill") {
      o.prefill = positive(value(), arg);
    } else if (arg.starts_with("--")) {
      usage("unknown option " + arg);
    } else {
      o.model = arg;
    }
  }
  if (o.model.empty())
    usage("no model directory given");
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

int run(const Options &o) {
  auto device = engine::Device::parse(o.device);
  if (!device || !device->isCuda())
    usage("--device must be cuda or cuda:N");
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
      logits = (*executor)->step(decode); // reads the logits back: synchronous
      if (!logits) {
        std::fprintf(stderr, "llmir-gpu-bench: decode: %s\n", logits.message().c_str());
        return 1;
      }
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
  std::printf("{\"engine\": \"llmir\", \"gpu\": \"%s\", \"weight_bytes\": %.0f, "
              "\"copy_bandwidth_gbs\": %.1f, \"roofline_batch1_tok_s\": %.1f, "
              "\"load_s\": %.2f, \"decode_tok_s\": {%s}, \"prefill_%d_ms\": %.3f}\n",
              prop.name, weightBytes, bandwidth / 1e9, bandwidth / weightBytes,
              loadSeconds, rows.c_str(), o.prefill, prefillMs);
  return 0;
}

} // namespace

int main(int argc, char **argv) { return run(parse(argc, argv)); }

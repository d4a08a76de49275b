// llmir-generate --model HF_DIR (--prompt TEXT | --prompt-ids 1,2,3)
//                --max-tokens N [--temperature T] [--top-p P] [--top-k K]
//                [--seed S] [--ignore-eos] [--threads N] [--json]
//                [--tp N] [--pp M] [--sp K] [--timeout-s S]
//                [--dump-prompt-logits FILE] [--timing]
//                [--device cpu|cuda[:N]] [--collectives auto|gloo|nccl]
//                [--kv-cache-dtype auto|f32|bf16] [--matmul-precision highest|medium]
//
// Compiles the checkpoint, runs it on the CPU engine and prints the
// continuation (text, or with --json one object with prompt_ids, output_ids
// and text). Greedy by default (temperature 0).
//
// With tp * pp * sp > 1 the process becomes a launcher (docs/parallelism.md):
// it compiles once, serves a rendezvous store on loopback holding each rank's
// ShardProgram, and re-runs itself once per rank with the hidden flags
// --worker-rank R --world-size W --store-port P. Each worker loads only its
// weight slices, joins the others over Gloo and generates in lockstep; the
// rank that decides the tokens (the last stage's first TP rank) prints.
//
// --dump-prompt-logits writes the prompt's logits [tokens, vocab] as F32
// tensor "logits" of a safetensors file (for comparisons in tests). --timing
// reports prefill time and decode tokens/s on stderr (bench/runtime).
#include "llmir/compiler/Compile.h"
#include "llmir/engine/CheckpointWeights.h"
#include "llmir/engine/Executor.h"
#include "llmir/engine/Generator.h"
#include "llmir/model/Checkpoint.h"
#include "llmir/model/ModelConfig.h"
#include "llmir/model/Tokenizer.h"
#include "llmir/net/Config.h"
#include "llmir/runtime/DistributedRuntime.h"
#include "llmir/runtime/EngineCommunicator.h"
#include "llmir/runtime/LocalLauncher.h"
#include "llmir/runtime/RendezvousStore.h"

#include <boost/json.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace {

using llmir::Result;
using llmir::Status;

constexpr const char *kUsage =
    "usage: llmir-generate --model HF_DIR (--prompt TEXT | --prompt-ids 1,2,3)\n"
    "                      --max-tokens N [--temperature T] [--top-p P] [--top-k K]\n"
    "                      [--seed S] [--ignore-eos] [--threads N] [--json]\n"
    "                      [--tp N] [--pp M] [--sp K] [--timeout-s S]\n"
    "                      [--dump-prompt-logits FILE] [--timing]\n"
    "                      [--device cpu|cuda[:N]] [--collectives auto|gloo|nccl]\n"
    "                      [--kv-cache-dtype auto|f32|bf16] [--matmul-precision highest|medium]\n";

/// Store keys the launcher and its workers share.
const std::string kStorePrefix = "llmir-generate";
std::string programKey(int rank) { return kStorePrefix + "/program/" + std::to_string(rank); }

struct Options {
  std::string modelDir;
  std::optional<std::string> prompt;
  std::optional<std::vector<int32_t>> promptIds;
  int64_t maxTokens = 0;
  llmir::engine::SamplingParams sampling{/*temperature=*/0.0f};
  bool ignoreEos = false;
  unsigned threads = 0;
  bool json = false;
  int tp = 1, pp = 1, sp = 1;
  int timeoutSeconds = 30;
  std::string dumpPromptLogits;
  bool timing = false;
  llmir::engine::Device device;
  llmir::engine::KvCacheDType kvCacheDtype = llmir::engine::KvCacheDType::Auto;
  llmir::engine::MatmulPrecision matmulPrecision = llmir::engine::MatmulPrecision::Highest;
  /// Collectives between ranks: nccl (device memory) or gloo (host memory,
  /// staged from the GPU); auto picks nccl when every rank has its own GPU.
  std::string collectives = "auto";
  bool explicitDeviceIndex = false; // cuda:N rather than cuda
  // Hidden: set by the launcher on its workers.
  int workerRank = -1;
  int worldSize = 0;
  uint16_t storePort = 0;

  int degree() const { return tp * pp * sp; }
  bool isWorker() const { return workerRank >= 0; }
};

template <typename T> Result<T> parseNumber(const std::string &flag, const std::string &text) {
  T value{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size())
    return Status::error(flag + ": '" + text + "' is not a valid number");
  return value;
}

Result<std::vector<int32_t>> parseIds(const std::string &text) {
  std::vector<int32_t> ids;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos
                                                                      : comma - start);
    auto id = parseNumber<int32_t>("--prompt-ids", item);
    if (!id)
      return id.status();
    ids.push_back(*id);
    if (comma == std::string::npos)
      break;
    start = comma + 1;
  }
  return ids;
}

/// The flags through net::Config, as the services read theirs (--key value or
/// --key=value; LLMIR_<KEY> environment variables; --help).
Result<Options> parseArgs(int argc, char **argv) {
  Options o;
  std::string prompt, promptIds, device = "cpu", kvCacheDtype = "auto";
  double temperature = 0.0, topP = 1.0;
  int topK = 0;
  uint32_t threads = 0;
  llmir::net::Config config("llmir-generate");
  config.add("model", &o.modelDir, "Hugging Face checkpoint directory (required)");
  config.add("prompt", &prompt, "prompt text (or prompt-ids)");
  config.add("prompt-ids", &promptIds, "prompt token ids, comma-separated (or prompt)");
  config.add("max-tokens", &o.maxTokens, "tokens to generate (required)");
  config.add("temperature", &temperature, "0: greedy");
  config.add("top-p", &topP, "nucleus mass in (0, 1]");
  config.add("top-k", &topK, "0: off");
  config.add("seed", &o.sampling.seed, "sampling seed");
  config.add("ignore-eos", &o.ignoreEos, "generate max-tokens whatever comes");
  config.add("threads", &threads, "CPU kernel threads per rank (0: the cores / ranks)");
  config.add("json", &o.json, "print one JSON object instead of text");
  config.add("tp", &o.tp, "tensor-parallel ranks");
  config.add("pp", &o.pp, "pipeline stages");
  config.add("sp", &o.sp, "sequence-parallel ranks");
  config.add("timeout-s", &o.timeoutSeconds, "collective and rendezvous timeout");
  config.add("dump-prompt-logits", &o.dumpPromptLogits, "write the prompt's logits here");
  config.add("timing", &o.timing, "report prefill time and decode tokens/s on stderr");
  config.add("device", &device, "cpu, cuda or cuda:N");
  config.add("collectives", &o.collectives, "auto, gloo or nccl");
  config.add("kv-cache-dtype", &kvCacheDtype,
             "auto (bf16 on cuda for 16-bit weights, else f32), f32 or bf16");
  std::string matmulPrecision = "highest";
  config.add("matmul-precision", &matmulPrecision,
             "highest (products within f32 rounding) or medium (activations rounded to bf16 "
             "in products with bf16 weights: cuda's tensor cores, the cpu's vdpbf16ps)");
  // Set by the launcher on its worker processes.
  config.add("worker-rank", &o.workerRank, "internal: this worker's rank");
  config.add("world-size", &o.worldSize, "internal: ranks of the replica");
  config.add("store-port", &o.storePort, "internal: the launcher's rendezvous store");
  LLMIR_RETURN_IF_ERROR(config.load(argc, argv));
  if (config.helpRequested()) {
    std::cout << config.usage();
    std::exit(0);
  }
  if (!prompt.empty())
    o.prompt = prompt;
  if (!promptIds.empty()) {
    auto ids = parseIds(promptIds);
    if (!ids)
      return ids.status();
    o.promptIds = *ids;
  }
  o.sampling.temperature = static_cast<float>(temperature);
  o.sampling.topP = static_cast<float>(topP);
  o.sampling.topK = topK;
  o.threads = threads;
  auto parsedDevice = llmir::engine::Device::parse(device);
  if (!parsedDevice)
    return parsedDevice.status();
  o.device = *parsedDevice;
  o.explicitDeviceIndex = device.find(':') != std::string::npos;
  auto dtype = llmir::engine::parseKvCacheDType(kvCacheDtype);
  if (!dtype)
    return dtype.status();
  o.kvCacheDtype = *dtype;
  auto precision = llmir::engine::parseMatmulPrecision(matmulPrecision);
  if (!precision)
    return precision.status().withContext("--matmul-precision");
  o.matmulPrecision = *precision;
  if (o.collectives != "auto" && o.collectives != "gloo" && o.collectives != "nccl")
    return Status::error("--collectives: '" + o.collectives + "' is not one of auto, gloo, nccl");
  if (o.modelDir.empty())
    return Status::error("--model is required");
  if (o.prompt.has_value() == o.promptIds.has_value())
    return Status::error("give exactly one of --prompt and --prompt-ids");
  if (o.maxTokens <= 0)
    return Status::error("--max-tokens must be a positive number");
  if (o.sampling.temperature < 0)
    return Status::error("--temperature must be >= 0");
  if (!(o.sampling.topP > 0 && o.sampling.topP <= 1))
    return Status::error("--top-p must be in (0, 1]");
  if (o.sampling.topK < 0)
    return Status::error("--top-k must be >= 0");
  if (o.tp < 1 || o.pp < 1 || o.sp < 1)
    return Status::error("--tp, --pp and --sp must be >= 1");
  if (o.timeoutSeconds < 1)
    return Status::error("--timeout-s must be >= 1");
  if (o.isWorker() && (o.workerRank >= o.worldSize || o.storePort == 0))
    return Status::error("--worker-rank needs --world-size > rank and --store-port");
  return o;
}

Result<std::optional<llmir::model::Tokenizer>> loadTokenizer(const std::string &dir) {
  std::filesystem::path path = std::filesystem::path(dir) / "tokenizer.json";
  if (!std::filesystem::exists(path))
    return std::optional<llmir::model::Tokenizer>();
  auto tokenizer = llmir::model::Tokenizer::load(path.string());
  if (!tokenizer)
    return tokenizer.status();
  return std::optional<llmir::model::Tokenizer>(std::move(*tokenizer));
}

/// Writes `logits` as the F32 tensor "logits" of a safetensors file.
Status writeLogits(const std::string &path, const llmir::engine::Tensor &logits) {
  boost::json::object tensor;
  tensor["dtype"] = "F32";
  tensor["shape"] = boost::json::value_from(logits.shape);
  tensor["data_offsets"] = {0, logits.data.size() * sizeof(float)};
  boost::json::object header;
  header["logits"] = tensor;
  std::string text = boost::json::serialize(header);
  text.resize((text.size() + 7) / 8 * 8, ' '); // data starts 8-byte aligned
  uint64_t length = text.size();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char *>(&length), sizeof(length)); // LE host
  out << text;
  out.write(reinterpret_cast<const char *>(logits.data.data()),
            static_cast<std::streamsize>(logits.data.size() * sizeof(float)));
  if (!out)
    return Status::error("--dump-prompt-logits: cannot write '" + path + "'");
  return Status::ok();
}

/// Everything about the request that does not depend on the rank.
struct Request {
  std::optional<llmir::model::Tokenizer> tokenizer;
  llmir::engine::GenerateRequest generate;
};

Result<Request> prepareRequest(const Options &o) {
  auto config = llmir::model::loadModelConfig(o.modelDir);
  if (!config)
    return config.status();
  auto tokenizer = loadTokenizer(o.modelDir);
  if (!tokenizer)
    return tokenizer.status();
  Request r{std::move(*tokenizer), {}};
  if (o.promptIds) {
    r.generate.promptIds = *o.promptIds;
  } else {
    if (!r.tokenizer)
      return Status::error(o.modelDir + " has no tokenizer.json; use --prompt-ids");
    auto ids = r.tokenizer->encode(*o.prompt);
    if (!ids)
      return ids.status();
    r.generate.promptIds = std::move(*ids);
  }
  r.generate.sampling = o.sampling;
  r.generate.stop.maxNewTokens = o.maxTokens;
  if (!o.ignoreEos)
    for (int64_t eos : config->eosTokenIds)
      r.generate.stop.stopTokenIds.push_back(static_cast<int32_t>(eos));
  return r;
}

/// Where this process's rank stands in the replica.
struct RankRole {
  llmir::engine::Communicator *comm = nullptr;
  /// Samples the tokens and prints (the single process, or the last stage's
  /// first TP rank).
  bool decides = true;
  /// Shares the decided token with every rank; empty in a single process.
  llmir::engine::TokenExchange exchange;
};

/// Loads `program`'s weight slices and generates; the deciding rank streams
/// or prints the result.
Status generate(const Options &o, Request &request,
                const llmir::proto::ShardProgram &program, const RankRole &role,
                unsigned threads, llmir::engine::Device device) {
  auto checkpoint = llmir::model::Checkpoint::open(o.modelDir);
  if (!checkpoint)
    return checkpoint.status();
  llmir::engine::ExecutorOptions executorOptions;
  executorOptions.numThreads = threads;
  executorOptions.device = device;
  executorOptions.kvCacheDtype = o.kvCacheDtype;
  executorOptions.matmulPrecision = o.matmulPrecision;
  // Enough blocks for this one sequence.
  const int64_t blockSize = program.kv_cache().block_size();
  const int64_t length =
      static_cast<int64_t>(request.generate.promptIds.size()) + o.maxTokens;
  executorOptions.numKvBlocks = (length + blockSize - 1) / blockSize;
  auto executor = llmir::engine::Executor::create(
      program, llmir::engine::checkpointWeights(*checkpoint), executorOptions,
      role.comm);
  if (!executor)
    return executor.status();

  const bool prints = role.decides;
  // Stream text as it is produced unless JSON was asked for.
  std::optional<llmir::model::StreamDecoder> stream;
  if (prints && !o.json && request.tokenizer)
    stream.emplace(*request.tokenizer);
  Status streamStatus;
  llmir::engine::Generator generator(**executor, role.decides, role.exchange);
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  Clock::time_point firstToken, lastToken;
  auto result = generator.generate(
      request.generate, !o.dumpPromptLogits.empty(), [&](int32_t token) {
        lastToken = Clock::now();
        if (firstToken == Clock::time_point())
          firstToken = lastToken;
        if (!prints || o.json)
          return;
        if (!stream) { // no tokenizer: stream the ids
          std::cout << token << ' ' << std::flush;
          return;
        }
        auto text = stream->push(token);
        if (!text)
          streamStatus = text.status();
        else
          std::cout << *text << std::flush;
      });
  if (!result)
    return result.status();
  LLMIR_RETURN_IF_ERROR(streamStatus);
  if (!prints)
    return Status::ok();
  if (o.timing) {
    // Decode: every token after the first (the prefill step's).
    std::chrono::duration<double> prefill = firstToken - start;
    std::chrono::duration<double> decode = lastToken - firstToken;
    size_t decoded = result->outputIds.size() - 1;
    std::fprintf(stderr, "timing: prefill %.3f ms, decode %zu tokens in %.3f s (%.1f tokens/s)\n",
                 prefill.count() * 1e3, decoded, decode.count(),
                 decoded ? decoded / decode.count() : 0.0);
  }
  if (!o.dumpPromptLogits.empty())
    LLMIR_RETURN_IF_ERROR(writeLogits(o.dumpPromptLogits, result->promptLogits));
  if (stream)
    std::cout << stream->flush() << "\n";
  if (!o.json) {
    if (!stream)
      std::cout << "\n";
    return Status::ok();
  }

  boost::json::object out;
  out["prompt_ids"] = boost::json::value_from(request.generate.promptIds);
  out["output_ids"] = boost::json::value_from(result->outputIds);
  if (request.tokenizer) {
    auto text = request.tokenizer->decode(result->outputIds);
    if (!text)
      return text.status();
    out["text"] = *text;
  } else {
    out["text"] = nullptr;
  }
  std::cout << boost::json::serialize(out) << "\n";
  return Status::ok();
}

llmir::compiler::CompileOptions compileOptions(const Options &o) {
  llmir::compiler::CompileOptions options;
  options.tp = o.tp;
  options.pp = o.pp;
  options.sp = o.sp;
  return options;
}

Status runSingleProcess(const Options &o) {
  auto request = prepareRequest(o);
  if (!request)
    return request.status();
  auto compiled = llmir::compiler::compileHuggingFace(o.modelDir, compileOptions(o));
  if (!compiled)
    return compiled.status();
  return generate(o, *request, compiled->programs.front(), RankRole{}, o.threads,
                  o.device);
}

/// The rank that samples: the first rank of the last pipeline stage (rank
/// order puts the stage outermost, docs/compiler.md).
int decidingRank(const llmir::proto::ShardProgram &program) {
  int perStage = static_cast<int>(program.world_size() / program.num_stages());
  return perStage * static_cast<int>(program.num_stages() - 1);
}

/// One worker process: fetch this rank's program, join the replica, generate.
Status runWorker(const Options &o) {
  const std::chrono::milliseconds timeout = std::chrono::seconds(o.timeoutSeconds);
  auto request = prepareRequest(o);
  if (!request)
    return request.status();
  auto store = llmir::runtime::RendezvousClient::connect("127.0.0.1", o.storePort, timeout);
  if (!store)
    return store.status();
  auto bytes = (*store)->get(programKey(o.workerRank), timeout);
  if (!bytes)
    return bytes.status().withContext("fetching this rank's program");
  llmir::proto::ShardProgram program;
  if (!program.ParseFromArray(bytes->data(), static_cast<int>(bytes->size())))
    return Status::error("the launcher's program for this rank does not parse");

  // `--device cuda` spreads the ranks over the visible GPUs (rank r on
  // device r % count); `cuda:N` puts every rank on device N.
  llmir::engine::Device device = o.device;
  const int gpus = llmir::engine::cudaDeviceCount();
  if (device.isCuda() && !o.explicitDeviceIndex && gpus > 0)
    device.index = o.workerRank % gpus;
  llmir::runtime::RuntimeConfig config;
  config.worldSize = o.worldSize;
  config.rank = o.workerRank;
  config.storePort = o.storePort;
  config.storePrefix = kStorePrefix;
  config.timeout = timeout;
  // NCCL needs a GPU per rank; Gloo moves host copies of device tensors.
  const bool nccl = o.collectives == "nccl" ||
                    (o.collectives == "auto" && device.isCuda() && gpus >= o.worldSize);
  if (nccl) {
    config.backend = "nccl";
    config.cudaDevice = device.index;
  }
  auto runtime = llmir::runtime::DistributedRuntime::init(config);
  if (!runtime)
    return runtime.status();
  auto comm = llmir::runtime::EngineCommunicator::create(**runtime, program);
  if (!comm)
    return comm.status();

  const int decider = decidingRank(program);
  RankRole role;
  role.comm = comm->get();
  role.decides = o.workerRank == decider;
  llmir::runtime::DistributedRuntime &rt = **runtime;
  role.exchange = [&rt, decider](int32_t token) -> Result<int32_t> {
    LLMIR_RETURN_IF_ERROR(rt.broadcast(&token, 1, llmir::runtime::DataType::I32,
                                       decider, rt.world()));
    return token;
  };
  // The cores are shared by every rank of the replica.
  unsigned threads = o.threads;
  if (threads == 0)
    threads = std::max(1u, std::thread::hardware_concurrency() /
                               static_cast<unsigned>(o.worldSize));
  return generate(o, *request, program, role, threads, device);
}

/// Compiles once, publishes each rank's program in a loopback store, runs
/// one worker process per rank and names the rank that failed first.
Status runLauncher(const Options &o, int argc, char **argv) {
  auto compiled = llmir::compiler::compileHuggingFace(o.modelDir, compileOptions(o));
  if (!compiled)
    return compiled.status();
  const int world = static_cast<int>(compiled->programs.size());
  auto server = llmir::runtime::RendezvousServer::start("127.0.0.1", 0);
  if (!server)
    return server.status().withContext("starting the rendezvous store");
  auto store = llmir::runtime::RendezvousClient::connect(
      "127.0.0.1", (*server)->port(), std::chrono::seconds(o.timeoutSeconds));
  if (!store)
    return store.status();
  for (int r = 0; r < world; ++r)
    LLMIR_RETURN_IF_ERROR((*store)->set(
        programKey(r), compiled->programs[static_cast<size_t>(r)].SerializeAsString()));

  llmir::runtime::LaunchOptions launch;
  launch.worldSize = world;
  launch.stdoutRank = decidingRank(compiled->programs.front());
  // Survivors fail within the runtime timeout; a little slack for exiting.
  launch.grace = std::chrono::seconds(o.timeoutSeconds + 5);
  launch.argsOf = llmir::runtime::selfRankArgs(argc, argv, world, (*server)->port());
  return llmir::runtime::launchLocalRanks(launch).withContext(
      std::to_string(world) + " ranks (tp " + std::to_string(o.tp) + ", pp " +
      std::to_string(o.pp) + ", sp " + std::to_string(o.sp) + ")");
}

} // namespace

int main(int argc, char **argv) {
  auto options = parseArgs(argc, argv);
  if (!options) {
    std::cerr << "llmir-generate: error: " << options.message() << "\n" << kUsage;
    return 2;
  }
  Status status;
  std::string who = "llmir-generate";
  if (options->isWorker()) {
    who += ": rank " + std::to_string(options->workerRank);
    status = runWorker(*options);
  } else if (options->degree() > 1) {
    status = runLauncher(*options, argc, argv);
  } else {
    status = runSingleProcess(*options);
  }
  if (!status) {
    // One write, so the lines of ranks sharing stderr do not interleave.
    std::string line = who + ": error: " + status.message() + "\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
    return 1;
  }
  return 0;
}

// llmir-generate --model HF_DIR (--prompt TEXT | --prompt-ids 1,2,3)
//                --max-tokens N [--temperature T] [--top-p P] [--top-k K]
//                [--seed S] [--ignore-eos] [--threads N] [--json]
//
// Compiles the checkpoint for one rank, runs it on the CPU engine and prints
// the continuation (text, or with --json one object with prompt_ids,
// output_ids and text). Greedy by default (temperature 0).
#include "llmir/compiler/Compile.h"
#include "llmir/engine/CheckpointWeights.h"
#include "llmir/engine/Executor.h"
#include "llmir/engine/Generator.h"
#include "llmir/model/Checkpoint.h"
#include "llmir/model/ModelConfig.h"
#include "llmir/model/Tokenizer.h"

#include <boost/json.hpp>

#include <charconv>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

namespace {

using llmir::Result;
using llmir::Status;

constexpr const char *kUsage =
    "usage: llmir-generate --model HF_DIR (--prompt TEXT | --prompt-ids 1,2,3)\n"
    "                      --max-tokens N [--temperature T] [--top-p P] [--top-k K]\n"
    "                      [--seed S] [--ignore-eos] [--threads N] [--json]\n";

struct Options {
  std::string modelDir;
  std::optional<std::string> prompt;
  std::optional<std::vector<int32_t>> promptIds;
  int64_t maxTokens = 0;
  llmir::engine::SamplingParams sampling{/*temperature=*/0.0f};
  bool ignoreEos = false;
  unsigned threads = 0;
  bool json = false;
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

Result<Options> parseArgs(int argc, char **argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--ignore-eos") {
      o.ignoreEos = true;
      continue;
    }
    if (flag == "--json") {
      o.json = true;
      continue;
    }
    if (i + 1 >= argc)
      return Status::error(flag + " needs a value");
    std::string value = argv[++i];
    Status status;
    auto set = [&](auto parsed, auto &field) {
      if (!parsed)
        status = parsed.status();
      else
        field = *parsed;
    };
    if (flag == "--model")
      o.modelDir = value;
    else if (flag == "--prompt")
      o.prompt = value;
    else if (flag == "--prompt-ids")
      set(parseIds(value), o.promptIds);
    else if (flag == "--max-tokens")
      set(parseNumber<int64_t>(flag, value), o.maxTokens);
    else if (flag == "--temperature")
      set(parseNumber<float>(flag, value), o.sampling.temperature);
    else if (flag == "--top-p")
      set(parseNumber<float>(flag, value), o.sampling.topP);
    else if (flag == "--top-k")
      set(parseNumber<int>(flag, value), o.sampling.topK);
    else if (flag == "--seed")
      set(parseNumber<uint64_t>(flag, value), o.sampling.seed);
    else if (flag == "--threads")
      set(parseNumber<unsigned>(flag, value), o.threads);
    else
      return Status::error("unknown option '" + flag + "'");
    LLMIR_RETURN_IF_ERROR(status);
  }
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

Status run(const Options &o) {
  auto config = llmir::model::loadModelConfig(o.modelDir);
  if (!config)
    return config.status();
  auto tokenizer = loadTokenizer(o.modelDir);
  if (!tokenizer)
    return tokenizer.status();

  std::vector<int32_t> promptIds;
  if (o.promptIds) {
    promptIds = *o.promptIds;
  } else {
    if (!*tokenizer)
      return Status::error(o.modelDir + " has no tokenizer.json; use --prompt-ids");
    auto ids = (*tokenizer)->encode(*o.prompt);
    if (!ids)
      return ids.status();
    promptIds = std::move(*ids);
  }

  auto compiled = llmir::compiler::compileHuggingFace(o.modelDir, {});
  if (!compiled)
    return compiled.status();
  auto checkpoint = llmir::model::Checkpoint::open(o.modelDir);
  if (!checkpoint)
    return checkpoint.status();

  llmir::engine::ExecutorOptions executorOptions;
  executorOptions.numThreads = o.threads;
  // Enough blocks for this one sequence.
  const int64_t blockSize = compiled->programs.front().kv_cache().block_size();
  const int64_t length = static_cast<int64_t>(promptIds.size()) + o.maxTokens;
  executorOptions.numKvBlocks = (length + blockSize - 1) / blockSize;
  auto executor = llmir::engine::Executor::create(
      compiled->programs.front(), llmir::engine::checkpointWeights(*checkpoint),
      executorOptions);
  if (!executor)
    return executor.status();

  llmir::engine::GenerateRequest request;
  request.promptIds = promptIds;
  request.sampling = o.sampling;
  request.stop.maxNewTokens = o.maxTokens;
  if (!o.ignoreEos)
    for (int64_t eos : config->eosTokenIds)
      request.stop.stopTokenIds.push_back(static_cast<int32_t>(eos));

  // Stream text as it is produced unless JSON was asked for.
  std::optional<llmir::model::StreamDecoder> stream;
  if (!o.json && *tokenizer)
    stream.emplace(**tokenizer);
  Status streamStatus;
  llmir::engine::Generator generator(**executor);
  auto result = generator.generate(request, false, [&](int32_t token) {
    if (!stream) {
      if (!o.json) // no tokenizer: stream the ids
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
  if (stream)
    std::cout << stream->flush() << "\n";
  if (!o.json) {
    if (!stream)
      std::cout << "\n";
    return Status::ok();
  }

  boost::json::object out;
  out["prompt_ids"] = boost::json::value_from(promptIds);
  out["output_ids"] = boost::json::value_from(result->outputIds);
  if (*tokenizer) {
    auto text = (*tokenizer)->decode(result->outputIds);
    if (!text)
      return text.status();
    out["text"] = *text;
  } else {
    out["text"] = nullptr;
  }
  std::cout << boost::json::serialize(out) << "\n";
  return Status::ok();
}

} // namespace

int main(int argc, char **argv) {
  auto options = parseArgs(argc, argv);
  if (!options) {
    std::cerr << "llmir-generate: error: " << options.message() << "\n" << kUsage;
    return 2;
  }
  Status status = run(*options);
  if (!status) {
    std::cerr << "llmir-generate: error: " << status.message() << "\n";
    return 1;
  }
  return 0;
}

#include "llmir/engine/Generator.h"

#include <numeric>

namespace llmir::engine {

Generator::Generator(Executor &executor)
    : Generator(executor, /*decides=*/true, TokenExchange()) {}

Generator::Generator(Executor &executor, bool decides, TokenExchange exchange)
    : executor_(executor), decides_(decides), exchange_(std::move(exchange)),
      blocks_(static_cast<int32_t>(executor.kvCacheShape().numBlocks)) {}

Result<GenerateResult> Generator::generate(const GenerateRequest &request,
                                            bool wantPromptLogits,
                                            const std::function<void(int32_t)> &onToken) {
  if (request.promptIds.empty())
    return Status::error("generate: the prompt has no tokens, expected at least one");
  if (request.stop.maxNewTokens <= 0)
    return Status::error("generate: max new tokens is " +
                         std::to_string(request.stop.maxNewTokens) +
                         ", expected a positive bound");
  const int64_t blockSize = executor_.kvCacheShape().blockSize;
  const int64_t maxLength =
      static_cast<int64_t>(request.promptIds.size()) + request.stop.maxNewTokens;
  const int64_t blocksNeeded = (maxLength + blockSize - 1) / blockSize;
  if (blocksNeeded > blocks_.numFree())
    return Status::error("generate: " + std::to_string(maxLength) +
                         " tokens need " + std::to_string(blocksNeeded) +
                         " KV blocks, only " + std::to_string(blocks_.numFree()) +
                         " are free");
  // Every rank allocates the same way, so block tables agree across ranks.
  auto table = blocks_.allocate(static_cast<int32_t>(blocksNeeded));
  if (!table)
    return table.status();
  struct FreeOnExit {
    BlockAllocator &allocator;
    std::vector<int32_t> blocks;
    ~FreeOnExit() { (void)allocator.free(blocks); }
  } release{blocks_, *table};

  StepInput step;
  step.blockTables = {*table};
  step.tokenIds = request.promptIds;
  step.positions.resize(step.tokenIds.size());
  std::iota(step.positions.begin(), step.positions.end(), 0);
  step.tokenSeq.assign(step.tokenIds.size(), 0);
  if (wantPromptLogits) {
    step.outputRows.resize(step.tokenIds.size());
    std::iota(step.outputRows.begin(), step.outputRows.end(), 0);
  }

  GenerateResult result;
  Sampler sampler(request.sampling);
  int32_t position = static_cast<int32_t>(request.promptIds.size());
  while (true) {
    int32_t decided = -1;
    const std::string stepName = "step " + std::to_string(result.outputIds.size());
    if (decides_ && !(wantPromptLogits && result.outputIds.empty())) {
      // The token is drawn where the logits are (on a GPU only the id
      // crosses), with the draw this Sampler makes: the same tokens.
      RowSampling row{request.sampling, 0.0, false};
      if (!request.sampling.greedy())
        row.uniform = sampler.nextUniform();
      auto tokens = executor_.stepSample(step, {&row, 1});
      if (!tokens)
        return tokens.status().withContext(stepName);
      decided = tokens->front().id;
    } else if (auto logits = executor_.step(step); !logits) {
      return logits.status().withContext(stepName);
    } else if (decides_) {
      if (logits->data.empty())
        return Status::error("generate: the deciding rank's program has no "
                             "output; expected the last pipeline stage");
      decided = sampler.sample(std::span<const float>(
          logits->data.data() + (logits->rows() - 1) * logits->rowSize(),
          static_cast<size_t>(logits->rowSize())));
      if (wantPromptLogits && result.outputIds.empty())
        result.promptLogits = *logits;
    }
    auto token = exchange_ ? exchange_(decided) : Result<int32_t>(decided);
    if (!token)
      return token.status().withContext(
          "sharing token " + std::to_string(result.outputIds.size()));
    result.outputIds.push_back(*token);
    if (onToken)
      onToken(*token);
    if (request.stop.shouldStop(*token, static_cast<int64_t>(result.outputIds.size())))
      break;
    step.tokenIds = {*token};
    step.positions = {position++};
    step.tokenSeq = {0};
    step.outputRows.clear();
  }
  return result;
}

} // namespace llmir::engine

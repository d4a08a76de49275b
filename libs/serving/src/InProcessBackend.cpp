#include "llmir/serving/InProcessBackend.h"

#include "llmir/proto/shard_program.pb.h"
#include "llmir/serving/StepSampling.h"

#include <chrono>

namespace llmir::serving {

Result<std::unique_ptr<InProcessBackend>>
InProcessBackend::create(const proto::ShardProgram &program,
                         const engine::WeightProvider &weights,
                         const engine::ExecutorOptions &options) {
  auto executor = engine::Executor::create(program, weights, options);
  if (!executor)
    return executor.status().withContext("in-process replica");
  ReplicaInfo info;
  const engine::KvCacheShape &kv = (*executor)->kvCacheShape();
  info.numKvBlocks = static_cast<int32_t>(kv.numBlocks);
  info.blockSize = static_cast<int32_t>(kv.blockSize);
  info.vocabSize = static_cast<int32_t>(program.vocab_size());
  info.chainsDecode = true;
  return std::unique_ptr<InProcessBackend>(
      new InProcessBackend(std::move(*executor), info));
}

void InProcessBackend::submit(const proto::StepRequest &request, StepDone done) {
  Result<proto::StepResponse> result = [&]() -> Result<proto::StepResponse> {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto start = std::chrono::steady_clock::now();
    proto::StepResponse response;
    response.set_step_id(request.step_id());
    response.set_ok(true);
    LLMIR_RETURN_IF_ERROR(stepAndSample(*executor_, request, true, response, &chain_)
                              .withContext("step " + std::to_string(request.step_id())));
    response.set_step_seconds(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return response;
  }();
  done(std::move(result));
}

} // namespace llmir::serving

// A replica of one rank in this process: steps run on an engine::Executor and
// are sampled exactly as a shard worker samples them (StepSampling.h).
#pragma once

#include "llmir/engine/Executor.h"
#include "llmir/serving/ReplicaBackend.h"
#include "llmir/serving/StepSampling.h"

#include <memory>
#include <mutex>

namespace llmir::serving {

class InProcessBackend final : public ReplicaBackend {
public:
  /// `program` must be a single-rank program (no collectives).
  static Result<std::unique_ptr<InProcessBackend>>
  create(const proto::ShardProgram &program, const engine::WeightProvider &weights,
         const engine::ExecutorOptions &options);

  ReplicaInfo info() const override { return info_; }
  /// Runs the step synchronously on the caller's thread; steps submitted
  /// from several threads run one at a time.
  void submit(const proto::StepRequest &request, StepDone done) override;

private:
  InProcessBackend(std::unique_ptr<engine::Executor> executor, ReplicaInfo info)
      : executor_(std::move(executor)), info_(info) {}

  std::mutex mutex_;
  std::unique_ptr<engine::Executor> executor_;
  DecodeChain chain_;
  ReplicaInfo info_;
};

} // namespace llmir::serving

// Where a replica's steps run. The scheduler owns every sequence's state
// (tokens, block tables, sampling seeds), so a backend is a pure function of
// the StepRequest plus the KV cache it holds: in process over an Executor, or
// remote over the replica's workers.
#pragma once

#include "llmir/proto/worker.pb.h"
#include "llmir/support/Status.h"

#include <cstdint>
#include <functional>

namespace llmir::serving {

/// What the scheduler must know of a replica's KV cache and pipeline.
struct ReplicaInfo {
  int32_t numKvBlocks = 0;
  int32_t blockSize = 0;
  int32_t vocabSize = 0;
  /// Steps the replica can hold in flight (its pipeline stages).
  int32_t pipelineDepth = 1;
  /// The ranks reach a KV-block store (docs/kv-store.md): steps mark the
  /// blocks they fill for write-through, and loadBlocks() fills a
  /// sequence's blocks from the store.
  bool kvStore = false;
  /// The replica fills a chained_input sequence with the token its previous
  /// step sampled for it (DecodeChain: every rank that computes it also
  /// samples, running steps in order: one stage, whose ranks all hold the
  /// gathered logits), so the scheduler may send a sequence's next decode
  /// while this one is in flight.
  bool chainsDecode = false;
};

class ReplicaBackend {
public:
  /// Called once per submitted step with the sampled tokens, or an error
  /// (the scheduler re-queues the step's sequences). May run on any thread,
  /// and before submit() returns.
  using StepDone = std::function<void(Result<proto::StepResponse>)>;

  virtual ~ReplicaBackend() = default;
  virtual ReplicaInfo info() const = 0;
  /// Runs `request`; the block ids in it are this replica's.
  virtual void submit(const proto::StepRequest &request, StepDone done) = 0;

  /// Called once per loadBlocks with the blocks every rank loaded (the
  /// leading run from request.first_block), or an error (nothing usable).
  /// May run on any thread, and before loadBlocks() returns.
  using LoadDone = std::function<void(Result<uint32_t> blocksLoaded)>;
  /// Fills the blocks of `request` from the KV-block store (info().kvStore).
  /// The blocks must not be used by a step in flight.
  virtual void loadBlocks(const proto::KvLoadRequest &request, LoadDone done) {
    (void)request;
    done(Status::error("this replica has no KV-block store"));
  }
};

} // namespace llmir::serving

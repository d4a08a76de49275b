// The shard worker's side of the worker protocol: register, heartbeat on
// their own thread, answer AssignRank with RankReady and each StepRequest
// with a StepResponse, each KvLoadRequest with a KvLoadResponse (the
// RankRunner does the work), and drain: when
// `terminationRequested` turns true the session sends Drain and keeps
// answering steps until the scheduler answers Drain, the connection closes or
// the drain grace passes.
//
// Every send is checked: a send that fails is logged, the connection closed
// and the session ends with SendFailed (the service exits non-zero and an
// orchestrator restarts it), instead of running on unheard.
#pragma once

#include "llmir/proto/worker.pb.h"
#include "llmir/workerproto/Transport.h"

#include <chrono>
#include <functional>
#include <string>

namespace llmir::workerproto {

/// What the session runs on this rank (the shard worker's engine).
class RankRunner {
public:
  virtual ~RankRunner() = default;
  /// Joins the replica `assign` names; the answer says whether it worked.
  virtual proto::RankReady setUp(const proto::AssignRank &assign) = 0;
  /// Runs one step on this rank.
  virtual proto::StepResponse step(const proto::StepRequest &request) = 0;
  /// Pipelined steps (a runner that has none keeps these defaults):
  /// launchStep() starts `request` and returns without its answer, or
  /// returns false having started nothing (the session then calls step());
  /// launchStepBehind() starts a step behind the ones launched, or returns
  /// false; finishStep() answers the oldest launched step. The session
  /// answers every launched step before it handles another message.
  virtual bool launchStep(const proto::StepRequest &) { return false; }
  virtual bool launchStepBehind(const proto::StepRequest &) { return false; }
  virtual proto::StepResponse finishStep() {
    proto::StepResponse response;
    response.set_ok(false);
    response.set_error("this rank launches no steps");
    return response;
  }
  /// Fills blocks from the KV-block store (AssignRank.kv_store); a rank
  /// without a store answers that it has none.
  virtual proto::KvLoadResponse loadKvBlocks(const proto::KvLoadRequest &request) {
    proto::KvLoadResponse response;
    response.set_load_id(request.load_id());
    response.set_ok(false);
    response.set_error("this rank has no KV-block store");
    return response;
  }
};

struct WorkerSessionOptions {
  std::string workerId;
  std::string host;   // where peers reach this worker (RegisterWorker.host)
  std::string device; // "cpu", "cuda:0"
  std::chrono::milliseconds heartbeatPeriod{1000};
  /// After termination was requested, the session ends at the latest after this.
  std::chrono::milliseconds drainGrace{30000};
  /// Polled about every `pollPeriod`; true starts the drain (SIGTERM).
  std::function<bool()> terminationRequested;
  std::chrono::milliseconds pollPeriod{100};
};

enum class SessionEnd {
  DrainedByScheduler,  // the scheduler answered Drain (after ours, or on its own)
  ClosedWhileDraining, // the connection went while we drained
  DrainGraceOver,      // drained, the scheduler did not answer in time
  SchedulerLost,       // the connection went while serving
  SendFailed,          // a send failed: the connection was closed
};

/// 0 for the ends of a drain, 1 for the others (an orchestrator restarts).
int exitCode(SessionEnd end);
const char *describe(SessionEnd end);

/// Runs the protocol on `link` until it ends (blocks the calling thread).
SessionEnd runWorkerSession(SchedulerLink &link, RankRunner &runner,
                            const WorkerSessionOptions &options);

} // namespace llmir::workerproto

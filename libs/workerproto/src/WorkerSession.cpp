#include "llmir/workerproto/WorkerSession.h"

#include "llmir/net/Log.h"
#include "llmir/workerproto/Messages.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

namespace llmir::workerproto {

int exitCode(SessionEnd end) {
  switch (end) {
  case SessionEnd::DrainedByScheduler:
  case SessionEnd::ClosedWhileDraining:
  case SessionEnd::DrainGraceOver:
    return 0;
  case SessionEnd::SchedulerLost:
  case SessionEnd::SendFailed:
    return 1;
  }
  return 1;
}

const char *describe(SessionEnd end) {
  switch (end) {
  case SessionEnd::DrainedByScheduler:
    return "drained by the scheduler";
  case SessionEnd::ClosedWhileDraining:
    return "connection closed while draining";
  case SessionEnd::DrainGraceOver:
    return "drain grace period over";
  case SessionEnd::SchedulerLost:
    return "scheduler connection lost";
  case SessionEnd::SendFailed:
    return "a send to the scheduler failed";
  }
  return "?";
}

namespace {

/// Sends on `link` from several threads; the first failure closes the link
/// and is remembered, so the session ends instead of running on unheard.
class CheckedSender {
public:
  explicit CheckedSender(SchedulerLink &link) : link_(link) {}

  bool send(const proto::Envelope &envelope, const char *what) {
    Status sent = link_.send(envelope);
    if (sent)
      return true;
    if (!failed_.exchange(true)) {
      net::logError("send to the scheduler failed; closing the connection",
                    {{"message", what}, {"error", sent.message()}});
      link_.abort(Status::error(std::string("send of ") + what + " failed: " + sent.message()));
    }
    return false;
  }
  bool failed() const { return failed_; }

private:
  SchedulerLink &link_;
  std::atomic<bool> failed_{false};
};

} // namespace

SessionEnd runWorkerSession(SchedulerLink &link, RankRunner &runner,
                            const WorkerSessionOptions &options) {
  CheckedSender sender(link);
  if (!sender.send(registerWorkerMessage(options.workerId, options.host, options.device),
                   "RegisterWorker"))
    return SessionEnd::SendFailed;

  std::mutex heartbeatMutex;
  std::condition_variable heartbeatWake;
  bool stopHeartbeat = false;
  std::thread heartbeat([&] {
    std::unique_lock lock(heartbeatMutex);
    while (!heartbeatWake.wait_for(lock, options.heartbeatPeriod, [&] { return stopHeartbeat; }))
      if (!sender.send(heartbeatMessage(options.workerId, unixMillisNow()), "Heartbeat"))
        return; // the link is closed: the loop below sees it
  });

  SessionEnd end = SessionEnd::SchedulerLost;
  std::optional<std::chrono::steady_clock::time_point> drainDeadline;
  // A message taken while launched steps ran, handled next; the last
  // launched step's time on the device (its answer's step_seconds).
  std::optional<proto::Envelope> pending;
  double lastStepSeconds = 0.0;
  constexpr int64_t kMostWaitUs = 5000;
  for (;;) {
    if (sender.failed()) {
      end = SessionEnd::SendFailed;
      break;
    }
    if (!drainDeadline && options.terminationRequested && options.terminationRequested()) {
      net::logInfo("termination requested: draining",
                   {{"grace_ms", static_cast<int64_t>(options.drainGrace.count())}});
      drainDeadline = std::chrono::steady_clock::now() + options.drainGrace;
      if (!sender.send(drainMessage("worker received SIGTERM"), "Drain")) {
        end = SessionEnd::SendFailed;
        break;
      }
    }
    if (drainDeadline && std::chrono::steady_clock::now() >= *drainDeadline) {
      net::logWarn("drain grace period over; ending the session");
      end = SessionEnd::DrainGraceOver;
      break;
    }
    Result<proto::Envelope> message =
        pending ? Result<proto::Envelope>(std::move(*pending)) : link.receive(options.pollPeriod);
    pending.reset();
    if (!message) {
      if (link.isOpen())
        continue; // just a receive timeout
      if (sender.failed())
        end = SessionEnd::SendFailed;
      else if (drainDeadline)
        end = SessionEnd::ClosedWhileDraining;
      else {
        net::logError("scheduler connection lost", {{"error", message.message()}});
        end = SessionEnd::SchedulerLost;
      }
      break;
    }
    if (message->has_assign_rank()) {
      const proto::AssignRank &assign = message->assign_rank();
      net::logInfo("assigned", {{"replica_id", assign.replica_id()},
                                {"rank", assign.rank()},
                                {"world_size", assign.world_size()},
                                {"plan_id", assign.plan_id()}});
      proto::RankReady ready = runner.setUp(assign);
      ready.set_replica_id(assign.replica_id());
      ready.set_rank(assign.rank());
      if (!sender.send(rankReadyMessage(std::move(ready)), "RankReady")) {
        end = SessionEnd::SendFailed;
        break;
      }
    } else if (message->has_step_request()) {
      if (!runner.launchStep(message->step_request())) {
        if (!sender.send(stepResponseMessage(runner.step(message->step_request())),
                         "StepResponse")) {
          end = SessionEnd::SendFailed;
          break;
        }
        continue;
      }
      // Launched: while it runs, a step the scheduler already sent is
      // launched behind it (a chained decode), then the oldest is answered,
      // and so on while they keep coming; a drain or any other message
      // waits for the launched steps' answers.
      size_t launched = 1;
      while (launched > 0) {
        // With only the oldest step running, its successor is usually on its
        // way: the scheduler sends it on the answer before. Waiting for it up
        // to ~3/4 of a step (the running one still has that long to go)
        // costs nothing and lets it start behind; a step launched behind
        // the running one means no wait.
        const auto wait = std::chrono::microseconds(
            launched == 1 ? std::min<int64_t>(static_cast<int64_t>(750'000 * lastStepSeconds),
                                              kMostWaitUs)
                          : 0);
        if (!pending && !sender.failed())
          if (auto next = link.receive(wait))
            pending = std::move(*next);
        const bool draining = drainDeadline || sender.failed() ||
                              (options.terminationRequested && options.terminationRequested());
        if (pending && pending->has_step_request() && !draining &&
            runner.launchStepBehind(pending->step_request())) {
          pending.reset();
          ++launched;
          continue;
        }
        --launched;
        proto::StepResponse answer = runner.finishStep();
        lastStepSeconds = answer.ok() ? answer.step_seconds() : 0.0;
        if (!sender.send(stepResponseMessage(std::move(answer)), "StepResponse"))
          end = SessionEnd::SendFailed;
      }
      if (end == SessionEnd::SendFailed)
        break;
    } else if (message->has_kv_load_request()) {
      if (!sender.send(kvLoadResponseMessage(runner.loadKvBlocks(message->kv_load_request())),
                       "KvLoadResponse")) {
        end = SessionEnd::SendFailed;
        break;
      }
    } else if (message->has_drain()) {
      net::logInfo("drained by the scheduler", {{"reason", message->drain().reason()}});
      end = SessionEnd::DrainedByScheduler;
      break;
    } else if (message->has_error()) {
      net::logError("scheduler reported an error", {{"error", message->error().message()}});
    }
  }

  {
    std::lock_guard lock(heartbeatMutex);
    stopHeartbeat = true;
  }
  heartbeatWake.notify_all();
  heartbeat.join();
  link.close();
  return end;
}

} // namespace llmir::workerproto

// The worker protocol's two sides (libs/workerproto) against each other in
// one process over loopback TCP: a WorkerMembership feeding a real
// ReplicaRouter, WorkerSessions whose ranks run the demo model in process,
// and rogue peers speaking the framed protocol by hand (no secret, a wrong
// secret, silent, oversize frames, a rank answering twice, a worker outside
// the replica answering its steps).
#include "DemoModel.h"

#include "llmir/serving/ReplicaRouter.h"
#include "llmir/support/ClusterAuth.h"
#include "llmir/workerproto/Membership.h"
#include "llmir/workerproto/Messages.h"
#include "llmir/workerproto/WorkerSession.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <future>
#include <thread>

namespace llmir::workerproto {
namespace {

using serving::testing::DemoModel;
using namespace std::chrono_literals;

/// Collects every request's tokens and end. Declare it before the Scheduler:
/// the router's threads may deliver events (a cancelled request's finish, a
/// step in flight) until the Scheduler is destroyed, and the callback writes
/// into the Collector (declared after, it was gone first: ASan reported a
/// stack-use-after-scope).
struct Collector {
  std::mutex mutex;
  std::condition_variable cv;
  std::map<uint64_t, std::vector<int32_t>> tokens;
  std::map<uint64_t, serving::FinishReason> finished;
  int64_t total = 0;

  serving::EventCallback callback() {
    return [this](const serving::SequenceEvent &e) {
      std::lock_guard<std::mutex> lock(mutex);
      if (e.tokenId) {
        tokens[e.requestId].push_back(*e.tokenId);
        ++total;
      }
      if (e.finish)
        finished[e.requestId] = *e.finish;
      cv.notify_all();
    };
  }
  bool waitFor(const std::function<bool()> &done, std::chrono::milliseconds within = 120s) {
    std::unique_lock<std::mutex> lock(mutex);
    return cv.wait_for(lock, within, done);
  }
  int64_t count() {
    std::lock_guard<std::mutex> lock(mutex);
    return total;
  }
};

serving::RequestParams greedy(const std::vector<int32_t> &prompt, int64_t maxTokens) {
  serving::RequestParams p;
  p.promptIds = prompt;
  p.maxTokens = maxTokens;
  p.ignoreEos = true;
  p.sampling.temperature = 0;
  return p;
}

/// A rank of the demo model in this process (a tp=1 replica).
class InProcessRank final : public RankRunner {
public:
  explicit InProcessRank(std::unique_ptr<serving::InProcessBackend> backend)
      : backend_(std::move(backend)) {}
  proto::RankReady setUp(const proto::AssignRank &) override {
    proto::RankReady ready;
    ready.set_ok(backend_ != nullptr);
    return ready;
  }
  proto::StepResponse step(const proto::StepRequest &request) override {
    std::promise<Result<proto::StepResponse>> answer;
    backend_->submit(request, [&](Result<proto::StepResponse> r) { answer.set_value(std::move(r)); });
    Result<proto::StepResponse> r = answer.get_future().get();
    if (r)
      return *r;
    proto::StepResponse failed;
    failed.set_step_id(request.step_id());
    failed.set_ok(false);
    failed.set_error(r.message());
    return failed;
  }

private:
  std::unique_ptr<serving::InProcessBackend> backend_;
};

/// The scheduler side: a router over the demo model's limits and a
/// membership listening on loopback.
struct Scheduler {
  const DemoModel *model = DemoModel::get();
  std::unique_ptr<serving::ReplicaRouter> router;
  std::unique_ptr<WorkerMembership> membership;

  Status start(MembershipOptions options, net::FramedOptions framed = {}) {
    serving::RouterOptions o;
    o.scheduler.maxModelLen = 256;
    o.vocabSize = static_cast<int32_t>(model->program.vocab_size());
    o.noReplicaTimeout = 30s;
    router = std::make_unique<serving::ReplicaRouter>(model->tokenizer, o);
    options.vocabSize = o.vocabSize;
    options.kvBlocks = 256;
    options.kvBlockSize = model->backend(1)->info().blockSize;
    options.planId = "test-plan";
    auto started = WorkerMembership::start(options, *router,
                                           tcpListener("127.0.0.1", 0, std::move(framed)));
    if (!started)
      return started.status();
    membership = std::move(*started);
    return Status::ok();
  }
  uint16_t port() const { return membership->port(); }
  bool waitForCounts(const std::function<bool(const MeshCounts &)> &want,
                     std::chrono::milliseconds within = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + within;
    while (std::chrono::steady_clock::now() < deadline) {
      if (want(membership->counts()))
        return true;
      std::this_thread::sleep_for(10ms);
    }
    return want(membership->counts());
  }
};

/// A worker session on its own thread.
struct WorkerThread {
  std::atomic<bool> terminate{false};
  std::future<SessionEnd> end;

  void start(std::unique_ptr<SchedulerLink> link, std::unique_ptr<RankRunner> runner,
             std::string id) {
    end = std::async(std::launch::async,
                     [this, link = std::move(link), runner = std::move(runner), id]() mutable {
                       WorkerSessionOptions options;
                       options.workerId = id;
                       options.host = "127.0.0.1";
                       options.device = "cpu";
                       options.heartbeatPeriod = 50ms;
                       options.drainGrace = 20s;
                       options.pollPeriod = 20ms;
                       options.terminationRequested = [this] { return terminate.load(); };
                       return runWorkerSession(*link, *runner, options);
                     });
  }
};

/// A peer speaking the framed protocol by hand.
std::unique_ptr<net::FramedClient> rawPeer(uint16_t port, std::optional<std::string> secret = {}) {
  net::FramedOptions options;
  options.clusterSecret = std::move(secret);
  auto client = net::FramedClient::connect("127.0.0.1", port, 5s, {}, options);
  EXPECT_TRUE(client.isOk()) << client.message();
  return client ? std::move(*client) : nullptr;
}

/// `count` peers speaking the protocol by hand, registered one after the
/// other (registration order decides the ranks).
std::vector<std::unique_ptr<net::FramedClient>> registeredPeers(Scheduler &scheduler, int count) {
  std::vector<std::unique_ptr<net::FramedClient>> peers;
  for (int i = 0; i < count; ++i) {
    peers.push_back(rawPeer(scheduler.port()));
    if (!peers.back())
      return {};
    EXPECT_TRUE(
        peers.back()->send(registerWorkerMessage("peer-" + std::to_string(i), "", "")).isOk());
    EXPECT_TRUE(scheduler.waitForCounts([&](const MeshCounts &c) {
      return c.workersIdle + c.workersJoining == i + 1;
    }));
  }
  return peers;
}

/// A tp=2 membership and two hand-driven peers registered for it (they
/// send no heartbeats: the timeout is long); none when it did not start.
std::vector<std::unique_ptr<net::FramedClient>> handDrivenPair(Scheduler &scheduler) {
  MembershipOptions options;
  options.worldSize = 2;
  options.heartbeatTimeout = 60s;
  const Status started = scheduler.start(options);
  EXPECT_TRUE(started.isOk()) << started.message();
  return started.isOk() ? registeredPeers(scheduler, 2)
                        : std::vector<std::unique_ptr<net::FramedClient>>{};
}

/// The next envelope of `kind` (others, like Heartbeat answers, skipped).
Result<proto::Envelope> receiveKind(net::FramedClient &peer, proto::Envelope::BodyCase kind,
                                    std::chrono::milliseconds within = 10s) {
  const auto deadline = std::chrono::steady_clock::now() + within;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left <= 0ms)
      return Status::error("nothing of the expected kind in time");
    auto e = peer.receive(left);
    if (!e || e->body_case() == kind)
      return e;
  }
}

TEST(WorkerProtocolTest, SessionsServeTheReferenceIdsWithTheSecretAndDrainCleanly) {
  Collector out;
  Scheduler scheduler;
  ASSERT_NE(scheduler.model, nullptr);
  const std::string secret = auth::toHex(auth::randomBytes(32));
  net::FramedOptions framed;
  framed.clusterSecret = secret;
  MembershipOptions options;
  options.worldSize = 1;
  ASSERT_TRUE(scheduler.start(options, framed).isOk());

  std::vector<std::unique_ptr<WorkerThread>> workers;
  for (int i = 0; i < 2; ++i) {
    auto link = connectTcp("127.0.0.1", scheduler.port(), 5s, framed);
    ASSERT_TRUE(link.isOk()) << link.message();
    workers.push_back(std::make_unique<WorkerThread>());
    workers.back()->start(std::move(*link),
                          std::make_unique<InProcessRank>(scheduler.model->backend(256)),
                          "worker-" + std::to_string(i));
  }
  ASSERT_TRUE(scheduler.waitForCounts([](const MeshCounts &c) { return c.workersServing == 2; }));

  std::vector<uint64_t> ids;
  const auto &cases = scheduler.model->cases;
  for (size_t i = 0; i < 6; ++i)
    ids.push_back(scheduler.router->addRequest(greedy(cases[i % cases.size()].promptIds, 32),
                                               out.callback()));
  ASSERT_TRUE(out.waitFor([&] { return out.finished.size() == ids.size(); }));
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(out.finished[ids[i]], serving::FinishReason::Length);
    EXPECT_EQ(out.tokens[ids[i]], cases[i % cases.size()].greedyIds) << i;
  }

  // SIGTERM of one worker: it sends Drain, its replica hands back, the
  // scheduler answers Drain and the session ends with exit code 0.
  workers[0]->terminate = true;
  ASSERT_EQ(workers[0]->end.wait_for(30s), std::future_status::ready);
  const SessionEnd end = workers[0]->end.get();
  EXPECT_EQ(end, SessionEnd::DrainedByScheduler) << describe(end);
  EXPECT_EQ(exitCode(end), 0);
  ASSERT_TRUE(scheduler.waitForCounts(
      [](const MeshCounts &c) { return c.workersServing == 1 && c.workersDraining == 0; }));
  EXPECT_EQ(scheduler.membership->counts().workersLost, 0u);
  EXPECT_EQ(scheduler.membership->counts().sendFailures, 0u);

  // The other serves on; when the scheduler stops, its session ends with
  // the scheduler lost (exit code 1: an orchestrator restarts it).
  const uint64_t after = scheduler.router->addRequest(greedy(cases[0].promptIds, 32), out.callback());
  ASSERT_TRUE(out.waitFor([&] { return out.finished.count(after) > 0; }));
  EXPECT_EQ(out.tokens[after], cases[0].greedyIds);
  scheduler.membership->stop();
  ASSERT_EQ(workers[1]->end.wait_for(30s), std::future_status::ready);
  const SessionEnd lost = workers[1]->end.get();
  // The session's receive usually sees the close first; a heartbeat (every
  // 50 ms here) sent into the closing socket can find it first (seen once
  // in a loaded full-suite run): both end the session with exit code 1.
  EXPECT_TRUE(lost == SessionEnd::SchedulerLost || lost == SessionEnd::SendFailed)
      << describe(lost);
  EXPECT_EQ(exitCode(lost), 1);
}

TEST(WorkerProtocolTest, PeersWithoutTheSecretOrSilentGetNothingAndAreDropped) {
  Collector out;
  Scheduler scheduler;
  ASSERT_NE(scheduler.model, nullptr);
  const std::string secret = auth::toHex(auth::randomBytes(32));
  net::FramedOptions framed;
  framed.clusterSecret = secret;
  framed.handshakeTimeout = 500ms;
  MembershipOptions options;
  options.worldSize = 1;
  options.registerTimeout = 500ms;
  ASSERT_TRUE(scheduler.start(options, framed).isOk());

  // No secret: its RegisterWorker is read as a (failed) handshake.
  auto noSecret = rawPeer(scheduler.port());
  ASSERT_NE(noSecret, nullptr);
  (void)noSecret->send(registerWorkerMessage("rogue", "127.0.0.1", "cpu"));
  // A wrong secret does not get past connect.
  net::FramedOptions wrong;
  wrong.clusterSecret = "not-the-secret-0123456789";
  EXPECT_FALSE(connectTcp("127.0.0.1", scheduler.port(), 5s, wrong).isOk());
  // The right secret, then silence: dropped after the registration deadline.
  auto silent = rawPeer(scheduler.port(), secret);
  ASSERT_NE(silent, nullptr);
  // The right secret, heartbeats only: a heartbeat does not stand for registration.
  auto heartbeatsOnly = rawPeer(scheduler.port(), secret);
  ASSERT_NE(heartbeatsOnly, nullptr);
  (void)heartbeatsOnly->send(heartbeatMessage("x", unixMillisNow()));

  for (net::FramedClient *peer : {noSecret.get(), silent.get(), heartbeatsOnly.get()}) {
    auto got = peer->receive(5s);
    EXPECT_FALSE(got.isOk()) << "a rogue received " << got->DebugString();
    EXPECT_FALSE(peer->connection()->isOpen());
  }
  MeshCounts counts = scheduler.membership->counts();
  EXPECT_EQ(counts.workersIdle + counts.workersJoining + counts.workersServing, 0);
  EXPECT_FALSE(scheduler.router->waitForReplica(0ms));

  // An honest worker still gets the replica and serves. Its rank (weights
  // loaded) is built before it connects: the registration deadline starts at
  // connect, and loading took longer than 500 ms under TSan.
  auto rank = std::make_unique<InProcessRank>(scheduler.model->backend(256));
  auto link = connectTcp("127.0.0.1", scheduler.port(), 5s, framed);
  ASSERT_TRUE(link.isOk()) << link.message();
  WorkerThread worker;
  worker.start(std::move(*link), std::move(rank), "honest");
  ASSERT_TRUE(scheduler.router->waitForReplica(30s));
  const auto &reference = scheduler.model->cases[1];
  const uint64_t id = scheduler.router->addRequest(greedy(reference.promptIds, 32), out.callback());
  ASSERT_TRUE(out.waitFor([&] { return out.finished.count(id) > 0; }));
  EXPECT_EQ(out.tokens[id], reference.greedyIds);
  scheduler.membership->stop();
  worker.end.wait();
}

TEST(WorkerProtocolTest, OversizeFrameAndOverlongWorkerIdCloseTheConnection) {
  Scheduler scheduler;
  ASSERT_NE(scheduler.model, nullptr);
  net::FramedOptions framed;
  framed.maxFrameBytes = 4096;
  MembershipOptions options;
  options.worldSize = 2; // nobody is assigned: registered workers stay idle
  ASSERT_TRUE(scheduler.start(options, framed).isOk());

  auto big = rawPeer(scheduler.port());
  ASSERT_NE(big, nullptr);
  ASSERT_TRUE(big->send(registerWorkerMessage("big", "127.0.0.1", "cpu")).isOk());
  ASSERT_TRUE(scheduler.waitForCounts([](const MeshCounts &c) { return c.workersIdle == 1; }));
  ASSERT_TRUE(big->send(errorMessage(std::string(10000, 'x'))).isOk());
  auto refusal = receiveKind(*big, proto::Envelope::kError);
  ASSERT_TRUE(refusal.isOk()) << refusal.message();
  EXPECT_NE(refusal->error().message().find("exceeds the limit of 4096"), std::string::npos)
      << refusal->error().message();
  EXPECT_FALSE(big->receive(5s).isOk());
  EXPECT_FALSE(big->connection()->isOpen());
  ASSERT_TRUE(scheduler.waitForCounts(
      [](const MeshCounts &c) { return c.workersIdle == 0 && c.workersLost == 1; }));

  auto longId = rawPeer(scheduler.port());
  ASSERT_NE(longId, nullptr);
  (void)longId->send(registerWorkerMessage(std::string(kMaxWorkerIdBytes + 1, 'w'), "", ""));
  auto error = receiveKind(*longId, proto::Envelope::kError);
  ASSERT_TRUE(error.isOk()) << error.message();
  EXPECT_NE(error->error().message().find("worker_id must have 1 to 256 bytes"),
            std::string::npos);
  EXPECT_FALSE(longId->receive(5s).isOk());
  EXPECT_EQ(scheduler.membership->counts().workersIdle, 0);
}

TEST(WorkerProtocolTest, StepsCountOncePerRankOfTheReplicaTheyWentTo) {
  Collector out;
  Scheduler scheduler;
  ASSERT_NE(scheduler.model, nullptr);
  MembershipOptions options;
  options.worldSize = 2;
  ASSERT_TRUE(scheduler.start(options).isOk());

  // Two hand-driven ranks and an idle third worker.
  std::vector<std::unique_ptr<net::FramedClient>> peers = registeredPeers(scheduler, 3);
  ASSERT_EQ(peers.size(), 3u);
  std::vector<proto::AssignRank> assigned;
  for (int i = 0; i < 2; ++i) {
    auto e = receiveKind(*peers[i], proto::Envelope::kAssignRank);
    ASSERT_TRUE(e.isOk()) << e.message();
    EXPECT_EQ(e->assign_rank().rank(), static_cast<uint32_t>(i));
    assigned.push_back(e->assign_rank());
  }
  auto ready = [&](int peer, bool ok) {
    proto::RankReady r;
    r.set_replica_id(assigned[peer].replica_id());
    r.set_rank(assigned[0].rank()); // a rank's claim does not matter: its connection does
    r.set_ok(ok);
    ASSERT_TRUE(peers[peer]->send(rankReadyMessage(r)).isOk());
  };
  // Rank 0 reporting ready twice does not make the replica ready.
  ready(0, true);
  ready(0, true);
  EXPECT_FALSE(scheduler.router->waitForReplica(500ms));
  ready(1, true);
  ASSERT_TRUE(scheduler.router->waitForReplica(10s));

  const uint64_t id =
      scheduler.router->addRequest(greedy(scheduler.model->cases[0].promptIds, 2), out.callback());
  std::vector<proto::StepRequest> steps;
  for (int i = 0; i < 2; ++i) {
    auto e = receiveKind(*peers[i], proto::Envelope::kStepRequest);
    ASSERT_TRUE(e.isOk()) << e.message();
    steps.push_back(e->step_request());
  }
  EXPECT_EQ(steps[0].step_id(), steps[1].step_id());
  proto::StepResponse answer;
  answer.set_step_id(steps[0].step_id());
  answer.set_ok(true);
  proto::SampledToken *token = answer.add_tokens();
  token->set_sequence_id(steps[0].sequences(0).sequence_id());
  token->set_token_id(7);
  // Rank 0 answering twice, and the idle worker answering, complete nothing.
  ASSERT_TRUE(peers[0]->send(stepResponseMessage(answer)).isOk());
  ASSERT_TRUE(peers[0]->send(stepResponseMessage(answer)).isOk());
  ASSERT_TRUE(peers[2]->send(stepResponseMessage(answer)).isOk());
  EXPECT_FALSE(out.waitFor([&] { return out.total > 0; }, 700ms));
  // Rank 1's (empty) answer completes the step with rank 0's token.
  proto::StepResponse empty;
  empty.set_step_id(steps[1].step_id());
  empty.set_ok(true);
  ASSERT_TRUE(peers[1]->send(stepResponseMessage(empty)).isOk());
  ASSERT_TRUE(out.waitFor([&] { return out.total == 1; }, 10s));
  EXPECT_EQ(out.tokens[id], std::vector<int32_t>{7});
  scheduler.router->cancel(id);
}

// A step the ranks of a tp=2 replica answer differently (one failed, the
// other not) tears the replica down: both workers are assigned to a fresh
// one (a new store prefix: new communicators) and the request goes on
// there. Ranks failing alike only fail the step: it is sent again to the
// same replica.
TEST(WorkerProtocolTest, RanksDisagreeingOnAStepGetAFreshReplicaAndTheRequestGoesOn) {
  Collector out;
  Scheduler scheduler;
  ASSERT_NE(scheduler.model, nullptr);
  std::vector<std::unique_ptr<net::FramedClient>> peers = handDrivenPair(scheduler);
  ASSERT_EQ(peers.size(), 2u);
  // Both peers take their (next) assignment and report ready.
  const auto join = [&]() -> std::string {
    std::string replica;
    for (int i = 0; i < 2; ++i) {
      auto e = receiveKind(*peers[i], proto::Envelope::kAssignRank);
      EXPECT_TRUE(e.isOk()) << e.message();
      if (!e)
        return "";
      replica = e->assign_rank().replica_id();
      proto::RankReady r;
      r.set_replica_id(replica);
      r.set_rank(e->assign_rank().rank());
      r.set_ok(true);
      EXPECT_TRUE(peers[i]->send(rankReadyMessage(r)).isOk());
    }
    return replica;
  };
  const std::string first = join();
  ASSERT_FALSE(first.empty());
  ASSERT_TRUE(scheduler.router->waitForReplica(10s));
  const uint64_t id =
      scheduler.router->addRequest(greedy(scheduler.model->cases[0].promptIds, 1), out.callback());
  const auto nextStep = [&](int peer) {
    auto e = receiveKind(*peers[peer], proto::Envelope::kStepRequest);
    EXPECT_TRUE(e.isOk()) << e.message();
    return e ? e->step_request() : proto::StepRequest{};
  };
  const auto answer = [&](int peer, const proto::StepRequest &step, bool ok,
                          const std::string &error) {
    proto::StepResponse r;
    r.set_step_id(step.step_id());
    r.set_ok(ok);
    r.set_error(error);
    if (ok && peer == 0)
      for (const auto &seq : step.sequences()) {
        proto::SampledToken *token = r.add_tokens();
        token->set_sequence_id(seq.sequence_id());
        token->set_token_id(7);
      }
    ASSERT_TRUE(peers[peer]->send(stepResponseMessage(r)).isOk());
  };

  // Failed alike on both ranks: the same replica gets the step again.
  proto::StepRequest step = nextStep(0);
  ASSERT_EQ(nextStep(1).step_id(), step.step_id());
  answer(0, step, false, "no kv block 9");
  answer(1, step, false, "no kv block 9");
  step = nextStep(0);
  ASSERT_EQ(nextStep(1).step_id(), step.step_id());
  EXPECT_FALSE(receiveKind(*peers[0], proto::Envelope::kAssignRank, 300ms).isOk())
      << "ranks failing alike keep their replica";

  // Rank 1 fails where rank 0 did not: a fresh replica of the same workers.
  answer(0, step, true, "");
  answer(1, step, false, "cannot allocate activations");
  const std::string second = join();
  ASSERT_FALSE(second.empty());
  EXPECT_NE(second, first);
  ASSERT_TRUE(scheduler.router->waitForReplica(10s));
  EXPECT_EQ(scheduler.membership->counts().workersLost, 0u);
  // The request goes on there, and ends with the token computed there.
  step = nextStep(0);
  ASSERT_EQ(nextStep(1).step_id(), step.step_id());
  answer(0, step, true, "");
  answer(1, step, true, "");
  ASSERT_TRUE(out.waitFor([&] { return out.finished.count(id) > 0; }, 10s));
  EXPECT_EQ(out.tokens[id], std::vector<int32_t>{7});
  EXPECT_EQ(out.finished[id], serving::FinishReason::Length);
}

// A rank failing its join tears the replica down; the other rank, still
// inside its own join, is assigned again only once it answers for the old
// replica (or the old replica's join deadline passes): assigned at once, it
// took the new assignment only after its join ran out, and the two workers
// stayed a replica apart (seen with NCCL on GPUs, every join failing).
TEST(WorkerProtocolTest, FailedJoinReturnsBothWorkersToThePoolOnceEachAnsweredAndAFreshReplicaForms) {
  Scheduler scheduler;
  ASSERT_NE(scheduler.model, nullptr);
  std::vector<std::unique_ptr<net::FramedClient>> peers = handDrivenPair(scheduler);
  ASSERT_EQ(peers.size(), 2u);
  std::vector<std::string> first;
  for (auto &peer : peers) {
    auto e = receiveKind(*peer, proto::Envelope::kAssignRank);
    ASSERT_TRUE(e.isOk()) << e.message();
    first.push_back(e->assign_rank().replica_id());
  }
  EXPECT_EQ(first[0], first[1]);
  proto::RankReady failed;
  failed.set_replica_id(first[0]);
  failed.set_ok(false);
  failed.set_error("cannot load weights");
  ASSERT_TRUE(peers[1]->send(rankReadyMessage(failed)).isOk());
  // Rank 0 has not answered: nobody is assigned, rank 0 still counts as joining.
  EXPECT_FALSE(receiveKind(*peers[0], proto::Envelope::kAssignRank, 1500ms).isOk());
  EXPECT_FALSE(receiveKind(*peers[1], proto::Envelope::kAssignRank, 200ms).isOk());
  ASSERT_TRUE(scheduler.waitForCounts(
      [](const MeshCounts &c) { return c.workersIdle == 1 && c.workersJoining == 1; }));
  // An answer for another replica does not count; rank 0's own does.
  proto::RankReady other = failed;
  other.set_replica_id("replica-999");
  ASSERT_TRUE(peers[0]->send(rankReadyMessage(other)).isOk());
  EXPECT_FALSE(receiveKind(*peers[1], proto::Envelope::kAssignRank, 500ms).isOk());
  proto::RankReady peerLeft = failed;
  peerLeft.set_error("rendezvous: rank 1 of 2 did not join");
  ASSERT_TRUE(peers[0]->send(rankReadyMessage(peerLeft)).isOk());
  std::vector<std::string> second;
  for (auto &peer : peers) {
    auto e = receiveKind(*peer, proto::Envelope::kAssignRank);
    ASSERT_TRUE(e.isOk()) << e.message();
    EXPECT_NE(e->assign_rank().replica_id(), first[0]); // ids are never reused
    EXPECT_EQ(e->assign_rank().store_prefix(), "llmir/" + e->assign_rank().replica_id());
    second.push_back(e->assign_rank().replica_id());
  }
  EXPECT_EQ(scheduler.membership->counts().workersLost, 0u);

  // Once more, and the rank still joining drains instead of answering: it
  // holds no replica, so it is released (Drain back), not lost, when it goes.
  failed.set_replica_id(second[1]);
  ASSERT_TRUE(peers[1]->send(rankReadyMessage(failed)).isOk());
  ASSERT_TRUE(scheduler.waitForCounts(
      [](const MeshCounts &c) { return c.workersIdle == 1 && c.workersJoining == 1; }));
  ASSERT_TRUE(peers[0]->send(drainMessage("SIGTERM")).isOk());
  ASSERT_TRUE(receiveKind(*peers[0], proto::Envelope::kDrain).isOk());
  peers[0].reset();
  ASSERT_TRUE(scheduler.waitForCounts(
      [](const MeshCounts &c) { return c.workersIdle == 1 && c.workersJoining == 0; }));
  EXPECT_EQ(scheduler.membership->counts().workersLost, 0u);
}

TEST(WorkerProtocolTest, HeartbeatsKeepAWorkerAndSilenceLosesIt) {
  Scheduler scheduler;
  ASSERT_NE(scheduler.model, nullptr);
  MembershipOptions options;
  options.worldSize = 3; // never formed: both stay idle
  options.heartbeatTimeout = 400ms;
  ASSERT_TRUE(scheduler.start(options).isOk());
  auto link = connectTcp("127.0.0.1", scheduler.port(), 5s, {});
  ASSERT_TRUE(link.isOk()) << link.message();
  WorkerThread worker; // heartbeats every 50 ms
  worker.start(std::move(*link), std::make_unique<InProcessRank>(nullptr), "beating");
  auto silent = rawPeer(scheduler.port());
  ASSERT_NE(silent, nullptr);
  ASSERT_TRUE(silent->send(registerWorkerMessage("silent", "", "")).isOk());
  ASSERT_TRUE(scheduler.waitForCounts([](const MeshCounts &c) { return c.workersLost == 1; }));
  std::this_thread::sleep_for(1s); // well past the timeout
  const MeshCounts counts = scheduler.membership->counts();
  EXPECT_EQ(counts.workersIdle, 1);
  EXPECT_EQ(counts.workersLost, 1u);
  EXPECT_FALSE(silent->receive(2s).isOk());
  EXPECT_FALSE(silent->connection()->isOpen());
  worker.terminate = true; // idle: answered with Drain at once
  ASSERT_EQ(worker.end.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(worker.end.get(), SessionEnd::DrainedByScheduler);
}

/// The real link, except that sends fail from the `failFrom`-th StepResponse on.
class FailingStepLink final : public SchedulerLink {
public:
  explicit FailingStepLink(std::unique_ptr<SchedulerLink> inner) : inner_(std::move(inner)) {}
  Status send(const proto::Envelope &envelope) override {
    if (envelope.has_step_response())
      return Status::error("injected: the socket buffer is full");
    return inner_->send(envelope);
  }
  Result<proto::Envelope> receive(std::chrono::microseconds timeout) override {
    return inner_->receive(timeout);
  }
  bool isOpen() const override { return inner_->isOpen(); }
  std::string peer() const override { return inner_->peer(); }
  void abort(Status why) override { inner_->abort(std::move(why)); }
  void close() override { inner_->close(); }

private:
  std::unique_ptr<SchedulerLink> inner_;
};

TEST(WorkerProtocolTest, SendFailuresDropTheConnectionOnBothSides) {
  // Worker side: a StepResponse that cannot be sent ends the session
  // (exit code 1), the connection goes, the scheduler counts the worker lost.
  {
    Collector out;
    Scheduler scheduler;
    ASSERT_NE(scheduler.model, nullptr);
    MembershipOptions options;
    options.worldSize = 1;
    ASSERT_TRUE(scheduler.start(options).isOk());
    auto link = connectTcp("127.0.0.1", scheduler.port(), 5s, {});
    ASSERT_TRUE(link.isOk()) << link.message();
    WorkerThread worker;
    worker.start(std::make_unique<FailingStepLink>(std::move(*link)),
                 std::make_unique<InProcessRank>(scheduler.model->backend(256)), "failing");
    ASSERT_TRUE(scheduler.router->waitForReplica(30s));
    scheduler.router->addRequest(greedy(scheduler.model->cases[0].promptIds, 4), out.callback());
    ASSERT_EQ(worker.end.wait_for(30s), std::future_status::ready);
    const SessionEnd end = worker.end.get();
    EXPECT_EQ(end, SessionEnd::SendFailed) << describe(end);
    EXPECT_EQ(exitCode(end), 1);
    EXPECT_TRUE(scheduler.waitForCounts([](const MeshCounts &c) { return c.workersLost == 1; }));
  }
  // Scheduler side: a StepRequest over the frame bound cannot be sent; the
  // worker's connection is dropped and counted, the session sees it go.
  {
    Collector out;
    Scheduler scheduler;
    ASSERT_NE(scheduler.model, nullptr);
    net::FramedOptions framed;
    framed.maxFrameBytes = 128; // the protocol messages fit, a long prompt's step does not
    MembershipOptions options;
    options.worldSize = 1;
    ASSERT_TRUE(scheduler.start(options, framed).isOk());
    auto link = connectTcp("127.0.0.1", scheduler.port(), 5s, {});
    ASSERT_TRUE(link.isOk()) << link.message();
    WorkerThread worker;
    worker.start(std::move(*link), std::make_unique<InProcessRank>(scheduler.model->backend(256)),
                 "unreachable");
    ASSERT_TRUE(scheduler.router->waitForReplica(30s));
    std::vector<int32_t> longPrompt(200, 5); // a StepRequest (prefill chunk) of > 128 bytes
    scheduler.router->addRequest(greedy(longPrompt, 4), out.callback());
    ASSERT_TRUE(scheduler.waitForCounts(
        [](const MeshCounts &c) { return c.sendFailures >= 1 && c.workersLost == 1; }, 30s))
        << "finished: " << out.finished.size() << " tokens " << out.total;
    ASSERT_EQ(worker.end.wait_for(30s), std::future_status::ready);
    EXPECT_EQ(worker.end.get(), SessionEnd::SchedulerLost);
  }
}

} // namespace
} // namespace llmir::workerproto

namespace llmir::workerproto {
namespace {

/// A scheduler link over in-memory queues: the envelopes given, then none.
class QueuedLink final : public SchedulerLink {
public:
  explicit QueuedLink(std::vector<proto::Envelope> incoming)
      : incoming_(incoming.begin(), incoming.end()) {}
  Status send(const proto::Envelope &envelope) override {
    std::lock_guard lock(mutex_);
    if (envelope.has_step_response())
      answered_.push_back(envelope.step_response().step_id());
    return Status::ok();
  }
  Result<proto::Envelope> receive(std::chrono::microseconds) override {
    std::lock_guard lock(mutex_);
    if (incoming_.empty())
      return Status::error("nothing queued");
    proto::Envelope e = std::move(incoming_.front());
    incoming_.pop_front();
    return e;
  }
  bool isOpen() const override { return true; }
  std::string peer() const override { return "queued"; }
  void abort(Status) override {}
  void close() override {}
  std::vector<uint64_t> answered() {
    std::lock_guard lock(mutex_);
    return answered_;
  }

private:
  std::mutex mutex_;
  std::deque<proto::Envelope> incoming_;
  std::vector<uint64_t> answered_;
};

/// A runner that launches every step, at most two at once, and logs the
/// calls the session makes.
class LaunchingRunner final : public RankRunner {
public:
  proto::RankReady setUp(const proto::AssignRank &) override { return {}; }
  proto::StepResponse step(const proto::StepRequest &request) override {
    calls.push_back("step " + std::to_string(request.step_id()));
    return answer(request.step_id());
  }
  bool launchStep(const proto::StepRequest &request) override {
    calls.push_back("launch " + std::to_string(request.step_id()));
    launched.push_back(request.step_id());
    return true;
  }
  bool launchStepBehind(const proto::StepRequest &request) override {
    if (launched.size() >= 2)
      return false;
    calls.push_back("behind " + std::to_string(request.step_id()));
    launched.push_back(request.step_id());
    return true;
  }
  proto::StepResponse finishStep() override {
    const uint64_t id = launched.front();
    launched.pop_front();
    calls.push_back("finish " + std::to_string(id));
    return answer(id);
  }
  std::vector<std::string> calls;

private:
  static proto::StepResponse answer(uint64_t id) {
    proto::StepResponse response;
    response.set_step_id(id);
    response.set_ok(true);
    return response;
  }
  std::deque<uint64_t> launched;
};

proto::Envelope stepNumbered(uint64_t id) {
  proto::StepRequest request;
  request.set_step_id(id);
  return stepRequestMessage(request);
}

TEST(WorkerSessionPipelining, StepsLaunchBehindTheRunningOneAndAreAnsweredInOrder) {
  // Three steps queued, then the scheduler's Drain: each step after the
  // first goes behind the one running (at most two launched), every answer
  // in order, and the Drain waits for the launched steps' answers.
  QueuedLink link({stepNumbered(1), stepNumbered(2), stepNumbered(3),
                   drainMessage("the scheduler is done")});
  LaunchingRunner runner;
  WorkerSessionOptions options;
  options.workerId = "w";
  options.heartbeatPeriod = std::chrono::hours(1);
  EXPECT_EQ(runWorkerSession(link, runner, options), SessionEnd::DrainedByScheduler);
  EXPECT_EQ(runner.calls, (std::vector<std::string>{"launch 1", "behind 2", "finish 1",
                                                    "behind 3", "finish 2", "finish 3"}));
  EXPECT_EQ(link.answered(), (std::vector<uint64_t>{1, 2, 3}));
}

} // namespace
} // namespace llmir::workerproto

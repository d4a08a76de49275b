// Runs the ranks of one replica as local processes (fork + exec) and watches
// them: the first rank that fails is named, the survivors get a bounded time
// to notice (their collectives fail within the runtime timeout) and are then
// killed. Workers die with the launcher (PR_SET_PDEATHSIG), so no orphan
// keeps ports or cores.
#pragma once

#include "llmir/support/Status.h"

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace llmir::runtime {

struct LaunchOptions {
  int worldSize = 1;
  /// Program to exec; "/proc/self/exe" re-runs the caller.
  std::string executable = "/proc/self/exe";
  /// argv of rank r, argv[0] included.
  std::function<std::vector<std::string>(int rank)> argsOf;
  /// The rank whose stdout is the launcher's; the others' stdout goes to
  /// /dev/null (-1: all of them). stderr is always shared.
  int stdoutRank = -1;
  /// After one rank fails, how long the others may run before being killed.
  std::chrono::milliseconds grace = std::chrono::seconds(35);
  /// Called once with each rank's pid after all are started (tests, logs).
  std::function<void(int rank, int pid)> onStarted;
};

/// Starts every rank and waits for all of them. Ok when every rank exits 0;
/// otherwise an error naming the failing rank and how it ended, e.g.
/// "rank 2 was killed by signal 9 (Killed); ranks 0, 1 failed after it".
/// A rank killed by a signal is named before ranks that exited with an error
/// status, since their errors are usually its consequence.
Status launchLocalRanks(const LaunchOptions &options);

/// LaunchOptions::argsOf for a binary that re-runs itself as the ranks of a
/// replica (llmir-generate, llmir-gpu-bench): its own argv plus
/// --worker-rank r --world-size N --store-port P.
std::function<std::vector<std::string>(int rank)> selfRankArgs(int argc, char **argv,
                                                               int worldSize,
                                                               uint16_t storePort);

/// NVIDIA GPUs the driver lists (/proc/driver/nvidia/gpus), counted without
/// initialising CUDA: a process that did could not use CUDA in the ranks it
/// forks. CUDA_VISIBLE_DEVICES is not applied.
int visibleNvidiaGpus();

} // namespace llmir::runtime

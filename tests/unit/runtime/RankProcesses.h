// Test helper: runs one forked process per rank and collects each rank's
// Status, so collectives are exercised between real processes.
#pragma once

#include "llmir/support/Status.h"

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace llmir::runtime::testing {

struct RankOutcome {
  bool ok = false;
  std::string message; // the rank's error, or how the process ended
};

/// Forks `count` processes; process i runs body(i) and exits. Processes still
/// alive after `watchdog` are killed and reported as hung, so a test fails
/// instead of hanging.
std::vector<RankOutcome>
runRanks(int count, const std::function<Status(int rank)> &body,
         std::chrono::seconds watchdog = std::chrono::seconds(60));

} // namespace llmir::runtime::testing

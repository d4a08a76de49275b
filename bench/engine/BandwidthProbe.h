// Memory read bandwidth of this machine: threads stream-read disjoint parts
// of a buffer much larger than the last-level cache.
#pragma once

#include "llmir/engine/HugePages.h"
#include "llmir/support/Status.h"

#include <cstddef>

namespace llmir::bench {

/// A buffer of `bytes` on huge pages (engine::HugePageRegion, as the CPU
/// backend's weights), filled once, so that the bandwidth can be measured
/// again right beside each measurement of decode (on a shared machine the
/// bandwidth left to this process moves from minute to minute).
class ReadBandwidthProbe {
public:
  /// Fails when `bytes` cannot be mapped.
  static Result<ReadBandwidthProbe> create(size_t bytes);
  /// Best of `repeats` timed passes over the buffer in each load width the
  /// CPU has (256- and 512-bit, alternated), read by `numThreads` threads;
  /// bytes per second.
  double measure(unsigned numThreads, int repeats);

private:
  explicit ReadBandwidthProbe(engine::HugePageRegion region) : region_(std::move(region)) {}
  engine::HugePageRegion region_;
};

} // namespace llmir::bench

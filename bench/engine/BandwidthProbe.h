// Memory read bandwidth of this machine: threads stream-read disjoint parts
// of a buffer much larger than the last-level cache.
#pragma once

#include <cstddef>

namespace llmir::bench {

/// Best of `repeats` timed passes over a buffer of `bytes` on huge pages
/// (engine::HugePageRegion, as the CPU backend's weights), read by
/// `numThreads` threads; bytes per second (0 when it cannot be allocated).
double measureReadBandwidth(size_t bytes, unsigned numThreads, int repeats);

} // namespace llmir::bench

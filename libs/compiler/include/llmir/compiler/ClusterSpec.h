// The cluster a model is compiled for: devices, links, fixed or automatic
// parallel degrees and serving targets, read from YAML (docs/cluster-spec.md).
// Plain C++ (no MLIR, no yaml-cpp) so that RTTI and RTTI-free code share it.
#pragma once

#include "llmir/support/Status.h"

#include <cstdint>
#include <optional>
#include <string>

namespace llmir::compiler {

struct DeviceSpec {
  std::string kind = "cuda";        // "cuda" or "cpu"
  int64_t memoryBytes = 80LL << 30; // usable device memory
  double peakFlops = 989e12;        // dense FLOP/s at the weights' precision
  double memoryBandwidth = 3.35e12; // bytes/s
  /// Calibration of the roofline to what the kernels reach (1, 1, 1, 0: the
  /// ideal device): the shares of memoryBandwidth and of peakFlops that the
  /// matrix products and the attention achieve, and a fixed time per op (a
  /// kernel launch and its ramp). bench/gpu/h100-calibrated.yaml holds the
  /// values fitted to measured steps (docs/performance.md).
  double memoryEfficiency = 1.0;
  double matmulEfficiency = 1.0;
  double attentionEfficiency = 1.0;
  double opOverheadSeconds = 0.0;
  /// Rows (tokens per rank) at which the matrix products reach half of
  /// matmulEfficiency: a product of r rows runs at matmulEfficiency * r /
  /// (r + matmulHalfRows). 0: every size at matmulEfficiency. Small-batch
  /// GEMMs leave most of a GPU's tiles idle (64 rows: a few percent of the
  /// peak, 2,048: a third, measured on H200s).
  double matmulHalfRows = 0.0;
  /// Products of fewer rows run as GEMVs that stream the weights (LLMIR's
  /// CUDA kernels: under 8 tokens): bound by the memory, no ramp. 0: none.
  double gemvRows = 0.0;
};

/// One link type of the alpha-beta model: a message of n bytes takes
/// latency + n / bandwidth seconds.
struct LinkSpec {
  double bandwidth = 0; // bytes/s
  double latency = 0;   // seconds
};

struct ServingTargets {
  int64_t maxBatchTokens = 2048; // tokens of one prefill step
  int64_t maxNumSeqs = 64;       // sequences decoding together
  int64_t maxContext = 4096;     // prompt + generated tokens of one sequence
  /// Upper bound on the predicted time of one decode step (seconds);
  /// nullopt: no latency target.
  std::optional<double> decodeLatencyTarget;
};

struct ClusterSpec {
  /// Where the spec came from, for messages.
  std::string source;
  int64_t nodes = 1;
  int64_t devicesPerNode = 1;
  DeviceSpec device;
  LinkSpec intraNode{450e9, 5e-6};
  LinkSpec interNode{50e9, 20e-6};
  /// Fixed degrees; nullopt = "auto" (searched).
  std::optional<int64_t> tensor, pipeline, sequence;
  ServingTargets serving;

  int64_t numDevices() const { return nodes * devicesPerNode; }
};

/// Parses YAML text; `source` names it in messages. Rejects unknown keys,
/// non-positive sizes and fixed degrees whose product does not divide the
/// number of devices.
Result<ClusterSpec> parseClusterSpec(const std::string &yaml,
                                     const std::string &source);
Result<ClusterSpec> loadClusterSpec(const std::string &path);

} // namespace llmir::compiler

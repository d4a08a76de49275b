// Roofline cost of llm ops: each op's FLOPs, bytes moved through device
// memory and bytes communicated, and a predicted time on a device.
#pragma once

#include "mlir/IR/Operation.h"

#include <cstdint>

namespace llmir::compiler {

struct OpCost {
  double flops = 0;
  double bytes = 0;     // weights read + activations read and written
  double commBytes = 0; // bytes each rank sends in collectives

  OpCost &operator+=(const OpCost &o) {
    flops += o.flops;
    bytes += o.bytes;
    commBytes += o.commBytes;
    return *this;
  }
};

/// What a prediction needs of a device and its links. Defaults: an H100 SXM
/// (dense bf16) with NVLink inside a node.
struct DeviceModel {
  double peakFlops = 989e12;
  double memoryBandwidth = 3.35e12;
  double linkBandwidth = 450e9; // bytes/s between devices of a TP group
  double linkLatency = 5e-6;    // seconds per collective hop
};

/// Cost of `op` for a step of `tokens` tokens (prefill: one sequence of that
/// length attends causally to itself). Ops without compute cost nothing.
OpCost costOf(mlir::Operation *op, int64_t tokens);

/// Roofline time of the compute part plus an alpha-beta ring time of the
/// communication over a group of `groupSize` devices.
double predictSeconds(const OpCost &cost, const DeviceModel &device,
                      int groupSize = 1);

} // namespace llmir::compiler

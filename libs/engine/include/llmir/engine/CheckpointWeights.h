// Weights for an Executor straight from a safetensors checkpoint: each
// ShardProgram weight slice is read (and only that slice) in its stored dtype.
#pragma once

#include "llmir/engine/Tensor.h"

namespace llmir::model {
class Checkpoint;
}

namespace llmir::engine {

/// A WeightProvider over `checkpoint`, which must outlive it. A slice whose
/// full shape disagrees with the checkpoint, or a dtype the engine cannot
/// hold (anything but F32/BF16/F16), is an error naming the tensor.
WeightProvider checkpointWeights(const model::Checkpoint &checkpoint);

} // namespace llmir::engine

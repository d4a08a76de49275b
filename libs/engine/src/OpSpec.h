// What each ShardProgram v1 opcode takes: operand counts, which inputs are
// weights, required attributes. Backend-independent; used to validate
// programs at load.
#pragma once

#include "llmir/proto/shard_program.pb.h"

#include <vector>

namespace llmir::engine {

struct OpSpec {
  const char *name;
  int minInputs;
  int maxInputs;
  int numOutputs;
  std::vector<int> weightInputs; // input positions that must be weight slots
  std::vector<const char *> intAttrs;   // required
  std::vector<const char *> floatAttrs; // required
  bool needsCommunicator;
  std::vector<const char *> optionalIntAttrs = {}; // any other key is an error
  std::vector<const char *> optionalFloatAttrs = {};
};

/// Null for an opcode ShardProgram v1 does not define.
const OpSpec *findOpSpec(proto::Opcode op);

} // namespace llmir::engine

// Load-time checks of a ShardProgram, so that step() never meets a malformed
// instruction: version, slot ids, operand counts and kinds, attributes,
// dataflow (every activation is written before it is read), collectives.
#pragma once

#include "llmir/proto/shard_program.pb.h"
#include "llmir/support/Status.h"

namespace llmir::engine {

Status validateProgram(const proto::ShardProgram &program,
                       bool hasCommunicator);

} // namespace llmir::engine

// A ShardProgram bound once at load, for every backend: each instruction's
// operand slots, which of its outputs alias an input, and its attributes
// decoded into typed parameters. A misspelt or unknown attribute is a load
// error here instead of a silent default inside a kernel, and no kernel
// looks up a string-keyed attribute per step.
#pragma once

#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/KvCache.h"
#include "llmir/proto/shard_program.pb.h"
#include "llmir/support/Status.h"

#include <cstdint>
#include <functional>
#include <utility>
#include <string>
#include <vector>

namespace llmir::engine {

/// Typed attributes of one instruction; each field is read by the opcodes
/// named beside it (shard_program.proto documents the attributes).
struct InstructionParams {
  int64_t vocabOffset = 0; // EMBEDDING
  float eps = 0.0f;        // RMS_NORM
  int64_t headDim = 0;     // ROPE, ATTENTION*, SP_ATTENTION
  float theta = 0.0f;      // ROPE
  /// ROPE: rope_scaling and its rope_* parameters, and the headDim / 2
  /// inverse frequencies they give (cpu::ropeInverseFrequencies, f32 as
  /// transformers computes them), computed once here for every backend.
  cpu::RopeScaling ropeScaling;
  std::vector<float> ropeInverseFrequencies;
  int64_t gatherPadding = 0; // ALL_GATHER: trailing columns dropped
  /// ATTENTION, ATTENTION_PARTIAL (kvShards/kvShard = sp_size/sp_index),
  /// SP_ATTENTION, ATTENTION_MERGE (numHeads, headDim; kvShards = sp_size);
  /// slidingWindow from sliding_window, kvGroup / headOffset from kv_group /
  /// head_offset (ATTENTION, ATTENTION_PARTIAL, SP_ATTENTION; 0: none).
  cpu::AttentionParams attention;
  uint32_t group = 0;        // ALL_REDUCE, ALL_GATHER, ALL_GATHER_ROWS
  int64_t groupSize = 0;     // ranks in `group`
  uint32_t peer = 0;         // SEND, RECV (global rank)
  /// Token-split sequence parallelism (ROPE, RECV, SP_*, ALL_GATHER_ROWS):
  /// this rank computes rows sequenceParallelRows(T, spSize, spIndex).
  int64_t spSize = 1;
  int64_t spIndex = 0;
};

struct BoundInstruction {
  proto::Opcode op = proto::OPCODE_UNSPECIFIED;
  std::string name; // "instruction 12 (LINEAR)", for errors
  std::vector<uint32_t> inputs;
  std::vector<bool> inputIsWeight;
  std::vector<uint32_t> outputs;
  /// An output that is also an input is computed aside, then swapped in.
  std::vector<bool> outputAliasesInput;
  InstructionParams params;
};

/// A KV_LOAD or KV_STORE: not a kernel, the executor runs it through its
/// KvTransferHook before compute instruction `before` (instructions.size():
/// after the last one), so backends see only compute instructions.
struct BoundKvTransfer {
  proto::Opcode op = proto::OPCODE_UNSPECIFIED;
  std::string name; // "instruction 12 (KV_LOAD)": its index in the ShardProgram
  size_t before = 0;
  uint32_t layerBegin = 0, layerEnd = 0; // local layers [begin, end)
};

struct BoundSlot {
  std::string name;
  bool isWeight = false;
  proto::DType dtype = proto::F32;
  std::vector<int64_t> shape; // declared; -1 in dim 0: the step's T
};

struct BoundProgram {
  std::vector<BoundSlot> slots;
  std::vector<BoundInstruction> instructions; // compute only
  std::vector<BoundKvTransfer> kvTransfers;   // in program order
  bool hasOutput = false;
  uint32_t outputSlot = 0;
  int64_t vocabSize = 0;
  KvCacheShape kvCache; // numBlocks: the program's plan (0: undecided)
};

/// Validates `program` (ProgramValidator) and binds it. Fails on any
/// attribute the opcode does not define.
Result<BoundProgram> bindProgram(const proto::ShardProgram &program,
                                 bool hasCommunicator);

/// The (dtype, width K) of a LINEAR's loaded weight, as a backend holds it.
using LinearWeightOf = std::function<std::pair<proto::DType, int64_t>(size_t instruction)>;

/// Consecutive LINEARs that read the same x with weights of one dtype and
/// width (Q, K, V; gate, up), planned as one product group each: the
/// group's size at its first instruction, 0 at the others, 1 alone.
/// `groupable(i)` is the backend's test of instruction i (a LINEAR its
/// group kernel takes); a group ends at `maxSize` members or before a member
/// whose predecessors overwrote x.
std::vector<size_t> planLinearGroups(const std::vector<BoundInstruction> &instructions,
                                     const std::function<bool(size_t)> &groupable,
                                     const LinearWeightOf &weightOf, size_t maxSize = SIZE_MAX);

/// Whether an instruction after `after` reads `slot` before one writes it:
/// whether what the instruction at `after` (or before it) left in the slot
/// is still needed. Slots are reused across layers by the memory plan, so
/// "no other reader anywhere" would be too strict a test for a fusion that
/// leaves an output unwritten. The program's output slot counts as read at
/// the end.
bool readBeforeWritten(const BoundProgram &program, size_t after, uint32_t slot);

/// The row-wise tail that only the program's last SELECT_ROWS depends on
/// (in a decoder, the last layer after its attention: O, the residual ADDs
/// and norms, the MLP, the final norm): instructions [from, select) are
/// LINEAR, ADD, RMS_NORM or SWIGLU, none writing in place, at least one a
/// LINEAR, and nothing after the SELECT_ROWS reads what they write; `inputs`
/// are the activations they read from before `from`, which nothing after
/// the SELECT_ROWS reads either. A backend may run them on the selected
/// rows alone, those inputs gathered first (llama.cpp's inp_out_ids).
/// Empty (from == select) where there is no such tail.
struct RowPruning {
  size_t from = 0, select = 0;
  std::vector<uint32_t> inputs;
  bool empty() const { return from == select; }
};
RowPruning planRowPruning(const BoundProgram &program);

} // namespace llmir::engine

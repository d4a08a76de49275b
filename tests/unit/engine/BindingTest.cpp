// The binding layer's plans over a program's slots (white-box: Binding.h is
// the engine's internal header).
#include "Binding.h"

#include <gtest/gtest.h>

namespace llmir::engine {
namespace {

BoundInstruction instruction(std::vector<uint32_t> inputs, std::vector<uint32_t> outputs) {
  BoundInstruction inst;
  inst.inputs = std::move(inputs);
  inst.outputs = std::move(outputs);
  inst.outputAliasesInput.assign(inst.outputs.size(), false);
  return inst;
}

// Slot 3 is gate's output in "layer 0", overwritten and read again in
// "layer 1" (the memory plan reuses slots): after the first reader it is
// dead until the overwrite.
TEST(ReadBeforeWritten, FollowsTheSlotUntilItIsOverwritten) {
  BoundProgram program;
  program.instructions = {
      instruction({0, 1}, {3}), // 0: gate -> 3
      instruction({0, 2}, {4}), // 1: up -> 4
      instruction({3, 4}, {5}), // 2: swiglu(3, 4) -> 5
      instruction({5, 6}, {0}), // 3: down -> 0
      instruction({0, 1}, {3}), // 4: gate of the next layer -> 3
      instruction({3, 4}, {7}), // 5: reads 3 (new value) and 4 (the old one)
  };
  EXPECT_FALSE(readBeforeWritten(program, 2, 3)); // overwritten at 4 before 5 reads it
  EXPECT_TRUE(readBeforeWritten(program, 2, 4));  // 5 reads the old up
  EXPECT_TRUE(readBeforeWritten(program, 2, 5));  // down reads it
  EXPECT_FALSE(readBeforeWritten(program, 5, 3)); // nothing after the last
  program.hasOutput = true;
  program.outputSlot = 7;
  EXPECT_TRUE(readBeforeWritten(program, 5, 7)); // the step's output is read
  EXPECT_FALSE(readBeforeWritten(program, 5, 3));
}

// A decoder's last layer after its attention, as the compiler lowers it
// (slots not reused): op, activation inputs, a weight input (0: none), outputs.
BoundInstruction op(proto::Opcode code, std::vector<uint32_t> inputs, uint32_t weight,
                    std::vector<uint32_t> outputs) {
  BoundInstruction inst = instruction(std::move(inputs), std::move(outputs));
  inst.op = code;
  inst.inputIsWeight.assign(inst.inputs.size(), false);
  if (weight) {
    inst.inputs.push_back(weight);
    inst.inputIsWeight.push_back(true);
  }
  return inst;
}

BoundProgram lastLayer() {
  BoundProgram program;
  program.instructions = {
      op(proto::ATTENTION, {10, 11, 12}, 0, {1}), // 0
      op(proto::LINEAR, {1}, 100, {2}),           // 1: O
      op(proto::ADD, {0, 2}, 0, {3}),             // 2: the residual
      op(proto::RMS_NORM, {3}, 101, {4}),         // 3
      op(proto::LINEAR, {4}, 102, {5}),           // 4: gate
      op(proto::LINEAR, {4}, 103, {6}),           // 5: up
      op(proto::SWIGLU, {5, 6}, 0, {7}),          // 6
      op(proto::LINEAR, {7}, 104, {8}),           // 7: down
      op(proto::ADD, {3, 8}, 0, {9}),             // 8
      op(proto::RMS_NORM, {9}, 105, {13}),        // 9: the final norm
      op(proto::SELECT_ROWS, {13}, 0, {14}),      // 10
      op(proto::LINEAR, {14}, 106, {15}),         // 11: the LM head
  };
  program.hasOutput = true;
  program.outputSlot = 15;
  return program;
}

// Everything after the attention, fed by its output and the residual.
TEST(RowPruning, TakesTheLastLayerAfterItsAttention) {
  const RowPruning tail = planRowPruning(lastLayer());
  EXPECT_EQ(tail.from, 1u);
  EXPECT_EQ(tail.select, 10u);
  EXPECT_EQ(tail.inputs, (std::vector<uint32_t>{0, 1}));
}

// The walk stops at an instruction that writes in place (the executor
// swaps its output in) or that is not row-wise (an ALL_REDUCE: tensor
// parallelism), and plans nothing without a LINEAR left in the range.
TEST(RowPruning, StopsWhereRowsCannotBeLeftOut) {
  BoundProgram inPlace = lastLayer();
  inPlace.instructions[7].outputAliasesInput[0] = true;
  const RowPruning afterDown = planRowPruning(inPlace);
  EXPECT_TRUE(afterDown.empty()); // only the ADD and the norm: no product
  BoundProgram reduced = lastLayer();
  reduced.instructions[6] = op(proto::ALL_REDUCE, {5, 6}, 0, {7});
  const RowPruning afterReduce = planRowPruning(reduced);
  EXPECT_EQ(afterReduce.from, 7u); // the down projection on
  EXPECT_EQ(afterReduce.inputs, (std::vector<uint32_t>{3, 7}));
}

// Nothing is planned where a value the range would shrink is read after
// the head, or where there is no SELECT_ROWS.
TEST(RowPruning, KeepsRowsSomethingAfterTheHeadReads) {
  BoundProgram readAfter = lastLayer();
  readAfter.instructions.push_back(op(proto::ADD, {0, 15}, 0, {16})); // reads the residual
  EXPECT_TRUE(planRowPruning(readAfter).empty());
  BoundProgram noSelect = lastLayer();
  noSelect.instructions[10] = op(proto::RMS_NORM, {13}, 107, {14});
  EXPECT_TRUE(planRowPruning(noSelect).empty());
}

} // namespace
} // namespace llmir::engine

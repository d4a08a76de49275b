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

} // namespace
} // namespace llmir::engine

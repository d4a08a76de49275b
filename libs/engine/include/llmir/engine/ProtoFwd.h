// Forward declarations of the ShardProgram protobuf types, so engine headers
// need not pull the generated (heavy) header. The enums are declared with the
// underlying type protoc gives them (`enum X : int`).
#pragma once

namespace llmir::proto {
enum DType : int;
enum Opcode : int;
class Instruction;
class ShardProgram;
class WeightSlice;
} // namespace llmir::proto

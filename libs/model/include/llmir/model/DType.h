// Element types that a safetensors header may name.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

namespace llmir::model {

/// Float types (F32, F16, BF16) can be read as float32; the integer and
/// other types are understood only so that their sizes can be checked.
enum class DType { F32, F16, BF16, F64, I64, I32, I16, I8, U64, U32, U16, U8, Bool };

/// The safetensors spelling ("F32", "BF16", ...).
std::string_view dtypeName(DType dtype);
/// Bytes per element.
size_t dtypeSize(DType dtype);
/// Parses a safetensors dtype name; nullopt when unknown.
std::optional<DType> parseDType(std::string_view name);
/// True for F32, F16 and BF16, the types that convert to float32.
bool isFloatDType(DType dtype);

} // namespace llmir::model

// The compiler service's compile call as JSON (proto/compile_service.proto
// in protobuf's JSON mapping): the one reader and writer both sides use, so
// the scheduler and the service cannot drift apart on field names or bounds.
#pragma once

#include "llmir/proto/compile_service.pb.h"
#include "llmir/support/Status.h"

#include <string>
#include <string_view>

namespace llmir::compiler {

/// Degrees and block size a request may ask for: [1, kMaxCompileDegree].
constexpr int kMaxCompileDegree = 4096;

/// A request body: a JSON object with a non-empty model_dir and, when given,
/// tp, pp, sp and kv_block_size in [1, kMaxCompileDegree]. Unknown fields are
/// errors (a misspelt "kv_blocksize" would silently compile the default).
/// Absent degrees are filled in (1, and 16 for kv_block_size).
Result<proto::CompileRequest> parseCompileRequest(std::string_view json);
std::string compileRequestJson(const proto::CompileRequest &request);

/// A response body; fields this reader does not know are ignored (a newer
/// service), but plan_id and plan.world_size >= 1 must be there.
Result<proto::CompileResponse> parseCompileResponse(std::string_view json);
std::string compileResponseJson(const proto::CompileResponse &response);

} // namespace llmir::compiler

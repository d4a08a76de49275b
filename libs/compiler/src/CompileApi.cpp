#include "llmir/compiler/CompileApi.h"

#include <google/protobuf/util/json_util.h>

namespace llmir::compiler {
namespace {

namespace util = google::protobuf::util;

std::string toJson(const google::protobuf::Message &message) {
  std::string out;
  util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  // "cache_hit": false is an answer too (proto3 would leave it out).
  options.always_print_primitive_fields = true;
  (void)util::MessageToJsonString(message, &out, options);
  return out;
}

Status fromJson(std::string_view json, bool ignoreUnknown, google::protobuf::Message *message) {
  util::JsonParseOptions options;
  options.ignore_unknown_fields = ignoreUnknown;
  const util::Status status =
      util::JsonStringToMessage(std::string(json), message, options);
  if (!status.ok())
    return Status::error(std::string(status.message()));
  return Status::ok();
}

} // namespace

Result<proto::CompileRequest> parseCompileRequest(std::string_view json) {
  proto::CompileRequest request;
  if (Status parsed = fromJson(json, /*ignoreUnknown=*/false, &request); !parsed)
    return parsed.withContext("compile request");
  if (request.model_dir().empty())
    return Status::error("compile request: 'model_dir' (a non-empty string) is required");
  struct Field {
    const char *name;
    bool given;
    int32_t value;
  };
  for (const Field &f : {Field{"tp", request.has_tp(), request.tp()},
                         Field{"pp", request.has_pp(), request.pp()},
                         Field{"sp", request.has_sp(), request.sp()},
                         Field{"kv_block_size", request.has_kv_block_size(),
                               request.kv_block_size()}})
    if (f.given && (f.value < 1 || f.value > kMaxCompileDegree))
      return Status::error(std::string("compile request: '") + f.name + "' must be in [1, " +
                           std::to_string(kMaxCompileDegree) + "], got " +
                           std::to_string(f.value));
  if (!request.has_tp())
    request.set_tp(1);
  if (!request.has_pp())
    request.set_pp(1);
  if (!request.has_sp())
    request.set_sp(1);
  if (!request.has_kv_block_size())
    request.set_kv_block_size(16);
  return request;
}

std::string compileRequestJson(const proto::CompileRequest &request) { return toJson(request); }

Result<proto::CompileResponse> parseCompileResponse(std::string_view json) {
  proto::CompileResponse response;
  if (Status parsed = fromJson(json, /*ignoreUnknown=*/true, &response); !parsed)
    return parsed.withContext("compile response");
  if (response.plan_id().empty() || response.plan().world_size() < 1)
    return Status::error("compile response: expected {plan_id, plan: {world_size >= 1}}");
  return response;
}

std::string compileResponseJson(const proto::CompileResponse &response) {
  return toJson(response);
}

} // namespace llmir::compiler

#include "llmir/engine/CheckpointWeights.h"

#include "llmir/model/Checkpoint.h"
#include "llmir/proto/shard_program.pb.h"

namespace llmir::engine {
namespace {

Result<proto::DType> engineDType(const model::TensorInfo &info) {
  switch (info.dtype) {
  case model::DType::F32:
    return proto::F32;
  case model::DType::BF16:
    return proto::BF16;
  case model::DType::F16:
    return proto::F16;
  default:
    return Status::error("tensor '" + info.name + "' has dtype " +
                         std::string(model::dtypeName(info.dtype)) +
                         ", expected F32, BF16 or F16");
  }
}

} // namespace

WeightProvider checkpointWeights(const model::Checkpoint &checkpoint) {
  return [&checkpoint](const proto::WeightSlice &slice) -> Result<WeightTensor> {
    const model::TensorInfo *info = checkpoint.find(slice.tensor_name());
    if (!info)
      return Status::error("checkpoint has no tensor '" + slice.tensor_name() +
                           "' named by the program");
    std::vector<int64_t> planned(slice.full_shape().begin(), slice.full_shape().end());
    if (planned != info->shape)
      return Status::error("tensor '" + info->name + "' has shape " +
                           model::formatShape(info->shape) +
                           " in the checkpoint, the program expects " +
                           model::formatShape(planned));
    auto dtype = engineDType(*info);
    if (!dtype)
      return dtype.status();
    auto bytes = checkpoint.readSliceRaw(info->name, slice.dim(), slice.offset(),
                                         slice.dim() < 0 ? -1 : slice.length());
    if (!bytes)
      return bytes.status();
    WeightTensor weight;
    weight.dtype = *dtype;
    weight.shape = info->shape;
    if (slice.dim() >= 0)
      weight.shape[slice.dim()] = slice.length();
    weight.data = std::move(*bytes);
    return weight;
  };
}

} // namespace llmir::engine

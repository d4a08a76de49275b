// A Hugging Face checkpoint directory: one model.safetensors, or several
// shards listed by model.safetensors.index.json. Presents every tensor of
// every shard behind one name-based API.
#pragma once

#include "llmir/model/Safetensors.h"

#include <map>
#include <memory>

namespace llmir::model {

class Checkpoint {
public:
  /// `path` is a directory holding model.safetensors.index.json (preferred
  /// when present) or model.safetensors, or a single .safetensors file.
  /// Index shards are opened once each; every tensor the index maps must
  /// exist in its shard, and no tensor may appear in two shards.
  static Result<Checkpoint> open(const std::string &path);

  /// All tensors: shards in index order, each shard in header order.
  const std::vector<TensorInfo> &tensors() const { return tensors_; }
  const TensorInfo *find(std::string_view name) const;
  /// The path of the shard holding `name` (nullptr when absent).
  const std::string *fileOf(std::string_view name) const;
  /// The shards, in the order they were opened.
  const std::vector<SafetensorsFile> &files() const { return files_; }

  /// Raw bytes of a tensor inside its shard's mapping.
  Result<std::span<const std::byte>> bytes(std::string_view name) const;
  Result<std::vector<std::byte>> readSliceRaw(std::string_view name, int dim = -1,
                                              int64_t offset = 0,
                                              int64_t length = -1) const;
  Result<std::vector<float>> readAsF32(std::string_view name, int dim = -1,
                                       int64_t offset = 0,
                                       int64_t length = -1) const;

private:
  struct Location {
    size_t file;   // index into files_
    size_t tensor; // index into tensors_
  };
  Status add(SafetensorsFile file);
  Result<const Location *> locate(std::string_view name) const;

  std::vector<SafetensorsFile> files_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, Location, std::less<>> index_;
};

} // namespace llmir::model

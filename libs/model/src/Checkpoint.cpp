#include "llmir/model/Checkpoint.h"

#include "JsonFields.h"
#include "llmir/model/ModelConfig.h"

#include <filesystem>
#include <set>

namespace llmir::model {
namespace fs = std::filesystem;

namespace {

/// Shard names come from the index file: keep them inside the directory.
bool isPlainFileName(std::string_view name) {
  return !name.empty() && name.find('/') == std::string_view::npos &&
         name.find('\\') == std::string_view::npos && name != "." && name != "..";
}

} // namespace

Status Checkpoint::add(SafetensorsFile file) {
  const size_t fileIndex = files_.size();
  for (const TensorInfo &info : file.tensors()) {
    auto [it, inserted] = index_.emplace(info.name, Location{fileIndex, tensors_.size()});
    if (!inserted)
      return Status::error(file.path() + ": tensor '" + info.name +
                           "' also appears in " + files_[it->second.file].path());
    tensors_.push_back(info);
  }
  files_.push_back(std::move(file));
  return Status::ok();
}

Result<Checkpoint> Checkpoint::open(const std::string &path) {
  Checkpoint checkpoint;
  std::error_code error;
  if (fs::is_regular_file(path, error)) {
    Result<SafetensorsFile> file = SafetensorsFile::open(path);
    if (!file)
      return file.status();
    LLMIR_RETURN_IF_ERROR(checkpoint.add(std::move(file).value()));
    return checkpoint;
  }
  if (!fs::is_directory(path, error))
    return Status::error(path + ": not a checkpoint directory or .safetensors file");

  const fs::path indexPath = fs::path(path) / "model.safetensors.index.json";
  if (!fs::exists(indexPath, error)) {
    const fs::path single = fs::path(path) / "model.safetensors";
    if (!fs::exists(single, error))
      return Status::error(path + ": has neither model.safetensors nor "
                                  "model.safetensors.index.json");
    Result<SafetensorsFile> file = SafetensorsFile::open(single.string());
    if (!file)
      return file.status();
    LLMIR_RETURN_IF_ERROR(checkpoint.add(std::move(file).value()));
    return checkpoint;
  }

  const std::string indexName = indexPath.string();
  Result<std::string> text = json::readFile(indexName, kMaxConfigFileBytes);
  if (!text)
    return text.status();
  Result<boost::json::value> index = json::parse(*text, indexName);
  if (!index)
    return index.status();
  const boost::json::value *weightMap =
      index->is_object() ? json::member(index->get_object(), "weight_map") : nullptr;
  if (!weightMap || !weightMap->is_object())
    return Status::error(indexName + ": missing object 'weight_map' {tensor: file}");

  // Open each shard once, in order of first mention.
  std::map<std::string, size_t, std::less<>> shardIndex;
  for (const auto &[tensor, shard] : weightMap->get_object()) {
    if (!shard.is_string() || !isPlainFileName(shard.get_string()))
      return Status::error(indexName + ": weight_map['" + std::string(tensor) +
                           "'] must be a file name in the same directory, got " +
                           boost::json::serialize(shard));
    const std::string shardName(shard.get_string());
    if (shardIndex.count(shardName))
      continue;
    Result<SafetensorsFile> file =
        SafetensorsFile::open((fs::path(path) / shardName).string());
    if (!file)
      return file.status().withContext("while opening a shard listed in " + indexName);
    shardIndex.emplace(shardName, checkpoint.files_.size());
    LLMIR_RETURN_IF_ERROR(checkpoint.add(std::move(file).value()));
  }
  for (const auto &[tensor, shard] : weightMap->get_object()) {
    const size_t expectedFile = shardIndex.at(std::string(shard.get_string()));
    auto found = checkpoint.index_.find(std::string_view(tensor));
    if (found == checkpoint.index_.end() || found->second.file != expectedFile)
      return Status::error(indexName + ": maps tensor '" + std::string(tensor) +
                           "' to " + std::string(shard.get_string()) +
                           ", but that file has no such tensor");
  }
  return checkpoint;
}

Result<const Checkpoint::Location *> Checkpoint::locate(std::string_view name) const {
  auto found = index_.find(name);
  if (found == index_.end())
    return Status::error("checkpoint has no tensor named '" + std::string(name) + "'");
  return &found->second;
}

const TensorInfo *Checkpoint::find(std::string_view name) const {
  auto found = index_.find(name);
  return found == index_.end() ? nullptr : &tensors_[found->second.tensor];
}

const std::string *Checkpoint::fileOf(std::string_view name) const {
  auto found = index_.find(name);
  return found == index_.end() ? nullptr : &files_[found->second.file].path();
}

Result<std::span<const std::byte>> Checkpoint::bytes(std::string_view name) const {
  Result<const Location *> location = locate(name);
  if (!location)
    return location.status();
  const SafetensorsFile &file = files_[(*location)->file];
  return file.bytes(*file.find(name));
}

Result<std::vector<std::byte>> Checkpoint::readSliceRaw(std::string_view name, int dim,
                                                        int64_t offset,
                                                        int64_t length) const {
  Result<const Location *> location = locate(name);
  if (!location)
    return location.status();
  return files_[(*location)->file].readSliceRaw(name, dim, offset, length);
}

Result<std::vector<float>> Checkpoint::readAsF32(std::string_view name, int dim,
                                                 int64_t offset, int64_t length) const {
  Result<const Location *> location = locate(name);
  if (!location)
    return location.status();
  return files_[(*location)->file].readAsF32(name, dim, offset, length);
}

} // namespace llmir::model

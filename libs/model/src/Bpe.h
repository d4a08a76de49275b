// The BPE model of tokenizer.json: vocabulary, ranked merges, and the merge
// loop that turns one pre-tokenized word into ids. Private to llmir_model.
#pragma once

#include "llmir/support/Status.h"

#include <boost/json/fwd.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace llmir::model {

class BpeModel {
public:
  /// `config` is tokenizer.json's "model" object (type "BPE").
  static Result<BpeModel> fromJson(const boost::json::value &config,
                                   std::string_view source);

  /// Appends the ids of one word (already in the byte-level alphabet).
  void encodeWord(std::string_view word, std::vector<int32_t> &out) const;

  const std::unordered_map<std::string, int32_t> &vocab() const { return vocab_; }
  /// Words in the merge cache now.
  size_t numCachedWords() const;

private:
  struct MergeResult {
    int32_t rank;
    int32_t mergedId;
  };
  static uint64_t pairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  void mergeWord(std::string_view word, std::vector<int32_t> &out) const;
  /// Ids for one code point that is not in the vocabulary.
  void encodeUnknown(std::string_view character, std::vector<int32_t> &out) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, MergeResult> merges_;
  std::optional<int32_t> unkId_;
  bool byteFallback_ = false;
  bool ignoreMerges_ = false;

  // Words repeat a lot in real text; their ids are cached. The cache is
  // bounded and shared by concurrent encode() calls.
  struct Cache {
    std::shared_mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>> words;
  };
  std::unique_ptr<Cache> cache_ = std::make_unique<Cache>();
};

} // namespace llmir::model

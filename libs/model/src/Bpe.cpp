#include "Bpe.h"

#include "JsonFields.h"

#include <cstdio>
#include <mutex>
#include <queue>

namespace llmir::model {
namespace {

// The cache of merged words: at most this many words, each at most this long
// (a longer word is merged every time; issue 14: one-word prompts of 1 MB
// grew the cache by 9.4 MB each, even when the request was then refused).
constexpr size_t kMaxCachedWords = 100000;
constexpr size_t kMaxCachedWordBytes = 256;

/// A merge entry: "a b" (older files) or ["a", "b"] (newer files).
Result<std::pair<std::string, std::string>> parseMerge(const boost::json::value &merge,
                                                       const std::string &where) {
  if (merge.is_string()) {
    std::string_view text = merge.get_string();
    const size_t space = text.find(' ');
    if (space == std::string_view::npos || text.find(' ', space + 1) != std::string_view::npos)
      return Status::error(where + ": merge \"" + std::string(text) +
                           "\" must be two tokens separated by one space");
    return std::pair{std::string(text.substr(0, space)), std::string(text.substr(space + 1))};
  }
  if (merge.is_array() && merge.get_array().size() == 2 &&
      merge.get_array()[0].is_string() && merge.get_array()[1].is_string())
    return std::pair{std::string(merge.get_array()[0].get_string()),
                     std::string(merge.get_array()[1].get_string())};
  return Status::error(where + ": merge " + boost::json::serialize(merge) +
                       " must be \"a b\" or [\"a\", \"b\"]");
}

} // namespace

Result<BpeModel> BpeModel::fromJson(const boost::json::value &config,
                                    std::string_view source) {
  const std::string where = std::string(source) + ": model";
  if (!config.is_object())
    return Status::error(where + ": expected an object");
  const boost::json::object &object = config.get_object();
  const boost::json::value *type = json::member(object, "type");
  if (!type || !type->is_string() || type->get_string() != "BPE")
    return Status::error(where + ": type must be \"BPE\"" +
                         (type ? ", got " + boost::json::serialize(*type) : ""));
  for (std::string_view unsupported : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const boost::json::value *value = json::member(object, unsupported);
    if (value && !(value->is_string() && value->get_string().empty()))
      return Status::error(where + ": '" + std::string(unsupported) +
                           "' is not supported by the byte-level BPE reader");
  }
  if (const boost::json::value *dropout = json::member(object, "dropout")) {
    std::optional<double> rate = json::asDouble(*dropout);
    if (!rate || *rate != 0.0)
      return Status::error(where + ": BPE dropout is not supported (inference is "
                                   "deterministic)");
  }

  BpeModel model;
  const boost::json::value *vocab = json::member(object, "vocab");
  if (!vocab || !vocab->is_object())
    return Status::error(where + ": missing object 'vocab' {token: id}");
  for (const auto &[token, idValue] : vocab->get_object()) {
    std::optional<int64_t> id = json::asInt64(idValue);
    if (!id || *id < 0 || *id > INT32_MAX)
      return Status::error(where + ": vocab['" + std::string(token) +
                           "'] must be a non-negative 32-bit id");
    model.vocab_.emplace(std::string(token), static_cast<int32_t>(*id));
  }

  const boost::json::value *merges = json::member(object, "merges");
  if (merges && !merges->is_array())
    return Status::error(where + ": 'merges' must be an array");
  if (merges) {
    int32_t rank = 0;
    for (const boost::json::value &merge : merges->get_array()) {
      Result<std::pair<std::string, std::string>> pair = parseMerge(merge, where);
      if (!pair)
        return pair.status();
      const auto &[left, right] = *pair;
      auto leftId = model.vocab_.find(left), rightId = model.vocab_.find(right);
      auto mergedId = model.vocab_.find(left + right);
      if (leftId == model.vocab_.end() || rightId == model.vocab_.end() ||
          mergedId == model.vocab_.end())
        return Status::error(where + ": merge #" + std::to_string(rank) + " \"" + left +
                             " " + right + "\" uses or makes a token not in the vocab");
      // The first occurrence of a pair has the lowest rank and wins.
      model.merges_.emplace(pairKey(leftId->second, rightId->second),
                            MergeResult{rank, mergedId->second});
      ++rank;
    }
  }

  if (const boost::json::value *unk = json::member(object, "unk_token")) {
    auto found = unk->is_string() ? model.vocab_.find(std::string(unk->get_string()))
                                  : model.vocab_.end();
    if (found == model.vocab_.end())
      return Status::error(where + ": unk_token " + boost::json::serialize(*unk) +
                           " is not in the vocab");
    model.unkId_ = found->second;
  }
  for (auto [key, flag] : {std::pair{"byte_fallback", &model.byteFallback_},
                           std::pair{"ignore_merges", &model.ignoreMerges_}}) {
    if (const boost::json::value *value = json::member(object, key)) {
      if (!value->is_bool())
        return Status::error(where + ": '" + key + "' must be a boolean");
      *flag = value->get_bool();
    }
  }
  return model;
}

void BpeModel::encodeUnknown(std::string_view character, std::vector<int32_t> &out) const {
  if (byteFallback_) {
    std::vector<int32_t> byteIds;
    for (char byte : character) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", static_cast<uint8_t>(byte));
      auto found = vocab_.find(name);
      if (found == vocab_.end())
        break;
      byteIds.push_back(found->second);
    }
    if (byteIds.size() == character.size()) {
      out.insert(out.end(), byteIds.begin(), byteIds.end());
      return;
    }
  }
  // Without a fallback, HF drops characters it cannot represent.
  if (unkId_)
    out.push_back(*unkId_);
}

void BpeModel::encodeWord(std::string_view word, std::vector<int32_t> &out) const {
  if (ignoreMerges_) {
    auto whole = vocab_.find(std::string(word));
    if (whole != vocab_.end()) {
      out.push_back(whole->second);
      return;
    }
  }
  if (word.size() > kMaxCachedWordBytes) {
    mergeWord(word, out);
    return;
  }
  {
    std::shared_lock lock(cache_->mutex);
    auto cached = cache_->words.find(std::string(word));
    if (cached != cache_->words.end()) {
      out.insert(out.end(), cached->second.begin(), cached->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  mergeWord(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  std::unique_lock lock(cache_->mutex);
  if (cache_->words.size() < kMaxCachedWords)
    cache_->words.emplace(std::string(word), std::move(ids));
}

size_t BpeModel::numCachedWords() const {
  std::shared_lock lock(cache_->mutex);
  return cache_->words.size();
}

void BpeModel::mergeWord(std::string_view word, std::vector<int32_t> &out) const {
  // Symbols form a doubly linked list over the word's code points; a
  // min-heap of candidate merges (rank, then leftmost position) drives the
  // merges in the same order as Hugging Face's Word::merge_all.
  struct Symbol {
    int32_t id;
    int prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  std::vector<int32_t> characterIds;
  for (size_t pos = 0; pos < word.size();) {
    size_t length = 1;
    const uint8_t lead = static_cast<uint8_t>(word[pos]);
    if (lead >= 0xf0)
      length = 4;
    else if (lead >= 0xe0)
      length = 3;
    else if (lead >= 0xc0)
      length = 2;
    length = std::min(length, word.size() - pos);
    const std::string character(word.substr(pos, length));
    pos += length;
    characterIds.clear();
    auto found = vocab_.find(character);
    if (found != vocab_.end())
      characterIds.push_back(found->second);
    else
      encodeUnknown(character, characterIds); // as HF: these still merge
    for (int32_t id : characterIds) {
      const int index = static_cast<int>(symbols.size());
      symbols.push_back({id, index - 1, index + 1, true});
    }
  }
  if (!symbols.empty())
    symbols.back().next = -1;

  struct Candidate {
    int32_t rank;
    int position;
    int32_t left, right, merged;
    bool operator>(const Candidate &other) const {
      return rank != other.rank ? rank > other.rank : position > other.position;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto consider = [&](int left) {
    if (left < 0 || symbols[left].next < 0)
      return;
    const Symbol &right = symbols[symbols[left].next];
    auto merge = merges_.find(pairKey(symbols[left].id, right.id));
    if (merge != merges_.end())
      queue.push({merge->second.rank, left, symbols[left].id, right.id,
                  merge->second.mergedId});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i)
    consider(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol &left = symbols[top.position];
    if (!left.alive || left.next < 0 || left.id != top.left ||
        symbols[left.next].id != top.right)
      continue; // stale: one side was merged since this candidate was queued
    Symbol &right = symbols[left.next];
    left.id = top.merged;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0)
      symbols[right.next].prev = top.position;
    consider(left.prev);
    consider(top.position);
  }
  for (const Symbol &symbol : symbols)
    if (symbol.alive)
      out.push_back(symbol.id);
}

} // namespace llmir::model

#include "llmir/model/Tokenizer.h"

#include "Bpe.h"
#include "ByteLevel.h"
#include "JsonFields.h"
#include "PreTokenizer.h"
#include "Utf8.h"
#include "llmir/model/ModelConfig.h"

#include <algorithm>
#include <filesystem>
#include <unordered_map>

namespace llmir::model {
namespace {

// Gaps between ids that a tokenizer file may leave (reserved ids).
constexpr int64_t kTokenIdSlack = 1024;

struct AddedToken {
  std::string content;
  int32_t id;
  bool lstrip, rstrip, special;
};

bool isAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/// What a token's spelling decodes to under the ByteLevel decoder: mapped
/// bytes when every code point is in the byte-level alphabet, otherwise
/// the spelling itself (e.g. special tokens with spaces), as HF does.
std::string byteLevelDecode(std::string_view spelling) {
  std::string bytes;
  for (size_t pos = 0; pos < spelling.size();) {
    std::optional<uint8_t> byte = bytelevel::byteFor(utf8::nextCodepoint(spelling, pos));
    if (!byte)
      return std::string(spelling);
    bytes += static_cast<char>(*byte);
  }
  return bytes;
}

Result<bool> flag(const boost::json::object &object, std::string_view key,
                  const std::string &where) {
  const boost::json::value *value = json::member(object, key);
  if (!value)
    return false;
  if (!value->is_bool())
    return Status::error(where + ": '" + std::string(key) + "' must be a boolean");
  return value->get_bool();
}

} // namespace

struct Tokenizer::Impl {
  Impl(BpeModel model, PreTokenizer pre)
      : bpe(std::move(model)), preTokenizer(std::move(pre)) {}

  BpeModel bpe;
  PreTokenizer preTokenizer;
  std::unordered_map<std::string, int32_t> tokenIds; // vocab and added tokens
  std::vector<std::optional<std::string>> spellings; // by id
  std::vector<std::string> decodedBytes;             // by id
  std::vector<bool> special;                         // by id
  std::vector<AddedToken> addedTokens;               // longest first
  std::optional<int32_t> bosId, eosId;

  /// Ids index dense tables: one beyond every token the file defines (plus
  /// slack for gaps) would allocate memory for nothing, so it is refused.
  int64_t maxTokenId = 0;

  Status addToken(const std::string &spelling, int32_t id, const std::string &where) {
    if (id < 0 || id > maxTokenId)
      return Status::error(where + ": token id " + std::to_string(id) +
                           " is beyond the tokens the file defines (ids up to " +
                           std::to_string(maxTokenId) + " are accepted)");
    if (static_cast<size_t>(id) >= spellings.size()) {
      spellings.resize(id + 1);
      decodedBytes.resize(id + 1);
      special.resize(id + 1, false);
    }
    if (spellings[id] && *spellings[id] != spelling)
      return Status::error(where + ": id " + std::to_string(id) + " is both '" +
                           *spellings[id] + "' and '" + spelling + "'");
    spellings[id] = spelling;
    decodedBytes[id] = byteLevelDecode(spelling);
    tokenIds[spelling] = id;
    return Status::ok();
  }

  /// Splits text at added tokens; plain segments go through pre-tokenizer
  /// and BPE, added tokens become their id directly.
  void encodeInto(std::string_view text, std::vector<int32_t> &out) const {
    std::string_view pending = text;
    size_t segmentStart = 0, pos = 0;
    auto flushSegment = [&](size_t end) {
      if (end > segmentStart)
        for (const std::string &word :
             preTokenizer.split(pending.substr(segmentStart, end - segmentStart)))
          bpe.encodeWord(word, out);
    };
    while (pos < pending.size()) {
      const AddedToken *match = nullptr;
      for (const AddedToken &token : addedTokens)
        if (pending.substr(pos).starts_with(token.content)) {
          match = &token; // sorted longest first: first hit is the longest
          break;
        }
      if (!match) {
        ++pos;
        continue;
      }
      size_t segmentEnd = pos;
      if (match->lstrip)
        while (segmentEnd > segmentStart && isAsciiSpace(pending[segmentEnd - 1]))
          --segmentEnd;
      flushSegment(segmentEnd);
      out.push_back(match->id);
      pos += match->content.size();
      if (match->rstrip)
        while (pos < pending.size() && isAsciiSpace(pending[pos]))
          ++pos;
      segmentStart = pos;
    }
    flushSegment(pending.size());
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer &&) noexcept = default;
Tokenizer &Tokenizer::operator=(Tokenizer &&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Result<Tokenizer> Tokenizer::parse(std::string_view text, std::string_view source) {
  Result<boost::json::value> parsed = json::parse(text, source);
  if (!parsed)
    return parsed.status();
  const std::string where(source);
  if (!parsed->is_object())
    return Status::error(where + ": expected a JSON object");
  const boost::json::object &root = parsed->get_object();

  if (const boost::json::value *normalizer = json::member(root, "normalizer"))
    return Status::error(where + ": normalizer " +
                         boost::json::serialize(normalizer->is_object() &&
                                                        normalizer->get_object().contains("type")
                                                    ? normalizer->get_object().at("type")
                                                    : *normalizer) +
                         " is not supported (only byte-level BPE without a normalizer)");
  const boost::json::value *decoder = json::member(root, "decoder");
  if (!decoder || !decoder->is_object() || !decoder->get_object().contains("type") ||
      decoder->get_object().at("type") != "ByteLevel")
    return Status::error(where + ": decoder must be {\"type\": \"ByteLevel\"}, got " +
                         (decoder ? boost::json::serialize(*decoder) : "none"));
  const boost::json::value *model = json::member(root, "model");
  if (!model)
    return Status::error(where + ": missing 'model'");
  const boost::json::value *preTokenizerConfig = json::member(root, "pre_tokenizer");
  if (!preTokenizerConfig)
    return Status::error(where + ": missing 'pre_tokenizer' (byte-level BPE needs "
                                 "ByteLevel)");

  Result<BpeModel> bpe = BpeModel::fromJson(*model, source);
  if (!bpe)
    return bpe.status();
  Result<PreTokenizer> preTokenizer = PreTokenizer::fromJson(*preTokenizerConfig, source);
  if (!preTokenizer)
    return preTokenizer.status();
  auto impl =
      std::make_unique<Impl>(std::move(bpe).value(), std::move(preTokenizer).value());

  const boost::json::value *addedTokens = json::member(root, "added_tokens");
  const size_t numAdded =
      addedTokens && addedTokens->is_array() ? addedTokens->get_array().size() : 0;
  impl->maxTokenId = std::min<int64_t>(
      static_cast<int64_t>(impl->bpe.vocab().size() + numAdded) + kTokenIdSlack,
      kMaxVocabSize - 1);
  for (const auto &[spelling, id] : impl->bpe.vocab())
    LLMIR_RETURN_IF_ERROR(impl->addToken(spelling, id, where + ": model.vocab"));

  if (const boost::json::value *added = json::member(root, "added_tokens")) {
    if (!added->is_array())
      return Status::error(where + ": 'added_tokens' must be an array");
    for (const boost::json::value &entry : added->get_array()) {
      const std::string entryWhere = where + ": added_tokens entry " +
                                     boost::json::serialize(entry).substr(0, 80);
      const boost::json::value *content =
          entry.is_object() ? json::member(entry.get_object(), "content") : nullptr;
      const boost::json::value *idValue =
          entry.is_object() ? json::member(entry.get_object(), "id") : nullptr;
      std::optional<int64_t> id = idValue ? json::asInt64(*idValue) : std::nullopt;
      if (!content || !content->is_string() || content->get_string().empty() || !id ||
          *id < 0 || *id > INT32_MAX)
        return Status::error(entryWhere + ": needs a non-empty 'content' and an 'id'");
      const boost::json::object &object = entry.get_object();
      Result<bool> singleWord = flag(object, "single_word", entryWhere);
      Result<bool> lstrip = flag(object, "lstrip", entryWhere);
      Result<bool> rstrip = flag(object, "rstrip", entryWhere);
      Result<bool> special = flag(object, "special", entryWhere);
      for (const Result<bool> *value : {&singleWord, &lstrip, &rstrip, &special})
        if (!*value)
          return value->status();
      if (*singleWord)
        return Status::error(entryWhere + ": single_word added tokens are not supported");
      AddedToken token{std::string(content->get_string()), static_cast<int32_t>(*id),
                       *lstrip, *rstrip, *special};
      LLMIR_RETURN_IF_ERROR(impl->addToken(token.content, token.id, entryWhere));
      impl->special[token.id] = token.special;
      impl->addedTokens.push_back(std::move(token));
    }
  }
  std::stable_sort(impl->addedTokens.begin(), impl->addedTokens.end(),
                   [](const AddedToken &a, const AddedToken &b) {
                     return a.content.size() > b.content.size();
                   });
  return Tokenizer(std::move(impl));
}

Result<Tokenizer> Tokenizer::load(const std::string &tokenizerJsonPath) {
  Result<std::string> text = json::readFile(tokenizerJsonPath, kMaxTokenizerFileBytes);
  if (!text)
    return text.status();
  Result<Tokenizer> tokenizer = parse(*text, tokenizerJsonPath);
  if (!tokenizer)
    return tokenizer;
  const auto configPath =
      std::filesystem::path(tokenizerJsonPath).parent_path() / "tokenizer_config.json";
  std::error_code error;
  if (std::filesystem::exists(configPath, error))
    LLMIR_RETURN_IF_ERROR(tokenizer->loadSpecialTokens(configPath.string()));
  return tokenizer;
}

Status Tokenizer::loadSpecialTokens(const std::string &tokenizerConfigPath) {
  Result<std::string> text = json::readFile(tokenizerConfigPath, kMaxConfigFileBytes);
  if (!text)
    return text.status();
  Result<boost::json::value> parsed = json::parse(*text, tokenizerConfigPath);
  if (!parsed)
    return parsed.status();
  if (!parsed->is_object())
    return Status::error(tokenizerConfigPath + ": expected a JSON object");
  for (auto [key, target] : {std::pair{"bos_token", &impl_->bosId},
                             std::pair{"eos_token", &impl_->eosId}}) {
    const boost::json::value *value = json::member(parsed->get_object(), key);
    if (!value)
      continue;
    // Either "<s>" or {"content": "<s>", ...} (older AddedToken form).
    const boost::json::value *content =
        value->is_object() ? json::member(value->get_object(), "content") : value;
    if (!content || !content->is_string())
      return Status::error(tokenizerConfigPath + ": '" + key +
                           "' must be a string or {\"content\": string}");
    std::optional<int32_t> id = tokenToId(content->get_string());
    if (!id)
      return Status::error(tokenizerConfigPath + ": " + key + " '" +
                           std::string(content->get_string()) +
                           "' is not a token of the tokenizer");
    *target = *id;
  }
  return Status::ok();
}

Result<std::vector<int32_t>> Tokenizer::encode(std::string_view text) const {
  if (std::optional<size_t> bad = utf8::firstInvalid(text))
    return Status::error("tokenizer input is not valid UTF-8 at byte " +
                         std::to_string(*bad));
  std::vector<int32_t> ids;
  impl_->encodeInto(text, ids);
  return ids;
}

Result<std::string> Tokenizer::tokenBytes(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->spellings.size() ||
      !impl_->spellings[id])
    return Status::error("token id " + std::to_string(id) +
                         " is not in the vocabulary (size " +
                         std::to_string(vocabSize()) + ")");
  return impl_->decodedBytes[id];
}

Result<std::string> Tokenizer::decode(std::span<const int32_t> ids,
                                      bool skipSpecialTokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    Result<std::string> piece = tokenBytes(id);
    if (!piece)
      return piece.status();
    if (!(skipSpecialTokens && isSpecial(id)))
      bytes += *piece;
  }
  std::string text;
  utf8::appendLossy(bytes, /*final=*/true, text);
  return text;
}

std::optional<int32_t> Tokenizer::tokenToId(std::string_view token) const {
  auto found = impl_->tokenIds.find(std::string(token));
  if (found == impl_->tokenIds.end())
    return std::nullopt;
  return found->second;
}

std::optional<std::string> Tokenizer::idToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->spellings.size())
    return std::nullopt;
  return impl_->spellings[id];
}

bool Tokenizer::isSpecial(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->special.size() && impl_->special[id];
}

int32_t Tokenizer::vocabSize() const { return static_cast<int32_t>(impl_->spellings.size()); }
size_t Tokenizer::numCachedWords() const { return impl_->bpe.numCachedWords(); }

std::optional<int32_t> Tokenizer::bosId() const { return impl_->bosId; }
std::optional<int32_t> Tokenizer::eosId() const { return impl_->eosId; }

Result<std::string> StreamDecoder::push(int32_t id) {
  Result<std::string> bytes = tokenizer_->tokenBytes(id);
  if (!bytes)
    return bytes.status();
  if (skipSpecialTokens_ && tokenizer_->isSpecial(id))
    return std::string();
  pending_ += *bytes;
  std::string text;
  pending_.erase(0, utf8::appendLossy(pending_, /*final=*/false, text));
  return text;
}

std::string StreamDecoder::flush() {
  std::string text;
  utf8::appendLossy(pending_, /*final=*/true, text);
  pending_.clear();
  return text;
}

} // namespace llmir::model

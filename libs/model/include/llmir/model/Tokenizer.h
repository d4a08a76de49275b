// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json (the
// GPT-2 / Llama 3 / Qwen2 family), plus streaming detokenization.
//
// Supported: model.type "BPE" (vocab, merges as "a b" or ["a", "b"],
// ignore_merges, byte_fallback, unk_token), pre_tokenizer ByteLevel or a
// Sequence of Split (regex or literal, Isolated/Removed) steps ending in
// ByteLevel, decoder ByteLevel, added_tokens (matched verbatim before
// pre-tokenization; lstrip/rstrip honoured). Anything else is rejected on
// load with an error naming it (e.g. normalizers, Metaspace tokenizers).
// encode() adds no BOS/EOS; callers prepend bosId() where the model wants it.
#pragma once

#include "llmir/support/Status.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace llmir::model {

class Tokenizer {
public:
  /// Loads tokenizer.json; when tokenizer_config.json sits next to it, its
  /// bos_token / eos_token give bosId() / eosId().
  static Result<Tokenizer> load(const std::string &tokenizerJsonPath);
  /// Parses tokenizer.json text; `source` names it in errors.
  static Result<Tokenizer> parse(std::string_view tokenizerJson, std::string_view source);

  Tokenizer(Tokenizer &&) noexcept;
  Tokenizer &operator=(Tokenizer &&) noexcept;
  ~Tokenizer();

  /// Token ids of `text`; fails only when `text` is not valid UTF-8.
  /// Safe to call from several threads at once.
  Result<std::vector<int32_t>> encode(std::string_view text) const;

  /// Text of `ids`; fails when an id has no token. Bytes that do not form
  /// valid UTF-8 become U+FFFD, as in Hugging Face.
  Result<std::string> decode(std::span<const int32_t> ids,
                             bool skipSpecialTokens = false) const;

  /// The raw bytes a token stands for (may be a partial UTF-8 character).
  Result<std::string> tokenBytes(int32_t id) const;

  std::optional<int32_t> tokenToId(std::string_view token) const;
  /// The token's spelling in the vocabulary (byte-level alphabet).
  std::optional<std::string> idToToken(int32_t id) const;
  bool isSpecial(int32_t id) const;
  /// One past the largest id (vocabulary plus added tokens).
  int32_t vocabSize() const;
  /// Words held by the BPE merge cache (bounded in count and word length).
  size_t numCachedWords() const;

  std::optional<int32_t> bosId() const;
  std::optional<int32_t> eosId() const;
  /// Reads bos_token / eos_token from a tokenizer_config.json.
  Status loadSpecialTokens(const std::string &tokenizerConfigPath);

private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Turns generated ids into text one id at a time without ever emitting a
/// partial UTF-8 character: bytes of an incomplete character are held back
/// until the token that completes it arrives. The concatenation of every
/// push() and the final flush() equals Tokenizer::decode of all ids.
class StreamDecoder {
public:
  explicit StreamDecoder(const Tokenizer &tokenizer, bool skipSpecialTokens = false)
      : tokenizer_(&tokenizer), skipSpecialTokens_(skipSpecialTokens) {}

  /// Text completed by `id` (possibly empty); fails for an unknown id.
  Result<std::string> push(int32_t id);
  /// Whatever is still held back, with U+FFFD for an unfinished character.
  std::string flush();

private:
  const Tokenizer *tokenizer_;
  bool skipSpecialTokens_;
  std::string pending_;
};

} // namespace llmir::model

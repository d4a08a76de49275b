// The pre-tokenizer pipeline of a byte-level BPE tokenizer.json: optional
// regex Split steps followed by ByteLevel, which (optionally) adds a prefix
// space, (optionally) splits with GPT-2's regex, and maps bytes to the
// byte-level alphabet. Private to llmir_model.
#pragma once

#include "llmir/support/Status.h"

#include <boost/json/fwd.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace llmir::model {

/// A compiled PCRE2 pattern in UTF + UCP mode (\p{L}, \s are Unicode-aware).
class Regex {
public:
  static Result<Regex> compile(std::string_view pattern, bool literal,
                               std::string_view where);
  /// Non-overlapping matches [begin, end) left to right; `text` must be
  /// valid UTF-8. Empty matches are skipped.
  std::vector<std::pair<size_t, size_t>> findAll(std::string_view text) const;

private:
  struct Code;
  std::shared_ptr<const Code> code_;
};

class PreTokenizer {
public:
  /// `config` is tokenizer.json's "pre_tokenizer" value.
  static Result<PreTokenizer> fromJson(const boost::json::value &config,
                                       std::string_view source);

  /// Splits valid UTF-8 text into byte-level-encoded words for BPE.
  std::vector<std::string> split(std::string_view text) const;

private:
  struct Step {
    enum class Kind { Split, ByteLevel } kind;
    Regex regex;              // Split, or ByteLevel with use_regex
    bool useRegex = false;    // ByteLevel
    bool addPrefixSpace = false; // ByteLevel
    bool removeMatches = false;  // Split with behavior "Removed"
  };
  static Status addStep(const boost::json::value &config, std::string_view source,
                        std::vector<Step> &steps);

  std::vector<Step> steps_;
};

} // namespace llmir::model

#include "PreTokenizer.h"

#include "ByteLevel.h"
#include "JsonFields.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace llmir::model {

struct Regex::Code {
  pcre2_code *code = nullptr;
  ~Code() { pcre2_code_free(code); }
};

Result<Regex> Regex::compile(std::string_view pattern, bool literal,
                             std::string_view where) {
  int errorCode = 0;
  PCRE2_SIZE errorOffset = 0;
  const uint32_t options = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
  pcre2_code *code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                    options, &errorCode, &errorOffset, nullptr);
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(errorCode, message, sizeof(message));
    return Status::error(std::string(where) + ": cannot compile regex '" +
                         std::string(pattern) + "' at offset " +
                         std::to_string(errorOffset) + ": " +
                         reinterpret_cast<const char *>(message));
  }
  // JIT is only a speed-up; the interpreter is used when it is unavailable.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  Regex regex;
  auto owned = std::make_shared<Code>();
  owned->code = code;
  regex.code_ = std::move(owned);
  return regex;
}

std::vector<std::pair<size_t, size_t>> Regex::findAll(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> matches;
  pcre2_match_data *data = pcre2_match_data_create_from_pattern(code_->code, nullptr);
  const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  while (start < text.size()) {
    // The text was validated once by the caller; skip PCRE2's re-check.
    const int rc = pcre2_match(code_->code, subject, text.size(), start,
                               PCRE2_NO_UTF_CHECK, data, nullptr);
    if (rc < 0)
      break; // PCRE2_ERROR_NOMATCH, or a resource limit: rest stays unsplit
    const PCRE2_SIZE *ovector = pcre2_get_ovector_pointer(data);
    const size_t begin = ovector[0], end = ovector[1];
    if (end > begin) {
      matches.emplace_back(begin, end);
      start = end;
    } else {
      // Empty match: step over one whole code point.
      start = begin + 1;
      while (start < text.size() && (static_cast<uint8_t>(text[start]) & 0xc0) == 0x80)
        ++start;
    }
  }
  pcre2_match_data_free(data);
  return matches;
}

namespace {

/// Splits `piece` at the regex matches: matches and the gaps between them
/// become separate pieces (HF "Isolated"), or gaps only ("Removed").
void splitIsolated(const Regex &regex, std::string_view piece, bool removeMatches,
                   std::vector<std::string> &out) {
  size_t previousEnd = 0;
  for (const auto &[begin, end] : regex.findAll(piece)) {
    if (begin > previousEnd)
      out.emplace_back(piece.substr(previousEnd, begin - previousEnd));
    if (!removeMatches)
      out.emplace_back(piece.substr(begin, end - begin));
    previousEnd = end;
  }
  if (previousEnd < piece.size())
    out.emplace_back(piece.substr(previousEnd));
}

Result<bool> optionalBool(const boost::json::object &object, std::string_view key,
                          bool fallback, const std::string &where) {
  const boost::json::value *value = json::member(object, key);
  if (!value)
    return fallback;
  if (!value->is_bool())
    return Status::error(where + ": '" + std::string(key) + "' must be a boolean");
  return value->get_bool();
}

} // namespace

Status PreTokenizer::addStep(const boost::json::value &config, std::string_view source,
                             std::vector<Step> &steps) {
  const std::string where = std::string(source) + ": pre_tokenizer";
  if (!config.is_object() || !config.get_object().contains("type") ||
      !config.get_object().at("type").is_string())
    return Status::error(where + ": expected an object with a string 'type'");
  const boost::json::object &object = config.get_object();
  const std::string type(object.at("type").get_string());

  if (type == "Sequence") {
    const boost::json::value *items = json::member(object, "pretokenizers");
    if (!items || !items->is_array())
      return Status::error(where + ": Sequence needs an array 'pretokenizers'");
    for (const boost::json::value &item : items->get_array())
      LLMIR_RETURN_IF_ERROR(addStep(item, source, steps));
    return Status::ok();
  }
  if (type == "ByteLevel") {
    Step step{Step::Kind::ByteLevel, {}};
    Result<bool> useRegex = optionalBool(object, "use_regex", true, where);
    Result<bool> addPrefixSpace = optionalBool(object, "add_prefix_space", true, where);
    if (!useRegex)
      return useRegex.status();
    if (!addPrefixSpace)
      return addPrefixSpace.status();
    step.useRegex = *useRegex;
    step.addPrefixSpace = *addPrefixSpace;
    if (step.useRegex) {
      Result<Regex> regex = Regex::compile(bytelevel::kGpt2Pattern, false, where);
      if (!regex)
        return regex.status();
      step.regex = std::move(regex).value();
    }
    steps.push_back(std::move(step));
    return Status::ok();
  }
  if (type == "Split") {
    Step step{Step::Kind::Split, {}};
    const boost::json::value *pattern = json::member(object, "pattern");
    const boost::json::value *regexText =
        pattern && pattern->is_object() ? json::member(pattern->get_object(), "Regex")
                                        : nullptr;
    const boost::json::value *literalText =
        pattern && pattern->is_object() ? json::member(pattern->get_object(), "String")
                                        : nullptr;
    const boost::json::value *text = regexText ? regexText : literalText;
    if (!text || !text->is_string())
      return Status::error(where + ": Split needs 'pattern' {\"Regex\": ...} or "
                                   "{\"String\": ...}");
    Result<bool> invert = optionalBool(object, "invert", false, where);
    if (!invert)
      return invert.status();
    if (*invert)
      return Status::error(where + ": Split with invert=true is not supported");
    const boost::json::value *behavior = json::member(object, "behavior");
    const std::string behaviorName =
        behavior && behavior->is_string() ? std::string(behavior->get_string()) : "";
    if (behaviorName != "Isolated" && behaviorName != "Removed")
      return Status::error(where + ": Split behavior '" + behaviorName +
                           "' is not supported (supported: Isolated, Removed)");
    step.removeMatches = behaviorName == "Removed";
    Result<Regex> regex = Regex::compile(text->get_string(), literalText != nullptr, where);
    if (!regex)
      return regex.status();
    step.regex = std::move(regex).value();
    steps.push_back(std::move(step));
    return Status::ok();
  }
  return Status::error(where + ": type '" + type +
                       "' is not supported (supported: ByteLevel, Split, Sequence)");
}

Result<PreTokenizer> PreTokenizer::fromJson(const boost::json::value &config,
                                            std::string_view source) {
  PreTokenizer preTokenizer;
  LLMIR_RETURN_IF_ERROR(addStep(config, source, preTokenizer.steps_));
  const auto &steps = preTokenizer.steps_;
  if (steps.empty() || steps.back().kind != Step::Kind::ByteLevel)
    return Status::error(std::string(source) +
                         ": pre_tokenizer must end with ByteLevel (only byte-level "
                         "BPE tokenizers are supported)");
  for (size_t i = 0; i + 1 < steps.size(); ++i)
    if (steps[i].kind == Step::Kind::ByteLevel)
      return Status::error(std::string(source) +
                           ": pre_tokenizer has ByteLevel before its last step");
  return preTokenizer;
}

std::vector<std::string> PreTokenizer::split(std::string_view text) const {
  std::vector<std::string> pieces{std::string(text)};
  for (const Step &step : steps_) {
    std::vector<std::string> next;
    for (std::string &piece : pieces) {
      if (step.kind == Step::Kind::Split) {
        splitIsolated(step.regex, piece, step.removeMatches, next);
        continue;
      }
      // ByteLevel: HF prepends the space to every piece it receives.
      if (step.addPrefixSpace && (piece.empty() || piece.front() != ' '))
        piece.insert(piece.begin(), ' ');
      std::vector<std::string> words;
      if (step.useRegex)
        splitIsolated(step.regex, piece, false, words);
      else
        words.push_back(std::move(piece));
      for (const std::string &word : words) {
        std::string encoded;
        bytelevel::encode(word, encoded);
        next.push_back(std::move(encoded));
      }
    }
    pieces = std::move(next);
  }
  return pieces;
}

} // namespace llmir::model

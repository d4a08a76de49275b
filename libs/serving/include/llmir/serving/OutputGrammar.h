// Structured output: a byte-level recognizer of the texts a response format
// allows (response_format json_object / json_schema, vLLM's guided_json and
// guided_choice), and the token mask it implies at each step: a token is
// allowed when all its bytes keep the output a viable prefix; EOS once the
// output is complete. JSON schemas are compiled to a fixed shape without
// optional whitespace: object properties in schema order, all of them
// written (so `required` holds), strings within maxLength, integers and
// numbers with a bounded number of digits, enums and consts as literals.
#pragma once

#include "llmir/serving/ToolCalls.h"
#include "llmir/support/Status.h"

#include <boost/json/fwd.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace llmir::model {
class Tokenizer;
}

namespace llmir::serving {

struct GrammarNode;

class OutputGrammar {
public:
  /// Any JSON object.
  static std::shared_ptr<const OutputGrammar> jsonObject();
  /// Outputs that validate against `schema` (the subset above; other
  /// keywords are an error naming them).
  static Result<std::shared_ptr<const OutputGrammar>> jsonSchema(const boost::json::value &schema);
  /// Exactly one of `choices`.
  static Result<std::shared_ptr<const OutputGrammar>> choice(std::vector<std::string> choices);
  /// One tool call in `format` (tool_choice "required", or a named function
  /// when `tools` holds just that one): {"name": one of the tools' names,
  /// "arguments" (llama3_json: "parameters"): its parameters schema when
  /// there is one tool, any object otherwise}, in the format's wrapper.
  static Result<std::shared_ptr<const OutputGrammar>> toolCall(ToolCallFormat format,
                                                               const boost::json::array &tools);

  ~OutputGrammar();
  const GrammarNode &root() const { return *root_; }

private:
  explicit OutputGrammar(std::unique_ptr<GrammarNode> root);
  std::unique_ptr<GrammarNode> root_;
  std::vector<std::unique_ptr<GrammarNode>> pool_;
  friend struct GrammarBuilder;
};

/// Where one output is in its grammar.
class GrammarMatcher {
public:
  explicit GrammarMatcher(std::shared_ptr<const OutputGrammar> grammar);

  /// Consumes `bytes`; false (and unchanged) when they leave the grammar.
  bool advance(std::string_view bytes);
  /// The output so far is a complete text of the grammar.
  bool complete() const;
  /// Nothing more can follow (complete, and no byte is accepted).
  bool finished() const;

  /// Token ids allowed next: those whose bytes keep a viable prefix, plus
  /// `eosIds` when complete (or when nothing else is allowed).
  std::vector<int32_t> allowedTokens(const model::Tokenizer &tokenizer, int32_t vocabSize,
                                     const std::vector<int32_t> &eosIds) const;

  struct Frame;

private:
  bool step(uint8_t byte);
  std::shared_ptr<const OutputGrammar> grammar_;
  std::vector<Frame> stack_;
};

struct GrammarMatcher::Frame {
  const GrammarNode *node = nullptr;
  int32_t stage = 0;
  int32_t count = 0;
  uint64_t candidates = 0; // literal alternatives still possible (bitmask)
};

} // namespace llmir::serving

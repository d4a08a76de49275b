// A strict interpreter for the subset of Jinja2 that Hugging Face chat
// templates (tokenizer_config.json "chat_template") use. The template is
// parsed once; anything outside the subset is a parse error naming its line
// and column, so an unsupported template fails at startup, not per request.
// Rendering follows transformers' apply_chat_template environment
// (trim_blocks and lstrip_blocks on). docs/api.md lists the subset.
#pragma once

#include "llmir/support/Status.h"

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace llmir::serving {

struct ChatTurn {
  std::string role;
  std::string content;
};

struct ChatTemplateInputs {
  bool addGenerationPrompt = true;
  std::string bosToken;
  std::string eosToken;
};

class ChatTemplate {
public:
  /// Parses `source`; the error says where (line:column) and what was found.
  static Result<ChatTemplate> parse(std::string_view source);

  /// The prompt for `messages`. A template's raise_exception('msg') or a
  /// type error (e.g. adding a string to a number) is an error with that text.
  Result<std::string> render(const std::vector<ChatTurn> &messages,
                             const ChatTemplateInputs &inputs) const;

private:
  struct Program; // the parsed statements (src/ChatTemplate.cpp)
  explicit ChatTemplate(std::shared_ptr<const Program> program)
      : program_(std::move(program)) {}
  std::shared_ptr<const Program> program_;
};

} // namespace llmir::serving

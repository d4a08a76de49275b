// A model's chat template (tokenizer_config.json "chat_template"): the prompt
// text of a conversation exactly as Hugging Face transformers'
// apply_chat_template renders it. The template is parsed once (at scheduler
// start, so a template the engine cannot parse stops the start with its
// line); rendering runs the Jinja2 engine of libs/jinja with the variables
// transformers passes: messages, add_generation_prompt, bos_token,
// eos_token, plus tools, documents and any extra keyword arguments.
#pragma once

#include "llmir/jinja/Template.h"
#include "llmir/support/Status.h"

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>

#include <ctime>
#include <optional>
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
  /// Further template variables: tools, documents, chat_template_kwargs...
  /// (set after the ones above, so they can override them, as in
  /// transformers).
  boost::json::object extra;
  /// What strftime_now sees as now; unset: the clock.
  std::optional<std::time_t> now;
};

/// A failed render: the template's own raise_exception (its message
/// verbatim) or a runtime error (e.g. adding a string to a list).
struct ChatTemplateError {
  std::string message;
  bool raised = false;
};

class ChatTemplate {
public:
  /// Parses `source`; the error says where (line) and what was found.
  static Result<ChatTemplate> parse(std::string_view source);

  /// The prompt for `messages` (OpenAI-style message objects).
  Result<std::string> render(const boost::json::array &messages, const ChatTemplateInputs &inputs,
                             ChatTemplateError *error = nullptr) const;
  /// Whether the template reads a message's content as a list of parts
  /// (it loops over it); otherwise text parts are given joined into one
  /// string, as vLLM decides ("openai" / "string" content format).
  bool takesContentParts() const { return takesContentParts_; }

  /// The same for plain role/content turns.
  Result<std::string> render(const std::vector<ChatTurn> &messages,
                             const ChatTemplateInputs &inputs) const;

private:
  explicit ChatTemplate(jinja::Template engine)
      : engine_(std::move(engine)), takesContentParts_(engine_.iteratesOverAttribute("content")) {}
  jinja::Template engine_;
  bool takesContentParts_ = false;
};

} // namespace llmir::serving

// Chat templates on the Jinja2 engine of libs/jinja, with the variables
// transformers' apply_chat_template passes.
#include "llmir/serving/ChatTemplate.h"

#include <boost/json.hpp>

namespace llmir::serving {

Result<ChatTemplate> ChatTemplate::parse(std::string_view source) {
  auto engine = jinja::Template::parse(source);
  if (!engine)
    return Status::error("chat template, " + engine.message());
  return ChatTemplate(std::move(*engine));
}

Result<std::string> ChatTemplate::render(const boost::json::array &messages,
                                         const ChatTemplateInputs &inputs,
                                         ChatTemplateError *error) const {
  jinja::RenderInputs in;
  in.variables.emplace_back("messages", jinja::Value::fromJson(boost::json::value(messages)));
  in.variables.emplace_back("add_generation_prompt", jinja::Value::boolean(inputs.addGenerationPrompt));
  in.variables.emplace_back("bos_token", jinja::Value::string(inputs.bosToken));
  in.variables.emplace_back("eos_token", jinja::Value::string(inputs.eosToken));
  for (const auto &[key, value] : inputs.extra) {
    std::string name(key);
    auto existing = std::find_if(in.variables.begin(), in.variables.end(),
                                 [&](const auto &v) { return v.first == name; });
    if (existing != in.variables.end())
      existing->second = jinja::Value::fromJson(value);
    else
      in.variables.emplace_back(std::move(name), jinja::Value::fromJson(value));
  }
  in.now = inputs.now;
  jinja::RenderError failure;
  auto text = engine_.render(in, &failure);
  if (!text && error)
    *error = ChatTemplateError{failure.message, failure.raised};
  return text;
}

Result<std::string> ChatTemplate::render(const std::vector<ChatTurn> &messages,
                                         const ChatTemplateInputs &inputs) const {
  boost::json::array array;
  for (const ChatTurn &turn : messages)
    array.push_back(boost::json::object{{"role", turn.role}, {"content", turn.content}});
  return render(array, inputs);
}

} // namespace llmir::serving

#include "llmir/scheduler/ModelFiles.h"

#include <boost/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace llmir::scheduler {
namespace {

namespace fs = std::filesystem;

/// A special token of tokenizer_config.json: a string or {"content": ...}.
std::string specialToken(const boost::json::object &config, std::string_view key) {
  const boost::json::value *token = config.if_contains(key);
  if (token && token->is_object())
    token = token->as_object().if_contains("content");
  return token && token->is_string() ? std::string(token->as_string()) : std::string();
}

/// The whole file, or nullopt when it cannot be opened.
std::optional<std::string> readWholeFile(const fs::path &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

} // namespace

Result<openai::ChatFormat> loadChatFormat(const std::string &dir) {
  const fs::path path = fs::path(dir) / "tokenizer_config.json";
  boost::json::object object;
  if (std::optional<std::string> text = readWholeFile(path)) {
    boost::system::error_code ec;
    boost::json::value config = boost::json::parse(*text, ec);
    if (ec || !config.is_object())
      return Status::error(path.string() + ": not a JSON object" +
                           (ec ? " (" + ec.message() + ")" : std::string()));
    object = std::move(config.as_object());
  }
  openai::ChatFormat format;
  format.inputs = {.addGenerationPrompt = true,
                   .bosToken = specialToken(object, "bos_token"),
                   .eosToken = specialToken(object, "eos_token")};
  auto parse = [](const fs::path &where, std::string_view source,
                  std::optional<serving::ChatTemplate> &into) -> Status {
    auto parsed = serving::ChatTemplate::parse(source);
    if (!parsed)
      return Status::error(where.string() + ": " + parsed.message());
    into = std::move(*parsed);
    return Status::ok();
  };
  const boost::json::value *source = object.if_contains("chat_template");
  if (!source || source->is_null()) {
    // Recent transformers save the template beside the config instead.
    const fs::path file = fs::path(dir) / "chat_template.jinja";
    std::optional<std::string> text = readWholeFile(file);
    if (!text)
      return format;
    LLMIR_RETURN_IF_ERROR(parse(file, *text, format.chatTemplate));
    return format;
  }
  if (source->is_string()) {
    LLMIR_RETURN_IF_ERROR(parse(path, source->as_string(), format.chatTemplate));
    return format;
  }
  // Named templates [{"name", "template"}]: "default", and "tool_use" for
  // requests with tools when there is one (as transformers picks them).
  if (!source->is_array())
    return Status::error(path.string() + ": chat_template must be a string or a list of "
                                         "{name, template}");
  for (const boost::json::value &entry : source->as_array()) {
    const boost::json::object *named = entry.if_object();
    const boost::json::value *name = named ? named->if_contains("name") : nullptr;
    const boost::json::value *text = named ? named->if_contains("template") : nullptr;
    if (!name || !name->is_string() || !text || !text->is_string())
      return Status::error(path.string() + ": each named chat_template needs a string name "
                                           "and template");
    if (name->as_string() == "default")
      LLMIR_RETURN_IF_ERROR(parse(path, text->as_string(), format.chatTemplate));
    else if (name->as_string() == "tool_use")
      LLMIR_RETURN_IF_ERROR(parse(path, text->as_string(), format.toolUseTemplate));
  }
  if (!format.chatTemplate)
    return Status::error(path.string() + ": the named chat templates have no \"default\"");
  return format;
}

Result<std::vector<serving::ApiKeyEntry>> loadApiKeys(const std::string &path) {
  constexpr uintmax_t kMaxBytes = 1 << 20;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    return Status::error("'api-keys-file' " + path + ": not a readable regular file");
  if (fs::file_size(path, ec) > kMaxBytes)
    return Status::error("'api-keys-file' " + path + ": larger than the limit of 1048576 bytes");
  std::optional<std::string> text = readWholeFile(path);
  if (!text)
    return Status::error("'api-keys-file' " + path + ": cannot be read");
  auto keys = serving::parseApiKeys(*text);
  if (!keys)
    return keys.status().withContext("'api-keys-file' " + path);
  return keys;
}

} // namespace llmir::scheduler

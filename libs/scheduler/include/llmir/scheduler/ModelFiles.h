// What llmir-scheduler reads from files beside its settings: the model
// directory's chat template(s) and special tokens, and the API keys file.
#pragma once

#include "llmir/openai/OpenAiProtocol.h"
#include "llmir/serving/Admission.h"
#include "llmir/support/Status.h"

#include <string>
#include <vector>

namespace llmir::scheduler {

/// The chat format of the model in `dir`, as transformers finds it:
/// tokenizer_config.json's chat_template (a string, or named templates of
/// which "default" is used and "tool_use" for requests with tools), else
/// chat_template.jinja beside it, else none (the documented default
/// format); bos_token / eos_token as strings or {"content": ...}. Every
/// template is parsed now, so an unsupported one stops the start with the
/// file and line.
Result<openai::ChatFormat> loadChatFormat(const std::string &dir);

/// The API keys file (`api-keys-file`): at most 1 MiB, parsed by
/// serving::parseApiKeys; errors name the file and line, never a key.
Result<std::vector<serving::ApiKeyEntry>> loadApiKeys(const std::string &path);

} // namespace llmir::scheduler

// Tool calls in a model's output, parsed back into OpenAI tool_calls as
// vLLM's --tool-call-parser does: "hermes" (Hermes / Qwen
// <tool_call>{json}</tool_call> blocks), "llama3_json" (Llama 3.x: the output
// is one JSON object, or several separated by ';', optionally after
// <|python_tag|>) and "mistral" ([TOOL_CALLS][{...}, ...]). Text that does
// not parse as a call stays content.
#pragma once

#include "llmir/support/Status.h"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace llmir::serving {

enum class ToolCallFormat { Hermes, Llama3Json, Mistral };

/// "hermes", "llama3_json" or "mistral".
Result<ToolCallFormat> toolCallFormat(std::string_view name);

struct ToolCall {
  std::string id;        // "call_..." (mistral: 9 alphanumerics)
  std::string name;
  std::string arguments; // a JSON object as text
};

struct ParsedOutput {
  std::optional<std::string> content; // nullopt: none (only tool calls)
  std::vector<ToolCall> toolCalls;
};

/// The whole output of a choice. `idSeed` makes the call ids unique.
ParsedOutput parseToolCalls(ToolCallFormat format, std::string_view text, uint64_t idSeed);

/// The same over a stream of text deltas: content is released as soon as it
/// cannot be the start of a call; a call is released whole once complete.
class ToolCallStream {
public:
  ToolCallStream(ToolCallFormat format, uint64_t idSeed) : format_(format), idSeed_(idSeed) {}

  struct Delta {
    std::string content;
    std::vector<ToolCall> toolCalls;
  };
  Delta push(std::string_view text);
  /// The end of the output: what was held back.
  Delta finish();
  /// Calls released so far (their index in tool_calls).
  size_t numToolCalls() const { return calls_; }

private:
  Delta release(bool final);

  ToolCallFormat format_;
  uint64_t idSeed_;
  std::string pending_;     // held back: a possible or an open call
  bool sawContent_ = false; // llama3_json/mistral: calls only at the start
  size_t calls_ = 0;
};

} // namespace llmir::serving

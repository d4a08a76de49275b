// A Jinja2 template engine for chat templates: parses once, renders many
// times, and renders byte-for-byte what Jinja2 renders in the environment
// Hugging Face transformers uses for apply_chat_template
// (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loop controls,
// the {% generation %} tag, tojson without ASCII escaping, the globals
// raise_exception and strftime_now). docs/api.md lists what is supported.
//
// Robust on any input: parse and render errors are values (never a crash),
// nesting and recursion are bounded, and so are the output's size and the
// work a render may do.
#pragma once

#include "llmir/jinja/Value.h"
#include "llmir/support/Status.h"

#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace llmir::jinja {

struct TemplateProgram; // the parsed tree (src/Ast.h)

struct RenderLimits {
  size_t maxOutputBytes = 32u << 20;
  size_t maxSteps = 50'000'000; // loop iterations, calls and filter applications
  int maxCallDepth = 200;       // macro and caller() nesting
};

struct RenderInputs {
  /// The template's variables (messages, add_generation_prompt, ...).
  std::vector<std::pair<std::string, Value>> variables;
  /// What strftime_now sees as now (UTC); unset: the clock's time.
  std::optional<std::time_t> now;
  RenderLimits limits;
};

/// A render error. `raised` is true for the template's own
/// raise_exception(message), whose message is `message` verbatim.
struct RenderError {
  std::string message;
  bool raised = false;
};

class Template {
public:
  /// Parses `source`; the error says where (line) and what was found.
  static Result<Template> parse(std::string_view source);

  /// Renders with `inputs`; on failure `error` (when given) tells whether the
  /// template raised the error itself.
  Result<std::string> render(const RenderInputs &inputs, RenderError *error = nullptr) const;

  /// Whether some for loop iterates over `x.<attribute>` or `x['<attribute>']`
  /// (directly, or through a variable set from one): how vLLM tells that a
  /// chat template reads message content as a list of parts.
  bool iteratesOverAttribute(std::string_view attribute) const;

private:
  explicit Template(std::shared_ptr<const TemplateProgram> program) : program_(std::move(program)) {}
  std::shared_ptr<const TemplateProgram> program_;
};

} // namespace llmir::jinja

// libFuzzer target for the chat-template engine: any bytes as a template,
// parsed and (when it parses) rendered with a small conversation under tight
// limits. Crashes, sanitizer reports and hangs are bugs; errors are not.
//
// Run: scripts/fuzz.sh jinja SECONDS (builds build-fuzz/ with -DLLMIR_FUZZ=ON;
// the corpus is seeded from tests/fixtures/chat-templates).
#include "llmir/jinja/Template.h"

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace {

llmir::jinja::RenderInputs inputs() {
  using llmir::jinja::Dict;
  using llmir::jinja::Value;
  Dict user;
  user.set("role", Value::string("user"));
  user.set("content", Value::string("Hi \xc3\xa9"));
  Dict call;
  call.set("name", Value::string("f"));
  Dict args;
  args.set("x", Value::integer(1));
  call.set("arguments", Value::dict(args));
  Dict assistant;
  assistant.set("role", Value::string("assistant"));
  assistant.set("content", Value::none());
  assistant.set("tool_calls", Value::list({Value::dict(call)}));
  llmir::jinja::RenderInputs in;
  in.variables = {{"messages", Value::list({Value::dict(user), Value::dict(assistant)})},
                  {"add_generation_prompt", Value::boolean(true)},
                  {"bos_token", Value::string("<s>")},
                  {"eos_token", Value::string("</s>")},
                  {"tools", Value::list({Value::dict(call)})}};
  in.now = 0;
  in.limits.maxSteps = 100'000;
  in.limits.maxOutputBytes = 1 << 20;
  return in;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const llmir::jinja::RenderInputs in = inputs();
  auto parsed = llmir::jinja::Template::parse(
      std::string_view(reinterpret_cast<const char *>(data), size));
  if (parsed)
    (void)parsed->render(in);
  return 0;
}

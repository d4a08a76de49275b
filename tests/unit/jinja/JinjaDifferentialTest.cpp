// The engine on small templates that each exercise a feature (whitespace
// control, literals, operators, loops, macros, call blocks, filters, tests,
// Python methods, errors), compared byte for byte with Jinja2's renders in
// transformers' environment (tests/fixtures/jinja/snippets-goldens.json,
// written by scripts/gen-chat-goldens.py). Where Jinja2 fails (to compile or
// to render) the engine must fail the same way, with Jinja2's message when
// the template raised it.
#include "llmir/jinja/Template.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace llmir::jinja {
namespace {

namespace fs = std::filesystem;

const fs::path kFixtures = fs::path(LLMIR_SOURCE_DIR) / "tests" / "fixtures";

boost::json::value readJson(const fs::path &path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return boost::json::parse(text.str());
}

TEST(JinjaDifferential, SnippetsRenderAsJinja2RendersThem) {
  const auto snippets = readJson(kFixtures / "jinja" / "snippets.json").as_array();
  const auto goldens = readJson(kFixtures / "jinja" / "snippets-goldens.json").as_array();
  const auto now = readJson(kFixtures / "chat-templates" / "conversations.json").at("now").to_number<std::time_t>();
  ASSERT_EQ(snippets.size(), goldens.size()) << "run scripts/gen-chat-goldens.py";
  size_t compared = 0;
  for (size_t i = 0; i < snippets.size(); ++i) {
    const std::string source(snippets[i].at("template").as_string());
    const auto &golden = goldens[i].as_object();
    SCOPED_TRACE("snippet " + std::to_string(i) + ": " + source);
    auto parsed = Template::parse(source);
    if (golden.contains("error") && golden.at("error").as_string().starts_with("compile:")) {
      EXPECT_FALSE(parsed.isOk()) << "Jinja2: " << golden.at("error");
      continue;
    }
    ASSERT_TRUE(parsed.isOk()) << parsed.message();
    RenderInputs inputs;
    inputs.variables = {{"messages", Value::list({})},
                        {"add_generation_prompt", Value::boolean(true)},
                        {"bos_token", Value::string("<s>")},
                        {"eos_token", Value::string("</s>")}};
    for (const auto &[k, v] : snippets[i].at("vars").as_object())
      inputs.variables.emplace_back(std::string(k), Value::fromJson(v));
    inputs.now = now;
    RenderError error;
    auto text = parsed->render(inputs, &error);
    ++compared;
    if (golden.contains("error")) {
      EXPECT_FALSE(text.isOk()) << "Jinja2 fails (" << golden.at("error") << "), rendered: " << *text;
      if (!text.isOk() && error.raised)
        EXPECT_EQ(error.message, std::string(golden.at("error").as_string()));
      continue;
    }
    ASSERT_TRUE(text.isOk()) << text.message();
    EXPECT_EQ(std::string(golden.at("text").as_string()), *text);
  }
  EXPECT_GT(compared, 90u);
}

} // namespace
} // namespace llmir::jinja

namespace llmir::jinja {
namespace {

TEST(JinjaTemplate, TellsWhetherContentIsIteratedAsParts) {
  auto read = [](const std::string &name) {
    std::ifstream in(kFixtures / "chat-templates" / (name + ".jinja"), std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    auto t = Template::parse(text.str());
    EXPECT_TRUE(t.isOk()) << name << ": " << t.message();
    return t.isOk() && t->iteratesOverAttribute("content");
  };
  for (const char *name : {"mistralai-Ministral-3-14B-Reasoning-2512", "google-gemma-4-31B-it",
                           "MiniMax-M1", "moonshotai-Kimi-K2", "ibm-granite-granite-4.0"})
    EXPECT_TRUE(read(name)) << name;
  for (const char *name : {"meta-llama-Llama-3.1-8B-Instruct", "Qwen-Qwen2.5-7B-Instruct",
                           "microsoft-Phi-3.5-mini-instruct"})
    EXPECT_FALSE(read(name)) << name;
  auto simple = [](const char *source) {
    auto t = Template::parse(source);
    return t.isOk() && t->iteratesOverAttribute("content");
  };
  EXPECT_TRUE(simple("{% set c = m['content'] %}{% for p in c %}{% endfor %}"));
  EXPECT_TRUE(simple("{% if x %}{% for p in m.content|selectattr('type') %}{% endfor %}{% endif %}"));
  EXPECT_FALSE(simple("{{ m.content }}{% for p in m.parts %}{% endfor %}"));
}

} // namespace
} // namespace llmir::jinja

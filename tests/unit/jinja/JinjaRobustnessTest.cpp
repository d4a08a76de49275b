// The engine on hostile input: every parse or render ends with a value or
// an error, never a crash, a hang or unbounded memory. Mutated real
// templates (deterministic), deep nesting, runaway recursion, loops and
// output growth.
#include "llmir/jinja/Template.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <cstdlib>
#include <random>
#include <sstream>

namespace llmir::jinja {
namespace {

namespace fs = std::filesystem;

RenderInputs smallInputs() {
  RenderInputs inputs;
  Dict user;
  user.set("role", Value::string("user"));
  user.set("content", Value::string("Hi"));
  inputs.variables = {{"messages", Value::list({Value::dict(user)})},
                      {"add_generation_prompt", Value::boolean(true)},
                      {"bos_token", Value::string("<s>")},
                      {"eos_token", Value::string("</s>")}};
  inputs.now = 0;
  inputs.limits.maxSteps = 200'000;
  inputs.limits.maxOutputBytes = 1 << 20;
  return inputs;
}

std::string renderError(const std::string &source, RenderInputs inputs = smallInputs()) {
  auto parsed = Template::parse(source);
  if (!parsed)
    return "parse: " + parsed.message();
  auto text = parsed->render(inputs);
  return text ? std::string() : text.message();
}

TEST(JinjaRobustness, DeepNestingIsAParseErrorNotAStackOverflow) {
  EXPECT_NE(renderError("{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}"), "");
  EXPECT_NE(renderError("{{ " + std::string(100000, '[') + " }}"), "");
  std::string ifs;
  for (int i = 0; i < 20000; ++i)
    ifs += "{% if true %}";
  EXPECT_NE(renderError(ifs), "");
  EXPECT_NE(renderError("{{ " + std::string(50000, '-') + "1 }}"), "");
  EXPECT_NE(renderError("{{ x" + std::string(50000, '|').substr(0, 0) + std::string(30000, '.') + " }}"), "");
  std::string nots = "{{ ";
  for (int i = 0; i < 50000; ++i)
    nots += "not ";
  EXPECT_NE(renderError(nots + "1 }}"), "");
}

TEST(JinjaRobustness, RunawayWorkIsStoppedByTheLimits) {
  EXPECT_NE(renderError("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}").find("recursion"), std::string::npos);
  EXPECT_NE(renderError("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
                .find("too much work"),
            std::string::npos);
  EXPECT_NE(renderError("{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}")
                .find("larger than"),
            std::string::npos);
  EXPECT_NE(renderError("{{ 'a' * 100000000000 }}").find("larger than"), std::string::npos);
  EXPECT_NE(renderError("{{ range(1000000000)|list }}"), "");
  EXPECT_NE(renderError("{% set ns = namespace(x=1) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}{% endfor %}")
                .find("nests"),
            std::string::npos);
  EXPECT_NE(renderError("{{ 2 ** 100 }}").find("overflow"), std::string::npos);
  EXPECT_NE(renderError("{{ 9223372036854775807 + 1 }}").find("overflow"), std::string::npos);
  EXPECT_EQ(renderError("{% set ns = namespace() %}{% set ns.me = ns %}"), "a namespace cannot hold itself");
}

/// LLMIR_JINJA_FUZZ_ROUNDS raises the count for a longer local run (e.g.
/// under AddressSanitizer).
int rounds() {
  const char *env = std::getenv("LLMIR_JINJA_FUZZ_ROUNDS");
  return env ? std::atoi(env) : 1500;
}

TEST(JinjaRobustness, MutatedRealTemplatesNeverCrash) {
  const fs::path dir = fs::path(LLMIR_SOURCE_DIR) / "tests" / "fixtures" / "chat-templates";
  std::vector<std::string> sources;
  for (const auto &entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".jinja")
      continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    sources.push_back(text.str());
  }
  ASSERT_FALSE(sources.empty());
  std::sort(sources.begin(), sources.end());
  const char *const fragments[] = {"{%", "%}", "{{", "}}", "{#", "#}", "(", ")", "[", "]", "{", "}",
                                   "|", ".", ",", "'", "\"", "-", "endif", "endfor", "macro", "caller()",
                                   " if ", " else ", "loop.", "ns.", "\\", "\xff", "\xc3", "%", "*",
                                   "**", "~", " is ", " not ", " in ", "0", "-1", ":", "::-1"};
  std::mt19937 rng(1234);
  size_t parsed = 0, rendered = 0;
  for (int round = 0; round < rounds(); ++round) {
    std::string s = sources[rng() % sources.size()];
    int edits = 1 + int(rng() % 4);
    for (int e = 0; e < edits && !s.empty(); ++e) {
      size_t at = rng() % s.size();
      switch (rng() % 4) {
      case 0: s.erase(at, 1 + rng() % 40); break;
      case 1: s.insert(at, fragments[rng() % std::size(fragments)]); break;
      case 2: {
        size_t from = rng() % s.size();
        s.insert(at, s.substr(from, 1 + rng() % 80));
        break;
      }
      case 3: s[at] = char(rng() % 256); break;
      }
    }
    auto t = Template::parse(s);
    if (!t)
      continue;
    ++parsed;
    if (t->render(smallInputs()))
      ++rendered;
  }
  // Most mutations leave a parseable template; what matters is no crash.
  EXPECT_GT(parsed, 100u);
  EXPECT_GT(rendered, 10u);
}

} // namespace
} // namespace llmir::jinja

// The differential test of chat templates: every template in
// tests/fixtures/chat-templates (the 50 real templates of ../shared, copied)
// x every conversation of conversations.json, rendered by ChatTemplate (the
// scheduler's code path) and compared byte for byte with the renders of
// Jinja2 as transformers configures it (goldens/, written by
// scripts/gen-chat-goldens.py from ../shared/tools/chat_reference.py). Where
// the oracle rejects a conversation, ChatTemplate must reject it too, and a
// raise_exception must carry the template's own message.
#include "llmir/serving/ChatTemplate.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace llmir::serving {
namespace {

namespace fs = std::filesystem;

const fs::path kDir = fs::path(LLMIR_SOURCE_DIR) / "tests" / "fixtures" / "chat-templates";

std::string readFile(const fs::path &path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<std::string> templateNames() {
  std::vector<std::string> names;
  for (const auto &entry : fs::directory_iterator(kDir))
    if (entry.path().extension() == ".jinja")
      names.push_back(entry.path().stem().string());
  std::sort(names.begin(), names.end());
  return names;
}

struct Conversation {
  std::string name;
  boost::json::array messages;
  ChatTemplateInputs inputs;
};

std::vector<Conversation> conversations() {
  boost::json::value spec = boost::json::parse(readFile(kDir / "conversations.json"));
  std::time_t now = spec.at("now").to_number<std::time_t>();
  std::vector<Conversation> out;
  for (const auto &c : spec.at("conversations").as_array()) {
    const auto &o = c.as_object();
    Conversation conv;
    conv.name = std::string(o.at("name").as_string());
    conv.messages = o.at("messages").as_array();
    conv.inputs.addGenerationPrompt =
        o.contains("add_generation_prompt") ? o.at("add_generation_prompt").as_bool() : true;
    conv.inputs.bosToken = "<s>";
    conv.inputs.eosToken = "</s>";
    if (o.contains("extra"))
      conv.inputs.extra = o.at("extra").as_object();
    conv.inputs.now = now;
    out.push_back(std::move(conv));
  }
  return out;
}

/// The first difference, with context, for a readable failure.
std::string firstDifference(const std::string &want, const std::string &got) {
  size_t i = 0;
  while (i < want.size() && i < got.size() && want[i] == got[i])
    ++i;
  size_t from = i > 60 ? i - 60 : 0;
  return "at byte " + std::to_string(i) + "\n  want: " +
         boost::json::serialize(boost::json::string(want.substr(from, 140))) + "\n  got:  " +
         boost::json::serialize(boost::json::string(got.substr(from, 140)));
}

class ChatTemplateDifferential : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatTemplateDifferential, RendersWhatTransformersRenders) {
  const std::string name = GetParam();
  auto parsed = ChatTemplate::parse(readFile(kDir / (name + ".jinja")));
  boost::json::array goldens =
      boost::json::parse(readFile(kDir / "goldens" / (name + ".json"))).as_array();
  std::vector<Conversation> convs = conversations();
  ASSERT_EQ(goldens.size(), convs.size()) << "goldens out of date: run scripts/gen-chat-goldens.py";
  for (size_t i = 0; i < convs.size(); ++i) {
    const auto &golden = goldens[i].as_object();
    SCOPED_TRACE("conversation " + std::to_string(i) + ": " + convs[i].name);
    if (golden.contains("error") &&
        golden.at("error").as_string().starts_with("compile:")) {
      EXPECT_FALSE(parsed.isOk()) << "the oracle does not compile it: " << golden.at("error");
      continue;
    }
    ASSERT_TRUE(parsed.isOk()) << parsed.message();
    ChatTemplateError error;
    auto text = parsed->render(convs[i].messages, convs[i].inputs, &error);
    if (golden.contains("error")) {
      EXPECT_FALSE(text.isOk()) << "the oracle rejects it (" << golden.at("error")
                                << ") but it rendered:\n"
                                << *text;
      if (!text.isOk() && error.raised)
        EXPECT_EQ(std::string(golden.at("error").as_string()), error.message.substr(0, 200));
      continue;
    }
    ASSERT_TRUE(text.isOk()) << "the oracle renders it, but: " << text.message();
    const std::string want(golden.at("text").as_string());
    EXPECT_EQ(want, *text) << firstDifference(want, *text);
  }
}

INSTANTIATE_TEST_SUITE_P(SharedTemplates, ChatTemplateDifferential,
                         ::testing::ValuesIn(templateNames()),
                         [](const auto &info) {
                           std::string n = info.param;
                           for (char &c : n)
                             if (!std::isalnum(static_cast<unsigned char>(c)))
                               c = '_';
                           return n;
                         });

TEST(ChatTemplateFixtures, AllFiftySharedTemplatesAreHere) {
  EXPECT_EQ(templateNames().size(), 50u);
}

} // namespace
} // namespace llmir::serving

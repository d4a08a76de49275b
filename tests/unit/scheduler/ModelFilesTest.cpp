// What llmir-scheduler reads beside its settings (scheduler/ModelFiles.h):
// the chat template in each place transformers keeps it, the special
// tokens, and the API keys file, with errors that name the file.
#include "llmir/scheduler/ModelFiles.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace llmir::scheduler {
namespace {

namespace fs = std::filesystem;

class ModelFilesTest : public ::testing::Test {
protected:
  void SetUp() override {
    dir =
        fs::temp_directory_path() /
        ("llmir_model_files_" +
         std::string(
             ::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  void TearDown() override { fs::remove_all(dir); }

  void write(const std::string &name, const std::string &text) const {
    std::ofstream(dir / name, std::ios::binary) << text;
  }

  // The template's output for one user turn.
  static std::string render(const serving::ChatTemplate &chat,
                            const serving::ChatTemplateInputs &inputs) {
    boost::json::array messages{
        boost::json::object{{"role", "user"}, {"content", "hi"}}};
    auto text = chat.render(messages, inputs);
    EXPECT_TRUE(text.isOk()) << text.message();
    return text ? *text : std::string();
  }

  fs::path dir;
};

TEST_F(ModelFilesTest, AStringTemplateWithItsSpecialTokens) {
  write("tokenizer_config.json", R"({
    "bos_token": "<s>",
    "eos_token": {"content": "</s>", "lstrip": false},
    "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.content }}]{% endfor %}{{ eos_token }}"
  })");
  auto format = loadChatFormat(dir.string());
  ASSERT_TRUE(format.isOk()) << format.message();
  ASSERT_TRUE(format->chatTemplate);
  EXPECT_FALSE(format->toolUseTemplate);
  EXPECT_EQ(format->inputs.bosToken, "<s>");
  EXPECT_EQ(format->inputs.eosToken, "</s>");
  EXPECT_TRUE(format->inputs.addGenerationPrompt);
  EXPECT_EQ(render(*format->chatTemplate, format->inputs), "<s>[hi]</s>");
}

TEST_F(ModelFilesTest, NamedTemplatesGiveTheDefaultAndTheToolUseOne) {
  write("tokenizer_config.json", R"({"chat_template": [
    {"name": "tool_use", "template": "tools:{{ messages[0].content }}"},
    {"name": "rag", "template": "ignored"},
    {"name": "default", "template": "plain:{{ messages[0].content }}"}]})");
  auto format = loadChatFormat(dir.string());
  ASSERT_TRUE(format.isOk()) << format.message();
  ASSERT_TRUE(format->chatTemplate && format->toolUseTemplate);
  EXPECT_EQ(render(*format->chatTemplate, format->inputs), "plain:hi");
  EXPECT_EQ(render(*format->toolUseTemplate, format->inputs), "tools:hi");

  write("tokenizer_config.json",
        R"({"chat_template": [{"name": "tool_use", "template": "t"}]})");
  auto noDefault = loadChatFormat(dir.string());
  ASSERT_FALSE(noDefault.isOk());
  EXPECT_NE(noDefault.message().find("no \"default\""), std::string::npos)
      << noDefault.message();

  write("tokenizer_config.json", R"({"chat_template": [{"name": "default"}]})");
  auto noText = loadChatFormat(dir.string());
  ASSERT_FALSE(noText.isOk());
  EXPECT_NE(noText.message().find("tokenizer_config.json"), std::string::npos)
      << noText.message();
}

TEST_F(ModelFilesTest, TheTemplateFileBesideTheConfigAndNoneAtAll) {
  write("tokenizer_config.json", R"({"eos_token": "<|end|>"})");
  auto none = loadChatFormat(dir.string());
  ASSERT_TRUE(none.isOk()) << none.message();
  EXPECT_FALSE(none->chatTemplate)
      << "no template: the documented default format";
  EXPECT_EQ(none->inputs.eosToken, "<|end|>");

  write("chat_template.jinja", "file:{{ messages[0].content }}{{ eos_token }}");
  auto file = loadChatFormat(dir.string());
  ASSERT_TRUE(file.isOk()) << file.message();
  ASSERT_TRUE(file->chatTemplate);
  EXPECT_EQ(render(*file->chatTemplate, file->inputs), "file:hi<|end|>");

  fs::remove(dir / "tokenizer_config.json");
  auto withoutConfig = loadChatFormat(dir.string());
  ASSERT_TRUE(withoutConfig.isOk()) << withoutConfig.message();
  EXPECT_TRUE(withoutConfig->chatTemplate);
}

TEST_F(ModelFilesTest, ABrokenConfigOrTemplateStopsTheStartNamingTheFile) {
  write("tokenizer_config.json", "{not json");
  auto broken = loadChatFormat(dir.string());
  ASSERT_FALSE(broken.isOk());
  EXPECT_NE(broken.message().find("not a JSON object"), std::string::npos)
      << broken.message();

  write("tokenizer_config.json",
        R"({"chat_template": "{% for m in messages %}"})");
  auto unclosed = loadChatFormat(dir.string());
  ASSERT_FALSE(unclosed.isOk());
  EXPECT_NE(unclosed.message().find("tokenizer_config.json"), std::string::npos)
      << unclosed.message();

  write("tokenizer_config.json", R"({"chat_template": 7})");
  auto number = loadChatFormat(dir.string());
  ASSERT_FALSE(number.isOk());
  EXPECT_NE(number.message().find("must be a string or a list"),
            std::string::npos)
      << number.message();
}

TEST_F(ModelFilesTest, TheApiKeysFile) {
  write("keys", "# team keys\nsk-a 4\n\nsk-b\n");
  auto keys = loadApiKeys((dir / "keys").string());
  ASSERT_TRUE(keys.isOk()) << keys.message();
  ASSERT_EQ(keys->size(), 2u);
  EXPECT_EQ((*keys)[0].key, "sk-a");
  EXPECT_EQ((*keys)[0].maxConcurrentRequests, 4u);
  EXPECT_EQ((*keys)[1].key, "sk-b");
  EXPECT_FALSE((*keys)[1].maxConcurrentRequests);

  auto missing = loadApiKeys((dir / "nope").string());
  ASSERT_FALSE(missing.isOk());
  EXPECT_NE(missing.message().find("not a readable regular file"),
            std::string::npos)
      << missing.message();
  auto directory = loadApiKeys(dir.string());
  EXPECT_FALSE(directory.isOk());

  write("big", std::string((1 << 20) + 1, 'k'));
  auto big = loadApiKeys((dir / "big").string());
  ASSERT_FALSE(big.isOk());
  EXPECT_NE(big.message().find("larger than the limit"), std::string::npos)
      << big.message();

  write("bad", "sk-secret-key not-a-number\n");
  auto bad = loadApiKeys((dir / "bad").string());
  ASSERT_FALSE(bad.isOk());
  EXPECT_NE(bad.message().find("'api-keys-file'"), std::string::npos)
      << bad.message();
  EXPECT_EQ(bad.message().find("sk-secret-key"), std::string::npos)
      << "an error never shows a key: " << bad.message();
}

} // namespace
} // namespace llmir::scheduler

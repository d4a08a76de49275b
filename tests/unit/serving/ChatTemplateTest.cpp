// The chat-template interpreter on the verbatim chat_template strings of
// public Hugging Face tokenizer_config.json files (JSON-decoded: "\n" is a
// newline), against the prompts their model cards document.
#include "llmir/serving/ChatTemplate.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

namespace llmir::serving {
namespace {

const std::vector<ChatTurn> kConversation = {
    {"user", "Hello"}, {"assistant", "Hi there!"}, {"user", "How are you?"}};

std::string render(std::string_view source, const std::vector<ChatTurn> &messages,
                   const ChatTemplateInputs &inputs) {
  auto parsed = ChatTemplate::parse(source);
  EXPECT_TRUE(parsed.isOk()) << parsed.message();
  if (!parsed.isOk())
    return {};
  auto text = parsed->render(messages, inputs);
  EXPECT_TRUE(text.isOk()) << text.message();
  return text.isOk() ? *text : std::string();
}

std::string renderError(std::string_view source, const std::vector<ChatTurn> &messages) {
  auto parsed = ChatTemplate::parse(source);
  EXPECT_TRUE(parsed.isOk()) << parsed.message();
  if (!parsed.isOk())
    return {};
  auto text = parsed->render(messages, {});
  EXPECT_FALSE(text.isOk()) << "rendered: " << *text;
  return text.isOk() ? std::string() : text.message();
}

std::string parseError(std::string_view source) {
  auto parsed = ChatTemplate::parse(source);
  EXPECT_FALSE(parsed.isOk());
  return parsed.isOk() ? std::string() : parsed.message();
}

// Qwen/Qwen2-7B-Instruct (ChatML with a default system turn).
constexpr std::string_view kQwen2 =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

// meta-llama/Meta-Llama-3-8B-Instruct.
constexpr std::string_view kLlama3 =
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ "
    "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}";

// mistralai/Mistral-7B-Instruct-v0.2.
constexpr std::string_view kMistral =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
    "roles are supported!') }}{% endif %}{% endfor %}";

// HuggingFaceH4/zephyr-7b-beta (relies on trim_blocks for its newlines).
constexpr std::string_view kZephyr =
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}";

TEST(ChatTemplate, Qwen2ChatMlAddsTheDefaultSystemTurn) {
  EXPECT_EQ(render(kQwen2, kConversation, {}),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHello<|im_end|>\n"
            "<|im_start|>assistant\nHi there!<|im_end|>\n"
            "<|im_start|>user\nHow are you?<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(render(kQwen2, {{"system", "Be terse."}, {"user", "Hi"}},
                   {.addGenerationPrompt = false}),
            "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}

TEST(ChatTemplate, Llama3TrimsContentAndStartsWithBos) {
  std::vector<ChatTurn> messages = kConversation;
  messages[0].content = "  Hello\n";
  EXPECT_EQ(render(kLlama3, messages, {.bosToken = "<|begin_of_text|>"}),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHi there!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplate, MistralInstructAndItsRoleChecks) {
  EXPECT_EQ(render(kMistral, kConversation, {.bosToken = "<s>", .eosToken = "</s>"}),
            "<s>[INST] Hello [/INST]Hi there!</s>[INST] How are you? [/INST]");
  EXPECT_EQ(renderError(kMistral, {{"user", "a"}, {"user", "b"}}),
            "Conversation roles must alternate user/assistant/user/assistant/...");
  EXPECT_EQ(renderError(kMistral, {{"system", "a"}}),
            "Conversation roles must alternate user/assistant/user/assistant/...");
}

TEST(ChatTemplate, ZephyrWithTrimBlocks) {
  std::vector<ChatTurn> messages = {{"system", "You are a pirate."}};
  messages.insert(messages.end(), kConversation.begin(), kConversation.end());
  EXPECT_EQ(render(kZephyr, messages, {.eosToken = "</s>"}),
            "<|system|>\nYou are a pirate.</s>\n<|user|>\nHello</s>\n"
            "<|assistant|>\nHi there!</s>\n<|user|>\nHow are you?</s>\n<|assistant|>\n");
}

TEST(ChatTemplate, ExpressionsFiltersAndTests) {
  const std::vector<ChatTurn> messages = {{"system", "S"}, {"user", "\"q\"\n"}};
  EXPECT_EQ(render("{{ messages|length }} {{ messages[1:]|length }} {{ messages[-1].role|upper }}"
                   " {{ 'AbC'|lower }} {{ messages[1]['content']|tojson }} {{ 1 + 2 * 3 }}"
                   " {{ 'x' ~ 7 }} {{ 'ys' in 'system' }} {{ 3 > 2 and not (1 < 0) }}"
                   " {{ foo is defined }} {{ foo is not defined }} {{ none is none }}"
                   " {{ 'user' in ['a', 'user'] }} {{ -7 % 3 }}",
                   messages, {}),
            "2 1 USER abc \"\\\"q\\\"\\n\" 7 x7 True True False True True True 2");
}

TEST(ChatTemplate, ForLoopVariablesAndScopedSet) {
  EXPECT_EQ(render("{% set n = 'out' %}{% for m in messages %}{% set n = m.role %}"
                   "{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ n }};"
                   "{% endfor %}{{ n }}",
                   {{"a", ""}, {"b", ""}}, {}),
            "10TrueFalsea;21FalseTrueb;out");
}

TEST(ChatTemplate, WhitespaceControlAndComments) {
  EXPECT_EQ(render("a  {%- if true -%}  \n b {# note #}{{- ' c ' -}}  d\n  {%- endif %}\n",
                   {}, {}),
            "ab  c d"); // "-" strips only the text right beside its tag, not across the comment
  // lstrip_blocks drops a block tag's indentation on its own line.
  EXPECT_EQ(render("x\n    {% if true %}\ny\n    {% endif %}\nz", {}, {}), "x\ny\nz");
}

TEST(ChatTemplate, RenderErrorsSayWhatWasWrong) {
  EXPECT_EQ(renderError("{{ raise_exception('no ' ~ messages|length) }}", {}), "no 0");
  EXPECT_EQ(renderError("{{ 'a' + 1 }}", {}), "can only concatenate str (not \"int\") to str");
  EXPECT_EQ(renderError("{{ nothing.role }}", {}), "'nothing' is undefined");
  EXPECT_EQ(renderError("{{ messages[0].role }}", {}), "list object has no element 0");
  EXPECT_EQ(renderError("{{ [1].append(2) }}", {}),
            "access to attribute 'append' of 'list' object is unsafe.");
}

TEST(ChatTemplate, RaiseExceptionIsReportedAsTheTemplatesOwnError) {
  auto parsed = ChatTemplate::parse("{{ raise_exception('System role not supported') }}");
  ASSERT_TRUE(parsed.isOk()) << parsed.message();
  ChatTemplateError error;
  EXPECT_FALSE(parsed->render(boost::json::array{}, {}, &error).isOk());
  EXPECT_TRUE(error.raised);
  EXPECT_EQ(error.message, "System role not supported");
}

TEST(ChatTemplate, SyntaxErrorsAreParseErrorsWithTheirLine) {
  EXPECT_EQ(parseError("ok\n{% macro m( %}{% endmacro %}"),
            "chat template, line 2: unexpected '}'");
  EXPECT_EQ(parseError("{{ x|no_such_filter }}"), "chat template, line 1: no filter named 'no_such_filter'");
  EXPECT_EQ(parseError("{% for m in messages %}x"),
            "chat template, line 1: unexpected end of template, expected one of: 'else', 'endfor'");
  EXPECT_EQ(parseError("{{ 'open"), "chat template, line 1: unterminated string");
  EXPECT_EQ(parseError("{% if x %}{% endfor %}"), "chat template, line 1: encountered unknown tag 'endfor'");
  EXPECT_EQ(parseError("{% do x %}"), "chat template, line 1: encountered unknown tag 'do'");
}

} // namespace
} // namespace llmir::serving

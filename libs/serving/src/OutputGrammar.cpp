// The grammar is a tree of nodes; a matcher is a stack of frames (node,
// stage, counters). A byte is offered to the top frame, which consumes it,
// finishes with it, rejects it, or ends without it (the parent then gets
// the byte: how numbers and literal prefixes end).
#include "llmir/serving/OutputGrammar.h"

#include "llmir/model/Tokenizer.h"

#include <boost/json.hpp>

#include <climits>
#include <map>
#include <mutex>

namespace llmir::serving {

struct GrammarNode {
  enum class Kind { Literals, String, Integer, Number, Object, Array, AnyValue, AnyObject, AnyArray, Sequence };
  Kind kind = Kind::AnyValue;
  std::vector<std::string> literals;                 // Literals (at most 64)
  int32_t minLength = 0, maxLength = INT32_MAX;      // String, in characters
  std::vector<std::string> prefixes;                 // Object: `{"k1":`, `,"k2":`...
  std::vector<const GrammarNode *> values;           // Object: property values
  const GrammarNode *items = nullptr;                // Array
  int32_t minItems = 0, maxItems = INT32_MAX;        // Array
  std::vector<const GrammarNode *> parts;            // Sequence: one after the other
};

namespace {

constexpr size_t kMaxDepth = 32;     // nesting of any-JSON values
constexpr int32_t kMaxDigits = 15;   // integer and fraction digits
constexpr int32_t kMaxExponent = 3;  // exponent digits

enum class Outcome { Consumed, Done, Reject, End, Push };

} // namespace

struct GrammarBuilder {
  OutputGrammar &g;
  const GrammarNode *add(GrammarNode node) {
    g.pool_.push_back(std::make_unique<GrammarNode>(std::move(node)));
    return g.pool_.back().get();
  }
  // Shared nodes of free-form JSON.
  const GrammarNode *anyValue = nullptr, *anyObject = nullptr, *anyArray = nullptr,
                    *anyString = nullptr, *number = nullptr, *keywords = nullptr;
  void addAny() {
    anyValue = add({.kind = GrammarNode::Kind::AnyValue});
    anyObject = add({.kind = GrammarNode::Kind::AnyObject});
    anyArray = add({.kind = GrammarNode::Kind::AnyArray});
    anyString = add({.kind = GrammarNode::Kind::String});
    number = add({.kind = GrammarNode::Kind::Number});
    keywords = add({.kind = GrammarNode::Kind::Literals, .literals = {"true", "false", "null"}});
  }

  Result<const GrammarNode *> schema(const boost::json::value &s, int depth) {
    if (depth > 16)
      return Status::error("the schema nests more than 16 levels");
    if (s.is_bool() && s.get_bool())
      return anyValue;
    const boost::json::object *o = s.if_object();
    if (!o)
      return Status::error("a schema must be an object");
    static const char *const allowed[] = {"type", "properties", "required", "additionalProperties",
                                          "items", "minItems", "maxItems", "minLength", "maxLength",
                                          "enum", "const", "title", "description", "default",
                                          "examples", "$schema", "strict"};
    for (const auto &[key, value] : *o) {
      bool known = false;
      for (const char *a : allowed)
        known |= key == a;
      if (!known)
        return Status::error("the schema keyword '" + std::string(key) +
                             "' is not supported by structured output yet");
    }
    auto intOf = [&](const char *key, int32_t fallback) -> int32_t {
      const boost::json::value *v = o->if_contains(key);
      return v && v->is_number() ? static_cast<int32_t>(std::clamp<double>(v->to_number<double>(), 0, INT32_MAX))
                                 : fallback;
    };
    if (const boost::json::value *c = o->if_contains("const"))
      return add({.kind = GrammarNode::Kind::Literals, .literals = {boost::json::serialize(*c)}});
    if (const boost::json::value *e = o->if_contains("enum")) {
      if (!e->is_array() || e->get_array().empty() || e->get_array().size() > 64)
        return Status::error("'enum' must be a list of 1 to 64 values");
      GrammarNode node{.kind = GrammarNode::Kind::Literals};
      for (const auto &v : e->get_array())
        node.literals.push_back(boost::json::serialize(v));
      return add(std::move(node));
    }
    const boost::json::value *type = o->if_contains("type");
    if (!type)
      return anyValue;
    if (!type->is_string())
      return Status::error("'type' must be one type name (type lists are not supported yet)");
    const std::string t(type->get_string());
    if (t == "string")
      return add({.kind = GrammarNode::Kind::String, .minLength = intOf("minLength", 0),
                  .maxLength = intOf("maxLength", INT32_MAX)});
    if (t == "integer")
      return add({.kind = GrammarNode::Kind::Integer});
    if (t == "number")
      return number;
    if (t == "boolean")
      return add({.kind = GrammarNode::Kind::Literals, .literals = {"true", "false"}});
    if (t == "null")
      return add({.kind = GrammarNode::Kind::Literals, .literals = {"null"}});
    if (t == "array") {
      const GrammarNode *items = anyValue;
      if (const boost::json::value *i = o->if_contains("items")) {
        auto parsed = schema(*i, depth + 1);
        if (!parsed)
          return parsed.status();
        items = *parsed;
      }
      return add({.kind = GrammarNode::Kind::Array, .items = items,
                  .minItems = intOf("minItems", 0), .maxItems = intOf("maxItems", INT32_MAX)});
    }
    if (t == "object") {
      const boost::json::value *props = o->if_contains("properties");
      if (!props || !props->is_object() || props->get_object().empty())
        return anyObject;
      GrammarNode node{.kind = GrammarNode::Kind::Object};
      for (const auto &[key, value] : props->get_object()) {
        auto parsed = schema(value, depth + 1);
        if (!parsed)
          return parsed.status();
        node.prefixes.push_back((node.prefixes.empty() ? "{" : ",") +
                                boost::json::serialize(boost::json::string(key)) + ":");
        node.values.push_back(*parsed);
      }
      return add(std::move(node));
    }
    return Status::error("unknown schema type '" + t + "'");
  }
};

OutputGrammar::OutputGrammar(std::unique_ptr<GrammarNode> root) : root_(std::move(root)) {}
OutputGrammar::~OutputGrammar() = default;

std::shared_ptr<const OutputGrammar> OutputGrammar::jsonObject() {
  auto g = std::shared_ptr<OutputGrammar>(new OutputGrammar(nullptr));
  GrammarBuilder b{*g};
  b.addAny();
  g->root_ = std::make_unique<GrammarNode>(*b.anyObject);
  return g;
}

Result<std::shared_ptr<const OutputGrammar>> OutputGrammar::jsonSchema(const boost::json::value &schema) {
  auto g = std::shared_ptr<OutputGrammar>(new OutputGrammar(nullptr));
  GrammarBuilder b{*g};
  b.addAny();
  auto root = b.schema(schema, 0);
  if (!root)
    return root.status();
  g->root_ = std::make_unique<GrammarNode>(**root);
  return std::shared_ptr<const OutputGrammar>(g);
}

Result<std::shared_ptr<const OutputGrammar>> OutputGrammar::toolCall(ToolCallFormat format,
                                                                     const boost::json::array &tools) {
  auto g = std::shared_ptr<OutputGrammar>(new OutputGrammar(nullptr));
  GrammarBuilder b{*g};
  b.addAny();
  GrammarNode names{.kind = GrammarNode::Kind::Literals};
  const boost::json::value *parameters = nullptr;
  for (const auto &tool : tools) {
    const boost::json::object *t = tool.if_object();
    const boost::json::value *function = t ? t->if_contains("function") : nullptr;
    const boost::json::value *name =
        function && function->is_object() ? function->get_object().if_contains("name") : nullptr;
    if (!name || !name->is_string())
      return Status::error("each tool needs a function with a string name");
    names.literals.push_back(boost::json::serialize(*name));
    parameters = function->get_object().if_contains("parameters");
  }
  if (names.literals.empty() || names.literals.size() > 64)
    return Status::error("tool_choice needs 1 to 64 tools");
  const GrammarNode *arguments = b.anyObject;
  if (names.literals.size() == 1 && parameters && !parameters->is_null()) {
    auto compiled = b.schema(*parameters, 0);
    if (!compiled)
      return Status::error("the tool's parameters: " + compiled.message());
    arguments = *compiled;
  }
  const char *argumentsKey = format == ToolCallFormat::Llama3Json ? "parameters" : "arguments";
  GrammarNode call{.kind = GrammarNode::Kind::Object};
  call.prefixes = {"{\"name\":", std::string(",\"") + argumentsKey + "\":"};
  call.values = {b.add(std::move(names)), arguments};
  const GrammarNode *object = b.add(std::move(call));
  auto literal = [&](std::string text) {
    return b.add({.kind = GrammarNode::Kind::Literals, .literals = {std::move(text)}});
  };
  GrammarNode root{.kind = GrammarNode::Kind::Sequence};
  switch (format) {
  case ToolCallFormat::Hermes: root.parts = {literal("<tool_call>\n"), object, literal("\n</tool_call>")}; break;
  case ToolCallFormat::Llama3Json: root.parts = {object}; break;
  case ToolCallFormat::Mistral: root.parts = {literal("[TOOL_CALLS]["), object, literal("]")}; break;
  }
  g->root_ = std::make_unique<GrammarNode>(std::move(root));
  return std::shared_ptr<const OutputGrammar>(g);
}

Result<std::shared_ptr<const OutputGrammar>> OutputGrammar::choice(std::vector<std::string> choices) {
  if (choices.empty() || choices.size() > 64)
    return Status::error("guided_choice needs 1 to 64 choices");
  for (const auto &c : choices)
    if (c.empty())
      return Status::error("guided_choice choices must not be empty");
  auto node = std::make_unique<GrammarNode>();
  node->kind = GrammarNode::Kind::Literals;
  node->literals = std::move(choices);
  return std::shared_ptr<const OutputGrammar>(new OutputGrammar(std::move(node)));
}

namespace {

uint64_t allCandidates(const GrammarNode &n) {
  return n.literals.size() >= 64 ? ~uint64_t{0} : (uint64_t{1} << n.literals.size()) - 1;
}

bool canEnd(const GrammarMatcher::Frame &f) {
  const GrammarNode &n = *f.node;
  switch (n.kind) {
  case GrammarNode::Kind::Literals:
    for (size_t i = 0; i < n.literals.size(); ++i)
      if ((f.candidates >> i & 1) && n.literals[i].size() == size_t(f.count))
        return true;
    return false;
  case GrammarNode::Kind::Integer:
  case GrammarNode::Kind::Number: return f.stage == 2 || f.stage == 3 || f.stage == 5 || f.stage == 8;
  case GrammarNode::Kind::Sequence: return size_t(f.stage) >= n.parts.size();
  default: return false;
  }
}

bool isDigit(uint8_t b) { return b >= '0' && b <= '9'; }
bool isHex(uint8_t b) { return isDigit(b) || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F'); }

/// The top frame's response to `b`; `child` is set for Push.
Outcome consume(GrammarMatcher::Frame &f, uint8_t b, const GrammarNode *&child) {
  const GrammarNode &n = *f.node;
  switch (n.kind) {
  case GrammarNode::Kind::Literals: {
    uint64_t next = 0;
    bool longer = false;
    for (size_t i = 0; i < n.literals.size(); ++i)
      if ((f.candidates >> i & 1) && n.literals[i].size() > size_t(f.count) &&
          uint8_t(n.literals[i][size_t(f.count)]) == b) {
        next |= uint64_t{1} << i;
        longer |= n.literals[i].size() > size_t(f.count) + 1;
      }
    if (!next)
      return canEnd(f) ? Outcome::End : Outcome::Reject;
    f.candidates = next;
    ++f.count;
    return longer ? Outcome::Consumed : Outcome::Done;
  }
  case GrammarNode::Kind::String:
    switch (f.stage) {
    case 0: return b == '"' ? (f.stage = 1, Outcome::Consumed) : Outcome::Reject;
    case 1:
      if (b == '"')
        return f.count >= n.minLength ? Outcome::Done : Outcome::Reject;
      if (b == '\\')
        return f.count < n.maxLength ? (f.stage = 2, Outcome::Consumed) : Outcome::Reject;
      if (b < 0x20)
        return Outcome::Reject;
      if ((b & 0xC0) == 0x80)
        return Outcome::Consumed; // continues the current character
      if (f.count >= n.maxLength)
        return Outcome::Reject;
      ++f.count;
      return Outcome::Consumed;
    case 2:
      if (b == 'u')
        return f.stage = 10, Outcome::Consumed;
      if (b == '"' || b == '\\' || b == '/' || b == 'b' || b == 'f' || b == 'n' || b == 'r' || b == 't')
        return ++f.count, f.stage = 1, Outcome::Consumed;
      return Outcome::Reject;
    default: // 10..13: \uXXXX
      if (!isHex(b))
        return Outcome::Reject;
      if (++f.stage == 14) {
        f.stage = 1;
        ++f.count;
      }
      return Outcome::Consumed;
    }
  case GrammarNode::Kind::Integer:
  case GrammarNode::Kind::Number: {
    const bool real = n.kind == GrammarNode::Kind::Number;
    switch (f.stage) {
    case 0:
      if (b == '-')
        return f.stage = 1, Outcome::Consumed;
      [[fallthrough]];
    case 1:
      if (b == '0')
        return f.stage = 3, Outcome::Consumed;
      if (isDigit(b))
        return f.stage = 2, f.count = 1, Outcome::Consumed;
      return Outcome::Reject;
    case 2:
      if (isDigit(b))
        return f.count < kMaxDigits ? (++f.count, Outcome::Consumed) : Outcome::Reject;
      [[fallthrough]];
    case 3:
      if (real && b == '.')
        return f.stage = 4, Outcome::Consumed;
      if (real && (b == 'e' || b == 'E'))
        return f.stage = 6, Outcome::Consumed;
      return isDigit(b) ? Outcome::Reject : Outcome::End;
    case 4: return isDigit(b) ? (f.stage = 5, f.count = 1, Outcome::Consumed) : Outcome::Reject;
    case 5:
      if (isDigit(b))
        return f.count < kMaxDigits ? (++f.count, Outcome::Consumed) : Outcome::Reject;
      if (b == 'e' || b == 'E')
        return f.stage = 6, Outcome::Consumed;
      return Outcome::End;
    case 6:
      if (b == '+' || b == '-')
        return f.stage = 7, Outcome::Consumed;
      [[fallthrough]];
    case 7: return isDigit(b) ? (f.stage = 8, f.count = 1, Outcome::Consumed) : Outcome::Reject;
    default:
      if (isDigit(b))
        return f.count < kMaxExponent ? (++f.count, Outcome::Consumed) : Outcome::Reject;
      return Outcome::End;
    }
  }
  case GrammarNode::Kind::Object: {
    const size_t i = size_t(f.stage / 2);
    if (i >= n.prefixes.size())
      return b == '}' ? Outcome::Done : Outcome::Reject;
    if (f.stage % 2 == 1) { // the value of property i
      child = n.values[i];
      f.stage += 1;
      f.count = 0;
      return Outcome::Push;
    }
    const std::string &text = n.prefixes[i];
    if (uint8_t(text[size_t(f.count)]) != b)
      return Outcome::Reject;
    if (size_t(++f.count) == text.size()) {
      f.stage += 1;
      f.count = 0;
    }
    return Outcome::Consumed;
  }
  case GrammarNode::Kind::Array:
    switch (f.stage) {
    case 0: return b == '[' ? (f.stage = 1, Outcome::Consumed) : Outcome::Reject;
    case 1:
      if (b == ']')
        return n.minItems == 0 ? Outcome::Done : Outcome::Reject;
      if (n.maxItems == 0)
        return Outcome::Reject;
      child = n.items;
      f.stage = 2;
      f.count = 1;
      return Outcome::Push;
    case 2:
      if (b == ',')
        return f.count < n.maxItems ? (f.stage = 3, Outcome::Consumed) : Outcome::Reject;
      if (b == ']')
        return f.count >= n.minItems ? Outcome::Done : Outcome::Reject;
      return Outcome::Reject;
    default:
      child = n.items;
      f.stage = 2;
      ++f.count;
      return Outcome::Push;
    }
  case GrammarNode::Kind::Sequence:
    if (size_t(f.stage) >= n.parts.size())
      return Outcome::End;
    child = n.parts[size_t(f.stage)];
    ++f.stage;
    return Outcome::Push;
  default:
    return Outcome::Reject; // the any-JSON kinds are handled by the matcher
  }
}

} // namespace

GrammarMatcher::GrammarMatcher(std::shared_ptr<const OutputGrammar> grammar)
    : grammar_(std::move(grammar)) {
  Frame root{&grammar_->root(), 0, 0, 0};
  root.candidates = allCandidates(grammar_->root());
  stack_.push_back(root);
}

bool GrammarMatcher::step(uint8_t b) {
  // The any-JSON nodes, expanded here since they need the shared nodes.
  while (!stack_.empty()) {
    Frame &f = stack_.back();
    const GrammarNode &n = *f.node;
    if (n.kind == GrammarNode::Kind::AnyValue) {
      // Become the value the first byte starts.
      const GrammarNode *anyObject = nullptr;
      GrammarNode::Kind kind;
      if (b == '{')
        kind = GrammarNode::Kind::AnyObject;
      else if (b == '[')
        kind = GrammarNode::Kind::AnyArray;
      else if (b == '"')
        kind = GrammarNode::Kind::String;
      else if (b == '-' || isDigit(b))
        kind = GrammarNode::Kind::Number;
      else if (b == 't' || b == 'f' || b == 'n')
        kind = GrammarNode::Kind::Literals;
      else
        return false;
      (void)anyObject;
      if ((kind == GrammarNode::Kind::AnyObject || kind == GrammarNode::Kind::AnyArray) &&
          stack_.size() > kMaxDepth)
        return false;
      static const GrammarNode anyObj{.kind = GrammarNode::Kind::AnyObject};
      static const GrammarNode anyArr{.kind = GrammarNode::Kind::AnyArray};
      static const GrammarNode str{.kind = GrammarNode::Kind::String};
      static const GrammarNode num{.kind = GrammarNode::Kind::Number};
      static const GrammarNode kw{.kind = GrammarNode::Kind::Literals, .literals = {"true", "false", "null"}};
      f.node = kind == GrammarNode::Kind::AnyObject ? &anyObj
               : kind == GrammarNode::Kind::AnyArray ? &anyArr
               : kind == GrammarNode::Kind::String   ? &str
               : kind == GrammarNode::Kind::Number   ? &num
                                                     : &kw;
      f.stage = 0;
      f.count = 0;
      f.candidates = allCandidates(*f.node);
      continue;
    }
    if (n.kind == GrammarNode::Kind::AnyObject || n.kind == GrammarNode::Kind::AnyArray) {
      static const GrammarNode anyValue{.kind = GrammarNode::Kind::AnyValue};
      static const GrammarNode key{.kind = GrammarNode::Kind::String};
      const bool object = n.kind == GrammarNode::Kind::AnyObject;
      auto push = [&](const GrammarNode *child, int32_t nextStage) {
        f.stage = nextStage;
        stack_.push_back(Frame{child, 0, 0, allCandidates(*child)});
      };
      switch (f.stage) {
      case 0:
        if (b != (object ? '{' : '['))
          return false;
        f.stage = 1;
        return true;
      case 1:
        if (b == (object ? '}' : ']')) {
          stack_.pop_back();
          return true;
        }
        push(object ? &key : &anyValue, object ? 2 : 4);
        continue;
      case 2: // object: after a key
        if (b != ':')
          return false;
        f.stage = 3;
        return true;
      case 3:
        push(&anyValue, 4);
        continue;
      case 4: // after a value
        if (b == ',') {
          f.stage = 5;
          return true;
        }
        if (b == (object ? '}' : ']')) {
          stack_.pop_back();
          return true;
        }
        return false;
      default: // 5: after a comma
        push(object ? &key : &anyValue, object ? 2 : 4);
        continue;
      }
    }
    const GrammarNode *child = nullptr;
    switch (consume(f, b, child)) {
    case Outcome::Consumed: return true;
    case Outcome::Done:
      stack_.pop_back();
      // A sequence whose last part just ended is over too.
      while (!stack_.empty() && stack_.back().node->kind == GrammarNode::Kind::Sequence &&
             size_t(stack_.back().stage) >= stack_.back().node->parts.size())
        stack_.pop_back();
      return true;
    case Outcome::Reject: return false;
    case Outcome::End: stack_.pop_back(); continue;
    case Outcome::Push: stack_.push_back(Frame{child, 0, 0, allCandidates(*child)}); continue;
    }
  }
  return false;
}

bool GrammarMatcher::advance(std::string_view bytes) {
  std::vector<Frame> saved = stack_;
  for (char c : bytes)
    if (!step(static_cast<uint8_t>(c))) {
      stack_ = std::move(saved);
      return false;
    }
  return true;
}

bool GrammarMatcher::complete() const {
  return stack_.empty() || (stack_.size() == 1 && canEnd(stack_.back()));
}

bool GrammarMatcher::finished() const { return stack_.empty(); }

namespace {

/// Every token's bytes, once per tokenizer (special tokens: empty, never
/// allowed as text).
const std::vector<std::string> &tokenBytes(const model::Tokenizer &tokenizer, int32_t vocabSize) {
  static std::mutex mutex;
  static std::map<const model::Tokenizer *, std::vector<std::string>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto &bytes = cache[&tokenizer];
  if (bytes.size() != size_t(vocabSize)) {
    bytes.assign(size_t(vocabSize), std::string());
    for (int32_t id = 0; id < vocabSize; ++id) {
      if (tokenizer.isSpecial(id))
        continue;
      auto b = tokenizer.tokenBytes(id);
      if (b)
        bytes[size_t(id)] = std::move(*b);
    }
  }
  return bytes;
}

} // namespace

std::vector<int32_t> GrammarMatcher::allowedTokens(const model::Tokenizer &tokenizer,
                                                   int32_t vocabSize,
                                                   const std::vector<int32_t> &eosIds) const {
  const std::vector<std::string> &bytes = tokenBytes(tokenizer, vocabSize);
  std::vector<int32_t> allowed;
  if (!finished()) {
    GrammarMatcher probe(*this);
    for (int32_t id = 0; id < vocabSize; ++id) {
      const std::string &b = bytes[size_t(id)];
      if (b.empty())
        continue;
      probe.stack_ = stack_;
      bool ok = true;
      for (char c : b)
        if (!probe.step(static_cast<uint8_t>(c))) {
          ok = false;
          break;
        }
      if (ok)
        allowed.push_back(id);
    }
  }
  if (complete() || allowed.empty())
    allowed.insert(allowed.end(), eosIds.begin(), eosIds.end());
  return allowed;
}

} // namespace llmir::serving

// The chat-template interpreter: a segmenter (text / {{ }} / {% %} / {# #}
// with whitespace control), an expression lexer and recursive-descent parser
// into a small tree, and a tree-walking renderer. Parse and render errors are
// thrown internally and returned as Status at the two public entry points.
#include "llmir/serving/ChatTemplate.h"

#include <boost/json.hpp>

#include <algorithm>
#include <cctype>
#include <map>
#include <optional>

namespace llmir::serving {
namespace {

// ---------------------------------------------------------------- values

struct Value;
using List = std::vector<Value>;
using Map = std::map<std::string, Value, std::less<>>;

struct Value {
  enum class Kind { Undefined, None, Bool, Int, String, List, Map };
  Kind kind = Kind::Undefined;
  bool boolean = false;
  int64_t integer = 0;
  std::string string;
  std::shared_ptr<const List> list;
  std::shared_ptr<const Map> map;

  static Value none() { return Value{Kind::None}; }
  static Value of(bool b) { Value v{Kind::Bool}; v.boolean = b; return v; }
  static Value of(int64_t i) { Value v{Kind::Int}; v.integer = i; return v; }
  static Value of(std::string s) { Value v{Kind::String}; v.string = std::move(s); return v; }
  static Value of(List l) { Value v{Kind::List}; v.list = std::make_shared<List>(std::move(l)); return v; }
  static Value of(Map m) { Value v{Kind::Map}; v.map = std::make_shared<Map>(std::move(m)); return v; }
};

const char *kindName(Value::Kind k) {
  switch (k) {
  case Value::Kind::Undefined: return "undefined";
  case Value::Kind::None: return "none";
  case Value::Kind::Bool: return "bool";
  case Value::Kind::Int: return "int";
  case Value::Kind::String: return "string";
  case Value::Kind::List: return "list";
  case Value::Kind::Map: return "map";
  }
  return "?";
}

struct RenderError {
  std::string message;
};

bool truthy(const Value &v) {
  switch (v.kind) {
  case Value::Kind::Undefined:
  case Value::Kind::None: return false;
  case Value::Kind::Bool: return v.boolean;
  case Value::Kind::Int: return v.integer != 0;
  case Value::Kind::String: return !v.string.empty();
  case Value::Kind::List: return !v.list->empty();
  case Value::Kind::Map: return !v.map->empty();
  }
  return false;
}

bool equal(const Value &a, const Value &b) {
  if (a.kind != b.kind)
    return false;
  switch (a.kind) {
  case Value::Kind::Undefined:
  case Value::Kind::None: return true;
  case Value::Kind::Bool: return a.boolean == b.boolean;
  case Value::Kind::Int: return a.integer == b.integer;
  case Value::Kind::String: return a.string == b.string;
  case Value::Kind::List:
    return std::equal(a.list->begin(), a.list->end(), b.list->begin(), b.list->end(), equal);
  case Value::Kind::Map:
    return std::equal(a.map->begin(), a.map->end(), b.map->begin(), b.map->end(),
                      [](const auto &x, const auto &y) {
                        return x.first == y.first && equal(x.second, y.second);
                      });
  }
  return false;
}

/// What {{ v }} prints (Python's str for the scalar kinds).
std::string printed(const Value &v) {
  switch (v.kind) {
  case Value::Kind::Undefined: return "";
  case Value::Kind::None: return "None";
  case Value::Kind::Bool: return v.boolean ? "True" : "False";
  case Value::Kind::Int: return std::to_string(v.integer);
  case Value::Kind::String: return v.string;
  default: throw RenderError{std::string("cannot print a ") + kindName(v.kind)};
  }
}

/// json.dumps(v, ensure_ascii=False), as transformers' tojson filter does.
void appendJson(std::string &out, const Value &v) {
  switch (v.kind) {
  case Value::Kind::Undefined: throw RenderError{"tojson of an undefined value"};
  case Value::Kind::None: out += "null"; return;
  case Value::Kind::Bool: out += v.boolean ? "true" : "false"; return;
  case Value::Kind::Int: out += std::to_string(v.integer); return;
  case Value::Kind::String:
    out += boost::json::serialize(boost::json::string(v.string));
    return;
  case Value::Kind::List:
    out += '[';
    for (size_t i = 0; i < v.list->size(); ++i) {
      if (i)
        out += ", ";
      appendJson(out, (*v.list)[i]);
    }
    out += ']';
    return;
  case Value::Kind::Map: {
    out += '{';
    bool first = true;
    for (const auto &[key, item] : *v.map) {
      if (!first)
        out += ", ";
      first = false;
      appendJson(out, Value::of(key));
      out += ": ";
      appendJson(out, item);
    }
    out += '}';
    return;
  }
  }
}

// ---------------------------------------------------------------- tree

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind { Literal, Variable, ListLiteral, Attribute, Index, Slice, Unary, Binary,
                    Filter, Test, RaiseException };
  Kind kind;
  Value literal;
  std::string name; // variable, attribute, operator, filter or test
  std::vector<ExprPtr> operands; // Slice: object, lower (may be null), upper (may be null)
  bool negated = false;          // Test: "is not"
};

struct Node {
  enum class Kind { Text, Output, If, For, Set };
  Kind kind;
  std::string text;   // Text
  ExprPtr expr;       // Output, Set value, For iterable
  std::string target; // Set / For variable
  std::vector<std::pair<ExprPtr, std::vector<Node>>> branches; // If; else has no condition
  std::vector<Node> body;                                      // For
};

} // namespace

struct ChatTemplate::Program {
  std::vector<Node> nodes;
};

namespace {

// ---------------------------------------------------------------- parsing

struct ParseError {
  size_t offset;
  std::string message;
};

struct Segment {
  enum class Kind { Text, Expression, Statement };
  Kind kind;
  std::string text; // Text: the (trimmed) text; tags: the inner source
  size_t offset;    // of the inner source in the template
};

bool isBlank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/// Finds `close` after `from`, skipping quoted strings inside the tag.
size_t findTagEnd(std::string_view src, size_t from, std::string_view close, bool quoted) {
  for (size_t i = from; i + close.size() <= src.size(); ++i) {
    if (quoted && (src[i] == '\'' || src[i] == '"')) {
      const char quote = src[i];
      for (++i; i < src.size() && src[i] != quote; ++i)
        if (src[i] == '\\')
          ++i;
      continue;
    }
    if (src.compare(i, close.size(), close) == 0)
      return i;
  }
  return std::string_view::npos;
}

/// Splits the template into text and tags, applying `-` whitespace control
/// and transformers' trim_blocks / lstrip_blocks.
std::vector<Segment> segment(std::string_view src) {
  std::vector<Segment> out;
  size_t pos = 0;
  bool stripNextText = false; // previous tag ended with "-"
  bool trimNextNewline = false; // previous tag was a block or comment
  while (pos <= src.size()) {
    size_t open = pos;
    while ((open = src.find('{', open)) != std::string_view::npos && open + 1 < src.size() &&
           src[open + 1] != '{' && src[open + 1] != '%' && src[open + 1] != '#')
      ++open;
    if (open + 1 >= src.size())
      open = std::string_view::npos;
    std::string text(src.substr(pos, open == std::string_view::npos ? src.npos : open - pos));
    if (stripNextText) {
      text.erase(0, std::find_if_not(text.begin(), text.end(), isBlank) - text.begin());
    } else if (trimNextNewline) {
      if (text.starts_with("\r\n"))
        text.erase(0, 2);
      else if (text.starts_with("\n"))
        text.erase(0, 1);
    }
    if (open == std::string_view::npos) {
      if (!text.empty())
        out.push_back({Segment::Kind::Text, std::move(text), pos});
      break;
    }
    const char type = src[open + 1];
    const bool leftStrip = open + 2 < src.size() && src[open + 2] == '-';
    const bool isBlock = type != '{';
    if (leftStrip) {
      while (!text.empty() && isBlank(text.back()))
        text.pop_back();
    } else if (isBlock) { // lstrip_blocks: the tag's indentation on its own line
      const size_t lineStart = text.rfind('\n');
      const size_t from = lineStart == std::string::npos ? 0 : lineStart + 1;
      const bool atLineStart = lineStart != std::string::npos || (pos == 0 && out.empty());
      if (atLineStart && text.find_first_not_of(" \t", from) == std::string::npos)
        text.erase(from);
    }
    if (!text.empty())
      out.push_back({Segment::Kind::Text, std::move(text), pos});
    const std::string_view close = type == '{' ? "}}" : type == '%' ? "%}" : "#}";
    const size_t innerStart = open + 2 + (leftStrip ? 1 : 0);
    const size_t end = findTagEnd(src, innerStart, close, type != '#');
    if (end == std::string_view::npos)
      throw ParseError{open, std::string("unclosed tag: expected '") + std::string(close) + "'"};
    const bool rightStrip = end > innerStart && src[end - 1] == '-';
    const size_t innerEnd = rightStrip ? end - 1 : end;
    if (type != '#')
      out.push_back({type == '{' ? Segment::Kind::Expression : Segment::Kind::Statement,
                     std::string(src.substr(innerStart, innerEnd - innerStart)), innerStart});
    stripNextText = rightStrip;
    trimNextNewline = isBlock;
    pos = end + 2;
  }
  return out;
}

struct Token {
  enum class Kind { Name, String, Int, Operator, End };
  Kind kind;
  std::string text;
  size_t offset;
};

std::vector<Token> lex(const Segment &seg) {
  std::vector<Token> tokens;
  const std::string &s = seg.text;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    const size_t at = seg.offset + i;
    if (isBlank(c)) {
      ++i;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_'))
        ++j;
      tokens.push_back({Token::Kind::Name, s.substr(i, j - i), at});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j])))
        ++j;
      if (j < s.size() && s[j] == '.')
        throw ParseError{at, "floating-point literals are not supported"};
      tokens.push_back({Token::Kind::Int, s.substr(i, j - i), at});
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string value;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; ++j) {
        if (s[j] != '\\') {
          value += s[j];
          continue;
        }
        if (++j == s.size())
          break;
        switch (s[j]) {
        case 'n': value += '\n'; break;
        case 't': value += '\t'; break;
        case 'r': value += '\r'; break;
        case '\\': case '\'': case '"': value += s[j]; break;
        default: throw ParseError{seg.offset + j - 1, "unsupported escape in a string literal"};
        }
      }
      if (j >= s.size())
        throw ParseError{at, "unterminated string literal"};
      tokens.push_back({Token::Kind::String, std::move(value), at});
      i = j + 1;
    } else {
      static constexpr std::string_view twoChar[] = {"==", "!=", "<=", ">="};
      std::string op(1, c);
      for (std::string_view two : twoChar)
        if (s.compare(i, 2, two) == 0)
          op = two;
      if (std::string_view("()[].,:|~+-*%<>=!").find(c) == std::string_view::npos || op == "!")
        throw ParseError{at, std::string("unexpected character '") + c + "'"};
      tokens.push_back({Token::Kind::Operator, op, at});
      i += op.size();
    }
  }
  tokens.push_back({Token::Kind::End, "", seg.offset + s.size()});
  return tokens;
}

class Parser {
public:
  explicit Parser(std::vector<Segment> segments) : segments_(std::move(segments)) {}

  std::vector<Node> parseTemplate() { return parseBlock({}); }

private:
  // Statements ------------------------------------------------------------

  /// Parses nodes until a statement whose keyword is in `terminators`; that
  /// statement's tokens stay current (cursor on the token after the keyword).
  std::vector<Node> parseBlock(std::initializer_list<std::string_view> terminators,
                               size_t openedAt = 0) {
    std::vector<Node> nodes;
    while (next_ < segments_.size()) {
      const Segment &seg = segments_[next_++];
      if (seg.kind == Segment::Kind::Text) {
        nodes.push_back({Node::Kind::Text, seg.text});
        continue;
      }
      startTokens(seg);
      if (seg.kind == Segment::Kind::Expression) {
        Node node{Node::Kind::Output};
        node.expr = parseExpression();
        expectEnd();
        nodes.push_back(std::move(node));
        continue;
      }
      const Token keyword = expect(Token::Kind::Name, "a statement keyword");
      if (std::find(terminators.begin(), terminators.end(), keyword.text) != terminators.end()) {
        lastKeyword_ = keyword.text;
        return nodes;
      }
      if (keyword.text == "if")
        nodes.push_back(parseIf(keyword));
      else if (keyword.text == "for")
        nodes.push_back(parseFor(keyword));
      else if (keyword.text == "set")
        nodes.push_back(parseSet());
      else
        throw ParseError{keyword.offset, "unsupported statement '" + keyword.text +
                                             "' (expected if, for, set or the end of a block)"};
    }
    if (terminators.size() != 0)
      throw ParseError{openedAt, "block is never closed (expected {% " +
                                      std::string(*(terminators.end() - 1)) + " %})"};
    return nodes;
  }

  Node parseIf(const Token &keyword) {
    Node node{Node::Kind::If};
    ExprPtr condition = parseExpression();
    expectEnd();
    for (;;) {
      std::vector<Node> body = parseBlock({"elif", "else", "endif"}, keyword.offset);
      node.branches.emplace_back(std::move(condition), std::move(body));
      if (lastKeyword_ == "endif") {
        expectEnd();
        return node;
      }
      if (lastKeyword_ == "else") {
        expectEnd();
        node.branches.emplace_back(nullptr, parseBlock({"endif"}, keyword.offset));
        expectEnd();
        return node;
      }
      condition = parseExpression(); // elif
      expectEnd();
    }
  }

  Node parseFor(const Token &keyword) {
    Node node{Node::Kind::For};
    node.target = expect(Token::Kind::Name, "a loop variable").text;
    if (peek().kind == Token::Kind::Operator && peek().text == ",")
      throw ParseError{peek().offset, "tuple unpacking in for loops is not supported"};
    expectName("in");
    node.expr = parseOr();
    if (peek().kind == Token::Kind::Name && (peek().text == "if" || peek().text == "recursive"))
      throw ParseError{peek().offset, "'" + peek().text + "' in a for loop is not supported"};
    expectEnd();
    node.body = parseBlock({"else", "endfor"}, keyword.offset);
    if (lastKeyword_ == "else")
      throw ParseError{tokens_[cursor_ - 1].offset, "for ... else is not supported"};
    expectEnd();
    return node;
  }

  Node parseSet() {
    Node node{Node::Kind::Set};
    node.target = expect(Token::Kind::Name, "a variable name").text;
    if (peek().kind != Token::Kind::Operator || peek().text != "=")
      throw ParseError{peek().offset, "expected '=' in set (namespace attributes and "
                                      "block set are not supported)"};
    ++cursor_;
    node.expr = parseExpression();
    expectEnd();
    return node;
  }

  // Expressions (Jinja's precedence) -------------------------------------

  ExprPtr parseExpression() {
    ExprPtr e = parseOr();
    if (peek().kind == Token::Kind::Name && peek().text == "if")
      throw ParseError{peek().offset, "conditional expressions (x if c else y) are not supported"};
    return e;
  }

  ExprPtr parseOr() {
    ExprPtr left = parseAnd();
    while (acceptName("or"))
      left = binary("or", std::move(left), parseAnd());
    return left;
  }
  ExprPtr parseAnd() {
    ExprPtr left = parseNot();
    while (acceptName("and"))
      left = binary("and", std::move(left), parseNot());
    return left;
  }
  ExprPtr parseNot() {
    if (acceptName("not")) {
      auto e = std::make_unique<Expr>(Expr{Expr::Kind::Unary});
      e->name = "not";
      e->operands.push_back(parseNot());
      return e;
    }
    return parseCompare();
  }
  ExprPtr parseCompare() {
    ExprPtr left = parseAdditive();
    for (;;) {
      const Token &t = peek();
      if (t.kind == Token::Kind::Operator &&
          (t.text == "==" || t.text == "!=" || t.text == "<" || t.text == ">" ||
           t.text == "<=" || t.text == ">=")) {
        ++cursor_;
        left = binary(t.text, std::move(left), parseAdditive());
      } else if (acceptName("in")) {
        left = binary("in", std::move(left), parseAdditive());
      } else if (t.kind == Token::Kind::Name && t.text == "not" &&
                 tokens_[cursor_ + 1].kind == Token::Kind::Name &&
                 tokens_[cursor_ + 1].text == "in") {
        cursor_ += 2;
        left = binary("not in", std::move(left), parseAdditive());
      } else {
        return left;
      }
    }
  }
  ExprPtr parseAdditive() {
    ExprPtr left = parseConcat();
    while (peekOperator("+") || peekOperator("-")) {
      const std::string op = tokens_[cursor_++].text;
      left = binary(op, std::move(left), parseConcat());
    }
    return left;
  }
  ExprPtr parseConcat() {
    ExprPtr left = parseMultiplicative();
    while (peekOperator("~")) {
      ++cursor_;
      left = binary("~", std::move(left), parseMultiplicative());
    }
    return left;
  }
  ExprPtr parseMultiplicative() {
    ExprPtr left = parseUnary();
    while (peekOperator("*") || peekOperator("%")) {
      const std::string op = tokens_[cursor_++].text;
      left = binary(op, std::move(left), parseUnary());
    }
    return left;
  }
  ExprPtr parseUnary() {
    if (peekOperator("-")) {
      ++cursor_;
      auto e = std::make_unique<Expr>(Expr{Expr::Kind::Unary});
      e->name = "-";
      e->operands.push_back(parseUnary());
      return e;
    }
    return parseFilters(parsePostfix(parsePrimary()));
  }

  ExprPtr parsePrimary() {
    const Token t = peek();
    ++cursor_;
    auto e = std::make_unique<Expr>(Expr{Expr::Kind::Literal});
    switch (t.kind) {
    case Token::Kind::String: {
      e->literal = Value::of(t.text);
      // Adjacent string literals concatenate, as in Python.
      while (peek().kind == Token::Kind::String)
        e->literal.string += tokens_[cursor_++].text;
      return e;
    }
    case Token::Kind::Int:
      try {
        e->literal = Value::of(static_cast<int64_t>(std::stoll(t.text)));
      } catch (...) {
        throw ParseError{t.offset, "integer literal out of range"};
      }
      return e;
    case Token::Kind::Name:
      if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
        e->literal = Value::of(t.text == "true" || t.text == "True");
        return e;
      }
      if (t.text == "none" || t.text == "None") {
        e->literal = Value::none();
        return e;
      }
      if (peekOperator("(")) {
        if (t.text != "raise_exception")
          throw ParseError{t.offset, "unsupported function '" + t.text +
                                         "' (only raise_exception is available)"};
        ++cursor_;
        e->kind = Expr::Kind::RaiseException;
        e->operands.push_back(parseExpression());
        expectOperator(")");
        return e;
      }
      e->kind = Expr::Kind::Variable;
      e->name = t.text;
      return e;
    case Token::Kind::Operator:
      if (t.text == "(") {
        ExprPtr inner = parseExpression();
        expectOperator(")");
        return inner;
      }
      if (t.text == "[") {
        e->kind = Expr::Kind::ListLiteral;
        while (!peekOperator("]")) {
          e->operands.push_back(parseExpression());
          if (!peekOperator("]"))
            expectOperator(",");
        }
        ++cursor_;
        return e;
      }
      break;
    case Token::Kind::End:
      break;
    }
    throw ParseError{t.offset, "expected an expression, found " + describe(t)};
  }

  ExprPtr parsePostfix(ExprPtr object) {
    for (;;) {
      if (peekOperator(".")) {
        ++cursor_;
        auto e = std::make_unique<Expr>(Expr{Expr::Kind::Attribute});
        e->name = expect(Token::Kind::Name, "an attribute name").text;
        if (peekOperator("("))
          throw ParseError{peek().offset, "method calls (." + e->name + "()) are not supported"};
        e->operands.push_back(std::move(object));
        object = std::move(e);
      } else if (peekOperator("[")) {
        ++cursor_;
        ExprPtr lower = peekOperator(":") ? nullptr : parseExpression();
        if (peekOperator(":")) {
          ++cursor_;
          ExprPtr upper = peekOperator("]") ? nullptr : parseExpression();
          if (peekOperator(":"))
            throw ParseError{peek().offset, "slice steps are not supported"};
          auto e = std::make_unique<Expr>(Expr{Expr::Kind::Slice});
          e->operands.push_back(std::move(object));
          e->operands.push_back(std::move(lower));
          e->operands.push_back(std::move(upper));
          object = std::move(e);
        } else {
          auto e = std::make_unique<Expr>(Expr{Expr::Kind::Index});
          e->operands.push_back(std::move(object));
          e->operands.push_back(std::move(lower));
          object = std::move(e);
        }
        expectOperator("]");
      } else if (peekOperator("(")) {
        throw ParseError{peek().offset, "calling a value is not supported"};
      } else {
        return object;
      }
    }
  }

  ExprPtr parseFilters(ExprPtr value) {
    for (;;) {
      if (peekOperator("|")) {
        ++cursor_;
        const Token name = expect(Token::Kind::Name, "a filter name");
        static constexpr std::string_view known[] = {"trim", "length", "upper", "lower", "tojson"};
        if (std::find(std::begin(known), std::end(known), name.text) == std::end(known))
          throw ParseError{name.offset, "unsupported filter '" + name.text +
                                            "' (supported: trim, length, upper, lower, tojson)"};
        if (peekOperator("("))
          throw ParseError{peek().offset, "filter arguments are not supported"};
        auto e = std::make_unique<Expr>(Expr{Expr::Kind::Filter});
        e->name = name.text;
        e->operands.push_back(std::move(value));
        value = std::move(e);
      } else if (acceptName("is")) {
        auto e = std::make_unique<Expr>(Expr{Expr::Kind::Test});
        e->negated = acceptName("not");
        const Token name = expect(Token::Kind::Name, "a test name");
        if (name.text != "defined" && name.text != "none")
          throw ParseError{name.offset, "unsupported test '" + name.text +
                                            "' (supported: defined, none)"};
        e->name = name.text;
        e->operands.push_back(std::move(value));
        value = std::move(e);
      } else {
        return value;
      }
    }
  }

  // Tokens ---------------------------------------------------------------

  void startTokens(const Segment &seg) {
    tokens_ = lex(seg);
    cursor_ = 0;
  }
  const Token &peek() const { return tokens_[cursor_]; }
  bool peekOperator(std::string_view op) const {
    return peek().kind == Token::Kind::Operator && peek().text == op;
  }
  bool acceptName(std::string_view name) {
    if (peek().kind != Token::Kind::Name || peek().text != name)
      return false;
    ++cursor_;
    return true;
  }
  static std::string describe(const Token &t) {
    return t.kind == Token::Kind::End ? "the end of the tag" : "'" + t.text + "'";
  }
  Token expect(Token::Kind kind, const std::string &what) {
    if (peek().kind != kind)
      throw ParseError{peek().offset, "expected " + what + ", found " + describe(peek())};
    return tokens_[cursor_++];
  }
  void expectName(std::string_view name) {
    if (!acceptName(name))
      throw ParseError{peek().offset,
                       "expected '" + std::string(name) + "', found " + describe(peek())};
  }
  void expectOperator(std::string_view op) {
    if (!peekOperator(op))
      throw ParseError{peek().offset,
                       "expected '" + std::string(op) + "', found " + describe(peek())};
    ++cursor_;
  }
  void expectEnd() {
    if (peek().kind != Token::Kind::End)
      throw ParseError{peek().offset, "expected the end of the tag, found " + describe(peek())};
  }
  static ExprPtr binary(std::string op, ExprPtr left, ExprPtr right) {
    auto e = std::make_unique<Expr>(Expr{Expr::Kind::Binary});
    e->name = std::move(op);
    e->operands.push_back(std::move(left));
    e->operands.push_back(std::move(right));
    return e;
  }

  std::vector<Segment> segments_;
  size_t next_ = 0;
  std::vector<Token> tokens_;
  size_t cursor_ = 0;
  std::string lastKeyword_;
};

// ---------------------------------------------------------------- rendering

class Renderer {
public:
  explicit Renderer(Map globals) { scopes_.push_back(std::move(globals)); }

  void render(const std::vector<Node> &nodes, std::string &out) {
    for (const Node &node : nodes) {
      switch (node.kind) {
      case Node::Kind::Text: out += node.text; break;
      case Node::Kind::Output: out += printed(eval(*node.expr)); break;
      case Node::Kind::Set: scopes_.back()[node.target] = eval(*node.expr); break;
      case Node::Kind::If:
        for (const auto &[condition, body] : node.branches)
          if (!condition || truthy(eval(*condition))) {
            render(body, out);
            break;
          }
        break;
      case Node::Kind::For: renderFor(node, out); break;
      }
    }
  }

private:
  void renderFor(const Node &node, std::string &out) {
    const Value items = eval(*node.expr);
    List list;
    if (items.kind == Value::Kind::List)
      list = *items.list;
    else if (items.kind == Value::Kind::Map)
      for (const auto &entry : *items.map)
        list.push_back(Value::of(entry.first));
    else if (items.kind != Value::Kind::Undefined)
      throw RenderError{std::string("cannot loop over a ") + kindName(items.kind)};
    const int64_t n = static_cast<int64_t>(list.size());
    for (int64_t i = 0; i < n; ++i) {
      Map scope;
      scope[node.target] = list[i];
      scope["loop"] = Value::of(Map{{"index0", Value::of(i)},
                                    {"index", Value::of(i + 1)},
                                    {"first", Value::of(i == 0)},
                                    {"last", Value::of(i == n - 1)},
                                    {"length", Value::of(n)}});
      scopes_.push_back(std::move(scope)); // a set inside the loop stays in it
      render(node.body, out);
      scopes_.pop_back();
    }
  }

  Value lookup(const std::string &name) const {
    for (auto scope = scopes_.rbegin(); scope != scopes_.rend(); ++scope)
      if (auto it = scope->find(name); it != scope->end())
        return it->second;
    return Value{};
  }

  static Value member(const Value &object, const Value &key, const std::string &shown) {
    if (object.kind == Value::Kind::Undefined)
      throw RenderError{"cannot read " + shown + " of an undefined value"};
    if (object.kind == Value::Kind::Map) {
      if (key.kind != Value::Kind::String)
        return Value{};
      auto it = object.map->find(key.string);
      return it == object.map->end() ? Value{} : it->second;
    }
    if ((object.kind == Value::Kind::List || object.kind == Value::Kind::String) &&
        key.kind == Value::Kind::Int) {
      const int64_t size = object.kind == Value::Kind::List
                               ? static_cast<int64_t>(object.list->size())
                               : static_cast<int64_t>(object.string.size());
      const int64_t i = key.integer < 0 ? key.integer + size : key.integer;
      if (i < 0 || i >= size)
        return Value{};
      return object.kind == Value::Kind::List ? (*object.list)[i]
                                              : Value::of(std::string(1, object.string[i]));
    }
    if (key.kind == Value::Kind::String)
      return Value{}; // e.g. message.tool_calls on a string: undefined, as in Jinja
    throw RenderError{std::string("cannot index a ") + kindName(object.kind) + " with a " +
                      kindName(key.kind)};
  }

  Value slice(const Expr &e) {
    const Value object = eval(*e.operands[0]);
    auto bound = [&](const ExprPtr &expr, int64_t size, int64_t fallback) {
      if (!expr)
        return fallback;
      const Value v = eval(*expr);
      if (v.kind != Value::Kind::Int)
        throw RenderError{std::string("slice bounds must be ints, not ") + kindName(v.kind)};
      const int64_t i = v.integer < 0 ? v.integer + size : v.integer;
      return std::clamp<int64_t>(i, 0, size);
    };
    if (object.kind == Value::Kind::List) {
      const int64_t size = static_cast<int64_t>(object.list->size());
      const int64_t lo = bound(e.operands[1], size, 0), hi = bound(e.operands[2], size, size);
      return Value::of(lo < hi ? List(object.list->begin() + lo, object.list->begin() + hi) : List{});
    }
    if (object.kind == Value::Kind::String) {
      const int64_t size = static_cast<int64_t>(object.string.size());
      const int64_t lo = bound(e.operands[1], size, 0), hi = bound(e.operands[2], size, size);
      return Value::of(lo < hi ? object.string.substr(lo, hi - lo) : std::string());
    }
    throw RenderError{std::string("cannot slice a ") + kindName(object.kind)};
  }

  Value binary(const Expr &e) {
    const std::string &op = e.name;
    const Value left = eval(*e.operands[0]);
    if (op == "and")
      return truthy(left) ? eval(*e.operands[1]) : left;
    if (op == "or")
      return truthy(left) ? left : eval(*e.operands[1]);
    const Value right = eval(*e.operands[1]);
    if (op == "==")
      return Value::of(equal(left, right));
    if (op == "!=")
      return Value::of(!equal(left, right));
    if (op == "~")
      return Value::of(printed(left) + printed(right));
    if (op == "in" || op == "not in") {
      bool found = false;
      if (right.kind == Value::Kind::String && left.kind == Value::Kind::String)
        found = right.string.find(left.string) != std::string::npos;
      else if (right.kind == Value::Kind::List)
        found = std::any_of(right.list->begin(), right.list->end(),
                            [&](const Value &v) { return equal(v, left); });
      else if (right.kind == Value::Kind::Map && left.kind == Value::Kind::String)
        found = right.map->contains(left.string);
      else
        throw RenderError{std::string("cannot test whether a ") + kindName(left.kind) +
                          " is in a " + kindName(right.kind)};
      return Value::of(found == (op == "in"));
    }
    if (op == "+" && left.kind == Value::Kind::String && right.kind == Value::Kind::String)
      return Value::of(left.string + right.string);
    if (op == "+" && left.kind == Value::Kind::List && right.kind == Value::Kind::List) {
      List joined = *left.list;
      joined.insert(joined.end(), right.list->begin(), right.list->end());
      return Value::of(std::move(joined));
    }
    if ((op == "<" || op == ">" || op == "<=" || op == ">=") &&
        left.kind == Value::Kind::String && right.kind == Value::Kind::String) {
      const int c = left.string.compare(right.string);
      return Value::of(op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0);
    }
    if (left.kind != Value::Kind::Int || right.kind != Value::Kind::Int)
      throw RenderError{"cannot apply '" + op + "' to a " + kindName(left.kind) + " and a " +
                        kindName(right.kind)};
    const int64_t a = left.integer, b = right.integer;
    if (op == "+") return Value::of(a + b);
    if (op == "-") return Value::of(a - b);
    if (op == "*") return Value::of(a * b);
    if (op == "%") {
      if (b == 0)
        throw RenderError{"modulo by zero"};
      return Value::of(((a % b) + b) % b); // Python's sign rule
    }
    if (op == "<") return Value::of(a < b);
    if (op == ">") return Value::of(a > b);
    if (op == "<=") return Value::of(a <= b);
    return Value::of(a >= b);
  }

  static Value filter(const std::string &name, const Value &v) {
    if (name == "tojson") {
      std::string json;
      appendJson(json, v);
      return Value::of(std::move(json));
    }
    if (name == "length") {
      if (v.kind == Value::Kind::List)
        return Value::of(static_cast<int64_t>(v.list->size()));
      if (v.kind == Value::Kind::Map)
        return Value::of(static_cast<int64_t>(v.map->size()));
      if (v.kind == Value::Kind::String) // code points, as Python's len
        return Value::of(static_cast<int64_t>(std::count_if(
            v.string.begin(), v.string.end(), [](char c) { return (c & 0xC0) != 0x80; })));
      throw RenderError{std::string("length of a ") + kindName(v.kind)};
    }
    if (v.kind != Value::Kind::String)
      throw RenderError{"filter '" + name + "' needs a string, not a " + kindName(v.kind)};
    std::string s = v.string;
    if (name == "trim") {
      const auto notSpace = [](char c) { return !std::isspace(static_cast<unsigned char>(c)); };
      s.erase(s.begin(), std::find_if(s.begin(), s.end(), notSpace));
      s.erase(std::find_if(s.rbegin(), s.rend(), notSpace).base(), s.end());
    } else { // upper / lower: ASCII letters
      for (char &c : s)
        c = static_cast<char>(name == "upper" ? std::toupper(static_cast<unsigned char>(c))
                                              : std::tolower(static_cast<unsigned char>(c)));
    }
    return Value::of(std::move(s));
  }

  Value eval(const Expr &e) {
    switch (e.kind) {
    case Expr::Kind::Literal: return e.literal;
    case Expr::Kind::Variable: return lookup(e.name);
    case Expr::Kind::ListLiteral: {
      List items;
      for (const ExprPtr &item : e.operands)
        items.push_back(eval(*item));
      return Value::of(std::move(items));
    }
    case Expr::Kind::Attribute:
      return member(eval(*e.operands[0]), Value::of(e.name), "attribute '" + e.name + "'");
    case Expr::Kind::Index: return member(eval(*e.operands[0]), eval(*e.operands[1]), "an item");
    case Expr::Kind::Slice: return slice(e);
    case Expr::Kind::Unary: {
      const Value v = eval(*e.operands[0]);
      if (e.name == "not")
        return Value::of(!truthy(v));
      if (v.kind != Value::Kind::Int)
        throw RenderError{std::string("cannot negate a ") + kindName(v.kind)};
      return Value::of(-v.integer);
    }
    case Expr::Kind::Binary: return binary(e);
    case Expr::Kind::Filter: return filter(e.name, eval(*e.operands[0]));
    case Expr::Kind::Test: {
      const Value v = eval(*e.operands[0]);
      const bool result = e.name == "defined" ? v.kind != Value::Kind::Undefined
                                              : v.kind == Value::Kind::None;
      return Value::of(result != e.negated);
    }
    case Expr::Kind::RaiseException: throw RenderError{printed(eval(*e.operands[0]))};
    }
    return Value{};
  }

  std::vector<Map> scopes_;
};

std::string location(std::string_view src, size_t offset) {
  offset = std::min(offset, src.size());
  const size_t line = 1 + std::count(src.begin(), src.begin() + offset, '\n');
  const size_t lineStart = src.rfind('\n', offset == 0 ? 0 : offset - 1);
  const size_t column =
      offset - (lineStart == std::string_view::npos || offset == 0 ? 0 : lineStart + 1) + 1;
  return "line " + std::to_string(line) + ", column " + std::to_string(column);
}

} // namespace

Result<ChatTemplate> ChatTemplate::parse(std::string_view source) {
  try {
    auto program = std::make_shared<Program>();
    program->nodes = Parser(segment(source)).parseTemplate();
    return ChatTemplate(std::move(program));
  } catch (const ParseError &e) {
    return Status::error("chat template, " + location(source, e.offset) + ": " + e.message);
  }
}

Result<std::string> ChatTemplate::render(const std::vector<ChatTurn> &messages,
                                         const ChatTemplateInputs &inputs) const {
  List turns;
  for (const ChatTurn &turn : messages)
    turns.push_back(Value::of(
        Map{{"role", Value::of(turn.role)}, {"content", Value::of(turn.content)}}));
  Map globals{{"messages", Value::of(std::move(turns))},
              {"add_generation_prompt", Value::of(inputs.addGenerationPrompt)},
              {"bos_token", Value::of(inputs.bosToken)},
              {"eos_token", Value::of(inputs.eosToken)}};
  try {
    std::string out;
    Renderer(std::move(globals)).render(program_->nodes, out);
    return out;
  } catch (const RenderError &e) {
    return Status::error(e.message);
  }
}

} // namespace llmir::serving

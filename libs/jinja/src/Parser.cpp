// Recursive descent over the token stream, following jinja2/parser.py (3.1)
// for precedence and for which statements exist. Nesting is bounded so that
// no input can exhaust the stack.
#include "Ast.h"
#include "Lexer.h"

#include <functional>
#include <set>

namespace llmir::jinja {
namespace {

constexpr int kMaxDepth = 256;

struct ParseError {
  std::string message;
};

class Parser {
public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  Body parseTemplate() {
    Body body = subparse({});
    if (cur().type != Token::Type::End)
      fail("unexpected '" + cur().text + "'");
    return body;
  }

private:
  using Type = Token::Type;

  const Token &cur() const { return tokens_[pos_]; }
  const Token &peek(size_t k = 1) const {
    return tokens_[std::min(pos_ + k, tokens_.size() - 1)];
  }
  void advance() {
    if (pos_ + 1 < tokens_.size())
      ++pos_;
  }
  bool isOp(const char *op) const { return cur().type == Type::Op && cur().text == op; }
  bool isName(const char *name) const { return cur().type == Type::Name && cur().text == name; }
  bool skipOp(const char *op) {
    if (!isOp(op))
      return false;
    advance();
    return true;
  }
  bool skipName(const char *name) {
    if (!isName(name))
      return false;
    advance();
    return true;
  }
  [[noreturn]] void fail(const std::string &what) const {
    throw ParseError{"line " + std::to_string(cur().line) + ": " + what};
  }
  std::string describe(const Token &t) const {
    switch (t.type) {
    case Type::End: return "end of template";
    case Type::BlockEnd: return "end of statement block";
    case Type::VarEnd: return "end of print statement";
    case Type::String: return "string";
    case Type::Data: return "template data";
    default: return "'" + t.text + "'";
    }
  }
  void expectOp(const char *op) {
    if (!skipOp(op))
      fail(std::string("expected '") + op + "', got " + describe(cur()));
  }
  std::string expectName() {
    if (cur().type != Type::Name)
      fail("expected a name, got " + describe(cur()));
    std::string name = cur().text;
    advance();
    return name;
  }
  void expectBlockEnd() {
    if (cur().type != Type::BlockEnd)
      fail("expected end of statement block, got " + describe(cur()));
    advance();
  }

  struct DepthGuard {
    explicit DepthGuard(Parser &p) : p(p) {
      if (++p.depth_ > kMaxDepth)
        p.fail("the template nests too deeply");
    }
    ~DepthGuard() { --p.depth_; }
    Parser &p;
  };

  // ------------------------------------------------------------ statements

  /// Parses until a block tag whose name is in `endTags` (left unconsumed,
  /// positioned at that name) or the end of the template.
  Body subparse(const std::set<std::string> &endTags) {
    DepthGuard guard(*this);
    Body body;
    while (true) {
      const Token &t = cur();
      if (t.type == Type::End) {
        if (!endTags.empty())
          fail("unexpected end of template, expected one of: " + join(endTags));
        return body;
      }
      if (t.type == Type::Data) {
        auto node = std::make_unique<Node>();
        node->kind = Node::Kind::Text;
        node->line = t.line;
        node->text = t.text;
        body.push_back(std::move(node));
        advance();
        continue;
      }
      if (t.type == Type::VarBegin) {
        advance();
        auto node = std::make_unique<Node>();
        node->kind = Node::Kind::Output;
        node->line = cur().line;
        node->expr = parseTuple(true);
        if (cur().type != Type::VarEnd)
          fail("expected end of print statement, got " + describe(cur()));
        advance();
        body.push_back(std::move(node));
        continue;
      }
      if (t.type == Type::BlockBegin) {
        advance();
        if (cur().type != Type::Name)
          fail("tag name expected");
        if (endTags.count(cur().text))
          return body;
        body.push_back(parseStatement());
        continue;
      }
      fail("unexpected " + describe(t));
    }
  }

  static std::string join(const std::set<std::string> &names) {
    std::string out;
    for (const auto &n : names)
      out += (out.empty() ? "'" : ", '") + n + "'";
    return out;
  }

  std::unique_ptr<Node> parseStatement() {
    DepthGuard guard(*this);
    const std::string tag = cur().text;
    int line = cur().line;
    auto node = std::make_unique<Node>();
    node->line = line;
    advance();
    if (tag == "if") {
      node->kind = Node::Kind::If;
      node->conditions.push_back(parseTuple(false));
      expectBlockEnd();
      while (true) {
        node->branches.push_back(subparse({"elif", "else", "endif"}));
        std::string next = cur().text;
        advance();
        if (next == "elif") {
          node->conditions.push_back(parseTuple(false));
          expectBlockEnd();
          continue;
        }
        if (next == "else") {
          expectBlockEnd();
          node->body = subparse({"endif"});
          advance();
        }
        expectBlockEnd();
        return node;
      }
    }
    if (tag == "for") {
      node->kind = Node::Kind::For;
      node->target = parseAssignTarget(true);
      if (!skipName("in"))
        fail("expected 'in', got " + describe(cur()));
      node->expr = parseTuple(false, {"recursive"});
      if (skipName("if"))
        node->condition = parseExpression(true);
      if (skipName("recursive"))
        node->recursive = true;
      expectBlockEnd();
      node->body = subparse({"endfor", "else"});
      if (cur().text == "else") {
        advance();
        expectBlockEnd();
        node->elseBody = subparse({"endfor"});
      }
      advance();
      expectBlockEnd();
      return node;
    }
    if (tag == "set") {
      node->target = parseAssignTarget(false);
      if (skipOp("=")) {
        node->kind = Node::Kind::Set;
        node->expr = parseTuple(true);
        expectBlockEnd();
        return node;
      }
      if (node->target.tuple || !node->target.attribute.empty())
        fail("a block set assigns one name");
      node->kind = Node::Kind::SetBlock;
      node->expr = parseFilterChain(nullptr);
      expectBlockEnd();
      node->body = subparse({"endset"});
      advance();
      expectBlockEnd();
      return node;
    }
    if (tag == "macro") {
      node->kind = Node::Kind::Macro;
      node->text = expectName();
      parseSignature(node->params);
      expectBlockEnd();
      node->body = subparse({"endmacro"});
      advance();
      expectBlockEnd();
      scanSpecialNames(*node);
      return node;
    }
    if (tag == "call") {
      node->kind = Node::Kind::CallBlock;
      if (isOp("("))
        parseSignature(node->params);
      node->expr = parseExpression(true);
      if (node->expr->kind != Expr::Kind::Call)
        fail("expected call");
      expectBlockEnd();
      node->body = subparse({"endcall"});
      advance();
      expectBlockEnd();
      scanSpecialNames(*node);
      return node;
    }
    if (tag == "filter") {
      node->kind = Node::Kind::FilterBlock;
      node->expr = parseFilterChain(nullptr);
      if (!node->expr)
        fail("expected a filter name");
      expectBlockEnd();
      node->body = subparse({"endfilter"});
      advance();
      expectBlockEnd();
      return node;
    }
    if (tag == "generation" || tag == "with") {
      // {% generation %} renders its body (transformers marks assistant
      // tokens with it); {% with %} opens a scope.
      node->kind = Node::Kind::Scope;
      if (tag == "with") {
        while (cur().type != Type::BlockEnd) {
          if (!node->body.empty())
            expectOp(",");
          auto set = std::make_unique<Node>();
          set->kind = Node::Kind::Set;
          set->line = cur().line;
          set->target = parseAssignTarget(false);
          expectOp("=");
          set->expr = parseExpression(true);
          node->body.push_back(std::move(set));
        }
      }
      expectBlockEnd();
      Body inner = subparse({tag == "with" ? "endwith" : "endgeneration"});
      for (auto &n : inner)
        node->body.push_back(std::move(n));
      advance();
      expectBlockEnd();
      return node;
    }
    if (tag == "break" || tag == "continue") {
      if (loopDepth_ == 0 && false)
        fail("'" + tag + "' outside a loop");
      node->kind = tag == "break" ? Node::Kind::Break : Node::Kind::Continue;
      expectBlockEnd();
      return node;
    }
    fail("encountered unknown tag '" + tag + "'");
  }

  void parseSignature(MacroParams &params) {
    expectOp("(");
    while (!isOp(")")) {
      if (!params.names.empty())
        expectOp(",");
      if (isOp(")"))
        break;
      params.names.push_back(expectName());
      if (skipOp("="))
        params.defaults.push_back(parseExpression(true));
      else if (!params.defaults.empty())
        fail("non-default argument follows default argument");
    }
    expectOp(")");
  }

  /// Marks whether a macro's body refers to caller, varargs or kwargs (Jinja
  /// only accepts extra arguments when it does).
  void scanSpecialNames(Node &macro) {
    std::function<void(const Expr *)> scanExpr = [&](const Expr *e) {
      if (!e)
        return;
      if (e->kind == Expr::Kind::Name) {
        macro.usesCaller |= e->text == "caller";
        macro.usesVarargs |= e->text == "varargs";
        macro.usesKwargs |= e->text == "kwargs";
      }
      for (const Expr *child : {e->a.get(), e->b.get(), e->c.get(), e->d.get()})
        scanExpr(child);
      for (const auto &arg : e->args)
        scanExpr(arg.get());
      for (const auto &kw : e->kwargs)
        scanExpr(kw.second.get());
    };
    std::function<void(const Body &)> scanBody = [&](const Body &body) {
      for (const auto &n : body) {
        if (n->kind == Node::Kind::Macro)
          continue; // a nested macro has its own
        scanExpr(n->expr.get());
        scanExpr(n->condition.get());
        for (const auto &c : n->conditions)
          scanExpr(c.get());
        for (const auto &b : n->branches)
          scanBody(b);
        scanBody(n->body);
        scanBody(n->elseBody);
        for (const auto &d : n->params.defaults)
          scanExpr(d.get());
      }
    };
    scanBody(macro.body);
  }

  Target parseAssignTarget(bool allowTuple) {
    Target target;
    bool parenthesized = allowTuple && skipOp("(");
    target.names.push_back(expectName());
    if (!parenthesized && isOp(".")) {
      advance();
      target.attribute = expectName();
      return target;
    }
    while ((allowTuple || true) && isOp(",")) {
      advance();
      if (cur().type != Type::Name)
        break;
      target.names.push_back(expectName());
      target.tuple = true;
    }
    if (isOp(",") || target.names.size() > 1)
      target.tuple = true;
    if (parenthesized)
      expectOp(")");
    return target;
  }

  // ----------------------------------------------------------- expressions

  ExprPtr make(Expr::Kind kind) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = cur().line;
    return e;
  }

  /// Expressions separated by commas; more than one (or a trailing comma)
  /// make a tuple.
  ExprPtr parseTuple(bool withCondexpr, const std::set<std::string> &extraEnd = {},
                     bool explicitParens = false) {
    DepthGuard guard(*this);
    auto tuple = make(Expr::Kind::Tuple);
    bool isTuple = false;
    while (true) {
      if (!tuple->args.empty()) {
        if (!skipOp(","))
          break;
        isTuple = true;
      }
      if (tupleEnds(extraEnd))
        break;
      tuple->args.push_back(withCondexpr ? parseExpression(true) : parseOr());
    }
    if (!isTuple) {
      if (!tuple->args.empty())
        return std::move(tuple->args[0]);
      if (!explicitParens)
        fail("expected an expression, got " + describe(cur()));
    }
    return tuple;
  }

  bool tupleEnds(const std::set<std::string> &extraEnd) const {
    const Token &t = cur();
    if (t.type == Type::VarEnd || t.type == Type::BlockEnd || t.type == Type::End)
      return true;
    if (t.type == Type::Op && (t.text == ")" || t.text == "]" || t.text == "}" || t.text == "="))
      return true;
    return t.type == Type::Name && extraEnd.count(t.text);
  }

  ExprPtr parseExpression(bool withCondexpr) {
    DepthGuard guard(*this);
    if (!withCondexpr)
      return parseOr();
    ExprPtr expr = parseOr();
    while (isName("if")) {
      advance();
      auto cond = make(Expr::Kind::Cond);
      cond->a = parseOr();
      cond->b = std::move(expr);
      if (skipName("else"))
        cond->c = parseExpression(true);
      expr = std::move(cond);
    }
    return expr;
  }

  ExprPtr parseOr() {
    ExprPtr left = parseAnd();
    while (isName("or")) {
      advance();
      auto e = make(Expr::Kind::Or);
      e->a = std::move(left);
      e->b = parseAnd();
      left = std::move(e);
    }
    return left;
  }

  ExprPtr parseAnd() {
    ExprPtr left = parseNot();
    while (isName("and")) {
      advance();
      auto e = make(Expr::Kind::And);
      e->a = std::move(left);
      e->b = parseNot();
      left = std::move(e);
    }
    return left;
  }

  ExprPtr parseNot() {
    DepthGuard guard(*this);
    if (isName("not")) {
      auto e = make(Expr::Kind::Not);
      advance();
      e->a = parseNot();
      return e;
    }
    return parseCompare();
  }

  ExprPtr parseCompare() {
    ExprPtr first = parseMath1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().type == Type::Op &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == ">" ||
           cur().text == "<=" || cur().text == ">=")) {
        op = cur().text;
        advance();
      } else if (isName("in")) {
        op = "in";
        advance();
      } else if (isName("not") && peek().type == Type::Name && peek().text == "in") {
        op = "notin";
        advance();
        advance();
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::Kind::Compare);
        cmp->a = std::move(first);
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parseMath1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr binary(std::string op, ExprPtr a, ExprPtr b) {
    auto e = make(Expr::Kind::Binary);
    e->text = std::move(op);
    e->a = std::move(a);
    e->b = std::move(b);
    return e;
  }

  ExprPtr parseMath1() {
    ExprPtr left = parseConcat();
    while (isOp("+") || isOp("-")) {
      std::string op = cur().text;
      advance();
      left = binary(op, std::move(left), parseConcat());
    }
    return left;
  }

  ExprPtr parseConcat() {
    ExprPtr left = parseMath2();
    while (isOp("~")) {
      advance();
      left = binary("~", std::move(left), parseMath2());
    }
    return left;
  }

  ExprPtr parseMath2() {
    ExprPtr left = parsePow();
    while (isOp("*") || isOp("/") || isOp("//") || isOp("%")) {
      std::string op = cur().text;
      advance();
      left = binary(op, std::move(left), parsePow());
    }
    return left;
  }

  ExprPtr parsePow() {
    ExprPtr left = parseUnary(true);
    while (isOp("**")) {
      advance();
      left = binary("**", std::move(left), parseUnary(true));
    }
    return left;
  }

  ExprPtr parseUnary(bool withFilter) {
    DepthGuard guard(*this);
    ExprPtr node;
    if (isOp("-") || isOp("+")) {
      node = make(isOp("-") ? Expr::Kind::Neg : Expr::Kind::Pos);
      advance();
      node->a = parseUnary(false);
    } else {
      node = parsePrimary();
    }
    node = parsePostfix(std::move(node));
    if (withFilter)
      node = parseFilterExpr(std::move(node));
    return node;
  }

  ExprPtr parsePrimary() {
    DepthGuard guard(*this);
    const Token &t = cur();
    if (t.type == Type::Name) {
      auto e = make(Expr::Kind::Literal);
      if (t.text == "true" || t.text == "True")
        e->value = Value::boolean(true);
      else if (t.text == "false" || t.text == "False")
        e->value = Value::boolean(false);
      else if (t.text == "none" || t.text == "None")
        e->value = Value::none();
      else {
        e->kind = Expr::Kind::Name;
        e->text = t.text;
      }
      advance();
      return e;
    }
    if (t.type == Type::String) {
      auto e = make(Expr::Kind::Literal);
      std::string s;
      while (cur().type == Type::String) {
        s += cur().text;
        advance();
      }
      e->value = Value::string(std::move(s));
      return e;
    }
    if (t.type == Type::Int || t.type == Type::Float) {
      auto e = make(Expr::Kind::Literal);
      if (t.type == Type::Int) {
        errno = 0;
        char *end = nullptr;
        long long v = std::strtoll(t.text.c_str(), &end, 10);
        if (errno == ERANGE)
          fail("integer literal out of range");
        e->value = Value::integer(v);
      } else {
        e->value = Value::real(std::strtod(t.text.c_str(), nullptr));
      }
      advance();
      return e;
    }
    if (isOp("(")) {
      advance();
      ExprPtr inner = parseTuple(true, {}, true);
      expectOp(")");
      return inner;
    }
    if (isOp("[")) {
      advance();
      auto list = make(Expr::Kind::List);
      while (!isOp("]")) {
        if (!list->args.empty())
          expectOp(",");
        if (isOp("]"))
          break;
        list->args.push_back(parseExpression(true));
      }
      expectOp("]");
      return list;
    }
    if (isOp("{")) {
      advance();
      auto dict = make(Expr::Kind::Dict);
      while (!isOp("}")) {
        if (!dict->args.empty())
          expectOp(",");
        if (isOp("}"))
          break;
        dict->args.push_back(parseExpression(true));
        expectOp(":");
        dict->args.push_back(parseExpression(true));
      }
      expectOp("}");
      return dict;
    }
    fail("unexpected " + describe(t));
  }

  ExprPtr parsePostfix(ExprPtr node) {
    while (true) {
      if (isOp(".")) {
        advance();
        if (cur().type == Type::Name) {
          auto e = make(Expr::Kind::Attr);
          e->text = cur().text;
          e->a = std::move(node);
          advance();
          node = std::move(e);
        } else if (cur().type == Type::Int) {
          auto e = make(Expr::Kind::Item);
          e->a = std::move(node);
          e->b = make(Expr::Kind::Literal);
          e->b->value = Value::integer(std::strtoll(cur().text.c_str(), nullptr, 10));
          advance();
          node = std::move(e);
        } else {
          fail("expected name or number");
        }
      } else if (isOp("[")) {
        advance();
        node = parseSubscript(std::move(node));
      } else if (isOp("(")) {
        node = parseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parseSubscript(ExprPtr object) {
    DepthGuard guard(*this);
    // a[x], a[x, y] (a tuple key) or a slice a[b:c:d].
    std::vector<ExprPtr> keys;
    ExprPtr slice;
    while (!isOp("]")) {
      if (!keys.empty() || slice)
        expectOp(",");
      ExprPtr start;
      if (!isOp(":"))
        start = parseExpression(true);
      if (!isOp(":")) {
        keys.push_back(std::move(start));
        continue;
      }
      advance();
      auto s = make(Expr::Kind::Slice);
      s->b = std::move(start);
      if (!isOp("]") && !isOp(",") && !isOp(":"))
        s->c = parseExpression(true);
      if (skipOp(":")) {
        if (!isOp("]") && !isOp(","))
          s->d = parseExpression(true);
      }
      if (slice || !keys.empty())
        fail("multi-dimensional subscripts are not supported");
      slice = std::move(s);
    }
    expectOp("]");
    if (slice) {
      slice->a = std::move(object);
      return slice;
    }
    if (keys.empty())
      fail("expected a subscript");
    auto e = make(Expr::Kind::Item);
    e->a = std::move(object);
    if (keys.size() == 1) {
      e->b = std::move(keys[0]);
    } else {
      e->b = make(Expr::Kind::Tuple);
      e->b->args = std::move(keys);
    }
    return e;
  }

  void parseCallArgs(Expr &call) {
    expectOp("(");
    bool first = true;
    while (!isOp(")")) {
      if (!first)
        expectOp(",");
      first = false;
      if (isOp(")"))
        break;
      if (isOp("*") || isOp("**"))
        fail("*args and **kwargs in calls are not supported");
      if (cur().type == Type::Name && peek().type == Type::Op && peek().text == "=") {
        std::string name = cur().text;
        advance();
        advance();
        call.kwargs.emplace_back(name, parseExpression(true));
      } else {
        if (!call.kwargs.empty())
          fail("positional argument follows keyword argument");
        call.args.push_back(parseExpression(true));
      }
    }
    expectOp(")");
  }

  ExprPtr parseCall(ExprPtr callee) {
    DepthGuard guard(*this);
    auto e = make(Expr::Kind::Call);
    e->a = std::move(callee);
    parseCallArgs(*e);
    return e;
  }

  std::string dottedName() {
    std::string name = expectName();
    while (isOp(".") && peek().type == Type::Name) {
      advance();
      name += "." + expectName();
    }
    return name;
  }

  ExprPtr parseFilter(ExprPtr operand) {
    DepthGuard guard(*this);
    auto e = make(Expr::Kind::Filter);
    e->text = dottedName();
    e->a = std::move(operand);
    if (isOp("("))
      parseCallArgs(*e);
    return e;
  }

  /// `| f | g(...)` after an operand (null in filter and set blocks).
  ExprPtr parseFilterChain(ExprPtr operand) {
    if (!operand) {
      if (cur().type == Type::BlockEnd)
        return nullptr;
      if (isOp("|"))
        advance();
      operand = parseFilter(nullptr);
    }
    while (skipOp("|"))
      operand = parseFilter(std::move(operand));
    return operand;
  }

  ExprPtr parseFilterExpr(ExprPtr node) {
    while (true) {
      if (isOp("|")) {
        advance();
        node = parseFilter(std::move(node));
      } else if (isName("is")) {
        advance();
        auto e = make(Expr::Kind::Test);
        e->negated = skipName("not");
        e->text = dottedName();
        e->a = std::move(node);
        const Token &t = cur();
        if (isOp("(")) {
          parseCallArgs(*e);
        } else if ((t.type == Type::Name || t.type == Type::String || t.type == Type::Int ||
                    t.type == Type::Float || isOp("[") || isOp("{")) &&
                   !(t.type == Type::Name && (t.text == "else" || t.text == "or" || t.text == "and"))) {
          if (t.type == Type::Name && t.text == "is")
            fail("You cannot chain multiple tests with is");
          e->args.push_back(parsePostfix(parsePrimary()));
        }
        node = std::move(e);
      } else if (isOp("(")) {
        node = parseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int depth_ = 0;
  int loopDepth_ = 0;
};

} // namespace

Result<std::shared_ptr<TemplateProgram>> parseProgram(std::string_view source) {
  auto tokens = tokenize(source);
  if (!tokens)
    return tokens.status();
  try {
    Parser parser(std::move(*tokens));
    auto program = std::make_shared<TemplateProgram>();
    program->body = parser.parseTemplate();
    return program;
  } catch (const ParseError &e) {
    return Status::error(e.message);
  }
}

} // namespace llmir::jinja

// Statements and expressions, with Jinja2's scoping: a for loop's body is a
// new scope each iteration (a set inside does not leak out, hence
// namespace()), if blocks share their scope, a macro sees the scope it was
// defined in (late bound), and caller() the scope of its call block.
#include "Renderer.h"

#include <algorithm>
#include <functional>

namespace llmir::jinja {
namespace {

/// Values are compared, printed and destroyed recursively; deeper ones are
/// refused so that no template can exhaust the stack.
constexpr uint32_t kMaxValueDepth = 256;

class MacroFunction : public Callable {
public:
  MacroFunction(const Node &node, std::weak_ptr<Scope> scope) : node_(node), scope_(std::move(scope)) {}
  Value call(Renderer &r, CallArgs args) const override {
    auto scope = scope_.lock();
    if (!scope)
      r.fail("macro '" + node_.text + "' outlived its scope");
    return r.callMacro(node_, scope, std::move(args), nullptr);
  }
  std::string name() const override { return node_.text; }
  const Node &node() const { return node_; }
  std::shared_ptr<Scope> scope() const { return scope_.lock(); }

private:
  const Node &node_;
  std::weak_ptr<Scope> scope_;
};

class CallerFunction : public Callable {
public:
  CallerFunction(const Node &node, std::weak_ptr<Scope> scope) : node_(node), scope_(std::move(scope)) {}
  Value call(Renderer &r, CallArgs args) const override {
    auto scope = scope_.lock();
    if (!scope)
      r.fail("caller() outlived its call block");
    return r.callMacro(node_, scope, std::move(args), nullptr);
  }
  std::string name() const override { return "caller"; }

private:
  const Node &node_;
  std::weak_ptr<Scope> scope_;
};

/// Jinja2 rejects an unknown filter or test at compile time unless it sits
/// inside an if block or a conditional expression (where it fails only when
/// reached).
void validate(const Body &body, bool soft, std::string &error);

void validateExpr(const Expr *e, bool soft, std::string &error) {
  if (!e || !error.empty())
    return;
  if (e->kind == Expr::Kind::Filter && !soft && !isKnownFilter(e->text))
    error = "line " + std::to_string(e->line) + ": no filter named '" + e->text + "'";
  if (e->kind == Expr::Kind::Test && !soft && !isKnownTest(e->text))
    error = "line " + std::to_string(e->line) + ": no test named '" + e->text + "'";
  bool childSoft = soft || e->kind == Expr::Kind::Cond;
  for (const Expr *child : {e->a.get(), e->b.get(), e->c.get(), e->d.get()})
    validateExpr(child, childSoft, error);
  for (const auto &arg : e->args)
    validateExpr(arg.get(), childSoft, error);
  for (const auto &kw : e->kwargs)
    validateExpr(kw.second.get(), childSoft, error);
}

void validate(const Body &body, bool soft, std::string &error) {
  for (const auto &n : body) {
    if (!error.empty())
      return;
    bool inner = soft || n->kind == Node::Kind::If;
    validateExpr(n->expr.get(), soft, error);
    validateExpr(n->condition.get(), soft, error);
    for (const auto &c : n->conditions)
      validateExpr(c.get(), soft, error);
    for (const auto &d : n->params.defaults)
      validateExpr(d.get(), soft, error);
    for (const auto &b : n->branches)
      validate(b, inner, error);
    validate(n->body, inner, error);
    validate(n->elseBody, inner, error);
  }
}

} // namespace

Renderer::Renderer(const TemplateProgram &program, const RenderInputs &inputs)
    : program_(program), inputs_(inputs) {
  auto root = std::make_shared<Scope>();
  for (const auto &[name, value] : inputs.variables)
    root->set(name, value);
  scope_ = std::make_shared<Scope>();
  scope_->parent = root;
}

void Renderer::fail(std::string message) const { throw RenderFailure{std::move(message), false}; }

void Renderer::step() {
  if (++steps_ > inputs_.limits.maxSteps)
    fail("the template did too much work (more than " + std::to_string(inputs_.limits.maxSteps) +
         " steps)");
}

void Renderer::checkSize(size_t size) const {
  if (size > inputs_.limits.maxOutputBytes)
    fail("the template's output is larger than " + std::to_string(inputs_.limits.maxOutputBytes) +
         " bytes");
}

const Value &Renderer::checkDepth(const Value &v) const {
  if (v.depth() > kMaxValueDepth)
    fail("a value nests more than " + std::to_string(kMaxValueDepth) + " lists or dicts deep");
  return v;
}

std::string Renderer::run() {
  std::string out;
  renderBody(program_.body, out);
  // Break the cycles between scopes and the macros they hold.
  scope_->vars.clear();
  return out;
}

Renderer::Flow Renderer::renderBody(const Body &body, std::string &out) {
  for (const auto &node : body) {
    Flow flow = renderNode(*node, out);
    if (flow != Flow::Normal)
      return flow;
  }
  return Flow::Normal;
}

Renderer::Flow Renderer::renderNode(const Node &node, std::string &out) {
  switch (node.kind) {
  case Node::Kind::Text:
    out += node.text;
    checkSize(out.size());
    return Flow::Normal;
  case Node::Kind::Output: {
    Value v = eval(*node.expr);
    out += v.toStr();
    checkSize(out.size());
    return Flow::Normal;
  }
  case Node::Kind::If:
    for (size_t i = 0; i < node.conditions.size(); ++i)
      if (eval(*node.conditions[i]).truthy())
        return renderBody(node.branches[i], out);
    return renderBody(node.body, out);
  case Node::Kind::For: renderFor(node, out); return Flow::Normal;
  case Node::Kind::Set: assign(node.target, eval(*node.expr)); return Flow::Normal;
  case Node::Kind::SetBlock: {
    std::string captured;
    renderBody(node.body, captured);
    Value v = Value::string(std::move(captured));
    if (node.expr)
      v = evalFilterChain(*node.expr, std::move(v));
    assign(node.target, std::move(v));
    return Flow::Normal;
  }
  case Node::Kind::Macro:
    scope_->set(node.text, Value::callable(std::make_shared<MacroFunction>(node, scope_)));
    return Flow::Normal;
  case Node::Kind::CallBlock: {
    const Expr &call = *node.expr;
    Value callee = eval(*call.a);
    CallArgs args;
    for (const auto &a : call.args)
      args.positional.push_back(eval(*a));
    for (const auto &[name, e] : call.kwargs)
      args.keyword.emplace_back(name, eval(*e));
    Value caller = Value::callable(std::make_shared<CallerFunction>(node, scope_));
    if (callee.kind() == Value::Kind::Callable) {
      if (auto *macro = dynamic_cast<const MacroFunction *>(&callee.function())) {
        auto scope = macro->scope();
        if (!scope)
          fail("macro outlived its scope");
        out += callMacro(macro->node(), scope, std::move(args), &caller).toStr();
        checkSize(out.size());
        return Flow::Normal;
      }
    }
    args.keyword.emplace_back("caller", caller);
    out += this->call(callee, std::move(args)).toStr();
    checkSize(out.size());
    return Flow::Normal;
  }
  case Node::Kind::FilterBlock: {
    std::string captured;
    renderBody(node.body, captured);
    out += evalFilterChain(*node.expr, Value::string(std::move(captured))).toStr();
    checkSize(out.size());
    return Flow::Normal;
  }
  case Node::Kind::Break: return Flow::Break;
  case Node::Kind::Continue: return Flow::Continue;
  case Node::Kind::Scope: {
    auto saved = scope_;
    auto inner = std::make_shared<Scope>();
    inner->parent = saved;
    scope_ = inner;
    Flow flow;
    try {
      flow = renderBody(node.body, out);
    } catch (...) {
      scope_ = saved;
      throw;
    }
    scope_ = saved;
    return flow;
  }
  }
  return Flow::Normal;
}

void Renderer::renderFor(const Node &node, std::string &out) {
  Value iterable = eval(*node.expr);
  ValueList all = iterate(*this, iterable);
  auto saved = scope_;
  struct Restore {
    Renderer &r;
    std::shared_ptr<Scope> saved;
    ~Restore() { r.scope_ = saved; }
  } restore{*this, saved};

  ValueList items;
  if (node.condition) {
    for (Value &item : all) {
      step();
      auto probe = std::make_shared<Scope>();
      probe->parent = saved;
      scope_ = probe;
      assign(node.target, item);
      bool keep = eval(*node.condition).truthy();
      scope_ = saved;
      if (keep)
        items.push_back(std::move(item));
    }
  } else {
    items = std::move(all);
  }
  LoopState loop;
  loop.items = &items;
  for (size_t i = 0; i < items.size(); ++i) {
    step();
    auto iteration = std::make_shared<Scope>();
    iteration->parent = saved;
    loop.index = i;
    iteration->loop = &loop;
    scope_ = iteration;
    assign(node.target, items[i]);
    Flow flow = renderBody(node.body, out);
    iteration->vars.clear();
    if (flow == Flow::Break)
      break;
  }
  scope_ = saved;
  if (items.empty())
    renderBody(node.elseBody, out);
}

void Renderer::assign(const Target &target, Value value) {
  if (!target.attribute.empty()) {
    Value ns = lookup(target.names[0]);
    if (ns.kind() != Value::Kind::Namespace)
      fail("cannot assign attribute on non-namespace object");
    checkDepth(value);
    if (value.kind() == Value::Kind::Namespace && &value.entries() == &ns.entries())
      fail("a namespace cannot hold itself");
    ns.mutableEntries().set(target.attribute, std::move(value));
    return;
  }
  checkDepth(value);
  if (!target.tuple) {
    scope_->set(target.names[0], std::move(value));
    return;
  }
  ValueList parts = iterate(*this, value);
  if (parts.size() != target.names.size())
    fail(parts.size() > target.names.size()
             ? "too many values to unpack (expected " + std::to_string(target.names.size()) + ")"
             : "not enough values to unpack (expected " + std::to_string(target.names.size()) +
                   ", got " + std::to_string(parts.size()) + ")");
  for (size_t i = 0; i < parts.size(); ++i)
    scope_->set(target.names[i], std::move(parts[i]));
}

Value Renderer::loopValue(const LoopState &loop) {
  const ValueList &items = *loop.items;
  const int64_t n = int64_t(items.size()), i = int64_t(loop.index);
  Dict d;
  d.set("index", Value::integer(i + 1));
  d.set("index0", Value::integer(i));
  d.set("revindex", Value::integer(n - i));
  d.set("revindex0", Value::integer(n - i - 1));
  d.set("first", Value::boolean(i == 0));
  d.set("last", Value::boolean(i == n - 1));
  d.set("length", Value::integer(n));
  d.set("depth", Value::integer(loop.depth));
  d.set("depth0", Value::integer(loop.depth - 1));
  d.set("previtem", i > 0 ? items[size_t(i - 1)] : Value::undefined("there is no previous item"));
  d.set("nextitem", i + 1 < n ? items[size_t(i + 1)] : Value::undefined("there is no next item"));
  class Cycle : public Callable {
  public:
    explicit Cycle(int64_t index) : index_(index) {}
    Value call(Renderer &r, CallArgs args) const override {
      if (args.positional.empty())
        r.fail("no items for cycling given");
      return args.positional[size_t(index_) % args.positional.size()];
    }
    std::string name() const override { return "cycle"; }

  private:
    int64_t index_;
  };
  d.set("cycle", Value::callable(std::make_shared<Cycle>(i)));
  return Value::dict(std::move(d));
}

Value Renderer::lookup(const std::string &name) {
  for (Scope *s = scope_.get(); s; s = s->parent.get()) {
    if (Value *v = s->findLocal(name))
      return *v;
    if (s->loop && name == "loop")
      return loopValue(*s->loop);
  }
  Value global = globalFunction(name);
  if (!global.isUndefined())
    return global;
  return Value::undefined("'" + name + "' is undefined");
}

Value Renderer::callMacro(const Node &macro, const std::shared_ptr<Scope> &definedIn, CallArgs args,
                          const Value *caller) {
  if (callDepth_ >= inputs_.limits.maxCallDepth)
    fail("maximum recursion depth exceeded (macro calls nested more than " +
         std::to_string(inputs_.limits.maxCallDepth) + " deep)");
  step();
  auto frame = std::make_shared<Scope>();
  frame->parent = definedIn;
  const auto &names = macro.params.names;
  const size_t firstDefault = names.size() - macro.params.defaults.size();
  std::vector<bool> bound(names.size(), false);
  ValueList extra;
  for (size_t i = 0; i < args.positional.size(); ++i) {
    if (i < names.size()) {
      frame->set(names[i], std::move(args.positional[i]));
      bound[i] = true;
    } else {
      extra.push_back(std::move(args.positional[i]));
    }
  }
  const std::string what = macro.kind == Node::Kind::Macro ? "macro '" + macro.text + "'" : "caller";
  if (!extra.empty() && !macro.usesVarargs)
    fail(what + " takes not more than " + std::to_string(names.size()) + " argument(s)");
  Dict extraKw;
  Value callerValue;
  for (auto &[key, value] : args.keyword) {
    auto it = std::find(names.begin(), names.end(), key);
    if (it != names.end()) {
      size_t i = size_t(it - names.begin());
      if (bound[i])
        fail(what + " got multiple values for argument '" + key + "'");
      frame->set(key, std::move(value));
      bound[i] = true;
    } else if (key == "caller" && macro.usesCaller && !caller) {
      callerValue = std::move(value);
    } else if (macro.usesKwargs) {
      extraKw.set(key, std::move(value));
    } else {
      fail(what + " takes no keyword argument '" + key + "'");
    }
  }
  auto saved = scope_;
  scope_ = frame;
  struct Restore {
    Renderer &r;
    std::shared_ptr<Scope> saved;
    ~Restore() {
      r.scope_ = saved;
      --r.callDepth_;
    }
  } restore{*this, saved};
  ++callDepth_;
  for (size_t i = 0; i < names.size(); ++i) {
    if (bound[i])
      continue;
    if (i >= firstDefault)
      frame->set(names[i], eval(*macro.params.defaults[i - firstDefault]));
    else
      frame->set(names[i], Value::undefined("parameter '" + names[i] + "' was not provided"));
  }
  if (macro.usesVarargs)
    frame->set("varargs", Value::list(std::move(extra), Value::Seq::Tuple));
  if (macro.usesKwargs)
    frame->set("kwargs", Value::dict(std::move(extraKw)));
  if (macro.usesCaller)
    frame->set("caller", caller ? *caller : callerValue);
  std::string out;
  renderBody(macro.body, out);
  frame->vars.clear();
  return Value::string(std::move(out));
}

Value Renderer::call(const Value &callee, CallArgs args) {
  if (callee.kind() != Value::Kind::Callable) {
    if (callee.isUndefined())
      undefinedError(*this, callee);
    fail("'" + std::string(callee.typeName()) + "' object is not callable");
  }
  step();
  Value result = callee.function().call(*this, std::move(args));
  checkDepth(result);
  return result;
}

Value Renderer::filter(const std::string &name, Value input, CallArgs args) {
  step();
  Value result = applyFilter(*this, name, std::move(input), args);
  checkDepth(result);
  return result;
}

bool Renderer::test(const std::string &name, const Value &input, CallArgs args) {
  return applyTest(*this, name, input, args);
}

Value Renderer::evalFilterChain(const Expr &e, Value input) {
  Value operand = e.a ? evalFilterChain(*e.a, std::move(input)) : std::move(input);
  CallArgs args;
  for (const auto &a : e.args)
    args.positional.push_back(eval(*a));
  for (const auto &[name, v] : e.kwargs)
    args.keyword.emplace_back(name, eval(*v));
  return filter(e.text, std::move(operand), std::move(args));
}

Value Renderer::eval(const Expr &e) {
  switch (e.kind) {
  case Expr::Kind::Literal: return e.value;
  case Expr::Kind::Name: return lookup(e.text);
  case Expr::Kind::Attr: return getAttribute(*this, eval(*e.a), e.text);
  case Expr::Kind::Item: return getItem(*this, eval(*e.a), eval(*e.b));
  case Expr::Kind::Slice: {
    Value object = eval(*e.a);
    return slice(*this, object, e.b ? eval(*e.b) : Value::none(), e.c ? eval(*e.c) : Value::none(),
                 e.d ? eval(*e.d) : Value::none());
  }
  case Expr::Kind::Call: {
    Value callee = eval(*e.a);
    CallArgs args;
    for (const auto &a : e.args)
      args.positional.push_back(eval(*a));
    for (const auto &[name, v] : e.kwargs)
      args.keyword.emplace_back(name, eval(*v));
    return call(callee, std::move(args));
  }
  case Expr::Kind::Filter: {
    Value operand = e.a ? eval(*e.a) : Value::undefined();
    CallArgs args;
    for (const auto &a : e.args)
      args.positional.push_back(eval(*a));
    for (const auto &[name, v] : e.kwargs)
      args.keyword.emplace_back(name, eval(*v));
    return filter(e.text, std::move(operand), std::move(args));
  }
  case Expr::Kind::Test: {
    Value operand = eval(*e.a);
    CallArgs args;
    for (const auto &a : e.args)
      args.positional.push_back(eval(*a));
    for (const auto &[name, v] : e.kwargs)
      args.keyword.emplace_back(name, eval(*v));
    bool result = test(e.text, operand, std::move(args));
    return Value::boolean(e.negated ? !result : result);
  }
  case Expr::Kind::Neg:
  case Expr::Kind::Pos: {
    Value v = eval(*e.a);
    if (v.isUndefined())
      undefinedError(*this, v);
    if (v.kind() == Value::Kind::Float)
      return Value::real(e.kind == Expr::Kind::Neg ? -v.asDouble() : v.asDouble());
    if (v.kind() == Value::Kind::Int || v.kind() == Value::Kind::Bool)
      return Value::integer(e.kind == Expr::Kind::Neg ? -v.asInt() : v.asInt());
    fail(std::string("bad operand type for unary ") + (e.kind == Expr::Kind::Neg ? "-" : "+") +
         ": '" + v.typeName() + "'");
  }
  case Expr::Kind::Binary: {
    Value a = eval(*e.a);
    Value b = eval(*e.b);
    return binaryOp(*this, e.text, a, b);
  }
  case Expr::Kind::And: {
    Value a = eval(*e.a);
    return a.truthy() ? eval(*e.b) : a;
  }
  case Expr::Kind::Or: {
    Value a = eval(*e.a);
    return a.truthy() ? a : eval(*e.b);
  }
  case Expr::Kind::Not: return Value::boolean(!eval(*e.a).truthy());
  case Expr::Kind::Compare: {
    Value left = eval(*e.a);
    for (size_t i = 0; i < e.ops.size(); ++i) {
      Value right = eval(*e.args[i]);
      if (!compareOp(*this, e.ops[i], left, right))
        return Value::boolean(false);
      left = std::move(right);
    }
    return Value::boolean(true);
  }
  case Expr::Kind::Cond:
    if (eval(*e.a).truthy())
      return eval(*e.b);
    return e.c ? eval(*e.c) : Value::undefined("the inline if-expression evaluated to false and no else section was defined");
  case Expr::Kind::List:
  case Expr::Kind::Tuple: {
    ValueList items;
    items.reserve(e.args.size());
    for (const auto &a : e.args)
      items.push_back(eval(*a));
    return checkDepth(Value::list(std::move(items), e.kind == Expr::Kind::Tuple ? Value::Seq::Tuple : Value::Seq::List));
  }
  case Expr::Kind::Dict: {
    Dict d;
    for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
      Value key = eval(*e.args[i]);
      if (key.kind() == Value::Kind::List && key.seq() != Value::Seq::Tuple)
        fail("unhashable type: '" + std::string(key.typeName()) + "'");
      if (key.kind() == Value::Kind::Dict || key.isUndefined())
        fail("unhashable type: '" + std::string(key.typeName()) + "'");
      d.set(std::move(key), eval(*e.args[i + 1]));
    }
    return checkDepth(Value::dict(std::move(d)));
  }
  }
  return Value::undefined();
}

namespace {

bool isAttribute(const Expr *e, std::string_view attribute) {
  while (e && e->kind == Expr::Kind::Filter) // content | selectattr(...) and the like
    e = e->a.get();
  if (!e)
    return false;
  if (e->kind == Expr::Kind::Attr)
    return e->text == attribute;
  if (e->kind == Expr::Kind::Item)
    return e->b && e->b->kind == Expr::Kind::Literal && e->b->value.isString() &&
           e->b->value.str() == attribute;
  return false;
}

void collectAssigned(const Body &body, std::string_view attribute, std::vector<std::string> &names) {
  for (const auto &n : body) {
    if (n->kind == Node::Kind::Set && !n->target.tuple && n->target.attribute.empty() &&
        isAttribute(n->expr.get(), attribute))
      names.push_back(n->target.names[0]);
    for (const auto &b : n->branches)
      collectAssigned(b, attribute, names);
    collectAssigned(n->body, attribute, names);
    collectAssigned(n->elseBody, attribute, names);
  }
}

bool loopsOver(const Body &body, std::string_view attribute, const std::vector<std::string> &names) {
  for (const auto &n : body) {
    if (n->kind == Node::Kind::For && n->expr) {
      const Expr *e = n->expr.get();
      while (e && e->kind == Expr::Kind::Filter)
        e = e->a.get();
      if (isAttribute(e, attribute) ||
          (e && e->kind == Expr::Kind::Name &&
           std::find(names.begin(), names.end(), e->text) != names.end()))
        return true;
    }
    for (const auto &b : n->branches)
      if (loopsOver(b, attribute, names))
        return true;
    if (loopsOver(n->body, attribute, names) || loopsOver(n->elseBody, attribute, names))
      return true;
  }
  return false;
}

} // namespace

bool Template::iteratesOverAttribute(std::string_view attribute) const {
  std::vector<std::string> names;
  collectAssigned(program_->body, attribute, names);
  return loopsOver(program_->body, attribute, names);
}

Result<Template> Template::parse(std::string_view source) {
  auto program = parseProgram(source);
  if (!program)
    return program.status();
  std::string error;
  validate((*program)->body, false, error);
  if (!error.empty())
    return Status::error(error);
  return Template(std::move(*program));
}

Result<std::string> Template::render(const RenderInputs &inputs, RenderError *error) const {
  try {
    Renderer renderer(*program_, inputs);
    return renderer.run();
  } catch (const RenderFailure &f) {
    if (error)
      *error = RenderError{f.message, f.raised};
    return Status::error(f.message);
  } catch (const std::bad_alloc &) {
    if (error)
      *error = RenderError{"out of memory while rendering the template", false};
    return Status::error("out of memory while rendering the template");
  }
}

} // namespace llmir::jinja

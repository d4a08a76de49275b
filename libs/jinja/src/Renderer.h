// The tree-walking renderer and the builtins it calls (filters, tests,
// Python methods, globals). Errors are thrown as RenderFailure inside the
// library and returned as values by Template::render.
#pragma once

#include "Ast.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace llmir::jinja {

struct RenderFailure {
  std::string message;
  bool raised = false; // raise_exception()
};

/// The state of one for loop, for the `loop` variable.
struct LoopState {
  const ValueList *items = nullptr;
  size_t index = 0;
  int depth = 1;
};

struct Scope {
  std::vector<std::pair<std::string, Value>> vars;
  std::shared_ptr<Scope> parent;
  const LoopState *loop = nullptr;

  Value *findLocal(std::string_view name) {
    for (auto &[k, v] : vars)
      if (k == name)
        return &v;
    return nullptr;
  }
  void set(std::string_view name, Value value) {
    if (Value *v = findLocal(name))
      *v = std::move(value);
    else
      vars.emplace_back(std::string(name), std::move(value));
  }
};

class Renderer {
public:
  Renderer(const TemplateProgram &program, const RenderInputs &inputs);

  std::string run();

  [[noreturn]] void fail(std::string message) const;
  /// Counts work against the render's step limit.
  void step();
  /// Fails when an output or string would pass the size limit.
  void checkSize(size_t size) const;
  /// Fails when a value nests too deeply to be handled recursively.
  const Value &checkDepth(const Value &v) const;

  Value call(const Value &callee, CallArgs args);
  Value filter(const std::string &name, Value input, CallArgs args);
  bool test(const std::string &name, const Value &input, CallArgs args);

  std::optional<std::time_t> now() const { return inputs_.now; }

  // Used by macro and caller callables.
  Value callMacro(const Node &macro, const std::shared_ptr<Scope> &definedIn, CallArgs args,
                  const Value *caller);
  const RenderLimits &limits() const { return inputs_.limits; }

private:
  enum class Flow { Normal, Break, Continue };

  Flow renderBody(const Body &body, std::string &out);
  Flow renderNode(const Node &node, std::string &out);
  void renderFor(const Node &node, std::string &out);
  void assign(const Target &target, Value value);

  Value eval(const Expr &e);
  Value evalFilterChain(const Expr &e, Value input);
  Value lookup(const std::string &name);
  Value loopValue(const LoopState &loop);

  const TemplateProgram &program_;
  const RenderInputs &inputs_;
  std::shared_ptr<Scope> scope_;
  size_t steps_ = 0;
  int callDepth_ = 0;
};

// Builtins (Builtins.cpp).
Value getAttribute(Renderer &r, const Value &object, const std::string &name);
Value getItem(Renderer &r, const Value &object, const Value &key);
Value slice(Renderer &r, const Value &object, const Value &start, const Value &stop, const Value &step);
Value binaryOp(Renderer &r, const std::string &op, const Value &a, const Value &b);
bool compareOp(Renderer &r, const std::string &op, const Value &a, const Value &b);
Value globalFunction(const std::string &name);
Value applyFilter(Renderer &r, const std::string &name, Value input, CallArgs &args);
bool applyTest(Renderer &r, const std::string &name, const Value &input, CallArgs &args);
bool isKnownFilter(const std::string &name);
bool isKnownTest(const std::string &name);
/// The items a for loop (or list()) sees: list items, dict keys, characters.
ValueList iterate(Renderer &r, const Value &v);
/// Raises the error an undefined value carries when it is used.
[[noreturn]] void undefinedError(Renderer &r, const Value &v);

} // namespace llmir::jinja

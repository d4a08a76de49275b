// The parsed template: expression and statement trees, as jinja2/nodes.py
// has them (only the node kinds chat templates need).
#pragma once

#include "llmir/jinja/Template.h"
#include "llmir/jinja/Value.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace llmir::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal, // value
    Name,    // text
    Attr,    // a.text
    Item,    // a[b]
    Slice,   // a[b:c:d] (each of b, c, d optional)
    Call,    // a(args, kwargs)
    Filter,  // a | text(args, kwargs); a is null in a filter block
    Test,    // a is [not] text(args)
    Neg,     // -a
    Pos,     // +a
    Binary,  // a text b: + - * / // % ** ~
    And,     // a and b
    Or,      // a or b
    Not,     // not a
    Compare, // a ops[0] args[0] ops[1] args[1] ...
    Cond,    // b if a else c (c optional)
    List,    // [args]
    Tuple,   // (args)
    Dict,    // {args[0]: args[1], ...}
  };
  Kind kind;
  int line = 0;
  Value value;
  std::string text;
  ExprPtr a, b, c, d;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
  bool negated = false;
};

struct Node;
using Body = std::vector<std::unique_ptr<Node>>;

/// An assignment target: a name, a tuple of names, or namespace.attr.
struct Target {
  std::vector<std::string> names; // one name, or the names of a tuple
  bool tuple = false;
  std::string attribute; // set: names[0].attribute = ...
};

struct MacroParams {
  std::vector<std::string> names;
  std::vector<ExprPtr> defaults; // aligned to the last names
};

struct Node {
  enum class Kind { Text, Output, If, For, Set, SetBlock, Macro, CallBlock, FilterBlock, Break, Continue, Scope };
  Kind kind;
  int line = 0;
  std::string text;                // Text; Macro: name
  ExprPtr expr;                    // Output, For: iterable, Set: value, CallBlock: the call, FilterBlock/SetBlock: filter chain
  ExprPtr condition;               // For: the "if" filter
  std::vector<ExprPtr> conditions; // If: if, elif...
  std::vector<Body> branches;      // If: one per condition
  Body body;                       // For, SetBlock, Macro, CallBlock, FilterBlock, Scope; If: else
  Body elseBody;                   // For: else
  Target target;                   // For, Set, SetBlock
  MacroParams params;              // Macro, CallBlock (the caller's)
  bool recursive = false;          // For
  bool usesCaller = false, usesVarargs = false, usesKwargs = false; // Macro, CallBlock
};

} // namespace llmir::jinja

namespace llmir::jinja {
struct TemplateProgram {
  Body body;
};
Result<std::shared_ptr<TemplateProgram>> parseProgram(std::string_view source);
} // namespace llmir::jinja

// The values a Jinja template computes with, modelled on the Python objects
// Jinja2 uses, because chat templates rely on Python's rules: truthiness,
// str() and repr() of lists and dicts, int/float arithmetic, dicts that keep
// insertion order, and the undefined value that prints as nothing.
#pragma once

#include <boost/json/fwd.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace llmir::jinja {

class Value;
class Renderer;

using ValueList = std::vector<Value>;

class Dict;
struct CallArgs;

/// Something a template can call: a builtin global, a bound method, a macro.
class Callable {
public:
  virtual ~Callable() = default;
  virtual Value call(Renderer &renderer, CallArgs args) const = 0;
  virtual std::string name() const = 0;
};

class Value {
public:
  enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Callable };
  /// How a List kind behaves in Python: a list, a tuple, or a one-shot
  /// iterator (what select/map/reverse return: truthy, no len, no index).
  enum class Seq : uint8_t { List, Tuple, Iterator };

  Value() = default;
  static Value undefined(std::string hint = {});
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value real(double d);
  static Value string(std::string s);
  /// A markupsafe Markup string (what |safe and |escape return): adding a
  /// plain string to it HTML-escapes the plain one, as Jinja2 does.
  static Value safeString(std::string s);
  static Value list(ValueList items, Seq seq = Seq::List);
  static Value dict(Dict d);
  static Value namespaceOf(Dict d);
  static Value callable(std::shared_ptr<const Callable> fn);
  static Value fromJson(const boost::json::value &json);

  Kind kind() const { return kind_; }
  Seq seq() const { return seq_; }
  bool isUndefined() const { return kind_ == Kind::Undefined; }
  bool isNone() const { return kind_ == Kind::None; }
  bool isString() const { return kind_ == Kind::String; }
  bool isNumber() const { return kind_ == Kind::Int || kind_ == Kind::Float || kind_ == Kind::Bool; }
  bool isList() const { return kind_ == Kind::List; }
  bool isMapping() const { return kind_ == Kind::Dict; }
  bool isSafe() const { return kind_ == Kind::String && bool_; }
  /// How deeply lists and dicts nest inside this value (0 for a scalar).
  uint32_t depth() const { return depth_; }

  bool asBool() const { return bool_; }
  int64_t asInt() const { return kind_ == Kind::Bool ? int64_t(bool_) : int_; }
  double asDouble() const {
    return kind_ == Kind::Float ? double_ : double(asInt());
  }
  const std::string &str() const { return string_; } // String; Undefined: its hint
  const ValueList &items() const { return *list_; }
  const Dict &entries() const { return *dict_; }
  Dict &mutableEntries() const { return *dict_; } // Namespace
  const Callable &function() const { return *fn_; }

  /// Python's bool(x).
  bool truthy() const;
  /// Python's str(x) (Undefined is "").
  std::string toStr() const;
  /// Python's repr(x).
  std::string repr() const;
  /// Python's type name, for error messages ("str", "list", "dict"...).
  const char *typeName() const;

private:
  Kind kind_ = Kind::Undefined;
  Seq seq_ = Seq::List;
  bool bool_ = false;
  uint32_t depth_ = 0;
  int64_t int_ = 0;
  double double_ = 0;
  std::string string_;
  std::shared_ptr<const ValueList> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<const Callable> fn_;
};

/// A Python dict: insertion order, linear lookup (chat template dicts are
/// small). Keys are usually strings; numbers, None and bools work too.
class Dict {
public:
  const Value *find(std::string_view key) const;
  Value *find(std::string_view key);
  const Value *find(const Value &key) const;
  /// Inserts or replaces, keeping the first insertion's position.
  void set(std::string key, Value value);
  void set(Value key, Value value);
  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  const std::vector<std::pair<Value, Value>> &entries() const { return entries_; }

private:
  std::vector<std::pair<Value, Value>> entries_;
};

/// Positional and keyword arguments of a call.
struct CallArgs {
  ValueList positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

/// Python ==.
bool equals(const Value &a, const Value &b);

/// Python's repr of a float (shortest round trip: 0.1, 1.0, 1e+20).
std::string pythonFloat(double d);

struct JsonOptions {
  int indent = -1; // -1: no newlines
  std::string itemSeparator = ", ";
  std::string keySeparator = ": ";
  bool sortKeys = false;
  bool ensureAscii = false;
};
/// Python's json.dumps(x, ...); false when x holds something JSON cannot
/// carry (undefined, a callable, an iterator), as Python raises.
bool appendJson(std::string &out, const Value &value, const JsonOptions &options, int depth = 0);

} // namespace llmir::jinja

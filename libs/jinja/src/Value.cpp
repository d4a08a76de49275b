// Values: construction, Python's truthiness, str(), repr(), == and
// json.dumps.
#include "llmir/jinja/Value.h"

#include "Utf8.h"

#include <boost/json.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace llmir::jinja {

const Value *Dict::find(std::string_view key) const {
  for (const auto &[k, v] : entries_)
    if (k.isString() && k.str() == key)
      return &v;
  return nullptr;
}

Value *Dict::find(std::string_view key) {
  for (auto &[k, v] : entries_)
    if (k.isString() && k.str() == key)
      return &v;
  return nullptr;
}

const Value *Dict::find(const Value &key) const {
  if (key.isString())
    return find(std::string_view(key.str()));
  for (const auto &[k, v] : entries_)
    if (equals(k, key))
      return &v;
  return nullptr;
}

void Dict::set(std::string key, Value value) {
  if (Value *existing = find(key)) {
    *existing = std::move(value);
    return;
  }
  entries_.emplace_back(Value::string(std::move(key)), std::move(value));
}

void Dict::set(Value key, Value value) {
  if (const Value *existing = find(key)) {
    *const_cast<Value *>(existing) = std::move(value);
    return;
  }
  entries_.emplace_back(std::move(key), std::move(value));
}

Value Value::undefined(std::string hint) {
  Value v;
  v.string_ = std::move(hint);
  return v;
}
Value Value::none() {
  Value v;
  v.kind_ = Kind::None;
  return v;
}
Value Value::boolean(bool b) {
  Value v;
  v.kind_ = Kind::Bool;
  v.bool_ = b;
  return v;
}
Value Value::integer(int64_t i) {
  Value v;
  v.kind_ = Kind::Int;
  v.int_ = i;
  return v;
}
Value Value::real(double d) {
  Value v;
  v.kind_ = Kind::Float;
  v.double_ = d;
  return v;
}
Value Value::string(std::string s) {
  Value v;
  v.kind_ = Kind::String;
  v.string_ = std::move(s);
  return v;
}
Value Value::safeString(std::string s) {
  Value v = string(std::move(s));
  v.bool_ = true;
  return v;
}
Value Value::list(ValueList items, Seq seq) {
  Value v;
  v.kind_ = Kind::List;
  v.seq_ = seq;
  for (const Value &item : items)
    v.depth_ = std::max(v.depth_, item.depth_ + 1);
  v.list_ = std::make_shared<const ValueList>(std::move(items));
  return v;
}
Value Value::dict(Dict d) {
  Value v;
  v.kind_ = Kind::Dict;
  for (const auto &[key, item] : d.entries())
    v.depth_ = std::max(v.depth_, item.depth_ + 1);
  v.dict_ = std::make_shared<Dict>(std::move(d));
  return v;
}
Value Value::namespaceOf(Dict d) {
  Value v;
  v.kind_ = Kind::Namespace;
  v.dict_ = std::make_shared<Dict>(std::move(d));
  return v;
}
Value Value::callable(std::shared_ptr<const Callable> fn) {
  Value v;
  v.kind_ = Kind::Callable;
  v.fn_ = std::move(fn);
  return v;
}

Value Value::fromJson(const boost::json::value &json) {
  switch (json.kind()) {
  case boost::json::kind::null: return none();
  case boost::json::kind::bool_: return boolean(json.get_bool());
  case boost::json::kind::int64: return integer(json.get_int64());
  case boost::json::kind::uint64:
    if (json.get_uint64() <= uint64_t(INT64_MAX))
      return integer(int64_t(json.get_uint64()));
    return real(double(json.get_uint64()));
  case boost::json::kind::double_: return real(json.get_double());
  case boost::json::kind::string: return string(std::string(json.get_string()));
  case boost::json::kind::array: {
    ValueList items;
    items.reserve(json.get_array().size());
    for (const auto &item : json.get_array())
      items.push_back(fromJson(item));
    return list(std::move(items));
  }
  case boost::json::kind::object: {
    Dict d;
    for (const auto &[key, item] : json.get_object())
      d.set(std::string(key), fromJson(item));
    return dict(std::move(d));
  }
  }
  return none();
}

bool Value::truthy() const {
  switch (kind_) {
  case Kind::Undefined:
  case Kind::None: return false;
  case Kind::Bool: return bool_;
  case Kind::Int: return int_ != 0;
  case Kind::Float: return double_ != 0;
  case Kind::String: return !string_.empty();
  case Kind::List: return seq_ == Seq::Iterator || !list_->empty();
  case Kind::Dict: return !dict_->empty();
  case Kind::Namespace:
  case Kind::Callable: return true;
  }
  return false;
}

const char *Value::typeName() const {
  switch (kind_) {
  case Kind::Undefined: return "Undefined";
  case Kind::None: return "NoneType";
  case Kind::Bool: return "bool";
  case Kind::Int: return "int";
  case Kind::Float: return "float";
  case Kind::String: return "str";
  case Kind::List: return seq_ == Seq::Tuple ? "tuple" : seq_ == Seq::Iterator ? "generator" : "list";
  case Kind::Dict: return "dict";
  case Kind::Namespace: return "Namespace";
  case Kind::Callable: return "function";
  }
  return "object";
}

std::string pythonFloat(double d) {
  if (std::isnan(d))
    return "nan";
  if (std::isinf(d))
    return d > 0 ? "inf" : "-inf";
  if (d == 0)
    return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  // sci: [-]D[.DDD]e(+|-)XX
  bool negative = sci[0] == '-';
  size_t start = negative ? 1 : 0;
  size_t e = sci.find('e');
  std::string digits;
  for (size_t i = start; i < e; ++i)
    if (sci[i] != '.')
      digits += sci[i];
  int exponent = std::stoi(sci.substr(e + 1));
  int decpt = exponent + 1; // digits d1 d2... with the point after decpt digits
  std::string out = negative ? "-" : "";
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out += "0.";
      out.append(size_t(-decpt), '0');
      out += digits;
    } else if (size_t(decpt) >= digits.size()) {
      out += digits;
      out.append(size_t(decpt) - digits.size(), '0');
      out += ".0";
    } else {
      out += digits.substr(0, size_t(decpt));
      out += '.';
      out += digits.substr(size_t(decpt));
    }
    return out;
  }
  out += digits[0];
  if (digits.size() > 1) {
    out += '.';
    out += digits.substr(1);
  }
  char exp[16];
  std::snprintf(exp, sizeof exp, "e%c%02d", decpt - 1 < 0 ? '-' : '+', std::abs(decpt - 1));
  return out + exp;
}

namespace {

bool printable(uint32_t cp) {
  if (cp < 0x20 || cp == 0x7F)
    return false;
  if (cp >= 0x80 && cp <= 0xA0)
    return false;
  if (cp == 0xAD || (cp >= 0x200B && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202E) ||
      (cp >= 0x2060 && cp <= 0x2064) || cp == 0xFEFF || (cp >= 0xD800 && cp <= 0xDFFF))
    return false;
  if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x202F || cp == 0x205F ||
      cp == 0x3000)
    return false;
  return true;
}

void appendRepr(std::string &out, const std::string &s) {
  char quote = '\'';
  if (s.find('\'') != std::string::npos && s.find('"') == std::string::npos)
    quote = '"';
  out += quote;
  for (size_t i = 0; i < s.size();) {
    size_t n = 1;
    uint32_t cp = utf8::decode(s, i, n);
    if (cp == '\\')
      out += "\\\\";
    else if (cp == uint32_t(quote))
      (out += '\\') += quote;
    else if (cp == '\n')
      out += "\\n";
    else if (cp == '\r')
      out += "\\r";
    else if (cp == '\t')
      out += "\\t";
    else if (!printable(cp)) {
      char buf[16];
      if (cp < 0x100)
        std::snprintf(buf, sizeof buf, "\\x%02x", cp);
      else if (cp < 0x10000)
        std::snprintf(buf, sizeof buf, "\\u%04x", cp);
      else
        std::snprintf(buf, sizeof buf, "\\U%08x", cp);
      out += buf;
    } else
      out.append(s, i, n);
    i += n;
  }
  out += quote;
}

void appendReprValue(std::string &out, const Value &v, int depth);

void appendItems(std::string &out, const Value &v, int depth) {
  const ValueList &items = v.items();
  for (size_t i = 0; i < items.size(); ++i) {
    if (i)
      out += ", ";
    appendReprValue(out, items[i], depth + 1);
  }
}

void appendReprValue(std::string &out, const Value &v, int depth) {
  if (depth > 100) {
    out += "...";
    return;
  }
  switch (v.kind()) {
  case Value::Kind::String: appendRepr(out, v.str()); return;
  case Value::Kind::List:
    if (v.seq() == Value::Seq::Iterator) {
      out += "<generator object>";
    } else if (v.seq() == Value::Seq::Tuple) {
      out += '(';
      appendItems(out, v, depth);
      if (v.items().size() == 1)
        out += ',';
      out += ')';
    } else {
      out += '[';
      appendItems(out, v, depth);
      out += ']';
    }
    return;
  case Value::Kind::Dict:
  case Value::Kind::Namespace: {
    if (v.kind() == Value::Kind::Namespace)
      out += "<Namespace ";
    out += '{';
    bool first = true;
    for (const auto &[key, item] : v.entries().entries()) {
      if (!first)
        out += ", ";
      first = false;
      appendReprValue(out, key, depth + 1);
      out += ": ";
      appendReprValue(out, item, depth + 1);
    }
    out += '}';
    if (v.kind() == Value::Kind::Namespace)
      out += '>';
    return;
  }
  case Value::Kind::Undefined: out += "Undefined"; return;
  case Value::Kind::Callable: out += "<function " + v.function().name() + ">"; return;
  default: out += v.toStr(); return;
  }
}

} // namespace

std::string Value::toStr() const {
  switch (kind_) {
  case Kind::Undefined: return "";
  case Kind::None: return "None";
  case Kind::Bool: return bool_ ? "True" : "False";
  case Kind::Int: return std::to_string(int_);
  case Kind::Float: return pythonFloat(double_);
  case Kind::String: return string_;
  default: return repr();
  }
}

std::string Value::repr() const {
  std::string out;
  appendReprValue(out, *this, 0);
  return out;
}

bool equals(const Value &a, const Value &b) {
  using K = Value::Kind;
  if (a.isNumber() && b.isNumber()) {
    if (a.kind() == K::Float || b.kind() == K::Float)
      return a.asDouble() == b.asDouble();
    return a.asInt() == b.asInt();
  }
  if (a.kind() != b.kind())
    return false;
  switch (a.kind()) {
  case K::Undefined:
  case K::None: return true;
  case K::String: return a.str() == b.str();
  case K::List: {
    if (a.seq() != b.seq() || a.seq() == Value::Seq::Iterator)
      return a.seq() != Value::Seq::Iterator ? false : &a.items() == &b.items();
    const ValueList &x = a.items(), &y = b.items();
    if (x.size() != y.size())
      return false;
    for (size_t i = 0; i < x.size(); ++i)
      if (!equals(x[i], y[i]))
        return false;
    return true;
  }
  case K::Dict: {
    const Dict &x = a.entries(), &y = b.entries();
    if (x.size() != y.size())
      return false;
    for (const auto &[key, item] : x.entries()) {
      const Value *other = y.find(key);
      if (!other || !equals(item, *other))
        return false;
    }
    return true;
  }
  case K::Namespace: return &a.entries() == &b.entries();
  case K::Callable: return &a.function() == &b.function();
  default: return false;
  }
}

namespace {

void appendJsonString(std::string &out, const std::string &s, bool ensureAscii) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80 && ensureAscii) {
      size_t n = 1;
      uint32_t cp = utf8::decode(s, i, n);
      char buf[16];
      if (cp >= 0x10000) {
        cp -= 0x10000;
        std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
      } else {
        std::snprintf(buf, sizeof buf, "\\u%04x", cp);
      }
      out += buf;
      i += n;
      continue;
    }
    switch (c) {
    case '"': out += "\\\""; break;
    case '\\': out += "\\\\"; break;
    case '\n': out += "\\n"; break;
    case '\r': out += "\\r"; break;
    case '\t': out += "\\t"; break;
    case '\b': out += "\\b"; break;
    case '\f': out += "\\f"; break;
    default:
      if (c < 0x20 || (c == 0x7F && ensureAscii)) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", c);
        out += buf;
      } else {
        out += char(c);
      }
    }
    ++i;
  }
  out += '"';
}

/// json.dumps turns non-string keys into strings.
std::string jsonKey(const Value &key) {
  switch (key.kind()) {
  case Value::Kind::None: return "null";
  case Value::Kind::Bool: return key.asBool() ? "true" : "false";
  default: return key.toStr();
  }
}

void newline(std::string &out, const JsonOptions &o, int depth) {
  out += '\n';
  out.append(size_t(o.indent) * size_t(depth), ' ');
}

} // namespace

bool appendJson(std::string &out, const Value &v, const JsonOptions &o, int depth) {
  if (depth > 200)
    return false;
  switch (v.kind()) {
  case Value::Kind::None: out += "null"; return true;
  case Value::Kind::Bool: out += v.asBool() ? "true" : "false"; return true;
  case Value::Kind::Int: out += std::to_string(v.asInt()); return true;
  case Value::Kind::Float: {
    double d = v.asDouble();
    if (std::isnan(d))
      out += "NaN";
    else if (std::isinf(d))
      out += d > 0 ? "Infinity" : "-Infinity";
    else
      out += pythonFloat(d);
    return true;
  }
  case Value::Kind::String: appendJsonString(out, v.str(), o.ensureAscii); return true;
  case Value::Kind::List: {
    if (v.seq() == Value::Seq::Iterator)
      return false;
    const ValueList &items = v.items();
    if (items.empty()) {
      out += "[]";
      return true;
    }
    out += '[';
    for (size_t i = 0; i < items.size(); ++i) {
      if (i)
        out += o.itemSeparator;
      if (o.indent >= 0)
        newline(out, o, depth + 1);
      if (!appendJson(out, items[i], o, depth + 1))
        return false;
    }
    if (o.indent >= 0)
      newline(out, o, depth);
    out += ']';
    return true;
  }
  case Value::Kind::Dict: {
    const auto &entries = v.entries().entries();
    if (entries.empty()) {
      out += "{}";
      return true;
    }
    std::vector<const std::pair<Value, Value> *> order;
    order.reserve(entries.size());
    for (const auto &entry : entries)
      order.push_back(&entry);
    if (o.sortKeys)
      std::stable_sort(order.begin(), order.end(),
                       [](auto *a, auto *b) { return jsonKey(a->first) < jsonKey(b->first); });
    out += '{';
    for (size_t i = 0; i < order.size(); ++i) {
      if (i)
        out += o.itemSeparator;
      if (o.indent >= 0)
        newline(out, o, depth + 1);
      appendJsonString(out, jsonKey(order[i]->first), o.ensureAscii);
      out += o.keySeparator;
      if (!appendJson(out, order[i]->second, o, depth + 1))
        return false;
    }
    if (o.indent >= 0)
      newline(out, o, depth);
    out += '}';
    return true;
  }
  default: return false;
  }
}

} // namespace llmir::jinja

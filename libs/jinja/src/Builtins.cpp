// Jinja2's filters and tests, the Python methods of str, dict and list that
// the sandbox allows (the mutating ones raise, as in transformers'
// ImmutableSandboxedEnvironment), operators with Python's rules, and the
// globals range, namespace, dict, raise_exception and strftime_now.
#include "Renderer.h"
#include "Utf8.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ctime>
#include <map>

namespace llmir::jinja {

[[noreturn]] void undefinedError(Renderer &r, const Value &v) {
  r.fail(v.str().empty() ? "value is undefined" : v.str());
}

namespace {

// ------------------------------------------------------------------ helpers

class Args {
public:
  Args(Renderer &r, CallArgs &args, std::string what) : r_(r), args_(args), what_(std::move(what)) {}

  /// The argument at `pos` or named `name` (nullptr when absent).
  const Value *get(size_t pos, std::string_view name) const {
    if (pos < args_.positional.size())
      return &args_.positional[pos];
    for (const auto &[k, v] : args_.keyword)
      if (k == name)
        return &v;
    return nullptr;
  }
  Value value(size_t pos, std::string_view name, Value fallback = Value::none()) const {
    const Value *v = get(pos, name);
    return v ? *v : fallback;
  }
  bool flag(size_t pos, std::string_view name, bool fallback) const {
    const Value *v = get(pos, name);
    return v ? v->truthy() : fallback;
  }
  int64_t integer(size_t pos, std::string_view name, int64_t fallback) const {
    const Value *v = get(pos, name);
    if (!v || v->isNone())
      return fallback;
    if (v->kind() != Value::Kind::Int && v->kind() != Value::Kind::Bool)
      r_.fail(what_ + ": '" + std::string(name) + "' must be an integer, not " + v->typeName());
    return v->asInt();
  }
  std::string string(size_t pos, std::string_view name, std::string fallback) const {
    const Value *v = get(pos, name);
    if (!v)
      return fallback;
    if (!v->isString())
      r_.fail(what_ + ": '" + std::string(name) + "' must be a string, not " + v->typeName());
    return v->str();
  }
  void atMost(size_t n) const {
    if (args_.positional.size() > n)
      r_.fail(what_ + " takes at most " + std::to_string(n) + " argument(s) (" +
              std::to_string(args_.positional.size()) + " given)");
  }
  size_t count() const { return args_.positional.size(); }
  CallArgs &raw() { return args_; }

private:
  Renderer &r_;
  CallArgs &args_;
  std::string what_;
};

const std::string &needString(Renderer &r, const Value &v, const char *what) {
  if (!v.isString())
    r.fail(std::string(what) + " needs a string, not " + v.typeName());
  return v.str();
}

/// Python's str() of a value, failing on undefined only where Jinja does.
std::string softStr(const Value &v) { return v.toStr(); }

bool isSpaceCp(uint32_t cp) { return utf8::isSpace(cp); }

std::string htmlEscape(const std::string &s);

std::vector<uint32_t> codepoints(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t n = 1;
    out.push_back(utf8::decode(s, i, n));
    i += n;
  }
  return out;
}

std::string fromCodepoints(const std::vector<uint32_t> &cps, size_t begin, size_t end) {
  std::string out;
  for (size_t i = begin; i < end; ++i)
    utf8::append(out, cps[i]);
  return out;
}

/// Python's str.strip/lstrip/rstrip.
std::string strip(const std::string &s, const Value *chars, bool left, bool right) {
  std::vector<uint32_t> cps = codepoints(s);
  std::vector<uint32_t> set;
  bool whitespace = !chars || chars->isNone();
  if (!whitespace)
    set = codepoints(chars->str());
  auto strippable = [&](uint32_t cp) {
    return whitespace ? isSpaceCp(cp) : std::find(set.begin(), set.end(), cp) != set.end();
  };
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strippable(cps[b]))
      ++b;
  if (right)
    while (e > b && strippable(cps[e - 1]))
      --e;
  return fromCodepoints(cps, b, e);
}

std::string mapCase(const std::string &s, uint32_t (*f)(uint32_t)) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t n = 1;
    uint32_t cp = utf8::decode(s, i, n);
    if (cp < 0x80)
      out += char(f(cp));
    else
      utf8::append(out, f(cp));
    i += n;
  }
  return out;
}
std::string upper(const std::string &s) { return mapCase(s, utf8::toUpper); }
std::string lower(const std::string &s) { return mapCase(s, utf8::toLower); }

std::string capitalize(const std::string &s) {
  std::vector<uint32_t> cps = codepoints(s);
  std::string out;
  for (size_t i = 0; i < cps.size(); ++i)
    utf8::append(out, i == 0 ? utf8::toUpper(cps[i]) : utf8::toLower(cps[i]));
  return out;
}

/// Python's str.title(): a letter after a non-letter starts a word.
std::string title(const std::string &s) {
  std::string out;
  bool previousCased = false;
  for (uint32_t cp : codepoints(s)) {
    bool cased = utf8::isAlpha(cp);
    utf8::append(out, cased ? (previousCased ? utf8::toLower(cp) : utf8::toUpper(cp)) : cp);
    previousCased = cased;
  }
  return out;
}

/// Jinja's title filter: words split on spaces, brackets and braces.
std::string jinjaTitle(const std::string &s) {
  std::string out;
  bool wordStart = true;
  for (uint32_t cp : codepoints(s)) {
    bool separator = isSpaceCp(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
    if (separator) {
      utf8::append(out, cp);
      wordStart = true;
      continue;
    }
    utf8::append(out, wordStart ? utf8::toUpper(cp) : utf8::toLower(cp));
    wordStart = false;
  }
  return out;
}

std::string replaceAll(const std::string &s, const std::string &from, const std::string &to, int64_t count) {
  if (count == 0)
    return s;
  std::string out;
  if (from.empty()) {
    // Python inserts `to` between every character (and at both ends).
    std::vector<uint32_t> cps = codepoints(s);
    int64_t done = 0;
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || done < count) {
        out += to;
        ++done;
      }
      if (i < cps.size())
        utf8::append(out, cps[i]);
    }
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t hit = s.find(from, pos);
    if (hit == std::string::npos)
      break;
    out.append(s, pos, hit - pos);
    out += to;
    pos = hit + from.size();
    ++done;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

ValueList split(Renderer &r, const std::string &s, const Value *sep, int64_t maxsplit, bool fromRight) {
  ValueList parts;
  if (!sep || sep->isNone()) {
    // Runs of whitespace separate; no empty parts.
    std::vector<uint32_t> cps = codepoints(s);
    std::vector<std::pair<size_t, size_t>> words;
    size_t i = 0;
    while (i < cps.size()) {
      while (i < cps.size() && isSpaceCp(cps[i]))
        ++i;
      if (i >= cps.size())
        break;
      size_t b = i;
      while (i < cps.size() && !isSpaceCp(cps[i]))
        ++i;
      words.emplace_back(b, i);
    }
    if (maxsplit >= 0 && int64_t(words.size()) > maxsplit + 1) {
      if (!fromRight) {
        size_t b = words[size_t(maxsplit)].first;
        size_t e = cps.size();
        while (e > b && isSpaceCp(cps[e - 1]))
          --e;
        words.resize(size_t(maxsplit));
        words.emplace_back(b, e);
      } else {
        size_t keep = size_t(maxsplit);
        size_t cut = words.size() - keep;
        size_t b = 0;
        while (b < cps.size() && isSpaceCp(cps[b]))
          ++b;
        std::vector<std::pair<size_t, size_t>> out{{b, words[cut - 1].second}};
        out.insert(out.end(), words.begin() + long(cut), words.end());
        words = std::move(out);
      }
    }
    for (auto [b, e] : words)
      parts.push_back(Value::string(fromCodepoints(cps, b, e)));
    return parts;
  }
  const std::string &separator = needString(r, *sep, "split");
  if (separator.empty())
    r.fail("empty separator");
  if (!fromRight) {
    size_t pos = 0;
    int64_t done = 0;
    while (maxsplit < 0 || done < maxsplit) {
      size_t hit = s.find(separator, pos);
      if (hit == std::string::npos)
        break;
      parts.push_back(Value::string(s.substr(pos, hit - pos)));
      pos = hit + separator.size();
      ++done;
    }
    parts.push_back(Value::string(s.substr(pos)));
    return parts;
  }
  std::vector<std::string> reversed;
  size_t end = s.size();
  int64_t done = 0;
  while (maxsplit < 0 || done < maxsplit) {
    if (end < separator.size())
      break;
    size_t hit = s.rfind(separator, end - separator.size());
    if (hit == std::string::npos)
      break;
    reversed.push_back(s.substr(hit + separator.size(), end - hit - separator.size()));
    end = hit;
    ++done;
  }
  reversed.push_back(s.substr(0, end));
  for (auto it = reversed.rbegin(); it != reversed.rend(); ++it)
    parts.push_back(Value::string(*it));
  return parts;
}

int64_t checkedInt(Renderer &r, __int128 v) {
  if (v > INT64_MAX || v < INT64_MIN)
    r.fail("integer overflow");
  return int64_t(v);
}

int64_t floorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0)))
    --q;
  return q;
}

int64_t pyMod(int64_t a, int64_t b) {
  int64_t m = a % b;
  if (m != 0 && ((m < 0) != (b < 0)))
    m += b;
  return m;
}

double pyFmod(double a, double b) {
  double m = std::fmod(a, b);
  if (m != 0 && ((m < 0) != (b < 0)))
    m += b;
  return m;
}

std::string repeat(Renderer &r, const std::string &s, int64_t n) {
  if (n <= 0)
    return "";
  r.checkSize(s.size() * size_t(std::min<int64_t>(n, int64_t(1) << 40)));
  std::string out;
  out.reserve(s.size() * size_t(n));
  for (int64_t i = 0; i < n; ++i)
    out += s;
  return out;
}

// ------------------------------------------------ printf-style formatting

std::string formatPercent(Renderer &r, const std::string &fmt, const Value &args) {
  ValueList positional;
  const Dict *named = args.kind() == Value::Kind::Dict ? &args.entries() : nullptr;
  if (args.isList() && args.seq() == Value::Seq::Tuple)
    positional = args.items();
  else if (!named)
    positional.push_back(args);
  size_t next = 0;
  std::string out;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    if (++i >= fmt.size())
      r.fail("incomplete format");
    const Value *arg = nullptr;
    if (fmt[i] == '(') {
      size_t close = fmt.find(')', i);
      if (close == std::string::npos || !named)
        r.fail("format requires a mapping");
      arg = named->find(fmt.substr(i + 1, close - i - 1));
      if (!arg)
        r.fail("KeyError: '" + fmt.substr(i + 1, close - i - 1) + "'");
      i = close + 1;
    }
    std::string flags;
    while (i < fmt.size() && std::strchr("-+ 0#", fmt[i]))
      flags += fmt[i++];
    std::string width;
    while (i < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[i])))
      width += fmt[i++];
    std::string precision;
    if (i < fmt.size() && fmt[i] == '.') {
      ++i;
      precision = "0";
      while (i < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[i])))
        precision += fmt[i++];
    }
    if (i >= fmt.size())
      r.fail("incomplete format");
    char conv = fmt[i];
    if (conv == '%') {
      out += '%';
      continue;
    }
    if (!arg) {
      if (next >= positional.size())
        r.fail("not enough arguments for format string");
      arg = &positional[next++];
    }
    std::string piece;
    char buf[512];
    std::string spec = "%" + flags + width.substr(0, 3) + (precision.empty() ? "" : "." + precision.substr(0, 3));
    switch (conv) {
    case 's': piece = softStr(*arg); break;
    case 'r': piece = arg->repr(); break;
    case 'd':
    case 'i':
    case 'u':
      if (!arg->isNumber())
        r.fail(std::string("%") + conv + " format: a real number is required, not " + arg->typeName());
      std::snprintf(buf, sizeof buf, (spec + "lld").c_str(),
                    (long long)(arg->kind() == Value::Kind::Float ? int64_t(arg->asDouble()) : arg->asInt()));
      piece = buf;
      break;
    case 'f':
    case 'F':
    case 'e':
    case 'E':
    case 'g':
    case 'G':
      if (!arg->isNumber())
        r.fail(std::string("must be real number, not ") + arg->typeName());
      std::snprintf(buf, sizeof buf, (spec + conv).c_str(), arg->asDouble());
      piece = buf;
      break;
    case 'x':
    case 'X':
    case 'o':
      if (!arg->isNumber())
        r.fail(std::string("%") + conv + " format: an integer is required");
      std::snprintf(buf, sizeof buf, (spec + "ll" + conv).c_str(), (long long)arg->asInt());
      piece = buf;
      break;
    case 'c': piece = arg->isString() ? arg->str() : std::string(1, char(arg->asInt())); break;
    default: r.fail(std::string("unsupported format character '") + conv + "'");
    }
    if (conv == 's' || conv == 'r' || conv == 'c') {
      size_t w = width.empty() ? 0 : size_t(std::stoul(width.substr(0, 6)));
      if (!precision.empty())
        piece = fromCodepoints(codepoints(piece), 0, std::min(codepoints(piece).size(), size_t(std::stoul(precision.substr(0, 6)))));
      size_t len = utf8::length(piece);
      if (len < w)
        piece = flags.find('-') != std::string::npos ? piece + std::string(w - len, ' ')
                                                     : std::string(w - len, ' ') + piece;
    }
    out += piece;
  }
  if (!named && next < positional.size())
    r.fail("not all arguments converted during string formatting");
  return out;
}

/// Python's str.format with {} / {0} / {name} fields and !r/!s conversions
/// (format specs limited to fill, alignment and width).
std::string formatBraces(Renderer &r, const std::string &fmt, CallArgs &args) {
  std::string out;
  size_t auto_ = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    char c = fmt[i];
    if (c == '}') {
      if (i + 1 < fmt.size() && fmt[i + 1] == '}') {
        out += '}';
        ++i;
        continue;
      }
      r.fail("Single '}' encountered in format string");
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (i + 1 < fmt.size() && fmt[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    size_t close = fmt.find('}', i);
    if (close == std::string::npos)
      r.fail("Single '{' encountered in format string");
    std::string field = fmt.substr(i + 1, close - i - 1);
    i = close;
    std::string spec, conversion;
    if (size_t colon = field.find(':'); colon != std::string::npos) {
      spec = field.substr(colon + 1);
      field = field.substr(0, colon);
    }
    if (size_t bang = field.find('!'); bang != std::string::npos) {
      conversion = field.substr(bang + 1);
      field = field.substr(0, bang);
    }
    const Value *arg = nullptr;
    if (field.empty()) {
      if (auto_ >= args.positional.size())
        r.fail("Replacement index " + std::to_string(auto_) + " out of range for positional args tuple");
      arg = &args.positional[auto_++];
    } else if (std::all_of(field.begin(), field.end(), [](char d) { return std::isdigit(static_cast<unsigned char>(d)); })) {
      size_t idx = size_t(std::stoul(field.substr(0, 9)));
      if (idx >= args.positional.size())
        r.fail("Replacement index " + field + " out of range for positional args tuple");
      arg = &args.positional[idx];
    } else {
      for (const auto &[k, v] : args.keyword)
        if (k == field)
          arg = &v;
      if (!arg)
        r.fail("KeyError: '" + field + "'");
    }
    std::string piece = conversion == "r" ? arg->repr() : softStr(*arg);
    if (!spec.empty()) {
      char fill = ' ', align = arg->isNumber() ? '>' : '<';
      size_t k = 0;
      if (spec.size() >= 2 && std::strchr("<>^", spec[1])) {
        fill = spec[0];
        align = spec[1];
        k = 2;
      } else if (std::strchr("<>^", spec[0])) {
        align = spec[0];
        k = 1;
      }
      std::string width = spec.substr(k);
      if (!std::all_of(width.begin(), width.end(), [](char d) { return std::isdigit(static_cast<unsigned char>(d)); }))
        r.fail("unsupported format spec '" + spec + "'");
      size_t w = width.empty() ? 0 : size_t(std::stoul(width.substr(0, 6)));
      size_t len = utf8::length(piece);
      if (len < w) {
        size_t pad = w - len;
        if (align == '<')
          piece += std::string(pad, fill);
        else if (align == '>')
          piece = std::string(pad, fill) + piece;
        else
          piece = std::string(pad / 2, fill) + piece + std::string(pad - pad / 2, fill);
      }
    }
    out += piece;
  }
  return out;
}

// --------------------------------------------------------------- methods

class BoundMethod : public Callable {
public:
  BoundMethod(Value self, std::string name) : self_(std::move(self)), name_(std::move(name)) {}
  Value call(Renderer &r, CallArgs args) const override;
  std::string name() const override { return name_; }

private:
  Value self_;
  std::string name_;
};

const char *const kStrMethods[] = {
    "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "startswith", "endswith",
    "replace", "upper", "lower", "title", "capitalize", "swapcase", "casefold", "format", "join",
    "find", "rfind", "index", "rindex", "count", "isdigit", "isalpha", "isalnum", "isspace",
    "islower", "isupper", "isnumeric", "isdecimal", "istitle", "center", "ljust", "rjust", "zfill",
    "partition", "rpartition", "removeprefix", "removesuffix", "encode", "expandtabs", "format_map"};
const char *const kDictMethods[] = {"get", "items", "keys", "values", "copy", "pop", "popitem",
                                    "setdefault", "update", "clear", "fromkeys"};
const char *const kListMethods[] = {"index", "count", "copy", "append", "extend", "insert",
                                    "pop", "remove", "reverse", "sort", "clear"};

template <size_t N> bool contains(const char *const (&names)[N], const std::string &name) {
  for (const char *n : names)
    if (name == n)
      return true;
  return false;
}

bool startsWithAny(Renderer &r, const std::string &s, const Value &prefix, bool ends,
                   const Args &a) {
  std::vector<uint32_t> cps;
  int64_t start = a.integer(1, "start", 0), end = a.integer(2, "end", INT64_MAX);
  std::string window = s;
  if (start != 0 || end != INT64_MAX) {
    cps = codepoints(s);
    int64_t n = int64_t(cps.size());
    if (start < 0)
      start = std::max<int64_t>(0, start + n);
    if (end < 0)
      end = std::max<int64_t>(0, end + n);
    end = std::min(end, n);
    if (start > n)
      return false;
    window = start < end ? fromCodepoints(cps, size_t(start), size_t(end)) : "";
  }
  auto one = [&](const std::string &p) {
    if (p.size() > window.size())
      return false;
    return ends ? window.compare(window.size() - p.size(), p.size(), p) == 0
                : window.compare(0, p.size(), p) == 0;
  };
  if (prefix.isString())
    return one(prefix.str());
  if (prefix.isList() && prefix.seq() == Value::Seq::Tuple) {
    for (const Value &p : prefix.items())
      if (one(needString(r, p, ends ? "endswith" : "startswith")))
        return true;
    return false;
  }
  r.fail(std::string(ends ? "endswith" : "startswith") +
         " first arg must be str or a tuple of str, not " + prefix.typeName());
}

int64_t findIn(const std::string &s, const std::string &sub, bool fromRight) {
  size_t hit = fromRight ? s.rfind(sub) : s.find(sub);
  if (hit == std::string::npos)
    return -1;
  return int64_t(utf8::length(std::string_view(s).substr(0, hit)));
}

Value strMethod(Renderer &r, const std::string &s, const std::string &name, CallArgs &call) {
  Args a(r, call, "str." + name);
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    a.atMost(1);
    const Value *chars = a.get(0, "chars");
    if (chars && !chars->isNone() && !chars->isString())
      r.fail(name + " arg must be None or str");
    return Value::string(strip(s, chars, name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    a.atMost(2);
    return Value::list(split(r, s, a.get(0, "sep"), a.integer(1, "maxsplit", -1), name == "rsplit"));
  }
  if (name == "splitlines") {
    ValueList lines;
    bool keep = a.flag(0, "keepends", false);
    size_t start = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\n' || s[i] == '\r') {
        size_t end = i;
        if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n')
          ++i;
        lines.push_back(Value::string(s.substr(start, (keep ? i + 1 : end) - start)));
        start = i + 1;
      }
    }
    if (start < s.size())
      lines.push_back(Value::string(s.substr(start)));
    return Value::list(std::move(lines));
  }
  if (name == "startswith" || name == "endswith") {
    const Value *prefix = a.get(0, "prefix");
    if (!prefix)
      r.fail(name + "() takes at least 1 argument (0 given)");
    return Value::boolean(startsWithAny(r, s, *prefix, name == "endswith", a));
  }
  if (name == "replace") {
    a.atMost(3);
    const Value *from = a.get(0, "old"), *to = a.get(1, "new");
    if (!from || !to)
      r.fail("replace expected at least 2 arguments");
    return Value::string(replaceAll(s, needString(r, *from, "replace"), needString(r, *to, "replace"),
                                    a.integer(2, "count", -1)));
  }
  if (name == "upper")
    return Value::string(upper(s));
  if (name == "lower" || name == "casefold")
    return Value::string(lower(s));
  if (name == "title")
    return Value::string(title(s));
  if (name == "capitalize")
    return Value::string(capitalize(s));
  if (name == "swapcase") {
    std::string out;
    for (uint32_t cp : codepoints(s))
      utf8::append(out, utf8::toUpper(cp) != cp ? utf8::toUpper(cp) : utf8::toLower(cp));
    return Value::string(out);
  }
  if (name == "format")
    return Value::string(formatBraces(r, s, call));
  if (name == "join") {
    const Value *items = a.get(0, "iterable");
    if (!items)
      r.fail("join() takes exactly one argument");
    std::string out;
    bool first = true;
    for (const Value &item : iterate(r, *items)) {
      if (!item.isString())
        r.fail("sequence item: expected str instance, " + std::string(item.typeName()) + " found");
      if (!first)
        out += s;
      first = false;
      out += item.str();
      r.checkSize(out.size());
    }
    return Value::string(out);
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex") {
    std::string sub = needString(r, a.value(0, "sub"), name.c_str());
    int64_t at = findIn(s, sub, name[0] == 'r');
    if (at < 0 && (name == "index" || name == "rindex"))
      r.fail("substring not found");
    return Value::integer(at);
  }
  if (name == "count") {
    std::string sub = needString(r, a.value(0, "sub"), "count");
    if (sub.empty())
      return Value::integer(int64_t(utf8::length(s)) + 1);
    int64_t n = 0;
    for (size_t pos = s.find(sub); pos != std::string::npos; pos = s.find(sub, pos + sub.size()))
      ++n;
    return Value::integer(n);
  }
  auto all = [&](auto pred) {
    std::vector<uint32_t> cps = codepoints(s);
    return Value::boolean(!cps.empty() && std::all_of(cps.begin(), cps.end(), pred));
  };
  if (name == "isdigit" || name == "isnumeric" || name == "isdecimal")
    return all(utf8::isDigit);
  if (name == "isalpha")
    return all(utf8::isAlpha);
  if (name == "isalnum")
    return all([](uint32_t c) { return utf8::isAlpha(c) || utf8::isDigit(c); });
  if (name == "isspace")
    return all(isSpaceCp);
  if (name == "islower" || name == "isupper") {
    bool anyCased = false;
    for (uint32_t cp : codepoints(s)) {
      bool isUpper = utf8::toLower(cp) != cp, isLower = utf8::toUpper(cp) != cp;
      if (isUpper || isLower)
        anyCased = true;
      if (name == "islower" ? isUpper : isLower)
        return Value::boolean(false);
    }
    return Value::boolean(anyCased);
  }
  if (name == "istitle")
    return Value::boolean(!s.empty() && title(s) == s);
  if (name == "center" || name == "ljust" || name == "rjust") {
    int64_t width = a.integer(0, "width", 0);
    std::string fill = a.string(1, "fillchar", " ");
    if (utf8::length(fill) != 1)
      r.fail("The fill character must be exactly one character long");
    int64_t len = int64_t(utf8::length(s));
    if (width <= len)
      return Value::string(s);
    r.checkSize(size_t(width) * fill.size());
    int64_t pad = width - len;
    int64_t left = name == "ljust" ? 0 : name == "rjust" ? pad : pad / 2 + (pad & width & 1);
    std::string out;
    for (int64_t i = 0; i < left; ++i)
      out += fill;
    out += s;
    for (int64_t i = 0; i < pad - left; ++i)
      out += fill;
    return Value::string(out);
  }
  if (name == "zfill") {
    int64_t width = a.integer(0, "width", 0);
    int64_t len = int64_t(utf8::length(s));
    if (width <= len)
      return Value::string(s);
    r.checkSize(size_t(width));
    size_t sign = !s.empty() && (s[0] == '-' || s[0] == '+') ? 1 : 0;
    return Value::string(s.substr(0, sign) + std::string(size_t(width - len), '0') + s.substr(sign));
  }
  if (name == "partition" || name == "rpartition") {
    std::string sep = needString(r, a.value(0, "sep"), name.c_str());
    if (sep.empty())
      r.fail("empty separator");
    size_t hit = name == "partition" ? s.find(sep) : s.rfind(sep);
    if (hit == std::string::npos)
      return name == "partition"
                 ? Value::list({Value::string(s), Value::string(""), Value::string("")}, Value::Seq::Tuple)
                 : Value::list({Value::string(""), Value::string(""), Value::string(s)}, Value::Seq::Tuple);
    return Value::list({Value::string(s.substr(0, hit)), Value::string(sep),
                        Value::string(s.substr(hit + sep.size()))},
                       Value::Seq::Tuple);
  }
  if (name == "removeprefix" || name == "removesuffix") {
    std::string affix = needString(r, a.value(0, "prefix"), name.c_str());
    if (name == "removeprefix" && s.compare(0, affix.size(), affix) == 0)
      return Value::string(s.substr(affix.size()));
    if (name == "removesuffix" && !affix.empty() && s.size() >= affix.size() &&
        s.compare(s.size() - affix.size(), affix.size(), affix) == 0)
      return Value::string(s.substr(0, s.size() - affix.size()));
    return Value::string(s);
  }
  r.fail("'str' object has no attribute '" + name + "'");
}

Value BoundMethod::call(Renderer &r, CallArgs args) const {
  if (self_.isString())
    return strMethod(r, self_.str(), name_, args);
  Args a(r, args, name_);
  if (self_.kind() == Value::Kind::Dict) {
    const Dict &d = self_.entries();
    if (name_ == "get") {
      a.atMost(2);
      const Value *key = a.get(0, "key");
      if (!key)
        r.fail("get expected at least 1 argument, got 0");
      if (true)
        if (const Value *v = d.find(*key))
          return *v;
      return a.value(1, "default");
    }
    if (name_ == "items" || name_ == "keys" || name_ == "values") {
      ValueList out;
      for (const auto &[k, v] : d.entries()) {
        if (name_ == "items")
          out.push_back(Value::list({k, v}, Value::Seq::Tuple));
        else
          out.push_back(name_ == "keys" ? k : v);
      }
      return Value::list(std::move(out));
    }
    if (name_ == "copy")
      return Value::dict(d);
    r.fail("access to attribute '" + name_ + "' of 'dict' object is unsafe.");
  }
  if (self_.isList()) {
    const ValueList &items = self_.items();
    if (name_ == "index" || name_ == "count") {
      const Value *needle = a.get(0, "value");
      if (!needle)
        r.fail(name_ + "() takes at least 1 argument");
      int64_t n = 0;
      for (size_t i = 0; i < items.size(); ++i) {
        if (equals(items[i], *needle)) {
          if (name_ == "index")
            return Value::integer(int64_t(i));
          ++n;
        }
      }
      if (name_ == "index")
        r.fail(needle->repr() + " is not in list");
      return Value::integer(n);
    }
    if (name_ == "copy")
      return Value::list(items);
    r.fail("access to attribute '" + name_ + "' of '" + self_.typeName() + "' object is unsafe.");
  }
  r.fail("'" + std::string(self_.typeName()) + "' object has no attribute '" + name_ + "'");
}

Value method(const Value &self, const std::string &name) {
  return Value::callable(std::make_shared<BoundMethod>(self, name));
}

// ------------------------------------------------------------- sequences

int64_t lengthOf(Renderer &r, const Value &v) {
  switch (v.kind()) {
  case Value::Kind::Undefined: return 0;
  case Value::Kind::String: return int64_t(utf8::length(v.str()));
  case Value::Kind::List:
    if (v.seq() == Value::Seq::Iterator)
      r.fail("object of type 'generator' has no len()");
    return int64_t(v.items().size());
  case Value::Kind::Dict: return int64_t(v.entries().size());
  default: r.fail("object of type '" + std::string(v.typeName()) + "' has no len()");
  }
}

/// Python's < for sort and min/max.
bool lessThan(Renderer &r, const Value &a, const Value &b) { return compareOp(r, "<", a, b); }

/// The attribute `path` ("a.b" or "0") of `item`, as Jinja's make_attrgetter.
Value attrOf(Renderer &r, const Value &item, const Value &path) {
  if (path.kind() == Value::Kind::Int)
    return getItem(r, item, path);
  Value current = item;
  std::string p = path.toStr();
  size_t start = 0;
  while (true) {
    size_t dot = p.find('.', start);
    std::string part = p.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
    current = numeric ? getItem(r, current, Value::integer(std::stoll(part.substr(0, 18))))
                      : getItem(r, current, Value::string(part));
    if (dot == std::string::npos)
      return current;
    start = dot + 1;
  }
}

Value caseFolded(const Value &v, bool caseSensitive) {
  if (!caseSensitive && v.isString())
    return Value::string(lower(v.str()));
  return v;
}

ValueList sorted(Renderer &r, ValueList items, bool reverse, bool caseSensitive, const Value *attribute) {
  std::vector<std::pair<Value, Value>> keyed;
  keyed.reserve(items.size());
  for (Value &item : items) {
    Value key = attribute && !attribute->isNone() ? attrOf(r, item, *attribute) : item;
    keyed.emplace_back(caseFolded(key, caseSensitive), std::move(item));
  }
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto &x, const auto &y) {
    return reverse ? lessThan(r, y.first, x.first) : lessThan(r, x.first, y.first);
  });
  ValueList out;
  for (auto &[k, v] : keyed)
    out.push_back(std::move(v));
  return out;
}

/// select/reject/selectattr/rejectattr.
Value selectOrReject(Renderer &r, const Value &input, CallArgs &call, bool attribute, bool select) {
  if (!input.truthy()) // Jinja2 yields nothing for a falsy sequence (None too)
    return Value::list({}, Value::Seq::Iterator);
  ValueList items = iterate(r, input);
  ValueList args = call.positional;
  Value attr;
  if (attribute) {
    if (args.empty())
      r.fail("Missing parameter for attribute name");
    attr = args[0];
    args.erase(args.begin());
  }
  std::string testName;
  if (!args.empty()) {
    testName = args[0].toStr();
    args.erase(args.begin());
  }
  ValueList out;
  for (const Value &item : items) {
    r.step();
    Value subject = attribute ? attrOf(r, item, attr) : item;
    bool passed;
    if (testName.empty()) {
      passed = subject.truthy();
    } else {
      CallArgs testArgs;
      testArgs.positional = args;
      testArgs.keyword = call.keyword;
      passed = r.test(testName, subject, std::move(testArgs));
    }
    if (passed == select)
      out.push_back(item);
  }
  return Value::list(std::move(out), Value::Seq::Iterator);
}

// ------------------------------------------------------------- filters

Value doIndent(Renderer &r, const Value &input, Args &a) {
  std::string s = softStr(input);
  Value width = a.value(0, "width", Value::integer(4));
  std::string pad = width.isString() ? width.str() : std::string(size_t(std::clamp<int64_t>(width.asInt(), 0, 1 << 20)), ' ');
  bool first = a.flag(1, "first", false), blank = a.flag(2, "blank", false);
  std::string newline = "\n";
  s += newline;
  // Split on newlines (Python splitlines semantics for \n).
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i)
    if (s[i] == '\n') {
      lines.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  std::string rv;
  if (blank) {
    for (size_t i = 1; i < lines.size(); ++i) {
      if (i > 1)
        rv += newline;
      rv += pad + lines[i];
    }
  } else {
    for (size_t i = 1; i < lines.size(); ++i) {
      if (i > 1)
        rv += newline;
      rv += lines[i].empty() ? lines[i] : pad + lines[i];
    }
  }
  rv = (lines.empty() ? "" : lines[0]) + (lines.size() > 1 ? newline + rv : "");
  if (first)
    rv = pad + rv;
  r.checkSize(rv.size());
  return Value::string(rv);
}

Value doToJson(Renderer &r, const Value &input, Args &a) {
  JsonOptions o;
  o.ensureAscii = a.flag(0, "ensure_ascii", false);
  Value indent = a.value(1, "indent");
  if (indent.kind() == Value::Kind::Int)
    o.indent = int(std::clamp<int64_t>(indent.asInt(), 0, 64));
  else if (!indent.isNone())
    r.fail("tojson: indent must be an integer");
  if (o.indent >= 0)
    o.itemSeparator = ",";
  Value separators = a.value(2, "separators");
  if (separators.isList() && separators.items().size() == 2) {
    o.itemSeparator = separators.items()[0].toStr();
    o.keySeparator = separators.items()[1].toStr();
  }
  o.sortKeys = a.flag(3, "sort_keys", false);
  std::string out;
  if (!appendJson(out, input, o))
    r.fail("Object of type " + std::string(input.typeName()) + " is not JSON serializable");
  r.checkSize(out.size());
  return Value::string(out);
}

Value doInt(const Value &input, Args &a) {
  int64_t fallback = a.integer(0, "default", 0);
  switch (input.kind()) {
  case Value::Kind::Int:
  case Value::Kind::Bool: return Value::integer(input.asInt());
  case Value::Kind::Float:
    if (std::isfinite(input.asDouble()) && std::abs(input.asDouble()) < 9.2e18)
      return Value::integer(int64_t(input.asDouble()));
    return Value::integer(fallback);
  case Value::Kind::String: {
    std::string s = strip(input.str(), nullptr, true, true);
    std::string digits;
    for (char c : s)
      if (c != '_')
        digits += c;
    char *end = nullptr;
    errno = 0;
    long long v = std::strtoll(digits.c_str(), &end, int(a.integer(1, "base", 10)));
    if (!digits.empty() && *end == 0 && errno == 0)
      return Value::integer(v);
    double d = std::strtod(digits.c_str(), &end);
    if (!digits.empty() && *end == 0 && std::isfinite(d) && std::abs(d) < 9.2e18)
      return Value::integer(int64_t(d));
    return Value::integer(fallback);
  }
  default: return Value::integer(fallback);
  }
}

Value doFloat(const Value &input, Args &a) {
  double fallback = a.value(0, "default", Value::real(0)).asDouble();
  if (input.isNumber())
    return Value::real(input.asDouble());
  if (input.isString()) {
    std::string s = strip(input.str(), nullptr, true, true);
    char *end = nullptr;
    double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && *end == 0)
      return Value::real(d);
  }
  return Value::real(fallback);
}

std::string htmlEscape(const std::string &s) {
  std::string out;
  for (char c : s) {
    switch (c) {
    case '&': out += "&amp;"; break;
    case '<': out += "&lt;"; break;
    case '>': out += "&gt;"; break;
    case '"': out += "&#34;"; break;
    case '\'': out += "&#39;"; break;
    default: out += c;
    }
  }
  return out;
}

const char *const kFilters[] = {
    "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e",
    "escape", "first", "float", "forceescape", "format", "groupby", "indent", "int", "items",
    "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr",
    "replace", "reverse", "round", "safe", "select", "selectattr", "sort", "string", "striptags",
    "sum", "title", "tojson", "trim", "truncate", "unique", "upper", "wordcount", "pprint",
    "filesizeformat", "random", "slice", "urlencode", "urlize", "wordwrap", "xmlattr"};

const char *const kTests[] = {
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false",
    "filter", "float", "ge", "gt", "greaterthan", "in", "integer", "iterable", "le", "lower", "lt",
    "lessthan", "mapping", "ne", "none", "number", "odd", "sameas", "sequence", "string", "test",
    "true", "undefined", "upper", "==", "!=", "<", "<=", ">", ">="};

} // namespace

bool isKnownFilter(const std::string &name) { return contains(kFilters, name); }
bool isKnownTest(const std::string &name) { return contains(kTests, name); }

ValueList iterate(Renderer &r, const Value &v) {
  switch (v.kind()) {
  case Value::Kind::Undefined: return {};
  case Value::Kind::List: return v.items();
  case Value::Kind::Dict: {
    ValueList keys;
    for (const auto &[k, item] : v.entries().entries())
      keys.push_back(k);
    return keys;
  }
  case Value::Kind::String: {
    ValueList chars;
    const std::string &s = v.str();
    for (size_t i = 0; i < s.size();) {
      size_t n = 1;
      utf8::decode(s, i, n);
      chars.push_back(Value::string(s.substr(i, n)));
      i += n;
    }
    return chars;
  }
  default: r.fail("'" + std::string(v.typeName()) + "' object is not iterable");
  }
}

Value getAttribute(Renderer &r, const Value &object, const std::string &name) {
  switch (object.kind()) {
  case Value::Kind::Undefined: undefinedError(r, object);
  case Value::Kind::Dict:
    if (contains(kDictMethods, name))
      return method(object, name);
    if (const Value *v = object.entries().find(name))
      return *v;
    return Value::undefined("'dict object' has no attribute '" + name + "'");
  case Value::Kind::Namespace:
    if (const Value *v = object.entries().find(name))
      return *v;
    return Value::undefined("'Namespace object' has no attribute '" + name + "'");
  case Value::Kind::String:
    if (contains(kStrMethods, name))
      return method(object, name);
    break;
  case Value::Kind::List:
    if (object.seq() != Value::Seq::Iterator && contains(kListMethods, name) &&
        (object.seq() == Value::Seq::List || name == "index" || name == "count"))
      return method(object, name);
    break;
  default: break;
  }
  return Value::undefined("'" + std::string(object.typeName()) + " object' has no attribute '" + name + "'");
}

Value getItem(Renderer &r, const Value &object, const Value &key) {
  switch (object.kind()) {
  case Value::Kind::Undefined: undefinedError(r, object);
  case Value::Kind::Dict:
  case Value::Kind::Namespace:
    if (key.isString()) {
      if (object.kind() == Value::Kind::Dict)
        if (const Value *v = object.entries().find(key.str()))
          return *v;
      return getAttribute(r, object, key.str());
    }
    if (object.kind() == Value::Kind::Dict)
      if (const Value *v = object.entries().find(key))
        return *v;
    return Value::undefined("'dict object' has no attribute " + key.repr());
  case Value::Kind::List:
  case Value::Kind::String: {
    if (key.kind() == Value::Kind::Int || key.kind() == Value::Kind::Bool) {
      if (object.isList() && object.seq() == Value::Seq::Iterator)
        return Value::undefined("'generator' object is not subscriptable");
      int64_t i = key.asInt();
      if (object.isList()) {
        int64_t n = int64_t(object.items().size());
        int64_t at = i < 0 ? i + n : i;
        if (at < 0 || at >= n)
          return Value::undefined(std::string(object.typeName()) + " object has no element " + std::to_string(i));
        return object.items()[size_t(at)];
      }
      const std::string &s = object.str();
      if (utf8::isAscii(s)) {
        int64_t n = int64_t(s.size());
        int64_t at = i < 0 ? i + n : i;
        if (at < 0 || at >= n)
          return Value::undefined("str object has no element " + std::to_string(i));
        return Value::string(s.substr(size_t(at), 1));
      }
      std::vector<size_t> offs = utf8::offsets(s);
      int64_t n = int64_t(offs.size()) - 1;
      int64_t at = i < 0 ? i + n : i;
      if (at < 0 || at >= n)
        return Value::undefined("str object has no element " + std::to_string(i));
      return Value::string(s.substr(offs[size_t(at)], offs[size_t(at) + 1] - offs[size_t(at)]));
    }
    if (key.isString())
      return getAttribute(r, object, key.str());
    return Value::undefined(std::string(object.typeName()) + " indices must be integers");
  }
  default:
    if (key.isString())
      return getAttribute(r, object, key.str());
    return Value::undefined("'" + std::string(object.typeName()) + "' object is not subscriptable");
  }
}

Value slice(Renderer &r, const Value &object, const Value &startV, const Value &stopV, const Value &stepV) {
  if (object.isUndefined())
    undefinedError(r, object);
  auto bound = [&](const Value &v) -> std::optional<int64_t> {
    if (v.isNone())
      return std::nullopt;
    if (v.kind() != Value::Kind::Int && v.kind() != Value::Kind::Bool)
      r.fail("slice indices must be integers or None");
    return v.asInt();
  };
  std::optional<int64_t> start = bound(startV), stop = bound(stopV), stepO = bound(stepV);
  int64_t step = stepO.value_or(1);
  if (step == 0)
    r.fail("slice step cannot be zero");
  auto indices = [&](int64_t n) {
    // Python's slice.indices.
    int64_t lo, hi;
    if (step > 0) {
      lo = start ? (*start < 0 ? std::max<int64_t>(0, *start + n) : std::min(*start, n)) : 0;
      hi = stop ? (*stop < 0 ? std::max<int64_t>(0, *stop + n) : std::min(*stop, n)) : n;
    } else {
      lo = start ? (*start < 0 ? std::max<int64_t>(-1, *start + n) : std::min(*start, n - 1)) : n - 1;
      hi = stop ? (*stop < 0 ? std::max<int64_t>(-1, *stop + n) : std::min(*stop, n - 1)) : -1;
    }
    std::vector<size_t> out;
    if (step > 0)
      for (int64_t i = lo; i < hi; i += step)
        out.push_back(size_t(i));
    else
      for (int64_t i = lo; i > hi; i += step)
        out.push_back(size_t(i));
    return out;
  };
  if (object.isList() && object.seq() != Value::Seq::Iterator) {
    const ValueList &items = object.items();
    ValueList out;
    for (size_t i : indices(int64_t(items.size())))
      out.push_back(items[i]);
    return Value::list(std::move(out), object.seq());
  }
  if (object.isString()) {
    const std::string &s = object.str();
    std::vector<size_t> offs = utf8::offsets(s);
    std::string out;
    for (size_t i : indices(int64_t(offs.size()) - 1))
      out.append(s, offs[i], offs[i + 1] - offs[i]);
    return Value::string(out);
  }
  r.fail("'" + std::string(object.typeName()) + "' object is not subscriptable");
}

Value binaryOp(Renderer &r, const std::string &op, const Value &a, const Value &b) {
  using K = Value::Kind;
  if (op == "~") {
    std::string out = softStr(a) + softStr(b);
    r.checkSize(out.size());
    return Value::string(std::move(out));
  }
  if (a.isUndefined())
    undefinedError(r, a);
  if (b.isUndefined())
    undefinedError(r, b);
  auto unsupported = [&]() {
    r.fail("unsupported operand type(s) for " + op + ": '" + a.typeName() + "' and '" + b.typeName() + "'");
  };
  const bool numbers = a.isNumber() && b.isNumber();
  const bool floats = numbers && (a.kind() == K::Float || b.kind() == K::Float);
  if (op == "+") {
    if (numbers)
      return floats ? Value::real(a.asDouble() + b.asDouble())
                    : Value::integer(checkedInt(r, __int128(a.asInt()) + b.asInt()));
    if (a.isString() && b.isString()) {
      r.checkSize(a.str().size() + b.str().size());
      if (a.isSafe() || b.isSafe()) // markupsafe escapes the plain operand
        return Value::safeString((a.isSafe() ? a.str() : htmlEscape(a.str())) +
                                 (b.isSafe() ? b.str() : htmlEscape(b.str())));
      return Value::string(a.str() + b.str());
    }
    if (a.isList() && b.isList() && a.seq() == b.seq() && a.seq() != Value::Seq::Iterator) {
      ValueList items = a.items();
      items.insert(items.end(), b.items().begin(), b.items().end());
      return Value::list(std::move(items), a.seq());
    }
    if (a.isString())
      r.fail("can only concatenate str (not \"" + std::string(b.typeName()) + "\") to str");
    if (a.isList() && a.seq() == Value::Seq::List)
      r.fail("can only concatenate list (not \"" + std::string(b.typeName()) + "\") to list");
    unsupported();
  }
  if (op == "-") {
    if (!numbers)
      unsupported();
    return floats ? Value::real(a.asDouble() - b.asDouble())
                  : Value::integer(checkedInt(r, __int128(a.asInt()) - b.asInt()));
  }
  if (op == "*") {
    if (numbers)
      return floats ? Value::real(a.asDouble() * b.asDouble())
                    : Value::integer(checkedInt(r, __int128(a.asInt()) * b.asInt()));
    const Value *seq = a.isNumber() ? &b : &a;
    const Value *count = a.isNumber() ? &a : &b;
    if (count->kind() == K::Float || !count->isNumber())
      unsupported();
    if (seq->isString())
      return Value::string(repeat(r, seq->str(), count->asInt()));
    if (seq->isList() && seq->seq() != Value::Seq::Iterator) {
      ValueList out;
      int64_t n = count->asInt();
      if (n > 0)
        r.checkSize(seq->items().size() * size_t(std::min<int64_t>(n, int64_t(1) << 30)) * 16);
      for (int64_t i = 0; i < n; ++i)
        out.insert(out.end(), seq->items().begin(), seq->items().end());
      return Value::list(std::move(out), seq->seq());
    }
    unsupported();
  }
  if (op == "/") {
    if (!numbers)
      unsupported();
    if (b.asDouble() == 0)
      r.fail(floats ? "float division by zero" : "division by zero");
    return Value::real(a.asDouble() / b.asDouble());
  }
  if (op == "//") {
    if (!numbers)
      unsupported();
    if (b.asDouble() == 0)
      r.fail("integer division or modulo by zero");
    if (floats)
      return Value::real(std::floor(a.asDouble() / b.asDouble()));
    if (a.asInt() == INT64_MIN && b.asInt() == -1)
      r.fail("integer overflow");
    return Value::integer(floorDiv(a.asInt(), b.asInt()));
  }
  if (op == "%") {
    if (a.isString())
      return Value::string(formatPercent(r, a.str(), b));
    if (!numbers)
      unsupported();
    if (b.asDouble() == 0)
      r.fail("integer division or modulo by zero");
    if (floats)
      return Value::real(pyFmod(a.asDouble(), b.asDouble()));
    if (b.asInt() == -1)
      return Value::integer(0);
    return Value::integer(pyMod(a.asInt(), b.asInt()));
  }
  if (op == "**") {
    if (!numbers)
      unsupported();
    if (floats || b.asInt() < 0)
      return Value::real(std::pow(a.asDouble(), b.asDouble()));
    __int128 result = 1, base = a.asInt();
    for (int64_t e = b.asInt(); e > 0; --e) {
      result *= base;
      checkedInt(r, result);
      if (result == 0 || result == 1)
        break;
    }
    return Value::integer(checkedInt(r, result));
  }
  r.fail("unknown operator " + op);
}

bool compareOp(Renderer &r, const std::string &op, const Value &a, const Value &b) {
  if (op == "==")
    return equals(a, b);
  if (op == "!=")
    return !equals(a, b);
  if (op == "in" || op == "notin") {
    bool found = false;
    switch (b.kind()) {
    case Value::Kind::Undefined: found = false; break;
    case Value::Kind::String:
      if (!a.isString())
        r.fail("'in <string>' requires string as left operand, not " + std::string(a.typeName()));
      found = b.str().find(a.str()) != std::string::npos;
      break;
    case Value::Kind::List:
      for (const Value &item : b.items())
        if (equals(item, a)) {
          found = true;
          break;
        }
      break;
    case Value::Kind::Dict:
    case Value::Kind::Namespace: found = b.entries().find(a) != nullptr; break;
    default: r.fail("argument of type '" + std::string(b.typeName()) + "' is not iterable");
    }
    return op == "in" ? found : !found;
  }
  if (a.isUndefined())
    undefinedError(r, a);
  if (b.isUndefined())
    undefinedError(r, b);
  int order = 0; // -1, 0, 1
  if (a.isNumber() && b.isNumber()) {
    if (a.kind() == Value::Kind::Float || b.kind() == Value::Kind::Float)
      order = a.asDouble() < b.asDouble() ? -1 : a.asDouble() > b.asDouble() ? 1 : 0;
    else
      order = a.asInt() < b.asInt() ? -1 : a.asInt() > b.asInt() ? 1 : 0;
  } else if (a.isString() && b.isString()) {
    int c = a.str().compare(b.str());
    order = c < 0 ? -1 : c > 0 ? 1 : 0;
  } else if (a.isList() && b.isList() && a.seq() == b.seq() && a.seq() != Value::Seq::Iterator) {
    const ValueList &x = a.items(), &y = b.items();
    size_t i = 0;
    while (i < x.size() && i < y.size() && equals(x[i], y[i]))
      ++i;
    if (i < x.size() && i < y.size())
      order = compareOp(r, "<", x[i], y[i]) ? -1 : 1;
    else
      order = x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  } else {
    r.fail("'" + op + "' not supported between instances of '" + a.typeName() + "' and '" + b.typeName() + "'");
  }
  if (op == "<")
    return order < 0;
  if (op == "<=")
    return order <= 0;
  if (op == ">")
    return order > 0;
  if (op == ">=")
    return order >= 0;
  r.fail("unknown comparison " + op);
}

namespace {

class Global : public Callable {
public:
  explicit Global(std::string name) : name_(std::move(name)) {}
  std::string name() const override { return name_; }
  Value call(Renderer &r, CallArgs args) const override {
    if (name_ == "raise_exception") {
      const Value *message = args.positional.empty() ? nullptr : &args.positional[0];
      throw RenderFailure{message ? softStr(*message) : "", true};
    }
    if (name_ == "strftime_now") {
      if (args.positional.empty() || !args.positional[0].isString())
        r.fail("strftime_now() needs a format string");
      std::time_t now = r.now() ? *r.now() : std::time(nullptr);
      std::tm tm{};
      gmtime_r(&now, &tm);
      const std::string &fmt = args.positional[0].str();
      std::string out(fmt.size() * 8 + 64, '\0');
      size_t n = fmt.empty() ? 0 : std::strftime(out.data(), out.size(), fmt.c_str(), &tm);
      out.resize(n);
      return Value::string(out);
    }
    if (name_ == "namespace" || name_ == "dict") {
      Dict d;
      for (const Value &p : args.positional) {
        if (p.kind() != Value::Kind::Dict)
          r.fail(name_ + "() takes mappings and keyword arguments");
        for (const auto &[k, v] : p.entries().entries())
          d.set(k, v);
      }
      for (auto &[k, v] : args.keyword)
        d.set(k, std::move(v));
      return name_ == "namespace" ? Value::namespaceOf(std::move(d)) : Value::dict(std::move(d));
    }
    if (name_ == "range") {
      std::vector<int64_t> bounds;
      for (const Value &p : args.positional) {
        if (p.kind() != Value::Kind::Int && p.kind() != Value::Kind::Bool)
          r.fail("'" + std::string(p.typeName()) + "' object cannot be interpreted as an integer");
        bounds.push_back(p.asInt());
      }
      if (bounds.empty() || bounds.size() > 3)
        r.fail("range expected 1 to 3 arguments");
      int64_t start = bounds.size() > 1 ? bounds[0] : 0;
      int64_t stop = bounds.size() > 1 ? bounds[1] : bounds[0];
      int64_t step = bounds.size() > 2 ? bounds[2] : 1;
      if (step == 0)
        r.fail("range() arg 3 must not be zero");
      __int128 count = step > 0 ? (__int128(stop) - start + step - 1) / step : (__int128(start) - stop - step - 1) / -step;
      if (count > 100000)
        r.fail("range too big, MAX_RANGE is 100000");
      ValueList out;
      for (__int128 i = 0; i < count; ++i)
        out.push_back(Value::integer(int64_t(start + i * step)));
      return Value::list(std::move(out));
    }
    r.fail("'" + name_ + "' is not callable");
  }

private:
  std::string name_;
};

} // namespace

Value globalFunction(const std::string &name) {
  static const char *const names[] = {"raise_exception", "strftime_now", "namespace", "dict", "range"};
  static const std::map<std::string, Value> globals = [] {
    std::map<std::string, Value> m;
    for (const char *n : names)
      m[n] = Value::callable(std::make_shared<Global>(n));
    return m;
  }();
  auto it = globals.find(name);
  return it == globals.end() ? Value::undefined() : it->second;
}

Value applyFilter(Renderer &r, const std::string &name, Value input, CallArgs &call) {
  Args a(r, call, name);
  auto needsDefined = [&]() {
    if (input.isUndefined())
      undefinedError(r, input);
  };
  if (name == "default" || name == "d") {
    Value fallback = a.value(0, "default_value", Value::string(""));
    bool boolean = a.flag(1, "boolean", false);
    if (input.isUndefined() || (boolean && !input.truthy()))
      return fallback;
    return input;
  }
  if (name == "safe")
    return Value::safeString(softStr(input));
  if (name == "string")
    return input.isString() ? input : Value::string(softStr(input));
  if (name == "tojson")
    return doToJson(r, input, a);
  if (name == "length" || name == "count")
    return Value::integer(lengthOf(r, input));
  if (name == "trim") {
    Value chars = a.value(0, "chars");
    return Value::string(strip(softStr(input), &chars, true, true));
  }
  if (name == "upper")
    return Value::string(upper(softStr(input)));
  if (name == "lower")
    return Value::string(lower(softStr(input)));
  if (name == "capitalize")
    return Value::string(capitalize(softStr(input)));
  if (name == "title")
    return Value::string(jinjaTitle(softStr(input)));
  if (name == "replace") {
    std::string s = softStr(input);
    Value from = a.value(0, "old"), to = a.value(1, "new");
    return Value::string(replaceAll(s, softStr(from), softStr(to), a.integer(2, "count", -1)));
  }
  if (name == "join") {
    std::string sep = softStr(a.value(0, "d", Value::string("")));
    const Value *attribute = a.get(1, "attribute");
    std::string out;
    bool first = true;
    for (const Value &item : iterate(r, input)) {
      if (!first)
        out += sep;
      first = false;
      out += softStr(attribute && !attribute->isNone() ? attrOf(r, item, *attribute) : item);
      r.checkSize(out.size());
    }
    return Value::string(out);
  }
  if (name == "first" || name == "last") {
    if (name == "last" && input.isList() && input.seq() == Value::Seq::Iterator)
      r.fail("'generator' object is not reversible");
    ValueList items = iterate(r, input);
    if (items.empty())
      return Value::undefined(std::string("No ") + name + " item, sequence was empty.");
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") {
    return Value::list(iterate(r, input));
  }
  if (name == "items") {
    if (input.isUndefined())
      return Value::list({}, Value::Seq::Iterator);
    if (input.kind() != Value::Kind::Dict)
      r.fail("Can only get item pairs from a mapping.");
    ValueList out;
    for (const auto &[k, v] : input.entries().entries())
      out.push_back(Value::list({k, v}, Value::Seq::Tuple));
    return Value::list(std::move(out), Value::Seq::Iterator);
  }
  if (name == "dictsort") {
    if (input.kind() != Value::Kind::Dict)
      r.fail("You can only sort by either \"key\" or \"value\"");
    bool caseSensitive = a.flag(0, "case_sensitive", false);
    std::string by = a.string(1, "by", "key");
    bool reverse = a.flag(2, "reverse", false);
    ValueList pairs;
    for (const auto &[k, v] : input.entries().entries())
      pairs.push_back(Value::list({k, v}, Value::Seq::Tuple));
    Value index = Value::integer(by == "value" ? 1 : 0);
    return Value::list(sorted(r, std::move(pairs), reverse, caseSensitive, &index));
  }
  if (name == "sort") {
    bool reverse = a.flag(0, "reverse", false);
    bool caseSensitive = a.flag(1, "case_sensitive", false);
    const Value *attribute = a.get(2, "attribute");
    return Value::list(sorted(r, iterate(r, input), reverse, caseSensitive, attribute));
  }
  if (name == "unique") {
    bool caseSensitive = a.flag(0, "case_sensitive", false);
    const Value *attribute = a.get(1, "attribute");
    ValueList out, seen;
    for (const Value &item : iterate(r, input)) {
      Value key = caseFolded(attribute && !attribute->isNone() ? attrOf(r, item, *attribute) : item, caseSensitive);
      if (std::none_of(seen.begin(), seen.end(), [&](const Value &s) { return equals(s, key); })) {
        seen.push_back(key);
        out.push_back(item);
      }
    }
    return Value::list(std::move(out), Value::Seq::Iterator);
  }
  if (name == "min" || name == "max") {
    bool caseSensitive = a.flag(0, "case_sensitive", false);
    const Value *attribute = a.get(1, "attribute");
    ValueList items = iterate(r, input);
    if (items.empty())
      return Value::undefined(std::string("No aggregated item, sequence was empty."));
    size_t best = 0;
    for (size_t i = 1; i < items.size(); ++i) {
      Value x = caseFolded(attribute && !attribute->isNone() ? attrOf(r, items[i], *attribute) : items[i], caseSensitive);
      Value y = caseFolded(attribute && !attribute->isNone() ? attrOf(r, items[best], *attribute) : items[best], caseSensitive);
      if (name == "min" ? lessThan(r, x, y) : lessThan(r, y, x))
        best = i;
    }
    return items[best];
  }
  if (name == "reverse") {
    if (input.isString()) {
      std::vector<uint32_t> cps = codepoints(input.str());
      std::reverse(cps.begin(), cps.end());
      return Value::string(fromCodepoints(cps, 0, cps.size()));
    }
    ValueList items = iterate(r, input);
    std::reverse(items.begin(), items.end());
    return Value::list(std::move(items), Value::Seq::Iterator);
  }
  if (name == "map") {
    if (!input.truthy())
      return Value::list({}, Value::Seq::Iterator);
    ValueList items = iterate(r, input);
    ValueList out;
    const Value *attribute = nullptr;
    for (const auto &[k, v] : call.keyword)
      if (k == "attribute")
        attribute = &v;
    if (attribute) {
      const Value *fallback = nullptr;
      for (const auto &[k, v] : call.keyword)
        if (k == "default")
          fallback = &v;
      for (const Value &item : items) {
        Value v = attrOf(r, item, *attribute);
        out.push_back(v.isUndefined() && fallback ? *fallback : v);
      }
    } else {
      if (call.positional.empty())
        r.fail("map requires a filter argument");
      std::string filterName = call.positional[0].toStr();
      for (const Value &item : items) {
        CallArgs inner;
        inner.positional.assign(call.positional.begin() + 1, call.positional.end());
        inner.keyword = call.keyword;
        out.push_back(r.filter(filterName, item, std::move(inner)));
      }
    }
    return Value::list(std::move(out), Value::Seq::Iterator);
  }
  if (name == "select" || name == "reject")
    return selectOrReject(r, input, call, false, name == "select");
  if (name == "selectattr" || name == "rejectattr")
    return selectOrReject(r, input, call, true, name == "selectattr");
  if (name == "indent")
    return doIndent(r, input, a);
  if (name == "int")
    return doInt(input, a);
  if (name == "float")
    return doFloat(input, a);
  if (name == "abs") {
    needsDefined();
    if (input.kind() == Value::Kind::Float)
      return Value::real(std::abs(input.asDouble()));
    if (input.isNumber())
      return Value::integer(std::abs(input.asInt()));
    r.fail("bad operand type for abs(): '" + std::string(input.typeName()) + "'");
  }
  if (name == "round") {
    int64_t precision = a.integer(0, "precision", 0);
    std::string method = a.string(1, "method", "common");
    double d = input.asDouble(), scale = std::pow(10.0, double(precision));
    double v = method == "ceil" ? std::ceil(d * scale) / scale
               : method == "floor" ? std::floor(d * scale) / scale
                                   : std::nearbyint(d * scale) / scale; // Python rounds half to even
    return Value::real(v);
  }
  if (name == "sum") {
    const Value *attribute = a.get(0, "attribute");
    Value total = a.value(1, "start", Value::integer(0));
    for (const Value &item : iterate(r, input))
      total = binaryOp(r, "+", total, attribute && !attribute->isNone() ? attrOf(r, item, *attribute) : item);
    return total;
  }
  if (name == "center") {
    CallArgs inner;
    inner.positional.push_back(a.value(0, "width", Value::integer(80)));
    return strMethod(r, softStr(input), "center", inner);
  }
  if (name == "wordcount")
    return Value::integer(int64_t(split(r, softStr(input), nullptr, -1, false).size()));
  if (name == "attr")
    return getAttribute(r, input, softStr(a.value(0, "name")));
  if (name == "escape" || name == "e" || name == "forceescape")
    return input.isSafe() && name != "forceescape" ? input : Value::safeString(htmlEscape(softStr(input)));
  if (name == "format") {
    if (!call.keyword.empty()) {
      Dict d;
      for (auto &[k, v] : call.keyword)
        d.set(k, v);
      return Value::string(formatPercent(r, softStr(input), Value::dict(std::move(d))));
    }
    return Value::string(formatPercent(r, softStr(input), Value::list(call.positional, Value::Seq::Tuple)));
  }
  if (name == "batch") {
    int64_t size = a.integer(0, "linecount", 1);
    if (size <= 0)
      r.fail("batch size must be positive");
    ValueList out, current;
    for (const Value &item : iterate(r, input)) {
      current.push_back(item);
      if (int64_t(current.size()) == size) {
        out.push_back(Value::list(std::move(current)));
        current.clear();
      }
    }
    if (!current.empty()) {
      if (const Value *fill = a.get(1, "fill_with"); fill && !fill->isNone())
        while (int64_t(current.size()) < size)
          current.push_back(*fill);
      out.push_back(Value::list(std::move(current)));
    }
    return Value::list(std::move(out), Value::Seq::Iterator);
  }
  if (name == "pprint")
    return Value::string(input.repr());
  r.fail("no filter named '" + name + "'");
}

bool applyTest(Renderer &r, const std::string &name, const Value &v, CallArgs &call) {
  Args a(r, call, name);
  using K = Value::Kind;
  if (name == "defined")
    return !v.isUndefined();
  if (name == "undefined")
    return v.isUndefined();
  if (name == "none")
    return v.isNone();
  if (name == "string")
    return v.isString();
  if (name == "mapping")
    return v.kind() == K::Dict;
  if (name == "iterable")
    return v.kind() == K::List || v.kind() == K::Dict || v.kind() == K::String || v.isUndefined();
  if (name == "sequence")
    return (v.kind() == K::List && v.seq() != Value::Seq::Iterator) || v.kind() == K::Dict ||
           v.kind() == K::String || v.isUndefined();
  if (name == "number")
    return v.isNumber();
  if (name == "integer")
    return v.kind() == K::Int;
  if (name == "float")
    return v.kind() == K::Float;
  if (name == "boolean")
    return v.kind() == K::Bool;
  if (name == "true")
    return v.kind() == K::Bool && v.asBool();
  if (name == "false")
    return v.kind() == K::Bool && !v.asBool();
  if (name == "callable")
    return v.kind() == K::Callable;
  if (name == "escaped")
    return false;
  if (name == "lower" || name == "upper") {
    std::string s = softStr(v);
    return name == "lower" ? lower(s) == s : upper(s) == s;
  }
  if (name == "odd" || name == "even" || name == "divisibleby") {
    if (!v.isNumber() || v.kind() == K::Float)
      r.fail("unsupported operand type(s) for %: '" + std::string(v.typeName()) + "' and 'int'");
    int64_t m = name == "divisibleby" ? a.integer(0, "num", 1) : 2;
    if (m == 0)
      r.fail("integer division or modulo by zero");
    int64_t rem = pyMod(v.asInt(), m);
    return name == "odd" ? rem == 1 : rem == 0;
  }
  const Value *other = a.get(0, "other");
  auto needOther = [&]() -> const Value & {
    if (!other)
      r.fail("test '" + name + "' needs an argument");
    return *other;
  };
  if (name == "eq" || name == "equalto" || name == "==")
    return equals(v, needOther());
  if (name == "ne" || name == "!=")
    return !equals(v, needOther());
  if (name == "lt" || name == "lessthan" || name == "<")
    return compareOp(r, "<", v, needOther());
  if (name == "le" || name == "<=")
    return compareOp(r, "<=", v, needOther());
  if (name == "gt" || name == "greaterthan" || name == ">")
    return compareOp(r, ">", v, needOther());
  if (name == "ge" || name == ">=")
    return compareOp(r, ">=", v, needOther());
  if (name == "in")
    return compareOp(r, "in", v, *(a.get(0, "seq") ? a.get(0, "seq") : &needOther()));
  if (name == "sameas") {
    const Value &o = needOther();
    if (v.kind() != o.kind())
      return false;
    if (v.isNone() || v.isUndefined())
      return true;
    if (v.kind() == K::Bool)
      return v.asBool() == o.asBool();
    if (v.kind() == K::Int)
      return v.asInt() == o.asInt() && v.asInt() >= -5 && v.asInt() <= 256;
    return false;
  }
  if (name == "filter")
    return v.isString() && isKnownFilter(v.str());
  if (name == "test")
    return v.isString() && isKnownTest(v.str());
  r.fail("no test named '" + name + "'");
}

} // namespace llmir::jinja

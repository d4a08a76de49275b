// Follows jinja2/lexer.py (3.1): the root state splits data from tags and
// applies the whitespace rules; inside a tag, operators, names, numbers and
// strings, where an end marker counts only outside brackets.
#include "Lexer.h"

#include "Utf8.h"

#include <cstring>

namespace llmir::jinja {
namespace {

struct LexError {
  std::string message;
};

bool isSpaceAt(std::string_view s, size_t i, size_t &n) {
  uint32_t cp = utf8::decode(s, i, n);
  return utf8::isSpace(cp);
}

/// Python's str.rstrip() length.
size_t rstripLength(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    // step back one code point
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80 && end - start < 4)
      --start;
    size_t n = 1;
    if (!isSpaceAt(s, start, n) || start + n != end)
      break;
    end = start;
  }
  return end;
}

/// Length of the whitespace run at s[i...].
size_t spaceRun(std::string_view s, size_t i) {
  size_t j = i;
  while (j < s.size()) {
    size_t n = 1;
    if (!isSpaceAt(s, j, n))
      break;
    j += n;
  }
  return j - i;
}

bool allSpace(std::string_view s) { return spaceRun(s, 0) == s.size(); }

class Lexer {
public:
  explicit Lexer(std::string source) : src_(std::move(source)) {}

  std::vector<Token> run() {
    size_t pos = 0;
    bool lineStarting = true;
    while (pos < src_.size()) {
      // The next tag start: {{, {% or {#.
      size_t tag = pos;
      while (true) {
        tag = src_.find('{', tag);
        if (tag == std::string::npos || tag + 1 >= src_.size()) {
          tag = std::string::npos;
          break;
        }
        char c = src_[tag + 1];
        if (c == '{' || c == '%' || c == '#')
          break;
        ++tag;
      }
      if (tag == std::string::npos) {
        emitData(src_.substr(pos));
        return finish();
      }
      std::string text = src_.substr(pos, tag - pos);
      char kind = src_[tag + 1];
      char sign = tag + 2 < src_.size() && (src_[tag + 2] == '-' || src_[tag + 2] == '+')
                      ? src_[tag + 2]
                      : 0;
      if (sign == '-') {
        text.resize(rstripLength(text));
      } else if (sign != '+' && kind != '{') {
        size_t lpos = text.rfind('\n');
        lpos = lpos == std::string::npos ? 0 : lpos + 1;
        if ((lpos > 0 || lineStarting) && lpos < text.size() &&
            allSpace(std::string_view(text).substr(lpos)))
          text.resize(lpos);
      }
      countLines(src_.substr(pos, tag - pos));
      emitData(std::move(text));
      pos = tag + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        pos = comment(pos, lineStarting);
        continue;
      }
      if (kind == '%' && rawBlock(pos, lineStarting))
        continue;
      tokens_.push_back({kind == '{' ? Token::Type::VarBegin : Token::Type::BlockBegin, "", line_});
      pos = tagBody(pos, kind == '{', lineStarting);
    }
    return finish();
  }

private:
  std::vector<Token> finish() {
    tokens_.push_back({Token::Type::End, "", line_});
    return std::move(tokens_);
  }

  void countLines(std::string_view s) {
    for (char c : s)
      line_ += c == '\n';
  }

  void emitData(std::string text) {
    if (text.empty())
      return;
    if (!tokens_.empty() && tokens_.back().type == Token::Type::Data)
      tokens_.back().text += text;
    else
      tokens_.push_back({Token::Type::Data, std::move(text), line_});
  }

  [[noreturn]] void fail(const std::string &what) {
    throw LexError{"line " + std::to_string(line_) + ": " + what};
  }

  size_t comment(size_t pos, bool &lineStarting) {
    size_t end = src_.find("#}", pos);
    if (end == std::string::npos)
      fail("missing end of comment tag");
    countLines(std::string_view(src_).substr(pos, end - pos));
    char before = end > pos ? src_[end - 1] : 0;
    size_t next = end + 2;
    if (before == '-')
      next += spaceRun(src_, next);
    else if (before != '+' && next < src_.size() && src_[next] == '\n')
      ++next;
    countLines(std::string_view(src_).substr(end, next - end));
    lineStarting = next > 0 && src_[next - 1] == '\n';
    return next;
  }

  /// {% raw %}...{% endraw %}: the body is data, untouched.
  bool rawBlock(size_t &pos, bool &lineStarting) {
    size_t i = pos + spaceRun(src_, pos);
    if (src_.compare(i, 3, "raw") != 0)
      return false;
    i += 3;
    if (i < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[i])) || src_[i] == '_'))
      return false;
    i += spaceRun(src_, i);
    bool strip = false;
    if (i < src_.size() && (src_[i] == '-' || src_[i] == '+'))
      strip = src_[i++] == '-';
    if (src_.compare(i, 2, "%}") != 0)
      fail("expected the end of the raw tag");
    i += 2;
    if (strip)
      i += spaceRun(src_, i);
    // The body ends at {%[-+]? endraw [-+]?%}.
    size_t search = i;
    while (true) {
      size_t open = src_.find("{%", search);
      if (open == std::string::npos)
        fail("missing endraw");
      size_t j = open + 2;
      char sign = j < src_.size() && (src_[j] == '-' || src_[j] == '+') ? src_[j] : 0;
      if (sign)
        ++j;
      j += spaceRun(src_, j);
      if (src_.compare(j, 6, "endraw") != 0) {
        search = open + 2;
        continue;
      }
      j += 6;
      j += spaceRun(src_, j);
      char endSign = 0;
      if (j < src_.size() && (src_[j] == '-' || src_[j] == '+'))
        endSign = src_[j++];
      if (src_.compare(j, 2, "%}") != 0) {
        search = open + 2;
        continue;
      }
      std::string body = src_.substr(i, open - i);
      if (sign == '-')
        body.resize(rstripLength(body));
      countLines(std::string_view(src_).substr(pos, open - pos));
      emitData(std::move(body));
      j += 2;
      if (endSign == '-')
        j += spaceRun(src_, j);
      else if (endSign != '+' && j < src_.size() && src_[j] == '\n')
        ++j;
      countLines(std::string_view(src_).substr(open, j - open));
      lineStarting = src_[j - 1] == '\n';
      pos = j;
      return true;
    }
  }

  size_t tagBody(size_t pos, bool variable, bool &lineStarting) {
    std::vector<char> balance;
    while (true) {
      if (pos >= src_.size())
        fail(variable ? "unexpected end of template, expected '}}'" : "unexpected end of template, expected '%}'");
      if (balance.empty()) {
        // End markers: -}} / }}  or  -%} / +%} / %}
        const char *close = variable ? "}}" : "%}";
        if (src_[pos] == '-' && src_.compare(pos + 1, 2, close) == 0) {
          size_t next = pos + 3;
          next += spaceRun(src_, next);
          return endTag(variable, pos, next, lineStarting);
        }
        if (!variable && src_[pos] == '+' && src_.compare(pos + 1, 2, close) == 0)
          return endTag(variable, pos, pos + 3, lineStarting);
        if (src_.compare(pos, 2, close) == 0) {
          size_t next = pos + 2;
          if (!variable && next < src_.size() && src_[next] == '\n')
            ++next;
          return endTag(variable, pos, next, lineStarting);
        }
      }
      unsigned char c = static_cast<unsigned char>(src_[pos]);
      size_t n = 1;
      if (isSpaceAt(src_, pos, n)) {
        if (c == '\n')
          ++line_;
        pos += n;
        continue;
      }
      if (std::isdigit(c)) {
        pos = number(pos);
        continue;
      }
      if (std::isalpha(c) || c == '_' || c >= 0x80) {
        size_t start = pos;
        while (pos < src_.size()) {
          unsigned char d = static_cast<unsigned char>(src_[pos]);
          if (!(std::isalnum(d) || d == '_' || d >= 0x80))
            break;
          ++pos;
        }
        tokens_.push_back({Token::Type::Name, src_.substr(start, pos - start), line_});
        continue;
      }
      if (c == '\'' || c == '"') {
        pos = string(pos);
        continue;
      }
      static const char *const ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "/", "*", "%",
                                        "~",  "[",  "]",  "(",  ")",  "{",  "}", "<", ">", "=", ".",
                                        ":",  "|",  ",",  ";"};
      const char *op = nullptr;
      for (const char *candidate : ops)
        if (src_.compare(pos, std::strlen(candidate), candidate) == 0) {
          op = candidate;
          break;
        }
      if (!op)
        fail(std::string("unexpected char '") + char(c) + "'");
      std::string spelling = op;
      if (spelling == "(" || spelling == "[" || spelling == "{") {
        balance.push_back(spelling[0]);
      } else if (spelling == ")" || spelling == "]" || spelling == "}") {
        char expected = spelling == ")" ? '(' : spelling == "]" ? '[' : '{';
        if (balance.empty() || balance.back() != expected)
          fail("unexpected '" + spelling + "'");
        balance.pop_back();
      }
      tokens_.push_back({Token::Type::Op, spelling, line_});
      pos += spelling.size();
    }
  }

  size_t endTag(bool variable, size_t at, size_t next, bool &lineStarting) {
    tokens_.push_back({variable ? Token::Type::VarEnd : Token::Type::BlockEnd, "", line_});
    countLines(std::string_view(src_).substr(at, next - at));
    lineStarting = src_[next - 1] == '\n';
    return next;
  }

  size_t digits(size_t pos) {
    while (pos < src_.size() &&
           (std::isdigit(static_cast<unsigned char>(src_[pos])) ||
            (src_[pos] == '_' && pos + 1 < src_.size() && std::isdigit(static_cast<unsigned char>(src_[pos + 1])))))
      ++pos;
    return pos;
  }

  size_t number(size_t start) {
    size_t pos = digits(start);
    bool isFloat = false;
    if (pos + 1 < src_.size() && src_[pos] == '.' && std::isdigit(static_cast<unsigned char>(src_[pos + 1]))) {
      pos = digits(pos + 1);
      isFloat = true;
    }
    if (pos < src_.size() && (src_[pos] == 'e' || src_[pos] == 'E')) {
      size_t e = pos + 1;
      if (e < src_.size() && (src_[e] == '+' || src_[e] == '-'))
        ++e;
      if (e < src_.size() && std::isdigit(static_cast<unsigned char>(src_[e]))) {
        pos = digits(e);
        isFloat = true;
      }
    }
    std::string text;
    for (size_t i = start; i < pos; ++i)
      if (src_[i] != '_')
        text += src_[i];
    tokens_.push_back({isFloat ? Token::Type::Float : Token::Type::Int, text, line_});
    return pos;
  }

  size_t string(size_t start) {
    char quote = src_[start];
    std::string value;
    size_t pos = start + 1;
    int startLine = line_;
    while (true) {
      if (pos >= src_.size())
        fail("unterminated string");
      char c = src_[pos];
      if (c == quote)
        break;
      if (c == '\n')
        ++line_;
      if (c != '\\') {
        value += c;
        ++pos;
        continue;
      }
      if (pos + 1 >= src_.size())
        fail("unterminated string");
      char e = src_[pos + 1];
      pos += 2;
      // Python's unicode-escape decoding.
      switch (e) {
      case 'n': value += '\n'; break;
      case 't': value += '\t'; break;
      case 'r': value += '\r'; break;
      case '\\': value += '\\'; break;
      case '\'': value += '\''; break;
      case '"': value += '"'; break;
      case 'a': value += '\a'; break;
      case 'b': value += '\b'; break;
      case 'f': value += '\f'; break;
      case 'v': value += '\v'; break;
      case '\n': ++line_; break;
      case 'x':
      case 'u':
      case 'U': {
        size_t count = e == 'x' ? 2 : e == 'u' ? 4 : 8;
        if (pos + count > src_.size())
          fail("truncated \\" + std::string(1, e) + " escape");
        uint32_t cp = 0;
        for (size_t k = 0; k < count; ++k) {
          char h = src_[pos + k];
          if (!std::isxdigit(static_cast<unsigned char>(h)))
            fail("truncated \\" + std::string(1, e) + " escape");
          cp = cp * 16 + uint32_t(std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
        }
        if (cp > 0x10FFFF)
          fail("illegal Unicode character");
        pos += count;
        utf8::append(value, cp);
        break;
      }
      default:
        if (e >= '0' && e <= '7') {
          uint32_t cp = uint32_t(e - '0');
          for (int k = 0; k < 2 && pos < src_.size() && src_[pos] >= '0' && src_[pos] <= '7'; ++k)
            cp = cp * 8 + uint32_t(src_[pos++] - '0');
          utf8::append(value, cp);
        } else {
          value += '\\';
          value += e;
        }
      }
    }
    tokens_.push_back({Token::Type::String, std::move(value), startLine});
    return pos + 1;
  }

  std::string src_;
  std::vector<Token> tokens_;
  int line_ = 1;
};

} // namespace

Result<std::vector<Token>> tokenize(std::string_view source) {
  // Newlines normalized to \n, and one trailing newline dropped
  // (keep_trailing_newline is off).
  std::string text;
  text.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      text += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n')
        ++i;
    } else {
      text += source[i];
    }
  }
  if (!text.empty() && text.back() == '\n')
    text.pop_back();
  try {
    Lexer lexer(std::move(text));
    return lexer.run();
  } catch (const LexError &e) {
    return Status::error(e.message);
  }
}

} // namespace llmir::jinja

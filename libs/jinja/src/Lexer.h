// The Jinja2 lexer: template text -> tokens, with Jinja2's whitespace rules
// as transformers configures them (trim_blocks, lstrip_blocks, "-" and "+"
// markers, newlines normalized to \n, one trailing newline dropped).
#pragma once

#include "llmir/support/Status.h"

#include <string>
#include <string_view>
#include <vector>

namespace llmir::jinja {

struct Token {
  enum class Type { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, End };
  Type type;
  std::string text; // Data: the text; Name/Op: the spelling; String: the decoded value; numbers: digits
  int line = 1;
};

Result<std::vector<Token>> tokenize(std::string_view source);

} // namespace llmir::jinja

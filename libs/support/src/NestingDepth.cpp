#include "llmir/support/NestingDepth.h"

namespace llmir {

Status checkNestingDepth(std::string_view text, std::string_view source, size_t maxDepth) {
  size_t depth = 0, line = 1;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n') {
      ++line;
    } else if (c == '"') { // a string literal: brackets inside do not count
      for (++i; i < text.size() && text[i] != '"'; ++i) {
        if (text[i] == '\\')
          ++i;
        else if (text[i] == '\n')
          ++line;
      }
    } else if (c == '/' && i + 1 < text.size() && text[i + 1] == '/') {
      while (i < text.size() && text[i] != '\n')
        ++i;
      --i; // the newline is counted above
    } else if (c == '(' || c == '[' || c == '{' || c == '<') {
      if (++depth > maxDepth)
        return Status::error(std::string(source) + ":" + std::to_string(line) +
                             ": brackets nest deeper than " + std::to_string(maxDepth) +
                             " levels (refused before parsing; docs/reliability.md)");
    } else if ((c == ')' || c == ']' || c == '}') && depth > 0) {
      --depth;
    } else if (c == '>' && depth > 0 && !(i > 0 && text[i - 1] == '-') &&
               !(i + 1 < text.size() && text[i + 1] == '=')) {
      // `->` (function types) and `>=` (affine constraints) are not closers.
      --depth;
    }
  }
  return Status::ok();
}

} // namespace llmir

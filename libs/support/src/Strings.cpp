#include "llmir/support/Strings.h"

namespace llmir {

std::vector<std::string> splitNonEmpty(std::string_view text, char separator) {
  std::vector<std::string> items;
  for (size_t at = 0; at < text.size();) {
    size_t end = text.find(separator, at);
    if (end == std::string_view::npos)
      end = text.size();
    if (end > at)
      items.emplace_back(text.substr(at, end - at));
    at = end + 1;
  }
  return items;
}

} // namespace llmir

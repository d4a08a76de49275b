#include "SseParser.h"

namespace llmir::bench {

void SseParser::feed(std::string_view bytes,
                     const std::function<void(std::string_view)> &onData) {
  pending_.append(bytes);
  size_t start = 0;
  for (size_t nl; (nl = pending_.find('\n', start)) != std::string::npos; start = nl + 1) {
    std::string_view line(pending_.data() + start, nl - start);
    if (!line.empty() && line.back() == '\r')
      line.remove_suffix(1);
    takeLine(line, onData);
  }
  pending_.erase(0, start);
}

void SseParser::takeLine(std::string_view line,
                         const std::function<void(std::string_view)> &onData) {
  if (line.empty()) { // a blank line ends the event
    if (hasData_)
      onData(data_);
    data_.clear();
    hasData_ = false;
    return;
  }
  if (line.substr(0, 5) != "data:")
    return; // comments (":...") and other fields (event, id, retry)
  line.remove_prefix(5);
  if (!line.empty() && line.front() == ' ')
    line.remove_prefix(1);
  if (hasData_)
    data_.push_back('\n');
  data_.append(line);
  hasData_ = true;
}

} // namespace llmir::bench

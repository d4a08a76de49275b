// Incremental Server-Sent Events parser: bytes arrive in arbitrary pieces
// (HTTP chunks split events anywhere); complete events' `data` payloads come
// out in order. Only `data:` fields matter for OpenAI streams.
#pragma once

#include <functional>
#include <string>
#include <string_view>

namespace llmir::bench {

class SseParser {
public:
  /// Appends `bytes` and calls `onData` with the data of every event that
  /// is now complete (several `data:` lines of one event joined by '\n').
  /// Events without data (comments, keep-alives) are skipped.
  void feed(std::string_view bytes, const std::function<void(std::string_view)> &onData);

private:
  void takeLine(std::string_view line, const std::function<void(std::string_view)> &onData);

  std::string pending_; // bytes after the last complete line
  std::string data_;    // data of the event being read
  bool hasData_ = false;
};

} // namespace llmir::bench

// Structured logs: one JSON object per line on stdout,
// {"ts":"2024-..Z","level":"info","service":"scheduler","msg":"...",
//  "request_id":"...", <fields>}. Thread-safe; lines never interleave.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

namespace llmir::net {

enum class LogLevel { Debug, Info, Warn, Error };

/// One extra key of a log line; the value is kept as JSON text.
struct LogField {
  LogField(std::string_view key, std::string_view value);
  LogField(std::string_view key, const char *value);
  LogField(std::string_view key, const std::string &value);
  LogField(std::string_view key, int64_t value);
  LogField(std::string_view key, uint64_t value);
  LogField(std::string_view key, int value) : LogField(key, int64_t(value)) {}
  LogField(std::string_view key, unsigned value) : LogField(key, uint64_t(value)) {}
  LogField(std::string_view key, double value);
  LogField(std::string_view key, bool value);
  std::string key;
  std::string json;
};

/// Names the service on every line and sets the lowest level written.
void initLogging(std::string service, LogLevel minLevel = LogLevel::Info);
/// "debug", "info", "warn", "error"; false for anything else.
bool parseLogLevel(std::string_view text, LogLevel &level);
/// "debug", "info", "warn" or "error": what parseLogLevel reads.
const char *logLevelName(LogLevel level);

void log(LogLevel level, std::string_view msg,
         std::initializer_list<LogField> fields = {},
         std::string_view requestId = {});
/// The line log() would write (no trailing newline); for tests.
std::string formatLogLine(LogLevel level, std::string_view msg,
                          std::initializer_list<LogField> fields,
                          std::string_view requestId);

inline void logInfo(std::string_view msg, std::initializer_list<LogField> f = {}) {
  log(LogLevel::Info, msg, f);
}
inline void logWarn(std::string_view msg, std::initializer_list<LogField> f = {}) {
  log(LogLevel::Warn, msg, f);
}
inline void logError(std::string_view msg, std::initializer_list<LogField> f = {}) {
  log(LogLevel::Error, msg, f);
}

} // namespace llmir::net

#include "llmir/net/Log.h"

#include <boost/json.hpp>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace llmir::net {
namespace {
std::mutex logMu;
std::string logService = "llmir";
LogLevel logMinLevel = LogLevel::Info;

std::string quote(std::string_view s) {
  return boost::json::serialize(boost::json::string(s));
}

std::string timestamp() {
  auto now = std::chrono::system_clock::now();
  std::time_t secs = std::chrono::system_clock::to_time_t(now);
  auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(
                    now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                tm.tm_min, tm.tm_sec, static_cast<int>(millis));
  return buf;
}
} // namespace

LogField::LogField(std::string_view k, std::string_view v) : key(k), json(quote(v)) {}
LogField::LogField(std::string_view k, const char *v) : LogField(k, std::string_view(v)) {}
LogField::LogField(std::string_view k, const std::string &v)
    : LogField(k, std::string_view(v)) {}
LogField::LogField(std::string_view k, int64_t v) : key(k), json(std::to_string(v)) {}
LogField::LogField(std::string_view k, uint64_t v) : key(k), json(std::to_string(v)) {}
LogField::LogField(std::string_view k, double v)
    : key(k), json(boost::json::serialize(boost::json::value(v))) {}
LogField::LogField(std::string_view k, bool v) : key(k), json(v ? "true" : "false") {}

const char *logLevelName(LogLevel level) {
  switch (level) {
  case LogLevel::Debug: return "debug";
  case LogLevel::Info: return "info";
  case LogLevel::Warn: return "warn";
  case LogLevel::Error: return "error";
  }
  return "info";
}

void initLogging(std::string service, LogLevel minLevel) {
  std::lock_guard lock(logMu);
  logService = std::move(service);
  logMinLevel = minLevel;
}

bool parseLogLevel(std::string_view text, LogLevel &level) {
  for (LogLevel l : {LogLevel::Debug, LogLevel::Info, LogLevel::Warn, LogLevel::Error})
    if (text == logLevelName(l)) {
      level = l;
      return true;
    }
  return false;
}

std::string formatLogLine(LogLevel level, std::string_view msg,
                          std::initializer_list<LogField> fields,
                          std::string_view requestId) {
  std::string service;
  {
    std::lock_guard lock(logMu);
    service = logService;
  }
  std::string line = "{\"ts\":\"" + timestamp() + "\",\"level\":\"" +
                     logLevelName(level) + "\",\"service\":" + quote(service) +
                     ",\"msg\":" + quote(msg);
  if (!requestId.empty())
    line += ",\"request_id\":" + quote(requestId);
  for (const LogField &f : fields)
    line += "," + quote(f.key) + ":" + f.json;
  line += "}";
  return line;
}

void log(LogLevel level, std::string_view msg,
         std::initializer_list<LogField> fields, std::string_view requestId) {
  {
    std::lock_guard lock(logMu);
    if (level < logMinLevel)
      return;
  }
  std::string line = formatLogLine(level, msg, fields, requestId);
  line += '\n';
  std::lock_guard lock(logMu);
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fflush(stdout);
}

} // namespace llmir::net

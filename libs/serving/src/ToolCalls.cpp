#include "llmir/serving/ToolCalls.h"

#include <boost/json.hpp>

#include <cstdio>

namespace llmir::serving {
namespace {

namespace json = boost::json;

constexpr std::string_view kHermesOpen = "<tool_call>";
constexpr std::string_view kHermesClose = "</tool_call>";
constexpr std::string_view kPythonTag = "<|python_tag|>";
constexpr std::string_view kMistralTag = "[TOOL_CALLS]";

std::string callId(ToolCallFormat format, uint64_t seed, size_t index) {
  // splitmix64 of (seed, index): unique per request and choice, no RNG state.
  uint64_t x = seed + 0x9e3779b97f4a7c15ULL * (index + 1);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  x ^= x >> 31;
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::string id = format == ToolCallFormat::Mistral ? "" : "call_";
  const size_t length = format == ToolCallFormat::Mistral ? 9 : 24;
  for (size_t i = 0; i < length; ++i) {
    id += alphabet[x % 62];
    x = x / 62 ^ (x * 0x2545f4914f6cdd1dULL);
  }
  return id;
}

/// One call from {"name": ..., "arguments"|"parameters": {...}}.
std::optional<ToolCall> callFrom(const json::value &v) {
  const json::object *o = v.if_object();
  if (!o)
    return std::nullopt;
  const json::value *name = o->if_contains("name");
  if (!name || !name->is_string())
    return std::nullopt;
  const json::value *arguments = o->if_contains("arguments");
  if (!arguments)
    arguments = o->if_contains("parameters");
  ToolCall call;
  call.name = std::string(name->get_string());
  if (!arguments || arguments->is_null())
    call.arguments = "{}";
  else if (arguments->is_string())
    call.arguments = std::string(arguments->get_string()); // already JSON text
  else
    call.arguments = json::serialize(*arguments);
  return call;
}

std::optional<json::value> parseJson(std::string_view text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec)
    return std::nullopt;
  return v;
}

std::string_view trim(std::string_view s) {
  const char *ws = " \t\r\n";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos)
    return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

/// Calls of a llama3_json or mistral output (its whole text); nullopt when
/// it is not calls.
std::optional<std::vector<ToolCall>> leadingCalls(ToolCallFormat format, std::string_view text) {
  std::string_view body = trim(text);
  if (format == ToolCallFormat::Mistral) {
    if (!body.starts_with(kMistralTag))
      return std::nullopt;
    body = trim(body.substr(kMistralTag.size()));
    auto v = parseJson(body);
    if (!v)
      return std::nullopt;
    std::vector<ToolCall> calls;
    if (v->is_array()) {
      for (const json::value &item : v->get_array()) {
        auto call = callFrom(item);
        if (!call)
          return std::nullopt;
        calls.push_back(std::move(*call));
      }
    } else if (auto call = callFrom(*v)) {
      calls.push_back(std::move(*call));
    } else {
      return std::nullopt;
    }
    return calls;
  }
  if (body.starts_with(kPythonTag))
    body = trim(body.substr(kPythonTag.size()));
  if (!body.starts_with("{"))
    return std::nullopt;
  // One object, or several separated by ';'.
  std::vector<ToolCall> calls;
  size_t start = 0;
  while (start < body.size()) {
    size_t end = body.find(';', start);
    // A ';' inside a JSON string must not split: try growing pieces.
    std::optional<json::value> v;
    while (true) {
      std::string_view piece = trim(body.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
      v = parseJson(piece);
      if (v || end == std::string_view::npos)
        break;
      end = body.find(';', end + 1);
    }
    if (!v)
      return std::nullopt;
    auto call = callFrom(*v);
    if (!call)
      return std::nullopt;
    calls.push_back(std::move(*call));
    if (end == std::string_view::npos)
      break;
    start = end + 1;
  }
  return calls;
}

} // namespace

Result<ToolCallFormat> toolCallFormat(std::string_view name) {
  if (name == "hermes")
    return ToolCallFormat::Hermes;
  if (name == "llama3_json")
    return ToolCallFormat::Llama3Json;
  if (name == "mistral")
    return ToolCallFormat::Mistral;
  return Status::error("unknown tool call parser '" + std::string(name) +
                       "' (expected hermes, llama3_json or mistral)");
}

ParsedOutput parseToolCalls(ToolCallFormat format, std::string_view text, uint64_t idSeed) {
  ToolCallStream stream(format, idSeed);
  ToolCallStream::Delta a = stream.push(text);
  ToolCallStream::Delta b = stream.finish();
  ParsedOutput out;
  std::string content = a.content + b.content;
  out.toolCalls = std::move(a.toolCalls);
  for (auto &c : b.toolCalls)
    out.toolCalls.push_back(std::move(c));
  if (!content.empty() || out.toolCalls.empty())
    out.content = std::move(content);
  if (!out.toolCalls.empty() && out.content && trim(*out.content).empty())
    out.content.reset();
  return out;
}

ToolCallStream::Delta ToolCallStream::push(std::string_view text) {
  pending_ += text;
  return release(false);
}

ToolCallStream::Delta ToolCallStream::finish() { return release(true); }

ToolCallStream::Delta ToolCallStream::release(bool final) {
  Delta out;
  if (format_ != ToolCallFormat::Hermes) {
    // Calls only as the whole output: hold everything while it may be one.
    if (sawContent_) {
      out.content = std::move(pending_);
      pending_.clear();
      return out;
    }
    std::string_view body = trim(pending_);
    const std::string_view tag = format_ == ToolCallFormat::Mistral ? kMistralTag : kPythonTag;
    const bool mayBeCall = body.empty() || tag.starts_with(body.substr(0, tag.size())) ||
                           body.starts_with(tag) ||
                           (format_ == ToolCallFormat::Llama3Json && body.starts_with("{"));
    if (!mayBeCall) {
      sawContent_ = true;
      out.content = std::move(pending_);
      pending_.clear();
      return out;
    }
    if (!final)
      return out;
    if (auto calls = leadingCalls(format_, pending_)) {
      for (ToolCall &call : *calls) {
        call.id = callId(format_, idSeed_, calls_++);
        out.toolCalls.push_back(std::move(call));
      }
    } else {
      out.content = std::move(pending_);
    }
    pending_.clear();
    return out;
  }
  // Hermes: content up to <tool_call>, each block released when closed.
  while (true) {
    size_t open = pending_.find(kHermesOpen);
    if (open == std::string::npos) {
      // Keep a tail that could begin "<tool_call>".
      size_t keep = 0;
      if (!final)
        for (size_t k = std::min(pending_.size(), kHermesOpen.size() - 1); k > 0; --k)
          if (kHermesOpen.starts_with(std::string_view(pending_).substr(pending_.size() - k))) {
            keep = k;
            break;
          }
      out.content += pending_.substr(0, pending_.size() - keep);
      pending_.erase(0, pending_.size() - keep);
      return out;
    }
    out.content += pending_.substr(0, open);
    pending_.erase(0, open);
    size_t close = pending_.find(kHermesClose);
    if (close == std::string::npos) {
      if (final) { // never closed: a call if its JSON is complete, else text
        std::string_view body = trim(std::string_view(pending_).substr(kHermesOpen.size()));
        auto v = parseJson(body);
        auto call = v ? callFrom(*v) : std::nullopt;
        if (call) {
          call->id = callId(format_, idSeed_, calls_++);
          out.toolCalls.push_back(std::move(*call));
        } else {
          out.content += pending_;
        }
        pending_.clear();
      }
      return out;
    }
    std::string_view body = trim(std::string_view(pending_).substr(kHermesOpen.size(), close - kHermesOpen.size()));
    auto v = parseJson(body);
    auto call = v ? callFrom(*v) : std::nullopt;
    if (call) {
      call->id = callId(format_, idSeed_, calls_++);
      out.toolCalls.push_back(std::move(*call));
    } else {
      out.content += pending_.substr(0, close + kHermesClose.size());
    }
    pending_.erase(0, close + kHermesClose.size());
    // Whitespace after a call is not content.
    if (!out.toolCalls.empty()) {
      size_t next = pending_.find_first_not_of(" \t\r\n");
      pending_.erase(0, next == std::string::npos ? pending_.size() : next);
    }
  }
}

} // namespace llmir::serving

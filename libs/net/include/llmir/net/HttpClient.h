// A small blocking HTTP/1.1 client (Beast behind the interface): one request
// per call on a fresh connection, bounded by a timeout. Used by workers to
// fetch programs from the compiler service, and by tests.
#pragma once

#include "llmir/net/Http.h"
#include "llmir/support/Status.h"

#include <chrono>
#include <functional>
#include <string>
#include <string_view>

namespace llmir::net {

struct HttpClientResponse {
  int status = 0;
  HttpHeaders headers; // names lower-cased
  std::string body;
  std::optional<std::string> header(std::string_view name) const;
};

struct HttpClientRequest {
  std::string method = "GET";
  /// "http://host:port/path?query" (https is not supported).
  std::string url;
  std::string body;
  std::string contentType = "application/json";
  HttpHeaders headers;
  /// Bound on the whole exchange (connect, send, receive).
  std::chrono::milliseconds timeout{30000};
  /// Larger response bodies fail the request.
  uint64_t maxResponseBytes = uint64_t(1) << 32;
};

/// Sends the request and reads the whole response. Fails (no exception) on
/// a bad URL, connection/timeout errors or a malformed response; any HTTP
/// status (4xx, 5xx included) is a successful exchange.
Result<HttpClientResponse> httpRequest(const HttpClientRequest &request);

Result<HttpClientResponse> httpGet(const std::string &url,
                                   std::chrono::milliseconds timeout =
                                       std::chrono::milliseconds(30000));
Result<HttpClientResponse> httpPost(const std::string &url, std::string body,
                                    std::string contentType = "application/json",
                                    std::chrono::milliseconds timeout =
                                        std::chrono::milliseconds(30000));

/// As httpRequest, but hands the body to `onChunk` as it arrives (each chunk
/// of a chunked response, or the whole body otherwise). Returning false from
/// `onChunk` disconnects at once (a client going away mid-stream). The
/// returned response has an empty body.
Result<HttpClientResponse>
httpRequestStreaming(const HttpClientRequest &request,
                     const std::function<bool(std::string_view)> &onChunk);

struct ParsedUrl {
  std::string host;
  std::string port; // "80" when absent
  std::string target; // "/" when absent
};
Result<ParsedUrl> parseHttpUrl(std::string_view url);

} // namespace llmir::net

// Blocking HTTP client: each step is an async Beast operation run on a
// private io_context up to the request's deadline, so a dead peer can never
// hang the caller.
#include "llmir/net/HttpClient.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace llmir::net {
namespace {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

std::string toLower(std::string_view s) {
  std::string out(s);
  for (char &c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::optional<std::string> findHeader(const HttpHeaders &headers,
                                      std::string_view name) {
  std::string lower = toLower(name);
  for (const auto &[k, v] : headers)
    if (k == lower)
      return v;
  return std::nullopt;
}

// Runs the operation started by `start` until it completes or `deadline`
// passes (then cancels it through `cancel` and reports timed_out).
template <typename Start, typename Cancel>
beast::error_code runUntil(asio::io_context &ioc, Clock::time_point deadline,
                           Start start, Cancel cancel) {
  beast::error_code result = asio::error::would_block;
  start(result);
  ioc.restart();
  auto now = Clock::now();
  ioc.run_for(deadline > now ? deadline - now : Clock::duration::zero());
  if (result == asio::error::would_block) {
    cancel();
    ioc.restart();
    ioc.run();
    return asio::error::timed_out;
  }
  return result;
}

Result<HttpClientResponse>
exchange(const HttpClientRequest &request,
         const std::function<bool(std::string_view)> *onChunk) {
  Result<ParsedUrl> url = parseHttpUrl(request.url);
  if (!url)
    return url.status();
  const std::string where = request.method + " " + request.url;
  auto deadline = Clock::now() + request.timeout;
  asio::io_context ioc;
  tcp::resolver resolver(ioc);
  beast::tcp_stream stream(ioc);

  tcp::resolver::results_type endpoints;
  beast::error_code ec = runUntil(
      ioc, deadline,
      [&](beast::error_code &out) {
        resolver.async_resolve(url->host, url->port,
                               [&](beast::error_code e, tcp::resolver::results_type r) {
                                 out = e;
                                 endpoints = std::move(r);
                               });
      },
      [&] { resolver.cancel(); });
  if (ec)
    return Status::error(where + ": cannot resolve " + url->host + ": " + ec.message());

  auto cancelStream = [&] { stream.socket().close(); };
  ec = runUntil(
      ioc, deadline,
      [&](beast::error_code &out) {
        stream.async_connect(endpoints, [&](beast::error_code e, const tcp::endpoint &) {
          out = e;
        });
      },
      cancelStream);
  if (ec)
    return Status::error(where + ": cannot connect: " + ec.message());

  http::request<http::string_body> req{
      http::string_to_verb(request.method), url->target, 11};
  if (req.method() == http::verb::unknown)
    return Status::error(where + ": unknown HTTP method");
  req.set(http::field::host, url->host + ":" + url->port);
  req.set(http::field::user_agent, "llmir");
  for (const auto &[k, v] : request.headers)
    req.set(k, v);
  if (!request.body.empty() || req.method() == http::verb::post) {
    req.set(http::field::content_type, request.contentType);
    req.body() = request.body;
  }
  req.keep_alive(false);
  req.prepare_payload();
  ec = runUntil(
      ioc, deadline,
      [&](beast::error_code &out) {
        http::async_write(stream, req, [&](beast::error_code e, size_t) { out = e; });
      },
      cancelStream);
  if (ec)
    return Status::error(where + ": cannot send request: " + ec.message());

  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(request.maxResponseBytes);
  bool stoppedByCaller = false;
  auto chunkBody = [&](uint64_t, std::string_view body,
                       beast::error_code &chunkEc) -> size_t {
    if (!(*onChunk)(body)) {
      stoppedByCaller = true;
      chunkEc = asio::error::operation_aborted;
    }
    return body.size();
  };
  if (onChunk)
    parser.on_chunk_body(chunkBody);
  ec = runUntil(
      ioc, deadline,
      [&](beast::error_code &out) {
        http::async_read(stream, buffer, parser,
                         [&](beast::error_code e, size_t) { out = e; });
      },
      cancelStream);
  if (stoppedByCaller) {
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream.socket().close(ignored);
  } else if (ec) {
    return Status::error(where + ": cannot read response: " + ec.message());
  }

  HttpClientResponse response;
  const auto &res = parser.get();
  response.status = static_cast<int>(res.result_int());
  for (const auto &field : res)
    response.headers.emplace_back(toLower(field.name_string()),
                                  std::string(field.value()));
  if (!onChunk)
    response.body = res.body();
  else if (!res.chunked() && !stoppedByCaller && !res.body().empty())
    (*onChunk)(res.body());
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  return response;
}
} // namespace

std::optional<std::string>
HttpClientResponse::header(std::string_view name) const {
  return findHeader(headers, name);
}

Result<ParsedUrl> parseHttpUrl(std::string_view url) {
  constexpr std::string_view scheme = "http://";
  if (!url.starts_with(scheme))
    return Status::error("URL '" + std::string(url) +
                         "': expected http://host[:port][/path]");
  std::string_view rest = url.substr(scheme.size());
  size_t slash = rest.find('/');
  std::string_view hostPort = rest.substr(0, slash);
  ParsedUrl parsed;
  parsed.target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  size_t colon = hostPort.rfind(':');
  if (!hostPort.empty() && hostPort.front() == '[') { // [v6]:port
    size_t close = hostPort.find(']');
    if (close == std::string_view::npos)
      return Status::error("URL '" + std::string(url) + "': unclosed '[' in host");
    parsed.host = std::string(hostPort.substr(1, close - 1));
    colon = hostPort.find(':', close);
  } else {
    parsed.host = std::string(hostPort.substr(0, colon));
  }
  parsed.port = colon == std::string_view::npos ? "80"
                                                : std::string(hostPort.substr(colon + 1));
  if (parsed.host.empty() || parsed.port.empty() ||
      parsed.port.find_first_not_of("0123456789") != std::string::npos)
    return Status::error("URL '" + std::string(url) +
                         "': expected http://host[:port][/path]");
  return parsed;
}

Result<HttpClientResponse> httpRequest(const HttpClientRequest &request) {
  try {
    return exchange(request, nullptr);
  } catch (const std::exception &e) {
    return Status::error(request.method + " " + request.url + ": " + e.what());
  }
}

Result<HttpClientResponse>
httpRequestStreaming(const HttpClientRequest &request,
                     const std::function<bool(std::string_view)> &onChunk) {
  try {
    return exchange(request, &onChunk);
  } catch (const std::exception &e) {
    return Status::error(request.method + " " + request.url + ": " + e.what());
  }
}

Result<HttpClientResponse> httpGet(const std::string &url,
                                   std::chrono::milliseconds timeout) {
  HttpClientRequest request;
  request.url = url;
  request.timeout = timeout;
  return httpRequest(request);
}

Result<HttpClientResponse> httpPost(const std::string &url, std::string body,
                                    std::string contentType,
                                    std::chrono::milliseconds timeout) {
  HttpClientRequest request;
  request.method = "POST";
  request.url = url;
  request.body = std::move(body);
  request.contentType = std::move(contentType);
  request.timeout = timeout;
  return httpRequest(request);
}

} // namespace llmir::net

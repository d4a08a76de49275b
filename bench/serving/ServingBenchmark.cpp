#include "ServingBenchmark.h"

#include "SseParser.h"

#include "llmir/net/HttpClient.h"

#include <boost/json.hpp>

#include <atomic>
#include <cmath>
#include <fstream>
#include <random>
#include <thread>

namespace llmir::bench {
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

namespace {

// Common English words: byte-level BPE vocabularies hold most as one token,
// so promptLen words are about promptLen tokens.
constexpr const char *kWords[] = {
    "the",   "of",    "and",   "to",    "in",    "is",    "for",   "that",
    "with",  "on",    "as",    "are",   "it",    "by",    "from",  "this",
    "be",    "or",    "at",    "an",    "was",   "have",  "not",   "we",
    "can",   "will",  "all",   "one",   "more",  "time",  "new",   "data",
    "model", "world", "water", "city",  "house", "light", "music", "river",
    "small", "large", "first", "last",  "good",  "great", "old",   "high",
    "day",   "year",  "way",   "work",  "life",  "system", "number", "part",
    "place", "case",  "point", "group", "hand",  "state", "order", "line"};

std::string completionsBody(const BenchmarkOptions &o, const std::string &model,
                            const std::string &prompt) {
  json::object body;
  body["model"] = model;
  body["prompt"] = prompt;
  body["max_tokens"] = o.outputLen;
  body["temperature"] = o.temperature;
  if (o.topP < 1.0)
    body["top_p"] = o.topP;
  body["stream"] = true;
  body["stream_options"] = json::object{{"include_usage", true}};
  if (o.ignoreEos)
    body["ignore_eos"] = true;
  if (!o.extraBody.empty()) { // validate() parsed it once
    const json::value extra = json::parse(o.extraBody);
    for (const auto &[key, value] : extra.as_object())
      body[key] = value;
  }
  return json::serialize(body);
}

net::HttpHeaders authHeaders(const BenchmarkOptions &o) {
  if (o.apiKey.empty())
    return {};
  return {{"authorization", "Bearer " + o.apiKey}};
}

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Folds one `data:` payload of the stream into `r`. Returns false (and sets
// r.error) when the payload says the request failed or is not JSON.
bool takeStreamEvent(std::string_view data, Clock::time_point start, RequestResult &r,
                     double &lastTextAt, int64_t &textChunks, int64_t &usageTokens) {
  boost::system::error_code ec;
  json::value event = json::parse(data, ec);
  if (ec || !event.is_object()) {
    r.error = "stream event is not a JSON object: " + std::string(data.substr(0, 200));
    return false;
  }
  const json::object &obj = event.as_object();
  if (const json::value *error = obj.if_contains("error")) {
    r.error = "error event: " + json::serialize(*error);
    return false;
  }
  if (const json::value *usage = obj.if_contains("usage"); usage && usage->is_object()) {
    const json::object &u = usage->as_object();
    if (const json::value *p = u.if_contains("prompt_tokens"); p && p->is_int64())
      r.promptTokens = p->as_int64();
    if (const json::value *c = u.if_contains("completion_tokens"); c && c->is_int64())
      usageTokens = c->as_int64();
  }
  const json::value *choices = obj.if_contains("choices");
  if (!choices || !choices->is_array() || choices->as_array().empty())
    return true;
  const json::value &choice = choices->as_array().front();
  const json::value *text = choice.is_object() ? choice.as_object().if_contains("text") : nullptr;
  if (!text || !text->is_string() || text->as_string().empty())
    return true;
  const double now = secondsSince(start);
  if (textChunks == 0)
    r.ttft = now;
  else
    r.itl.push_back(now - lastTextAt);
  lastTextAt = now;
  ++textChunks;
  r.text.append(text->as_string().c_str(), text->as_string().size());
  return true;
}

} // namespace

Status validate(const BenchmarkOptions &o) {
  if (o.numPrompts < 1)
    return Status::error("--num-prompts must be at least 1, got " +
                                   std::to_string(o.numPrompts));
  if (o.concurrency < 0)
    return Status::error("--concurrency must be 0 (no limit) or positive, got " +
                                   std::to_string(o.concurrency));
  if (!(o.requestRate > 0))
    return Status::error("--request-rate must be positive or inf, got " +
                                   std::to_string(o.requestRate));
  if (o.outputLen < 1)
    return Status::error("--output-len must be at least 1, got " +
                                   std::to_string(o.outputLen));
  if (o.promptsFile.empty() && o.promptLen < 1)
    return Status::error("--prompt-len must be at least 1, got " +
                                   std::to_string(o.promptLen));
  if (!(o.topP > 0 && o.topP <= 1))
    return Status::error("--top-p must be in (0, 1], got " + std::to_string(o.topP));
  if (!o.extraBody.empty()) {
    boost::system::error_code ec;
    const json::value extra = json::parse(o.extraBody, ec);
    if (ec || !extra.is_object())
      return Status::error("--extra-body must be a JSON object, got '" + o.extraBody + "'");
  }
  if (auto url = net::parseHttpUrl(o.baseUrl); !url)
    return Status::error("--base-url '" + o.baseUrl + "': " + url.message());
  return Status::ok();
}

Result<std::vector<std::string>> makePrompts(const BenchmarkOptions &o) {
  std::vector<std::string> prompts;
  if (!o.promptsFile.empty()) {
    std::ifstream in(o.promptsFile);
    if (!in)
      return Status::error("cannot read the prompts file '" + o.promptsFile + "'");
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);)
      if (!line.empty())
        lines.push_back(std::move(line));
    if (lines.empty())
      return Status::error("the prompts file '" + o.promptsFile +
                                     "' has no non-empty line");
    for (int i = 0; i < o.numPrompts; ++i)
      prompts.push_back(lines[i % lines.size()]);
    return prompts;
  }
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<size_t> pick(0, std::size(kWords) - 1);
  for (int i = 0; i < o.numPrompts; ++i) {
    std::string prompt;
    for (int w = 0; w < o.promptLen; ++w) {
      if (w > 0)
        prompt.push_back(' ');
      prompt += kWords[pick(rng)];
    }
    prompts.push_back(std::move(prompt));
  }
  return prompts;
}

Result<std::string> resolveModel(const BenchmarkOptions &o) {
  if (!o.model.empty())
    return o.model;
  net::HttpClientRequest request;
  request.url = o.baseUrl + "/models";
  request.headers = authHeaders(o);
  request.timeout = std::chrono::milliseconds(10000);
  auto response = net::httpRequest(request);
  if (!response)
    return Status::error("GET " + request.url + ": " + response.message());
  if (response->status != 200)
    return Status::error("GET " + request.url + " answered " +
                               std::to_string(response->status) + ": " +
                               response->body.substr(0, 300));
  boost::system::error_code ec;
  json::value models = json::parse(response->body, ec);
  const json::value *data = (!ec && models.is_object()) ? models.as_object().if_contains("data")
                                                         : nullptr;
  if (!data || !data->is_array() || data->as_array().empty() ||
      !data->as_array().front().is_object())
    return Status::error("GET " + request.url +
                               " did not list a model (expected {\"data\": [{\"id\": ...}]}); "
                               "pass --model");
  const json::value *id = data->as_array().front().as_object().if_contains("id");
  if (!id || !id->is_string())
    return Status::error("GET " + request.url + ": the first model has no string id");
  return std::string(id->as_string());
}

RequestResult sendCompletion(const BenchmarkOptions &o, const std::string &model,
                             const std::string &prompt) {
  RequestResult r;
  net::HttpClientRequest request;
  request.method = "POST";
  request.url = o.baseUrl + "/completions";
  request.body = completionsBody(o, model, prompt);
  request.headers = authHeaders(o);
  request.timeout = o.requestTimeout;

  SseParser parser;
  std::string head; // the first bytes, for error messages
  bool done = false;
  bool failed = false;
  double lastTextAt = 0;
  int64_t textChunks = 0;
  int64_t usageTokens = -1;
  const Clock::time_point start = Clock::now();
  auto response = net::httpRequestStreaming(request, [&](std::string_view bytes) {
    if (head.size() < 512)
      head.append(bytes.substr(0, 512 - head.size()));
    parser.feed(bytes, [&](std::string_view data) {
      if (failed || done)
        return;
      if (data == "[DONE]")
        done = true;
      else if (!takeStreamEvent(data, start, r, lastTextAt, textChunks, usageTokens))
        failed = true;
    });
    return !failed;
  });
  r.e2e = secondsSince(start);
  if (!response) {
    r.error = response.message();
  } else if (response->status != 200) {
    r.error = "HTTP " + std::to_string(response->status) + ": " + head;
  } else if (!failed && !done) {
    r.error = "the stream ended without 'data: [DONE]'";
  } else if (!failed && textChunks == 0) {
    r.error = "the stream carried no text";
  }
  r.outputTokens = usageTokens >= 0 ? usageTokens : textChunks;
  r.success = r.error.empty();
  return r;
}

BenchmarkRun runBenchmark(const BenchmarkOptions &o, const std::string &model,
                          const std::vector<std::string> &prompts) {
  // Arrival offsets of a Poisson process; an infinite rate sends all at once.
  std::vector<double> arrivals(prompts.size(), 0.0);
  if (std::isfinite(o.requestRate)) {
    std::mt19937_64 rng(o.seed ^ 0x9e3779b97f4a7c15ULL);
    std::exponential_distribution<double> gap(o.requestRate);
    double t = 0;
    for (double &arrival : arrivals) {
      arrival = t;
      t += gap(rng);
    }
  }
  BenchmarkRun run;
  run.results.resize(prompts.size());
  // Each client thread takes the next request in arrival order, waits for
  // its arrival and sends it: at most `clients` requests are in flight.
  const size_t clients = o.concurrency > 0
                             ? std::min(prompts.size(), static_cast<size_t>(o.concurrency))
                             : prompts.size();
  std::atomic<size_t> next{0};
  const Clock::time_point start = Clock::now();
  std::vector<std::thread> threads;
  threads.reserve(clients);
  for (size_t c = 0; c < clients; ++c) {
    threads.emplace_back([&] {
      for (size_t i; (i = next.fetch_add(1)) < prompts.size();) {
        std::this_thread::sleep_until(
            start + std::chrono::duration_cast<Clock::duration>(
                        std::chrono::duration<double>(arrivals[i])));
        run.results[i] = sendCompletion(o, model, prompts[i]);
      }
    });
  }
  for (std::thread &t : threads)
    t.join();
  run.durationSeconds = secondsSince(start);
  return run;
}

} // namespace llmir::bench

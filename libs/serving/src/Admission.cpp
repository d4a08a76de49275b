#include "llmir/serving/Admission.h"

#include <algorithm>
#include <charconv>
#include <mutex>

namespace llmir::serving {

std::optional<Refusal> shedLoad(int64_t waitingSequences, int64_t requestedSequences,
                                const AdmissionOptions &options) {
  if (options.maxWaitingRequests <= 0 || waitingSequences <= 0)
    return std::nullopt;
  if (waitingSequences + std::max<int64_t>(requestedSequences, 1) <= options.maxWaitingRequests)
    return std::nullopt;
  const auto after = std::max<int64_t>(options.shedRetryAfter.count(), 1);
  return Refusal{429, "queue_full",
                 "the server is overloaded: " + std::to_string(waitingSequences) +
                     " sequences are waiting (max-waiting-requests " +
                     std::to_string(options.maxWaitingRequests) + "); retry after " +
                     std::to_string(after) + " s",
                 after};
}

Refusal noReplica(std::chrono::milliseconds waited, const AdmissionOptions &options) {
  const auto after = std::max<int64_t>(options.noReplicaRetryAfter.count(), 1);
  return Refusal{503, "no_replica",
                 "no model replica is available (waited " + std::to_string(waited.count()) +
                     " ms); retry after " + std::to_string(after) + " s",
                 after};
}

std::string retryAfterHeader(std::chrono::seconds after) {
  return std::to_string(std::max<int64_t>(after.count(), 1));
}

struct KeyConcurrencyLimiter::Lease::State {
  KeyLimitOptions options;
  mutable std::mutex mutex;
  std::map<std::string, uint32_t> inFlight; // keys with requests in flight only
};

KeyConcurrencyLimiter::Lease::Lease(Lease &&other) noexcept
    : state_(std::move(other.state_)), key_(std::move(other.key_)) {}

KeyConcurrencyLimiter::Lease &KeyConcurrencyLimiter::Lease::operator=(Lease &&other) noexcept {
  if (this != &other) {
    release();
    state_ = std::move(other.state_);
    key_ = std::move(other.key_);
  }
  return *this;
}

void KeyConcurrencyLimiter::Lease::release() {
  if (!state_)
    return;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    auto it = state_->inFlight.find(key_);
    if (it != state_->inFlight.end() && --it->second == 0)
      state_->inFlight.erase(it); // the map holds only keys in flight
  }
  state_.reset();
}

KeyConcurrencyLimiter::KeyConcurrencyLimiter(KeyLimitOptions options)
    : state_(std::make_shared<Lease::State>()) {
  state_->options = std::move(options);
}

std::variant<KeyConcurrencyLimiter::Lease, Refusal>
KeyConcurrencyLimiter::acquire(const std::string &key) {
  const KeyLimitOptions &options = state_->options;
  auto own = options.perKey.find(key);
  const uint32_t limit = own != options.perKey.end() ? own->second : options.defaultLimit;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    uint32_t &count = state_->inFlight[key];
    if (limit > 0 && count >= limit) {
      const auto after = std::max<int64_t>(options.retryAfter.count(), 1);
      return Refusal{429, "too_many_concurrent_requests",
                     "this API key already has " + std::to_string(count) +
                         " requests in flight, its limit; retry after " +
                         std::to_string(after) + " s or when one of them ends",
                     after};
    }
    ++count;
  }
  Lease lease;
  lease.state_ = state_;
  lease.key_ = key;
  return lease;
}

uint32_t KeyConcurrencyLimiter::inFlight(const std::string &key) const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  auto it = state_->inFlight.find(key);
  return it == state_->inFlight.end() ? 0 : it->second;
}

uint64_t KeyConcurrencyLimiter::totalInFlight() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  uint64_t total = 0;
  for (const auto &[key, count] : state_->inFlight)
    total += count;
  return total;
}

Result<std::vector<ApiKeyEntry>> parseApiKeys(std::string_view text) {
  std::vector<ApiKeyEntry> keys;
  size_t lineNumber = 0;
  while (!text.empty()) {
    ++lineNumber;
    const size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    auto isSpace = [](char c) { return c == ' ' || c == '\t' || c == '\r'; };
    while (!line.empty() && isSpace(line.front()))
      line.remove_prefix(1);
    while (!line.empty() && isSpace(line.back()))
      line.remove_suffix(1);
    if (line.empty() || line.front() == '#')
      continue;
    size_t split = 0;
    while (split < line.size() && !isSpace(line[split]))
      ++split;
    ApiKeyEntry entry;
    entry.key = std::string(line.substr(0, split));
    std::string_view rest = line.substr(split);
    while (!rest.empty() && isSpace(rest.front()))
      rest.remove_prefix(1);
    if (!rest.empty()) {
      uint32_t limit = 0;
      auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), limit);
      if (ec != std::errc() || ptr != rest.data() + rest.size())
        return Status::error("line " + std::to_string(lineNumber) +
                             ": after the key, expected a limit on concurrent requests (a "
                             "number up to 4294967295), got something else");
      entry.maxConcurrentRequests = limit;
    }
    keys.push_back(std::move(entry));
  }
  return keys;
}

} // namespace llmir::serving

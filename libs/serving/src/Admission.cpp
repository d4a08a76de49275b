#include "llmir/serving/Admission.h"

#include <algorithm>

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

} // namespace llmir::serving

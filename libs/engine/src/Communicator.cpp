#include "llmir/engine/Communicator.h"

#include <string>

namespace llmir::engine {
namespace {
Status notStreamOrdered(const char *operation) {
  return Status::error(std::string(operation) +
                       ": this communicator has no stream-ordered collectives");
}
} // namespace

Status Communicator::allReduceSumOn(void *, float *, size_t, uint32_t) {
  return notStreamOrdered("allReduceSumOn");
}
Status Communicator::allGatherOn(void *, const float *, size_t, float *, uint32_t) {
  return notStreamOrdered("allGatherOn");
}
Status Communicator::sendOn(void *, const float *, size_t, uint32_t) {
  return notStreamOrdered("sendOn");
}
Status Communicator::recvOn(void *, float *, size_t, uint32_t) {
  return notStreamOrdered("recvOn");
}
Status Communicator::allReduceAddRmsNormOn(void *, const AllReduceAddRmsNorm &, uint32_t) {
  return Status::error("this communicator has no fused all-reduce + add + RMS norm");
}
Status Communicator::synchronize(void *) { return notStreamOrdered("synchronize"); }
Status Communicator::synchronizeEvent(void *) { return notStreamOrdered("synchronizeEvent"); }

} // namespace llmir::engine

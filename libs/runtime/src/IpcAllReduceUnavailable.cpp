// Built instead of IpcAllReduce.cu when CUDA is not enabled: create() checks
// its arguments as the CUDA build does, then says why it cannot run.
#include "llmir/runtime/IpcAllReduce.h"

namespace llmir::runtime {

struct IpcAllReduce::Impl {};

Result<std::unique_ptr<IpcAllReduce>>
IpcAllReduce::create(RendezvousClient &, const std::string &, int groupRank,
                     int groupSize, const IpcAllReduceOptions &options) {
  LLMIR_RETURN_IF_ERROR(validateIpcAllReduceConfig(groupRank, groupSize, options));
  return Status::error("IpcAllReduce unavailable: llmir_runtime was built without "
                       "CUDA (LLMIR_ENABLE_CUDA=OFF or no toolkit)");
}

// No instance can exist: create() never returns one.
IpcAllReduce::IpcAllReduce(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
IpcAllReduce::~IpcAllReduce() = default;
int IpcAllReduce::groupRank() const { return 0; }
int IpcAllReduce::groupSize() const { return 0; }
int IpcAllReduce::device() const { return -1; }
size_t IpcAllReduce::maxBytes() const { return 0; }
bool IpcAllReduce::handles(size_t) const { return false; }
engine::PeerExchange IpcAllReduce::peerExchange() const { return {}; }
Status IpcAllReduce::allReduceSum(float *, size_t, CUstream_st *) {
  return Status::error("IpcAllReduce unavailable: built without CUDA");
}
Status IpcAllReduce::allReduceSum(float *, size_t, CUstream_st *, IpcAllReduceAlgorithm) {
  return Status::error("IpcAllReduce unavailable: built without CUDA");
}
bool IpcAllReduce::fusesAddRmsNorm(size_t, size_t) const { return false; }
Status IpcAllReduce::allReduceAddRmsNorm(const engine::AllReduceAddRmsNorm &, CUstream_st *) {
  return Status::error("IpcAllReduce unavailable: built without CUDA");
}
Status IpcAllReduce::lastDeviceError() const { return Status::ok(); }

} // namespace llmir::runtime

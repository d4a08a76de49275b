// What each rank of an IpcAllReduce publishes in the rendezvous store, and
// the checks a rank makes on its peers' records before mapping their
// buffers. Plain C++ (no CUDA), so it is unit-tested in builds without CUDA.
#pragma once

#include "llmir/runtime/IpcAllReduce.h"

#include <array>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace llmir::runtime {
class RendezvousClient;
}

namespace llmir::runtime::detail {

/// sizeof(cudaIpcMemHandle_t) (CUDA_IPC_HANDLE_SIZE); IpcAllReduce.cu
/// asserts it.
constexpr size_t kIpcHandleBytes = 64;

struct IpcPeerRecord {
  /// Same value on processes of one machine: /proc's boot_id (shared by the
  /// containers of one host), else "host:" + the hostname.
  std::string machineId;
  std::string hostname;
  /// cudaDeviceGetPCIBusId of the rank's GPU: identifies the GPU whatever
  /// the process's CUDA_VISIBLE_DEVICES numbering.
  std::string pciBusId;
  uint64_t maxBytes = 0;
  /// The resolved one-shot threshold (ranks must choose alike).
  uint64_t oneShotMaxBytes = 0;
  std::array<char, kIpcHandleBytes> handle{};
  /// Set when the rank could not set up its side (no device, allocation
  /// failed): the other fields are then empty, and every rank fails with it.
  std::string error;
};

std::vector<char> encodeIpcPeerRecord(const IpcPeerRecord &record);
/// Fails on a truncated, oversized or foreign value, saying which.
Result<IpcPeerRecord> decodeIpcPeerRecord(const std::vector<char> &bytes);

/// Why `peer` (group rank `peerRank`) cannot share buffers with `mine`:
/// another machine, another configuration, or the same GPU.
Status checkIpcPeerRecord(const IpcPeerRecord &mine, const IpcPeerRecord &peer,
                          int peerRank);

/// Publishes `mine` under `prefix` and reads every rank's record, in group
/// rank order (`mine` at groupRank). Fails when a record does not come
/// within `timeout` (naming the ranks), is malformed, carries a setup error,
/// or fails checkIpcPeerRecord.
Result<std::vector<IpcPeerRecord>>
exchangeIpcPeerRecords(RendezvousClient &store, const std::string &prefix,
                       int groupRank, int groupSize, const IpcPeerRecord &mine,
                       std::chrono::milliseconds timeout);

/// Publishes this rank's outcome (`local`) and waits for every rank's: ok
/// when all are ok, otherwise the failures by rank, so that all ranks use
/// the IPC path or none does. The last rank to read deletes the prefix's
/// keys (the store's memory is bounded).
Status agreeOnIpcOutcome(RendezvousClient &store, const std::string &prefix,
                         int groupRank, int groupSize, const Status &local,
                         std::chrono::milliseconds timeout);

/// This process's machineId and hostname.
std::string localMachineId();
std::string localHostname();

/// The one-shot threshold `options` resolve to for `groupSize` ranks.
size_t resolvedOneShotMaxBytes(int groupSize, const IpcAllReduceOptions &options);

} // namespace llmir::runtime::detail

// The parts of IpcAllReduce that need no CUDA: configuration checks, the
// algorithm choice, and the rendezvous (records and the agreed outcome).
#include "IpcAllReduceRecord.h"
#include "StoreWire.h"

#include "llmir/runtime/RendezvousStore.h"

#include <fstream>
#include <limits>
#include <unistd.h>

namespace llmir::runtime {

const char *ipcAllReduceAlgorithmName(IpcAllReduceAlgorithm algorithm) {
  return algorithm == IpcAllReduceAlgorithm::OneShot ? "one-shot" : "two-shot";
}

Status validateIpcAllReduceConfig(int groupRank, int groupSize,
                                  const IpcAllReduceOptions &options) {
  if (groupSize < 1 || groupSize > kIpcAllReduceMaxRanks)
    return Status::error("IpcAllReduce: group of " + std::to_string(groupSize) +
                         " ranks; 1 to " + std::to_string(kIpcAllReduceMaxRanks) +
                         " (one host's GPUs) are supported");
  if (groupRank < 0 || groupRank >= groupSize)
    return Status::error("IpcAllReduce: rank " + std::to_string(groupRank) +
                         " out of range for a group of " + std::to_string(groupSize));
  if (options.maxBytes < 4)
    return Status::error("IpcAllReduce: maxBytes " + std::to_string(options.maxBytes) +
                         " holds no float");
  if (options.maxBytes > (size_t(1) << 34))
    return Status::error("IpcAllReduce: maxBytes " + std::to_string(options.maxBytes) +
                         " over 16 GiB; large messages belong to NCCL");
  if (options.timeout.count() <= 0)
    return Status::error("IpcAllReduce: timeout must be positive");
  return Status::ok();
}

Result<IpcAllReduceAlgorithm>
chooseIpcAllReduceAlgorithm(size_t count, int groupSize,
                            const IpcAllReduceOptions &options) {
  if (count > options.maxBytes / sizeof(float))
    return Status::error("IpcAllReduce: " + std::to_string(count) + " floats (" +
                         std::to_string(count * sizeof(float)) +
                         " bytes) exceed its buffer of " +
                         std::to_string(options.maxBytes) +
                         " bytes; use NCCL for this message");
  return count * sizeof(float) <= detail::resolvedOneShotMaxBytes(groupSize, options)
             ? IpcAllReduceAlgorithm::OneShot
             : IpcAllReduceAlgorithm::TwoShot;
}

Status checkIpcAddRmsNormShape(size_t rows, size_t width, int groupSize,
                               const IpcAllReduceOptions &options) {
  const std::string shape =
      "IpcAllReduce: fused add + RMS norm of " + std::to_string(rows) + " x " +
      std::to_string(width) + " floats";
  if (rows == 0 || width == 0)
    return Status::error(shape + ": nothing to normalise");
  if (width % 4 != 0 || width > kIpcAddRmsNormMaxWidth)
    return Status::error(shape + ": rows must be whole float4s of at most " +
                         std::to_string(kIpcAddRmsNormMaxWidth) + " floats");
  const size_t bytes = rows * width * sizeof(float);
  if (bytes > detail::resolvedOneShotMaxBytes(groupSize, options))
    return Status::error(shape + ": over the one-shot size");
  // Each rank's rows land in every peer's half at the rank's own slot.
  const size_t halfBytes = (options.maxBytes + 15) / 16 * 16;
  if (bytes > halfBytes / size_t(groupSize))
    return Status::error(shape + ": " + std::to_string(groupSize) +
                         " ranks' rows exceed the exchange buffer's half of " +
                         std::to_string(halfBytes) + " bytes");
  return Status::ok();
}

namespace detail {

namespace {
constexpr const char *kRecordMagic = "llmir-ipc-allreduce/1";

std::string joinRanks(const std::vector<int> &ranks) {
  std::string out;
  for (size_t i = 0; i < ranks.size(); ++i)
    out += (i ? ", " : "") + std::to_string(ranks[i]);
  return out;
}

/// Waits for every rank's key `<prefix><kind>/<rank>`; on timeout names the
/// ranks whose key never came.
Status awaitKeys(RendezvousClient &store, const std::string &prefix,
                 const std::string &kind, int groupSize,
                 std::chrono::milliseconds timeout) {
  std::vector<std::string> keys;
  for (int r = 0; r < groupSize; ++r)
    keys.push_back(prefix + kind + "/" + std::to_string(r));
  Status waited = store.wait(keys, timeout);
  if (waited.isOk())
    return waited;
  auto present = store.check(keys);
  if (!present)
    return waited;
  std::vector<int> missing;
  for (int r = 0; r < groupSize; ++r)
    if (!(*present)[r])
      missing.push_back(r);
  if (missing.empty())
    return Status::ok();
  return Status::error((missing.size() == 1 ? "rank " : "ranks ") +
                       joinRanks(missing) + " of " + std::to_string(groupSize) +
                       " did not publish " + (kind == "record" ? "a record" : "an outcome") + " within " +
                       std::to_string(timeout.count()) + " ms (store prefix '" +
                       prefix + "')");
}
} // namespace

size_t resolvedOneShotMaxBytes(int groupSize, const IpcAllReduceOptions &options) {
  if (options.oneShotMaxBytes)
    return *options.oneShotMaxBytes;
  if (groupSize <= 2)
    return std::numeric_limits<size_t>::max();
  return groupSize <= 4 ? 512u << 10 : 256u << 10;
}

std::vector<char> encodeIpcPeerRecord(const IpcPeerRecord &record) {
  wire::PayloadWriter writer;
  writer.str(kRecordMagic)
      .str(record.error)
      .str(record.machineId)
      .str(record.hostname)
      .str(record.pciBusId)
      .u64(record.maxBytes)
      .u64(record.oneShotMaxBytes)
      .bytes(record.handle.data(), record.handle.size());
  return writer.take();
}

Result<IpcPeerRecord> decodeIpcPeerRecord(const std::vector<char> &bytes) {
  wire::PayloadReader reader(bytes);
  auto magic = reader.str();
  if (!magic || *magic != kRecordMagic)
    return Status::error("not an IpcAllReduce record (expected '" +
                         std::string(kRecordMagic) + "' first)");
  IpcPeerRecord record;
  auto error = reader.str();
  auto machine = reader.str();
  auto host = reader.str();
  auto pci = reader.str();
  auto maxBytes = reader.u64();
  auto oneShot = reader.u64();
  auto handle = reader.bytes();
  if (!error || !machine || !host || !pci || !maxBytes || !oneShot || !handle)
    return Status::error("truncated IpcAllReduce record (" +
                         std::to_string(bytes.size()) + " bytes)");
  if (!reader.atEnd())
    return Status::error("IpcAllReduce record has trailing bytes");
  if (handle->size() != kIpcHandleBytes)
    return Status::error("IpcAllReduce record's IPC handle has " +
                         std::to_string(handle->size()) + " bytes, expected " +
                         std::to_string(kIpcHandleBytes));
  record.error = std::move(*error);
  record.machineId = std::move(*machine);
  record.hostname = std::move(*host);
  record.pciBusId = std::move(*pci);
  record.maxBytes = *maxBytes;
  record.oneShotMaxBytes = *oneShot;
  std::copy(handle->begin(), handle->end(), record.handle.begin());
  return record;
}

Status checkIpcPeerRecord(const IpcPeerRecord &mine, const IpcPeerRecord &peer,
                          int peerRank) {
  const std::string who = "rank " + std::to_string(peerRank);
  if (!peer.error.empty())
    return Status::error(who + " could not set up: " + peer.error);
  if (peer.machineId != mine.machineId)
    return Status::error(who + " runs on another machine (" + peer.hostname +
                         ", this rank on " + mine.hostname +
                         "); CUDA IPC needs every rank on one host");
  if (peer.maxBytes != mine.maxBytes || peer.oneShotMaxBytes != mine.oneShotMaxBytes)
    return Status::error(who + " was created with maxBytes " +
                         std::to_string(peer.maxBytes) + " and one-shot limit " +
                         std::to_string(peer.oneShotMaxBytes) + ", this rank with " +
                         std::to_string(mine.maxBytes) + " and " +
                         std::to_string(mine.oneShotMaxBytes) +
                         "; every rank must pass the same options");
  if (peer.pciBusId == mine.pciBusId)
    return Status::error(who + " uses the same GPU (" + peer.pciBusId +
                         "); the IPC all-reduce needs one GPU per rank (ranks "
                         "sharing a GPU would spin against each other)");
  return Status::ok();
}

std::string localHostname() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0)
    return "unknown-host";
  return name;
}

std::string localMachineId() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  if (in && std::getline(in, id) && !id.empty())
    return id;
  return "host:" + localHostname();
}

Result<std::vector<IpcPeerRecord>>
exchangeIpcPeerRecords(RendezvousClient &store, const std::string &prefix,
                       int groupRank, int groupSize, const IpcPeerRecord &mine,
                       std::chrono::milliseconds timeout) {
  LLMIR_RETURN_IF_ERROR(store.set(prefix + "record/" + std::to_string(groupRank),
                                  encodeIpcPeerRecord(mine)));
  if (!mine.error.empty())
    return Status::error(mine.error);
  LLMIR_RETURN_IF_ERROR(awaitKeys(store, prefix, "record", groupSize, timeout));
  std::vector<IpcPeerRecord> records(groupSize);
  for (int r = 0; r < groupSize; ++r) {
    if (r == groupRank) {
      records[r] = mine;
      continue;
    }
    auto bytes = store.get(prefix + "record/" + std::to_string(r), timeout);
    if (!bytes)
      return bytes.status().withContext("reading rank " + std::to_string(r) + "'s record");
    auto record = decodeIpcPeerRecord(*bytes);
    if (!record)
      return record.status().withContext("rank " + std::to_string(r) + "'s record");
    LLMIR_RETURN_IF_ERROR(checkIpcPeerRecord(mine, *record, r));
    records[r] = std::move(record).value();
  }
  return records;
}

Status agreeOnIpcOutcome(RendezvousClient &store, const std::string &prefix,
                         int groupRank, int groupSize, const Status &local,
                         std::chrono::milliseconds timeout) {
  // Empty value: this rank is ready; otherwise its error.
  LLMIR_RETURN_IF_ERROR(store.set(prefix + "outcome/" + std::to_string(groupRank),
                                  local.isOk() ? std::string() : local.message()));
  if (Status waited = awaitKeys(store, prefix, "outcome", groupSize, timeout);
      !waited.isOk())
    return local.isOk() ? waited
                        : Status::error("rank " + std::to_string(groupRank) + ": " +
                                        local.message() + "; then " + waited.message());
  std::string failures;
  for (int r = 0; r < groupSize; ++r) {
    auto value = store.get(prefix + "outcome/" + std::to_string(r), timeout);
    if (!value)
      return value.status().withContext("reading rank " + std::to_string(r) + "'s outcome");
    if (!value->empty())
      failures += (failures.empty() ? "" : "; ") + std::string("rank ") +
                  std::to_string(r) + ": " + std::string(value->begin(), value->end());
  }
  // Every rank has read every key once the counter reaches the group size.
  auto done = store.add(prefix + "done", 1);
  if (done && *done == groupSize)
    (void)store.removePrefix(prefix);
  if (!failures.empty())
    return Status::error(failures);
  return Status::ok();
}

} // namespace detail
} // namespace llmir::runtime

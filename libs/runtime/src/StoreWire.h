// Frame and payload encoding of the rendezvous store protocol (documented in
// RendezvousStore.h), plus blocking socket I/O shared by server and client.
#pragma once

#include <cstddef>
#include "llmir/support/Status.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace llmir::runtime::wire {

constexpr uint8_t kVersion = 1;
constexpr uint32_t kMaxPayload = 64u << 20;

constexpr size_t kHeaderBytes = 6;

enum Op : uint8_t {
  kSet = 1,
  kGet = 2,
  kAdd = 3,
  kWait = 4,
  kCheck = 5,
  kDelete = 6,
  kDeletePrefix = 7,
};
enum Outcome : uint8_t { kOk = 0, kTimeout = 1, kBadRequest = 2, kRefused = 3 };

struct Frame {
  uint8_t version = kVersion;
  uint8_t code = 0;
  std::vector<char> payload;
};

class PayloadWriter {
public:
  PayloadWriter &u8(uint8_t v);
  PayloadWriter &u32(uint32_t v);
  PayloadWriter &u64(uint64_t v);
  PayloadWriter &bytes(const char *data, size_t size);
  PayloadWriter &str(const std::string &s) { return bytes(s.data(), s.size()); }
  std::vector<char> take() { return std::move(out_); }

private:
  std::vector<char> out_;
};

/// Bounds-checked reader; every getter returns nullopt past the end.
class PayloadReader {
public:
  explicit PayloadReader(const std::vector<char> &in) : in_(in) {}
  std::optional<uint8_t> u8();
  std::optional<uint32_t> u32();
  std::optional<uint64_t> u64();
  std::optional<std::vector<char>> bytes();
  std::optional<std::string> str();
  bool atEnd() const { return pos_ == in_.size(); }

private:
  bool take(void *dst, size_t n);
  const std::vector<char> &in_;
  size_t pos_ = 0;
};

/// Blocking exact-size socket I/O; false on EOF, error or timeout.
bool writeAll(int fd, const char *data, size_t size);
bool readAll(int fd, char *data, size_t size);
/// Runs the client side of the cluster handshake (llmir/support/ClusterAuth.h)
/// on a blocking socket (the server runs it in its event loop).
Status clientHandshake(int fd, const std::string &secret);

/// The frame as bytes on the wire (header, then payload).
std::vector<char> encodeFrame(const Frame &frame);
/// The payload size a frame header (kHeaderBytes) announces.
uint32_t announcedPayload(const unsigned char *header);

/// Writes a whole frame; false on any socket error.
bool writeFrame(int fd, const Frame &frame);
/// Reads a whole frame; nullopt on EOF, socket error or timeout. A frame
/// larger than kMaxPayload is reported through `tooLarge`.
std::optional<Frame> readFrame(int fd, bool *tooLarge = nullptr);

} // namespace llmir::runtime::wire

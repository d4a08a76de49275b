#include "StoreWire.h"

#include "llmir/support/ClusterAuth.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sys/socket.h>

namespace llmir::runtime::wire {

namespace {

template <typename T> void appendLe(std::vector<char> &out, T v) {
  for (size_t i = 0; i < sizeof(T); ++i)
    out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

template <typename T> T loadLe(const unsigned char *p) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i)
    v |= static_cast<T>(p[i]) << (8 * i);
  return v;
}

} // namespace

bool writeAll(int fd, const char *data, size_t size) {
  while (size > 0) {
    // MSG_NOSIGNAL: a peer that went away is an error, not a SIGPIPE.
    ssize_t n = ::send(fd, data, size, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

bool readAll(int fd, char *data, size_t size) {
  while (size > 0) {
    ssize_t n = ::recv(fd, data, size, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

namespace {
std::optional<std::string> readBytes(int fd, size_t n) {
  std::string out(n, '\0');
  if (!readAll(fd, out.data(), n))
    return std::nullopt;
  return out;
}
} // namespace

Status clientHandshake(int fd, const std::string &secret) {
  auth::ClientHandshake handshake(secret);
  if (!writeAll(fd, handshake.hello().data(), handshake.hello().size()))
    return Status::error("cluster handshake: cannot send the hello");
  auto answer = readBytes(fd, auth::kAnswerBytes);
  if (!answer)
    return Status::error("cluster handshake: the store closed the connection or did not "
                         "answer (does it hold the same cluster secret?)");
  auto proof = handshake.answer(*answer);
  if (!proof)
    return proof.status();
  if (!writeAll(fd, proof->data(), proof->size()))
    return Status::error("cluster handshake: cannot send the proof");
  auto accept = readBytes(fd, auth::kAcceptBytes);
  if (!accept || (*accept)[0] != auth::kAcceptByte)
    return Status::error("cluster handshake: the store did not accept our proof");
  return Status::ok();
}

PayloadWriter &PayloadWriter::u8(uint8_t v) {
  out_.push_back(static_cast<char>(v));
  return *this;
}
PayloadWriter &PayloadWriter::u32(uint32_t v) {
  appendLe(out_, v);
  return *this;
}
PayloadWriter &PayloadWriter::u64(uint64_t v) {
  appendLe(out_, v);
  return *this;
}
PayloadWriter &PayloadWriter::bytes(const char *data, size_t size) {
  u32(static_cast<uint32_t>(size));
  out_.insert(out_.end(), data, data + size);
  return *this;
}

bool PayloadReader::take(void *dst, size_t n) {
  if (in_.size() - pos_ < n)
    return false;
  std::memcpy(dst, in_.data() + pos_, n);
  pos_ += n;
  return true;
}

std::optional<uint8_t> PayloadReader::u8() {
  unsigned char b[1];
  if (!take(b, 1))
    return std::nullopt;
  return b[0];
}
std::optional<uint32_t> PayloadReader::u32() {
  unsigned char b[4];
  if (!take(b, 4))
    return std::nullopt;
  return loadLe<uint32_t>(b);
}
std::optional<uint64_t> PayloadReader::u64() {
  unsigned char b[8];
  if (!take(b, 8))
    return std::nullopt;
  return loadLe<uint64_t>(b);
}
std::optional<std::vector<char>> PayloadReader::bytes() {
  auto size = u32();
  if (!size || in_.size() - pos_ < *size)
    return std::nullopt;
  std::vector<char> out(in_.begin() + pos_, in_.begin() + pos_ + *size);
  pos_ += *size;
  return out;
}
std::optional<std::string> PayloadReader::str() {
  auto b = bytes();
  if (!b)
    return std::nullopt;
  return std::string(b->begin(), b->end());
}

std::vector<char> encodeFrame(const Frame &frame) {
  std::vector<char> out;
  out.reserve(kHeaderBytes + frame.payload.size());
  out.push_back(static_cast<char>(frame.version));
  out.push_back(static_cast<char>(frame.code));
  appendLe(out, static_cast<uint32_t>(frame.payload.size()));
  out.insert(out.end(), frame.payload.begin(), frame.payload.end());
  return out;
}

uint32_t announcedPayload(const unsigned char *header) {
  return loadLe<uint32_t>(header + 2);
}

bool writeFrame(int fd, const Frame &frame) {
  std::vector<char> bytes = encodeFrame(frame);
  return writeAll(fd, bytes.data(), bytes.size());
}

std::optional<Frame> readFrame(int fd, bool *tooLarge) {
  unsigned char header[6];
  if (!readAll(fd, reinterpret_cast<char *>(header), sizeof(header)))
    return std::nullopt;
  Frame frame;
  frame.version = header[0];
  frame.code = header[1];
  uint32_t size = loadLe<uint32_t>(header + 2);
  if (size > kMaxPayload) {
    if (tooLarge)
      *tooLarge = true;
    return std::nullopt;
  }
  // In pieces: memory follows the bytes received, not the size announced.
  constexpr size_t kChunk = 64 * 1024;
  while (frame.payload.size() < size) {
    const size_t at = frame.payload.size();
    const size_t n = std::min<size_t>(kChunk, size - at);
    frame.payload.resize(at + n);
    if (!readAll(fd, frame.payload.data() + at, n))
      return std::nullopt;
  }
  return frame;
}

} // namespace llmir::runtime::wire

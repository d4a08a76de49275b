// Plain POSIX sockets for tests that must send what a well-behaved client
// never would (malformed HTTP, garbage frames).
#pragma once

#include <cstdint>
#include <string>

namespace llmir::net::testing {

class RawSocket {
public:
  /// Connects to 127.0.0.1:port; receive calls time out after `timeoutMs`.
  RawSocket(uint16_t port, int timeoutMs = 5000);
  ~RawSocket();
  bool connected() const { return fd_ >= 0; }
  bool sendAll(const std::string &bytes);
  /// Reads until the peer closes (or the timeout); what arrived.
  std::string readUntilClosed();
  /// True when the peer closed within the timeout.
  bool peerClosed();
  void close();

private:
  int fd_ = -1;
};

} // namespace llmir::net::testing

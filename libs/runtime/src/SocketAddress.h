// Resolving host:port for the rendezvous store's plain POSIX sockets.
#pragma once

#include "llmir/support/Status.h"

#include <chrono>
#include <cstdint>
#include <string>

#include <sys/socket.h>

namespace llmir::runtime {

struct TcpAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  int family = AF_INET;
  const ::sockaddr *sockaddr() const {
    return reinterpret_cast<const ::sockaddr *>(&storage);
  }
};

/// First address getaddrinfo gives for host:port (numeric or a name).
Result<TcpAddress> resolveTcp(const std::string &host, uint16_t port);
/// The local port a bound socket got (useful after binding port 0).
Result<uint16_t> boundPort(int fd);
/// Sets the receive and send timeouts of a socket.
void setSocketTimeout(int fd, std::chrono::milliseconds timeout);

} // namespace llmir::runtime

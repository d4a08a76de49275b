#include "SocketAddress.h"

#include <cstring>

#include <netdb.h>
#include <netinet/in.h>
#include <sys/time.h>

namespace llmir::runtime {

Result<TcpAddress> resolveTcp(const std::string &host, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo *found = nullptr;
  std::string service = std::to_string(port);
  int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(),
                         &hints, &found);
  if (rc != 0 || !found)
    return Status::error("cannot resolve '" + host + ":" + service +
                         "': " + ::gai_strerror(rc));
  TcpAddress address;
  std::memcpy(&address.storage, found->ai_addr, found->ai_addrlen);
  address.length = found->ai_addrlen;
  address.family = found->ai_family;
  ::freeaddrinfo(found);
  return address;
}

Result<uint16_t> boundPort(int fd) {
  sockaddr_storage storage{};
  socklen_t length = sizeof(storage);
  if (::getsockname(fd, reinterpret_cast<sockaddr *>(&storage), &length) != 0)
    return Status::error(std::string("getsockname: ") + std::strerror(errno));
  if (storage.ss_family == AF_INET6)
    return ntohs(reinterpret_cast<sockaddr_in6 *>(&storage)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in *>(&storage)->sin_port);
}

void setSocketTimeout(int fd, std::chrono::milliseconds timeout) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

} // namespace llmir::runtime

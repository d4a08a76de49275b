// The framed scheduler <-> worker protocol, server side, over real loopback
// connections: the cluster handshake (first byte odd: the server holds a
// secret) and then length-prefixed Envelopes read as they arrive.
#include "LoopbackPeer.h"

#include "llmir/net/Framed.h"

#include <memory>

namespace {
std::unique_ptr<llmir::net::FramedServer> startServer(bool withSecret) {
  llmir::net::FramedOptions options;
  options.maxFrameBytes = 1 << 20;
  options.handshakeTimeout = std::chrono::milliseconds(2000);
  if (withSecret)
    options.clusterSecret = "fuzz-cluster-secret-0123456789";
  llmir::net::FramedHandlers handlers;
  handlers.onMessage = [](const llmir::net::FramedConnectionPtr &c, llmir::proto::Envelope e) {
    if (e.has_heartbeat()) // answer, as the scheduler does, to exercise sending
      (void)c->send(e);
  };
  auto server = llmir::net::FramedServer::start("127.0.0.1", 0, handlers, options);
  if (!server)
    __builtin_trap();
  return std::move(*server);
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static auto open = startServer(false);
  static auto authenticated = startServer(true);
  if (size == 0)
    return 0;
  sendAsOnePeer((data[0] % 2 ? authenticated : open)->port(), data + 1, size - 1);
  return 0;
}

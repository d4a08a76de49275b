// The rendezvous store's wire format, server side, over real loopback
// connections (first byte odd: the store holds a cluster secret).
#include "LoopbackPeer.h"

#include "llmir/runtime/RendezvousStore.h"

#include <memory>

namespace {
std::unique_ptr<llmir::runtime::RendezvousServer> startStore(bool withSecret) {
  llmir::runtime::StoreServerOptions options;
  options.maxBlock = std::chrono::milliseconds(100); // a GET of a missing key ends soon
  options.handshakeTimeout = std::chrono::milliseconds(2000);
  if (withSecret)
    options.clusterSecret = "fuzz-cluster-secret-0123456789";
  auto store = llmir::runtime::RendezvousServer::start("127.0.0.1", 0, options);
  if (!store)
    __builtin_trap();
  return std::move(*store);
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static auto open = startStore(false);
  static auto authenticated = startStore(true);
  if (size == 0)
    return 0;
  sendAsOnePeer((data[0] % 2 ? authenticated : open)->port(), data + 1, size - 1);
  return 0;
}

// llmir-kv-store: holds KV-cache blocks for the workers, reached through UCX
// (docs/kv-store.md). Everything but configuration and startup is in
// libs/kvstore.
//
//   UCX   ucx.host:ucx.port   batched put / get / exists (active messages)
//   HTTP  /healthz /readyz /metrics
#include "llmir/kvstore/Server.h"
#include "llmir/kvstore/StoreMetrics.h"
#include "llmir/net/ClusterSecret.h"
#include "llmir/net/Config.h"
#include "llmir/net/Http.h"
#include "llmir/net/Log.h"
#include "llmir/net/Signals.h"

#include <iostream>

using llmir::Status;
namespace kv = llmir::kvstore;

namespace {

struct Settings {
  std::string httpHost = "0.0.0.0";
  uint16_t httpPort = 8083;
  std::string ucxHost = "127.0.0.1";
  uint16_t ucxPort = 13337;
  uint64_t capacityBytes = 1ull << 30;
  uint64_t maxBlockBytes = 64ull << 20;
  bool sharedMemory = true;
  uint32_t channelSpinUs = 0;
  uint32_t idleChannelSpinUs = 200;
  uint32_t idlePollUs = 300;
  uint64_t partBytes = kv::ServerOptions{}.partBytes;
  std::string tcpCongestion = kv::ServerOptions{}.tcpCongestion;
  llmir::net::LogLevel logLevel = llmir::net::LogLevel::Info;
  std::string clusterSecretFile;
};

} // namespace

int main(int argc, char **argv) {
  llmir::net::installTerminationHandler();
  Settings s;
  llmir::net::Config config("llmir-kv-store");
  config.add("http.host", &s.httpHost, "address of /healthz, /readyz and /metrics");
  config.add("http.port", &s.httpPort, "HTTP port (0 = ephemeral; the log line 'listening' names it)");
  config.add("ucx.host", &s.ucxHost, "address the UCX listener binds (workers connect here)");
  config.add("ucx.port", &s.ucxPort, "UCX listener port (0 = ephemeral; the log line 'listening' names it)");
  config.add("store.capacity-bytes", &s.capacityBytes,
             "memory budget for blocks; least recently used blocks are evicted beyond it");
  config.add("store.max-block-bytes", &s.maxBlockBytes, "a larger block is rejected");
  config.add("store.shared-memory", &s.sharedMemory,
             "hold blocks in a shared-memory segment that clients on this host map "
             "(their bytes then skip UCX)");
  config.add("store.channel-spin-us", &s.channelSpinUs,
             "after a request through a same-host client's channel, look for the next this "
             "many microseconds before sleeping (0: sleep at once; pays on cores of the "
             "store's own, costs a time slice per call on oversubscribed ones)");
  config.add("store.idle-channel-spin-us", &s.idleChannelSpinUs,
             "the same, but only while the host has a CPU to spare as the spin begins "
             "(runnable threads no more than CPUs, /proc/loadavg): a client's next request "
             "then finds the store awake (0: off)");
  config.add("store.idle-poll-us", &s.idlePollUs,
             "with no same-host channel open, keep polling UCX this many microseconds after "
             "the last request, only while the host has a CPU to spare (/proc/loadavg): a "
             "TCP client's next request is read as it arrives, without a wake-up (0: off)");
  config.add("store.part-bytes", &s.partBytes,
             "a get of one block over twice this size, by a client that takes parts (TCP), "
             "goes as messages of this many bytes, copied and hashed while the next travels "
             "(a multiple of 1024 up to 1 MiB; 0: whole blocks)");
  config.add("store.tcp-congestion", &s.tcpCongestion,
             "TCP congestion control of the store's UCX sockets: the first of these "
             "(comma-separated) the kernel allows (\"\": the host's default; BBR made 1 MiB "
             "blocks ~3x slower over loopback)");
  config.add("log.level", &s.logLevel, "the lowest level of the lines logged");
  config.add("cluster.secret-file", &s.clusterSecretFile,
             "file holding the cluster secret; UCX clients must then prove it before "
             "any put or get (else $LLMIR_CLUSTER_SECRET; docs/reliability.md)");
  kv::ServerOptions options;
  auto validate = [&]() -> Status {
    options.host = s.ucxHost;
    options.port = s.ucxPort;
    options.capacityBytes = s.capacityBytes;
    options.maxBlockBytes = s.maxBlockBytes;
    options.partBytes = s.partBytes;
    options.sharedMemory = s.sharedMemory;
    options.channelSpin = std::chrono::microseconds(s.channelSpinUs);
    options.idleChannelSpin = std::chrono::microseconds(s.idleChannelSpinUs);
    options.idlePoll = std::chrono::microseconds(s.idlePollUs);
    options.tcpCongestion = s.tcpCongestion;
    LLMIR_RETURN_IF_ERROR(kv::validate(options));
    if (s.maxBlockBytes > s.capacityBytes)
      return Status::error("store.max-block-bytes (" + std::to_string(s.maxBlockBytes) +
                           ") exceeds store.capacity-bytes (" +
                           std::to_string(s.capacityBytes) + ")");
    return Status::ok();
  };
  if (std::optional<int> exitCode = config.loadService(argc, argv, validate))
    return *exitCode;
  llmir::net::initLogging("kv-store", s.logLevel);

  auto clusterSecret = llmir::net::loadServiceClusterSecret(
      {.secretFile = s.clusterSecretFile,
       .listeners = {{"llmir-kv-store", s.ucxHost}},
       .withoutSecret = "any local process can put and get KV blocks"});
  if (!clusterSecret) {
    std::cerr << "llmir-kv-store: " << clusterSecret.message() << "\n";
    return 2;
  }

  kv::StoreMetrics metrics;
  options.clusterSecret = *clusterSecret;
  auto store = kv::Server::start(options, [&](const kv::OperationRecord &r) {
    metrics.record(r);
  });
  if (!store) {
    llmir::net::logError("cannot start the store", {{"error", store.message()}});
    return 1;
  }

  llmir::net::HttpServer server;
  // Ready once the UCX listener is up, which start() above guarantees.
  llmir::net::addProbeRoutes(server, {.metricsText = [&] {
    metrics.refresh((*store)->stats(), (*store)->connections());
    return metrics.render();
  }});
  llmir::net::HttpServerConfig http;
  http.host = s.httpHost;
  http.port = s.httpPort;
  http.threads = 2;
  if (auto st = server.start(http); !st) {
    llmir::net::logError("cannot start HTTP", {{"error", st.message()}});
    return 1;
  }
  llmir::net::logInfo("listening", {{"host", s.httpHost},
                                    {"port", unsigned(server.port())},
                                    {"ucx_host", s.ucxHost},
                                    {"ucx_port", unsigned((*store)->port())},
                                    {"capacity_bytes", s.capacityBytes},
                                    {"shared_memory", (*store)->sharedMemoryStatus()}});
  int sig = llmir::net::waitForTerminationSignal();
  llmir::net::logInfo("stopping", {{"signal", sig}});
  server.stop();
  (*store)->stop();
  kv::PoolStats final = (*store)->stats();
  llmir::net::logInfo("stopped", {{"blocks", final.blocks}, {"bytes", final.bytesHeld}});
  return 0;
}

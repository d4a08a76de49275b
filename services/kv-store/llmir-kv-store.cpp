// llmir-kv-store: holds KV-cache blocks for the workers, reached through UCX
// (docs/kv-store.md). Everything but configuration, HTTP and metrics is in
// libs/kvstore.
//
//   UCX   ucx.host:ucx.port   batched put / get / exists (active messages)
//   HTTP  /healthz /readyz /metrics
#include "llmir/kvstore/Server.h"
#include "llmir/net/ClusterSecret.h"
#include "llmir/net/Config.h"
#include "llmir/net/Http.h"
#include "llmir/net/Log.h"
#include "llmir/net/Signals.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <iostream>
#include <mutex>

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
  uint64_t partBytes = kv::ServerOptions{}.partBytes;
  std::string tcpCongestion = kv::ServerOptions{}.tcpCongestion;
  llmir::net::LogLevel logLevel = llmir::net::LogLevel::Info;
  std::string clusterSecretFile;
};

// Operations are recorded on the store's progress thread while /metrics
// reads on an HTTP thread; prometheus-cpp's metrics are thread-safe.
struct Metrics {
  std::shared_ptr<prometheus::Registry> registry =
      std::make_shared<prometheus::Registry>();
  prometheus::Gauge &bytesHeld = gauge("llmir:kv_store_bytes", "Bytes of KV blocks held.");
  prometheus::Gauge &capacity =
      gauge("llmir:kv_store_capacity_bytes", "The store's memory budget in bytes.");
  prometheus::Gauge &blocks = gauge("llmir:kv_store_blocks", "KV blocks held.");
  prometheus::Gauge &connections =
      gauge("llmir:kv_store_connections", "Clients connected through UCX.");
  // Pool counters are cumulative in the library; exported as counters by
  // adding the difference since the last scrape.
  prometheus::Counter &hits = counter("llmir:kv_store_hits_total",
                                      "Blocks asked for by get and found.");
  prometheus::Counter &misses = counter("llmir:kv_store_misses_total",
                                        "Blocks asked for by get and not held.");
  prometheus::Counter &evictions = counter(
      "llmir:kv_store_evictions_total", "Blocks evicted (least recently used) to make room.");
  prometheus::Counter &stored = counter("llmir:kv_store_blocks_stored_total",
                                        "Blocks stored by put.");
  prometheus::Counter &rejected = counter(
      "llmir:kv_store_blocks_rejected_total",
      "Blocks rejected: dtype, size or checksum did not match (put or get).");
  prometheus::Family<prometheus::Histogram> &seconds =
      prometheus::BuildHistogram()
          .Name("llmir:kv_store_request_seconds")
          .Help("Request arrival to reply sent, by operation (put, get, exists).")
          .Register(*registry);
  prometheus::Family<prometheus::Histogram> &throughput =
      prometheus::BuildHistogram()
          .Name("llmir:kv_store_request_bytes_per_second")
          .Help("Block bytes moved per request over its duration (put, get).")
          .Register(*registry);
  prometheus::Family<prometheus::Counter> &bytesMoved =
      prometheus::BuildCounter()
          .Name("llmir:kv_store_transferred_bytes_total")
          .Help("Block bytes received by put and sent by get.")
          .Register(*registry);
  prometheus::Family<prometheus::Counter> &sharedBytes =
      prometheus::BuildCounter()
          .Name("llmir:kv_store_shared_memory_bytes_total")
          .Help("Of those, the block bytes that clients on this host moved through the "
                "store's shared-memory segment (put, get).")
          .Register(*registry);

  std::mutex mu;
  kv::PoolStats last;

  prometheus::Gauge &gauge(const char *name, const char *help) {
    return prometheus::BuildGauge().Name(name).Help(help).Register(*registry).Add({});
  }
  prometheus::Counter &counter(const char *name, const char *help) {
    return prometheus::BuildCounter().Name(name).Help(help).Register(*registry).Add({});
  }

  void record(const kv::OperationRecord &r) {
    static const prometheus::Histogram::BucketBoundaries latency = {
        25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3,
        10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1};
    static const prometheus::Histogram::BucketBoundaries bandwidth = {
        1e8, 2.5e8, 5e8, 1e9, 2e9, 4e9, 8e9, 16e9, 32e9};
    const char *op = kv::operationName(r.op);
    seconds.Add({{"op", op}}, latency).Observe(r.seconds);
    if (r.op != kv::Operation::Exists && r.bytes > 0) {
      bytesMoved.Add({{"op", op}}).Increment(double(r.bytes));
      if (r.sharedMemory)
        sharedBytes.Add({{"op", op}}).Increment(double(r.bytes));
      if (r.seconds > 0)
        throughput.Add({{"op", op}}, bandwidth).Observe(double(r.bytes) / r.seconds);
    }
  }

  void refresh(const kv::PoolStats &s, uint64_t clients) {
    std::lock_guard lock(mu);
    bytesHeld.Set(double(s.bytesHeld));
    capacity.Set(double(s.capacityBytes));
    blocks.Set(double(s.blocks));
    connections.Set(double(clients));
    hits.Increment(double(s.hits - last.hits));
    misses.Increment(double(s.misses - last.misses));
    evictions.Increment(double(s.evictions - last.evictions));
    stored.Increment(double(s.stored - last.stored));
    rejected.Increment(double(s.rejected - last.rejected));
    // Gets that same-host clients served from the store's index moved their
    // bytes through the segment without a request (no request histogram).
    if (s.clientServedBytes > last.clientServedBytes) {
      double moved = double(s.clientServedBytes - last.clientServedBytes);
      bytesMoved.Add({{"op", "get"}}).Increment(moved);
      sharedBytes.Add({{"op", "get"}}).Increment(moved);
    }
    last = s;
  }
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

  Metrics metrics;
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
    return prometheus::TextSerializer().Serialize(metrics.registry->Collect());
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

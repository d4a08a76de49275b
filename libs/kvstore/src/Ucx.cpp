#include "Ucx.h"

#include "TcpCongestion.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <netdb.h>
#include <poll.h>

namespace llmir::kvstore::ucx {

std::string errorText(ucs_status_t status) {
  return ucs_status_string(status);
}

bool transportsAllow(std::initializer_list<std::string_view> names) {
  const char *tls = std::getenv("UCX_TLS");
  if (!tls || !*tls)
    return true;
  const std::string_view list = tls;
  const bool exclude = list[0] == '^';
  bool named = false;
  for (size_t at = exclude ? 1 : 0; at <= list.size();) {
    const size_t end = std::min(list.find(',', at), list.size());
    const std::string_view name = list.substr(at, end - at);
    named |= name == "all" && !exclude;
    for (std::string_view n : names)
      named |= name == n;
    at = end + 1;
  }
  return exclude ? !named : named;
}

Result<std::unique_ptr<Worker>> Worker::create(bool listener,
                                               const std::string &tcpCongestion) {
  std::unique_ptr<Worker> w(new Worker());
  // UCX reads its connection manager's options from the environment only;
  // an explicit UCX_TCP_CM_REUSEADDR wins.
  if (listener)
    setenv("UCX_TCP_CM_REUSEADDR", "y", /*overwrite=*/0);
  ucp_config_t *config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
  if (st != UCS_OK)
    return Status::error("UCX configuration (UCX_* environment): " + errorText(st));
  // TCP segments of 4200 KiB instead of UCX's 8 KiB (send) and 64 KiB
  // (receive): a message of one block up to 4 MiB (with its header) is then
  // one segment, sent eagerly in one go and handed to our handler where UCX
  // read it, with no rendezvous round trip and no reassembly copy of its
  // fragments into a buffer of UCX's, and each recv() takes up to a segment.
  // Measured with llmir-kvstore-bench over TCP loopback (docs/performance.md,
  // "TCP segments" and "TCP, branch kv9"): 8 KiB / 64 KiB -> 256 KiB took a
  // 1 MiB put/get from 0.9-1.3 to 2.0-2.7 GB/s per call; 256 KiB -> 4200 KiB
  // took calls of 32 puts 1.3-1.5x faster at 1 and 4 MiB, single 1 MiB puts
  // and gets a little, with less CPU per MiB (single 4 MiB gets did not
  // gain). The memory: UCX takes a segment per connection only while a
  // message is partly sent or received (its pools grow 8 segments at a
  // time, untouched until used).
  // Set only when the user set neither variable (UCX refuses a receive
  // segment smaller than the send one), in this context's configuration, not
  // the process environment (children such as ucx_perftest keep UCX's
  // defaults). A peer's receive segment must hold the other's send
  // segments: every process of the mesh uses this library; a foreign UCX
  // peer of the store needs UCX_TCP_RX_SEG_SIZE of at least 4200k.
  // ("TX_SEG_SIZE" is the transport's own name: ucp_config_modify hands
  // unknown names to every transport, and only tcp has these in UCX 1.13.)
  if (transportsAllow({"tcp"}) && !std::getenv("UCX_TCP_TX_SEG_SIZE") &&
      !std::getenv("UCX_TCP_RX_SEG_SIZE")) {
    for (const char *name : {"TX_SEG_SIZE", "RX_SEG_SIZE"}) {
      st = ucp_config_modify(config, name, kTcpSegmentSize);
      if (st != UCS_OK) {
        ucp_config_release(config);
        return Status::error(std::string("UCX configuration TCP ") + name + "=" +
                             kTcpSegmentSize + ": " + errorText(st));
      }
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  st = ucp_init(&params, config, &w->context_);
  ucp_config_release(config);
  if (st != UCS_OK)
    return Status::error("UCX init: " + errorText(st));
  // Before the worker opens its TCP transport's listening sockets (after
  // ucp_init, which loads UCX's transport modules).
  if (!tcpCongestion.empty() && transportsAllow({"tcp"}))
    useTcpCongestionForUcx(tcpCongestion);
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;
  st = ucp_worker_create(w->context_, &wp, &w->worker_);
  if (st != UCS_OK)
    return Status::error("UCX worker: " + errorText(st));
  st = ucp_worker_get_efd(w->worker_, &w->eventFd_);
  if (st != UCS_OK)
    return Status::error("UCX worker event fd: " + errorText(st));
  ucp_worker_attr_t attr{};
  attr.field_mask = UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER;
  st = ucp_worker_query(w->worker_, &attr);
  if (st != UCS_OK)
    return Status::error("UCX worker query: " + errorText(st));
  // UCX (1.13, and master as of 2026) sends an active message whose header
  // and payload fit the transport's short limit with the header's length in
  // 16 bits (ucp_am_fill_short_header), although ucp_worker_query reports
  // max_am_header up to the transport's whole segment: a header of 64 KiB or
  // more then arrives cut to its length mod 65536 (the receiver sees another
  // header and the rest as payload). TCP's short limit is its segment
  // (UCX_TCP_TX_SEG_SIZE, 8 KiB by default), so with segments above 64 KiB a
  // reply of many records was dropped as malformed and the call waited for
  // it until its deadline. Headers stay below that bound whatever the
  // segments (docs/kv-store.md, "Protocol").
  w->maxAmHeader_ = std::min<size_t>(attr.max_am_header, kMaxAmHeaderBytes);
  return w;
}

Worker::~Worker() {
  if (worker_)
    ucp_worker_destroy(worker_);
  if (context_)
    ucp_cleanup(context_);
}

bool Worker::progress() {
  bool any = false;
  while (ucp_worker_progress(worker_) != 0)
    any = true;
  return any;
}

void Worker::wait(int timeoutMs, int alsoFd) {
  ucs_status_t st = ucp_worker_arm(worker_);
  if (st == UCS_ERR_BUSY)
    return; // events pending: progress again
  pollfd p[2] = {{eventFd_, POLLIN, 0}, {alsoFd, POLLIN, 0}};
  (void)::poll(p, alsoFd >= 0 ? 2 : 1, timeoutMs);
}

Result<sockaddr_storage> resolve(const std::string &host, uint16_t port,
                                 socklen_t &length) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = host.empty() ? AI_PASSIVE : 0;
  addrinfo *found = nullptr;
  std::string service = std::to_string(port);
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(),
                       &hints, &found);
  if (rc != 0 || !found)
    return Status::error("cannot resolve '" + host + "': " + gai_strerror(rc));
  sockaddr_storage out{};
  std::memcpy(&out, found->ai_addr, found->ai_addrlen);
  length = found->ai_addrlen;
  freeaddrinfo(found);
  return out;
}

void closeEndpoint(Worker &worker, ucp_ep_h ep, bool force) {
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &param);
  if (req == nullptr || UCS_PTR_IS_ERR(req))
    return;
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (ucp_request_check_status(req) == UCS_INPROGRESS &&
         std::chrono::steady_clock::now() < until)
    ucp_worker_progress(worker.handle());
  if (ucp_request_check_status(req) == UCS_INPROGRESS)
    ucp_request_cancel(worker.handle(), req);
  ucp_request_free(req);
}

} // namespace llmir::kvstore::ucx

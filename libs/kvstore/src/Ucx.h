// A ucp context with one worker (active messages, event wakeup) and the
// small helpers the server and client share.
#pragma once

#include "llmir/support/Status.h"

#include <ucp/api/ucp.h>

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <sys/socket.h>

namespace llmir::kvstore::ucx {

std::string errorText(ucs_status_t status);

/// UCX's TCP send and receive segment size unless UCX_TCP_TX_SEG_SIZE or
/// UCX_TCP_RX_SEG_SIZE is set (Worker::create says why): a message of a
/// 4 MiB block and a full 64 KiB header (kMaxAmHeaderBytes) in one segment.
constexpr const char *kTcpSegmentSize = "4200k";

/// A message whose block bytes are at most this many goes eagerly
/// (UCP_AM_SEND_FLAG_EAGER: in one go, the receiver's UCX assembling it)
/// instead of by rendezvous (a request-to-send and a ready-to-receive first):
/// over TCP loopback a 1 MiB put's p50 fell from 500-560 to 270-330 us and a
/// get's from 420-460 to 310-340 us in two runs (docs/performance.md, "TCP
/// segments", measured with 256 KiB segments). Larger messages keep UCX's
/// choice: forcing eager at every size, with messages in several segments,
/// halved 4 MiB and 8-block calls (the assembled copy costs more there);
/// with kTcpSegmentSize UCX itself sends a message eagerly up to the
/// segment (a 4 MiB block), in one piece, and by rendezvous beyond.
/// Messages of up to 4 MiB of blocks were slower for 32 x 1 MiB calls
/// (docs/performance.md, "TCP, branch kv9"). The client also splits a
/// call's blocks into messages of at most this many bytes (a larger block
/// alone), so batches of small blocks go eagerly.
constexpr uint64_t kEagerPayloadBytes = 1 << 20;

/// The largest active-message header this library sends: UCX's short
/// protocol carries a header's length in 16 bits (Worker::create says more).
constexpr size_t kMaxAmHeaderBytes = 65535;

class Worker {
public:
  /// Single-threaded worker (ucp_worker_signal, the only call made from
  /// another thread, is safe on any worker). `listener`: allow binding a
  /// port whose previous connections linger in TIME_WAIT, so that a
  /// restarted server gets its port back (unless UCX_TCP_CM_REUSEADDR says
  /// otherwise). `tcpCongestion`: the TCP congestion controls to try on
  /// the sockets UCX opens from now on (useTcpCongestionForUcx, process-wide;
  /// "": leave the host's default).
  static Result<std::unique_ptr<Worker>> create(bool listener = false,
                                                const std::string &tcpCongestion = "");
  ~Worker();

  ucp_worker_h handle() const { return worker_; }
  /// UCX's max_am_header, at most kMaxAmHeaderBytes: the largest header
  /// this worker sends (a request's records, a reply's as many).
  size_t maxAmHeader() const { return maxAmHeader_; }
  /// Progresses until idle; true when anything happened.
  bool progress();
  /// Arms the worker and sleeps up to `timeoutMs` for network events
  /// (returns at once when events are pending), or until `alsoFd` (when
  /// not negative) is readable.
  void wait(int timeoutMs, int alsoFd = -1);

private:
  Worker() = default;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  int eventFd_ = -1;
  size_t maxAmHeader_ = 0;
};

/// host:port as a socket address (numeric or resolvable host names).
/// Whether UCX_TLS lets UCX use a transport called one of `names` (unset,
/// "all", a list naming one, or a "^" exclusion list naming none).
bool transportsAllow(std::initializer_list<std::string_view> names);

Result<sockaddr_storage> resolve(const std::string &host, uint16_t port,
                                 socklen_t &length);

/// Closes `ep` (forcibly when `force`), progressing until done or ~1 s.
void closeEndpoint(Worker &worker, ucp_ep_h ep, bool force);

} // namespace llmir::kvstore::ucx

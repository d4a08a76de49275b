#include "llmir/workerproto/Messages.h"

#include "llmir/net/Framed.h"

#include <chrono>

namespace llmir::workerproto {

namespace {
proto::Envelope versioned() {
  proto::Envelope e;
  e.set_protocol_version(net::kWorkerProtocolVersion);
  return e;
}
} // namespace

proto::Envelope registerWorkerMessage(const std::string &workerId, const std::string &host,
                                      const std::string &device) {
  proto::Envelope e = versioned();
  proto::RegisterWorker *r = e.mutable_register_worker();
  r->set_worker_id(workerId);
  r->set_host(host);
  r->set_device(device);
  return e;
}

proto::Envelope heartbeatMessage(const std::string &workerId, uint64_t unixMillis) {
  proto::Envelope e = versioned();
  e.mutable_heartbeat()->set_worker_id(workerId);
  e.mutable_heartbeat()->set_unix_millis(unixMillis);
  return e;
}

proto::Envelope drainMessage(const std::string &reason) {
  proto::Envelope e = versioned();
  e.mutable_drain()->set_reason(reason);
  return e;
}

proto::Envelope rankReadyMessage(proto::RankReady ready) {
  proto::Envelope e = versioned();
  *e.mutable_rank_ready() = std::move(ready);
  return e;
}

proto::Envelope stepRequestMessage(const proto::StepRequest &request) {
  proto::Envelope e = versioned();
  *e.mutable_step_request() = request;
  return e;
}

proto::Envelope stepResponseMessage(proto::StepResponse response) {
  proto::Envelope e = versioned();
  *e.mutable_step_response() = std::move(response);
  return e;
}

proto::Envelope kvLoadRequestMessage(const proto::KvLoadRequest &request) {
  proto::Envelope e = versioned();
  *e.mutable_kv_load_request() = request;
  return e;
}

proto::Envelope kvLoadResponseMessage(proto::KvLoadResponse response) {
  proto::Envelope e = versioned();
  *e.mutable_kv_load_response() = std::move(response);
  return e;
}

proto::Envelope errorMessage(const std::string &message) {
  proto::Envelope e = versioned();
  e.mutable_error()->set_message(message);
  return e;
}

uint64_t unixMillisNow() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

} // namespace llmir::workerproto

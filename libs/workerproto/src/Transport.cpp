#include "llmir/workerproto/Transport.h"

namespace llmir::workerproto {

namespace {

class TcpListener final : public WorkerListener {
public:
  explicit TcpListener(std::unique_ptr<net::FramedServer> server) : server_(std::move(server)) {}
  uint16_t port() const override { return server_->port(); }
  void stop() override { server_->stop(); }

private:
  std::unique_ptr<net::FramedServer> server_;
};

class TcpSchedulerLink final : public SchedulerLink {
public:
  explicit TcpSchedulerLink(std::unique_ptr<net::FramedClient> client)
      : client_(std::move(client)) {}
  Status send(const proto::Envelope &envelope) override { return client_->send(envelope); }
  Result<proto::Envelope> receive(std::chrono::microseconds timeout) override {
    return client_->receive(timeout);
  }
  bool isOpen() const override { return client_->connection()->isOpen(); }
  std::string peer() const override { return client_->connection()->peer(); }
  void abort(Status why) override { client_->connection()->abort(std::move(why)); }
  void close() override { client_->close(); }

private:
  std::unique_ptr<net::FramedClient> client_;
};

} // namespace

Result<std::unique_ptr<WorkerListener>> listenTcp(const std::string &host, uint16_t port,
                                                  net::FramedHandlers handlers,
                                                  net::FramedOptions options) {
  auto server = net::FramedServer::start(host, port, std::move(handlers), std::move(options));
  if (!server)
    return server.status();
  return std::unique_ptr<WorkerListener>(new TcpListener(std::move(*server)));
}

ListenFunction tcpListener(std::string host, uint16_t port, net::FramedOptions options) {
  return [host = std::move(host), port, options = std::move(options)](
             net::FramedHandlers handlers) { return listenTcp(host, port, handlers, options); };
}

Result<std::unique_ptr<SchedulerLink>> connectTcp(const std::string &host, uint16_t port,
                                                  std::chrono::milliseconds connectTimeout,
                                                  net::FramedOptions options) {
  auto client = net::FramedClient::connect(host, port, connectTimeout, {}, std::move(options));
  if (!client)
    return client.status();
  return std::unique_ptr<SchedulerLink>(new TcpSchedulerLink(std::move(*client)));
}

} // namespace llmir::workerproto

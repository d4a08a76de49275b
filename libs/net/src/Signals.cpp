#include "llmir/net/Signals.h"

#include <atomic>
#include <cerrno>
#include <csignal>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

namespace llmir::net {
namespace {
std::atomic<int> receivedSignal{0};
int wakeFds[2] = {-1, -1};

extern "C" void onTerminationSignal(int sig) {
  int saved = errno;
  receivedSignal.store(sig);
  char byte = 1;
  (void)!::write(wakeFds[1], &byte, 1);
  errno = saved;
}
} // namespace

void installTerminationHandler() {
  static const bool installed = [] {
    if (::pipe2(wakeFds, O_CLOEXEC | O_NONBLOCK) != 0)
      return false;
    struct sigaction action {};
    action.sa_handler = onTerminationSignal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    ::sigaction(SIGTERM, &action, nullptr);
    ::sigaction(SIGINT, &action, nullptr);
    return true;
  }();
  (void)installed;
}

std::optional<int> waitForTerminationSignal(std::chrono::milliseconds timeout) {
  installTerminationHandler();
  if (int sig = receivedSignal.load())
    return sig;
  pollfd fd{wakeFds[0], POLLIN, 0};
  int waitMs = static_cast<int>(std::min<int64_t>(timeout.count(), 1 << 30));
  if (::poll(&fd, 1, waitMs) > 0) {
    char drain[64];
    while (::read(wakeFds[0], drain, sizeof drain) > 0) {
    }
  }
  if (int sig = receivedSignal.load())
    return sig;
  return std::nullopt;
}

int waitForTerminationSignal() {
  for (;;)
    if (auto sig = waitForTerminationSignal(std::chrono::hours(1)))
      return *sig;
}

} // namespace llmir::net

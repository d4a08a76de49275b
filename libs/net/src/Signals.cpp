#include "llmir/net/Signals.h"

#include <cerrno>
#include <csignal>
#include <ctime>

namespace llmir::net {
namespace {
sigset_t terminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}
} // namespace

void blockTerminationSignals() {
  sigset_t set = terminationSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int waitForTerminationSignal() {
  sigset_t set = terminationSignals();
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  return sig;
}

std::optional<int> waitForTerminationSignal(std::chrono::milliseconds timeout) {
  sigset_t set = terminationSignals();
  timespec ts{static_cast<time_t>(timeout.count() / 1000),
              static_cast<long>((timeout.count() % 1000) * 1000000)};
  int sig = sigtimedwait(&set, nullptr, &ts);
  if (sig < 0)
    return std::nullopt;
  return sig;
}

} // namespace llmir::net

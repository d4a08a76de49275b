// Real processes for the mesh tests: a free loopback port and a spawned
// binary that is killed when the test ends.
#pragma once

#include <arpa/inet.h>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <netinet/in.h>
#include <random>
#include <signal.h>
#include <spawn.h>
#include <string>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

extern char **environ;

namespace llmir::testing {
using namespace std::chrono_literals;

/// A loopback port for a service the test starts (and may restart on the
/// same address). Not bind(0): the kernel hands such ports out of its
/// ephemeral range, where every outgoing connection's source port and every
/// other test's bind(0) draw too, so a test running beside this one can take
/// the port between our close and the service's bind (seen in CI). Below that
/// range only explicit binds take ports: walk it from a random start, one
/// port after the other within this process, and return the first that binds.
/// The same rule as tests/support/ports.mjs.
inline bool bindsOnLoopback(uint16_t port, uint16_t *bound = nullptr) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  bool ok = ::bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0;
  socklen_t len = sizeof addr;
  if (ok && bound && ::getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len) == 0)
    *bound = ntohs(addr.sin_port);
  ::close(fd);
  return ok;
}

inline uint16_t freePort() {
  static std::mutex mutex;
  static unsigned next = 0;
  constexpr unsigned low = 10000;
  unsigned high = 32768; // Linux's default start of the ephemeral range
  if (std::FILE *f = std::fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
    unsigned ephemeralLow = 0;
    if (std::fscanf(f, "%u", &ephemeralLow) == 1 && ephemeralLow < high)
      high = ephemeralLow;
    std::fclose(f);
  }
  if (high < low + 100) { // no room below a custom ephemeral range
    uint16_t bound = 0;
    bindsOnLoopback(0, &bound);
    return bound;
  }
  std::lock_guard<std::mutex> lock(mutex);
  if (next == 0)
    next = low + std::random_device{}() % (high - low);
  for (int tries = 0; tries < 1000; ++tries) {
    uint16_t port = static_cast<uint16_t>(next);
    next = next + 1 < high ? next + 1 : low;
    if (bindsOnLoopback(port))
      return port;
  }
  return 0; // the service's bind then fails with a clear error
}

class Process {
public:
  explicit Process(std::vector<std::string> args) {
    std::vector<char *> argv;
    for (auto &a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ) != 0)
      pid_ = -1;
  }
  ~Process() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  bool started() const { return pid_ > 0; }
  void signal(int sig) { ::kill(pid_, sig); }
  /// Exit status, or -1 when it did not exit within `timeout`.
  int wait(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(20ms);
    }
    return -1;
  }

private:
  pid_t pid_ = -1;
  bool exited_ = false;
};

} // namespace llmir::testing

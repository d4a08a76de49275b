#include "RankProcesses.h"

#include <cerrno>
#include <csignal>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

namespace llmir::runtime::testing {

namespace {
[[noreturn]] void runChild(int writeFd, int rank,
                           const std::function<Status(int)> &body) {
  Status status = Status::error("rank threw an exception");
  try {
    status = body(rank);
  } catch (...) {
  }
  const std::string &message = status.message();
  size_t written = 0;
  while (written < message.size()) {
    ssize_t n = ::write(writeFd, message.data() + written, message.size() - written);
    if (n <= 0)
      break;
    written += static_cast<size_t>(n);
  }
  ::_exit(status.isOk() ? 0 : 1);
}
} // namespace

std::vector<RankOutcome> runRanks(int count,
                                  const std::function<Status(int)> &body,
                                  std::chrono::seconds watchdog) {
  std::vector<pid_t> pids(count, -1);
  std::vector<int> pipes(count, -1);
  std::vector<RankOutcome> outcomes(count);
  for (int rank = 0; rank < count; ++rank) {
    int fds[2];
    if (::pipe(fds) != 0) {
      outcomes[rank].message = "pipe failed";
      continue;
    }
    pid_t pid = ::fork();
    if (pid == 0) {
      ::close(fds[0]);
      runChild(fds[1], rank, body);
    }
    ::close(fds[1]);
    pids[rank] = pid;
    pipes[rank] = fds[0];
  }

  // Read every rank's message until all pipes close or the watchdog fires.
  std::vector<std::string> messages(count);
  auto deadline = std::chrono::steady_clock::now() + watchdog;
  bool hung = false;
  for (;;) {
    std::vector<pollfd> open;
    std::vector<int> owners;
    for (int r = 0; r < count; ++r)
      if (pipes[r] >= 0) {
        open.push_back({pipes[r], POLLIN, 0});
        owners.push_back(r);
      }
    if (open.empty())
      break;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      hung = true;
      break;
    }
    int ready = ::poll(open.data(), open.size(), static_cast<int>(left.count()));
    if (ready < 0 && errno != EINTR)
      break;
    for (size_t i = 0; i < open.size(); ++i) {
      if (!open[i].revents)
        continue;
      char buffer[4096];
      ssize_t n = ::read(open[i].fd, buffer, sizeof(buffer));
      if (n > 0) {
        messages[owners[i]].append(buffer, static_cast<size_t>(n));
      } else {
        ::close(open[i].fd);
        pipes[owners[i]] = -1;
      }
    }
  }

  for (int r = 0; r < count; ++r) {
    if (pids[r] <= 0)
      continue;
    if (hung)
      ::kill(pids[r], SIGKILL); // no-op error for ranks that already exited
    if (pipes[r] >= 0)
      ::close(pipes[r]);
    int status = 0;
    ::waitpid(pids[r], &status, 0);
    RankOutcome &out = outcomes[r];
    if (WIFEXITED(status)) {
      out.ok = WEXITSTATUS(status) == 0;
      out.message = messages[r];
      if (hung && pipes[r] >= 0)
        out.message += " [rank hung: killed by the test watchdog]";
    } else {
      out.ok = false;
      out.message = "rank ended by signal " + std::to_string(WTERMSIG(status)) +
                    (hung && pipes[r] >= 0 ? " (hung: killed by the test watchdog)"
                                           : "");
    }
  }
  return outcomes;
}

} // namespace llmir::runtime::testing

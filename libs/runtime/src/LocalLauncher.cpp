#include "llmir/runtime/LocalLauncher.h"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace llmir::runtime {
namespace {

struct RankProcess {
  pid_t pid = -1;
  bool running = false;
  int waitStatus = 0;
};

/// In the child between fork and exec: only async-signal-safe calls.
[[noreturn]] void execRank(const char *executable, char *const argv[],
                           bool silenceStdout, pid_t launcher) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != launcher) // the launcher died before prctl took effect
    ::_exit(127);
  if (silenceStdout) {
    int devNull = ::open("/dev/null", O_WRONLY);
    if (devNull >= 0) {
      ::dup2(devNull, STDOUT_FILENO);
      ::close(devNull);
    }
  }
  ::execv(executable, argv);
  ::_exit(127);
}

std::string describeEnd(int rank, int waitStatus) {
  std::string who = "rank " + std::to_string(rank);
  if (WIFSIGNALED(waitStatus)) {
    int sig = WTERMSIG(waitStatus);
    return who + " was killed by signal " + std::to_string(sig) + " (" +
           ::strsignal(sig) + ")";
  }
  int code = WEXITSTATUS(waitStatus);
  if (code == 127)
    return who + " could not be started (exit status 127)";
  return who + " exited with status " + std::to_string(code);
}

bool failed(int waitStatus) {
  return !(WIFEXITED(waitStatus) && WEXITSTATUS(waitStatus) == 0);
}

} // namespace

Status launchLocalRanks(const LaunchOptions &options) {
  if (options.worldSize < 1 || !options.argsOf)
    return Status::error("launchLocalRanks: needs worldSize >= 1 and argsOf");
  const pid_t launcher = ::getpid();
  std::vector<RankProcess> ranks(static_cast<size_t>(options.worldSize));
  auto killAll = [&] {
    for (RankProcess &p : ranks)
      if (p.running) {
        ::kill(p.pid, SIGKILL);
        ::waitpid(p.pid, &p.waitStatus, 0);
        p.running = false;
      }
  };

  for (int r = 0; r < options.worldSize; ++r) {
    // argv is built before fork: the child may only exec.
    std::vector<std::string> args = options.argsOf(r);
    std::vector<char *> argv;
    for (std::string &a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    bool silence = options.stdoutRank >= 0 && options.stdoutRank != r;
    pid_t pid = ::fork();
    if (pid < 0) {
      Status error = Status::error("starting rank " + std::to_string(r) +
                                   ": fork failed: " + std::strerror(errno));
      killAll();
      return error;
    }
    if (pid == 0)
      execRank(options.executable.c_str(), argv.data(), silence, launcher);
    ranks[static_cast<size_t>(r)] = {pid, true, 0};
  }
  if (options.onStarted)
    for (int r = 0; r < options.worldSize; ++r)
      options.onStarted(r, ranks[static_cast<size_t>(r)].pid);

  std::vector<int> failedRanks; // in the order their exits were seen
  std::chrono::steady_clock::time_point killAt{};
  std::vector<int> killedByUs;
  for (;;) {
    bool anyRunning = false;
    for (int r = 0; r < options.worldSize; ++r) {
      RankProcess &p = ranks[static_cast<size_t>(r)];
      if (!p.running)
        continue;
      pid_t done = ::waitpid(p.pid, &p.waitStatus, WNOHANG);
      if (done == 0) {
        anyRunning = true;
        continue;
      }
      p.running = false;
      if (done < 0 || failed(p.waitStatus)) {
        if (failedRanks.empty())
          killAt = std::chrono::steady_clock::now() + options.grace;
        failedRanks.push_back(r);
      }
    }
    if (!anyRunning)
      break;
    if (!failedRanks.empty() && std::chrono::steady_clock::now() >= killAt) {
      for (int r = 0; r < options.worldSize; ++r)
        if (ranks[static_cast<size_t>(r)].running)
          killedByUs.push_back(r);
      killAll();
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (failedRanks.empty())
    return Status::ok();

  // The cause: a rank that a signal ended (crash, OOM killer, kill -9),
  // else the first rank seen failing.
  int cause = failedRanks.front();
  for (int r : failedRanks)
    if (WIFSIGNALED(ranks[static_cast<size_t>(r)].waitStatus)) {
      cause = r;
      break;
    }
  std::string message = describeEnd(cause, ranks[static_cast<size_t>(cause)].waitStatus);
  std::string after;
  for (int r : failedRanks)
    if (r != cause)
      after += (after.empty() ? "" : ", ") + std::to_string(r);
  if (!after.empty())
    message += "; then rank(s) " + after + " failed";
  if (!killedByUs.empty()) {
    std::string list;
    for (int r : killedByUs)
      list += (list.empty() ? "" : ", ") + std::to_string(r);
    message += "; rank(s) " + list + " still running after " +
               std::to_string(options.grace.count()) + " ms were killed";
  }
  return Status::error(message);
}

std::function<std::vector<std::string>(int rank)> selfRankArgs(int argc, char **argv,
                                                               int worldSize,
                                                               uint16_t storePort) {
  std::vector<std::string> own(argv, argv + argc);
  return [own, worldSize, storePort](int rank) {
    std::vector<std::string> args = own;
    args.insert(args.end(), {"--worker-rank", std::to_string(rank), "--world-size",
                             std::to_string(worldSize), "--store-port",
                             std::to_string(storePort)});
    return args;
  };
}

int visibleNvidiaGpus() {
  std::error_code ec;
  int count = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/driver/nvidia/gpus", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    ++count;
  return count;
}

} // namespace llmir::runtime

#include "IdleCpu.h"

#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

namespace llmir::kvstore {

IdleCpuProbe::IdleCpuProbe(const char *loadavg, long cpus) {
  fd_ = ::open(loadavg, O_RDONLY | O_CLOEXEC);
  if (cpus > 0) {
    cpus_ = cpus;
    return;
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0)
    cpus_ = CPU_COUNT(&set);
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  if (cpus_ <= 0 || (online > 0 && online < cpus_))
    cpus_ = online;
}

IdleCpuProbe::~IdleCpuProbe() {
  if (fd_ >= 0)
    ::close(fd_);
}

long IdleCpuProbe::runnable(const char *loadavg) {
  // "L1 L5 L15 R/T LASTPID": R follows the third space.
  const char *p = loadavg;
  for (int spaces = 0; spaces < 3; ++p) {
    if (*p == '\0')
      return -1;
    if (*p == ' ')
      ++spaces;
  }
  char *end = nullptr;
  long n = std::strtol(p, &end, 10);
  return end != p && *end == '/' ? n : -1;
}

bool IdleCpuProbe::spare(int waking) {
  if (fd_ < 0 || cpus_ <= 0)
    return false;
  char text[128];
  ssize_t n = ::pread(fd_, text, sizeof text - 1, 0);
  if (n <= 0)
    return false;
  text[n] = '\0';
  long r = runnable(text);
  return r > 0 && r + waking <= cpus_;
}

} // namespace llmir::kvstore

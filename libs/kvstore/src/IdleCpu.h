// Whether a busy-waiting thread would take a CPU another thread needs: the
// store spins for its same-host clients' next request only while the host
// has a CPU to spare (docs/kv-store.md, "Request channel").
#pragma once

namespace llmir::kvstore {

class IdleCpuProbe {
public:
  /// `loadavg`: the file to read (tests give their own); `cpus`: 0 for the
  /// CPUs this process may run on.
  explicit IdleCpuProbe(const char *loadavg = "/proc/loadavg", long cpus = 0);
  ~IdleCpuProbe();
  IdleCpuProbe(const IdleCpuProbe &) = delete;
  IdleCpuProbe &operator=(const IdleCpuProbe &) = delete;
  /// True when the host's runnable threads (/proc/loadavg's fourth field,
  /// the caller included), plus `waking` threads the caller just woke (not
  /// yet counted there), are no more than the CPUs this process may run
  /// on: no runnable thread then waits for a CPU, so spinning delays
  /// nobody. False where that cannot be read. One pread(2).
  bool spare(int waking = 0);
  /// The number in the fourth field of a /proc/loadavg line ("0.5 0.4 0.3
  /// 2/345 678": 2), or -1.
  static long runnable(const char *loadavg);

private:
  int fd_ = -1;
  long cpus_ = 0;
};

} // namespace llmir::kvstore

// The store spins for a same-host client's next request only while the host
// has a CPU to spare (ServerOptions::idleChannelSpin): IdleCpuProbe reads the
// runnable threads from a /proc/loadavg line each time it is asked.
#include "IdleCpu.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <unistd.h>

using namespace llmir::kvstore;

namespace {

struct TempFile {
  std::string path;
  TempFile() {
    char name[] = "/tmp/llmir-loadavg-XXXXXX";
    int fd = mkstemp(name);
    ::close(fd);
    path = name;
  }
  ~TempFile() { std::remove(path.c_str()); }
  void write(const std::string &text) const {
    FILE *f = std::fopen(path.c_str(), "w");
    std::fputs(text.c_str(), f);
    std::fclose(f);
  }
};

} // namespace

TEST(IdleCpuProbe, ReadsTheRunnableThreads) {
  EXPECT_EQ(IdleCpuProbe::runnable("0.52 0.48 0.61 2/345 6789\n"), 2);
  EXPECT_EQ(IdleCpuProbe::runnable("12.00 9.10 8.00 17/1203 44\n"), 17);
  EXPECT_EQ(IdleCpuProbe::runnable("0.52 0.48 0.61"), -1);
  EXPECT_EQ(IdleCpuProbe::runnable("0.52 0.48 0.61 x/3 1"), -1);
  EXPECT_EQ(IdleCpuProbe::runnable("0.52 0.48 0.61 4 1"), -1); // no "/T"
  EXPECT_EQ(IdleCpuProbe::runnable(""), -1);
}

TEST(IdleCpuProbe, ASpareCpuIsNoMoreRunnableThreadsThanCpusAndIsReadAfresh) {
  TempFile file;
  file.write("0.10 0.20 0.30 2/100 123\n");
  IdleCpuProbe probe(file.path.c_str(), 2);
  EXPECT_TRUE(probe.spare()); // the caller and one other: each has a CPU
  EXPECT_FALSE(probe.spare(1)); // and one it just woke: a CPU short
  file.write("2.90 2.20 1.30 3/100 124\n");
  EXPECT_FALSE(probe.spare()); // a third waits: spinning would delay it
  file.write("0.10 0.20 0.30 1/100 125\n");
  EXPECT_TRUE(probe.spare());
  EXPECT_TRUE(probe.spare(1));
  file.write("garbage\n");
  EXPECT_FALSE(probe.spare()); // cannot tell: do not spin
  IdleCpuProbe missing("/nonexistent/loadavg", 2);
  EXPECT_FALSE(missing.spare());
  // This host's own file: a number, and the caller is runnable.
  IdleCpuProbe host;
  (void)host.spare();
}

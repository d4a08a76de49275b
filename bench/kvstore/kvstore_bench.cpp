// llmir-kvstore-bench: the KV-block store against ucx_perftest on the same
// UCX transport (docs/performance.md, "KV-block store").
//
//   llmir-kvstore-bench [--transports tcp,shm] [--sizes 16K,64K,256K,1M,4M]
//                       [--repeats 3] [--seconds 0.4] [--batch 32]
//                       [--perftest ucx_perftest]      (--help lists them)
//
// For each transport (UCX_TLS=tcp: everything over TCP; UCX_TLS=shm,tcp:
// requests over TCP, block bytes through the store's shared-memory segment)
// it starts the store in a child process
// (this binary with --serve), picks ucx_perftest's best primitive at 1 MiB
// among am_bw, tag_bw and ucp_put_bw, then runs `repeats` interleaved rounds
// of: store put and get (one block per call, and `batch` blocks per call)
// and ucx_perftest, per block size, and a memcpy of the same batch. Prints
// medians (min-max) and the ratios of the store's batched bandwidth to
// ucx_perftest's and (get) to the memcpy's.
//
// Which perftest to hold the store against: ucx_perftest sends one buffer
// into one buffer, again and again, so at 1 MiB both stay in the caches
// (shared memory: 47 GB/s here, 14 at 32 MiB, 8.6 at 128 MiB). A one-block
// call moves one block from and to one buffer each time, as perftest does:
// its ratio is to perftest at the block size. A batched call moves `batch`
// distinct blocks (the bench's sources and destinations, the store's slots)
// through memory: its ratio is to perftest moving batch x block bytes in one
// message (perftestN), the same footprint per iteration. Both are printed.
//
// Depth: a call's messages (at most 1 MiB of block bytes each, or one larger
// block) are all in flight together, so `batch` blocks of 1 MiB or more per
// call keep `batch` messages in flight, the way ucx_perftest's bandwidth
// tests keep up to 32 sends outstanding (their default window, -O); hence the
// default of 32. One block per call is a depth of one.
//
// A depth of one on both sides: a one-block call is synchronous (the next
// call starts after the reply), while perftest's bandwidth tests keep 32
// sends outstanding and a send completes locally (TCP: once the socket has
// the bytes; shared memory: once the copy into the peer's segment is done),
// with no reply. So each round also runs the same primitive with `-O 1`
// (perftest1: one send outstanding, still no reply) and perftest's best
// ping-pong test at the block size (pingpong: ucp_am_lat, tag_lat or
// ucp_put_lat, the best at 1 MiB; each message is sent after the previous
// one arrived, as a call waits for its reply; perftest reports half the
// round trip, so its bandwidth is one block one way per half round trip,
// where a call moves one block one way and a short reply back). The one-
// block calls' ratios to both are printed beside the ratio to the default.
#include "llmir/kvstore/Client.h"
#include "llmir/kvstore/Server.h"
#include "llmir/net/Config.h"

#include <algorithm>
#include <arpa/inet.h>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <netinet/in.h>
#include <poll.h>
#include <spawn.h>
#include <sstream>
#include <string>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

extern char **environ;
namespace kv = llmir::kvstore;
using Clock = std::chrono::steady_clock;

namespace {

std::string selfPath;

uint64_t parseSize(const std::string &s) {
  uint64_t n = std::stoull(s);
  char unit = s.empty() ? 0 : s.back();
  if (unit == 'K' || unit == 'k')
    n <<= 10;
  else if (unit == 'M' || unit == 'm')
    n <<= 20;
  return n;
}
std::string sizeName(uint64_t n) {
  if (n >= (1 << 20) && n % (1 << 20) == 0)
    return std::to_string(n >> 20) + " MiB";
  return std::to_string(n >> 10) + " KiB";
}
std::vector<std::string> split(const std::string &s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, ',');)
    if (!part.empty())
      out.push_back(part);
  return out;
}

struct Child {
  pid_t pid = -1;
  int out = -1;
  std::string text;
  bool readUntil(const std::string &needle, int timeoutMs) {
    auto until = Clock::now() + std::chrono::milliseconds(timeoutMs);
    while (text.find(needle) == std::string::npos) {
      int left = int(std::chrono::duration_cast<std::chrono::milliseconds>(
                         until - Clock::now()).count());
      if (left <= 0)
        return false;
      pollfd p{out, POLLIN, 0};
      if (poll(&p, 1, left) <= 0)
        continue;
      char buf[4096];
      ssize_t n = read(out, buf, sizeof buf);
      if (n <= 0)
        return false;
      text.append(buf, size_t(n));
    }
    return true;
  }
  int wait() {
    int status = 0;
    waitpid(pid, &status, 0);
    if (out >= 0)
      close(out);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
};

Child spawn(const std::vector<std::string> &args) {
  Child c;
  int fds[2];
  if (pipe(fds) != 0)
    return c;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  std::vector<std::string> copy = args;
  std::vector<char *> argv;
  for (auto &a : copy)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  if (posix_spawnp(&c.pid, argv[0], &actions, nullptr, argv.data(), environ) != 0)
    c.pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  c.out = fds[0];
  return c;
}

uint16_t freePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

struct PerftestResult {
  double gbps = -1;  // overall bandwidth, GB/s (10^9 bytes/s); negative: failed
  double p50us = -1; // perftest's typical (median) latency, us
};

// One ucx_perftest run (a server and a client on loopback). At least 64
// iterations and 256 MiB, or (messages above 4 MiB: the batch's footprint)
// at least 8 and 2 GiB, so that 128 MiB messages take about as long as the
// rest of a round. `extra` goes to both sides (e.g. {"-O", "1"}).
// A ping-pong test (*_lat) reports half a round trip as its latency and the
// message size over that as its bandwidth: one message one way, each sent
// only after the previous one arrived.
PerftestResult perftestRun(const std::string &tool, const std::string &test, uint64_t size,
                           const std::vector<std::string> &extra = {}) {
  uint64_t iters = size > (4ull << 20) ? std::max<uint64_t>(8, (2ull << 30) / size)
                                       : std::max<uint64_t>(64, (256ull << 20) / size);
  std::string port = std::to_string(freePort());
  std::vector<std::string> common = {"-t", test, "-s", std::to_string(size), "-n",
                                     std::to_string(iters), "-w",
                                     std::to_string(iters / 10), "-p", port, "-v"};
  common.insert(common.end(), extra.begin(), extra.end());
  std::vector<std::string> server = {tool};
  server.insert(server.end(), common.begin(), common.end());
  Child s = spawn(server);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  std::vector<std::string> client = {tool, "127.0.0.1"};
  client.insert(client.end(), common.begin(), common.end());
  Child c = spawn(client);
  c.readUntil("\n__never__", 60000); // read to EOF
  c.wait();
  s.readUntil("\n__never__", 5000);
  kill(s.pid, SIGTERM);
  s.wait();
  // CSV: iterations,p50_lat,avg_lat,overall_lat,avg_bw,overall_bw,avg_mr,overall_mr
  std::stringstream in(c.text);
  PerftestResult result;
  for (std::string line; std::getline(in, line);) {
    line.erase(0, line.find_first_not_of(' '));
    auto fields = split(line);
    // The last row is the final result (earlier "[thread 0]" rows are progress).
    if (fields.size() == 8 && std::isdigit(static_cast<unsigned char>(fields[0][0]))) {
      result.gbps = std::stod(fields[5]) * 1048576.0 / 1e9; // perftest's MB/s is MiB/s
      result.p50us = std::stod(fields[1]);
    }
  }
  if (result.gbps < 0)
    std::cerr << "ucx_perftest " << test << " " << size << " failed:\n" << c.text << "\n";
  return result;
}

double perftest(const std::string &tool, const std::string &test, uint64_t size,
                const std::vector<std::string> &extra = {}) {
  return perftestRun(tool, test, size, extra).gbps;
}

struct Sample {
  double gbps = 0;
  double p50us = 0;
  // CPU time (all threads) per MiB moved: the bench's client and the store
  // child. Unlike wall time it barely moves with other processes' load, so
  // it shows what a change saves in copies and hashing.
  double clientCpuUsPerMiB = 0;
  double storeCpuUsPerMiB = 0;
};

pid_t storePid = -1; // the store child of the transport being measured

// Nanoseconds on a CPU of every thread of `pid` (self when 0), from
// /proc/PID/task/*/schedstat (the first field).
double cpuNanoseconds(pid_t pid) {
  std::string dir = pid == 0 ? "/proc/self/task" : "/proc/" + std::to_string(pid) + "/task";
  double total = 0;
  if (DIR *d = opendir(dir.c_str())) {
    while (dirent *e = readdir(d)) {
      if (e->d_name[0] == '.')
        continue;
      std::ifstream in(dir + "/" + e->d_name + "/schedstat");
      double ns = 0;
      if (in >> ns)
        total += ns;
    }
    closedir(d);
  }
  return total;
}

// Repeats `op` (moving `bytes` per call) for about `seconds`.
template <typename Op> Sample measure(Op op, uint64_t bytes, double seconds) {
  for (int i = 0; i < 3; ++i)
    op(); // warm up (connection, page faults)
  std::vector<double> times;
  double clientCpu0 = cpuNanoseconds(0);
  double storeCpu0 = storePid > 0 ? cpuNanoseconds(storePid) : 0;
  auto start = Clock::now();
  auto until = start + std::chrono::duration<double>(seconds);
  while (Clock::now() < until || times.size() < 5) {
    auto t0 = Clock::now();
    op();
    times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  double total = std::chrono::duration<double>(Clock::now() - start).count();
  double mib = double(bytes) * times.size() / 1048576.0;
  Sample sample;
  sample.clientCpuUsPerMiB = (cpuNanoseconds(0) - clientCpu0) / 1e3 / mib;
  if (storePid > 0)
    sample.storeCpuUsPerMiB = (cpuNanoseconds(storePid) - storeCpu0) / 1e3 / mib;
  std::sort(times.begin(), times.end());
  sample.gbps = double(bytes) * times.size() / total / 1e9;
  sample.p50us = times[times.size() / 2] * 1e6;
  return sample;
}

struct Stats {
  std::vector<double> values;
  std::string str(int precision = 2) const {
    if (values.empty())
      return "-";
    auto v = values;
    std::sort(v.begin(), v.end());
    char buf[96];
    if (v.size() == 1)
      std::snprintf(buf, sizeof buf, "%.*f", precision, v[0]);
    else
      std::snprintf(buf, sizeof buf, "%.*f (%.*f-%.*f)", precision, v[v.size() / 2],
                    precision, v.front(), precision, v.back());
    return buf;
  }
  double median() const {
    auto v = values;
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
  }
};

void fail(const std::string &what) {
  std::cerr << "llmir-kvstore-bench: " << what << "\n";
  std::exit(1);
}

int storePollUs = 0;  // ServerOptions::pollBeforeSleep of the store child
int clientPollUs = 0; // ClientOptions::pollBeforeSleep of the bench's client
int clientIdlePollUs = -1; // ClientOptions::idlePoll (-1: its default)
int storeSpinUs = -1;  // ServerOptions::channelSpin (-1: its default)
int storeIdleSpinUs = -1; // ServerOptions::idleChannelSpin (-1: its default)
int storeIdlePollUs = -1; // ServerOptions::idlePoll (-1: its default)
int clientSpinUs = -1; // ClientOptions::channelSpin (-1: its default)
bool requestChannel = true;
int64_t partBytes = -1; // ClientOptions::partBytes (-1: its default)
int64_t trailingChecksumBytes = -1; // ClientOptions::trailingChecksumBytes (-1: its default)
int64_t streamingPutBytes = -1; // ClientOptions::streamingPutBytes (-1: its default)
int64_t streamingGetBytes = -1; // ClientOptions::streamingGetBytes (-1: its default)
// ClientOptions / ServerOptions::tcpCongestion of the client and the store
// ("default": the library's; "": the host's default).
std::string tcpCongestion = "default";

int serve() {
  // Ends with the bench, however the bench ends (fail() exits at once).
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() == 1)
    return 1;
  kv::ServerOptions o;
  o.host = "127.0.0.1";
  o.capacityBytes = 1ull << 30;
  o.pollBeforeSleep = std::chrono::microseconds(storePollUs);
  if (storeSpinUs >= 0)
    o.channelSpin = std::chrono::microseconds(storeSpinUs);
  if (storeIdleSpinUs >= 0)
    o.idleChannelSpin = std::chrono::microseconds(storeIdleSpinUs);
  if (storeIdlePollUs >= 0)
    o.idlePoll = std::chrono::microseconds(storeIdlePollUs);
  if (tcpCongestion != "default")
    o.tcpCongestion = tcpCongestion;
  auto server = kv::Server::start(o);
  if (!server)
    fail(server.message());
  std::cout << "port " << (*server)->port() << std::endl;
  pause(); // until the parent's SIGTERM
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  selfPath = argv[0];
  std::string transportList = "tcp,shm";
  std::string sizeList = "16K,64K,256K,1M,4M";
  int repeats = 3;
  double seconds = 0.4;
  uint64_t batch = 32; // ucx_perftest's default window for its *_bw tests
  std::string tool = "ucx_perftest";
  std::string measureList = "put1,get1,putN,getN,memcpy,perftest,perftestN,perftest1,pingpong";
  bool serveMode = false;
  llmir::net::Config config("llmir-kvstore-bench");
  config.add("transports", &transportList, "tcp, shm (UCX_TLS=shm,tcp), comma-separated");
  config.add("sizes", &sizeList, "block sizes (K, M suffixes), comma-separated");
  config.add("repeats", &repeats, "interleaved rounds (store, then ucx_perftest, per size)");
  config.add("seconds", &seconds, "time per store measurement");
  config.add("batch", &batch,
             "blocks per call in the batched measurement (messages in flight for blocks "
             "of 1 MiB or more; ucx_perftest keeps 32)");
  config.add("perftest", &tool, "the ucx_perftest binary");
  config.add("measure", &measureList,
             "what each round measures (for profiling one of them): put1, get1, putN, "
             "getN, memcpy, perftest (at the block size), perftestN (one message of "
             "batch x block bytes: the batched call's memory footprint), perftest1 (at the "
             "block size with one send outstanding, -O 1), pingpong (perftest's best ping-pong "
             "test at the block size); comma-separated");
  config.add("store-poll-us", &storePollUs,
             "the store polls this long after its last activity before sleeping");
  config.add("poll-us", &clientPollUs,
             "the client polls this long after its last activity before sleeping");
  config.add("store-idle-spin-us", &storeIdleSpinUs,
             "as --store-spin-us, only while the host has a CPU to spare as the spin "
             "begins (-1: the default)");
  config.add("store-idle-poll-us", &storeIdlePollUs,
             "the store's ServerOptions::idlePoll: with no channel open, poll UCX this long "
             "after the last request while the host has a CPU to spare (-1: its default)");
  config.add("idle-poll-us", &clientIdlePollUs,
             "the client polls UCX this long while waiting for replies when the host has a "
             "CPU to spare as the wait begins (-1: the default)");
  config.add("store-spin-us", &storeSpinUs,
             "after a request through a client's channel, the store checks the channels "
             "this long before sleeping (-1: the default)");
  config.add("spin-us", &clientSpinUs,
             "the client checks its channel for the reply this long before sleeping "
             "(-1: the default)");
  config.add("request-channel", &requestChannel,
             "carry same-host requests through the channel in the store's segment");
  config.add("part-bytes", &partBytes,
             "over TCP, puts of blocks of at least twice this go in parts of it (0: whole; "
             "-1: the client's default)");
  config.add("trailing-checksum-bytes", &trailingChecksumBytes,
             "over TCP, puts of blocks of at least this send their checksum in a last part "
             "of 1-2 KiB, hashing the rest after handing it to UCX (0: off; -1: the client's "
             "default)");
  config.add("streaming-put-bytes", &streamingPutBytes,
             "same-host puts of blocks of at least this write the segment with non-temporal "
             "stores (0: never; -1: the client's default)");
  config.add("streaming-get-bytes", &streamingGetBytes,
             "same-host gets of blocks of at least this write the destination with "
             "non-temporal stores (0: never; -1: the client's default)");
  config.add("tcp-congestion", &tcpCongestion,
             "TCP congestion controls of the client's and the store's UCX sockets, the "
             "first the kernel allows (comma-separated; \"default\": the library's, "
             "\"\": the host's default); ucx_perftest keeps the host's");
  config.add("serve", &serveMode, "internal: run the store for the parent bench");
  if (auto st = config.load(argc, argv); !st)
    fail(st.message());
  if (config.helpRequested()) {
    std::cout << config.usage();
    return 0;
  }
  if (serveMode)
    return serve();
  std::vector<std::string> transports = split(transportList);
  std::vector<uint64_t> sizes;
  for (auto &s : split(sizeList))
    sizes.push_back(parseSize(s));
  if (transports.empty() || sizes.empty() || repeats < 1 || seconds <= 0 || batch < 1 ||
      storePollUs < 0 || clientPollUs < 0)
    fail("transports and sizes must be non-empty; repeats, seconds, batch positive; "
         "poll times not negative");
  for (auto &t : transports)
    if (t != "tcp" && t != "shm")
      fail("transport '" + t + "' is not tcp or shm");
  std::vector<std::string> measured = split(measureList);
  for (auto &m : measured)
    if (m != "put1" && m != "get1" && m != "putN" && m != "getN" && m != "memcpy" &&
        m != "perftest" && m != "perftestN" && m != "perftest1" && m != "pingpong")
      fail("--measure: '" + m +
           "' is not put1, get1, putN, getN, memcpy, perftest, perftestN, perftest1 or "
           "pingpong");
  auto measures = [&](const char *what) {
    return std::find(measured.begin(), measured.end(), what) != measured.end();
  };

  for (const std::string &transport : transports) {
    std::string tls = transport == "shm" ? "shm,tcp" : transport;
    setenv("UCX_TLS", tls.c_str(), 1);
    // ucx_perftest exchanges addresses out of band: pure shared memory.
    std::string perftestTls = transport == "shm" ? "shm" : transport;

    Child server = spawn({selfPath, "--serve",
                          "--store-poll-us=" + std::to_string(storePollUs),
                          "--store-spin-us=" + std::to_string(storeSpinUs),
                          "--store-idle-spin-us=" + std::to_string(storeIdleSpinUs),
                          "--store-idle-poll-us=" + std::to_string(storeIdlePollUs),
                          "--tcp-congestion=" + tcpCongestion});
    if (!server.readUntil("\n", 20000))
      fail("store did not start: " + server.text);
    storePid = server.pid;
    uint16_t port = uint16_t(std::stoi(server.text.substr(server.text.find(' ') + 1)));
    kv::ClientOptions co;
    co.port = port;
    co.timeout = std::chrono::seconds(30);
    co.pollBeforeSleep = std::chrono::microseconds(clientPollUs);
    if (clientIdlePollUs >= 0)
      co.idlePoll = std::chrono::microseconds(clientIdlePollUs);
    if (clientSpinUs >= 0)
      co.channelSpin = std::chrono::microseconds(clientSpinUs);
    co.requestChannel = requestChannel;
    if (partBytes >= 0)
      co.partBytes = uint64_t(partBytes);
    if (trailingChecksumBytes >= 0)
      co.trailingChecksumBytes = uint64_t(trailingChecksumBytes);
    if (streamingPutBytes >= 0)
      co.streamingPutBytes = uint64_t(streamingPutBytes);
    if (streamingGetBytes >= 0)
      co.streamingGetBytes = uint64_t(streamingGetBytes);
    if (tcpCongestion != "default")
      co.tcpCongestion = tcpCongestion;
    auto client = kv::Client::create(co);
    if (!client)
      fail(client.message());

    // ucx_perftest's best primitive at 1 MiB on this transport.
    setenv("UCX_TLS", perftestTls.c_str(), 1);
    std::string best;
    double bestGbps = -1;
    for (const char *test : {"ucp_am_bw", "tag_bw", "ucp_put_bw"}) {
      if (!measures("perftest") && !measures("perftestN") && !measures("perftest1"))
        break;
      double g = perftest(tool, test, 1 << 20);
      std::cout << "# " << transport << ": ucx_perftest -t " << test
                << " at 1 MiB: " << g << " GB/s\n";
      if (g > bestGbps) {
        bestGbps = g;
        best = test;
      }
    }
    // The same for the ping-pong tests (depth one, each message waits for
    // the previous one to arrive).
    std::string bestPingPong;
    double bestPingPongGbps = -1;
    for (const char *test : {"ucp_am_lat", "tag_lat", "ucp_put_lat"}) {
      if (!measures("pingpong"))
        break;
      PerftestResult p = perftestRun(tool, test, 1 << 20);
      std::cout << "# " << transport << ": ucx_perftest -t " << test
                << " at 1 MiB: " << p.gbps << " GB/s, p50 " << p.p50us << " us one way\n";
      if (p.gbps > bestPingPongGbps) {
        bestPingPongGbps = p.gbps;
        bestPingPong = test;
      }
    }
    setenv("UCX_TLS", tls.c_str(), 1);

    std::map<uint64_t, std::map<std::string, Stats>> results;
    for (int r = 0; r < repeats; ++r) {
      for (uint64_t size : sizes) {
        std::vector<std::vector<uint8_t>> data(batch, std::vector<uint8_t>(size));
        for (uint64_t b = 0; b < batch; ++b)
          for (uint64_t j = 0; j < size; j += 64)
            data[b][j] = uint8_t(b + j);
        std::vector<std::vector<uint8_t>> out(batch, std::vector<uint8_t>(size));
        std::vector<kv::PutBlock> puts;
        std::vector<kv::GetBlock> gets;
        for (uint64_t b = 0; b < batch; ++b) {
          std::vector<int32_t> tokens(16, int32_t(b * 1000003 + size));
          kv::BlockKeyFields f{"bench", 0, 1, 0, 1, "bf16", 16, tokens};
          kv::BlockKey key = *kv::makeBlockKey(f);
          puts.push_back({key, "bf16", data[b].data(), size});
          gets.push_back({key, "bf16", out[b].data(), size});
        }
        auto check = [](const auto &result, kv::BlockStatus want) {
          if (!result)
            fail(result.message());
          for (auto s : *result)
            if (s != want)
              fail(std::string("unexpected block status ") + kv::blockStatusName(s));
        };
        auto &row = results[size];
        // Gets find what the puts stored; measured alone, they need one put first.
        if (!measures("put1") && !measures("putN") && (measures("get1") || measures("getN")))
          check((*client)->put(puts), kv::BlockStatus::Stored);
        std::optional<Sample> putOne, getOne, putBatch, getBatch, copyBatch;
        if (measures("put1"))
          putOne = measure([&] { check((*client)->put(std::span(puts.data(), 1)),
                                       kv::BlockStatus::Stored); },
                           size, seconds);
        if (measures("get1"))
          getOne = measure([&] { check((*client)->get(std::span(gets.data(), 1)),
                                       kv::BlockStatus::Found); },
                           size, seconds);
        if (measures("putN"))
          putBatch = measure([&] { check((*client)->put(puts), kv::BlockStatus::Stored); },
                             size * batch, seconds);
        if (measures("getN")) {
          getBatch = measure([&] { check((*client)->get(gets), kv::BlockStatus::Found); },
                             size * batch, seconds);
          if (out != data)
            fail("get returned different bytes than put stored");
        }
        // What one core's memcpy makes of the same batch (distinct sources
        // and destinations, as the store's calls see them): perftest moves
        // one buffer that stays in cache, so this is the other yardstick.
        if (measures("memcpy"))
          copyBatch = measure([&] {
            for (uint64_t b = 0; b < batch; ++b)
              std::memcpy(out[b].data(), data[b].data(), size);
          }, size * batch, seconds);
        if (r == 0 && size == sizes.front())
          std::cout << "# " << transport << " connection:\n"
                    << (*client)->describeConnection();
        double ref = -1, refBatch = -1;
        setenv("UCX_TLS", perftestTls.c_str(), 1);
        if (measures("perftest"))
          ref = perftest(tool, best, size);
        // The same primitive moving a batched call's bytes in one message:
        // perftest reuses one send and one receive buffer, so at the block
        // size both stay in the caches, while a batched call moves `batch`
        // distinct blocks through memory (as a store does). A message of
        // batch x block bytes has the batched call's footprint.
        if (measures("perftestN") && batch > 1)
          refBatch = perftest(tool, best, size * batch);
        double refDepth1 = -1;
        if (measures("perftest1"))
          refDepth1 = perftest(tool, best, size, {"-O", "1"});
        PerftestResult pingPong;
        if (measures("pingpong"))
          pingPong = perftestRun(tool, bestPingPong, size);
        setenv("UCX_TLS", tls.c_str(), 1);
        if (putOne) {
          row["put1"].values.push_back(putOne->gbps);
          row["put_us"].values.push_back(putOne->p50us);
          row["put_client_cpu"].values.push_back(putOne->clientCpuUsPerMiB);
          row["put_store_cpu"].values.push_back(putOne->storeCpuUsPerMiB);
        }
        if (getOne) {
          row["get1"].values.push_back(getOne->gbps);
          row["get_us"].values.push_back(getOne->p50us);
          row["get_client_cpu"].values.push_back(getOne->clientCpuUsPerMiB);
          row["get_store_cpu"].values.push_back(getOne->storeCpuUsPerMiB);
        }
        if (putBatch)
          row["putN"].values.push_back(putBatch->gbps);
        if (getBatch)
          row["getN"].values.push_back(getBatch->gbps);
        if (ref > 0) { // a failed perftest run (reported on stderr) is left out
          row["perftest"].values.push_back(ref);
          if (putBatch)
            row["ratio_put"].values.push_back(putBatch->gbps / ref);
          if (getBatch)
            row["ratio_get"].values.push_back(getBatch->gbps / ref);
        }
        if (ref > 0 && putOne)
          row["ratio_put1"].values.push_back(putOne->gbps / ref);
        if (ref > 0 && getOne)
          row["ratio_get1"].values.push_back(getOne->gbps / ref);
        if (refBatch > 0) {
          row["perftestN"].values.push_back(refBatch);
          if (putBatch)
            row["ratio_putN"].values.push_back(putBatch->gbps / refBatch);
          if (getBatch)
            row["ratio_getN"].values.push_back(getBatch->gbps / refBatch);
        }
        if (refDepth1 > 0) {
          row["perftest1"].values.push_back(refDepth1);
          if (putOne)
            row["ratio_put1_d1"].values.push_back(putOne->gbps / refDepth1);
          if (getOne)
            row["ratio_get1_d1"].values.push_back(getOne->gbps / refDepth1);
        }
        if (pingPong.gbps > 0) {
          row["pingpong"].values.push_back(pingPong.gbps);
          row["pingpong_us"].values.push_back(pingPong.p50us);
          if (putOne)
            row["ratio_put1_pp"].values.push_back(putOne->gbps / pingPong.gbps);
          if (getOne)
            row["ratio_get1_pp"].values.push_back(getOne->gbps / pingPong.gbps);
        }
        if (copyBatch)
          row["memcpy"].values.push_back(copyBatch->gbps);
        if (copyBatch && getBatch)
          row["ratio_get_memcpy"].values.push_back(getBatch->gbps / copyBatch->gbps);
        std::cerr << "# round " << r + 1 << " " << transport << " " << sizeName(size)
                  << " done\n";
      }
    }
    client->reset();
    kill(server.pid, SIGTERM);
    server.wait();

    std::cout << "\n## UCX_TLS=" << tls << " (ucx_perftest: UCX_TLS=" << perftestTls
              << ", -t " << best << ", ping-pong -t " << bestPingPong << "), " << repeats
              << " interleaved rounds, median (min-max), GB/s = 1e9 B/s\n\n";
    std::cout << "| block | put GB/s (1/call) | get GB/s (1/call) | put GB/s (" << batch
              << "/call) | get GB/s (" << batch << "/call) | put p50 us | get p50 us | "
              << "ucx_perftest " << best << " GB/s | put/perftest | get/perftest | memcpy GB/s ("
              << batch << " blocks) | get/memcpy | put CPU us/MiB client | store | "
              << "get CPU us/MiB client | store | ucx_perftest " << best << " GB/s ("
              << batch << " x block) | put/perftest (1/call) | get/perftest (1/call) | put ("
              << batch << "/call)/perftest (" << batch << " x block) | get (" << batch
              << "/call)/perftest (" << batch << " x block) | ucx_perftest " << best
              << " -O 1 GB/s | put/perftest -O 1 (1/call) | get/perftest -O 1 (1/call) | "
              << "ucx_perftest " << bestPingPong << " GB/s | " << bestPingPong
              << " p50 us (one way) | put/ping-pong (1/call) | get/ping-pong (1/call) |\n";
    std::cout << "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
                 "---|---|---|---|---|---|---|---|\n";
    for (uint64_t size : sizes) {
      auto &row = results[size];
      std::cout << "| " << sizeName(size) << " | " << row["put1"].str() << " | "
                << row["get1"].str() << " | " << row["putN"].str() << " | "
                << row["getN"].str() << " | " << row["put_us"].str(0) << " | "
                << row["get_us"].str(0) << " | " << row["perftest"].str() << " | "
                << row["ratio_put"].str() << " | " << row["ratio_get"].str() << " | "
                << row["memcpy"].str() << " | " << row["ratio_get_memcpy"].str() << " | "
                << row["put_client_cpu"].str(0) << " | " << row["put_store_cpu"].str(0) << " | "
                << row["get_client_cpu"].str(0) << " | " << row["get_store_cpu"].str(0)
                << " | " << row["perftestN"].str() << " | " << row["ratio_put1"].str() << " | "
                << row["ratio_get1"].str() << " | " << row["ratio_putN"].str() << " | "
                << row["ratio_getN"].str() << " | " << row["perftest1"].str() << " | "
                << row["ratio_put1_d1"].str() << " | " << row["ratio_get1_d1"].str() << " | "
                << row["pingpong"].str() << " | " << row["pingpong_us"].str(0) << " | "
                << row["ratio_put1_pp"].str() << " | " << row["ratio_get1_pp"].str() << " |\n";
    }
    std::cout << std::flush;
  }
  return 0;
}

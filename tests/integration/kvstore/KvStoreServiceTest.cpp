// llmir-kv-store as a real process on loopback, driven by the library's
// client over UCX (UCX_TLS=tcp, then shm,tcp: block bytes through the store's
// shared-memory segment, see KvStoreTest.cpp) and read through its HTTP
// endpoints.
#include "llmir/kvstore/Client.h"
#include "llmir/net/HttpClient.h"

#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <poll.h>
#include <regex>
#include <atomic>
#include <mutex>
#include <spawn.h>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

extern char **environ;

using namespace llmir::kvstore;
using namespace std::chrono_literals;

namespace {

// A child process whose stdout (JSON log lines) is read by the test.
class StoreProcess {
public:
  explicit StoreProcess(std::vector<std::string> args,
                        const std::string &binary = LLMIR_KV_STORE_BIN) {
    args.insert(args.begin(), binary);
    int fds[2];
    if (pipe(fds) != 0)
      return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    std::vector<char *> argv;
    for (auto &a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ) != 0)
      pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    out_ = fds[0];
  }
  ~StoreProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0)
      close(out_);
  }

  pid_t pid() const { return pid_; }
  const std::string &output() const { return text_; }

  /// Reads output until a line containing `needle` arrives (or the child
  /// exits, or `timeout`); returns that line.
  std::optional<std::string> waitForLine(const std::string &needle,
                                         std::chrono::milliseconds timeout = 20s) {
    auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      size_t from = 0, nl;
      while ((nl = text_.find('\n', from)) != std::string::npos) {
        std::string line = text_.substr(from, nl - from);
        from = nl + 1;
        if (line.find(needle) != std::string::npos && seen_.insert(line).second)
          return line;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      if (left.count() <= 0)
        return std::nullopt;
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, int(left.count())) <= 0)
        continue;
      char buf[4096];
      ssize_t n = read(out_, buf, sizeof buf);
      if (n <= 0)
        return std::nullopt; // exited
      text_.append(buf, size_t(n));
    }
  }

  /// Exit status after `timeout`, or nullopt if it is still running.
  std::optional<int> waitExit(std::chrono::milliseconds timeout) {
    auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        drain(0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      drain(20); // a child blocked on a full pipe would never exit
    }
    return std::nullopt;
  }

private:
  // Reads whatever output is ready, waiting up to `timeoutMs` for the first.
  void drain(int timeoutMs) {
    pollfd p{out_, POLLIN, 0};
    while (poll(&p, 1, timeoutMs) > 0) {
      char buf[4096];
      ssize_t n = read(out_, buf, sizeof buf);
      if (n <= 0)
        return;
      text_.append(buf, size_t(n));
      timeoutMs = 0;
    }
  }

  pid_t pid_ = -1;
  int out_ = -1;
  bool exited_ = false;
  std::string text_;
  std::set<std::string> seen_;
};

uint16_t field(const std::string &line, const std::string &name) {
  std::smatch m;
  std::regex re("\"" + name + "\":([0-9]+)");
  return std::regex_search(line, m, re) ? uint16_t(std::stoi(m[1])) : 0;
}

// A sample's value from the Prometheus text format ("name{labels} value").
double sample(const std::string &metrics, const std::string &series) {
  size_t at = 0;
  while ((at = metrics.find(series + " ", at)) != std::string::npos) {
    if (at == 0 || metrics[at - 1] == '\n')
      return std::stod(metrics.substr(at + series.size() + 1));
    at += series.size();
  }
  return -1;
}

std::string metricsOf(uint16_t httpPort) {
  auto r = llmir::net::httpGet("http://127.0.0.1:" + std::to_string(httpPort) + "/metrics");
  EXPECT_TRUE(r) << r.message();
  return r ? r->body : std::string();
}

BlockKey keyFor(int32_t n) {
  std::vector<int32_t> tokens(8, n);
  BlockKeyFields f;
  f.model = "tiny";
  f.layerEnd = 1;
  f.dtype = "f32";
  f.blockTokens = 8;
  f.tokenPrefix = tokens;
  return *makeBlockKey(f);
}

class KvStoreService : public ::testing::TestWithParam<const char *> {
protected:
  void SetUp() override { setenv("UCX_TLS", GetParam(), 1); }
};

TEST_P(KvStoreService, ServesEvictsRecoversAndStops) {
  constexpr uint64_t kBlock = 1 << 20;
  auto store = std::make_unique<StoreProcess>(std::vector<std::string>{
      "--http.host=127.0.0.1", "--http.port=0", "--ucx.host=127.0.0.1", "--ucx.port=0",
      "--store.capacity-bytes=4194304", "--store.max-block-bytes=1048576"});
  ASSERT_GT(store->pid(), 0);
  auto listening = store->waitForLine("\"listening\"");
  ASSERT_TRUE(listening) << store->output();
  uint16_t httpPort = field(*listening, "port"), ucxPort = field(*listening, "ucx_port");
  ASSERT_NE(httpPort, 0) << *listening;
  ASSERT_NE(ucxPort, 0) << *listening;
  for (const char *path : {"/healthz", "/readyz"}) {
    auto r = llmir::net::httpGet("http://127.0.0.1:" + std::to_string(httpPort) + path);
    ASSERT_TRUE(r) << r.message();
    EXPECT_EQ(r->status, 200) << path;
  }

  ClientOptions options;
  options.port = ucxPort;
  options.timeout = 3s;
  auto client = Client::create(options);
  ASSERT_TRUE(client) << client.message();

  // Six 1 MiB blocks into a 4 MiB store: the first two are evicted.
  std::vector<std::vector<uint8_t>> data;
  std::vector<PutBlock> puts;
  for (int i = 0; i < 6; ++i) {
    data.emplace_back(kBlock, uint8_t(i + 1));
    data.back()[i] = 0xEE;
  }
  for (int i = 0; i < 6; ++i) {
    PutBlock p{keyFor(i), "f32", data[i].data(), kBlock};
    auto r = (*client)->put(std::span(&p, 1));
    ASSERT_TRUE(r) << r.message();
    EXPECT_EQ((*r)[0], BlockStatus::Stored);
  }
  std::vector<std::vector<uint8_t>> out(6, std::vector<uint8_t>(kBlock));
  std::vector<GetBlock> gets;
  for (int i = 0; i < 6; ++i)
    gets.push_back({keyFor(i), "f32", out[i].data(), kBlock});
  auto got = (*client)->get(gets);
  ASSERT_TRUE(got) << got.message();
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ((*got)[i], i < 2 ? BlockStatus::Missing : BlockStatus::Found) << i;
    if (i >= 2)
      EXPECT_EQ(out[i], data[i]) << i;
  }
  // A block larger than the store's limit is refused.
  std::vector<uint8_t> big(2 * kBlock, 1);
  PutBlock tooBig{keyFor(9), "f32", big.data(), big.size()};
  auto refused = (*client)->put(std::span(&tooBig, 1));
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.message().find("bytes"), std::string::npos) << refused.message();

  std::string metrics = metricsOf(httpPort);
  EXPECT_EQ(sample(metrics, "llmir:kv_store_blocks"), 4) << metrics;
  EXPECT_EQ(sample(metrics, "llmir:kv_store_bytes"), 4.0 * kBlock) << metrics;
  EXPECT_EQ(sample(metrics, "llmir:kv_store_evictions_total"), 2) << metrics;
  EXPECT_EQ(sample(metrics, "llmir:kv_store_hits_total"), 4) << metrics;
  EXPECT_EQ(sample(metrics, "llmir:kv_store_misses_total"), 2) << metrics;
  EXPECT_EQ(sample(metrics, "llmir:kv_store_blocks_stored_total"), 6) << metrics;
  EXPECT_EQ(sample(metrics, "llmir:kv_store_request_seconds_count{op=\"put\"}"), 6)
      << metrics;
  // One get call: over TCP one request per 1 MiB block (a call's messages
  // carry at most 1 MiB of block bytes, docs/kv-store.md "Protocol"); on
  // the store's host none: the client answers every block, found or
  // missing, from the store's index ("Gets served by the client"), and the
  // hits, misses and bytes above and below still count them.
  bool sharedMemory = std::string(GetParam()).find("shm") == 0;
  EXPECT_EQ(sample(metrics, "llmir:kv_store_request_seconds_count{op=\"get\"}"),
            sharedMemory ? -1 : 6)
      << metrics;
  EXPECT_EQ(sample(metrics, "llmir:kv_store_transferred_bytes_total{op=\"get\"}"),
            4.0 * kBlock)
      << metrics;
  // With shm,tcp those bytes went through the segment; with tcp in messages.
  if (sharedMemory)
    EXPECT_EQ(sample(metrics, "llmir:kv_store_shared_memory_bytes_total{op=\"get\"}"),
              4.0 * kBlock)
        << metrics;
  else
    EXPECT_EQ(sample(metrics, "llmir:kv_store_shared_memory_bytes_total{op=\"get\"}"), -1)
        << "no sample: nothing moved through the segment\n"
        << metrics;
  if (std::system("command -v promtool >/dev/null 2>&1") == 0) {
    // promtool flags the vLLM-style ':' in every llmir: name (as in
    // tests/integration/prometheus); everything else must pass.
    std::string path = ::testing::TempDir() + "kv-store-metrics.txt";
    std::ofstream(path) << std::regex_replace(metrics, std::regex("llmir:"), "llmir_");
    EXPECT_EQ(std::system(("promtool check metrics < " + path).c_str()), 0) << metrics;
  }

  // A store that stops answering (SIGSTOP) is an error by the deadline.
  ASSERT_EQ(kill(store->pid(), SIGSTOP), 0);
  auto start = std::chrono::steady_clock::now();
  auto stalled = (*client)->get(std::span(&gets[5], 1), 1000ms);
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(stalled);
  EXPECT_NE(stalled.message().find("no reply within 1000 ms"), std::string::npos)
      << stalled.message();
  EXPECT_LT(elapsed, 1000ms + 5s);

  // Killed and restarted on the same UCX port: the same client reaches the
  // new, empty store (a call may fail while the old connection is torn down).
  ASSERT_EQ(kill(store->pid(), SIGKILL), 0);
  ASSERT_TRUE(store->waitExit(10s));
  store = std::make_unique<StoreProcess>(std::vector<std::string>{
      "--http.host=127.0.0.1", "--http.port=0", "--ucx.host=127.0.0.1",
      "--ucx.port=" + std::to_string(ucxPort), "--store.capacity-bytes=4194304",
      "--store.max-block-bytes=1048576"});
  listening = store->waitForLine("\"listening\"");
  ASSERT_TRUE(listening) << store->output();
  httpPort = field(*listening, "port");
  auto afterRestart = (*client)->get(std::span(&gets[5], 1));
  ASSERT_TRUE(afterRestart) << afterRestart.message();
  EXPECT_EQ((*afterRestart)[0], BlockStatus::Missing);
  PutBlock again{keyFor(5), "f32", data[5].data(), kBlock};
  auto stored = (*client)->put(std::span(&again, 1));
  ASSERT_TRUE(stored) << stored.message();
  EXPECT_EQ((*stored)[0], BlockStatus::Stored);

  // SIGKILL while connected: at most one failed call, then the restarted
  // store answers.
  ASSERT_EQ(kill(store->pid(), SIGKILL), 0);
  ASSERT_TRUE(store->waitExit(10s));
  store = std::make_unique<StoreProcess>(std::vector<std::string>{
      "--http.host=127.0.0.1", "--http.port=0", "--ucx.host=127.0.0.1",
      "--ucx.port=" + std::to_string(ucxPort)});
  ASSERT_TRUE(store->waitForLine("\"listening\"")) << store->output();
  auto first = (*client)->get(std::span(&gets[5], 1));
  if (!first)
    EXPECT_NE(first.message().find("kv store 127.0.0.1"), std::string::npos)
        << first.message();
  auto second = (*client)->get(std::span(&gets[5], 1));
  ASSERT_TRUE(second) << second.message();
  EXPECT_EQ((*second)[0], BlockStatus::Missing);

  // SIGTERM stops it cleanly.
  client->reset();
  ASSERT_EQ(kill(store->pid(), SIGTERM), 0);
  auto rc = store->waitExit(20s);
  ASSERT_TRUE(rc) << store->output();
  EXPECT_EQ(*rc, 0) << store->output();
  EXPECT_TRUE(store->waitForLine("\"stopped\"", 1s)) << store->output();
}

// The store SIGKILLed (three times) while a client thread moves 1-4 MiB
// blocks through its shared-memory segment without pause: the client process
// survives, every call either succeeds with exactly the bytes put or fails
// with an error naming the store (a worker then recomputes), and after each
// restart the same client maps the new store's segment and is served again.
TEST(KvStoreServiceSharedMemory, AStoreKilledMidTransferNeverReachesTheClient) {
  setenv("UCX_TLS", "shm,tcp", 1);
  auto startStore = [](uint16_t ucxPort) {
    auto store = std::make_unique<StoreProcess>(std::vector<std::string>{
        "--http.host=127.0.0.1", "--http.port=0", "--ucx.host=127.0.0.1",
        "--ucx.port=" + std::to_string(ucxPort), "--store.capacity-bytes=67108864",
        "--store.max-block-bytes=4194304"});
    return store;
  };
  auto store = startStore(0);
  auto listening = store->waitForLine("\"listening\"");
  ASSERT_TRUE(listening) << store->output();
  uint16_t ucxPort = field(*listening, "ucx_port");
  ASSERT_NE(listening->find("\"shared_memory\":\"134217792 bytes\""), std::string::npos)
      << *listening;

  ClientOptions o;
  o.port = ucxPort;
  o.timeout = 5s;
  auto client = Client::create(o);
  ASSERT_TRUE(client) << client.message();
  std::vector<uint64_t> sizes = {1 << 20, 4 << 20, 2 << 20, (3 << 20) + 4096};
  std::vector<std::vector<uint8_t>> data;
  for (size_t i = 0; i < sizes.size(); ++i) {
    data.emplace_back(sizes[i]);
    for (size_t b = 0; b < sizes[i]; ++b)
      data[i][b] = uint8_t(b * 131 + i * 7 + (b >> 12));
  }
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0}, wrong{0}, unnamed{0}, sharedCalls{0};
  std::string lastError;
  std::mutex errorMu;
  std::thread traffic([&] {
    std::vector<std::vector<uint8_t>> out;
    for (uint64_t n : sizes)
      out.emplace_back(n);
    for (int round = 0; !stop; ++round) {
      std::vector<PutBlock> puts;
      std::vector<GetBlock> gets;
      for (size_t i = 0; i < sizes.size(); ++i) {
        puts.push_back({keyFor(int32_t(i)), "f32", data[i].data(), sizes[i]});
        gets.push_back({keyFor(int32_t(i)), "f32", out[i].data(), sizes[i]});
      }
      // Every other round gets first: a kill then meets a get that the
      // client serves from the store's index (which must notice the dead
      // store, its mapping of the segment still readable) as often as a put.
      llmir::Result<std::vector<BlockStatus>> got = std::vector<BlockStatus>{};
      if (round % 2) {
        got = (*client)->get(gets);
        if (got) {
          for (size_t i = 0; i < sizes.size(); ++i)
            if ((*got)[i] == BlockStatus::Found && out[i] != data[i])
              ++wrong;
          auto stored = (*client)->put(puts);
          if (!stored)
            got = stored.status();
        }
      } else {
        auto stored = (*client)->put(puts);
        got = stored ? (*client)->get(gets) : llmir::Result<std::vector<BlockStatus>>(stored.status());
      }
      if (!got) {
        ++failed;
        std::lock_guard lock(errorMu);
        lastError = got.message();
        if (lastError.find("kv store 127.0.0.1") == std::string::npos)
          ++unnamed;
        continue;
      }
      ++ok;
      // Bytes through the segment, requests through its channel, gets
      // served from the store's index.
      if ((*client)->usesSharedMemory() && (*client)->usesRequestChannel() &&
          (*client)->usesIndexedGets())
        ++sharedCalls;
      for (size_t i = 0; i < sizes.size(); ++i)
        if ((*got)[i] == BlockStatus::Found && out[i] != data[i])
          ++wrong;
    }
  });
  for (int kill3 = 0; kill3 < 3; ++kill3) {
    int before = ok.load();
    auto until = std::chrono::steady_clock::now() + 30s;
    while (ok.load() < before + 3 && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(5ms);
    ASSERT_GE(ok.load(), before + 3) << "no successful calls before kill " << kill3;
    ASSERT_EQ(kill(store->pid(), SIGKILL), 0);
    ASSERT_TRUE(store->waitExit(10s));
    std::this_thread::sleep_for(200ms); // calls fail while it is down
    store = startStore(ucxPort);
    ASSERT_TRUE(store->waitForLine("\"listening\"")) << store->output();
  }
  int before = ok.load();
  auto until = std::chrono::steady_clock::now() + 30s;
  while (ok.load() < before + 3 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(5ms);
  stop = true;
  traffic.join();
  EXPECT_GE(ok.load(), before + 3) << "the restarted store was not used again: " << lastError;
  EXPECT_GE(failed.load(), 3) << "each kill fails at least the call that meets it";
  EXPECT_EQ(unnamed.load(), 0) << lastError;
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(sharedCalls.load(), ok.load()) << (*client)->describeConnection();
}

// The scheduler's kv-store.write-policy: anything but the three policies is
// refused at start, naming them.
TEST(KvStoreWritePolicyConfig, TheSchedulerRefusesAnUnknownPolicyNamingTheAccepted) {
  const std::string model = std::string(LLMIR_SOURCE_DIR) + "/models/demo-llama-4m";
  for (const char *bad : {"sometimes", "on_finish", ""}) {
    StoreProcess scheduler({"--model=" + model, std::string("--kv-store.write-policy=") + bad,
                            "--check-config"},
                           LLMIR_SCHEDULER_BIN);
    auto rc = scheduler.waitExit(30s);
    ASSERT_TRUE(rc) << bad;
    EXPECT_EQ(*rc, 2) << bad << ": " << scheduler.output();
    EXPECT_NE(scheduler.output().find("'kv-store.write-policy': unknown KV-store write policy '" +
                                      std::string(bad) +
                                      "' (accepted: off, on-finish, write-through)"),
              std::string::npos)
        << scheduler.output();
  }
  for (const char *good : {"off", "on-finish", "write-through"}) {
    StoreProcess scheduler({"--model=" + model, std::string("--kv-store.write-policy=") + good,
                            "--check-config"},
                           LLMIR_SCHEDULER_BIN);
    auto rc = scheduler.waitExit(30s);
    ASSERT_TRUE(rc) << good;
    EXPECT_EQ(*rc, 0) << good << ": " << scheduler.output();
  }
}

TEST_P(KvStoreService, BadConfigurationIsRefusedAtStart) {
  std::string path = ::testing::TempDir() + "kv-store-bad.yaml";
  std::ofstream(path) << "store:\n  capacity_bytes: 100\n";
  StoreProcess bad({"--config=" + path, "--check-config"});
  auto rc = bad.waitExit(20s);
  ASSERT_TRUE(rc);
  EXPECT_EQ(*rc, 2);
  bad.waitForLine("x", 100ms);
  EXPECT_NE(bad.output().find("store.capacity-bytes"), std::string::npos) << bad.output();

  StoreProcess tooSmall({"--store.capacity-bytes=1000", "--store.max-block-bytes=4096",
                         "--check-config"});
  rc = tooSmall.waitExit(20s);
  ASSERT_TRUE(rc);
  EXPECT_EQ(*rc, 2);

  StoreProcess oddParts({"--store.part-bytes=1000", "--check-config"});
  rc = oddParts.waitExit(20s);
  ASSERT_TRUE(rc);
  EXPECT_EQ(*rc, 2);
  oddParts.waitForLine("x", 100ms);
  EXPECT_NE(oddParts.output().find("store.part-bytes"), std::string::npos) << oddParts.output();

  StoreProcess good({"--store.capacity-bytes=1048576", "--store.max-block-bytes=65536",
                     "--store.part-bytes=262144", "--check-config"});
  rc = good.waitExit(20s);
  ASSERT_TRUE(rc);
  EXPECT_EQ(*rc, 0);
}

INSTANTIATE_TEST_SUITE_P(Transports, KvStoreService, ::testing::Values("tcp", "shm,tcp"),
                         [](const auto &info) {
                           return std::string(info.param).find("shm") == 0 ? "shm"
                                                                           : "tcp";
                         });

} // namespace

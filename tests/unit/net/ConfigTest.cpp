#include "llmir/net/Config.h"
#include "llmir/net/Log.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

using namespace llmir::net;
using llmir::Status;

namespace {

struct Settings {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;
  int threads = 2;
  double ratio = 0.5;
  bool verbose = false;
};

Config bind(Settings &s) {
  Config c("test-service");
  c.add("http.host", &s.host, "listen address");
  c.add("http.port", &s.port, "listen port");
  c.add("threads", &s.threads, "I/O threads");
  c.add("ratio", &s.ratio, "a number");
  c.add("verbose", &s.verbose, "more logs");
  return c;
}

std::string writeFile(const std::string &name, const std::string &text) {
  auto path = std::filesystem::temp_directory_path() / name;
  std::ofstream(path) << text;
  return path.string();
}

TEST(ConfigTest, DefaultsThenFileThenEnvThenFlags) {
  std::string path = writeFile("llmir_cfg_ok.yaml",
                               "http:\n  host: 0.0.0.0\n  port: 9000\nthreads: 4\nratio: 0.25\n");
  ::setenv("LLMIR_HTTP_PORT", "9100", 1);
  ::setenv("LLMIR_THREADS", "6", 1);
  Settings s;
  Config c = bind(s);
  std::string cfg = "--config=" + path;
  const char *argv[] = {"svc", cfg.c_str(), "--threads=8", "--verbose"};
  llmir::Status st = c.load(4, argv);
  ::unsetenv("LLMIR_HTTP_PORT");
  ::unsetenv("LLMIR_THREADS");
  ASSERT_TRUE(st.isOk()) << st.message();
  EXPECT_EQ(s.host, "0.0.0.0"); // file
  EXPECT_EQ(s.port, 9100);      // env over file
  EXPECT_EQ(s.threads, 8);      // flag over env
  EXPECT_DOUBLE_EQ(s.ratio, 0.25);
  EXPECT_TRUE(s.verbose);
  EXPECT_FALSE(c.helpRequested());
}

TEST(ConfigTest, UnknownKeysAreErrors) {
  Settings s;
  Config c = bind(s);
  std::string path = writeFile("llmir_cfg_bad.yaml", "http:\n  prot: 1\n");
  auto st = c.loadYamlFile(path);
  ASSERT_FALSE(st.isOk());
  EXPECT_NE(st.message().find("'http.prot'"), std::string::npos) << st.message();

  const char *argv[] = {"svc", "--thread=3"};
  auto flag = c.load(2, argv);
  ASSERT_FALSE(flag.isOk());
  EXPECT_NE(flag.message().find("--thread"), std::string::npos);
}

TEST(ConfigTest, BadValuesAreErrors) {
  Settings s;
  Config c = bind(s);
  EXPECT_FALSE(c.set("http.port", "70000", "test").isOk());
  EXPECT_FALSE(c.set("http.port", "-1", "test").isOk());
  EXPECT_FALSE(c.set("threads", "two", "test").isOk());
  EXPECT_FALSE(c.set("verbose", "maybe", "test").isOk());
  EXPECT_FALSE(c.set("ratio", "0.5x", "test").isOk());
  EXPECT_FALSE(c.loadYamlFile("/nonexistent/llmir.yaml").isOk());
  EXPECT_FALSE(c.loadYamlFile(writeFile("llmir_cfg_seq.yaml", "threads: [1, 2]\n")).isOk());
  EXPECT_FALSE(c.loadYamlFile(writeFile("llmir_cfg_broken.yaml", "a: [\n")).isOk());
  EXPECT_EQ(s.port, 8080) << "a failed set leaves the value alone";
}

TEST(ConfigTest, ListsOfPositiveIntegers) {
  std::vector<int> batches = {1, 8};
  Config c("bench");
  c.add("batches", &batches, "batch sizes");
  EXPECT_NE(c.usage().find("now 1,8"), std::string::npos) << c.usage();
  ASSERT_TRUE(c.set("batches", "1,2,32", "test").isOk());
  EXPECT_EQ(batches, (std::vector<int>{1, 2, 32}));
  ASSERT_TRUE(c.set("batches", "4", "test").isOk());
  EXPECT_EQ(batches, std::vector<int>{4});
  for (const char *bad : {"", "1,,2", "1,", "0", "1,-2", "two", "1.5", "3000000000"}) {
    llmir::Status st = c.set("batches", bad, "test");
    EXPECT_FALSE(st.isOk()) << bad;
    EXPECT_NE(st.message().find("list of positive integers"), std::string::npos) << st.message();
  }
  EXPECT_EQ(batches, std::vector<int>{4}) << "a failed set leaves the value alone";
  const char *argv[] = {"bench", "--batches=16,64"};
  ASSERT_TRUE(c.load(2, argv).isOk());
  EXPECT_EQ(batches, (std::vector<int>{16, 64}));
}

// Every service's log.level: read where the other keys are, one message
// for a bad value, shown by name in the usage.
TEST(ConfigTest, LogLevels) {
  llmir::net::LogLevel level = llmir::net::LogLevel::Info;
  Config c("svc");
  c.add("log.level", &level, "debug, info, warn or error");
  EXPECT_NE(c.usage().find("now info"), std::string::npos) << c.usage();
  ASSERT_TRUE(c.set("log.level", "warn", "test").isOk());
  EXPECT_EQ(level, llmir::net::LogLevel::Warn);
  for (const char *bad : {"", "verbose", "INFO", "warning"}) {
    llmir::Status st = c.set("log.level", bad, "test");
    EXPECT_FALSE(st.isOk()) << bad;
    EXPECT_NE(st.message().find("debug, info, warn or error"), std::string::npos)
        << st.message();
  }
  EXPECT_EQ(level, llmir::net::LogLevel::Warn) << "a failed set leaves the value alone";
  const char *argv[] = {"svc", "--log.level=debug"};
  ASSERT_TRUE(c.load(2, argv).isOk());
  EXPECT_EQ(level, llmir::net::LogLevel::Debug);
}

TEST(ConfigTest, PositionalArgumentsOnlyWhereBound) {
  int repeats = 3;
  std::vector<std::string> models;
  Config plain("service");
  plain.add("repeats", &repeats, "repeats");
  const char *argv[] = {"bench", "--repeats", "2", "a", "--repeats=5", "b"};
  EXPECT_FALSE(plain.load(6, argv).isOk()) << "a service takes flags only";
  Config bench("bench");
  bench.add("repeats", &repeats, "repeats");
  bench.addPositional("MODEL_DIR", &models, "checkpoints to run");
  ASSERT_TRUE(bench.load(6, argv).isOk());
  EXPECT_EQ(models, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(repeats, 5);
  EXPECT_NE(bench.usage().find("MODEL_DIR...\n      checkpoints to run"), std::string::npos)
      << bench.usage();
}

TEST(ConfigTest, OneSpellingLowerCaseWordsJoinedByDashGroupsByDot) {
  for (const char *good : {"port", "log.level", "http.max-body-bytes", "timeouts.drain-grace-ms",
                           "worker.device", "tp", "kv-blocks", "a1.b2-3c"})
    EXPECT_TRUE(Config::isWellSpelled(good)) << good;
  for (const char *bad : {"", "log_level", "Log.level", "http..port", ".port", "port.",
                          "drain--grace", "-port", "port-", "http.1port", "max body"})
    EXPECT_FALSE(Config::isWellSpelled(bad)) << bad;

  // A service binding a key outside the convention fails at load, before
  // anything reads its settings.
  int value = 0;
  Config c("test-service");
  c.add("connect_ms", &value, "a snake_case key");
  const char *argv[] = {"svc"};
  auto st = c.load(1, argv);
  ASSERT_FALSE(st.isOk());
  EXPECT_NE(st.message().find("'connect_ms'"), std::string::npos) << st.message();
}

TEST(ConfigTest, TheOtherSeparatorIsRejectedWithTheRightSpelling) {
  std::string timeout = "x";
  Config c("test-service");
  c.add("timeouts.drain-grace-ms", &timeout, "a key");
  auto st = c.loadYamlFile(writeFile("llmir_cfg_snake.yaml",
                                     "timeouts:\n  drain_grace_ms: 5\n"));
  ASSERT_FALSE(st.isOk());
  EXPECT_NE(st.message().find("did you mean 'timeouts.drain-grace-ms'"), std::string::npos)
      << st.message();
  EXPECT_EQ(timeout, "x");
  const char *argv[] = {"svc", "--timeouts.drain_grace_ms=5"};
  auto flag = c.load(2, argv);
  ASSERT_FALSE(flag.isOk());
  EXPECT_NE(flag.message().find("did you mean"), std::string::npos) << flag.message();
}

TEST(ConfigTest, CheckConfigIsAModeNotAKey) {
  Settings s;
  Config c = bind(s);
  std::string path = writeFile("llmir_cfg_check.yaml", "http:\n  port: 9000\n");
  std::string cfg = "--config=" + path;
  const char *argv[] = {"svc", "--check-config", cfg.c_str()};
  ASSERT_TRUE(c.load(3, argv).isOk());
  EXPECT_TRUE(c.checkRequested());
  EXPECT_FALSE(c.helpRequested());
  EXPECT_EQ(s.port, 9000) << "the file is loaded as for a real start";

  Settings t;
  Config bad = bind(t);
  std::string badPath = writeFile("llmir_cfg_check_bad.yaml", "log:\n  level: info\n");
  std::string badCfg = "--config=" + badPath;
  const char *badArgv[] = {"svc", "--check-config", badCfg.c_str()};
  auto st = bad.load(3, badArgv);
  ASSERT_FALSE(st.isOk()) << "an unknown key fails the check like a start";
  EXPECT_NE(st.message().find("'log.level'"), std::string::npos) << st.message();
}

// A service's main(): start, or the exit code of a bad configuration, of
// --help and of --check-config, which runs the settings' own rules as well.
TEST(ConfigTest, LoadServiceGivesTheExitCodeOrStarts) {
  auto run = [](std::vector<const char *> argv, Status rules) {
    Settings s;
    Config c = bind(s);
    int validated = 0;
    std::optional<int> exitCode =
        c.loadService(static_cast<int>(argv.size()), argv.data(), [&] {
          ++validated;
          return rules;
        });
    return std::make_pair(exitCode, validated);
  };
  const Status fine = Status::ok(), wrong = Status::error("threads must be positive");
  EXPECT_EQ(run({"svc", "--http.port=9000"}, fine), std::make_pair(std::optional<int>(), 1));
  EXPECT_EQ(run({"svc", "--help"}, wrong), std::make_pair(std::optional<int>(0), 0));
  EXPECT_EQ(run({"svc", "--no-such-key=1"}, fine), std::make_pair(std::optional<int>(2), 0));
  EXPECT_EQ(run({"svc", "--http.port=9000"}, wrong), std::make_pair(std::optional<int>(2), 1));
  EXPECT_EQ(run({"svc", "--check-config"}, fine), std::make_pair(std::optional<int>(0), 1));
  EXPECT_EQ(run({"svc", "--check-config"}, wrong), std::make_pair(std::optional<int>(2), 1));
}

TEST(ConfigTest, UsageListsEveryKeyWithItsEnvName) {
  Settings s;
  Config c = bind(s);
  const char *argv[] = {"svc", "--help"};
  ASSERT_TRUE(c.load(2, argv).isOk());
  EXPECT_TRUE(c.helpRequested());
  std::string usage = c.usage();
  EXPECT_NE(usage.find("--http.port"), std::string::npos);
  EXPECT_NE(usage.find("LLMIR_HTTP_PORT"), std::string::npos);
  EXPECT_NE(usage.find("listen address"), std::string::npos);
}

TEST(LogTest, LinesAreJsonWithServiceRequestIdAndFields) {
  initLogging("unit");
  std::string line = formatLogLine(LogLevel::Warn, "step \"slow\"",
                                   {{"ms", 12}, {"phase", "decode"}, {"ok", true}},
                                   "req-1");
  boost::json::error_code ec;
  auto v = boost::json::parse(line, ec);
  ASSERT_FALSE(ec) << line;
  auto &o = v.as_object();
  EXPECT_EQ(o["level"].as_string(), "warn");
  EXPECT_EQ(o["service"].as_string(), "unit");
  EXPECT_EQ(o["msg"].as_string(), "step \"slow\"");
  EXPECT_EQ(o["request_id"].as_string(), "req-1");
  EXPECT_EQ(o["ms"].as_int64(), 12);
  EXPECT_EQ(o["phase"].as_string(), "decode");
  EXPECT_TRUE(o["ok"].as_bool());
  EXPECT_TRUE(o.contains("ts"));
}

} // namespace

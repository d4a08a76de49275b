// The one start-up path every service takes for the cluster secret: what it
// loads, and which warnings it logs (to stdout, as one JSON line each).
#include "llmir/net/ClusterSecret.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

using namespace llmir::net;

namespace {

std::string writeFile(const std::string &name, const std::string &text) {
  auto path = std::filesystem::temp_directory_path() / name;
  std::ofstream(path) << text;
  return path.string();
}

size_t count(const std::string &text, const std::string &what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
    ++n;
  return n;
}

ClusterSecretUse storeLike(std::string secretFile = "") {
  return {.secretFile = std::move(secretFile),
          .listeners = {{"the test store", "0.0.0.0"}, {"the test probe port", "127.0.0.1"}},
          .withoutSecret = "any local process can use the test store"};
}

class ClusterSecretTest : public ::testing::Test {
protected:
  void SetUp() override { ::unsetenv("LLMIR_CLUSTER_SECRET"); }
  void TearDown() override { ::unsetenv("LLMIR_CLUSTER_SECRET"); }
};

TEST_F(ClusterSecretTest, NoWarningsWithASecret) {
  EXPECT_TRUE(clusterSecretWarnings(storeLike(), true).empty());
}

TEST_F(ClusterSecretTest, WithoutASecretEachExposedListenerThenTheMissingSecret) {
  auto warnings = clusterSecretWarnings(storeLike(), false);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_EQ(warnings[0], "the test store listens on 0.0.0.0, beyond loopback, without the "
                         "cluster secret: any host that reaches it can join (set "
                         "cluster.secret-file; docs/reliability.md)");
  EXPECT_EQ(warnings[1], "no cluster secret: any local process can use the test store (set "
                         "cluster.secret-file or $LLMIR_CLUSTER_SECRET; docs/reliability.md)");
}

TEST_F(ClusterSecretTest, LoopbackListenersAndClientsOnlyWarnOfTheMissingSecret) {
  ClusterSecretUse loopback{.listeners = {{"a", "127.0.0.1"}, {"b", "::1"}, {"c", "localhost"}},
                            .withoutSecret = "x"};
  EXPECT_EQ(clusterSecretWarnings(loopback, false).size(), 1u);
  ClusterSecretUse client{.withoutSecret = "the peers must run without one"};
  auto warnings = clusterSecretWarnings(client, false);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("no cluster secret: the peers must run without one"),
            std::string::npos);
}

TEST_F(ClusterSecretTest, LoadsTheFileTrimmedAndLogsNothing) {
  std::string file = writeFile("llmir_cluster_secret_ok", "  0123456789abcdef0123\n");
  ::setenv("LLMIR_CLUSTER_SECRET", "the-file-wins-over-this-value", 1);
  testing::internal::CaptureStdout();
  auto secret = loadServiceClusterSecret(storeLike(file));
  std::string logged = testing::internal::GetCapturedStdout();
  ASSERT_TRUE(secret.isOk()) << secret.message();
  ASSERT_TRUE(secret->has_value());
  EXPECT_EQ(**secret, "0123456789abcdef0123");
  EXPECT_EQ(logged, "");
  std::filesystem::remove(file);
}

TEST_F(ClusterSecretTest, LoadsTheEnvironmentWithoutAFile) {
  ::setenv("LLMIR_CLUSTER_SECRET", "fedcba9876543210fedcba", 1);
  testing::internal::CaptureStdout();
  auto secret = loadServiceClusterSecret(storeLike());
  std::string logged = testing::internal::GetCapturedStdout();
  ASSERT_TRUE(secret.isOk()) << secret.message();
  EXPECT_EQ(secret->value_or(""), "fedcba9876543210fedcba");
  EXPECT_EQ(logged, "");
}

TEST_F(ClusterSecretTest, NoSecretLogsEveryWarning) {
  testing::internal::CaptureStdout();
  auto secret = loadServiceClusterSecret(storeLike());
  std::string logged = testing::internal::GetCapturedStdout();
  ASSERT_TRUE(secret.isOk()) << secret.message();
  EXPECT_FALSE(secret->has_value());
  EXPECT_EQ(count(logged, "\"level\":\"warn\""), 2u) << logged;
  EXPECT_NE(logged.find("the test store listens on 0.0.0.0, beyond loopback"), std::string::npos)
      << logged;
  EXPECT_NE(logged.find("no cluster secret: any local process can use the test store"),
            std::string::npos)
      << logged;
  EXPECT_EQ(logged.find("the test probe port"), std::string::npos) << logged;
}

TEST_F(ClusterSecretTest, BadSecretsFailAndNameTheirSource) {
  std::string shortFile = writeFile("llmir_cluster_secret_short", "short\n");
  auto tooShort = loadServiceClusterSecret(storeLike(shortFile));
  ASSERT_FALSE(tooShort.isOk());
  EXPECT_NE(tooShort.message().find(shortFile), std::string::npos) << tooShort.message();
  EXPECT_NE(tooShort.message().find("at least 16"), std::string::npos) << tooShort.message();
  std::filesystem::remove(shortFile);

  auto missing = loadServiceClusterSecret(storeLike("/nonexistent/llmir-secret"));
  ASSERT_FALSE(missing.isOk());
  EXPECT_NE(missing.message().find("cannot be read"), std::string::npos) << missing.message();

  ::setenv("LLMIR_CLUSTER_SECRET", "tiny", 1);
  auto shortEnv = loadServiceClusterSecret(storeLike());
  ASSERT_FALSE(shortEnv.isOk());
  EXPECT_NE(shortEnv.message().find("LLMIR_CLUSTER_SECRET"), std::string::npos)
      << shortEnv.message();
}

} // namespace

#include "llmir/support/ClusterAuth.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

using namespace llmir;
using namespace llmir::auth;
namespace fs = std::filesystem;

namespace {

TEST(ClusterAuthTest, HmacSha256MatchesRfc4231) {
  // RFC 4231 test case 2.
  EXPECT_EQ(toHex(hmacSha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(ClusterAuthTest, TheHandshakeSucceedsOnlyWithTheSameSecret) {
  const std::string secret = "a-shared-secret-of-some-length";
  ClientHandshake client(secret);
  ServerHandshake server(secret);
  auto answer = server.hello(client.hello());
  ASSERT_TRUE(answer.isOk()) << answer.message();
  auto proof = client.answer(*answer);
  ASSERT_TRUE(proof.isOk()) << proof.message();
  EXPECT_TRUE(server.proof(*proof).isOk());

  // A server without the secret cannot answer; a client without it cannot prove.
  ServerHandshake impostorServer("another-secret-of-some-length");
  EXPECT_FALSE(client.answer(*impostorServer.hello(client.hello())).isOk());
  ClientHandshake impostorClient("another-secret-of-some-length");
  ServerHandshake fresh(secret);
  auto freshAnswer = fresh.hello(impostorClient.hello());
  ASSERT_TRUE(freshAnswer.isOk());
  EXPECT_FALSE(impostorClient.answer(*freshAnswer).isOk());
  // Replaying the server's answer as the client's proof fails (role labels).
  EXPECT_FALSE(fresh.proof(freshAnswer->substr(kNonceBytes)).isOk());
  // A hello that is not one is refused.
  ServerHandshake other(secret);
  EXPECT_FALSE(other.hello(std::string(kHelloBytes, 'x')).isOk());
}

TEST(ClusterAuthTest, BearerTokensAreCheckedWholeAndPerAudience) {
  const std::string secret = "a-shared-secret-of-some-length";
  const std::string token = bearerToken(secret, kCompilerAudience);
  EXPECT_TRUE(checkBearer(secret, kCompilerAudience, "Bearer " + token));
  EXPECT_FALSE(checkBearer(secret, kCompilerAudience, token));
  EXPECT_FALSE(checkBearer(secret, kCompilerAudience, "Bearer " + token.substr(1)));
  EXPECT_FALSE(checkBearer(secret, "other-service", "Bearer " + token));
  EXPECT_EQ(token.find(secret), std::string::npos);
}

TEST(ClusterAuthTest, SecretsComeFromAFileOrTheEnvironment) {
  const fs::path file = fs::temp_directory_path() / "llmir-cluster-auth-test.secret";
  std::ofstream(file) << "  0123456789abcdef0123  \n";
  auto loaded = loadClusterSecret(file.string());
  ASSERT_TRUE(loaded.isOk()) << loaded.message();
  EXPECT_EQ(**loaded, "0123456789abcdef0123");
  std::ofstream(file) << "short\n";
  EXPECT_FALSE(loadClusterSecret(file.string()).isOk());
  std::ofstream(file) << std::string(kMaxSecretFileBytes + 1, 'x');
  EXPECT_FALSE(loadClusterSecret(file.string()).isOk());
  fs::remove(file);
  EXPECT_FALSE(loadClusterSecret(file.string()).isOk());

  ::unsetenv(kSecretEnv);
  auto none = loadClusterSecret("");
  ASSERT_TRUE(none.isOk());
  EXPECT_FALSE(none->has_value());
  ::setenv(kSecretEnv, "from-the-environment-1234", 1);
  auto env = loadClusterSecret("");
  ::unsetenv(kSecretEnv);
  ASSERT_TRUE(env.isOk());
  EXPECT_EQ(**env, "from-the-environment-1234");
}

TEST(ClusterAuthTest, ListenersOffLoopbackWithoutTheSecretAreReported) {
  EXPECT_TRUE(checkExposure(std::nullopt, "127.0.0.1", "x").isOk());
  EXPECT_TRUE(checkExposure(std::nullopt, "::1", "x").isOk());
  EXPECT_FALSE(checkExposure(std::nullopt, "0.0.0.0", "x").isOk());
  EXPECT_TRUE(checkExposure(std::string("s"), "0.0.0.0", "x").isOk());
}

} // namespace

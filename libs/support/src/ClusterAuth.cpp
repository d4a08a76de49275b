// HMAC-SHA256 and random nonces come from OpenSSL's libcrypto (Debian's
// libssl-dev), not a hand-rolled hash.
#include "llmir/support/ClusterAuth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <stdexcept>

namespace llmir::auth {
namespace {

std::string trim(std::string s) {
  auto space = [](unsigned char c) { return std::isspace(c) != 0; };
  while (!s.empty() && space(s.back()))
    s.pop_back();
  size_t start = 0;
  while (start < s.size() && space(s[start]))
    ++start;
  return s.substr(start);
}

Status checkLength(const std::string &secret, const std::string &source) {
  if (secret.size() < kMinSecretBytes)
    return Status::error(source + ": the cluster secret has " +
                         std::to_string(secret.size()) + " bytes; at least " +
                         std::to_string(kMinSecretBytes) +
                         " are required (scripts/mesh.sh shows how to make one)");
  return Status::ok();
}

} // namespace

Result<std::optional<std::string>> loadClusterSecret(const std::string &secretFile) {
  if (!secretFile.empty()) {
    std::ifstream in(secretFile, std::ios::binary);
    if (!in)
      return Status::error("cluster secret file '" + secretFile + "' cannot be read");
    std::string text(kMaxSecretFileBytes + 1, '\0');
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    text.resize(static_cast<size_t>(in.gcount()));
    if (text.size() > kMaxSecretFileBytes)
      return Status::error("cluster secret file '" + secretFile + "' is larger than " +
                           std::to_string(kMaxSecretFileBytes) + " bytes");
    std::string secret = trim(std::move(text));
    LLMIR_RETURN_IF_ERROR(checkLength(secret, "cluster secret file '" + secretFile + "'"));
    return std::optional<std::string>(std::move(secret));
  }
  if (const char *env = std::getenv(kSecretEnv); env && *env) {
    std::string secret = trim(env);
    LLMIR_RETURN_IF_ERROR(checkLength(secret, std::string("environment ") + kSecretEnv));
    return std::optional<std::string>(std::move(secret));
  }
  return std::optional<std::string>();
}

bool isLoopbackHost(std::string_view host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || host.starts_with("127.");
}

Status checkExposure(const std::optional<std::string> &secret, std::string_view host,
                     std::string_view what) {
  if (secret || isLoopbackHost(host))
    return Status::ok();
  return Status::error(std::string(what) + " listens on " + std::string(host) +
                       ", beyond loopback, without the cluster secret: any host that reaches "
                       "it can join (set cluster.secret-file; docs/reliability.md)");
}

std::string hmacSha256(std::string_view key, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int outLen = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
            reinterpret_cast<const unsigned char *>(data.data()), data.size(), out, &outLen))
    throw std::runtime_error("HMAC-SHA256 failed"); // only on allocation failure
  return std::string(reinterpret_cast<char *>(out), outLen);
}

bool constantTimeEqual(std::string_view a, std::string_view b) {
  if (a.size() != b.size())
    return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string randomBytes(size_t n) {
  std::string out(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char *>(out.data()), static_cast<int>(n)) != 1)
    throw std::runtime_error("RAND_bytes failed: no entropy source");
  return out;
}

std::string toHex(std::string_view bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::string bearerToken(std::string_view secret, std::string_view audience) {
  return toHex(hmacSha256(secret, "llmir bearer v1 " + std::string(audience)));
}

bool checkBearer(std::string_view secret, std::string_view audience,
                 std::string_view authorizationHeader) {
  constexpr std::string_view prefix = "Bearer ";
  if (!authorizationHeader.starts_with(prefix))
    return false;
  authorizationHeader.remove_prefix(prefix.size());
  return constantTimeEqual(authorizationHeader, bearerToken(secret, audience));
}

namespace {
std::string serverMac(std::string_view secret, std::string_view cn, std::string_view sn) {
  return hmacSha256(secret, "server" + std::string(cn) + std::string(sn));
}
std::string clientMac(std::string_view secret, std::string_view cn, std::string_view sn) {
  return hmacSha256(secret, "client" + std::string(sn) + std::string(cn));
}
} // namespace

ClientHandshake::ClientHandshake(std::string secret)
    : secret_(std::move(secret)), clientNonce_(randomBytes(kNonceBytes)),
      hello_(std::string(kHelloMagic) + clientNonce_) {}

Result<std::string> ClientHandshake::answer(std::string_view serverAnswer) const {
  if (serverAnswer.size() != kAnswerBytes)
    return Status::error("authentication: the server's answer has the wrong size");
  std::string_view serverNonce = serverAnswer.substr(0, kNonceBytes);
  if (!constantTimeEqual(serverAnswer.substr(kNonceBytes),
                         serverMac(secret_, clientNonce_, serverNonce)))
    return Status::error("authentication failed: the server did not prove the cluster "
                         "secret (is the same cluster.secret_file set on both sides?)");
  return clientMac(secret_, clientNonce_, serverNonce);
}

ServerHandshake::ServerHandshake(std::string secret)
    : secret_(std::move(secret)), serverNonce_(randomBytes(kNonceBytes)) {}

Result<std::string> ServerHandshake::hello(std::string_view clientHello) {
  if (clientHello.size() != kHelloBytes || !clientHello.starts_with(kHelloMagic))
    return Status::error("authentication: the peer did not open with the cluster handshake "
                         "(no cluster secret configured on its side?)");
  clientNonce_ = std::string(clientHello.substr(kHelloMagic.size()));
  return serverNonce_ + serverMac(secret_, clientNonce_, serverNonce_);
}

Status ServerHandshake::proof(std::string_view clientProof) const {
  if (!constantTimeEqual(clientProof, clientMac(secret_, clientNonce_, serverNonce_)))
    return Status::error("authentication failed: the peer did not prove the cluster secret");
  return Status::ok();
}

} // namespace llmir::auth

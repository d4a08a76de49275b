// The internal plane's credential: a shared cluster secret, and the
// challenge-response every internal connection (scheduler <-> worker framed
// channel, rendezvous store) runs before its first message, so that a process
// without the secret learns nothing (no model path, prompt or topology) and
// can change nothing.
//
// Handshake (fixed-size messages, HMAC-SHA256 keyed with the secret):
//   client -> server  hello  = "LLMIRA01" | client nonce (32 random bytes)
//   server -> client  answer = server nonce (32) | HMAC(K, "server" | cn | sn)
//   client -> server  proof  = HMAC(K, "client" | sn | cn)
//   server -> client  accept = one byte 0x01
// Both sides prove the secret (the client checks the server's answer before it
// sends anything else); the role labels keep either proof from being replayed
// as the other, and fresh nonces keep an old exchange from being replayed. The
// secret never crosses the wire. It authenticates peers; it does not encrypt:
// the traffic after it is plaintext (docs/reliability.md, threat model).
#pragma once

#include "llmir/support/Status.h"

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace llmir::auth {

constexpr std::string_view kHelloMagic = "LLMIRA01";
constexpr size_t kNonceBytes = 32;
constexpr size_t kMacBytes = 32;
constexpr size_t kHelloBytes = kHelloMagic.size() + kNonceBytes;
constexpr size_t kAnswerBytes = kNonceBytes + kMacBytes;
constexpr size_t kProofBytes = kMacBytes;
constexpr size_t kAcceptBytes = 1;
constexpr char kAcceptByte = 0x01;
/// Shorter secrets are refused: they could be guessed offline from one
/// observed handshake.
constexpr size_t kMinSecretBytes = 16;
/// Secret files larger than this are refused (it is a key, not a document).
constexpr size_t kMaxSecretFileBytes = 4096;
/// The environment variable that may carry the secret itself.
constexpr const char *kSecretEnv = "LLMIR_CLUSTER_SECRET";

/// The cluster secret: the contents of `secretFile` (surrounding whitespace
/// trimmed) when it is set, else $LLMIR_CLUSTER_SECRET, else nullopt (no
/// authentication). Fails on an unreadable, oversized or too short secret.
Result<std::optional<std::string>> loadClusterSecret(const std::string &secretFile);

/// Whether `host` is a loopback address ("127.x.y.z", "::1", "localhost").
bool isLoopbackHost(std::string_view host);
/// An internal listener beyond loopback without a secret can be joined by any
/// host that reaches it: the error says so (services log it as a warning;
/// the Helm chart relies on its NetworkPolicy unless clusterSecret is set).
/// `what` names the listener.
Status checkExposure(const std::optional<std::string> &secret, std::string_view host,
                     std::string_view what);

std::string hmacSha256(std::string_view key, std::string_view data);
/// Compares in time independent of where the inputs differ.
bool constantTimeEqual(std::string_view a, std::string_view b);
std::string randomBytes(size_t n);
std::string toHex(std::string_view bytes);

/// The compiler service's audience for bearerToken().
constexpr std::string_view kCompilerAudience = "compiler-service";

/// The bearer token HTTP clients of the internal plane send
/// ("Authorization: Bearer <token>"): derived from the secret, so the secret
/// itself never travels; `audience` names the service it is for.
std::string bearerToken(std::string_view secret, std::string_view audience);
/// Whether an Authorization header value carries the right bearer token.
bool checkBearer(std::string_view secret, std::string_view audience,
                 std::string_view authorizationHeader);

/// The handshake's steps, transport-free (the framed channel runs them on
/// Asio, the rendezvous store on blocking sockets).
class ClientHandshake {
public:
  explicit ClientHandshake(std::string secret);
  /// The first bytes to send (kHelloBytes).
  const std::string &hello() const { return hello_; }
  /// Checks the server's answer (kAnswerBytes); on success, the proof to send.
  Result<std::string> answer(std::string_view serverAnswer) const;

private:
  std::string secret_, clientNonce_, hello_;
};

class ServerHandshake {
public:
  explicit ServerHandshake(std::string secret);
  /// Reads the client's hello (kHelloBytes); on success, the answer to send.
  Result<std::string> hello(std::string_view clientHello);
  /// Checks the client's proof (kProofBytes).
  Status proof(std::string_view clientProof) const;

private:
  std::string secret_, serverNonce_, clientNonce_;
};

} // namespace llmir::auth

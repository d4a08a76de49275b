// Each service's start-up handling of the internal plane's cluster secret
// (docs/reliability.md): load it (cluster.secret-file, else
// $LLMIR_CLUSTER_SECRET, else none), warn for every internal listener bound
// beyond loopback without it, and warn when there is none at all, in one
// wording for every service.
#pragma once

#include "llmir/support/Status.h"

#include <optional>
#include <string>
#include <vector>

namespace llmir::net {

/// An internal listener of a service: what it is (as a warning names it) and
/// the host it binds.
struct InternalListener {
  std::string what;
  std::string host;
};

/// What a service must say about its use of the cluster secret.
struct ClusterSecretUse {
  /// The service's `cluster.secret-file` (empty: the environment, else none).
  std::string secretFile;
  /// The internal listeners it binds; none for a service that only connects
  /// (the shard worker).
  std::vector<InternalListener> listeners;
  /// What is open without a secret, completing "no cluster secret: ...",
  /// e.g. "any local process can put and get KV blocks".
  std::string withoutSecret;
};

/// The warnings a service with `use` logs at start: one per listener beyond
/// loopback when there is no secret (auth::checkExposure's wording), then the
/// missing secret itself. None when there is a secret.
std::vector<std::string> clusterSecretWarnings(const ClusterSecretUse &use, bool haveSecret);

/// Loads the secret as auth::loadClusterSecret does and logs
/// clusterSecretWarnings (net::logWarn). Fails on an unreadable, oversized or
/// too short secret (the service reports it and exits 2).
Result<std::optional<std::string>> loadServiceClusterSecret(const ClusterSecretUse &use);

} // namespace llmir::net

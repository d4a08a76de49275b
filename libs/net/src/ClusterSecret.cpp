#include "llmir/net/ClusterSecret.h"

#include "llmir/net/Log.h"
#include "llmir/support/ClusterAuth.h"

namespace llmir::net {

std::vector<std::string> clusterSecretWarnings(const ClusterSecretUse &use, bool haveSecret) {
  std::vector<std::string> warnings;
  if (haveSecret)
    return warnings;
  for (const InternalListener &listener : use.listeners)
    if (Status exposed = auth::checkExposure(std::nullopt, listener.host, listener.what); !exposed)
      warnings.push_back(exposed.message());
  warnings.push_back("no cluster secret: " + use.withoutSecret +
                     " (set cluster.secret-file or $" + auth::kSecretEnv +
                     "; docs/reliability.md)");
  return warnings;
}

Result<std::optional<std::string>> loadServiceClusterSecret(const ClusterSecretUse &use) {
  auto secret = auth::loadClusterSecret(use.secretFile);
  if (!secret)
    return secret.status();
  for (const std::string &warning : clusterSecretWarnings(use, secret->has_value()))
    logWarn(warning);
  return secret;
}

} // namespace llmir::net

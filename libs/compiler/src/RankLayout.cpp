#include "RankLayout.h"

#include <algorithm>

namespace llmir::compiler {

int rankOf(const Degrees &d, const RankCoords &c) {
  return ((c.ppStage * d.sp) + c.spIndex) * d.tp + c.tpIndex;
}

RankCoords coordsOf(const Degrees &d, int rank) {
  RankCoords c;
  c.tpIndex = rank % d.tp;
  c.spIndex = (rank / d.tp) % d.sp;
  c.ppStage = rank / (d.tp * d.sp);
  return c;
}

std::vector<proto::CollectiveGroup> collectiveGroups(const Degrees &d) {
  std::vector<proto::CollectiveGroup> groups;
  auto add = [&](const char *kind) -> proto::CollectiveGroup & {
    proto::CollectiveGroup &g = groups.emplace_back();
    g.set_id(static_cast<uint32_t>(groups.size() - 1));
    g.set_kind(kind);
    return g;
  };
  if (d.tp > 1)
    for (int stage = 0; stage < d.pp; ++stage)
      for (int s = 0; s < d.sp; ++s) {
        proto::CollectiveGroup &g = add("tp");
        for (int t = 0; t < d.tp; ++t)
          g.add_ranks(static_cast<uint32_t>(rankOf(d, {t, stage, s})));
      }
  if (d.sp > 1)
    for (int stage = 0; stage < d.pp; ++stage)
      for (int t = 0; t < d.tp; ++t) {
        proto::CollectiveGroup &g = add("sp");
        for (int s = 0; s < d.sp; ++s)
          g.add_ranks(static_cast<uint32_t>(rankOf(d, {t, stage, s})));
      }
  return groups;
}

int64_t groupIdOf(const std::vector<proto::CollectiveGroup> &groups,
                  const std::string &kind, int rank) {
  for (const proto::CollectiveGroup &g : groups)
    if (g.kind() == kind &&
        std::find(g.ranks().begin(), g.ranks().end(),
                  static_cast<uint32_t>(rank)) != g.ranks().end())
      return g.id();
  return -1;
}

} // namespace llmir::compiler

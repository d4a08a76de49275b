// How the ranks of one replica are laid out over the parallel degrees:
// rank = ((pp_stage * sp) + sp_index) * tp + tp_index. Shared by the
// DeploymentPlan and the per-rank lowering so both agree on every id.
#pragma once

#include "llmir/proto/shard_program.pb.h"

#include <cstdint>
#include <string>
#include <vector>

namespace llmir::compiler {

struct Degrees {
  int tp = 1, pp = 1, sp = 1;
  int worldSize() const { return tp * pp * sp; }
};

struct RankCoords {
  int tpIndex = 0, ppStage = 0, spIndex = 0;
};

inline constexpr const char *kRankOrder =
    "rank = ((pp_stage * sp) + sp_index) * tp + tp_index";

int rankOf(const Degrees &d, const RankCoords &c);
RankCoords coordsOf(const Degrees &d, int rank);

/// Every collective group of the replica, ids = index: first the
/// tensor-parallel groups (one per stage and sp index, when tp > 1), then the
/// sequence-parallel groups (one per stage and tp index, when sp > 1).
std::vector<proto::CollectiveGroup> collectiveGroups(const Degrees &d);

/// Id of the group of `kind` ("tp" or "sp") that holds `rank`; -1 if none.
int64_t groupIdOf(const std::vector<proto::CollectiveGroup> &groups,
                  const std::string &kind, int rank);

} // namespace llmir::compiler

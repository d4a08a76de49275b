// Evaluation of partition candidates (tp, pp, sp, stage split) on a cluster
// spec with the analytic cost model, and the automatic search over them.
//
// Per candidate: the layers are split into pp contiguous stages minimising
// the slowest stage (prefill cost, exact DP); each device's memory is its
// stage's weights (sharded / tp), the activations of max_batch_tokens and the
// KV cache blocks that fill the rest; times come from a roofline per segment
// (compute vs memory bandwidth), alpha-beta collectives on the link type
// their group spans (intra- or inter-node) and pipeline bubbles.
#pragma once

#include "ModelProfile.h"
#include "llmir/compiler/ClusterSpec.h"

#include <cstdint>
#include <string>
#include <vector>

namespace llmir::compiler {

/// Share of device memory the plan may use (the rest: runtime, fragmentation).
inline constexpr double kMemoryUtilization = 0.9;

struct Candidate {
  int tp = 1, pp = 1, sp = 1;
  int64_t replicas = 1; // copies of the model on the cluster
  std::vector<int64_t> stageLayers;
  std::vector<double> stageSeconds; // prefill of max_batch_tokens, per stage
  // The most loaded device: weights, activations, KV cache (bytes).
  double weightBytes = 0, activationBytes = 0, kvCacheBytes = 0;
  int64_t kvBlocks = 0;       // blocks on the device with the fewest
  int64_t concurrentSeqs = 0; // sequences of max_context decoding together
  double prefillSeconds = 0;  // one max_batch_tokens prompt chunk
  double decodeSeconds = 0;   // one decode step of concurrentSeqs sequences
  double decodeTokensPerSecond = 0; // over all replicas
  std::string rejected;       // why infeasible; empty when feasible
};

struct SearchResult {
  std::vector<Candidate> candidates; // in enumeration order (tp, pp, sp)
  int chosen = -1;                   // index of the best feasible one
};

/// Evaluates one candidate (its `rejected` says why it cannot be used).
/// With sp > 1 the linears stay replicated on the sp ranks, the attention
/// FLOPs and KV reads split sp ways, and each attention adds one all-gather
/// of the partial outputs and log-sum-exps over the sp group.
Candidate evaluateCandidate(const ModelProfile &model, const ClusterSpec &spec,
                            int tp, int pp, int sp);

/// The predicted seconds of one step at (tp, pp, sp): decode of `tokens`
/// sequences over `context` cached keys each, or the prefill of one
/// `tokens`-token prompt (`context` unused), for comparing with a measured
/// step.
double predictStepSeconds(const ModelProfile &model, const ClusterSpec &spec, int tp, int pp,
                          int sp, double tokens, double context, bool decode);
/// One all-reduce of `bytes` (each rank's buffer) over `ranks` ranks, and
/// one point-to-point send of `bytes`, on `link` (the alpha-beta model every
/// step prediction uses; Compile.h's predictAllReduceSeconds/predictSendSeconds).
double linkAllReduceSeconds(const LinkSpec &link, double bytes, int ranks);
double linkSendSeconds(const LinkSpec &link, double bytes);
/// Every (tp, pp, sp) whose product divides the devices (fixed degrees of the
/// spec respected); picks the highest decode throughput within the latency
/// target, ties to lower decode time, then fewer devices per replica, then
/// enumeration order: deterministic.
SearchResult searchPartitions(const ModelProfile &model, const ClusterSpec &spec);

/// The --llm-explain table.
std::string formatCandidates(const SearchResult &result, const ClusterSpec &spec);

/// "12.5 MiB"-style byte counts for messages.
std::string formatBytes(double bytes);

} // namespace llmir::compiler

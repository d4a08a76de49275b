// The compiler as one call, without MLIR types in the interface: services and
// tools built with RTTI (llmir-generate, the compiler service) include this
// header and link llmir_compiler.
//
// import (optional) -> cost model -> partitioning -> communication insertion
// -> memory planning (-> KV transfers, with kvStore) -> one ShardProgram per rank (lowering of @prefill; the
// importer gives @prefill and @decode the same body) + the DeploymentPlan.
#pragma once

#include "llmir/compiler/ClusterSpec.h"
#include "llmir/proto/deployment_plan.pb.h"
#include "llmir/proto/shard_program.pb.h"
#include "llmir/support/Status.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace llmir::compiler {

/// The start of the error of a compile stopped by CompileOptions::cancelled.
constexpr const char *kCompileCancelled = "compile cancelled";

struct CompileOptions {
  /// Parallel degrees; ignored when clusterSpecPath is set (the spec's fixed
  /// degrees or the automatic search decide).
  int tp = 1, pp = 1, sp = 1;
  /// Tokens per paged KV-cache block (used when importing).
  int64_t kvBlockSize = 16;
  /// Optional cluster spec (YAML, docs/cluster-spec.md).
  std::string clusterSpecPath;
  /// Connect every rank's KV cache to the KV-block store: the
  /// llm-insert-kv-transfers pass, lowered to KV_LOAD / KV_STORE
  /// (docs/kv-store.md). The write policy is not an option here: it must not
  /// change the plan, whose id is part of every block key.
  bool kvStore = false;
  /// Fills CompiledModel::explanation with the candidates table.
  bool explain = false;
  /// Polled between decoder layers (import), between passes and between
  /// ranks (lowering); once it returns true the compile stops with an error
  /// starting with kCompileCancelled. The compiler service's deadline.
  std::function<bool()> cancelled;
};

struct CompiledModel {
  /// The module after the passes, parseable by llmir-opt.
  std::string partitionedMlir;
  proto::DeploymentPlan plan;
  /// One program per global rank, indexed by rank.
  std::vector<proto::ShardProgram> programs;
  /// The --llm-explain table (empty unless CompileOptions::explain).
  std::string explanation;
};

/// Imports the Hugging Face checkpoint directory `hfDir` and compiles it.
Result<CompiledModel> compileHuggingFace(const std::string &hfDir,
                                         const CompileOptions &options);

/// One step the cost model prices (predictStepSeconds).
struct StepShape {
  int tp = 1, pp = 1, sp = 1;
  int64_t tokens = 1;   // decode: sequences (a token each); prefill: prompt tokens
  int64_t context = 0;  // decode: cached keys per sequence
  bool decode = true;
};
/// The cost model's time of each of `steps` for the Hugging Face checkpoint
/// `hfDir` on `spec`'s device (its calibration included), in order, for
/// printing beside measured ones (bench/gpu). The model is imported once.
Result<std::vector<double>> predictStepSeconds(const std::string &hfDir,
                                               const ClusterSpec &spec,
                                               const std::vector<StepShape> &steps);
/// The cost model's time of one all-reduce of `bytes` (each rank's buffer)
/// over `ranks` ranks of one node, and of one pipeline send of `bytes` to
/// the next stage on that node: the alpha-beta terms predictStepSeconds adds
/// for each collective of a step, on `spec`'s intra-node link. For printing
/// beside measured collectives (bench/gpu).
double predictAllReduceSeconds(const ClusterSpec &spec, double bytes, int ranks);
double predictSendSeconds(const ClusterSpec &spec, double bytes);

/// Compiles an `llm` module given as MLIR text (as llmir-import writes it).
Result<CompiledModel> compileModule(const std::string &mlirText,
                                    const CompileOptions &options);

} // namespace llmir::compiler

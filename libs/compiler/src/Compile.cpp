#include "llmir/compiler/Compile.h"

#include "llmir/compiler/MlirThreading.h"
#include "llmir/support/NestingDepth.h"

#include "MemoryPlan.h"
#include "ModelProfile.h"
#include "Partition.h"
#include "PlanSearch.h"
#include "RankLayout.h"
#include "llmir/IR/LLMDialect.h"
#include "llmir/compiler/Importer.h"
#include "llmir/compiler/Passes.h"
#include "llmir/compiler/ShardProgramLowering.h"

#include "mlir/Pass/PassManager.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"

using namespace mlir;

namespace llmir::compiler {
namespace {

/// Collects the context's diagnostics so that they can travel in a Status.
class DiagnosticCollector {
public:
  explicit DiagnosticCollector(MLIRContext &context)
      : handler(&context, [this](Diagnostic &diag) {
          std::string text;
          llvm::raw_string_ostream os(text);
          os << diag.getLocation() << ": " << diag;
          for (const Diagnostic &note : diag.getNotes())
            os << "\n  note: " << note;
          if (!messages.empty())
            messages += "\n";
          messages += os.str();
          return success();
        }) {}

  Status error(const std::string &what) const {
    return Status::error(messages.empty() ? what : what + ": " + messages);
  }

private:
  std::string messages;
  ScopedDiagnosticHandler handler;
};

void loadDialects(MLIRContext &context) {
  // Diagnostics travel in a Status: keep them to the message, not the module.
  context.printOpOnDiagnostic(false);
  context.getOrLoadDialect<llm::LLMDialect>();
  context.getOrLoadDialect<func::FuncDialect>();
}

std::string printModule(ModuleOp module) {
  std::string text;
  llvm::raw_string_ostream os(text);
  module->print(os);
  os << "\n";
  return os.str();
}

proto::DeploymentPlan buildPlan(ModuleOp module, const Partition &partition,
                                const MemoryPlan &memory, int64_t devicesPerNode) {
  Degrees degrees{partition.tp, partition.pp, partition.sp};
  proto::DeploymentPlan plan;
  plan.set_format_version(proto::FORMAT_VERSION_1);
  if (auto model = module->getAttrOfType<DictionaryAttr>("llm.model"))
    if (auto source = model.getAs<StringAttr>("source"))
      plan.set_model_name(source.getValue().str());
  plan.set_tp(degrees.tp);
  plan.set_pp(degrees.pp);
  plan.set_sp(degrees.sp);
  plan.set_world_size(degrees.worldSize());
  plan.set_rank_order(kRankOrder);
  plan.set_kv_block_size(memory.kvBlockSize);
  plan.set_replicas(partition.replicas);
  plan.set_predicted_prefill_seconds(partition.prefillSeconds);
  plan.set_predicted_decode_seconds(partition.decodeSeconds);
  for (const proto::CollectiveGroup &g : collectiveGroups(degrees))
    *plan.add_groups() = g;
  int64_t firstLayer = 0;
  for (int s = 0; s < partition.pp; ++s) {
    proto::StageAssignment *stage = plan.add_stages();
    stage->set_stage(s);
    int64_t layers = partition.stageLayers.empty() ? 0 : partition.stageLayers[s];
    stage->set_first_layer(firstLayer);
    stage->set_num_layers(layers);
    stage->set_has_embedding(s == 0);
    stage->set_has_lm_head(s == partition.pp - 1);
    if (s < static_cast<int>(partition.stageCosts.size()))
      stage->set_predicted_cost(partition.stageCosts[s]);
    firstLayer += layers;
  }
  for (int rank = 0; rank < degrees.worldSize(); ++rank) {
    RankCoords c = coordsOf(degrees, rank);
    proto::RankAssignment *r = plan.add_ranks();
    r->set_rank(rank);
    r->set_tp_index(c.tpIndex);
    r->set_pp_stage(c.ppStage);
    r->set_sp_index(c.spIndex);
    r->set_node(rank / devicesPerNode);
    r->set_device(rank % devicesPerNode);
    const StageMemory &m = memory.stages[c.ppStage];
    r->set_weight_bytes(m.weightBytes);
    r->set_activation_bytes(m.activationBytes);
    r->set_kv_cache_bytes(m.kvCacheBytes);
    r->set_kv_blocks(m.kvBlocks);
  }
  return plan;
}

RankPlacement placementOf(const proto::DeploymentPlan &plan, int rank) {
  Degrees degrees{static_cast<int>(plan.tp()), static_cast<int>(plan.pp()),
                  static_cast<int>(plan.sp())};
  RankCoords c = coordsOf(degrees, rank);
  RankPlacement p;
  p.rank = rank;
  p.worldSize = plan.world_size();
  p.tpRank = c.tpIndex;
  p.tpSize = plan.tp();
  p.spIndex = c.spIndex;
  p.spSize = plan.sp();
  p.stageId = c.ppStage;
  p.numStages = plan.pp();
  if (c.ppStage > 0)
    p.prevStageRank = rankOf(degrees, {c.tpIndex, c.ppStage - 1, c.spIndex});
  if (c.ppStage + 1 < static_cast<int>(plan.pp()))
    p.nextStageRank = rankOf(degrees, {c.tpIndex, c.ppStage + 1, c.spIndex});
  for (const proto::CollectiveGroup &g : plan.groups())
    if (std::find(g.ranks().begin(), g.ranks().end(),
                  static_cast<uint32_t>(rank)) != g.ranks().end())
      p.groups.push_back(g);
  return p;
}

Result<CompiledModel> compileLoaded(ModuleOp module, const CompileOptions &options,
                                    DiagnosticCollector &diagnostics) {
  PartitionOptions partitionOptions;
  partitionOptions.tp = options.tp;
  partitionOptions.pp = options.pp;
  partitionOptions.sp = options.sp;
  std::string what = "compiling for tp=" + std::to_string(options.tp) +
                     " pp=" + std::to_string(options.pp) +
                     " sp=" + std::to_string(options.sp);
  if (!options.clusterSpecPath.empty()) {
    auto spec = loadClusterSpec(options.clusterSpecPath);
    if (!spec)
      return spec.status();
    partitionOptions.cluster = *spec;
    what = "compiling for " + options.clusterSpecPath;
  }
  const int64_t devicesPerNode = partitionOptions.cluster
                                     ? partitionOptions.cluster->devicesPerNode
                                     : int64_t{options.tp} * options.pp * options.sp;
  CompiledModel out;
  if (options.explain)
    partitionOptions.explanation = &out.explanation;
  auto cancelledAfter = [&](const std::string &stage) -> std::optional<Status> {
    if (options.cancelled && options.cancelled())
      return Status::error(std::string(kCompileCancelled) + " after " + stage);
    return std::nullopt;
  };
  // One pass manager per pass: the compile can stop between them.
  std::vector<std::pair<std::string, std::function<std::unique_ptr<Pass>()>>> passes;
  passes.emplace_back("the cost model", [] { return createCostModelPass(); });
  passes.emplace_back("partitioning",
                      [&] { return createModelPartitioningPass(partitionOptions); });
  passes.emplace_back("communication insertion",
                      [] { return createCommunicationInsertionPass(); });
  passes.emplace_back("memory planning",
                      [&] { return createMemoryPlanningPass(partitionOptions.cluster); });
  if (options.kvStore)
    passes.emplace_back("KV transfer insertion", [] { return createKvTransferInsertionPass(); });
  if (auto stop = cancelledAfter("the import"))
    return *stop;
  for (auto &[stage, create] : passes) {
    PassManager pm(module.getContext());
    pm.addPass(create());
    if (failed(pm.run(module)))
      return diagnostics.error(what);
    if (auto stop = cancelledAfter(stage))
      return *stop;
  }
  FailureOr<Partition> partition = readPartition(module);
  if (failed(partition))
    return diagnostics.error("reading the partition");
  std::optional<MemoryPlan> memory = readMemoryPlan(module);
  if (!memory || static_cast<int>(memory->stages.size()) != partition->pp)
    return Status::error("internal error: llm-plan-memory left no plan for " +
                         std::to_string(partition->pp) + " stages");
  Degrees degrees{partition->tp, partition->pp, partition->sp};

  auto prefill = module.lookupSymbol<func::FuncOp>("prefill");
  if (!prefill)
    return Status::error("module has no func.func @prefill, expected the "
                         "entry points that llmir-import writes");
  out.plan = buildPlan(module, *partition, *memory, devicesPerNode);
  out.partitionedMlir = printModule(module);
  for (int rank = 0; rank < degrees.worldSize(); ++rank) {
    if (rank > 0)
      if (auto stop = cancelledAfter("lowering " + std::to_string(rank) + " of " +
                                     std::to_string(degrees.worldSize()) + " ranks"))
        return *stop;
    auto program = lowerToShardProgram(prefill, placementOf(out.plan, rank));
    if (!program)
      return Status::error("lowering @prefill for rank " + std::to_string(rank) +
                           ": " + llvm::toString(program.takeError()));
    program->mutable_kv_cache()->set_num_blocks(
        static_cast<uint32_t>(out.plan.ranks(rank).kv_blocks()));
    out.programs.push_back(std::move(*program));
  }
  return out;
}

} // namespace

Result<CompiledModel> compileHuggingFace(const std::string &hfDir,
                                         const CompileOptions &options) {
  MLIRContext context(contextThreading());
  loadDialects(context);
  DiagnosticCollector diagnostics(context);
  ImportOptions importOptions;
  importOptions.kvBlockSize = options.kvBlockSize;
  importOptions.cancelled = options.cancelled;
  auto module = importHuggingFace(context, hfDir, importOptions);
  if (!module) {
    std::string why = llvm::toString(module.takeError());
    if (why.rfind(kCompileCancelled, 0) == 0)
      return Status::error(why); // callers recognise it by its start
    return Status::error("importing '" + hfDir + "': " + why);
  }
  return compileLoaded(**module, options, diagnostics);
}

Result<std::vector<double>> predictStepSeconds(const std::string &hfDir,
                                               const ClusterSpec &spec,
                                               const std::vector<StepShape> &steps) {
  MLIRContext context(contextThreading());
  loadDialects(context);
  DiagnosticCollector diagnostics(context);
  auto module = importHuggingFace(context, hfDir, ImportOptions{});
  if (!module)
    return Status::error("importing '" + hfDir + "': " + llvm::toString(module.takeError()));
  auto prefill = (**module).lookupSymbol<func::FuncOp>("prefill");
  if (!prefill)
    return Status::error("the imported module has no @prefill");
  FailureOr<ModelProfile> profile = profileModel(prefill);
  if (failed(profile))
    return diagnostics.error("profiling '" + hfDir + "'");
  std::vector<double> seconds;
  for (const StepShape &step : steps)
    seconds.push_back(predictStepSeconds(*profile, spec, step.tp, step.pp, step.sp,
                                         static_cast<double>(step.tokens),
                                         static_cast<double>(step.context), step.decode));
  return seconds;
}

double predictAllReduceSeconds(const ClusterSpec &spec, double bytes, int ranks) {
  return linkAllReduceSeconds(spec.intraNode, bytes, ranks);
}

double predictSendSeconds(const ClusterSpec &spec, double bytes) {
  return linkSendSeconds(spec.intraNode, bytes);
}

Result<CompiledModel> compileModule(const std::string &mlirText,
                                    const CompileOptions &options) {
  LLMIR_RETURN_IF_ERROR(checkNestingDepth(mlirText, "the llm module"));
  MLIRContext context(contextThreading());
  loadDialects(context);
  DiagnosticCollector diagnostics(context);
  OwningOpRef<ModuleOp> module =
      parseSourceString<ModuleOp>(mlirText, ParserConfig(&context));
  if (!module)
    return diagnostics.error("parsing the llm module");
  return compileLoaded(*module, options, diagnostics);
}

} // namespace llmir::compiler

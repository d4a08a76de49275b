// llmir-compile-bench [--config config.json] [--cluster spec.yaml] [--explain]
// Imports a config without weights (default: the Llama-70B shape beside this
// file), compiles it for the cluster (default: examples/h100-8x8-70b.yaml,
// 64 devices) with the automatic search, and reports the compile time and
// the predicted step times as ratios against a baseline compiled in the same
// run: the same spec with fixed tp=8 (one node) x pp=8 (one stage per node).
#include "llmir/compiler/Compile.h"
#include "llmir/compiler/Importer.h"

#include "mlir/IR/MLIRContext.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/raw_ostream.h"

#include <chrono>
#include <cstdio>

using namespace llvm;

static cl::opt<std::string> configPath(
    "config", cl::desc("config.json of the model"),
    cl::init(std::string(LLMIR_SOURCE_DIR) + "/bench/compiler/llama-70b-config.json"));
static cl::opt<std::string> clusterPath(
    "cluster", cl::desc("cluster spec (YAML, without a parallelism key)"),
    cl::init(std::string(LLMIR_SOURCE_DIR) + "/examples/h100-8x8-70b.yaml"));
static cl::opt<bool> explain("explain", cl::desc("print the candidates table"));

namespace {

struct Run {
  double compileSeconds = 0;
  llmir::compiler::CompiledModel model;
};

bool compileTimed(const std::string &mlir, const std::string &spec, bool withExplain,
                  Run &run) {
  llmir::compiler::CompileOptions options;
  options.clusterSpecPath = spec;
  options.explain = withExplain;
  auto start = std::chrono::steady_clock::now();
  auto compiled = llmir::compiler::compileModule(mlir, options);
  run.compileSeconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!compiled) {
    errs() << "llmir-compile-bench: " << compiled.message() << "\n";
    return false;
  }
  run.model = std::move(*compiled);
  return true;
}

void report(const char *name, const Run &run, const Run &baseline) {
  const auto &p = run.model.plan;
  const auto &b = baseline.model.plan;
  std::printf("%-9s tp=%u pp=%u sp=%u replicas=%u ranks=%zu  compile %.3f s  "
              "prefill %.2f ms (x%.2f)  decode %.2f ms (x%.2f)  kv blocks/rank %llu\n",
              name, p.tp(), p.pp(), p.sp(), p.replicas(), run.model.programs.size(),
              run.compileSeconds, p.predicted_prefill_seconds() * 1e3,
              p.predicted_prefill_seconds() / b.predicted_prefill_seconds(),
              p.predicted_decode_seconds() * 1e3,
              p.predicted_decode_seconds() / b.predicted_decode_seconds(),
              static_cast<unsigned long long>(p.ranks(0).kv_blocks()));
}

} // namespace

int main(int argc, char **argv) {
  InitLLVM init(argc, argv);
  cl::ParseCommandLineOptions(argc, argv, "LLMIR compile benchmark\n");

  mlir::MLIRContext context;
  auto start = std::chrono::steady_clock::now();
  auto module = llmir::compiler::importSyntheticConfig(context, configPath);
  if (!module) {
    errs() << "llmir-compile-bench: " << toString(module.takeError()) << "\n";
    return 1;
  }
  std::string mlir;
  raw_string_ostream os(mlir);
  (*module)->print(os);
  os.flush();
  double importSeconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  auto specText = MemoryBuffer::getFile(clusterPath);
  if (!specText) {
    errs() << "llmir-compile-bench: cannot read '" << clusterPath << "'\n";
    return 1;
  }
  SmallString<128> baselineSpec;
  if (sys::fs::createTemporaryFile("llmir-bench-baseline", "yaml", baselineSpec)) {
    errs() << "llmir-compile-bench: cannot create a temporary file\n";
    return 1;
  }
  {
    std::error_code ec;
    raw_fd_ostream out(baselineSpec, ec);
    out << (*specText)->getBuffer()
        << "\nparallelism: {tensor: 8, pipeline: 8, sequence: 1}\n";
  }
  Run autoRun, baseline;
  bool ok = compileTimed(mlir, baselineSpec.str().str(), false, baseline) &&
            compileTimed(mlir, clusterPath, explain, autoRun);
  sys::fs::remove(baselineSpec);
  if (!ok)
    return 1;
  if (explain)
    outs() << autoRun.model.explanation << "\n";
  std::printf("model %s (%.1f MB of MLIR, import %.3f s), cluster %s\n",
              configPath.c_str(), mlir.size() / 1e6, importSeconds, clusterPath.c_str());
  report("baseline", baseline, baseline);
  report("auto", autoRun, baseline);
  std::printf("compile time target < 2 s: %s\n",
              autoRun.compileSeconds < 2 ? "met" : "MISSED");
  return 0;
}

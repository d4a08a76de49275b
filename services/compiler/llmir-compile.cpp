// llmir-compile model.mlir (--cluster spec.yaml | --tp N --pp M --sp K)
//               [--llm-explain] -o DIR
// Runs the compiler passes on an `llm` module and writes DIR/partitioned.mlir,
// DIR/plan.pb + plan.txt and DIR/rank-<i>.pb + rank-<i>.txt (TextFormat).
#include "llmir/compiler/Compile.h"

#include <google/protobuf/text_format.h>

#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/WithColor.h"
#include "llvm/Support/raw_ostream.h"

using namespace llvm;

static cl::opt<std::string> inputFile(cl::Positional, cl::desc("<model.mlir>"),
                                      cl::Required);
static cl::opt<std::string> outputDir("o", cl::desc("Output directory"),
                                      cl::value_desc("dir"), cl::Required);
static cl::opt<std::string> clusterSpec("cluster",
                                        cl::desc("Cluster spec (YAML)"),
                                        cl::value_desc("spec.yaml"));
static cl::opt<int> tp("tp", cl::desc("Tensor-parallel degree"), cl::init(1));
static cl::opt<int> pp("pp", cl::desc("Pipeline-parallel degree"), cl::init(1));
static cl::opt<int> sp("sp", cl::desc("Sequence-parallel degree"), cl::init(1));
static cl::opt<bool> kvStore(
    "kv-store", cl::desc("Connect every rank's KV cache to the KV-block store "
                         "(llm-insert-kv-transfers: KV_LOAD / KV_STORE)"));
static cl::opt<bool> explain("llm-explain",
                             cl::desc("Print the partition candidates table"));

static int fail(const Twine &message) {
  WithColor::error(errs(), "llmir-compile") << message << "\n";
  return 1;
}

static bool writeFile(const std::string &path, const std::string &bytes) {
  std::error_code ec;
  raw_fd_ostream out(path, ec);
  if (ec) {
    fail("cannot write '" + path + "': " + ec.message());
    return false;
  }
  out << bytes;
  return true;
}

/// Writes `name`.pb and its readable `name`.txt twin.
static bool writeMessage(const google::protobuf::Message &message,
                         const std::string &name) {
  std::string binary, text;
  if (!message.SerializeToString(&binary) ||
      !google::protobuf::TextFormat::PrintToString(message, &text)) {
    fail("cannot serialise " + name);
    return false;
  }
  std::string base = outputDir + "/" + name;
  return writeFile(base + ".pb", binary) && writeFile(base + ".txt", text);
}

int main(int argc, char **argv) {
  InitLLVM init(argc, argv);
  cl::ParseCommandLineOptions(argc, argv, "LLMIR compiler\n");

  auto input = MemoryBuffer::getFileOrSTDIN(inputFile);
  if (!input)
    return fail("cannot read '" + inputFile + "': " + input.getError().message());
  llmir::compiler::CompileOptions options;
  options.tp = tp;
  options.pp = pp;
  options.sp = sp;
  options.clusterSpecPath = clusterSpec;
  options.explain = explain;
  options.kvStore = kvStore;
  auto compiled =
      llmir::compiler::compileModule((*input)->getBuffer().str(), options);
  if (!compiled)
    return fail(inputFile + ": " + compiled.message());
  if (explain)
    outs() << compiled->explanation;

  if (std::error_code ec = sys::fs::create_directories(outputDir))
    return fail("cannot create '" + outputDir + "': " + ec.message());
  if (!writeFile(outputDir + "/partitioned.mlir", compiled->partitionedMlir) ||
      !writeMessage(compiled->plan, "plan"))
    return 1;
  for (size_t rank = 0; rank < compiled->programs.size(); ++rank)
    if (!writeMessage(compiled->programs[rank], "rank-" + std::to_string(rank)))
      return 1;
  return 0;
}

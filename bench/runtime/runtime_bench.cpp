// llmir-runtime-bench: the distributed runtime on one machine.
//  1. Gloo all-reduce (f32 sum) between 2 local processes over loopback TCP,
//     1 KiB to 64 MiB, as nccl-tests prints it: algbw = bytes / time,
//     busbw = algbw * 2 (n - 1) / n.
//  2. With --generate and --model: decode tokens/s of llmir-generate at TP=1
//     and TP=2 (real worker processes), and their ratios.
//
//   llmir-runtime-bench [--max-bytes 67108864] [--generate PATH --model DIR]
//                       [--decode 256]
#include "llmir/net/Config.h"
#include "llmir/runtime/DistributedRuntime.h"
#include "llmir/runtime/LocalLauncher.h"
#include "llmir/runtime/RendezvousStore.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

using namespace llmir;
constexpr int kRanks = 2;

[[noreturn]] void fail(const std::string &why) {
  std::fprintf(stderr, "llmir-runtime-bench: %s\n", why.c_str());
  std::exit(1);
}

/// One rank of the all-reduce sweep; rank 0 prints the table.
Status allReduceRank(int rank, uint16_t port, size_t maxBytes) {
  runtime::RuntimeConfig config;
  config.worldSize = kRanks;
  config.rank = rank;
  config.storePort = port;
  config.storePrefix = "bench";
  auto rt = runtime::DistributedRuntime::init(config);
  if (!rt)
    return rt.status();
  std::vector<float> data(maxBytes / sizeof(float), 1.0f);
  if (rank == 0)
    std::printf("%12s %10s %12s %12s %12s\n", "size (B)", "iters", "time (us)",
                "algbw (GB/s)", "busbw (GB/s)");
  for (size_t bytes = 1024; bytes <= maxBytes; bytes *= 4) {
    size_t count = bytes / sizeof(float);
    // About 256 MiB moved per size, at least 5 and at most 1000 iterations.
    int iters = static_cast<int>(std::min<size_t>(1000, std::max<size_t>(5, (256u << 20) / bytes)));
    for (int i = 0; i < 3; ++i) // warm-up (connections, buffers)
      LLMIR_RETURN_IF_ERROR((*rt)->allReduce(data.data(), count, runtime::DataType::F32,
                                             runtime::ReduceOp::Sum, (*rt)->world()));
    LLMIR_RETURN_IF_ERROR((*rt)->barrier());
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i)
      LLMIR_RETURN_IF_ERROR((*rt)->allReduce(data.data(), count, runtime::DataType::F32,
                                             runtime::ReduceOp::Sum, (*rt)->world()));
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / iters;
    double algbw = bytes / seconds / 1e9;
    if (rank == 0)
      std::printf("%12zu %10d %12.1f %12.3f %12.3f\n", bytes, iters, seconds * 1e6, algbw,
                  algbw * 2.0 * (kRanks - 1) / kRanks);
    std::fflush(stdout);
  }
  return Status::ok();
}

/// Runs llmir-generate (bounded by `timeout`) and returns the decode tokens/s
/// it reports (--timing), or -1 after printing why it failed.
double decodeTokensPerSecond(const std::string &generate, const std::string &model,
                             int decode, const std::string &extra) {
  std::string command = "timeout 300 " + generate + " --model " + model + " --prompt-ids 0,5,6,7,8,9,10,11" +
                        " --max-tokens " + std::to_string(decode + 1) +
                        " --ignore-eos --json --timing " + extra + " 2>&1 >/dev/null";
  FILE *pipe = ::popen(command.c_str(), "r");
  if (!pipe)
    fail("cannot run " + command);
  char line[4096];
  double tokensPerSecond = -1;
  std::string output;
  while (std::fgets(line, sizeof(line), pipe)) {
    output += line;
    size_t decoded;
    double seconds;
    if (std::sscanf(line, "timing: prefill %*f ms, decode %zu tokens in %lf s (%lf", &decoded,
                    &seconds, &tokensPerSecond) == 3)
      continue;
  }
  if (::pclose(pipe) != 0 || tokensPerSecond <= 0) {
    std::fprintf(stderr, "'%s' failed:\n%s", command.c_str(), output.c_str());
    return -1;
  }
  return tokensPerSecond;
}

} // namespace

int main(int argc, char **argv) {
  uint64_t maxBytes = 64u << 20;
  std::string generate, model;
  int decode = 256;
  int workerRank = -1;
  uint16_t port = 0;
  net::Config config("llmir-runtime-bench");
  config.add("max-bytes", &maxBytes, "largest all-reduce message, bytes");
  config.add("generate", &generate, "llmir-generate, for the TP=2 vs TP=1 decode rows (with --model)");
  config.add("model", &model, "checkpoint for the decode rows");
  config.add("decode", &decode, "decode tokens of the decode rows");
  config.add("worker-rank", &workerRank, "internal: one all-reduce rank");
  config.add("store-port", &port, "internal: the launcher's rendezvous store");
  config.loadOrExit(argc, argv);
  if (maxBytes < 1024 || decode < 1)
    fail("--max-bytes must be >= 1024 and --decode >= 1");
  if (workerRank >= 0) {
    Status status = allReduceRank(workerRank, port, maxBytes);
    if (!status.isOk())
      fail("rank " + std::to_string(workerRank) + ": " + status.message());
    return 0;
  }

  auto server = runtime::RendezvousServer::start("127.0.0.1", 0);
  if (!server)
    fail(server.message());
  std::printf("Gloo all-reduce, f32 sum, %d processes on loopback TCP\n", kRanks);
  std::fflush(stdout);
  runtime::LaunchOptions launch;
  launch.worldSize = kRanks;
  launch.stdoutRank = 0;
  launch.argsOf = [&](int rank) {
    return std::vector<std::string>{argv[0], "--max-bytes", std::to_string(maxBytes),
                                    "--worker-rank", std::to_string(rank), "--store-port",
                                    std::to_string((*server)->port())};
  };
  if (Status s = runtime::launchLocalRanks(launch); !s.isOk())
    fail(s.message());

  if (generate.empty() || model.empty())
    return 0;
  std::printf("\nDecode tokens/s of %s (%d tokens, greedy)\n", model.c_str(), decode);
  double tp1t1 = decodeTokensPerSecond(generate, model, decode, "--threads 1");
  double tp1t2 = decodeTokensPerSecond(generate, model, decode, "--threads 2");
  double tp2 = decodeTokensPerSecond(generate, model, decode, "--tp 2 --threads 1");
  std::printf("%-32s %10.1f tokens/s\n", "TP=1, 1 thread", tp1t1);
  std::printf("%-32s %10.1f tokens/s\n", "TP=1, 2 threads", tp1t2);
  std::printf("%-32s %10.1f tokens/s\n", "TP=2, 1 thread per rank", tp2);
  if (tp2 > 0 && tp1t1 > 0)
    std::printf("TP=2 / TP=1 (1 thread):  %.2fx\n", tp2 / tp1t1);
  if (tp2 > 0 && tp1t2 > 0)
    std::printf("TP=2 / TP=1 (2 threads): %.2fx (same cores)\n", tp2 / tp1t2);
  return tp1t1 > 0 && tp1t2 > 0 && tp2 > 0 ? 0 : 1;
}

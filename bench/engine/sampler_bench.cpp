// llmir-sampler-bench: milliseconds per token of engine::Sampler (the host's
// temperature / top-k / top-p sampling) over vocabularies of real models'
// sizes, on normal(0, spread) logits.
//
//   llmir-sampler-bench [--vocab 32000,49152,151936] [--tokens 50]
//                       [--temperature 0.8] [--top-p 0.9] [--top-k 0] [--spread 3]
#include "llmir/engine/Sampler.h"
#include "llmir/net/Config.h"

#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using namespace llmir;

int main(int argc, char **argv) {
  std::string vocabs = "32000,49152,151936";
  int64_t tokens = 50, topK = 0;
  double temperature = 0.8, topP = 0.9, spread = 3.0;
  net::Config config("llmir-sampler-bench");
  config.add("vocab", &vocabs, "vocabulary sizes, comma-separated");
  config.add("tokens", &tokens, "tokens sampled per size");
  config.add("temperature", &temperature, "sampling temperature");
  config.add("top-p", &topP, "nucleus mass");
  config.add("top-k", &topK, "0: off");
  config.add("spread", &spread, "standard deviation of the random logits");
  config.loadOrExit(argc, argv);
  std::stringstream list(vocabs);
  for (std::string item; std::getline(list, item, ',');) {
    const size_t vocab = std::stoul(item);
    std::vector<float> logits(vocab);
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, static_cast<float>(spread));
    for (float &x : logits)
      x = normal(rng);
    int64_t checksum = 0;
    const auto start = std::chrono::steady_clock::now();
    for (int64_t t = 0; t < tokens; ++t)
      checksum += engine::Sampler({static_cast<float>(temperature), static_cast<float>(topP),
                                   static_cast<int>(topK), static_cast<uint64_t>(t)})
                      .sample(logits);
    const double ms = std::chrono::duration<double, std::milli>(
                          std::chrono::steady_clock::now() - start)
                          .count() /
                      static_cast<double>(tokens);
    std::printf("vocab %zu: %.3f ms per token (sum of ids %lld)\n", vocab, ms,
                static_cast<long long>(checksum));
  }
  return 0;
}

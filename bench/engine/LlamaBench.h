#pragma once
// Runs llama.cpp's llama-bench as the peer of llmir-engine-bench, in the same
// invocation, so the two are measured on the same machine at the same time.

#include "llmir/support/Status.h"

#include <string>

namespace llmir::bench {

struct LlamaBenchRun {
  std::string binary;   // path of llama-bench
  std::string gguf;     // the model as GGUF
  unsigned threads = 1;
  int promptTokens = 0; // prefill test when > 0
  int genTokens = 0;    // decode test when > 0 ...
  int depth = 0;        // ... after this many tokens already in the context
};

// The command line `run` executes (shown in the bench's output).
std::string llamaBenchCommand(const LlamaBenchRun &run);

// One llama-bench test (one repetition, after its own warm-up run): tokens
// per second. Errors carry llama-bench's own output.
Result<double> runLlamaBench(const LlamaBenchRun &run);

} // namespace llmir::bench

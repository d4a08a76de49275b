#include "LlamaBench.h"

#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace llmir::bench {
namespace {

// Single quotes for /bin/sh: the paths come from the command line.
std::string shellQuote(const std::string &text) {
  std::string quoted = "'";
  for (char c : text) {
    if (c == '\'')
      quoted += "'\\''";
    else
      quoted += c;
  }
  return quoted + "'";
}

std::string lastLines(const std::string &text, int lines) {
  size_t at = text.size();
  for (int i = 0; i < lines && at > 0; ++i) {
    size_t newline = text.rfind('\n', at - 1);
    at = newline == std::string::npos ? 0 : newline;
  }
  return text.substr(at);
}

} // namespace

std::string llamaBenchCommand(const LlamaBenchRun &run) {
  std::string command = shellQuote(run.binary) + " -m " + shellQuote(run.gguf) +
                        " -t " + std::to_string(run.threads) +
                        " -p " + std::to_string(run.promptTokens) +
                        " -n " + std::to_string(run.genTokens) + " -r 1 -o jsonl";
  if (run.depth > 0)
    command += " -d " + std::to_string(run.depth);
  return command;
}

Result<double> runLlamaBench(const LlamaBenchRun &run) {
  const std::string command = llamaBenchCommand(run);
  FILE *pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe)
    return Status::error("cannot start llama-bench: " + command);
  std::string output;
  char buffer[4096];
  while (size_t n = std::fread(buffer, 1, sizeof buffer, pipe))
    output.append(buffer, n);
  const int status = ::pclose(pipe);
  if (status != 0)
    return Status::error("llama-bench failed (" + command + ", exit status " +
                         std::to_string(WIFEXITED(status) ? WEXITSTATUS(status)
                                                          : -1) +
                         "):\n" + lastLines(output, 8));
  // -o jsonl: one JSON object per test, its per-repetition tokens/s in
  // "samples_ts": [ ... ]. Only that array is needed, so no JSON library.
  const std::string key = "\"samples_ts\": [";
  size_t at = output.rfind(key);
  if (at == std::string::npos)
    return Status::error("llama-bench printed no samples_ts (" + command +
                         "):\n" + lastLines(output, 8));
  const char *cursor = output.c_str() + at + key.size();
  double best = 0;
  for (;;) {
    char *end = nullptr;
    double value = std::strtod(cursor, &end);
    if (end == cursor)
      break;
    best = std::max(best, value);
    cursor = end;
    while (*cursor == ',' || *cursor == ' ')
      ++cursor;
  }
  if (best <= 0)
    return Status::error("llama-bench reported no throughput (" + command + ")");
  return best;
}

} // namespace llmir::bench

// Issue 14, finding 2: compiles were serialised, so one slow compile (a config
// with 10^6 layers took 13.5 s) blocked every other request. Now compiles of
// different plans run concurrently up to compile.max-concurrent (more get 503
// with Retry-After), each is cancelled at compile.timeout-ms (504), and a
// config beyond the model bounds is refused before any compile. The real
// service process, driven over HTTP.
#include "llmir/net/HttpClient.h"

#include "Processes.h"
#include "ServiceWaits.h"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

using namespace llmir;
using llmir::testing::freePort;
using llmir::testing::Process;
using llmir::testing::waitForStatus;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

const std::string kDemoModel = std::string(LLMIR_SOURCE_DIR) + "/models/demo-llama-4m";

// A Llama checkpoint of `layers` tiny layers (hidden size 8, bf16 zeros): the
// compile's work grows with the layers, its memory stays small. With
// `withTensors` false the safetensors file declares no tensors (enough for a
// config that is refused before the checkpoint is read).
std::string writeModel(const std::string &name, int64_t layers, bool withTensors = true) {
  fs::path dir = fs::path(::testing::TempDir()) / name;
  fs::create_directories(dir);
  std::ofstream(dir / "config.json")
      << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 8, "intermediate_size": 8, "num_attention_heads": 1,
            "num_key_value_heads": 1, "head_dim": 8, "num_hidden_layers": )"
      << layers << R"(, "vocab_size": 16, "max_position_embeddings": 64,
            "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "hidden_act": "silu",
            "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 1})";
  std::string header = "{";
  uint64_t offset = 0;
  auto tensor = [&](const std::string &tensorName, std::vector<int> shape) {
    uint64_t bytes = 2;
    std::string dims;
    for (int d : shape) {
      bytes *= d;
      dims += (dims.empty() ? "" : ",") + std::to_string(d);
    }
    if (header.size() > 1)
      header += ",";
    header += "\"" + tensorName + "\":{\"dtype\":\"BF16\",\"shape\":[" + dims +
              "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + bytes) + "]}";
    offset += bytes;
  };
  if (withTensors) {
    tensor("model.embed_tokens.weight", {16, 8});
    tensor("model.norm.weight", {8});
    tensor("lm_head.weight", {16, 8});
    for (int64_t i = 0; i < layers; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      for (const char *n : {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                            "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                            "mlp.gate_proj.weight", "mlp.up_proj.weight",
                            "mlp.down_proj.weight"})
        tensor(p + n, {8, 8});
      tensor(p + "input_layernorm.weight", {8});
      tensor(p + "post_attention_layernorm.weight", {8});
    }
  }
  header += "}";
  std::ofstream out(dir / "model.safetensors", std::ios::binary);
  const uint64_t length = header.size();
  for (int i = 0; i < 8; ++i)
    out.put(static_cast<char>((length >> (8 * i)) & 0xff));
  out << header;
  out << std::string(offset, '\0');
  return dir.string();
}

class CompilerService {
public:
  explicit CompilerService(std::vector<std::string> flags) : port_(freePort()) {
    std::vector<std::string> args = {std::string(LLMIR_BIN_DIR) + "/llmir-compiler-service",
                                     "--http.host=127.0.0.1",
                                     "--http.port=" + std::to_string(port_)};
    args.insert(args.end(), flags.begin(), flags.end());
    process_ = std::make_unique<Process>(args);
    if (!waitForStatus(url() + "/readyz", 200, 30s))
      ADD_FAILURE() << "the compiler service did not become ready";
  }
  ~CompilerService() {
    process_->signal(SIGTERM);
    EXPECT_EQ(process_->wait(30s), 0);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  Result<net::HttpClientResponse> compile(const std::string &modelDir) {
    return net::httpPost(url() + "/v1/compile", "{\"model_dir\":\"" + modelDir + "\"}",
                         "application/json", 600s);
  }
  // The value of an unlabelled metric line, or -1.
  double metric(const std::string &name) {
    auto r = net::httpGet(url() + "/metrics", 5s);
    if (!r || r->status != 200)
      return -1;
    size_t at = r->body.find("\n" + name + " ");
    if (at == std::string::npos)
      return -1;
    return std::stod(r->body.substr(at + name.size() + 2));
  }

private:
  uint16_t port_;
  std::unique_ptr<Process> process_;
};

/// A compile of a 4096-layer model on its own thread, seen running on the
/// service before the constructor returns (running() false if it never was);
/// joined by finish() or the destructor, so a failed assertion cannot leave
/// a joinable thread behind.
class SlowCompile {
public:
  SlowCompile(CompilerService &service, const std::string &name)
      : thread_([&service, model = writeModel(name, 4096), this] {
          auto r = service.compile(model);
          status_ = r ? r->status : -1;
        }) {
    for (int i = 0; i < 2000 && !running_ && status_ == 0; ++i) {
      running_ = service.metric("llmir:compiles_running") == 1;
      if (!running_)
        std::this_thread::sleep_for(5ms);
    }
  }
  ~SlowCompile() {
    if (thread_.joinable())
      thread_.join();
  }
  bool running() const { return running_; }
  /// The compile's HTTP status once it ended.
  int finish() {
    if (thread_.joinable())
      thread_.join();
    return status_;
  }

private:
  std::atomic<int> status_{0};
  bool running_ = false;
  std::thread thread_;
};

TEST(CompileLimitsTest, ASlowCompileBlocksNeitherProbesNorFetchesAndExcessGets503) {
  CompilerService service({"--compile.max-concurrent=1", "--http.threads=3"});
  SlowCompile slow(service, "slow-4096-layers");
  ASSERT_TRUE(slow.running()) << "the slow compile was never seen running";
  // While it runs: probes are answered, and another plan is refused at once
  // (the limit is 1) with Retry-After instead of queueing behind it.
  auto health = net::httpGet(service.url() + "/healthz", 10s);
  ASSERT_TRUE(health.isOk()) << health.message();
  EXPECT_EQ(health->status, 200);
  auto excess = service.compile(kDemoModel);
  ASSERT_TRUE(excess.isOk()) << excess.message();
  EXPECT_EQ(excess->status, 503) << excess->body;
  EXPECT_EQ(excess->header("retry-after").value_or(""), "1");
  EXPECT_NE(excess->body.find("compile.max-concurrent"), std::string::npos) << excess->body;
  EXPECT_EQ(slow.finish(), 200);
  // The slot is free again.
  auto after = service.compile(kDemoModel);
  ASSERT_TRUE(after.isOk()) << after.message();
  EXPECT_EQ(after->status, 200) << after->body;
}

// A scheduler starting while the service's compiles are all busy is told
// 503 + Retry-After: it waits and asks again (it used to exit at once).
TEST(CompileLimitsTest, ASchedulerStartingWhileEveryCompileIsBusyRetries) {
  CompilerService service({"--compile.max-concurrent=1", "--http.threads=3"});
  SlowCompile slow(service, "slow-4096-layers-scheduler");
  const bool running = slow.running();
  EXPECT_TRUE(running) << "the slow compile was never seen running";
  const fs::path workerPortFile = fs::path(::testing::TempDir()) / "busy-scheduler.worker.port";
  fs::remove(workerPortFile);
  Process scheduler({std::string(LLMIR_BIN_DIR) + "/llmir-scheduler", "--model=" + kDemoModel,
                     "--http.host=127.0.0.1", "--http.port=0",
                     "--compiler-url=" + service.url(), "--tp=1", "--worker-port=0",
                     "--worker-port-file=" + workerPortFile.string()});
  // The worker port is published after the plan compiled.
  bool compiled = false, exited = !scheduler.started();
  for (int i = 0; i < 1200 && running && !compiled && !exited; ++i) {
    compiled = fs::exists(workerPortFile) && fs::file_size(workerPortFile) > 0;
    exited = !compiled && scheduler.wait(50ms) != -1;
  }
  EXPECT_EQ(slow.finish(), 200);
  EXPECT_FALSE(exited) << "the scheduler exited instead of retrying";
  EXPECT_TRUE(compiled) << "the scheduler never compiled its plan";
  if (!exited) {
    scheduler.signal(SIGTERM);
    EXPECT_EQ(scheduler.wait(30s), 0);
  }
}

TEST(CompileLimitsTest, ACompilePastItsDeadlineIsCancelledWithAClearError) {
  const std::string slowModel = writeModel("deadline-4096-layers", 4096);
  CompilerService service({"--compile.timeout-ms=100"});
  auto r = service.compile(slowModel);
  ASSERT_TRUE(r.isOk()) << r.message();
  EXPECT_EQ(r->status, 504) << r->body;
  EXPECT_NE(r->body.find("cancelled at its deadline of 100 ms (compile.timeout-ms)"),
            std::string::npos)
      << r->body;
  EXPECT_EQ(service.metric("llmir:compiles_running"), 0) << "the cancelled compile kept its slot";
  auto plans = net::httpGet(service.url() + "/v1/plans/none", 5s);
  ASSERT_TRUE(plans.isOk());
  EXPECT_EQ(plans->status, 404);
}

TEST(CompileLimitsTest, AMillionLayersAreRefusedBeforeAnyCompile) {
  const std::string huge = writeModel("million-layers", 1'000'000, /*withTensors=*/false);
  CompilerService service({});
  auto r = service.compile(huge);
  ASSERT_TRUE(r.isOk()) << r.message();
  EXPECT_EQ(r->status, 422) << r->body;
  EXPECT_NE(r->body.find("over the limit of 4096"), std::string::npos) << r->body;
  auto ok = service.compile(kDemoModel);
  ASSERT_TRUE(ok.isOk());
  EXPECT_EQ(ok->status, 200) << ok->body;
}

TEST(CompileLimitsTest, AConcurrencyLimitThatLeavesNoThreadIsRefused) {
  Process service({std::string(LLMIR_BIN_DIR) + "/llmir-compiler-service",
                   "--http.threads=2", "--compile.max-concurrent=2", "--check-config"});
  ASSERT_TRUE(service.started());
  EXPECT_EQ(service.wait(30s), 2);
}

} // namespace

#include "llmir/compiler/ClusterSpec.h"

#include <gtest/gtest.h>

namespace llmir::compiler {
namespace {

TEST(ClusterSpec, ParsesEveryKeyWithUnits) {
  auto spec = parseClusterSpec(R"(
nodes: 2
devices_per_node: 8
device: {kind: cuda, memory: 80GiB, peak_flops: 989T, memory_bandwidth: 3.35T}
interconnect:
  intra_node: {bandwidth: 450G, latency: 5us}
  inter_node: {bandwidth: 50G, latency: 2ms}
parallelism: {tensor: 8, pipeline: auto}
serving: {max_batch_tokens: 4096, max_num_seqs: 32, max_context: 8192,
          decode_latency_target: 50ms}
)", "inline.yaml");
  ASSERT_TRUE(spec) << spec.message();
  EXPECT_EQ(spec->numDevices(), 16);
  EXPECT_EQ(spec->device.memoryBytes, 80LL << 30);
  EXPECT_DOUBLE_EQ(spec->device.peakFlops, 989e12);
  EXPECT_DOUBLE_EQ(spec->interNode.latency, 2e-3);
  EXPECT_DOUBLE_EQ(spec->intraNode.bandwidth, 450e9);
  EXPECT_EQ(spec->tensor, 8);
  EXPECT_FALSE(spec->pipeline);
  EXPECT_FALSE(spec->sequence);
  EXPECT_EQ(spec->serving.maxContext, 8192);
  EXPECT_DOUBLE_EQ(*spec->serving.decodeLatencyTarget, 0.05);
}

// The roofline's calibration (bench/gpu/h100-calibrated.yaml): shares of the
// bandwidth and peak the kernels reach, and a time per op.
TEST(ClusterSpec, ParsesTheCalibration) {
  auto spec = parseClusterSpec(R"(
device: {memory_efficiency: 0.63, matmul_efficiency: 0.42, attention_efficiency: 0.0034,
         op_overhead: 2.7us}
)", "inline.yaml");
  ASSERT_TRUE(spec) << spec.message();
  EXPECT_DOUBLE_EQ(spec->device.memoryEfficiency, 0.63);
  EXPECT_DOUBLE_EQ(spec->device.matmulEfficiency, 0.42);
  EXPECT_DOUBLE_EQ(spec->device.attentionEfficiency, 0.0034);
  EXPECT_DOUBLE_EQ(spec->device.opOverheadSeconds, 2.7e-6);
  auto ideal = parseClusterSpec("nodes: 1\n", "ideal.yaml");
  ASSERT_TRUE(ideal) << ideal.message();
  EXPECT_EQ(ideal->device.memoryEfficiency, 1.0);
  EXPECT_EQ(ideal->device.opOverheadSeconds, 0.0);
  auto calibrated =
      loadClusterSpec(std::string(LLMIR_SOURCE_DIR) + "/bench/gpu/h100-calibrated.yaml");
  EXPECT_TRUE(calibrated) << calibrated.message();
  // The small-GEMM ramp and the GEMV rows (bench/gpu/h200-calibrated.yaml).
  auto h200 = loadClusterSpec(std::string(LLMIR_SOURCE_DIR) + "/bench/gpu/h200-calibrated.yaml");
  ASSERT_TRUE(h200) << h200.message();
  EXPECT_DOUBLE_EQ(h200->device.matmulHalfRows, 174.7);
  EXPECT_DOUBLE_EQ(h200->device.gemvRows, 8);
  EXPECT_EQ(ideal->device.matmulHalfRows, 0.0);
  EXPECT_EQ(ideal->device.gemvRows, 0.0);
}

struct BadSpec {
  const char *yaml;
  const char *message;
};

class InvalidClusterSpec : public ::testing::TestWithParam<BadSpec> {};

TEST_P(InvalidClusterSpec, IsRejectedWithAMessageNamingTheKey) {
  auto spec = parseClusterSpec(GetParam().yaml, "bad.yaml");
  ASSERT_FALSE(spec);
  EXPECT_NE(spec.message().find(GetParam().message), std::string::npos) << spec.message();
  EXPECT_EQ(spec.message().rfind("bad.yaml", 0), 0u) << spec.message();
}

INSTANTIATE_TEST_SUITE_P(
    Cases, InvalidClusterSpec,
    ::testing::Values(
        BadSpec{"nodes: 1\ngpus: 2\n", "gpus: unknown key"},
        BadSpec{"device: {memroy: 1G}\n", "device.memroy: unknown key"},
        BadSpec{"device: {memory: -8GiB}\n", "device.memory: is -8GiB, expected a positive value"},
        BadSpec{"device: {memory: 8XB}\n", "device.memory: unknown unit"},
        BadSpec{"nodes: 0\n", "nodes: is 0, expected a positive integer"},
        BadSpec{"device: {kind: tpu}\n", "device.kind: is 'tpu', expected cuda or cpu"},
        BadSpec{"interconnect: {intra_node: {latency: 5 weeks}}\n", "unknown time unit"},
        BadSpec{"nodes: 1\ndevices_per_node: 8\nparallelism: {tensor: 3}\n",
                "tensor x pipeline x sequence = 3 does not divide the 8 devices"},
        BadSpec{"nodes: [1\n", "invalid YAML"},
        BadSpec{"device: {memory_efficiency: 1.5}\n",
                "device.memory_efficiency: is 1.5, expected a share in (0, 1]"},
        BadSpec{"device: {op_overhead: 2}\n", "device.op_overhead: is 2, expected seconds below 1"},
        BadSpec{"device: {matmul_half_rows: -3}\n",
                "device.matmul_half_rows: is -3, expected a positive value"},
        BadSpec{"device: {gemv_rows: 0}\n", "device.gemv_rows: is 0, expected a positive value"},
        BadSpec{"device: {gemv_row: 8}\n", "gemv_row"},
        // Found by fuzz/ClusterSpecFuzz.cpp: a memory past int64 was converted
        // anyway (undefined behaviour).
        BadSpec{"device: {memory: 666666666666666666666666666666GiB}\n",
                "device.memory: is 666666666666666666666666666666GiB, more than 1 EiB"}));

TEST(ClusterSpec, ExamplesLoad) {
  for (const char *name : {"laptop-cpu.yaml", "h100-2x8.yaml", "h100-8x8-70b.yaml"}) {
    auto spec = loadClusterSpec(std::string(LLMIR_SOURCE_DIR) + "/examples/" + name);
    EXPECT_TRUE(spec) << name << ": " << spec.message();
  }
}

TEST(ClusterSpec, MissingFileNamesIt) {
  auto spec = loadClusterSpec("/nonexistent/spec.yaml");
  ASSERT_FALSE(spec);
  EXPECT_NE(spec.message().find("/nonexistent/spec.yaml"), std::string::npos);
}

} // namespace
} // namespace llmir::compiler

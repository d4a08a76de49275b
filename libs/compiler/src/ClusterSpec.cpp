// YAML -> ClusterSpec. yaml-cpp throws; every exception is caught here and
// becomes a Status naming the file, the key and what was expected.
#include "llmir/compiler/ClusterSpec.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

namespace llmir::compiler {
namespace {

/// Thrown inside this file only, turned into a Status by parseClusterSpec.
struct SpecError {
  std::string message;
};

[[noreturn]] void fail(const std::string &key, const std::string &message) {
  throw SpecError{key + ": " + message};
}

void checkKeys(const YAML::Node &map, const std::string &where,
               const std::set<std::string> &known) {
  if (!map.IsMap())
    fail(where.empty() ? "top level" : where, "expected a mapping");
  for (const auto &entry : map) {
    std::string key = entry.first.as<std::string>();
    if (!known.count(key)) {
      std::string list;
      for (const std::string &k : known)
        list += (list.empty() ? "" : ", ") + k;
      fail(where.empty() ? key : where + "." + key,
           "unknown key, expected one of: " + list);
    }
  }
}

/// A number with an optional unit suffix: K/M/G/T/P (powers of 1000),
/// Ki/Mi/Gi/Ti (powers of 1024), optionally followed by B; or, for times,
/// s/ms/us/ns. "80GiB", "3.35T", "989e12", "5us".
double quantity(const YAML::Node &node, const std::string &key, bool isTime) {
  if (!node.IsScalar())
    fail(key, "expected a number");
  std::string text = node.Scalar();
  size_t consumed = 0;
  double value = 0;
  try {
    value = std::stod(text, &consumed);
  } catch (...) {
    fail(key, "'" + text + "' is not a number");
  }
  std::string unit = text.substr(consumed);
  while (!unit.empty() && unit.front() == ' ')
    unit.erase(0, 1);
  double scale = 1;
  if (isTime) {
    if (unit == "ms")
      scale = 1e-3;
    else if (unit == "us")
      scale = 1e-6;
    else if (unit == "ns")
      scale = 1e-9;
    else if (!unit.empty() && unit != "s")
      fail(key, "unknown time unit '" + unit + "', expected s, ms, us or ns");
  } else {
    if (!unit.empty() && unit.back() == 'B')
      unit.pop_back();
    bool binary = !unit.empty() && unit.back() == 'i';
    if (binary)
      unit.pop_back();
    const std::string prefixes = "KMGTP";
    if (unit.size() > 1 || (unit.size() == 1 && prefixes.find(unit[0]) == std::string::npos))
      fail(key, "unknown unit in '" + text + "', expected K, M, G, T, P, Ki, Mi, Gi, Ti (optionally + B)");
    if (unit.size() == 1)
      scale = std::pow(binary ? 1024.0 : 1000.0,
                       static_cast<double>(prefixes.find(unit[0]) + 1));
  }
  value *= scale;
  if (!(value > 0) || !std::isfinite(value))
    fail(key, "is " + text + ", expected a positive value");
  return value;
}

int64_t count(const YAML::Node &node, const std::string &key) {
  if (!node.IsScalar())
    fail(key, "expected a positive integer");
  int64_t value = 0;
  try {
    value = node.as<int64_t>();
  } catch (...) {
    fail(key, "'" + node.Scalar() + "' is not an integer");
  }
  if (value < 1)
    fail(key, "is " + std::to_string(value) + ", expected a positive integer");
  return value;
}

LinkSpec link(const YAML::Node &node, const std::string &key, LinkSpec defaults) {
  checkKeys(node, key, {"bandwidth", "latency"});
  if (node["bandwidth"])
    defaults.bandwidth = quantity(node["bandwidth"], key + ".bandwidth", false);
  if (node["latency"])
    defaults.latency = quantity(node["latency"], key + ".latency", true);
  return defaults;
}

std::optional<int64_t> degree(const YAML::Node &node, const std::string &key) {
  if (!node || (node.IsScalar() && node.Scalar() == "auto"))
    return std::nullopt;
  return count(node, key);
}

ClusterSpec parse(const YAML::Node &root, const std::string &source) {
  ClusterSpec spec;
  spec.source = source;
  checkKeys(root, "", {"nodes", "devices_per_node", "device", "interconnect",
                       "parallelism", "serving"});
  if (root["nodes"])
    spec.nodes = count(root["nodes"], "nodes");
  if (root["devices_per_node"])
    spec.devicesPerNode = count(root["devices_per_node"], "devices_per_node");
  if (const YAML::Node d = root["device"]) {
    checkKeys(d, "device", {"kind", "memory", "peak_flops", "memory_bandwidth",
                            "memory_efficiency", "matmul_efficiency",
                            "attention_efficiency", "op_overhead", "matmul_half_rows",
                            "gemv_rows"});
    if (d["kind"]) {
      spec.device.kind = d["kind"].as<std::string>();
      if (spec.device.kind != "cuda" && spec.device.kind != "cpu")
        fail("device.kind", "is '" + spec.device.kind + "', expected cuda or cpu");
    }
    if (d["memory"]) {
      // Converting a double beyond int64 is undefined behaviour (found by
      // fuzz/ClusterSpecFuzz.cpp): bound it first.
      const double memory = quantity(d["memory"], "device.memory", false);
      if (memory > 0x1p60)
        fail("device.memory", "is " + d["memory"].Scalar() + ", more than 1 EiB");
      spec.device.memoryBytes = static_cast<int64_t>(memory);
    }
    if (d["peak_flops"])
      spec.device.peakFlops = quantity(d["peak_flops"], "device.peak_flops", false);
    if (d["memory_bandwidth"])
      spec.device.memoryBandwidth =
          quantity(d["memory_bandwidth"], "device.memory_bandwidth", false);
    auto share = [&](const char *key, double &out) {
      if (!d[key])
        return;
      out = quantity(d[key], std::string("device.") + key, false);
      if (!(out > 0 && out <= 1))
        fail(std::string("device.") + key, "is " + d[key].Scalar() + ", expected a share in (0, 1]");
    };
    share("memory_efficiency", spec.device.memoryEfficiency);
    share("matmul_efficiency", spec.device.matmulEfficiency);
    share("attention_efficiency", spec.device.attentionEfficiency);
    if (d["op_overhead"]) {
      spec.device.opOverheadSeconds = quantity(d["op_overhead"], "device.op_overhead", true);
      if (!(spec.device.opOverheadSeconds < 1))
        fail("device.op_overhead", "is " + d["op_overhead"].Scalar() + ", expected seconds below 1");
    }
    if (d["matmul_half_rows"]) {
      spec.device.matmulHalfRows =
          quantity(d["matmul_half_rows"], "device.matmul_half_rows", false);
      if (!(spec.device.matmulHalfRows < 1e9))
        fail("device.matmul_half_rows",
             "is " + d["matmul_half_rows"].Scalar() + ", expected rows below 1e9");
    }
    if (d["gemv_rows"]) {
      spec.device.gemvRows = quantity(d["gemv_rows"], "device.gemv_rows", false);
      if (!(spec.device.gemvRows < 1e9))
        fail("device.gemv_rows", "is " + d["gemv_rows"].Scalar() + ", expected rows below 1e9");
    }
  }
  if (const YAML::Node i = root["interconnect"]) {
    checkKeys(i, "interconnect", {"intra_node", "inter_node"});
    if (i["intra_node"])
      spec.intraNode = link(i["intra_node"], "interconnect.intra_node", spec.intraNode);
    if (i["inter_node"])
      spec.interNode = link(i["inter_node"], "interconnect.inter_node", spec.interNode);
  }
  if (const YAML::Node p = root["parallelism"]) {
    checkKeys(p, "parallelism", {"tensor", "pipeline", "sequence"});
    spec.tensor = degree(p["tensor"], "parallelism.tensor");
    spec.pipeline = degree(p["pipeline"], "parallelism.pipeline");
    spec.sequence = degree(p["sequence"], "parallelism.sequence");
  }
  if (const YAML::Node s = root["serving"]) {
    checkKeys(s, "serving", {"max_batch_tokens", "max_num_seqs", "max_context",
                             "decode_latency_target"});
    if (s["max_batch_tokens"])
      spec.serving.maxBatchTokens = count(s["max_batch_tokens"], "serving.max_batch_tokens");
    if (s["max_num_seqs"])
      spec.serving.maxNumSeqs = count(s["max_num_seqs"], "serving.max_num_seqs");
    if (s["max_context"])
      spec.serving.maxContext = count(s["max_context"], "serving.max_context");
    if (s["decode_latency_target"])
      spec.serving.decodeLatencyTarget =
          quantity(s["decode_latency_target"], "serving.decode_latency_target", true);
  }
  int64_t fixed = spec.tensor.value_or(1) * spec.pipeline.value_or(1) *
                  spec.sequence.value_or(1);
  if (spec.numDevices() % fixed != 0)
    fail("parallelism", "tensor x pipeline x sequence = " + std::to_string(fixed) +
                            " does not divide the " + std::to_string(spec.numDevices()) +
                            " devices (nodes x devices_per_node)");
  return spec;
}

} // namespace

Result<ClusterSpec> parseClusterSpec(const std::string &yaml, const std::string &source) {
  try {
    return parse(YAML::Load(yaml), source);
  } catch (const SpecError &e) {
    return Status::error(source + ": " + e.message);
  } catch (const YAML::Exception &e) {
    return Status::error(source + ": invalid YAML: " + e.what());
  } catch (const std::exception &e) {
    return Status::error(source + ": " + e.what());
  }
}

Result<ClusterSpec> loadClusterSpec(const std::string &path) {
  std::ifstream in(path);
  if (!in)
    return Status::error("cannot read cluster spec '" + path + "'");
  std::stringstream text;
  text << in.rdbuf();
  return parseClusterSpec(text.str(), path);
}

} // namespace llmir::compiler

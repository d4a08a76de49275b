#include "PlanSearch.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>

namespace llmir::compiler {
namespace {

/// Where the candidate's ranks sit and which links its collectives use.
/// Ranks of replica 0 fill nodes in rank order (node = rank / devices_per_node);
/// a group whose ranks share a node uses the intra-node link.
struct Layout {
  const ClusterSpec &spec;
  int tp, pp, sp;

  int64_t nodeOf(int64_t rank) const { return rank / spec.devicesPerNode; }

  const LinkSpec &linkOf(bool crossesNodes) const {
    return crossesNodes ? spec.interNode : spec.intraNode;
  }
  /// Tensor-parallel groups: tp consecutive ranks.
  const LinkSpec &tpLink() const {
    for (int64_t base = 0; base < int64_t{tp} * sp * pp; base += tp)
      if (nodeOf(base) != nodeOf(base + tp - 1))
        return linkOf(true);
    return linkOf(false);
  }
  /// Sequence-parallel groups: sp ranks tp apart.
  const LinkSpec &spLink() const {
    for (int64_t stage = 0; stage < pp; ++stage)
      for (int64_t t = 0; t < tp; ++t) {
        int64_t first = stage * sp * tp + t;
        if (nodeOf(first) != nodeOf(first + (sp - 1) * int64_t{tp}))
          return linkOf(true);
      }
    return linkOf(false);
  }
  /// Pipeline boundaries: rank r sends to r + tp * sp.
  const LinkSpec &ppLink() const {
    for (int64_t stage = 0; stage + 1 < pp; ++stage)
      if (nodeOf(stage * tp * sp) != nodeOf((stage + 1) * tp * sp))
        return linkOf(true);
    return linkOf(false);
  }
};

double allReduceSeconds(double bytes, int n, const LinkSpec &link, int count) {
  if (n <= 1 || count == 0)
    return 0;
  return count * 2.0 * (n - 1) * link.latency + 2.0 * (n - 1) / n * bytes / link.bandwidth;
}

double allGatherSeconds(double bytes, int n, const LinkSpec &link, int count) {
  if (n <= 1 || count == 0)
    return 0;
  return count * (n - 1) * link.latency + (n - 1.0) / n * bytes / link.bandwidth;
}

class Evaluator {
public:
  Evaluator(const ModelProfile &model, const ClusterSpec &spec, int tp, int pp, int sp)
      : model(model), spec(spec), layout{spec, tp, pp, sp}, tp(tp), pp(pp), sp(sp),
        tpLink(layout.tpLink()), spLink(layout.spLink()), ppLink(layout.ppLink()) {}

  /// Seconds of one segment for `tokens` query tokens, each attending over
  /// `context` keys; decode reads the cached keys, prefill only writes them.
  /// With sp > 1 the tokens are split: a rank computes its ceil(tokens / sp)
  /// rows (linears, activations, attention of its queries over the whole
  /// context), stores every token's K/V and gathers the K/V rows of the
  /// step (plus the hidden rows once, before the logits).
  double segmentSeconds(const SegmentProfile &s, double tokens, double context,
                        bool decode) const {
    // The epilogue (the only segment with an all-gather: the logits')
    // projects the gathered rows on every rank.
    const bool epilogue = s.allGathers > 0;
    const double slice = std::ceil(tokens / sp);
    const double rows = epilogue ? tokens : slice;
    // A roofline calibrated by the device's efficiencies (1 each: the ideal
    // device), plus a fixed time per op.
    const DeviceSpec &device = spec.device;
    const double matmulFlops = rows * s.matmulFlopsPerToken * headShare();
    const double otherFlops = rows * (s.flopsPerToken - s.matmulFlopsPerToken) * headShare();
    const double attentionFlops = rows * context * s.attentionFlopsPerPair * headShare();
    double bytes = weightBytesPerRank(s) + rows * s.activationBytesPerToken / tp +
                   (decode ? rows * context : tokens) * s.kvBytesPerToken * kvShare();
    // Small products leave most of the tiles idle (matmulHalfRows); GEMVs
    // (under gemvRows) stream the weights and are priced by their bytes.
    const double matmulEfficiency =
        rows < device.gemvRows ? device.matmulEfficiency
                               : device.matmulEfficiency * rows / (rows + device.matmulHalfRows);
    double compute = std::max((matmulFlops / matmulEfficiency + otherFlops +
                               attentionFlops / device.attentionEfficiency) /
                                  device.peakFlops,
                              bytes / (device.memoryBandwidth * device.memoryEfficiency)) +
                     static_cast<double>(s.ops) * device.opOverheadSeconds;
    double comm =
        allReduceSeconds(rows * s.allReduceBytesPerToken, tp, tpLink, s.allReduces) +
        allGatherSeconds(rows * s.allGatherBytesPerToken, tp, tpLink, s.allGathers);
    if (sp > 1 && s.hasAttention)
      comm += allGatherSeconds(sp * rows * s.spKeyValueBytesPerToken / tp, sp, spLink, 1);
    if (sp > 1 && epilogue) // the hidden rows, before the logits
      comm += allGatherSeconds(sp * slice * model.hiddenBytesPerToken, sp, spLink, 1);
    return compute + comm;
  }

  /// Seconds of each stage (prologue on the first, epilogue on the last).
  std::vector<double> stageSeconds(const std::vector<int64_t> &split, double tokens,
                                   double context, bool decode) const {
    std::vector<double> out;
    size_t layer = 0;
    for (int s = 0; s < pp; ++s) {
      double t = 0;
      if (s == 0)
        t += segmentSeconds(model.prologue, tokens, context, decode);
      for (int64_t i = 0; i < split[s]; ++i, ++layer)
        t += segmentSeconds(model.layers[layer], tokens, context, decode);
      if (s == pp - 1)
        t += segmentSeconds(model.epilogue, tokens, context, decode);
      out.push_back(t);
    }
    return out;
  }

  double sendSeconds(double tokens) const {
    return pp > 1 ? linkSendSeconds(ppLink, tokens * model.hiddenBytesPerToken) : 0;
  }

  /// Contiguous split of the layers into pp stages minimising the slowest
  /// (prefill cost). Exact DP; ties go to the earliest cut: deterministic.
  std::vector<int64_t> balanceStages(double tokens, double context) const {
    const int n = static_cast<int>(model.layers.size());
    std::vector<double> prefix(n + 1, 0);
    for (int i = 0; i < n; ++i)
      prefix[i + 1] = prefix[i] + segmentSeconds(model.layers[i], tokens, context, false);
    double first = segmentSeconds(model.prologue, tokens, context, false);
    double last = segmentSeconds(model.epilogue, tokens, context, false);
    const double inf = std::numeric_limits<double>::infinity();
    std::vector<std::vector<double>> best(pp + 1, std::vector<double>(n + 1, inf));
    std::vector<std::vector<int>> cut(pp + 1, std::vector<int>(n + 1, 0));
    best[0][0] = 0;
    for (int s = 1; s <= pp; ++s)
      for (int i = s; i <= n; ++i)
        for (int j = s - 1; j < i; ++j) {
          double stage = prefix[i] - prefix[j] + (s == 1 ? first : 0) +
                         (s == pp && i == n ? last : 0);
          double worst = std::max(best[s - 1][j], stage);
          if (worst < best[s][i]) {
            best[s][i] = worst;
            cut[s][i] = j;
          }
        }
    std::vector<int64_t> layers(pp);
    for (int s = pp, i = n; s >= 1; --s) {
      layers[s - 1] = i - cut[s][i];
      i = cut[s][i];
    }
    return layers;
  }

  /// The part of the KV heads (cache, k/v projections) one rank holds:
  /// 1 / tp, or one KV head when tp exceeds them (replicated).
  double kvShare() const {
    if (model.numHeads % tp != 0 && model.numKvHeads > 0) { // uneven split
      const int64_t heads = (model.numHeads + tp - 1) / tp;
      const int64_t group = std::max<int64_t>(1, model.numHeads / model.numKvHeads);
      int64_t kv = 0;
      for (int64_t r = 0; r < tp; ++r)
        kv = std::max(kv, ((r + 1) * heads - 1) / group - (r * heads) / group + 1);
      return static_cast<double>(kv) / static_cast<double>(model.numKvHeads);
    }
    return 1.0 / static_cast<double>(std::min<int64_t>(tp, std::max<int64_t>(1, model.numKvHeads)));
  }

  /// The share of the heads (and MLP) the busiest rank computes: 1 / tp, or
  /// ceil(heads / tp) / heads under an uneven split (padding costs as much
  /// as real heads).
  double headShare() const {
    if (model.numHeads <= 0 || model.numHeads % tp == 0)
      return 1.0 / tp;
    return static_cast<double>((model.numHeads + tp - 1) / tp) /
           static_cast<double>(model.numHeads);
  }

  double weightBytesPerRank(const SegmentProfile &s) const {
    return (s.shardedWeightBytes - s.keyValueWeightBytes) * headShare() +
           s.keyValueWeightBytes * kvShare() + s.replicatedWeightBytes;
  }

  std::string infeasibleDegrees() const {
    auto why = [&](const std::string &text) { return text; };
    // Heads and the MLP split unevenly when tp does not divide them (each
    // rank padded to the largest share); tp beyond the heads leaves ranks
    // with nothing but padding.
    if (tp > model.numHeads)
      return why("tp = " + std::to_string(tp) + " is infeasible: layer 0 has " +
                 std::to_string(model.numHeads) + " heads, fewer than tp");
    if (pp > static_cast<int>(model.layers.size()))
      return "pp = " + std::to_string(pp) + " exceeds the model's " +
             std::to_string(model.layers.size()) +
             " layers, expected at least one layer per stage";
    return "";
  }

  /// One step of `tokens` tokens: decode (a token per sequence over
  /// `context` cached keys, the sequences in min(pp, tokens) micro-batches)
  /// or the prefill of one `tokens`-token prompt (pp micro-batches), on the
  /// prefill-balanced stages, as run() prices them.
  double stepSeconds(double tokens, double context, bool decode) const {
    const double batchTokens = static_cast<double>(spec.serving.maxBatchTokens);
    const std::vector<int64_t> split = balanceStages(batchTokens, batchTokens / 2);
    const double micro = decode ? std::min<double>(pp, tokens) : pp;
    const double microTokens = std::ceil(tokens / micro);
    auto stages = stageSeconds(split, microTokens, decode ? context : microTokens / 2, decode);
    const double sum = std::accumulate(stages.begin(), stages.end(), 0.0);
    const double slowest = *std::max_element(stages.begin(), stages.end());
    if (!decode)
      return sum + (micro - 1) * slowest + (pp - 1) * sendSeconds(microTokens);
    return std::max(sum + (pp - 1) * sendSeconds(microTokens), micro * slowest);
  }

  Candidate run() const {
    Candidate c;
    c.tp = tp;
    c.pp = pp;
    c.sp = sp;
    c.replicas = spec.numDevices() / (int64_t{tp} * pp * sp);
    c.rejected = infeasibleDegrees();
    if (!c.rejected.empty())
      return c;
    const double batchTokens = static_cast<double>(spec.serving.maxBatchTokens);
    int64_t maxContext = spec.serving.maxContext;
    if (model.maxSeqLen > 0)
      maxContext = std::min(maxContext, model.maxSeqLen);
    c.stageLayers = balanceStages(batchTokens, batchTokens / 2);
    c.stageSeconds = stageSeconds(c.stageLayers, batchTokens, batchTokens / 2, false);

    // Memory of each stage's devices; the KV cache takes what is left.
    const double usable = kMemoryUtilization * static_cast<double>(spec.device.memoryBytes);
    c.kvBlocks = std::numeric_limits<int64_t>::max();
    size_t layer = 0;
    for (int s = 0; s < pp; ++s) {
      std::vector<const SegmentProfile *> segs;
      if (s == 0)
        segs.push_back(&model.prologue);
      for (int64_t i = 0; i < c.stageLayers[s]; ++i)
        segs.push_back(&model.layers[layer++]);
      if (s == pp - 1)
        segs.push_back(&model.epilogue);
      double weights = 0, peak = 0, kvPerToken = 0;
      for (const SegmentProfile *seg : segs) {
        weights += weightBytesPerRank(*seg);
        peak = std::max(peak, seg->peakActivationBytesPerToken / tp);
        kvPerToken += seg->kvBytesPerToken * kvShare();
      }
      double activations = batchTokens * (peak + 2 * model.hiddenBytesPerToken);
      double blockBytes = kvPerToken * static_cast<double>(model.kvBlockSize);
      double left = usable - weights - activations;
      int64_t blocks = left > 0 ? static_cast<int64_t>(left / blockBytes) : 0;
      // Every sp rank holds a pool for all of a sequence's blocks (the same
      // block table; it writes and reads only the blocks it owns), so sp
      // splits the KV work and traffic, not the KV memory (docs/compiler.md).
      double oneSequence = kvPerToken * static_cast<double>(maxContext);
      if (blocks * model.kvBlockSize < maxContext) {
        c.rejected = "stage " + std::to_string(s) + " needs " + formatBytes(weights) +
                     " weights + " + formatBytes(activations) + " activations + " +
                     formatBytes(oneSequence) + " KV cache for one " +
                     std::to_string(maxContext) + "-token sequence, more than the " +
                     formatBytes(usable) + " usable on a " + spec.device.kind + " device";
        c.weightBytes = std::max(c.weightBytes, weights);
        c.activationBytes = std::max(c.activationBytes, activations);
        c.kvBlocks = 0;
        return c;
      }
      c.weightBytes = std::max(c.weightBytes, weights);
      c.activationBytes = std::max(c.activationBytes, activations);
      c.kvCacheBytes = std::max(c.kvCacheBytes, blocks * blockBytes);
      c.kvBlocks = std::min(c.kvBlocks, blocks);
    }
    int64_t tokenCapacity = c.kvBlocks * model.kvBlockSize;
    c.concurrentSeqs = std::max<int64_t>(
        1, std::min(spec.serving.maxNumSeqs, tokenCapacity / maxContext));

    // Prefill: the chunk flows through the stages in pp micro-batches.
    const int prefillMicro = pp;
    auto prefill = stageSeconds(c.stageLayers, batchTokens / prefillMicro,
                                batchTokens / 2, false);
    double sum = std::accumulate(prefill.begin(), prefill.end(), 0.0);
    double slowest = *std::max_element(prefill.begin(), prefill.end());
    c.prefillSeconds = sum + (prefillMicro - 1) * slowest +
                       (pp - 1) * sendSeconds(batchTokens / prefillMicro);

    // Decode: concurrentSeqs tokens at half the context on average, in
    // min(pp, seqs) micro-batches; a round is bound by the busiest stage and
    // by one token's trip through every stage.
    const int64_t micro = std::min<int64_t>(pp, c.concurrentSeqs);
    double microTokens = std::ceil(static_cast<double>(c.concurrentSeqs) / micro);
    auto decode = stageSeconds(c.stageLayers, microTokens,
                               static_cast<double>(maxContext) / 2, true);
    double trip = std::accumulate(decode.begin(), decode.end(), 0.0) +
                  (pp - 1) * sendSeconds(microTokens);
    double busiest = micro * *std::max_element(decode.begin(), decode.end());
    c.decodeSeconds = std::max(trip, busiest);
    c.decodeTokensPerSecond =
        static_cast<double>(c.replicas * c.concurrentSeqs) / c.decodeSeconds;
    if (spec.serving.decodeLatencyTarget && c.decodeSeconds > *spec.serving.decodeLatencyTarget) {
      char text[160];
      std::snprintf(text, sizeof text,
                    "decode step %.3g ms exceeds the latency target %.3g ms",
                    c.decodeSeconds * 1e3, *spec.serving.decodeLatencyTarget * 1e3);
      c.rejected = text;
    }
    return c;
  }

private:
  const ModelProfile &model;
  const ClusterSpec &spec;
  Layout layout;
  int tp, pp, sp;
  const LinkSpec &tpLink, &spLink, &ppLink;
};

std::vector<int> divisors(int64_t n) {
  std::vector<int> out;
  for (int64_t d = 1; d <= n; ++d)
    if (n % d == 0)
      out.push_back(static_cast<int>(d));
  return out;
}

bool better(const Candidate &a, const Candidate &b) {
  const double eps = 1e-9;
  if (a.decodeTokensPerSecond > b.decodeTokensPerSecond * (1 + eps))
    return true;
  if (b.decodeTokensPerSecond > a.decodeTokensPerSecond * (1 + eps))
    return false;
  if (a.decodeSeconds < b.decodeSeconds * (1 - eps))
    return true;
  if (b.decodeSeconds < a.decodeSeconds * (1 - eps))
    return false;
  return a.tp * a.pp * a.sp < b.tp * b.pp * b.sp;
}

} // namespace

std::string formatBytes(double bytes) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char text[32];
  std::snprintf(text, sizeof text, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return text;
}

Candidate evaluateCandidate(const ModelProfile &model, const ClusterSpec &spec,
                            int tp, int pp, int sp) {
  return Evaluator(model, spec, tp, pp, sp).run();
}

double predictStepSeconds(const ModelProfile &model, const ClusterSpec &spec, int tp, int pp,
                          int sp, double tokens, double context, bool decode) {
  return Evaluator(model, spec, tp, pp, sp).stepSeconds(tokens, context, decode);
}

double linkAllReduceSeconds(const LinkSpec &link, double bytes, int ranks) {
  return allReduceSeconds(bytes, ranks, link, 1);
}

double linkSendSeconds(const LinkSpec &link, double bytes) {
  return link.latency + bytes / link.bandwidth;
}

SearchResult searchPartitions(const ModelProfile &model, const ClusterSpec &spec) {
  SearchResult result;
  const int64_t devices = spec.numDevices();
  for (int tp : divisors(devices))
    for (int pp : divisors(devices / tp))
      for (int sp : divisors(devices / (int64_t{tp} * pp))) {
        if ((spec.tensor && *spec.tensor != tp) || (spec.pipeline && *spec.pipeline != pp) ||
            (spec.sequence && *spec.sequence != sp))
          continue;
        result.candidates.push_back(evaluateCandidate(model, spec, tp, pp, sp));
        const Candidate &c = result.candidates.back();
        if (c.rejected.empty() &&
            (result.chosen < 0 || better(c, result.candidates[result.chosen])))
          result.chosen = static_cast<int>(result.candidates.size()) - 1;
      }
  return result;
}

std::string formatCandidates(const SearchResult &result, const ClusterSpec &spec) {
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line,
                "llm-partition candidates for %lld x %lld %s devices (%s each, %.0f%% usable); "
                "max_batch_tokens %lld, max_num_seqs %lld, max_context %lld\n",
                static_cast<long long>(spec.nodes), static_cast<long long>(spec.devicesPerNode),
                spec.device.kind.c_str(),
                formatBytes(static_cast<double>(spec.device.memoryBytes)).c_str(),
                kMemoryUtilization * 100, static_cast<long long>(spec.serving.maxBatchTokens),
                static_cast<long long>(spec.serving.maxNumSeqs),
                static_cast<long long>(spec.serving.maxContext));
  out += line;
  std::snprintf(line, sizeof line, "%-3s %3s %3s %3s %4s  %-10s %10s %10s %10s %9s %5s %11s %10s %12s  %s\n",
                "", "tp", "pp", "sp", "rep", "layers", "weights", "activ.", "kv cache",
                "kv blocks", "seqs", "prefill ms", "decode ms", "decode tok/s", "status");
  out += line;
  for (size_t i = 0; i < result.candidates.size(); ++i) {
    const Candidate &c = result.candidates[i];
    std::string layers;
    for (int64_t n : c.stageLayers)
      layers += (layers.empty() ? "" : "/") + std::to_string(n);
    if (layers.size() > 10)
      layers = layers.substr(0, 7) + "...";
    bool chosen = static_cast<int>(i) == result.chosen;
    std::string status = chosen ? "chosen"
                         : c.rejected.empty() ? "feasible"
                                              : "rejected: " + c.rejected;
    bool evaluated = c.decodeSeconds > 0;
    std::snprintf(line, sizeof line,
                  "%-3s %3d %3d %3d %4lld  %-10s %10s %10s %10s %9lld %5lld %11.4g %10.4g %12.4g  %s\n",
                  chosen ? "=>" : "", c.tp, c.pp, c.sp, static_cast<long long>(c.replicas),
                  layers.empty() ? "-" : layers.c_str(),
                  c.weightBytes > 0 ? formatBytes(c.weightBytes).c_str() : "-",
                  c.activationBytes > 0 ? formatBytes(c.activationBytes).c_str() : "-",
                  c.kvCacheBytes > 0 ? formatBytes(c.kvCacheBytes).c_str() : "-",
                  static_cast<long long>(c.kvBlocks), static_cast<long long>(c.concurrentSeqs),
                  evaluated ? c.prefillSeconds * 1e3 : 0.0,
                  evaluated ? c.decodeSeconds * 1e3 : 0.0,
                  evaluated ? c.decodeTokensPerSecond : 0.0, status.c_str());
    out += line;
  }
  if (result.chosen < 0)
    out += "no feasible candidate\n";
  return out;
}

} // namespace llmir::compiler

// Kernel launchers of the .cu files, on plain types only so that nvcc never
// sees protobuf or the engine's headers. Each returns the launch's
// cudaError_t as an int (0: queued).
#pragma once

#include "llmir/engine/PeerExchange.h"

#include <cstddef>
#include <cstdint>

struct CUstream_st; // cudaStream_t is CUstream_st *

namespace llmir::engine::cuda::detail {

enum class Storage { F32, F16, BF16 };

/// cudaStream_t without the runtime's header; every launcher queues its
/// kernel on `stream` (nullptr: the legacy default stream).
using Stream = ::CUstream_st *;

/// Whether the environment variable `name` is "0": how the backend's
/// switches for measuring (LLMIR_CUDA_GRAPHS, _FUSIONS, _PDL,
/// _GROUP_ATTENTION, _FUSED_ROPE, _MMA_GEMV) are turned off.
bool switchedOff(const char *name);
/// The positive integer in the environment variable `name`, else `fallback`:
/// how the backend's sizes for measuring (LLMIR_CUDA_GEMM_MIN_TOKENS,
/// _MMA_DECODE_ROWS, _DECODE_SPLITS) are set.
int64_t countFromEnv(const char *name, int64_t fallback);
/// Whether `p` is a multiple of `bytes` (a kernel's vector loads and stores
/// need it of every pointer they take).
inline bool alignedTo(const void *p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}
/// LLMIR_CUDA_KERNEL_CLOCK (measuring, KernelClock.h): each translation
/// unit that launches dependent kernels registers how to point its copy of
/// the device-side table at the clock's slots (no relocatable device code:
/// a __device__ variable is per unit); setKernelClock calls them all.
/// A grid's slot of the table (DependentLaunch.cuh writes it, KernelClock.cpp
/// reads it): key (grid id + 1), first release, the sum of later releases
/// past it, runs, grid size, block size, two unused, then the sums of each
/// mark's time past the release (recordKernelMark).
constexpr int kKernelClockWords = 16;
constexpr int kKernelClockMarks = 8; // words 8 .. 15
using KernelClockSetter = int (*)(void *slots, uint64_t mask);
void registerKernelClockSetter(KernelClockSetter setter);
/// 0, or the first failing setter's cudaError_t.
int setKernelClock(void *slots, uint64_t mask);
/// Whether kernels are launched as programmatic dependents of the kernel
/// before them (DependentLaunch.cuh): on devices of compute capability 9.0
/// and up, unless LLMIR_CUDA_PDL=0. Read once per process.
bool dependentLaunchEnabled();
/// Whether decode attention runs one block per KV head's group of query
/// heads (groupDecodeKernel in Attention.cu) where it applies, unless
/// LLMIR_CUDA_GROUP_ATTENTION=0 (kept for measuring). Read once per process.
bool groupDecodeEnabled();
/// From how many query rows a decode step's group attention over a bf16
/// cache (head dims 64 and 128) scores and sums on tensor cores
/// (groupDecodeKernel's Mma): 16, or
/// LLMIR_CUDA_MMA_DECODE_ROWS=N (for measuring). Read once per process.
int64_t mmaDecodeRows();
/// Whether a decode step's two ROPEs and KV store run inside the group
/// decode kernel (ropeStoreAttend), unless LLMIR_CUDA_FUSED_ROPE=0
/// (kept for measuring). Read once per process.
bool fusedRopeEnabled();
/// Whether a prefill's query rotation runs inside the tensor-core prefill
/// attention (prefillRopeAttention), unless LLMIR_CUDA_PREFILL_ROPE=0 (kept
/// for measuring). Read once per process.
bool prefillRopeEnabled();
/// Whether a decode step of few rows with fused RoPE over a bf16 cache (head
/// dimension 64) runs warpDecodeKernel, a warp a query head, instead of
/// groupDecodeKernel, unless LLMIR_CUDA_WARP_DECODE=0 (kept for measuring).
/// Read once per process.
bool warpDecodeEnabled();
/// Whether flash-decoding's splits of the group decode attention merge as a
/// thread-block cluster through distributed shared memory (compute
/// capability 9.0 and up), unless LLMIR_CUDA_CLUSTER_MERGE=0 (kept for
/// measuring). Read once per process.
bool clusterMergeEnabled();
/// Whether a product's bf16 input halves are written by the kernel that
/// produces its input (cuda::splitInputFor), unless
/// LLMIR_CUDA_SPLIT_IN_PRODUCERS=0 (kept for measuring). Read once per process.
bool splitIntoProducersEnabled();

int widen(Stream stream, const void *src, Storage storage, int64_t n, float *dst);
/// One LINEAR of a group sharing its input: y[T, N] = x[T, K] * w[N, K]^T
/// (+ bias[N] when bias is not null).
struct LinearSegment {
  const void *w;
  int64_t N;
  const float *bias;
  float *y;
};
constexpr int kMaxLinearSegments = 4;
/// cuda::ResidualNorm on the device (linear16, one token). Producer side
/// (sum set): the one segment's y plus `residual` stored in `sum`, and each
/// block's sum of the squares of its rows of it in partials[block]. Consumer
/// side (weight set): x is the sum; staged as weight * (x * scale), scale
/// from the `count` partials; block 0 stores the normed row in `normed`.
struct ResidualNormDevice {
  const float *residual;
  float *sum;
  double *partials;
  int count;
  const float *weight;
  float eps;
  float *normed;
  /// Consumer side: x's first loads issued with the partials' (measuring:
  /// LLMIR_CUDA_NORM_EARLY_X=1 on; off by default).
  bool earlyX;
};
/// cuda::PeerExchange on the device (linear16, one token): this rank's view
/// of one exchange site. Producer side (exchangeOut): the one segment's rows
/// also go to row `rank` of every rank's slots.
/// Consumer side (exchangeIn): x is the ranks' slot rows summed in rank
/// order plus `residual` once they have arrived, staged normalised; block 0
/// stores the sum and the normed row; the last block empties the site.
/// ranks 0: none.
struct ExchangeDevice {
  float *slots[kMaxExchangeRanks];     // rank q's [ranks][width] floats of this site
  uint32_t *arrivals;                  // this rank's: its consumer blocks done with the site
  int *timedOut;                       // this rank's: the peer waited for in vain, + 1
  uint64_t timeoutNs;                  // how long a consumer waits for a peer's rows
  int rank, ranks;
  int64_t width;
  const float *residual;
  float *sum;
  const float *weight;
  float eps;
  float *normed;
};
struct LinearSegments {
  LinearSegment segment[kMaxLinearSegments];
  int count;
  unsigned firstBlock[kMaxLinearSegments]; // filled by linear16
  /// Row blocks of all segments (filled by linear16): a grid of fewer
  /// blocks (looped, see loopedNormConsumers) takes them in strides.
  unsigned rowBlocks;
  /// SwiGLU fused: exactly two segments of one N, gate then up; segment 0's
  /// y receives silu(gate + bias) * (up + bias) and segment 1's y is unused.
  bool pairedSwiglu;
  ResidualNormDevice produce; // sum null: none
  ResidualNormDevice consume; // weight null: none
  ExchangeDevice exchangeOut;  // ranks 0: none
  ExchangeDevice exchangeIn;   // ranks 0: none
};
/// Every segment's product for 16-bit w, read in its stored dtype with f32
/// accumulation (no widened copy of the weights), in one launch.
int linear16(Stream stream, const float *x, int64_t T, int64_t K, Storage storage,
             LinearSegments segments);
/// Whether linear16 stages a token's x [K] in shared memory (where
/// ResidualNormDevice's consumer side applies), and the blocks of its grid
/// for one token and one unpaired segment of N rows (the producer side's
/// partial count).
bool oneTokenStagesX(int64_t K);
int64_t oneTokenBlocks(int64_t K, int64_t N);
/// Whether the one-token GEMV of N rows of K (unpaired, not a norm's
/// consumer: as oneTokenBlocks) holds its whole grid at once on the
/// multiprocessors of the current device but `busy` of them; false where
/// the device does not say.
bool oneTokenGemvFitsBeside(int64_t K, int64_t N, int64_t busy);
/// Waves of the one-token GEMV over `rows` rows of K (rows a block, blocks
/// a multiprocessor and multiprocessors of the current device); 0 where
/// the device does not say.
double oneTokenWaves(int64_t K, int64_t rows, bool paired);
/// Whether a one-token GEMV that normalises its x as it stages it (the
/// consumer side of ResidualNormDevice) launches at most one wave of blocks,
/// each looping over row blocks, so that x is staged and normalised once a
/// block whatever the rows: unless LLMIR_CUDA_LOOPED_CONSUMERS=0 (kept for
/// measuring). Read once per process.
bool loopedNormConsumers();
/// hi[i] = bf16(x[i]), lo[i] = bf16(x[i] - hi[i]) for i < n.
/// The same products for 2 to 16 tokens with bf16 weights (K a multiple of
/// 8) on tensor cores: x rounded to bf16, plus its remainder's product when
/// `highest` (the split GEMMs' arithmetic, Matmul.cu).
int linearMma(Stream stream, const float *x, int64_t T, int64_t K, bool highest,
              LinearSegments segments);
int splitBf16(Stream stream, const float *x, int64_t n, void *hi, void *lo);
/// y[T, N] = halves[0:T] + halves[T:2T] (+ bias[N]), halves [2T, N].
int joinHalves(Stream stream, const float *halves, int64_t T, int64_t N,
               const float *bias, float *y);
/// A group's outputs from one GEMM over its side-by-side weights: product
/// [T, sum of N] (then [T, sum of N] of remainder products when `halves`,
/// joined as joinHalves does), biases added; with pairedSwiglu, segment 0's
/// y = silu(gate) * up.
int scatterProduct(Stream stream, const float *product, int64_t T, bool halves,
                   const LinearSegments &segments);
/// ids[r] = the lowest index of the maximum of row r of logits [rows, V];
/// hostIds[r] too where given (pinned host memory).
int argmaxRows(Stream stream, const float *logits, int64_t rows, int64_t V,
               int32_t *ids, int32_t *hostIds = nullptr);
/// One row's sampling: engine::SamplingParams and the uniform draw in [0, 1).
struct RowSampling {
  float temperature;
  float topP;
  int32_t topK;
  int32_t unused;
  double uniform;
};
/// ids[r] = the token engine::sampleWithUniform draws from row r of logits
/// with params[r] (device memory); logprobs[r] (when not null) = its
/// log-softmax over the raw logits; hostIds / hostLogprobs (pinned host
/// memory, when not null) get the same, written by the kernel. A row goes
/// to several blocks where `scratch` holds samplingScratchBytes(rows) of
/// device memory (else one block a row); LLMIR_CUDA_SAMPLE_BLOCKS=N caps
/// the blocks a row (1: one, as before).
int sampleRows(Stream stream, const float *logits, int64_t rows, int64_t V,
               const RowSampling *params, int32_t *ids, float *logprobs, int32_t *hostIds,
               float *hostLogprobs, void *scratch, size_t scratchBytes);
size_t samplingScratchBytes(int64_t rows);
int addBias(Stream stream, float *y, const float *bias, int64_t T, int64_t N);
int rmsNorm(Stream stream, const float *x, int64_t T, int64_t H, const float *weight,
            float eps, float *y);
/// sum = a + b, then y = rmsNorm(sum) per row of H; with hi, y's bf16
/// halves too (splitBf16's: hi, and lo when not null). b null: a is the sum
/// already (sum not written).
int addRmsNorm(Stream stream, const float *a, const float *b, float *sum, int64_t T,
               int64_t H, const float *weight, float eps, float *y, void *hi = nullptr,
               void *lo = nullptr);
int rope(Stream stream, float *x, int64_t T, int64_t numHeads, int64_t headDim,
         const int32_t *positions, float theta);
/// y = x rotated (y may be x).
int ropeWithFrequencies(Stream stream, const float *x, float *y, int64_t T, int64_t numHeads,
                        int64_t headDim, const int32_t *positions,
                        const float *inverseFrequencies);
/// y = silu(gate) * up; with hi, y's bf16 halves too (as addRmsNorm's).
int swiglu(Stream stream, const float *gate, const float *up, float *y, int64_t n,
           void *hi = nullptr, void *lo = nullptr);
/// silu(gate) * up from bf16 gate and up products, row t of each at
/// t * stride elements: y [T, N] and/or its bf16 halves, as swiglu writes
/// them. N and stride multiples of 8, pointers 16-byte aligned.
int swigluBf16(Stream stream, const void *gate, const void *up, int64_t stride, int64_t T,
               int64_t N, float *y, void *hi, void *lo);
int add(Stream stream, const float *a, const float *b, float *y, int64_t n);
/// *to = value by a kernel, in stream order (a copy from pageable memory
/// would make the host wait for the stream).
int setWord(Stream stream, int32_t *to, int32_t value);
/// to[0, n) = from[0, n) by a kernel: `from` may be pinned host memory
/// (read over the bus, as UVA maps it), a copy without the copy engine.
int copyWords(Stream stream, const int32_t *from, int32_t *to, int64_t n);
/// Where takeInstead is given and *takeInstead is nonzero (device memory,
/// read by the kernel), the ids come from idsInstead. tableStride > 0: the
/// table's rows that many elements apart, else cols.
int embedding(Stream stream, const int32_t *ids, int64_t T, const void *table, Storage storage,
              int64_t rows, int64_t cols, int64_t vocabOffset, float *y,
              const int32_t *idsInstead = nullptr, const int32_t *takeInstead = nullptr,
              int64_t tableStride = 0);

struct AttentionGeometry {
  int64_t numTokens, numHeads, numKvHeads, headDim;
  float scale;
  int64_t kvShards, kvShard;
  int64_t blockSize;
  const int32_t *positions, *tokenSeq, *blockTables;
  int64_t blockTableStride;
  /// This layer's [numBlocks][blockSize][Hkv][D], f32 or (bf16Cache)
  /// bf16 elements.
  void *keys, *values;
  bool bf16Cache;
  /// Floats between consecutive rows of the step's k and v (Hkv * D, or
  /// 2 * Hkv * D for the gathered [k | v] rows of SP_ATTENTION).
  int64_t kvRowStride;
  /// Floats between consecutive rows of the step's q (Hq * D; the tensor-core
  /// prefill kernel also reads q as columns of a wider packed product).
  int64_t qRowStride;
  /// Query rows [firstQuery, firstQuery + numQueries) of the step are
  /// attended; q and out hold only those rows.
  int64_t firstQuery, numQueries;
  /// ATTENTION_PARTIAL: attend only the positions of this rank's blocks
  /// (kvShards / kvShard) and write, per row, every head's normalised
  /// output then every head's log-sum-exp (-inf and zeros when none).
  bool partial;
  /// Flash-decoding: with splits > 1 (not with partial) each (query, head)
  /// is attended by `splits` blocks over consecutive parts of its visible
  /// keys, each writing a partial row as `partial` does, side by side:
  /// out [numQueries, splits * (numHeads * D + numHeads)], for
  /// mergeAttention. 1: one block.
  int64_t splits;
  /// With splits > 1: when mergedOut is given, the last split block of each
  /// (query, head) merges the partials into mergedOut [numQueries, numHeads
  /// * D] itself (no mergeAttention launch), counting finished splits in
  /// splitCounters [numQueries * numHeads] (zero before and after).
  float *mergedOut;
  unsigned *splitCounters;
  /// Sliding window W (0: none): token at p sees p - W < j <= p.
  int64_t slidingWindow;
  /// Uneven head split (kvGroup > 0): query head h uses KV head
  /// (headOffset + h) / kvGroup - headOffset / kvGroup (cpu::kvHeadOf).
  int64_t kvGroup, headOffset;
  /// Medium matmul precision: the tensor-core prefill takes queries and
  /// probabilities rounded to bf16 (no lo half).
  bool bf16Queries;
  /// RoPE folded into the tensor-core prefill (prefillRotatesQueries): q is
  /// the query before RoPE, rotated in
  /// registers by these rotations [numTokens][D / 2][cos, sin] (written by
  /// ropeAndStore). Null: q is rotated.
  const float *queryRotations;
  /// The tensor-core prefill's output as the next product's bf16 halves
  /// ([T][numHeads * D], hi and at highest precision lo: splitOne's), beside
  /// or (null out) instead of the f32 rows. Null: none.
  void *outHi, *outLo;
  /// A one-row decode step on the warp decode kernel takes its
  /// multiprocessors whole (ropeStoreAttention decides: oneTokenGemvFitsBeside).
  bool wholeMultiprocessors;
};

constexpr int64_t kMaxHeadDim = 256;

int storeKeysAndValues(Stream stream, const float *k, const float *v,
                       const AttentionGeometry &g);
/// qOut = rope(q) ([T, qHeads * D]), kOut = rope(k) ([T, kvRowStride]), and
/// kOut and v stored as storeKeysAndValues stores k and v: an attention's
/// two ROPEs and its store in one launch. qHeads 0: the keys only (the
/// queries' rotation folded into the prefill attention), and with
/// queryRotations the queries' rotations written there
/// (AttentionGeometry::queryRotations). kOut null: the rotated keys are
/// stored in the cache only. dense (bf16, cuda::ropeStoreDense): q (rows
/// g.qRowStride apart) rotated, the rotated keys and v written there too,
/// qOut unused.
int ropeAndStore(Stream stream, const float *q, float *qOut, int64_t qHeads,
                 const float *qFrequencies, const float *k, float *kOut,
                 const float *kFrequencies, const float *v, const AttentionGeometry &g,
                 float *queryRotations = nullptr, void *dense = nullptr);
/// The operands of ropeAndStore, for ropeStoreAttend: q [T, numHeads * D]
/// and k [T, kvRowStride] before RoPE, their rotated outputs (still
/// written), the frequencies, v.
struct FusedRope {
  const float *q = nullptr;
  float *qOut = nullptr;
  const float *qFrequencies = nullptr;
  const float *k = nullptr;
  float *kOut = nullptr;
  const float *kFrequencies = nullptr;
  const float *v = nullptr;
};
/// Whether ropeStoreAttend takes this geometry: a decode step's query rows
/// (one token a sequence, the caller's to know) on the group decode kernel,
/// no uneven head split, no sequence-parallel key split.
bool ropeStoreAttendApplies(const AttentionGeometry &g);
/// ropeAndStore, then attend() of the rotated queries, as one launch of the
/// group decode kernel (g as attend() takes it, splits included).
int ropeStoreAttend(Stream stream, const FusedRope &rope, const AttentionGeometry &g,
                    float *out);
/// Rows per prefill tile (prefillAttend).
constexpr int64_t kPrefillTileRows = 64;
/// Whether prefillAttend can take this attention (plain ATTENTION, head dim
/// at most 128).
bool prefillAttendApplies(const AttentionGeometry &g);
/// attend() for steps with runs of rows of one sequence: tiles [numTiles][2]
/// (first row, count <= kPrefillTileRows, rows consecutive in the step and
/// of one sequence) covering every row. A bf16 cache with head dimension 16,
/// 32, 64, 96 or 128 and a positive scale runs on tensor cores (queries and
/// probabilities split into bf16 halves: within 1e-5 of f32), anything else
/// on CUDA cores. With g.queryRotations (tensor cores only) q is the
/// query before RoPE; with g.outHi (tensor cores only) the output's bf16
/// halves are written too, out may be null.
int prefillAttend(Stream stream, const float *q, const AttentionGeometry &g,
                  const int32_t *tiles, int64_t numTiles, float *out);
/// Whether prefillAttend can take g.queryRotations for this geometry (the
/// tensor-core kernel, a head dimension a multiple of 32).
bool prefillRotatesQueries(const AttentionGeometry &g);
int attend(Stream stream, const float *q, const AttentionGeometry &g, float *out);
/// ATTENTION_MERGE: gathered [T, shards * (H * D + H)] -> out [T, H * D].
int mergeAttention(Stream stream, const float *gathered, int64_t T, int64_t shards,
                   int64_t numHeads, int64_t headDim, float *out);

} // namespace llmir::engine::cuda::detail

// The CUDA math kernels: the entry points of CpuKernels.h on raw DEVICE
// pointers, with the same math (f32 arithmetic, weights widened from their
// stored dtype, HF rotate_half RoPE, paged causal GQA attention over a cache
// laid out as KvCache). Work is queued on the current device's default
// stream; a Status reports a rejected argument or a failed launch, and
// Context::synchronize() the errors of the work itself. Callers guarantee
// sizes, as for the CPU kernels.
#pragma once

#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/KvCache.h"
#include "llmir/engine/PeerExchange.h"
#include "llmir/support/Status.h"

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

struct CUstream_st; // cudaStream_t is CUstream_st *

namespace llmir::engine::cuda {

/// cudaStream_t without the runtime's header. The kernels below queue on
/// the stream given (nullptr: the legacy default stream).
using Stream = ::CUstream_st *;

/// The backend's stream and cuBLAS handles (f32 weights go through SGEMM in
/// pedantic f32, bf16 weights through tensor cores) with their workspace.
class Context {
public:
  /// Fails when no CUDA device is usable or cuBLAS cannot start. Creates a
  /// stream that orders itself with the legacy default stream.
  static Result<Context> create();
  Context(Context &&) noexcept;
  Context &operator=(Context &&) noexcept;
  ~Context();

  Stream stream() const;
  /// Waits for the stream's work; returns the first error it raised.
  Status synchronize();
  /// The device scratch linear() uses for many tokens; it moves when a
  /// larger step needs more, which a captured CUDA graph must notice.
  const void *scratchAddress() const;
  /// Medium matmul precision (MatmulPrecision::Medium): bf16 weights'
  /// tensor-core products take x rounded to bf16 instead of two halves
  /// (half the work, bf16-level error). Default off: within f32 rounding.
  void setBf16Products(bool bf16);
  /// How many times a prefill product's cuBLASLt candidates were timed:
  /// once for each (weight shape, residual added, bucket of token counts,
  /// the power of two at or above T) outside a graph capture.
  int64_t productTunings() const;

  struct State;
  State &state() { return *state_; }

private:
  explicit Context(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

/// y[T, N] = x[T, K] * w[N, K]^T + bias[N] (bias may be null), on the
/// context's stream: cuBLAS SGEMM for f32 weights; bf16/f16 weights read in
/// place with f32 accumulation by a GEMV for few tokens; bf16 weights on
/// tensor cores from 8 tokens, x split into two bf16 halves so the result
/// stays within f32 rounding, or rounded to bf16 with
/// Context::setBf16Products (no widened copy of the weights either way).
Status linear(Context &context, const float *x, int64_t T, const WeightView &w,
              const float *bias, float *y);

/// One product of linearGroup.
struct LinearOutput {
  WeightView w; // [N, K]
  const float *bias = nullptr;
  float *y = nullptr; // [T, N]
};
/// The residual ADD and the RMS_NORM of its sum between two products of one
/// token (a layer's O projection and gate/up; down and the next layer's
/// Q/K/V), done by the products' GEMVs instead of a launch of their own:
/// the producer adds `residual` to its y, stores the sum and its blocks'
/// sums of squares (`partials`); the consumer reads the sum, normalises it
/// as it stages it and stores the normed row. The same values as ADD and
/// RMS_NORM between them (squares summed in double in another order).
/// takesResidualNorm says where it applies.
struct ResidualNorm {
  const float *residual = nullptr;
  float *sum = nullptr;
  /// Scratch of partialCount doubles, partialCount =
  /// residualNormPartials(producer's K, H): one a producer block.
  double *partials = nullptr;
  int64_t partialCount = 0;
  const float *weight = nullptr; // the norm's, H
  float eps = 0.0f;
  float *normed = nullptr;
};
/// Whether a producer with weights `producer` [H, K] and a consumer with
/// weights `consumer` [N, H] can pass the norm over T tokens.
bool takesResidualNorm(const WeightView &producer, const WeightView &consumer, int64_t T);
/// Whether a one-token consumer of `rows` rows over H (paired: a gate/up
/// pair's rows, each block computing both) gains from taking the norm. Each
/// of its blocks stages and normalises the sum; on an H200 that cost ~1.8
/// us a wave of blocks more than a plain staging, against ~5 us for the
/// norm's own launch: an 8B shape's gate/up (4.5 waves) lost 7.9 us a layer
/// and made batch-1 decode 2.5% slower. A consumer's grid is now one wave of
/// blocks looping over its rows, so every consumer gains (8B batch 1 -1.0%,
/// 1.1B -1.6%); with LLMIR_CUDA_LOOPED_CONSUMERS=0 at most two waves.
bool residualNormConsumerPays(int64_t H, int64_t rows, bool paired);
int64_t residualNormPartials(int64_t producerK, int64_t H);
/// Several LINEARs of the same x [T, K] (weights of one dtype and K, e.g.
/// Q, K and V): for few tokens one launch reads all their weights. xSplit:
/// x's bf16 halves are already where splitInputFor(T, outputs) said (its
/// producer wrote them), so x is not split again. x may be null then (its
/// producer wrote the halves only): an error where the halves cannot be
/// used (a scratch that had to grow, or a GEMV-sized T).
Status linearGroup(Context &context, const float *x, int64_t T,
                   std::span<const LinearOutput> outputs, bool xSplit = false);
/// A group's products as one GEMM into packed [T, sum of N] (each output's
/// columns in the group's order; the outputs' y are not written): a
/// prefill's Q, K and V, whose consumers read them as columns
/// (ropeAndStore's kvRowStride, prefillRopeAttention's qRowStride), are one
/// product of N = 2,560 at the 1.1B shape instead of one of 2,048 and two
/// of 256 that fill a third of the GPU. Where takesPackedGroup holds: bf16
/// weights side by side (packed at load), no biases, at least 512 tokens.
bool takesPackedGroup(int64_t T, std::span<const LinearOutput> outputs);
Status linearGroupPacked(Context &context, const float *x, int64_t T,
                         std::span<const LinearOutput> outputs, bool xSplit, float *packed);
/// One product y = x W^T + bias + residual with the residual added by the
/// product itself (cuBLASLt's C, y its D): a residual ADD after a prefill's
/// O or down projection without a pass of its own. Where
/// takesResidualInProduct(w, T) holds (bf16 weights on cuBLAS, at least 512
/// tokens: the products of x's two halves are separate GEMMs there); an
/// error otherwise. residual [T, N] must not alias y.
bool takesResidualInProduct(const WeightView &w, int64_t T);
Status linearAddResidual(Context &context, const float *x, int64_t T, const LinearOutput &output,
                         const float *residual, bool xSplit = false);
/// linearGroup as the producer (`produces`: one output) or the consumer
/// (`consumes`: x is the sum, outputs' K its width) of a ResidualNorm,
/// exactly one of them; an error where takesResidualNorm does not hold.
Status linearGroupWithNorm(Context &context, const float *x, int64_t T,
                           std::span<const LinearOutput> outputs, const ResidualNorm *produces,
                           const ResidualNorm *consumes);
/// Where the products of `outputs` over T tokens on cuBLAS (bf16 weights,
/// more tokens than the GEMVs take) read x's bf16 halves: hi, and lo at
/// highest precision (x = hi + lo); the context's scratch, sized now. The
/// kernel producing x may write them there (addRmsNorm's split) and the
/// product then skip its split launch (xSplit). Null hi: the product does
/// not split x.
struct SplitInput {
  void *hi = nullptr, *lo = nullptr;
};
Result<SplitInput> splitInputFor(Context &context, int64_t T,
                                 std::span<const LinearOutput> outputs);
/// y[T, N] = silu(gate) * up for the products gate and up of x (a LINEAR
/// pair and the SWIGLU after it): one GEMV launch computing both rows of
/// each n for 16-bit weights at decode sizes (gate.y and up.y untouched);
/// otherwise linearGroup into gate.y and up.y, then the SWIGLU kernel. The
/// same values as the three instructions one after the other. With `next`
/// (the product that reads y, a layer's down projection): when the SWIGLU
/// kernel runs and that product takes splitInputFor's halves, the kernel
/// writes them (and y only if not next->halvesOnly) and sets next->split;
/// the product then runs with xSplit.
struct NextProduct {
  std::span<const LinearOutput> outputs;
  bool halvesOnly = false; // no later instruction reads y
  bool split = false;      // out: y's halves were written
};
Status linearSwiglu(Context &context, const float *x, int64_t T, const LinearOutput &gate,
                    const LinearOutput &up, float *y, bool xSplit = false,
                    NextProduct *next = nullptr);
/// The ALL_REDUCE, residual ADD and RMS_NORM between two one-token
/// products of a tensor-parallel layer done by the products through a
/// PeerExchange (PeerExchange.h), at exchange site `site`: the producer
/// (linearExchanging: one product, its partial rows) stores its rows into
/// every rank's site; the consumer (linearGroupExchanged,
/// linearSwigluExchanged: x is not read) waits for the peers' rows, sums the
/// ranks' rows in rank order plus `residual`, stores that sum and the normed
/// row (block 0) and stages the normed row for its products; its last block
/// empties the site. Every rank makes the same sequence of calls, a site
/// used once a step, two sites or more a step (why: PeerExchange.h).
/// takesExchangedNorm says where it applies.
struct ExchangedNorm {
  PeerExchange exchange;
  int site = 0;
  const float *residual = nullptr;
  float *sum = nullptr;
  const float *weight = nullptr; // the norm's, width
  float eps = 0.0f;
  float *normed = nullptr;
};
/// Whether a producer with weights `producer` [H, K] and a consumer with
/// weights `consumer` [N, H] can exchange through `exchange` (H within its
/// width).
bool takesExchangedNorm(const WeightView &producer, const WeightView &consumer,
                        const PeerExchange &exchange);
Status linearExchanging(Context &context, const float *x, const LinearOutput &output,
                        const ExchangedNorm &to);
Status linearGroupExchanged(Context &context, std::span<const LinearOutput> outputs,
                            const ExchangedNorm &from);
Status linearSwigluExchanged(Context &context, const LinearOutput &gate, const LinearOutput &up,
                             float *y, const ExchangedNorm &from);
/// linearSwiglu as the consumer of a ResidualNorm (x is the sum).
Status linearSwigluWithNorm(Context &context, const float *x, int64_t T,
                            const LinearOutput &gate, const LinearOutput &up, float *y,
                            const ResidualNorm &consumes);

/// ids[r] = the lowest index of the maximum of row r of logits [rows, V]
/// (greedy sampling as engine::argmax, on the device), and hostIds[r] where
/// given: pinned host memory the kernel writes itself, readable once the
/// stream has passed it (no device-to-host copy queued behind it).
Status argmaxRows(Stream stream, const float *logits, int64_t rows, int64_t V,
                  int32_t *ids, int32_t *hostIds = nullptr);

/// One row's sampling as the device reads it (engine::RowSampling without
/// the logprob flag).
struct SamplingRow {
  float temperature = 0;
  float topP = 1;
  int32_t topK = 0;
  int32_t unused = 0;
  double uniform = 0;
};
/// ids[r] = the token engine::Sampler::sample(row r, params[r].uniform)
/// draws from logits [rows, V], without sorting the vocabulary (radix
/// selection); logprobs[r], when not null, its log-softmax over the raw
/// logits. params, ids and logprobs are device memory; hostIds and
/// hostLogprobs, when not null, pinned host memory the kernel writes the
/// same into (readable once the stream has passed it, as argmaxRows').
/// With `scratch` (samplingScratchBytes(rows) of device memory) a row is
/// split over several blocks where the device has room (a cooperative
/// launch), else one block a row.
Status sampleRows(Stream stream, const float *logits, int64_t rows, int64_t V,
                  const SamplingRow *params, int32_t *ids, float *logprobs,
                  int32_t *hostIds = nullptr, float *hostLogprobs = nullptr,
                  void *scratch = nullptr, size_t scratchBytes = 0);
/// Device memory sampleRows' rows share among their blocks.
size_t samplingScratchBytes(int64_t rows);

/// y = x * rsqrt(mean(x^2) + eps) * weight, per row of H.
Status rmsNorm(const float *x, int64_t T, int64_t H, const float *weight,
               float eps, float *y,
               Stream stream = nullptr);

/// sum = a + b, then y = rmsNorm(sum) as rmsNorm does (the residual add
/// and the norm after it, one pass); with split.hi, y's bf16 halves too,
/// for the product that reads y (splitInputFor), and y may be null (the
/// halves only).
/// b null: a is the sum already (linearAddResidual's y), sum not written.
Status addRmsNorm(const float *a, const float *b, float *sum, int64_t T, int64_t H,
                  const float *weight, float eps, float *y, Stream stream = nullptr,
                  SplitInput split = {});

/// In place HF rotate_half RoPE of x[T, numHeads * headDim]; token t is at
/// positions[t] (a device array).
Status rope(float *x, int64_t T, int64_t numHeads, int64_t headDim,
            const int32_t *positions, float theta,
            Stream stream = nullptr);
/// The same with the headDim / 2 inverse frequencies given (a device array;
/// The same from x into y (y may be x).
Status rope(const float *x, float *y, int64_t T, int64_t numHeads, int64_t headDim,
            const int32_t *positions, const float *inverseFrequencies,
            Stream stream = nullptr);
/// cpu::ropeInverseFrequencies computes them, scaled or not).
Status rope(float *x, int64_t T, int64_t numHeads, int64_t headDim,
            const int32_t *positions, const float *inverseFrequencies,
            Stream stream = nullptr);

/// y = silu(gate) * up; with split.hi, y's bf16 halves too, y may then be
/// null (as addRmsNorm).
Status swiglu(const float *gate, const float *up, float *y, int64_t n,
              Stream stream = nullptr, SplitInput split = {});
/// y = a + b.
Status add(const float *a, const float *b, float *y, int64_t n,
           Stream stream = nullptr);

/// Ids an embedding takes instead of its own where *when (device memory,
/// read by the kernel) is nonzero: a step whose tokens the last argmax left
/// on the device reads them there, the choice made per step by its upload,
/// with no copy in front of its graph.
struct IdsInstead {
  const int32_t *ids = nullptr;
  const int32_t *when = nullptr;
};

/// y[T, H] = rows of table[V_local, H] for ids - vocabOffset; ids outside
/// the local vocabulary give zero rows.
Status embedding(const int32_t *ids, int64_t T, const WeightView &table,
                 int64_t vocabOffset, float *y,
                 Stream stream = nullptr, IdsInstead instead = {});

/// y's row i = x[rows, width]'s row selected[i] (device indices; one outside
/// [0, rows) gives a zero row): SELECT_ROWS as one launch. rowStride > 0:
/// x's rows that many floats apart (columns of a wider packed product).
Status selectRows(const float *x, int64_t rows, int64_t width, const int32_t *selected,
                  int64_t count, float *y, Stream stream = nullptr, int64_t rowStride = 0);

/// A paged KV cache in device memory, laid out as KvCache: per layer, for K
/// and for V, [numBlocks][blockSize][numKvHeads][headDim] f32, or bf16 when
/// `bf16` (stored rounded to nearest even, read back widened).
struct DeviceKvCache {
  KvCacheShape shape;
  void *keys = nullptr;
  void *values = nullptr;
  bool bf16 = false;
};

/// A step's per-token tables in device memory (see StepInput).
struct DeviceStep {
  int64_t numTokens = 0;
  const int32_t *positions = nullptr; // [numTokens]
  const int32_t *tokenSeq = nullptr;  // [numTokens]
  /// [numSequences][blockTableStride]: sequence s's block table is row s.
  const int32_t *blockTables = nullptr;
  int64_t blockTableStride = 0;
  /// Optional: the step's rows as tiles [numPrefillTiles][2] (first row,
  /// count of at most 64 consecutive rows of one sequence) covering every
  /// row; given, plain attention runs the tiled prefill kernel (key and
  /// value tiles shared by a tile's queries).
  const int32_t *prefillTiles = nullptr;
  int64_t numPrefillTiles = 0;
  /// Optional, for decode steps with few (token, head) pairs: plain
  /// attention splits each one's keys over this many blocks (flash-decoding)
  /// and merges them; attentionScratch holds numTokens * decodeSplits *
  /// (heads * headDim + heads) floats for the largest attention.
  int64_t decodeSplits = 1;
  float *attentionScratch = nullptr;
  /// numTokens * heads counters, zero between steps: the split blocks of a
  /// (token, head) count themselves and the last merges (no merge launch).
  unsigned *splitCounters = nullptr;
  /// Medium matmul precision: prefill attention on tensor cores takes the
  /// queries and probabilities rounded to bf16 instead of two halves each.
  bool bf16Queries = false;
};

/// The tiles DeviceStep::prefillTiles wants for a step whose row t belongs
/// to sequence tokenSeq[t]: runs of one sequence cut every 64 rows. Empty
/// when no run is longer than one row (a decode step).
std::vector<int32_t> prefillTiles(const std::vector<int32_t> &tokenSeq);

/// Writes this step's k, v [T, Hkv * D] into the cache (the blocks of this
/// rank when params.kvShards > 1), then causal grouped-query attention of
/// q [T, Hq * D] over each token's positions 0..p; out [T, Hq * D]. The step
/// must be valid for the cache. headDim must be at most 256. keysStored: k
/// and v are already in the cache (ropeAndStore).
Status pagedAttention(const float *q, const float *k, const float *v,
                      const DeviceStep &step,
                      const cpu::AttentionParams &params, DeviceKvCache &cache,
                      float *out,
                      Stream stream = nullptr, bool keysStored = false);
/// The two ROPEs feeding a plain ATTENTION and that attention's store in
/// one launch: qOut = rope(q), kOut = rope(k) (frequencies as the rope()
/// overloads take them), then kOut and v written into the cache as
/// pagedAttention would; pagedAttention then runs with keysStored. q and
/// qOut null: the keys and values only, and with queryRotations
/// [T][headDim / 2][cos, sin] the queries' rotations written there for
/// prefillRopeAttention. kvRowStride > 0: the floats between consecutive
/// rows of k, kOut and v (columns of linearGroupPacked's product; kOut may
/// be k, rotated in place), else their width.
Status ropeAndStore(const float *q, float *qOut, const float *qFrequencies, const float *k,
                    float *kOut, const float *kFrequencies, const float *v,
                    const DeviceStep &step, const cpu::AttentionParams &params,
                    DeviceKvCache &cache, Stream stream = nullptr,
                    float *queryRotations = nullptr, int64_t kvRowStride = 0);

/// Causal attention of one sequence's T rows over their own keys (a
/// prompt's prefill from position 0) in bf16: row t of q, k and v is
/// `rowStride` elements after row t - 1, head h of it at h * headDim; out
/// [T, heads * headDim]. The queries and keys rotated already; scores
/// accumulate in f32, the probabilities are rounded to bf16 before P V (as
/// the tensor-core prefill kernel at medium precision).
struct DenseAttention {
  int64_t tokens = 0, heads = 0, kvHeads = 0, headDim = 0;
  float scale = 1.0f;
  int64_t rowStride = 0;
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  void *out = nullptr;
};
/// The rows of q, k and v cudnnAttention reads for T rows: T rounded up to
/// a quarter octave (256, 320, 384, 448, 512, 640, ...), each such count
/// one execution plan (built in ~0.5-1.5 s on an H200) serving every
/// prompt length up to it. q, k and v's rows past T must hold finite values
/// (the causal mask keeps the prompt's rows off them) and out must have
/// room for that many rows (those past T may be written).
int64_t cudnnAttentionRows(int64_t T);
/// Whether cudnnAttention takes `shape` (pointers unread): cuDNN's fused
/// flash attention, loaded at run time (libcudnn.so.9; none: false), with an
/// execution plan for the shape (built at a shape's first call, kept).
/// LLMIR_CUDA_CUDNN_ATTENTION=0 turns it off.
bool cudnnAttentionTakes(Context &context, const DenseAttention &shape);
Status cudnnAttention(Context &context, const DenseAttention &attention);
/// "cudnn <version>", or why cudnnAttention takes nothing.
std::string cudnnAttentionDescription(Context &context);
/// ropeAndStore for a step whose attention runs on cudnnAttention: the
/// keys and values stored in the cache and the queries' rotations written
/// as ropeAndStore does with q null, and the rotated queries and keys and
/// the values also written as bf16 rows [Hq heads | Hkv heads | Hkv heads]
/// of `dense` (DenseAttention's q, k and v, rowStride (Hq + 2 Hkv) * D).
/// kOut: the rotated keys in f32 as ropeAndStore writes them (null: not
/// written). qRowStride / kvRowStride > 0: the floats between rows of q /
/// of k, kOut and v.
Status ropeStoreDense(const float *q, const float *qFrequencies, const float *k, float *kOut,
                      const float *kFrequencies, const float *v, const DeviceStep &step,
                      const cpu::AttentionParams &params, DeviceKvCache &cache, void *dense,
                      float *queryRotations, Stream stream = nullptr, int64_t qRowStride = 0,
                      int64_t kvRowStride = 0);
/// Whether ropeStoreAttention takes this step: a decode step (the caller
/// guarantees one token a sequence, each its own query row) of the group
/// decode kernel (no uneven head split, no sequence-parallel key
/// split; LLMIR_CUDA_FUSED_ROPE=0 turns it off for measuring).
bool ropeStoreAttentionApplies(const DeviceStep &step, const cpu::AttentionParams &params,
                               DeviceKvCache &cache);
/// Whether prefillRopeAttention takes this step: its rows in prefill tiles
/// (DeviceStep::prefillTiles) on the tensor-core kernel (a bf16 cache),
/// a head dimension a multiple of 32; LLMIR_CUDA_PREFILL_ROPE=0 turns it
/// off for measuring.
bool prefillRopeAttentionApplies(const DeviceStep &step, const cpu::AttentionParams &params,
                                 DeviceKvCache &cache);
/// pagedAttention(rope(q), ..., keysStored) for a step
/// prefillRopeAttentionApplies to (an error otherwise), q before RoPE:
/// each block rotates its query rows in registers by the rotations
/// ropeAndStore (null q) wrote, so the rotated queries are neither written
/// nor read back (at 2,048 tokens of the 1.1B shape, 34 MB a layer).
/// With outHalves (splitInputFor of the product reading out, the layer's O
/// projection) the kernel writes out's bf16 halves there too, and out may
/// be null (the halves only): the product's split launch goes.
/// qRowStride > 0: the floats between consecutive rows of q (columns of
/// linearGroupPacked's product), else its width.
Status prefillRopeAttention(const float *q, const float *queryRotations, const DeviceStep &step,
                            const cpu::AttentionParams &params, DeviceKvCache &cache,
                            float *out, Stream stream = nullptr, SplitInput outHalves = {},
                            int64_t qRowStride = 0);
/// The weight shape [N, K] of the one-token product that reads an output
/// (N = 0: none known).
struct ReaderShape {
  int64_t N = 0, K = 0;
};
/// ropeAndStore followed by pagedAttention(qOut, ..., keysStored) as one
/// launch, for a step ropeStoreAttentionApplies to (an error otherwise):
/// the same outputs, the same cache rows. `reader`: the product reading out
/// (16-bit weights, one token); a one-row step whose reader's grid fits the
/// multiprocessors the attention leaves keeps its multiprocessors to itself
/// (scheduling only: the same outputs).
Status ropeStoreAttention(const float *q, float *qOut, const float *qFrequencies, const float *k,
                          float *kOut, const float *kFrequencies, const float *v,
                          const DeviceStep &step, const cpu::AttentionParams &params,
                          DeviceKvCache &cache, float *out, Stream stream = nullptr,
                          ReaderShape reader = {});

/// ATTENTION_PARTIAL: stores k, v in this rank's blocks (params.kvShards /
/// kvShard), then attends each token over the visible positions of those
/// blocks; out [T, Hq * D + Hq] as cpu::partialAttention writes it.
Status partialAttention(const float *q, const float *k, const float *v,
                        const DeviceStep &step,
                        const cpu::AttentionParams &params,
                        DeviceKvCache &cache, float *out,
                        Stream stream = nullptr);

/// SP_ATTENTION: stores every row of kv [T, 2 * Hkv * D] (k then v), then
/// attends the step's rows [firstRow, firstRow + numRows): q and out hold
/// only those rows.
Status sliceAttention(const float *q, const float *kv, const DeviceStep &step,
                      int64_t firstRow, int64_t numRows,
                      const cpu::AttentionParams &params, DeviceKvCache &cache,
                      float *out,
                      Stream stream = nullptr);

/// ATTENTION_MERGE, as cpu::mergeAttention.
Status mergeAttention(const float *gathered, int64_t T, int64_t shards,
                      int64_t numHeads, int64_t headDim, float *out,
                      Stream stream = nullptr);

} // namespace llmir::engine::cuda

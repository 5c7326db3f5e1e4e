// A product with few rows, y [M, N] = x [M, K] . w [K, N], for CPUs: an XLA FFI custom call.
//
// The decoder's products in a decode step have one row per sequence (M <= 16) and read
// every weight once: they should run at the speed memory streams the weights. XLA's CPU
// dot does at M = 1, but at M = 8 it falls to about half the read bandwidth (measured on
// the 2-core benchmark host, benchmarks/skinny_matmul.py). Here each work item is a chunk
// of columns (and, for one or two rows, a slice of w's rows); its rows' accumulators (16 KiB)
// stay in L1 while kRowsOfW rows of w stream through, each row's chunk read contiguously, so every
// load of a w vector feeds 8 rows' FMAs and the hardware prefetcher sees long runs (and
// the rows two blocks ahead are prefetched: ~10% in A/B runs, within the host's noise).
// Rows past 8 take further passes over the chunk (then in L2). Accumulation is float32;
// float32 or bfloat16 in and out (x, w and y of one dtype).
//
// The second handler takes w stored transposed, y [M, N] = x [M, K] . w [N, K]^T: a tied LM head
// (hidden @ E^T, E the [V, D] embedding), which XLA's CPU dot streams at a fraction of the read
// bandwidth (~3.2 GB/s for [8, 512] . [32064, 512]^T on the benchmark host). Each output column
// is the dot of a row of x with a row of w, which is contiguous: rows of w stream through a few at
// a time, each vector of them feeding the FMAs of several rows of x (x in float32, in L1/L2), with
// one accumulator vector per (row of x, row of w), summed across lanes at the end.
//
// The third handler takes w as int8 with one float32 scale per output column, y = (x . w) * scale
// (symmetric per-channel quantization; x and y float32 or bfloat16): the same chunks, each int8 vector
// widened to float32 as it is loaded and each column's sum scaled once. It reads a quarter of float32's
// bytes, where XLA converts the whole weight to float every call (0.3-0.65 GB/s of int8). Measured with
// benchmarks/skinny_matmul.py --int8 (64 MB of weights, [512, 1536] to [2560, 10240], 30 GB/s read
// bandwidth): one row 12.8-15.7 GB/s of int8, 20-40x XLA and 2.5-3x faster than the float32 kernel (the widening
// bounds it: 25-32 G weights/s with w in L3); 8 rows 6-8 GB/s; 32 rows 1-2 GB/s.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernel_common.h"
#include "xla/ffi/api/ffi.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

using mmjax_cpu::BF16;
using mmjax_cpu::ForElementType;
using mmjax_cpu::FromFloat;
using mmjax_cpu::ParallelFor;
using mmjax_cpu::ToFloat;

constexpr int kRowsPerPass = 8;   // rows of x whose accumulators share each w vector
constexpr int kRowsOfW = 8;       // rows of w streamed at once (one FMA chain each)
constexpr int64_t kAccFloats = 4096;  // accumulators of a work item (16 KiB, in L1): 8 rows x 512 columns, 1 x 4096
constexpr int64_t kMinSliceRows = 64;  // rows of w are split into slices of at least this many
// Up to this many rows of x (decode of one or two sequences, where streaming w is all the work) the rows of w may be
// split; with more, a product computes enough that the split and its sums cost more than they save.
constexpr int64_t kMaxSplitRows = 2;
constexpr int kChunkStep = 16;    // chunks are a whole number of 16 columns wide (64 bytes of accumulators)
constexpr int kPrefetchBlocks = 2;  // w is prefetched this many blocks of kRowsOfW rows ahead

// Vectors as wide as the machine's registers (ymm: 8 floats; zmm with AVX-512: 16). With 16-float vectors on AVX2
// (two registers each) GCC 12 spilled the 8 rows' vectors of w, once converted from bfloat16 or int8, one float at
// a time (vextractps) and stored each row's accumulator through the stack and general registers. Against those,
// in interleaved A/B runs on [512, 1536] to [2560, 10240]: float32 at 8 rows 14-17 GB/s (9-14 before), at 32
// rows 4.8-6.2 (3.7-4.1); bfloat16 at 8 rows 9.4-12 (6.1-8.7), at 32 rows 2.5-3.6 (1.6-2.4); one row on par.
#if defined(__AVX512F__)
#define MMJAX_LANES 16
#else
#define MMJAX_LANES 8
#endif
constexpr int kLanes = MMJAX_LANES;

// Loads and stores are unaligned dereferences, not memcpy into a local: GCC otherwise bounces each vector through
// the stack (two 16-byte stores, one 32-byte load: a failed store forwarding per load, ~15x slower measured).
typedef float Vec __attribute__((vector_size(MMJAX_LANES * 4)));
typedef float VecUnaligned __attribute__((vector_size(MMJAX_LANES * 4), aligned(4), may_alias));
typedef uint16_t Vec16Unaligned __attribute__((vector_size(MMJAX_LANES * 2), aligned(2), may_alias));
typedef uint32_t VecU32 __attribute__((vector_size(MMJAX_LANES * 4)));

inline Vec Load(const float* p) { return *reinterpret_cast<const VecUnaligned*>(p); }
// Widening loads by intrinsics where there are: for -march=znver3 GCC 12 lowers __builtin_convertvector of 8 uint16
// to a 16-byte load, two 4-lane vpmovzxwd and an insert (not one vpmovzxwd from memory: bfloat16 at one row ~10%
// slower in an A/B run), and of int8 (or a loop) to one scalar sign-extension per lane.
inline Vec Load(const BF16* p) {  // bfloat16 is the top half of a float32
#if defined(__AVX512F__)
  const __m256i halves = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return reinterpret_cast<Vec>(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16));
#elif defined(__AVX2__)
  const __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return reinterpret_cast<Vec>(_mm256_slli_epi32(_mm256_cvtepu16_epi32(halves), 16));
#else
  const VecU32 u = __builtin_convertvector(*reinterpret_cast<const Vec16Unaligned*>(p), VecU32) << 16;
  return reinterpret_cast<Vec>(u);
#endif
}
// int8 -> int32 (sign-extended) -> float32, exactly: vpmovsxbd + vcvtdq2ps.
inline Vec Load(const int8_t* p) {
#if defined(__AVX512F__)
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return reinterpret_cast<Vec>(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)));
#elif defined(__AVX2__)
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return reinterpret_cast<Vec>(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)));
#else
  Vec v;
  for (int l = 0; l < kLanes; ++l) v[l] = p[l];
  return v;
#endif
}
inline void Store(float* p, Vec v) { *reinterpret_cast<VecUnaligned*>(p) = v; }
inline float ToFloat(int8_t v) { return static_cast<float>(v); }

// Sums over rows [k0, k1) of w for columns [c0, c1) and the R rows of x starting at x (row stride K). With
// partial == nullptr they are the products: y[r, c] (row stride N), times scale[c] with int8 weights (once, before
// y's rounding). Otherwise they are one slice of the rows of w, written to partial[r * N + c] unscaled, to be summed.
template <typename T, typename TW, int R>
void Chunk(const T* x, int64_t K, int64_t k0, int64_t k1, const TW* w, int64_t N, int64_t c0, int64_t c1,
           const float* scale, T* y, float* partial) {
  alignas(64) float acc[R][kAccFloats / R];
  const int64_t width = c1 - c0, vectors = width / kLanes;
  // One prefetch per 64-byte line of each row of w (a vector of int8 is an eighth of a line on AVX2).
  constexpr int64_t kVectorsPerLine = std::max<int64_t>(1, 64 / (kLanes * sizeof(TW)));
  for (int r = 0; r < R; ++r) std::memset(acc[r], 0, width * sizeof(float));
  int64_t k = k0;
  for (; k + kRowsOfW <= k1; k += kRowsOfW) {
    float xs[R][kRowsOfW];
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < kRowsOfW; ++i) xs[r][i] = ToFloat(x[r * K + k + i]);
    const TW* wk = w + k * N + c0;
    const bool prefetch = k + (kPrefetchBlocks + 1) * kRowsOfW <= k1;  // the same columns, kPrefetchBlocks ahead
    for (int64_t j = 0; j < vectors; ++j) {
      Vec wv[kRowsOfW];
      for (int i = 0; i < kRowsOfW; ++i) wv[i] = Load(wk + i * N + j * kLanes);
      if (prefetch && j % kVectorsPerLine == 0)
        for (int i = 0; i < kRowsOfW; ++i) __builtin_prefetch(wk + (kPrefetchBlocks * kRowsOfW + i) * N + j * kLanes);
      for (int r = 0; r < R; ++r) {
        Vec a = Load(&acc[r][j * kLanes]);
        for (int i = 0; i < kRowsOfW; ++i) a += xs[r][i] * wv[i];
        Store(&acc[r][j * kLanes], a);
      }
    }
    for (int64_t c = vectors * kLanes; c < width; ++c)  // the chunk's last columns, if not whole vectors
      for (int r = 0; r < R; ++r)
        for (int i = 0; i < kRowsOfW; ++i) acc[r][c] += xs[r][i] * ToFloat(wk[i * N + c]);
  }
  for (; k < k1; ++k)  // the slice's last rows of w, if not a multiple of kRowsOfW
    for (int r = 0; r < R; ++r) {
      const float xv = ToFloat(x[r * K + k]);
      for (int64_t c = 0; c < width; ++c) acc[r][c] += xv * ToFloat(w[k * N + c0 + c]);
    }
  for (int r = 0; r < R; ++r) {
    if (partial != nullptr) {
      std::memcpy(partial + r * N + c0, acc[r], width * sizeof(float));
      continue;
    }
    for (int64_t c = 0; c < width; ++c)
      FromFloat(scale != nullptr ? acc[r][c] * scale[c0 + c] : acc[r][c], y + r * N + c0 + c);
  }
}

// Rows in passes of 8, then 4, 2 and 1 (four bodies per dtype, not eight: half the build time; the
// engine's decode steps have power-of-two rows, and a pass of fewer rows rereads the chunk from cache).
// partial: as Chunk's, [M, N] (or nullptr).
template <typename T, typename TW>
void Columns(int64_t M, const T* x, int64_t K, int64_t k0, int64_t k1, const TW* w, int64_t N, int64_t c0,
             int64_t c1, const float* scale, T* y, float* partial) {
  for (int64_t r0 = 0; r0 < M;) {
    const int64_t left = M - r0;
    const T* xr = x + r0 * K;
    T* yr = y + r0 * N;
    float* pr = partial != nullptr ? partial + r0 * N : nullptr;
    if (left >= kRowsPerPass) {
      Chunk<T, TW, kRowsPerPass>(xr, K, k0, k1, w, N, c0, c1, scale, yr, pr);
      r0 += kRowsPerPass;
    } else if (left >= 4) {
      Chunk<T, TW, 4>(xr, K, k0, k1, w, N, c0, c1, scale, yr, pr);
      r0 += 4;
    } else if (left >= 2) {
      Chunk<T, TW, 2>(xr, K, k0, k1, w, N, c0, c1, scale, yr, pr);
      r0 += 2;
    } else {
      Chunk<T, TW, 1>(xr, K, k0, k1, w, N, c0, c1, scale, yr, pr);
      r0 += 1;
    }
  }
}

// Work items are (slice of w's rows, chunk of columns). Chunks are as wide as kAccFloats accumulators allow for a
// pass's rows (4096 columns for one row of x, 512 for eight), so a work item reads whole rows of the decoder's
// weights, one contiguous run. When there are fewer chunks than twice the threads and at most kMaxSplitRows rows
// (every projection of a small decoder at one row), the rows of w are split into slices too, each slice's sums kept
// apart and added at the end. Interleaved A/B on the benchmark decoder's decode chain (8 layers' products and the LM
// head, 80 MiB of bfloat16 from memory; benchmarks/skinny_matmul_ab.py): one row 4.34 -> 3.52 ms in bfloat16, 6.34 -> 5.90
// in float32; 8 and 32 rows unchanged.
// fixed_order: never split the rows of w, so every y[m, n] is one chain of float32 FMAs over k = 0, 1, ..., K - 1,
// whatever M, the thread count or the row's place among the others (mmjax's batch-invariant mode; columns are only
// partitioned among work items, and a row's pass of 8, 4, 2 or 1 rows runs the same chain).
template <typename T, typename TW>
void Run(ffi::ThreadPool& pool, int64_t M, int64_t K, int64_t N, const T* x, const TW* w, const float* scale, T* y,
         bool fixed_order) {
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  const int64_t pass_rows = std::min<int64_t>(M, kRowsPerPass);
  const int64_t max_width = kAccFloats / pass_rows / kChunkStep * kChunkStep;
  int64_t chunks = (N + max_width - 1) / max_width;
  int64_t slices = 1;
  if (!fixed_order && chunks < 2 * threads && M <= kMaxSplitRows) {
    slices = std::min<int64_t>((2 * threads + chunks - 1) / chunks, std::max<int64_t>(1, K / kMinSliceRows));
  } else {
    chunks = (chunks + threads - 1) / threads * threads;  // a whole number of chunks per thread
  }
  const int64_t width = std::min<int64_t>(max_width, ((N + chunks - 1) / chunks + kChunkStep - 1) / kChunkStep *
                                                         kChunkStep);
  chunks = (N + width - 1) / width;
  const int64_t slice_rows = ((K + slices - 1) / slices + kRowsOfW - 1) / kRowsOfW * kRowsOfW;
  slices = (K + slice_rows - 1) / slice_rows;
  std::vector<float> partials(slices > 1 ? slices * M * N : 0);
  ParallelFor(pool, chunks * slices, [&](int64_t i) {
    const int64_t c = i % chunks, s = i / chunks;
    Columns<T, TW>(M, x, K, s * slice_rows, std::min<int64_t>(K, (s + 1) * slice_rows), w, N, c * width,
                   std::min<int64_t>(N, (c + 1) * width), scale, y, slices > 1 ? &partials[s * M * N] : nullptr);
  });
  if (slices == 1) return;
  for (int64_t e = 0; e < M * N; ++e) {  // M x N sums of `slices` floats: small next to reading w
    float sum = partials[e];
    for (int64_t s = 1; s < slices; ++s) sum += partials[s * M * N + e];
    FromFloat(scale != nullptr ? sum * scale[e % N] : sum, y + e);
  }
}

ffi::Error SkinnyMatmul(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                        bool fixed_order) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 2 || yd.size() != 2 || xd[1] != wd[0] || yd[0] != xd[0] || yd[1] != wd[1])
    return ffi::Error::InvalidArgument("expected x [M, K], w [K, N] and y [M, N]");
  if (x.element_type() != w.element_type() || y->element_type() != x.element_type())
    return ffi::Error::InvalidArgument("x, w and y must have one dtype");
  return ForElementType(x.element_type(), [&](auto element) {
    using T = decltype(element);
    Run<T, T>(pool, xd[0], xd[1], wd[1], static_cast<const T*>(x.untyped_data()),
              static_cast<const T*>(w.untyped_data()), nullptr, static_cast<T*>(y->untyped_data()), fixed_order);
  });
}

// ---- int8 weights: y [M, N] = (x [M, K] . w [K, N]) * scale [N] ------------------------------

// The same chunks, each vector of int8 widened to float32 as it is loaded (Load: sign-extended, converted), so
// the FMAs and accumulators are those of float32 and w is read at a quarter of float32's bytes. The per-column
// scale (symmetric quantization) multiplies each column's sum once, before y's rounding.
ffi::Error SkinnyMatmulInt8(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer scale,
                            ffi::Result<ffi::AnyBuffer> y, bool fixed_order) {
  const auto xd = x.dimensions(), wd = w.dimensions(), sd = scale.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 2 || sd.size() != 1 || yd.size() != 2 || xd[1] != wd[0] || sd[0] != wd[1] ||
      yd[0] != xd[0] || yd[1] != wd[1])
    return ffi::Error::InvalidArgument("expected x [M, K], w [K, N], scale [N] and y [M, N]");
  if (w.element_type() != ffi::DataType::S8 || scale.element_type() != ffi::DataType::F32 ||
      y->element_type() != x.element_type())
    return ffi::Error::InvalidArgument("expected w int8, scale float32, and y of x's dtype");
  return ForElementType(x.element_type(), [&](auto element) {
    using T = decltype(element);
    Run<T, int8_t>(pool, xd[0], xd[1], wd[1], static_cast<const T*>(x.untyped_data()),
                   static_cast<const int8_t*>(w.untyped_data()), static_cast<const float*>(scale.untyped_data()),
                   static_cast<T*>(y->untyped_data()), fixed_order);
  });
}

// ---- w stored transposed: y [M, N] = x [M, K] . w [N, K]^T -----------------------------------

// R x W accumulators that stay in registers with the W vectors of w and one of x (4 x 3 + 3 + 1: AVX2's 16).
// Measured on the 2-core AVX2 benchmark host against 8 x 1, 4 x 2, 3 x 3 and 2 x 5 (float32 and bfloat16,
// 2-16 rows, K 512 and 2048): 4 x 3 the fastest or within noise of it.
constexpr int kDotRows = 4;   // rows of x per pass: each vector of w feeds this many FMAs
constexpr int kDotWRows = 3;  // rows of w at once: each vector of x feeds this many FMAs
// The next blocks of w's rows are prefetched this many rows ahead: W interleaved streams of K floats are
// short runs for the hardware prefetcher (at K = 512: 15 GB/s without, 19-20 with, in A/B runs).
constexpr int kDotPrefetchRows = 2 * kDotWRows;
constexpr int64_t kMaxWRowsPerItem = 256;  // rows of w per work item (at most)

// GCC would fold each use of x's vector into its FMA as a memory operand, loading it W times (15 loads per
// 12 FMAs, past the two load ports): an empty asm that needs it in a register makes it one load (20.9 against
// 19.3 GB/s at 8 rows, float32, K = 512; 13.8 against 11.6 at 16 rows).
inline void KeepInRegister(Vec& v) {
#if defined(__AVX__)  // a Vec is one ymm (zmm with AVX-512) register; elsewhere it may not fit one: no hint
  asm("" : "+x"(v));
#else
  (void)v;
#endif
}

typedef float Quad __attribute__((vector_size(16)));

inline float LaneSum(Vec v) {  // a tree: 128-bit quarters added, then the four lanes pairwise
  Quad quarters[kLanes / 4];
  std::memcpy(quarters, &v, sizeof quarters);
  Quad s = quarters[0];
  for (int i = 1; i < kLanes / 4; ++i) s += quarters[i];
  return (s[0] + s[2]) + (s[1] + s[3]);
}

// y[r, n + j] = x[r] . w[n + j] for the R rows of xf (float32, row stride K; y's row stride N) and W rows of w.
template <typename T, int R, int W>
void Dots(const float* xf, int64_t K, const T* w, int64_t n, int64_t N, T* y) {
  Vec acc[R][W];  // in registers: the loops over r and j are unrolled
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int j = 0; j < W; ++j) acc[r][j] = Vec{};
  const T* wn = w + n * K;
  const int64_t vectors = K / kLanes;
  for (int64_t v = 0; v < vectors; ++v) {
    Vec wv[W];
#pragma GCC unroll 16
    for (int j = 0; j < W; ++j) wv[j] = Load(wn + j * K + v * kLanes);
    if (v % (64 / (kLanes * sizeof(T))) == 0)  // once per 64-byte line; a prefetch past the end does not fault
#pragma GCC unroll 16
      for (int j = 0; j < W; ++j) __builtin_prefetch(wn + (j + kDotPrefetchRows) * K + v * kLanes);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      Vec xv = Load(xf + r * K + v * kLanes);
      KeepInRegister(xv);
#pragma GCC unroll 16
      for (int j = 0; j < W; ++j) acc[r][j] += xv * wv[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < W; ++j) {
      float sum = LaneSum(acc[r][j]);
      for (int64_t k = vectors * kLanes; k < K; ++k) sum += xf[r * K + k] * ToFloat(wn[j * K + k]);  // K's tail
      FromFloat(sum, y + r * N + n + j);
    }
}

// W rows of w from n against every row of x: passes of kDotRows rows, then 2 and 1 (the block of w is in L1
// after the first pass).
template <typename T, int W>
void DotPasses(int64_t M, const float* xf, int64_t K, const T* w, int64_t n, int64_t N, T* y) {
  for (int64_t r0 = 0; r0 < M;) {
    const int64_t left = M - r0;
    if (left >= kDotRows) {
      Dots<T, kDotRows, W>(xf + r0 * K, K, w, n, N, y + r0 * N);
      r0 += kDotRows;
    } else if (left >= 2) {
      Dots<T, 2, W>(xf + r0 * K, K, w, n, N, y + r0 * N);
      r0 += 2;
    } else {
      Dots<T, 1, W>(xf + r0 * K, K, w, n, N, y + r0 * N);
      r0 += 1;
    }
  }
}

template <typename T>
void RunTransposed(ffi::ThreadPool& pool, int64_t M, int64_t K, int64_t N, const T* x, const T* w, T* y) {
  // x once in float32 (M x K, small), so the inner loop converts only w.
  std::vector<float> converted;
  const float* xf;
  if constexpr (std::is_same_v<T, float>) {
    xf = x;
  } else {
    converted.resize(M * K);
    for (int64_t i = 0; i < M * K; ++i) converted[i] = ToFloat(x[i]);
    xf = converted.data();
  }
  // Work items of consecutive rows of w: at least one per thread, a whole number of blocks, at most kMaxWRowsPerItem.
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  int64_t chunks = std::max<int64_t>((N + kMaxWRowsPerItem - 1) / kMaxWRowsPerItem, threads);
  chunks = (chunks + threads - 1) / threads * threads;
  const int64_t rows = ((N + chunks - 1) / chunks + kDotWRows - 1) / kDotWRows * kDotWRows;
  const int64_t items = (N + rows - 1) / rows;
  ParallelFor(pool, items, [&](int64_t i) {
    const int64_t n1 = std::min<int64_t>(N, (i + 1) * rows);
    int64_t n = i * rows;
    for (; n + kDotWRows <= n1; n += kDotWRows) DotPasses<T, kDotWRows>(M, xf, K, w, n, N, y);
    for (; n < n1; ++n) DotPasses<T, 1>(M, xf, K, w, n, N, y);
  });
}

ffi::Error TransposedSkinnyMatmul(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,
                                  ffi::Result<ffi::AnyBuffer> y) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 2 || yd.size() != 2 || xd[1] != wd[1] || yd[0] != xd[0] || yd[1] != wd[0])
    return ffi::Error::InvalidArgument("expected x [M, K], w [N, K] and y [M, N]");
  if (x.element_type() != w.element_type() || y->element_type() != x.element_type())
    return ffi::Error::InvalidArgument("x, w and y must have one dtype");
  return ForElementType(x.element_type(), [&](auto element) {
    using T = decltype(element);
    RunTransposed<T>(pool, xd[0], xd[1], wd[0], static_cast<const T*>(x.untyped_data()),
                     static_cast<const T*>(w.untyped_data()), static_cast<T*>(y->untyped_data()));
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmjaxTransposedSkinnyMatmul, TransposedSkinnyMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()   // x [M, K]
                                  .Arg<ffi::AnyBuffer>()   // w [N, K]
                                  .Ret<ffi::AnyBuffer>());  // y [M, N]

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmjaxSkinnyMatmulInt8, SkinnyMatmulInt8,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()   // x [M, K], float32 or bfloat16
                                  .Arg<ffi::AnyBuffer>()   // w [K, N], int8
                                  .Arg<ffi::AnyBuffer>()   // scale [N], float32
                                  .Ret<ffi::AnyBuffer>()   // y [M, N], x's dtype
                                  .Attr<bool>("fixed_order"));  // never split w's rows (Run)

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmjaxSkinnyMatmul, SkinnyMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()   // x [M, K]
                                  .Arg<ffi::AnyBuffer>()   // w [K, N]
                                  .Ret<ffi::AnyBuffer>()   // y [M, N]
                                  .Attr<bool>("fixed_order"));  // never split w's rows (Run)

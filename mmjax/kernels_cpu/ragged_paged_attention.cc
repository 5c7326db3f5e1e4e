// Ragged paged attention for CPUs: an XLA FFI custom call that reads K/V pages in place.
//
// Same contract as mmjax.kernels_pallas.ragged_paged_attention_reference:
//   q [T, N, H], k_pages / v_pages [K, A, G, H] (KV heads, pages, page size, head dim),
//   kv_lens [B], block_tables [B, W], cu_q_lens [B+1], num_seqs [1],
//   key_start [T] or [0], key_end [T] or [0]  ->  out [T, N, H].
// Sequence b's query tokens are q[cu_q_lens[b]:cu_q_lens[b+1]], its last tokens;
// token t at position p sees the keys k with key_start[t] <= k < key_end[t] and
// k < kv_lens[b] (an empty key_start means 0, an empty key_end means p + 1: causal).
// Query head n reads KV head n / (N / K). Tokens of no live sequence, and tokens that
// see no key, come out as zeros. float32 or bfloat16 in and out; logits, softmax and
// the running sums are float32.
//
// Why a custom call: XLA's CPU backend copies every gathered page out of the
// cache before it multiplies (a gather fusion at ~10 GB/s, three quarters of
// the plain-XLA path's attention time in a decode step). Here each K/V page of
// a KV head is a contiguous [G, H] tile that is read where it lies.
//
// Work items are (sequence, KV head, tile of query tokens), spread over XLA's intra-op thread
// pool. A tile's rows are (token, query head of the group), kTileRows of them (at least one
// token); it walks the keys its rows see, [lowest start, highest end) (a sliding window's keys,
// not the whole context), in blocks of kBlockKeys, with one online-softmax update per block:
//   S = Q_tile K_block^T, masked, then acc = alpha * acc + P V_block.
// The loops are written on 8-float vectors (GCC vector extensions, intrinsics where GCC 12 does
// badly by itself) in register tiles sized for AVX2's 16 registers:
//  - Tiles of fewer than kManyRows rows (decode) run along the head dim. K/V rows are read where
//    they lie, bfloat16 widened in registers as each vector is loaded (vpmovzxwd + vpslld); the
//    dot products of R rows with 8 / R keys are summed across lanes by one tree of horizontal
//    adds; rows are prefetched kPrefetchRows ahead as the loops go (pages may lie anywhere).
//  - Bigger tiles (prefill) run along the query rows: the tile's queries are transposed once,
//    Q^T [H, rows], logits come in register tiles of 4 keys x 24 rows (each key's element
//    broadcast) and P V in tiles of 6 rows x 16 columns of the accumulators; a bfloat16 block is
//    converted once into a float32 buffer that every row of the tile reads (float32 rows are read
//    in place).
// Rows that are not whole vectors (a head dim that is not a multiple of 8) are converted into the
// buffer, zero-padded, on either path.
//
// Measured (benchmarks/cpu_attention_ab.py, benchmarks/attention_in_engine.py; figures in the README's
// "On CPU, attention is a native kernel"): bfloat16 decode streams K/V at about twice float32's rate, and prefill
// runs at about the FMA peak of the blocks it computes (a causal tile computes its whole diagonal block).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "attention_amx.h"
#include "kernel_common.h"
#include "xla/ffi/api/ffi.h"

#if defined(__AVX__)
#include <immintrin.h>
#endif

#ifndef MMJAX_HEAD_DIM  // one build per head dim (mmjax.kernels_cpu.build passes it)
#error "compile with -DMMJAX_HEAD_DIM=<head dim>"
#endif

namespace ffi = xla::ffi;

namespace {

using mmjax_cpu::BF16;
using mmjax_cpu::ForElementType;
using mmjax_cpu::FromFloat;
using mmjax_cpu::ParallelFor;
using mmjax_cpu::ToFloat;

constexpr int kBlockKeys = 64;  // keys per online-softmax update
constexpr int kTileRows = 64;   // query rows (tokens x the KV head's group) per work item, at least one token
constexpr int kManyRows = 8;    // from this many rows a tile takes the prefill loops
// How far ahead the decode loops ask for rows (a 16-token page). Asking for the next block's (64 ahead) ran
// 1.1-1.3x the old kernel's times at head dim 128 with pages in order, a block's rows (32 KB of float32 K,
// as much V) pushing the one being read out of L1; 16 ahead took 0.76-0.99x 64 ahead's times there and
// 0.73-0.97x at head dim 64 (interleaved A/B, decode of 1 and 8 sequences, pages in and out of order).
constexpr int kPrefetchRows = 16;
constexpr float kMaskValue = -0.7f * 3.4028234663852886e38f;  // finite: exp(mask - mask) never NaN

// ---- vectors -----------------------------------------------------------------
//
// Eight floats (one AVX2 register; an AVX-512 machine runs the same code on ymm registers): the register tiles
// below are sized for 16 of them. GCC vector extensions, so the code builds on any target; intrinsics only where
// GCC 12 does badly by itself (the bfloat16 widening, the lane sums) or where an instruction says it best.

constexpr int kLanes = 8;
typedef float Vec __attribute__((vector_size(kLanes * 4)));
typedef int32_t IVec __attribute__((vector_size(kLanes * 4)));
// Loads and stores are unaligned dereferences (not memcpy into a local, which GCC bounces through the stack).
typedef float VecUnaligned __attribute__((vector_size(kLanes * 4), aligned(4), may_alias));
typedef int32_t IVecUnaligned __attribute__((vector_size(kLanes * 4), aligned(4), may_alias));
typedef uint16_t Vec16Unaligned __attribute__((vector_size(kLanes * 2), aligned(2), may_alias));
typedef uint32_t UVec __attribute__((vector_size(kLanes * 4)));

inline Vec Load(const float* p) { return *reinterpret_cast<const VecUnaligned*>(p); }
// bfloat16 is the top half of a float32: vpmovzxwd + vpslld. GCC 12 lowers __builtin_convertvector of 8 uint16
// (-march=znver3) to a 16-byte load, two 4-lane vpmovzxwd and an insert, and the old per-element ToFloat loops
// no better (see skinny_matmul.cc).
inline Vec Load(const BF16* p) {
#if defined(__AVX2__)
  const __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return reinterpret_cast<Vec>(_mm256_slli_epi32(_mm256_cvtepu16_epi32(halves), 16));
#else
  const UVec u = __builtin_convertvector(*reinterpret_cast<const Vec16Unaligned*>(p), UVec) << 16;
  return reinterpret_cast<Vec>(u);
#endif
}
inline IVec LoadInt(const int32_t* p) { return *reinterpret_cast<const IVecUnaligned*>(p); }
inline void Store(float* p, Vec v) { *reinterpret_cast<VecUnaligned*>(p) = v; }
// Broadcasts by initializer: Vec{} + x is an add of +0.0 the compiler may not drop (-0.0 + 0.0 is +0.0).
inline Vec Splat(float x) { return Vec{x, x, x, x, x, x, x, x}; }
inline IVec SplatInt(int32_t x) { return IVec{x, x, x, x, x, x, x, x}; }
inline Vec Max(Vec a, Vec b) {
#if defined(__AVX__)
  return _mm256_max_ps(a, b);
#else
  return a > b ? a : b;
#endif
}
// Keeps v in a register: GCC otherwise folds a vector used by several FMAs into each of them as a memory operand,
// one 32-byte load per FMA, and the tiles below would be bound by the two loads a cycle rather than the FMAs.
inline void InRegister(Vec& v) {
#if defined(__AVX__)
  asm("" : "+x"(v));
#else
  (void)v;
#endif
}
inline float LaneMax(Vec v) {
  float x = v[0];
  for (int i = 1; i < kLanes; ++i) x = std::max(x, v[i]);
  return x;
}
inline float LaneSum(Vec v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

// {lane sum of a[0], ..., lane sum of a[7]}: one tree of horizontal adds for eight dot products, not eight.
inline Vec LaneSums(const Vec* a) {
#if defined(__AVX__)
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);  // a0..a3's halves' sums, a4..a7's
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
#else
  Vec s;
  for (int i = 0; i < kLanes; ++i) s[i] = LaneSum(a[i]);
  return s;
#endif
}

// exp(x) for x <= 0 (every argument here is a logit minus its running max), lane-wise. Cody-Waite range
// reduction and a degree-6 polynomial: relative error < 2e-7; exp(x) for x < -87 is about 1.6e-38, not 0.
inline Vec ExpNonPositive(Vec x) { return mmjax_cpu::ExpClamped<Vec, IVec>(Max(x, Splat(-87.0f))); }

// ---- the problem -------------------------------------------------------------

template <typename T>
struct Problem {
  const T* q;
  const T* k_pages;
  const T* v_pages;
  const int32_t* kv_lens;
  const int32_t* block_tables;
  const int32_t* cu_q_lens;
  const int32_t* key_start;  // [num_tokens], or null: 0
  const int32_t* key_end;    // [num_tokens], or null: position + 1
  T* out;
  int64_t num_tokens, num_heads, num_kv_heads, num_pages, page_size, pages_per_seq;
  float sm_scale;

  // Where page `index` of sequence `seq`'s table begins for KV head `kv_head`, in elements of a [K, A, G, H]
  // cache (K's and V's alike): page_size rows of H elements.
  int64_t PageOffset(int64_t seq, int64_t kv_head, int64_t index, int64_t head_dim) const {
    int64_t page = block_tables[seq * pages_per_seq + index];
    page = std::min<int64_t>(std::max<int64_t>(page, 0), num_pages - 1);  // as XLA's gather clamps
    return (kv_head * num_pages + page) * page_size * head_dim;
  }
};

struct WorkItem {
  int32_t seq, kv_head, first_token, num_tokens;  // tokens: offsets into the sequence's query tokens
};

// Rows of H elements, padded with zeros to whole vectors (Hp) wherever a row is copied.
template <int H>
struct Dims {
  static constexpr int kVectors = (H + kLanes - 1) / kLanes;
  static constexpr int kPadded = kVectors * kLanes;
};

// offsets[j] = where key key0 + j's row of sequence `seq`, KV head `kv_head`, lies in the pages (K's and V's), for
// j < count: one table look-up a page.
template <typename T, int H>
void KeyOffsets(const Problem<T>& pr, int64_t seq, int64_t kv_head, int64_t key0, int count, int64_t* offsets) {
  int64_t index = key0 / pr.page_size, offset = key0 % pr.page_size;
  for (int j = 0; j < count; ++index, offset = 0) {  // no look-up past the last key
    const int64_t page = pr.PageOffset(seq, kv_head, index, H);
    const int n = static_cast<int>(std::min<int64_t>(count - j, pr.page_size - offset));
    for (int i = 0; i < n; ++i) offsets[j + i] = page + (offset + i) * H;
    j += n;
  }
}

template <typename T, int H>
inline void PrefetchRow(const T* row) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (size_t offset = 0; offset < H * sizeof(T); offset += 64) __builtin_prefetch(bytes + offset);
  if ((H * sizeof(T)) % 64 != 0) __builtin_prefetch(bytes + H * sizeof(T) - 1);  // a row need not start on a line
}

// Rows of Hp zeros: a block's padding keys (a block of keys is computed in whole vectors of keys).
template <typename TR, int H>
const TR* ZeroRow() {
  alignas(64) static const TR zeros[Dims<H>::kPadded] = {};
  return zeros;
}

template <typename T, int H>
inline void ConvertRow(const T* src, float* dst) {
  constexpr int kWhole = H / kLanes;
  for (int v = 0; v < kWhole; ++v) Store(dst + v * kLanes, Load(src + v * kLanes));
  for (int d = kWhole * kLanes; d < Dims<H>::kPadded; ++d) dst[d] = d < H ? ToFloat(src[d]) : 0.0f;
}

// Whether the loops read a block's rows where they lie (elements of T, rows of whole vectors), rather than
// converted into a buffer of float32 rows of Hp.
template <typename T, typename TR, int H>
constexpr bool kInPlace = std::is_same<T, TR>::value && H % kLanes == 0;

// The block's rows for the loops, rows[j] for j < count, as elements of TR: where they lie (kInPlace) or
// converted into buf (TR = float: bfloat16, or rows that are not whole vectors); the zero row for j in
// [count, padded).
// Rows are pages + offsets[j]; asks for the rows pages + next[0, next_count) meanwhile (the next block's: a
// sequence's pages may lie anywhere).
template <typename T, typename TR, int H>
void GatherRows(const T* pages, const int64_t* offsets, int count, int padded, const int64_t* next, int next_count,
                float* buf, const TR** rows) {
  for (int j = 0; j < count; ++j) {
    if (j < next_count) PrefetchRow<T, H>(pages + next[j]);
    if constexpr (kInPlace<T, TR, H>) {
      rows[j] = pages + offsets[j];
    } else {
      float* row = buf + j * Dims<H>::kPadded;
      ConvertRow<T, H>(pages + offsets[j], row);
      rows[j] = row;
    }
  }
  for (int j = count; j < next_count; ++j) PrefetchRow<T, H>(pages + next[j]);
  for (int j = count; j < padded; ++j) rows[j] = ZeroRow<TR, H>();
}

// ---- few rows (decode): vectors along the head dim -----------------------------

// s[r * kBlockKeys + j] = q_r . k_j for R rows and keys j < padded (whole vectors), the R rows' dot products
// with 8 / R keys at a time: eight accumulators, summed across lanes by one tree, and each K vector loaded
// (bfloat16: widened) once for the R rows. Asks for the row pages + ahead[j] as it reads key j (j < ahead_count).
template <typename TR, typename T, int H, int R>
void LogitsRows(const float* qs, const TR* const* krows, int padded, float* s, const T* pages, const int64_t* ahead,
                int ahead_count) {
  constexpr int kKeys = kLanes / R, kVectors = Dims<H>::kVectors, kPadded = Dims<H>::kPadded;
  for (int j0 = 0; j0 < padded; j0 += kKeys) {
    for (int i = j0; i < std::min(j0 + kKeys, ahead_count); ++i) PrefetchRow<T, H>(pages + ahead[i]);
    const TR* k[kKeys];
    Vec a[kLanes];  // a[r * kKeys + i]: row r, key j0 + i
#pragma GCC unroll 8
    for (int i = 0; i < kKeys; ++i) k[i] = krows[j0 + i];
#pragma GCC unroll 8
    for (int i = 0; i < kLanes; ++i) a[i] = Vec{};
    for (int v = 0; v < kVectors; ++v) {
      Vec kv[kKeys];
#pragma GCC unroll 8
      for (int i = 0; i < kKeys; ++i) kv[i] = Load(k[i] + v * kLanes);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const Vec qv = Load(qs + r * kPadded + v * kLanes);
#pragma GCC unroll 8
        for (int i = 0; i < kKeys; ++i) a[r * kKeys + i] += qv * kv[i];
      }
    }
    const Vec sums = LaneSums(a);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int i = 0; i < kKeys; ++i) s[r * kBlockKeys + j0 + i] = sums[r * kKeys + i];
  }
}

// Rows in passes of 4, 2 and 1; the first pass asks for the rows ahead.
template <typename TR, typename T, int H>
void LogitsFew(const float* qs, int num_rows, const TR* const* krows, int padded, float* s, const T* pages,
               const int64_t* ahead, int ahead_count) {
  constexpr int kPadded = Dims<H>::kPadded;
  int r = 0;
  auto pass = [&](auto rows) {
    constexpr int R = decltype(rows)::value;
    LogitsRows<TR, T, H, R>(qs + r * kPadded, krows, padded, s + r * kBlockKeys, pages, ahead, ahead_count);
    r += R;
    ahead_count = 0;
  };
  while (r + 4 <= num_rows) pass(std::integral_constant<int, 4>{});
  if (r + 2 <= num_rows) pass(std::integral_constant<int, 2>{});
  if (r < num_rows) pass(std::integral_constant<int, 1>{});
}

// The online-softmax update of rows r < num_rows over the block's logits s[r * kBlockKeys + j], j < padded: key
// key0 + j is seen by row r iff j < block and row_start[r] <= key0 + j < row_end[r]. s becomes p in place;
// alpha[r] = exp(m_old - m_new), by which the row's accumulator is to be scaled.
void SoftmaxFew(float* s, int num_rows, int padded, int64_t key0, int block, const int32_t* row_start,
                const int32_t* row_end, float* m, float* l, float* alpha) {
  IVec lane;
  for (int i = 0; i < kLanes; ++i) lane[i] = i;
  for (int r = 0; r < num_rows; ++r) {
    float* sr = s + r * kBlockKeys;
    const IVec first = SplatInt(static_cast<int32_t>(row_start[r] - key0));
    const IVec limit = SplatInt(static_cast<int32_t>(std::min<int64_t>(row_end[r] - key0, block)));
    Vec block_max = Splat(kMaskValue);
    for (int j0 = 0; j0 < padded; j0 += kLanes) {
      const IVec j = lane + j0;
      block_max = (j >= first) & (j < limit) ? Max(block_max, Load(sr + j0)) : block_max;
    }
    const float m_new = std::max(m[r], LaneMax(block_max));
    const Vec mv = Splat(m_new);
    Vec sum = Vec{};
    for (int j0 = 0; j0 < padded; j0 += kLanes) {
      const IVec j = lane + j0;
      const Vec p = (j >= first) & (j < limit) ? ExpNonPositive(Load(sr + j0) - mv) : Vec{};
      Store(sr + j0, p);
      sum += p;
    }
    alpha[r] = ExpNonPositive(Splat(m[r] - m_new))[0];
    l[r] = alpha[r] * l[r] + LaneSum(sum);
    m[r] = m_new;
  }
}

// ---- many rows (prefill): vectors along the query rows --------------------------

// st[j * rp + r] = q_r . k_j for r < rp (whole vectors) and keys j < padded, from qt [H, rp] (the tile's queries
// transposed once): a register tile of 4 keys x RV row vectors (12 accumulators at most), each key's element
// broadcast from its (float32) row.
template <int H, int RV>
void LogitsTile(const float* qt, int rp, const float* const* krows, int padded, float* st) {
  constexpr int kKeys = 4;
  for (int j0 = 0; j0 < padded; j0 += kKeys) {
    const float* k[kKeys];
    Vec a[kKeys][RV];
#pragma GCC unroll 4
    for (int i = 0; i < kKeys; ++i) {
      k[i] = krows[j0 + i];
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) a[i][v] = Vec{};
    }
    for (int d = 0; d < H; ++d) {
      Vec q[RV];
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) {
        q[v] = Load(qt + d * rp + v * kLanes);
        InRegister(q[v]);
      }
#pragma GCC unroll 4
      for (int i = 0; i < kKeys; ++i) {
        const Vec kd = Splat(k[i][d]);
#pragma GCC unroll 4
        for (int v = 0; v < RV; ++v) a[i][v] += kd * q[v];
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < kKeys; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) Store(st + (j0 + i) * rp + v * kLanes, a[i][v]);
  }
}

template <int H>
void LogitsMany(const float* qt, int rp, const float* const* krows, int padded, float* st) {
  int r0 = 0;
  for (; r0 + 3 * kLanes <= rp; r0 += 3 * kLanes) LogitsTile<H, 3>(qt + r0, rp, krows, padded, st + r0);
  if (r0 + 2 * kLanes <= rp) {
    LogitsTile<H, 2>(qt + r0, rp, krows, padded, st + r0);
    r0 += 2 * kLanes;
  }
  if (r0 < rp) LogitsTile<H, 1>(qt + r0, rp, krows, padded, st + r0);
}

// SoftmaxFew's update for the logits st[j * rp + r], eight rows at a time (rows past the tile's see no key).
void SoftmaxMany(float* st, int rp, int64_t key0, int block, const int32_t* row_start, const int32_t* row_end,
                 float* m, float* l, float* alpha) {
  for (int r0 = 0; r0 < rp; r0 += kLanes) {
    const IVec first = LoadInt(row_start + r0) - static_cast<int32_t>(key0);
    const IVec limit = LoadInt(row_end + r0) - static_cast<int32_t>(key0);
    Vec block_max = Splat(kMaskValue);
    for (int j = 0; j < block; ++j) {
      const IVec jv = SplatInt(j);
      block_max = (jv >= first) & (jv < limit) ? Max(block_max, Load(st + j * rp + r0)) : block_max;
    }
    const Vec m_old = Load(m + r0), m_new = Max(m_old, block_max);
    Vec sum = Vec{};
    for (int j = 0; j < block; ++j) {
      const IVec jv = SplatInt(j);
      float* sj = st + j * rp + r0;
      const Vec p = (jv >= first) & (jv < limit) ? ExpNonPositive(Load(sj) - m_new) : Vec{};
      Store(sj, p);
      sum += p;
    }
    const Vec a = ExpNonPositive(m_old - m_new);
    Store(alpha + r0, a);
    Store(l + r0, a * Load(l + r0) + sum);
    Store(m + r0, m_new);
  }
}

// ---- both: acc = alpha * acc + P V ---------------------------------------------

// The largest divisor of the row's vectors that is at most `most`: a chunk of the accumulator rows.
constexpr int ChunkVectors(int vectors, int most) {
  for (int c = std::min(vectors, most); c > 1; --c)
    if (vectors % c == 0) return c;
  return 1;
}

// acc[r] = alpha[r] * acc[r] + sum_{j < block} p(r, j) v_j for R rows, p(r, j) = p[r * row_stride + j * key_stride]:
// a chunk of C vectors of each row's accumulator stays in registers (R x C <= 12) while the block's V rows (of
// TR) stream; the first chunk asks for the row pages + ahead[j] as it reads row j (j < ahead_count).
template <typename TR, typename T, int H, int R>
void ValuesPass(const float* p, ptrdiff_t row_stride, ptrdiff_t key_stride, const float* alpha,
                const TR* const* vrows, int block, float* acc, const T* pages, const int64_t* ahead, int ahead_count) {
  constexpr int kVectors = Dims<H>::kVectors, kPadded = Dims<H>::kPadded;
  // R x C accumulators, and C vectors of V that R > 1 rows share (or that bfloat16 is widened into): 15 registers.
  // One float32 row's V vectors are operands of its FMAs: its whole row up to head dim 128 in one pass, 16
  // accumulators (GCC keeps one on the stack); two passes over a block's V rows of 512 bytes ran 1.1-1.2x
  // slower with pages in order (the second from L2).
  constexpr int C = ChunkVectors(kVectors, R == 1 && std::is_same<TR, float>::value ? 16 : 14 / (R + 1));
  for (int c0 = 0; c0 < kVectors; c0 += C) {
    Vec a[R][C];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) a[i][c] = Load(acc + i * kPadded + (c0 + c) * kLanes) * alpha[i];
    for (int j = 0; j < block; ++j) {
      if (c0 == 0 && j < ahead_count) PrefetchRow<T, H>(pages + ahead[j]);
      const TR* v = vrows[j] + c0 * kLanes;
      Vec vv[C];
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) vv[c] = Load(v + c * kLanes);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const Vec pj = Splat(p[i * row_stride + j * key_stride]);
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c) a[i][c] += pj * vv[c];
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) Store(acc + i * kPadded + (c0 + c) * kLanes, a[i][c]);
  }
}

// Rows in passes of 6, then 4, 2 and 1; the first pass asks for the rows ahead.
template <typename TR, typename T, int H>
void AccumulateValues(const float* p, ptrdiff_t row_stride, ptrdiff_t key_stride, const float* alpha,
                      const TR* const* vrows, int block, int num_rows, float* acc, const T* pages,
                      const int64_t* ahead, int ahead_count) {
  constexpr int kPadded = Dims<H>::kPadded;
  int r = 0;
  auto pass = [&](auto rows) {
    constexpr int R = decltype(rows)::value;
    ValuesPass<TR, T, H, R>(p + r * row_stride, row_stride, key_stride, alpha + r, vrows, block, acc + r * kPadded,
                            pages, ahead, ahead_count);
    r += R;
    ahead_count = 0;
  };
  while (r + 6 <= num_rows) pass(std::integral_constant<int, 6>{});
  if (r + 4 <= num_rows) pass(std::integral_constant<int, 4>{});
  if (r + 2 <= num_rows) pass(std::integral_constant<int, 2>{});
  if (r < num_rows) pass(std::integral_constant<int, 1>{});
}

// ---- a work item ------------------------------------------------------------------

// A tile's state: its queries, accumulators, running max and sum, and where the rows' keys begin and end.
struct Tile {
  int num_rows, rp;  // rows, and rows padded to whole vectors where many
  bool many;
  float* q;          // many: qt [H, rp]; few: [num_rows, Hp] (times sm_scale)
  float* acc;        // [num_rows, Hp]
  float *m, *l, *alpha, *s;
  const int32_t *row_start, *row_end;
  float* buf;        // [kBlockKeys, Hp]: a block's rows converted to float32, where they are
};

// One block of keys [key0, key0 + block): logits, the online-softmax update and acc += P V. offsets holds where
// the block's K/V rows lie in the pages and, from kBlockKeys, the next block's (next_count of them). TR is the
// element the loops load: T for rows of whole vectors read where they lie (float32; bfloat16 in the few-row
// loops, widened in registers as each vector is loaded, since each element is read by a row or a few), float
// for rows converted once a block into buf (bfloat16 in the many-row loops, where every row of the tile reads
// every element; rows that are not whole vectors, zero-padded).
template <typename T, typename TR, int H>
void AttendBlock(const Tile& t, const Problem<T>& pr, int64_t key0, int block, const int64_t* offsets,
                 int next_count) {
  const int padded = (block + kLanes - 1) / kLanes * kLanes;
  const TR* rows[kBlockKeys];
  const int64_t* next = offsets + kBlockKeys;
  // Where rows are asked for before they are read: converted rows (and the many-row loops, bound by their
  // FMAs) ask for the next block's as this block's are converted; rows read where they lie (decode, bound by
  // memory) ask for the row kPrefetchRows ahead of each row they read, in this block or the next.
  const int gather_next = t.many || !kInPlace<T, TR, H> ? next_count : 0;
  const int64_t* ahead = offsets + kPrefetchRows;
  const int ahead_count = gather_next ? 0 : std::max(0, block + next_count - kPrefetchRows);
  GatherRows<T, TR, H>(pr.k_pages, offsets, block, padded, next, gather_next, t.buf, rows);
  if constexpr (std::is_same<TR, float>::value) {
    if (t.many) {
      LogitsMany<H>(t.q, t.rp, rows, padded, t.s);
      SoftmaxMany(t.s, t.rp, key0, block, t.row_start, t.row_end, t.m, t.l, t.alpha);
    }
  }
  if (!t.many) {
    LogitsFew<TR, T, H>(t.q, t.num_rows, rows, padded, t.s, pr.k_pages, ahead, ahead_count);
    SoftmaxFew(t.s, t.num_rows, padded, key0, block, t.row_start, t.row_end, t.m, t.l, t.alpha);
  }
  GatherRows<T, TR, H>(pr.v_pages, offsets, block, padded, next, gather_next, t.buf, rows);
  // p(r, j): s[j * rp + r] (many) or s[r * kBlockKeys + j] (few).
  AccumulateValues<TR, T, H>(t.s, t.many ? 1 : kBlockKeys, t.many ? t.rp : 1, t.alpha, rows, block, t.num_rows,
                             t.acc, pr.v_pages, ahead, ahead_count);
}

// ---- a work item's rows -----------------------------------------------------------

// Row r of a work item (r = token * group + g, over its tokens and the KV head's group): where its query is.
template <typename T>
int64_t QueryRow(const Problem<T>& pr, const WorkItem& item, int r) {
  const int64_t group = pr.num_heads / pr.num_kv_heads;
  const int64_t token = pr.cu_q_lens[item.seq] + item.first_token + r / group;
  return token * pr.num_heads + item.kv_head * group + r % group;
}

// row_start[r], row_end[r] = the keys [start, end) row r sees, clamped to [0, kv_len) whatever the arrays hold
// (no key_end: causal); returns the bounds [lo, hi) of their union (lo >= hi: no key). The tile reads those keys
// only (the keys of no row are never touched).
template <typename T>
std::pair<int64_t, int64_t> KeyBounds(const Problem<T>& pr, const WorkItem& item, int num_rows, int32_t* row_start,
                                      int32_t* row_end) {
  const int64_t group = pr.num_heads / pr.num_kv_heads;
  const int64_t q_begin = pr.cu_q_lens[item.seq];
  const int64_t q_len = pr.cu_q_lens[item.seq + 1] - q_begin;
  const int64_t kv_len = std::min<int64_t>(pr.kv_lens[item.seq], pr.pages_per_seq * pr.page_size);
  const int64_t pos0 = kv_len - q_len + item.first_token;  // position of the tile's first token
  int64_t lo = kv_len, hi = 0;
  for (int r = 0; r < num_rows; ++r) {
    const int64_t token = q_begin + item.first_token + r / group;
    const int64_t start = pr.key_start ? pr.key_start[token] : 0;
    const int64_t end = pr.key_end ? pr.key_end[token] : pos0 + r / group + 1;
    row_start[r] = static_cast<int32_t>(std::min<int64_t>(std::max<int64_t>(start, 0), kv_len));
    row_end[r] = static_cast<int32_t>(std::min<int64_t>(std::max<int64_t>(end, 0), kv_len));
    if (row_start[r] < row_end[r]) {
      lo = std::min<int64_t>(lo, row_start[r]);
      hi = std::max<int64_t>(hi, row_end[r]);
    }
  }
  return {lo, hi};
}

#if defined(MMJAX_ATTENTION_AMX)
// ---- many bfloat16 rows on AMX tiles (prefill) ----------------------------------

// AttendTile's work for a tile of many bfloat16 rows and a head dim of whole 32s, its products on the tile unit
// (attention_amx.h): per block of keys, S = Q K^T (Q and K as they are: the products are exact, the sums
// float32), then in one pass a row the scale, the online-softmax update, P rounded to bfloat16 (as transformers'
// bfloat16 attention rounds its weights before P V) and acc *= alpha (SoftmaxRows), then acc += P V.
template <int H>
void AttendTileAmx(const Problem<BF16>& pr, const WorkItem& item) {
  namespace amx = mmjax_amx;
  constexpr int kKeyTiles = kBlockKeys / amx::kCols;
  const int num_rows = static_cast<int>(item.num_tokens * (pr.num_heads / pr.num_kv_heads));
  const int row_tiles = (num_rows + amx::kRows - 1) / amx::kRows, rows_p = row_tiles * amx::kRows;

  std::vector<uint16_t> q(rows_p * H, 0), p(rows_p * kBlockKeys, 0);
  std::vector<float> acc(rows_p * H, 0.0f), s(rows_p * kBlockKeys, 0.0f);
  std::vector<float> m(rows_p, kMaskValue), l(rows_p, 0.0f);
  std::vector<int32_t> row_start(rows_p, 0), row_end(rows_p, 0), first(rows_p, 0), limit(rows_p, 0);
  std::vector<uint32_t> keys(H / amx::kDepth * kKeyTiles * amx::kPairs * amx::kCols);  // PackKeys' B operands
  std::vector<uint16_t> values(kBlockKeys / amx::kDepth * H / amx::kCols * amx::kPairs * amx::kCols * 2);
  for (int r = 0; r < num_rows; ++r) std::memcpy(&q[r * H], pr.q + QueryRow(pr, item, r) * H, H * sizeof(BF16));
  const auto [lo, hi] = KeyBounds(pr, item, num_rows, row_start.data(), row_end.data());

  amx::Configure();
  int64_t offsets[kBlockKeys];
  const uint16_t* rows[kBlockKeys];
  const auto* zero = reinterpret_cast<const uint16_t*>(ZeroRow<BF16, H>());
  for (int64_t key0 = lo; key0 < hi; key0 += kBlockKeys) {
    const int block = static_cast<int>(std::min<int64_t>(kBlockKeys, hi - key0));
    const int padded16 = (block + 15) / 16 * 16, padded32 = (block + 31) / 32 * 32;
    KeyOffsets<BF16, H>(pr, item.seq, item.kv_head, key0, block, offsets);
    for (int j = 0; j < padded32; ++j)
      rows[j] = j < block ? reinterpret_cast<const uint16_t*>(pr.k_pages + offsets[j]) : zero;
    amx::PackKeys<H>(rows, padded16, kKeyTiles, keys.data());
    amx::Logits<H>(q.data(), row_tiles, keys.data(), padded16 / amx::kCols, kKeyTiles, s.data(), kBlockKeys);
    for (int r = 0; r < num_rows; ++r) {  // the keys of the block row r sees: [first, limit)
      first[r] = static_cast<int32_t>(std::max<int64_t>(row_start[r] - key0, 0));
      limit[r] = static_cast<int32_t>(std::min<int64_t>(row_end[r] - key0, block));
    }
    amx::SoftmaxRows<H>(s.data(), kBlockKeys, num_rows, padded32, pr.sm_scale, first.data(), limit.data(), m.data(),
                        l.data(), p.data(), kBlockKeys, acc.data());
    for (int j = 0; j < block; ++j) rows[j] = reinterpret_cast<const uint16_t*>(pr.v_pages + offsets[j]);
    amx::PackValues<H>(rows, padded32, values.data());
    amx::AccumulateValues<H>(p.data(), kBlockKeys, row_tiles, values.data(), padded32 / amx::kDepth, acc.data());
  }
  amx::Release();

  for (int r = 0; r < num_rows; ++r) {
    BF16* dst = pr.out + QueryRow(pr, item, r) * H;
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    for (int d = 0; d < H; ++d) FromFloat(acc[r * H + d] * inv, dst + d);
  }
}
#endif

// One work item: rows r = token * group + g for its tokens and the KV head's group.
template <typename T, int H>
void AttendTile(const Problem<T>& pr, const WorkItem& item) {
#if defined(MMJAX_ATTENTION_AMX)
  if constexpr (std::is_same<T, BF16>::value && H % mmjax_amx::kDepth == 0) {
    if (item.num_tokens * (pr.num_heads / pr.num_kv_heads) >= kManyRows && mmjax_amx::Enabled())
      return AttendTileAmx<H>(pr, item);
  }
#endif
  constexpr int kPadded = Dims<H>::kPadded;
  Tile t;
  t.num_rows = static_cast<int>(item.num_tokens * (pr.num_heads / pr.num_kv_heads));
  t.many = t.num_rows >= kManyRows;
  t.rp = t.many ? (t.num_rows + kLanes - 1) / kLanes * kLanes : t.num_rows;
  const bool buffered = H % kLanes != 0 || (t.many && !std::is_same<T, float>::value);

  std::vector<float> q(t.many ? H * t.rp : t.num_rows * kPadded, 0.0f), acc(t.num_rows * kPadded, 0.0f);
  std::vector<float> m(t.rp, kMaskValue), l(t.rp, 0.0f), alpha(t.rp, 1.0f), s(kBlockKeys * t.rp);
  std::vector<float> buf(buffered ? kBlockKeys * kPadded : 0);
  // Each row's keys [row_start, row_end), clamped to [0, kv_len) whatever the arrays hold; the tile reads
  // the keys [lo, hi) of their union only (the keys of no row are never touched). Padding rows see none.
  std::vector<int32_t> row_start(t.rp, 0), row_end(t.rp, 0);
  t.q = q.data();
  t.acc = acc.data();
  t.m = m.data();
  t.l = l.data();
  t.alpha = alpha.data();
  t.s = s.data();
  t.row_start = row_start.data();
  t.row_end = row_end.data();
  t.buf = buf.data();
  for (int r = 0; r < t.num_rows; ++r) {
    const T* qr = pr.q + QueryRow(pr, item, r) * H;
    for (int d = 0; d < H; ++d) q[t.many ? d * t.rp + r : r * kPadded + d] = ToFloat(qr[d]) * pr.sm_scale;
  }
  const auto [lo, hi] = KeyBounds(pr, item, t.num_rows, row_start.data(), row_end.data());

  int64_t offsets[2 * kBlockKeys];  // this block's rows, then the next block's
  for (int64_t key0 = lo; key0 < hi; key0 += kBlockKeys) {
    const int block = static_cast<int>(std::min<int64_t>(kBlockKeys, hi - key0));
    // The next block's rows (none at or past hi: no key outside the tile's is read, nor asked for).
    const int next_count = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(kBlockKeys, hi - key0 - block)));
    if (key0 == lo)
      KeyOffsets<T, H>(pr, item.seq, item.kv_head, key0, block, offsets);
    else  // the last block's next
      std::memcpy(offsets, offsets + kBlockKeys, block * sizeof(int64_t));
    KeyOffsets<T, H>(pr, item.seq, item.kv_head, key0 + block, next_count, offsets + kBlockKeys);
    if (buffered) {
      AttendBlock<T, float, H>(t, pr, key0, block, offsets, next_count);
    } else if constexpr (H % kLanes == 0) {  // rows read where they lie
      AttendBlock<T, T, H>(t, pr, key0, block, offsets, next_count);
    }
  }

  for (int r = 0; r < t.num_rows; ++r) {
    T* dst = pr.out + QueryRow(pr, item, r) * H;
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    for (int d = 0; d < H; ++d) FromFloat(acc[r * kPadded + d] * inv, dst + d);
  }
}

template <typename T, int H>
void Run(ffi::ThreadPool& pool, const Problem<T>& pr, int64_t num_seqs) {
  std::memset(pr.out, 0, pr.num_tokens * pr.num_heads * H * sizeof(T));
  std::vector<WorkItem> items;
  const int32_t group = static_cast<int32_t>(pr.num_heads / pr.num_kv_heads);
  const int32_t tile_tokens = std::max<int32_t>(1, kTileRows / group);
  for (int64_t b = 0; b < num_seqs; ++b) {
    const int32_t q_len = pr.cu_q_lens[b + 1] - pr.cu_q_lens[b];
    for (int32_t t0 = 0; t0 < q_len; t0 += tile_tokens)
      for (int32_t kh = 0; kh < pr.num_kv_heads; ++kh)
        items.push_back({static_cast<int32_t>(b), kh, t0, std::min(tile_tokens, q_len - t0)});
  }
  // Longest contexts first: the last items to finish are the cheap ones.
  std::stable_sort(items.begin(), items.end(), [&](const WorkItem& a, const WorkItem& b) {
    return pr.kv_lens[a.seq] - (pr.cu_q_lens[a.seq + 1] - pr.cu_q_lens[a.seq]) + a.first_token >
           pr.kv_lens[b.seq] - (pr.cu_q_lens[b.seq + 1] - pr.cu_q_lens[b.seq]) + b.first_token;
  });
  ParallelFor(pool, static_cast<int64_t>(items.size()), [&](int64_t i) { AttendTile<T, H>(pr, items[i]); });
}

template <typename T>
Problem<T> MakeProblem(ffi::AnyBuffer q, ffi::AnyBuffer k_pages, ffi::AnyBuffer v_pages,
                       ffi::Buffer<ffi::S32> kv_lens, ffi::Buffer<ffi::S32> block_tables,
                       ffi::Buffer<ffi::S32> cu_q_lens, const int32_t* key_start, const int32_t* key_end,
                       float sm_scale, ffi::Result<ffi::AnyBuffer> out) {
  auto qd = q.dimensions();
  auto kd = k_pages.dimensions();
  return Problem<T>{static_cast<const T*>(q.untyped_data()),
                    static_cast<const T*>(k_pages.untyped_data()),
                    static_cast<const T*>(v_pages.untyped_data()),
                    kv_lens.typed_data(), block_tables.typed_data(), cu_q_lens.typed_data(),
                    key_start, key_end, static_cast<T*>(out->untyped_data()),
                    qd[0], qd[1], kd[0], kd[1], kd[2], block_tables.dimensions()[1], sm_scale};
}

ffi::Error RaggedPagedAttention(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k_pages,
                                ffi::AnyBuffer v_pages, ffi::Buffer<ffi::S32> kv_lens,
                                ffi::Buffer<ffi::S32> block_tables, ffi::Buffer<ffi::S32> cu_q_lens,
                                ffi::Buffer<ffi::S32> num_seqs, ffi::Buffer<ffi::S32> key_start,
                                ffi::Buffer<ffi::S32> key_end, float sm_scale, ffi::Result<ffi::AnyBuffer> out) {
  if (q.dimensions().size() != 3 || k_pages.dimensions().size() != 4)
    return ffi::Error::InvalidArgument("expected q [T, N, H] and pages [K, A, G, H]");
  if (q.dimensions()[2] != MMJAX_HEAD_DIM || k_pages.dimensions()[3] != MMJAX_HEAD_DIM)
    return ffi::Error::InvalidArgument("this build of the kernel is for head dim " +
                                       std::to_string(MMJAX_HEAD_DIM));
  // key_start / key_end: one per token, or empty for the causal default; any other size would be read past.
  const int64_t num_tokens = q.dimensions()[0];
  for (const auto* bound : {&key_start, &key_end}) {
    if (bound->element_count() != 0 && bound->element_count() != num_tokens)
      return ffi::Error::InvalidArgument("key_start and key_end must have one entry per query token, or none");
  }
  const int32_t* starts = key_start.element_count() ? key_start.typed_data() : nullptr;
  const int32_t* ends = key_end.element_count() ? key_end.typed_data() : nullptr;
  const int64_t num_batch = kv_lens.dimensions()[0];
  const int64_t live = std::min<int64_t>(std::max<int32_t>(num_seqs.typed_data()[0], 0), num_batch);
  // Only sequences whose tokens lie inside q: a malformed cu_q_lens must not read or write past it.
  const int32_t* cu = cu_q_lens.typed_data();
  int64_t live_checked = 0;
  while (live_checked < live && cu[live_checked] >= 0 && cu[live_checked + 1] >= cu[live_checked] &&
         cu[live_checked + 1] <= q.dimensions()[0])
    ++live_checked;
  return ForElementType(q.element_type(), [&](auto element) {
    using T = decltype(element);
    Run<T, MMJAX_HEAD_DIM>(
        pool, MakeProblem<T>(q, k_pages, v_pages, kv_lens, block_tables, cu_q_lens, starts, ends, sm_scale, out),
        live_checked);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmjaxRaggedPagedAttention, RaggedPagedAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()          // q
                                  .Arg<ffi::AnyBuffer>()          // k_pages
                                  .Arg<ffi::AnyBuffer>()          // v_pages
                                  .Arg<ffi::Buffer<ffi::S32>>()   // kv_lens
                                  .Arg<ffi::Buffer<ffi::S32>>()   // block_tables
                                  .Arg<ffi::Buffer<ffi::S32>>()   // cu_q_lens
                                  .Arg<ffi::Buffer<ffi::S32>>()   // num_seqs
                                  .Arg<ffi::Buffer<ffi::S32>>()   // key_start ([T], or [0]: 0)
                                  .Arg<ffi::Buffer<ffi::S32>>()   // key_end ([T], or [0]: position + 1)
                                  .Attr<float>("sm_scale")
                                  .Ret<ffi::AnyBuffer>());        // out

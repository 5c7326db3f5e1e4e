// The tile products of ragged_paged_attention.cc's bfloat16 prefill on CPUs with AMX (Intel Sapphire Rapids and
// later): S = Q K^T and O += P V on the tile unit, bfloat16 operands into float32 sums.
//
// A tile is 16 rows of 64 bytes: A operands 16 rows x 32 bfloat16, C results 16 x 16 float32, and B operands in
// the pairs layout TDPBF16PS reads ("VNNI"): row p holds, for each of 16 columns n, the elements 2p and 2p + 1 of
// the sum's index: B[p][n][e] = M[2p + e][n]. For S = Q K^T the summed index is the head dim, so K's rows give B
// as 32-bit pairs transposed (PackKeys); for O = P V it is the key, so two V rows interleave into one B row
// (PackValues).
//
// The tile unit's state is per thread and not kept across calls: each work item configures it (Configure) and
// hands it back (Release), as XLA's own AMX dots do around theirs. Linux grants a process the tile data only on
// request (Enabled asks once); where it refuses, the kernel keeps its vector loops.

#ifndef MMJAX_KERNELS_CPU_ATTENTION_AMX_H_
#define MMJAX_KERNELS_CPU_ATTENTION_AMX_H_

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__linux__)
#define MMJAX_ATTENTION_AMX 1

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>

#include "kernel_common.h"

namespace mmjax_amx {

constexpr int kRows = 16;   // rows of every tile
constexpr int kPairs = 16;  // B rows: pairs of the summed index
constexpr int kCols = 16;   // C and B columns
constexpr int kDepth = 32;  // A columns: the summed index, bfloat16

// Whether this process may use the tiles (asked once: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)).
inline bool Enabled() {
  static const bool enabled = [] {
    constexpr long kRequestPermission = 0x1023, kTileData = 18;
    return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
  }();
  return enabled;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-7 as 16 rows of 64 bytes, for this thread.
inline void Configure() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = kRows;
  }
  _tile_loadconfig(&config);
}

inline void Release() { _tile_release(); }

// r[i] = the former column i of the 16 x 16 32-bit elements in r (rows): unpacks within 128-bit lanes leave
// u[4q + k]'s lane L holding column 4L + k of rows 4q..4q + 3, and two lane shuffles gather each column's four.
inline void Transpose16(__m512i* r) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int q = 0; q < 16; q += 4) {
    u[q] = _mm512_unpacklo_epi64(t[q], t[q + 2]);
    u[q + 1] = _mm512_unpackhi_epi64(t[q], t[q + 2]);
    u[q + 2] = _mm512_unpacklo_epi64(t[q + 1], t[q + 3]);
    u[q + 3] = _mm512_unpackhi_epi64(t[q + 1], t[q + 3]);
  }
  for (int k = 0; k < 4; ++k) {
    const __m512i even_lo = _mm512_shuffle_i32x4(u[k], u[4 + k], 0x88);   // lanes 0, 2 of rows 0-3, 4-7
    const __m512i odd_lo = _mm512_shuffle_i32x4(u[k], u[4 + k], 0xDD);    // lanes 1, 3
    const __m512i even_hi = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0x88);
    const __m512i odd_hi = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0xDD);
    r[k] = _mm512_shuffle_i32x4(even_lo, even_hi, 0x88);       // column k
    r[8 + k] = _mm512_shuffle_i32x4(even_lo, even_hi, 0xDD);   // column 8 + k
    r[4 + k] = _mm512_shuffle_i32x4(odd_lo, odd_hi, 0x88);     // column 4 + k
    r[12 + k] = _mm512_shuffle_i32x4(odd_lo, odd_hi, 0xDD);    // column 12 + k
  }
}

// keys[((c * key_tiles_max + kt) * kPairs + p) * kCols + n] = 32-bit pair p of chunk c (head-dim elements
// 32c + 2p, 32c + 2p + 1) of key row 16kt + n, for the padded16 / 16 key tiles (rows[j] for j < padded16, each H
// bfloat16): the B operands of S = Q K^T, one per (head-dim chunk of 32, tile of 16 keys), each a transpose of
// 16 keys' 16 pairs.
template <int H>
void PackKeys(const uint16_t* const* rows, int padded16, int key_tiles_max, uint32_t* keys) {
  for (int kt = 0; kt < padded16 / kCols; ++kt) {
    for (int c = 0; c < H / kDepth; ++c) {
      __m512i r[16];
      for (int n = 0; n < kCols; ++n) r[n] = _mm512_loadu_si512(rows[kt * kCols + n] + c * kDepth);
      Transpose16(r);
      uint32_t* dst = keys + (c * key_tiles_max + kt) * kPairs * kCols;
      for (int p = 0; p < kPairs; ++p) _mm512_storeu_si512(dst + p * kCols, r[p]);
    }
  }
}

// values[((kc * H / 16 + ht) * kPairs + p) * kCols * 2 + 2n + e] = element 16ht + n of value row 32kc + 2p + e,
// for the padded32 / 32 key chunks: the B operands of O = P V, one per (chunk of 32 keys, 16 head-dim columns).
// Two rows interleave 16 bits at a time, 32 columns per unpack.
template <int H>
void PackValues(const uint16_t* const* rows, int padded32, uint16_t* values) {
  constexpr int kColTiles = H / kCols;
  for (int kc = 0; kc < padded32 / kDepth; ++kc) {
    for (int p = 0; p < kPairs; ++p) {
      const uint16_t* even = rows[kc * kDepth + 2 * p];
      const uint16_t* odd = rows[kc * kDepth + 2 * p + 1];
      for (int h0 = 0; h0 < H; h0 += 2 * kCols) {  // 32 columns: two column tiles
        const __m512i a = _mm512_loadu_si512(even + h0), b = _mm512_loadu_si512(odd + h0);
        // Per 128-bit lane i: lo = columns 8i..8i+3 of both rows interleaved, hi = 8i+4..8i+7.
        const __m512i lo = _mm512_unpacklo_epi16(a, b), hi = _mm512_unpackhi_epi16(a, b);
        const __m512i first = _mm512_permutex2var_epi64(lo, _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0), hi);
        const __m512i second = _mm512_permutex2var_epi64(lo, _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4), hi);
        const int ht = h0 / kCols;
        _mm512_storeu_si512(values + ((kc * kColTiles + ht) * kPairs + p) * kCols * 2, first);
        _mm512_storeu_si512(values + ((kc * kColTiles + ht + 1) * kPairs + p) * kCols * 2, second);
      }
    }
  }
}

// s[r * s_stride + j] = q_r . k_j for the row_tiles * 16 rows of q ([rows, H] bfloat16) and the key_tiles * 16
// keys packed by PackKeys.
template <int H>
void Logits(const uint16_t* q, int row_tiles, const uint32_t* keys, int key_tiles, int key_tiles_max, float* s,
            int s_stride) {
  for (int rt = 0; rt < row_tiles; ++rt) {
    for (int kt = 0; kt < key_tiles; ++kt) {
      _tile_zero(0);
      for (int c = 0; c < H / kDepth; ++c) {
        _tile_loadd(1, q + (rt * kRows) * H + c * kDepth, H * 2);
        _tile_loadd(2, keys + (c * key_tiles_max + kt) * kPairs * kCols, kCols * 4);
        _tile_dpbf16ps(0, 1, 2);
      }
      _tile_stored(0, s + rt * kRows * s_stride + kt * kCols, s_stride * 4);
    }
  }
}

// acc[r * H + h] += sum_j p[r * p_stride + j] v_j[h] for the row_tiles * 16 rows and the key_chunks * 32 keys
// packed by PackValues (p bfloat16).
template <int H>
void AccumulateValues(const uint16_t* p, int p_stride, int row_tiles, const uint16_t* values, int key_chunks,
                      float* acc) {
  constexpr int kColTiles = H / kCols;
  for (int rt = 0; rt < row_tiles; ++rt) {
    for (int ht = 0; ht < kColTiles; ++ht) {
      float* c = acc + rt * kRows * H + ht * kCols;
      _tile_loadd(0, c, H * 4);
      for (int kc = 0; kc < key_chunks; ++kc) {
        _tile_loadd(1, p + rt * kRows * p_stride + kc * kDepth, p_stride * 2);
        _tile_loadd(2, values + (kc * kColTiles + ht) * kPairs * kCols * 2, kCols * 4);
        _tile_dpbf16ps(0, 1, 2);
      }
      _tile_stored(0, c, H * 4);
    }
  }
}

typedef float Floats __attribute__((vector_size(64)));   // 16 float32 lanes (one zmm register)
typedef int32_t Ints __attribute__((vector_size(64)));

// exp(x) for x <= 0 on 16 lanes (kernel_common.h's polynomial).
inline Floats Exp16(Floats x) { return mmjax_cpu::ExpClamped<Floats, Ints>(_mm512_max_ps(x, _mm512_set1_ps(-87.0f))); }

// The online-softmax update of a block, one pass a row for rows r < num_rows: the logits s[r * s_stride + j]
// (j < padded, a multiple of 16) times scale, of which keys first[r] <= j < limit[r] are seen; the running max
// m[r] and sum l[r] updated, p[r * p_stride + j] = exp(logit - max) in bfloat16 (0 where unseen), and the
// row's accumulator acc[r * H, (r + 1) * H) scaled by exp(old max - new max).
template <int H>
void SoftmaxRows(const float* s, int s_stride, int num_rows, int padded, float scale, const int32_t* first,
                 const int32_t* limit, float* m, float* l, uint16_t* p, int p_stride, float* acc) {
  constexpr float kMasked = -0.7f * 3.4028234663852886e38f;  // finite: exp(masked - masked) never NaN
  const Ints lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const Floats masked = _mm512_set1_ps(kMasked), zero = _mm512_setzero_ps();
  for (int r = 0; r < num_rows; ++r) {
    const float* sr = s + r * s_stride;
    const Ints lo = reinterpret_cast<Ints>(_mm512_set1_epi32(first[r]));
    const Ints hi = reinterpret_cast<Ints>(_mm512_set1_epi32(limit[r]));
    Floats row_max = masked;
    for (int j0 = 0; j0 < padded; j0 += 16) {
      const Ints j = lane + j0;
      const Floats x = _mm512_loadu_ps(sr + j0) * scale;
      row_max = _mm512_max_ps(row_max, (j >= lo) & (j < hi) ? x : masked);
    }
    const float m_new = std::max(m[r], _mm512_reduce_max_ps(row_max));
    Floats sum = zero;
    for (int j0 = 0; j0 < padded; j0 += 16) {
      const Ints j = lane + j0;
      const Floats e = (j >= lo) & (j < hi) ? Exp16(_mm512_loadu_ps(sr + j0) * scale - m_new) : zero;
      sum += e;
      const __m256bh half = _mm512_cvtneps_pbh(e);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + r * p_stride + j0), reinterpret_cast<const __m256i&>(half));
    }
    const float alpha = Exp16(_mm512_set1_ps(m[r] - m_new))[0];
    l[r] = alpha * l[r] + _mm512_reduce_add_ps(sum);
    m[r] = m_new;
    if (alpha != 1.0f)
      for (int d = 0; d < H; d += 16) _mm512_storeu_ps(acc + r * H + d, _mm512_loadu_ps(acc + r * H + d) * alpha);
  }
}

}  // namespace mmjax_amx

#endif
#endif  // MMJAX_KERNELS_CPU_ATTENTION_AMX_H_

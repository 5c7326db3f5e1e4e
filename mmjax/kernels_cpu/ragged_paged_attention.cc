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
// Work items are (sequence, KV head, tile of up to kTileTokens query tokens),
// spread over XLA's intra-op thread pool. A tile's rows are (token, query head of
// the group); it walks the keys its rows see, [lowest start, highest end) (a sliding
// window's keys, not the whole context), in blocks of kBlockKeys, with one
// online-softmax update per block:
//   S = Q_tile K_block^T, masked, then acc = alpha * acc + P V_block (V rows read in
//   place). Tiles of fewer than kManyRows rows (decode) take one dot product per
//   (row, key) straight from the page; bigger ones (prefill) transpose the K block
//   once into a small buffer so the inner loop runs over keys for every row.
// Pages may lie anywhere, so the rows of the next page are prefetched.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernel_common.h"
#include "xla/ffi/api/ffi.h"

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

constexpr int kBlockKeys = 64;     // keys per online-softmax update
constexpr int kTileTokens = 64;    // query tokens per work item (prefill)
constexpr int kRowBlock = 4;       // query rows per register block of the logits
constexpr int kPrefetchKeys = 16;  // how far ahead rows are prefetched (a page of 16 tokens)
constexpr int kManyRows = 8;       // from this many rows a tile transposes its K blocks
constexpr float kMaskValue = -0.7f * 3.4028234663852886e38f;  // finite: exp(mask - mask) never NaN

// exp(x) for x <= 0 (every argument here is a logit minus its running max),
// written so the compiler vectorizes it (libm's expf does not). Cody-Waite
// range reduction and a degree-6 polynomial: relative error < 2e-7; exp(x) for
// x < -87 flushes to 0.
inline float ExpNonPositive(float x) {
  x = std::max(x, -87.0f);
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// ---- the problem -----------------------------------------------------------

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

  // Key `key` of sequence `seq`, KV head `kv_head`: a row of H elements inside its page.
  const T* KeyRow(const T* pages, int64_t seq, int64_t kv_head, int64_t key, int64_t head_dim) const {
    int64_t page = block_tables[seq * pages_per_seq + key / page_size];
    page = std::min<int64_t>(std::max<int64_t>(page, 0), num_pages - 1);  // as XLA's gather clamps
    return pages + ((kv_head * num_pages + page) * page_size + key % page_size) * head_dim;
  }
};

// Asks for a key's row of the next page while this one is worked on: a sequence's pages may lie anywhere.
template <typename T, int H>
inline void PrefetchRow(const Problem<T>& pr, const T* pages, int64_t seq, int64_t kv_head, int64_t key,
                        int64_t num_keys) {
  if (key >= num_keys) return;
  const char* row = reinterpret_cast<const char*>(pr.KeyRow(pages, seq, kv_head, key, H));
  for (size_t offset = 0; offset < H * sizeof(T); offset += 64) __builtin_prefetch(row + offset);
}

struct WorkItem {
  int32_t seq, kv_head, first_token, num_tokens;  // tokens: offsets into the sequence's query tokens
};

// Logits of rows [0, num_rows) against one block of keys, s[r * kBlockKeys + j]. Few rows
// (decode): one dot product per (row, key) straight from the page. Many rows (prefill):
// the block is transposed once into kt [H, kBlockKeys] so the inner loop runs over keys,
// kRowBlock rows at a time, and the transpose is paid once for all rows.
template <typename T, int H>
void BlockLogits(const Problem<T>& pr, const WorkItem& item, int64_t key0, int block, int64_t num_keys,
                 const float* qs, int num_rows, float* kt, float* s) {
  if (num_rows < kManyRows) {
    for (int j = 0; j < block; ++j) {
      const T* k = pr.KeyRow(pr.k_pages, item.seq, item.kv_head, key0 + j, H);
      PrefetchRow<T, H>(pr, pr.k_pages, item.seq, item.kv_head, key0 + j + kPrefetchKeys, num_keys);
      for (int r = 0; r < num_rows; ++r) {
        const float* qr = qs + r * H;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < H; ++d) dot += qr[d] * ToFloat(k[d]);
        s[r * kBlockKeys + j] = dot;
      }
    }
    return;
  }
  for (int j = 0; j < block; ++j) {
    const T* k = pr.KeyRow(pr.k_pages, item.seq, item.kv_head, key0 + j, H);
    for (int d = 0; d < H; ++d) kt[d * kBlockKeys + j] = ToFloat(k[d]);
  }
  for (int j = block; j < kBlockKeys; ++j)
    for (int d = 0; d < H; ++d) kt[d * kBlockKeys + j] = 0.0f;
  for (int r0 = 0; r0 < num_rows; r0 += kRowBlock) {  // rows are padded to whole row blocks
    float acc[kRowBlock][kBlockKeys] = {};
    for (int d = 0; d < H; ++d) {
      const float* kd = kt + d * kBlockKeys;
      for (int i = 0; i < kRowBlock; ++i) {
        const float qv = qs[(r0 + i) * H + d];
#pragma omp simd
        for (int j = 0; j < kBlockKeys; ++j) acc[i][j] += qv * kd[j];
      }
    }
    std::memcpy(s + r0 * kBlockKeys, acc, sizeof acc);
  }
}

// acc[r] += sum_j p[r, j] V[key0 + j], V rows read in place; a few rows of acc stay in registers.
template <typename T, int H>
void AccumulateValues(const Problem<T>& pr, const WorkItem& item, int64_t key0, int block, int64_t num_keys,
                      const float* p, int num_rows, float* acc) {
  constexpr int kRows = H <= 64 ? 4 : H <= 128 ? 2 : 1;  // kRows x H accumulators: 16 vector registers
  for (int r0 = 0; r0 < num_rows; r0 += kRows) {
    const int rows = std::min(kRows, num_rows - r0);
    float a[kRows][H];
    for (int i = 0; i < rows; ++i) std::memcpy(a[i], acc + (r0 + i) * H, sizeof a[i]);
    for (int j = 0; j < block; ++j) {
      const T* v = pr.KeyRow(pr.v_pages, item.seq, item.kv_head, key0 + j, H);
      if (r0 == 0) PrefetchRow<T, H>(pr, pr.v_pages, item.seq, item.kv_head, key0 + j + kPrefetchKeys, num_keys);
      if (rows == kRows) {
        for (int i = 0; i < kRows; ++i) {
          const float pj = p[(r0 + i) * kBlockKeys + j];
#pragma omp simd
          for (int d = 0; d < H; ++d) a[i][d] += pj * ToFloat(v[d]);
        }
      } else {
        for (int i = 0; i < rows; ++i) {
          const float pj = p[(r0 + i) * kBlockKeys + j];
#pragma omp simd
          for (int d = 0; d < H; ++d) a[i][d] += pj * ToFloat(v[d]);
        }
      }
    }
    for (int i = 0; i < rows; ++i) std::memcpy(acc + (r0 + i) * H, a[i], sizeof a[i]);
  }
}

// One work item: rows r = token * group + g for its tokens and the KV head's group.
template <typename T, int H>
void AttendTile(const Problem<T>& pr, const WorkItem& item) {
  const int64_t group = pr.num_heads / pr.num_kv_heads;
  const int64_t q_begin = pr.cu_q_lens[item.seq];
  const int64_t q_len = pr.cu_q_lens[item.seq + 1] - q_begin;
  const int64_t kv_len = std::min<int64_t>(pr.kv_lens[item.seq], pr.pages_per_seq * pr.page_size);
  const int64_t pos0 = kv_len - q_len + item.first_token;  // position of the tile's first token
  const int num_rows = static_cast<int>(item.num_tokens * group);
  const int padded_rows = num_rows < kManyRows ? num_rows : (num_rows + kRowBlock - 1) / kRowBlock * kRowBlock;

  std::vector<float> qs(padded_rows * H, 0.0f), acc(padded_rows * H, 0.0f);
  std::vector<float> m(padded_rows, kMaskValue), l(padded_rows, 0.0f);
  std::vector<float> s(padded_rows * kBlockKeys), kt(num_rows < kManyRows ? 0 : H * kBlockKeys);
  // Each row's keys [row_start, row_end), clamped to [0, kv_len) whatever the arrays hold; the
  // tile reads the keys [lo, hi) of their union only (the keys of no row are never touched).
  std::vector<int64_t> row_start(num_rows), row_end(num_rows);
  int64_t lo = kv_len, hi = 0;
  for (int r = 0; r < num_rows; ++r) {
    const int64_t token = q_begin + item.first_token + r / group;
    const int64_t head = item.kv_head * group + r % group;
    const T* src = pr.q + (token * pr.num_heads + head) * H;
    for (int d = 0; d < H; ++d) qs[r * H + d] = ToFloat(src[d]) * pr.sm_scale;
    const int64_t start = pr.key_start ? pr.key_start[token] : 0;
    const int64_t end = pr.key_end ? pr.key_end[token] : pos0 + r / group + 1;
    row_start[r] = std::min<int64_t>(std::max<int64_t>(start, 0), kv_len);
    row_end[r] = std::min<int64_t>(std::max<int64_t>(end, 0), kv_len);
    if (row_start[r] < row_end[r]) {
      lo = std::min(lo, row_start[r]);
      hi = std::max(hi, row_end[r]);
    }
  }
  const int64_t num_keys = hi;  // no key at or past it is read (nor prefetched)

  for (int64_t key0 = lo; key0 < hi; key0 += kBlockKeys) {
    const int block = static_cast<int>(std::min<int64_t>(kBlockKeys, hi - key0));
    BlockLogits<T, H>(pr, item, key0, block, num_keys, qs.data(), padded_rows, kt.data(), s.data());
    for (int r = 0; r < num_rows; ++r) {  // online softmax; s becomes p in place
      float* sr = s.data() + r * kBlockKeys;
      // Key key0 + j is visible iff it is in the block and in the row's [row_start, row_end).
      const float first = static_cast<float>(row_start[r] - key0);
      const float limit = std::min(static_cast<float>(row_end[r] - 1 - key0), static_cast<float>(block - 1));
      float block_max = kMaskValue;
#pragma omp simd reduction(max : block_max)
      for (int j = 0; j < kBlockKeys; ++j) {
        if (static_cast<float>(j) >= first && static_cast<float>(j) <= limit) block_max = std::max(block_max, sr[j]);
      }
      const float m_new = std::max(m[r], block_max);
      const float alpha = ExpNonPositive(m[r] - m_new);
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < kBlockKeys; ++j) {
        sr[j] = static_cast<float>(j) >= first && static_cast<float>(j) <= limit ? ExpNonPositive(sr[j] - m_new)
                                                                                  : 0.0f;
        sum += sr[j];
      }
      l[r] = alpha * l[r] + sum;
      m[r] = m_new;
      float* ar = acc.data() + r * H;
#pragma omp simd
      for (int d = 0; d < H; ++d) ar[d] *= alpha;
    }
    AccumulateValues<T, H>(pr, item, key0, block, num_keys, s.data(), num_rows, acc.data());
  }

  for (int r = 0; r < num_rows; ++r) {
    const int64_t token = q_begin + item.first_token + r / group;
    const int64_t head = item.kv_head * group + r % group;
    T* dst = pr.out + (token * pr.num_heads + head) * H;
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    for (int d = 0; d < H; ++d) FromFloat(acc[r * H + d] * inv, dst + d);
  }
}

template <typename T, int H>
void Run(ffi::ThreadPool& pool, const Problem<T>& pr, int64_t num_seqs) {
  std::memset(pr.out, 0, pr.num_tokens * pr.num_heads * H * sizeof(T));
  std::vector<WorkItem> items;
  for (int64_t b = 0; b < num_seqs; ++b) {
    const int32_t q_len = pr.cu_q_lens[b + 1] - pr.cu_q_lens[b];
    for (int32_t t0 = 0; t0 < q_len; t0 += kTileTokens)
      for (int32_t kh = 0; kh < pr.num_kv_heads; ++kh)
        items.push_back({static_cast<int32_t>(b), kh, t0, std::min(kTileTokens, q_len - t0)});
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

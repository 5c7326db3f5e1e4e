// A product with few rows, y [M, N] = x [M, K] . w [K, N], for CPUs: an XLA FFI custom call.
//
// The decoder's products in a decode step have one row per sequence (M <= 16) and read
// every weight once: they should run at the speed memory streams the weights. XLA's CPU
// dot does at M = 1, but at M = 8 it falls to about half the read bandwidth (measured on
// the 2-core benchmark host, benchmarks/skinny_matmul.py). Here each work item is a chunk
// of up to kMaxChunk columns; its rows' accumulators (8 x chunk floats, 16 KiB) stay in L1
// while kRowsOfW rows of w stream through, each row's chunk read contiguously, so every
// load of a w vector feeds 8 rows' FMAs and the hardware prefetcher sees long runs (and
// the rows two blocks ahead are prefetched: ~10% in A/B runs, within the host's noise).
// Rows past 8 take further passes over the chunk (then in L2). Accumulation is float32;
// float32 or bfloat16 in and out (x, w and y of one dtype).

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernel_common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using mmjax_cpu::BF16;
using mmjax_cpu::ForElementType;
using mmjax_cpu::FromFloat;
using mmjax_cpu::ParallelFor;
using mmjax_cpu::ToFloat;

constexpr int kRowsPerPass = 8;   // rows of x whose accumulators share each w vector
constexpr int kRowsOfW = 8;       // rows of w streamed at once (one FMA chain each)
constexpr int kMaxChunk = 512;    // columns per work item (8 x 512 floats of accumulators)
constexpr int kLanes = 16;        // floats per vector
constexpr int kPrefetchBlocks = 2;  // w is prefetched this many blocks of kRowsOfW rows ahead

typedef float Vec __attribute__((vector_size(64), aligned(4)));
typedef uint16_t Vec16 __attribute__((vector_size(32), aligned(2)));
typedef uint32_t VecU32 __attribute__((vector_size(64)));

inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline Vec Load(const BF16* p) {  // bfloat16 is the top half of a float32
  Vec16 h;
  std::memcpy(&h, p, sizeof h);
  const VecU32 u = __builtin_convertvector(h, VecU32) << 16;
  Vec v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

// y[r, c0:c1] for the R rows of x starting at x (row stride K) and y (row stride N).
template <typename T, int R>
void Chunk(const T* x, int64_t K, const T* w, int64_t N, int64_t c0, int64_t c1, T* y) {
  alignas(64) float acc[R][kMaxChunk];
  const int64_t width = c1 - c0, vectors = width / kLanes;
  for (int r = 0; r < R; ++r) std::memset(acc[r], 0, width * sizeof(float));
  int64_t k = 0;
  for (; k + kRowsOfW <= K; k += kRowsOfW) {
    float xs[R][kRowsOfW];
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < kRowsOfW; ++i) xs[r][i] = ToFloat(x[r * K + k + i]);
    const T* wk = w + k * N + c0;
    for (int64_t j = 0; j < vectors; ++j) {
      Vec wv[kRowsOfW];
      for (int i = 0; i < kRowsOfW; ++i) wv[i] = Load(wk + i * N + j * kLanes);
      if (k + (kPrefetchBlocks + 1) * kRowsOfW <= K)  // the same columns, kPrefetchBlocks blocks of rows ahead
        for (int i = 0; i < kRowsOfW; ++i) __builtin_prefetch(wk + (kPrefetchBlocks * kRowsOfW + i) * N + j * kLanes);
      for (int r = 0; r < R; ++r) {
        Vec a;
        std::memcpy(&a, &acc[r][j * kLanes], sizeof a);
        for (int i = 0; i < kRowsOfW; ++i) a += xs[r][i] * wv[i];
        std::memcpy(&acc[r][j * kLanes], &a, sizeof a);
      }
    }
    for (int64_t c = vectors * kLanes; c < width; ++c)  // the chunk's last columns, if not whole vectors
      for (int r = 0; r < R; ++r)
        for (int i = 0; i < kRowsOfW; ++i) acc[r][c] += xs[r][i] * ToFloat(wk[i * N + c]);
  }
  for (; k < K; ++k)  // the last rows of w, if K is not a multiple of kRowsOfW
    for (int r = 0; r < R; ++r) {
      const float xv = ToFloat(x[r * K + k]);
      for (int64_t c = 0; c < width; ++c) acc[r][c] += xv * ToFloat(w[k * N + c0 + c]);
    }
  for (int r = 0; r < R; ++r)
    for (int64_t c = 0; c < width; ++c) FromFloat(acc[r][c], y + r * N + c0 + c);
}

// Rows in passes of 8, then 4, 2 and 1 (four bodies per dtype, not eight: half the build time; the
// engine's decode steps have power-of-two rows, and a pass of fewer rows rereads the chunk from cache).
template <typename T>
void Columns(int64_t M, const T* x, int64_t K, const T* w, int64_t N, int64_t c0, int64_t c1, T* y) {
  for (int64_t r0 = 0; r0 < M;) {
    const int64_t left = M - r0;
    const T* xr = x + r0 * K;
    T* yr = y + r0 * N;
    if (left >= kRowsPerPass) {
      Chunk<T, kRowsPerPass>(xr, K, w, N, c0, c1, yr);
      r0 += kRowsPerPass;
    } else if (left >= 4) {
      Chunk<T, 4>(xr, K, w, N, c0, c1, yr);
      r0 += 4;
    } else if (left >= 2) {
      Chunk<T, 2>(xr, K, w, N, c0, c1, yr);
      r0 += 2;
    } else {
      Chunk<T, 1>(xr, K, w, N, c0, c1, yr);
      r0 += 1;
    }
  }
}

template <typename T>
void Run(ffi::ThreadPool& pool, int64_t M, int64_t K, int64_t N, const T* x, const T* w, T* y) {
  // At least one chunk per thread, a whole number of vectors wide, at most kMaxChunk.
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  int64_t chunks = std::max<int64_t>((N + kMaxChunk - 1) / kMaxChunk, threads);
  chunks = (chunks + threads - 1) / threads * threads;
  const int64_t width = std::min<int64_t>(kMaxChunk, ((N + chunks - 1) / chunks + kLanes - 1) / kLanes * kLanes);
  const int64_t items = (N + width - 1) / width;
  ParallelFor(pool, items, [&](int64_t i) {
    Columns<T>(M, x, K, w, N, i * width, std::min<int64_t>(N, (i + 1) * width), y);
  });
}

ffi::Error SkinnyMatmul(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 2 || yd.size() != 2 || xd[1] != wd[0] || yd[0] != xd[0] || yd[1] != wd[1])
    return ffi::Error::InvalidArgument("expected x [M, K], w [K, N] and y [M, N]");
  if (x.element_type() != w.element_type() || y->element_type() != x.element_type())
    return ffi::Error::InvalidArgument("x, w and y must have one dtype");
  return ForElementType(x.element_type(), [&](auto element) {
    using T = decltype(element);
    Run<T>(pool, xd[0], xd[1], wd[1], static_cast<const T*>(x.untyped_data()),
           static_cast<const T*>(w.untyped_data()), static_cast<T*>(y->untyped_data()));
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmjaxSkinnyMatmul, SkinnyMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()   // x [M, K]
                                  .Arg<ffi::AnyBuffer>()   // w [K, N]
                                  .Ret<ffi::AnyBuffer>());  // y [M, N]

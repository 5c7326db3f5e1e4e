// What mmjax's CPU kernels share: the element types they read and write, and a parallel loop
// over XLA's intra-op thread pool. Included by each kernel's .cc (mmjax.kernels_cpu.build
// hashes every header beside a source into the library's name, so a change here rebuilds them).

#ifndef MMJAX_KERNELS_CPU_KERNEL_COMMON_H_
#define MMJAX_KERNELS_CPU_KERNEL_COMMON_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace mmjax_cpu {

namespace ffi = xla::ffi;

// ---- element types ---------------------------------------------------------

struct BF16 {
  uint16_t bits;
};

inline float ToFloat(float x) { return x; }
inline float ToFloat(BF16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline void FromFloat(float x, float* out) { *out = x; }
inline void FromFloat(float x, BF16* out) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    out->bits = static_cast<uint16_t>((u >> 16) | 0x40u);
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  out->bits = static_cast<uint16_t>(u >> 16);
}

// fn(float{}) or fn(BF16{}) for a buffer's element type (fn runs the kernel for that type), else an error.
template <typename Fn>
ffi::Error ForElementType(ffi::DataType type, Fn fn) {
  switch (type) {
    case ffi::DataType::F32:
      fn(float{});
      return ffi::Error::Success();
    case ffi::DataType::BF16:
      fn(BF16{});
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("dtype must be float32 or bfloat16");
  }
}

// ---- exp of non-positive arguments ----------------------------------------

// exp(x) lane-wise for vectors x of floats V (IV: the integer vector of that width) with every lane in
// [-87, 0] (the caller clamps: exp(-87) is about 1.6e-38, not 0): Cody-Waite range reduction and a degree-6
// polynomial, relative error < 2e-7. The attention kernel's softmax, on 8 lanes and (AMX tiles) on 16.
template <typename V, typename IV>
inline V ExpClamped(V x) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const V n = (x * 1.44269504088896341f + kRound) - kRound;
  V r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const IV bits = (__builtin_convertvector(n, IV) + 127) << 23;
  return p * reinterpret_cast<V>(bits);
}

// ---- parallel loop over work items -----------------------------------------

// How long the calling thread spins for the helpers' last items before it sleeps: a decode step's
// products take 30-100 us each, and waking a sleeping thread costs a good part of that. Measured on
// a chain of the benchmark decoder's products (2-core host): 5.6-6.0 ms with the spin, 6.1-7.3 without.
constexpr auto kSpinBeforeSleep = std::chrono::microseconds(50);

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

struct SharedCounter {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable all_done;
};

// fn(i) for i in [0, num_items), spread over the pool's threads and the calling thread.
template <typename Fn>
void ParallelFor(ffi::ThreadPool& pool, int64_t num_items, Fn fn) {
  if (num_items <= 0) return;
  auto state = std::make_shared<SharedCounter>();
  auto work = [state, num_items, fn]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < num_items;) {
      fn(i);
      if (state->done.fetch_add(1) + 1 == num_items) {
        std::lock_guard<std::mutex> lock(state->mutex);
        state->all_done.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), num_items) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));
  work();  // the calling thread takes items too; helpers that start late find none left
  const auto spin_until = std::chrono::steady_clock::now() + kSpinBeforeSleep;
  for (int spins = 0; state->done.load(std::memory_order_acquire) != num_items; ++spins) {
    if (spins % 64 == 0 && std::chrono::steady_clock::now() > spin_until) break;
    CpuRelax();
  }
  std::unique_lock<std::mutex> lock(state->mutex);
  state->all_done.wait(lock, [&] { return state->done.load() == num_items; });
}

}  // namespace mmjax_cpu

#endif  // MMJAX_KERNELS_CPU_KERNEL_COMMON_H_

// Elementwise float32 functions computed one element at a time by the C library: an XLA FFI custom call.
//
//   x [any shape] float32, op  ->  y [same shape] float32,  y[i] = f(x[i])
// op: 0 exp, 1 log, 2 rsqrt (1 / sqrt), 3 cos, 4 sin, 5 logistic (1 / (1 + exp(-x))), 6 tanh, 7 copy.
//
// copy: y = x, as a custom call XLA never fuses: what it takes is computed, and rounded, before it. XLA:CPU
// contracts a product and a sum of one fusion into one FMA, and fuses differently in different programs;
// an optimization barrier does not stop it (it is expanded before fusion on CPU).
//
// Why: XLA:CPU computes a transcendental function with different code for different array sizes (exp of
// 3 or 7 floats differed from the same floats' exp inside a larger array), so a token's value could
// depend on how many tokens share its step. Here every element takes the same scalar call whatever the
// shape: mmjax's batch-invariant mode (mmjax.batch_invariant). Built without -ffast-math, so GCC does not
// swap the calls for vector versions.

#include <cmath>
#include <cstdint>

#include "kernel_common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

template <typename Fn>
void Apply(ffi::ThreadPool& pool, const float* x, float* y, int64_t n, Fn fn) {
  constexpr int64_t kChunk = 16384;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  mmjax_cpu::ParallelFor(pool, chunks, [&](int64_t c) {
    const int64_t end = std::min(n, (c + 1) * kChunk);
    for (int64_t i = c * kChunk; i < end; ++i) y[i] = fn(x[i]);
  });
}

ffi::Error FixedUnary(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y, int32_t op) {
  const int64_t n = x.element_count();
  const float* in = x.typed_data();
  float* out = y->typed_data();
  switch (op) {
    case 0: Apply(pool, in, out, n, [](float v) { return std::exp(v); }); break;
    case 1: Apply(pool, in, out, n, [](float v) { return std::log(v); }); break;
    case 2: Apply(pool, in, out, n, [](float v) { return 1.0f / std::sqrt(v); }); break;
    case 3: Apply(pool, in, out, n, [](float v) { return std::cos(v); }); break;
    case 4: Apply(pool, in, out, n, [](float v) { return std::sin(v); }); break;
    case 5: Apply(pool, in, out, n, [](float v) { return 1.0f / (1.0f + std::exp(-v)); }); break;
    case 6: Apply(pool, in, out, n, [](float v) { return std::tanh(v); }); break;
    case 7: Apply(pool, in, out, n, [](float v) { return v; }); break;
    default: return ffi::Error::InvalidArgument("op must be 0 (exp) to 7 (copy)");
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmjaxFixedUnary, FixedUnary,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x
                                  .Ret<ffi::Buffer<ffi::F32>>()   // y
                                  .Attr<int32_t>("op"));

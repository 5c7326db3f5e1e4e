// Writes a step's K/V rows into a 16-bit paged cache, in place: an XLA FFI custom call whose output
// aliases the pages.
//
//   pages [K, A, G, H] (KV heads, pages, page size, head dim), rows [T, K, H], slots [T]  ->  pages
// Token t's row of KV head k goes to page slots[t] / G, offset slots[t] % G; a slot outside
// [0, A * G) (padding: -1) is dropped. The element bits are copied as they are (bfloat16 or float16).
//
// Why a custom call: XLA's CPU backend has no 16-bit scatter or dynamic-update-slice; it converts
// every page of the cache to float32 and back around one, each step and layer (measured on the
// benchmark model: a decode step 30x slower in bfloat16 than in float32). Here a step costs its rows.
// The rows come token-major, as the projections make them: a [K, T, H] operand cost XLA a transpose of
// K and of V each layer (3 ms each at a 2048-token bfloat16 step of the benchmark model, jax.profiler).

#include <cstdint>
#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error WriteKvPages(ffi::AnyBuffer pages, ffi::AnyBuffer rows, ffi::Buffer<ffi::S32> slots,
                        ffi::Result<ffi::AnyBuffer> out) {
  auto pd = pages.dimensions();
  auto rd = rows.dimensions();
  if (pd.size() != 4 || rd.size() != 3)
    return ffi::Error::InvalidArgument("expected pages [K, A, G, H] and rows [T, K, H]");
  if (pages.element_type() != rows.element_type() || ffi::ByteWidth(pages.element_type()) != 2)
    return ffi::Error::InvalidArgument("pages and rows must be one 16-bit float type");
  const int64_t num_kv_heads = pd[0], num_pages = pd[1], page_size = pd[2], head_dim = pd[3];
  const int64_t num_tokens = rd[0];
  if (rd[1] != num_kv_heads || rd[2] != head_dim || slots.dimensions()[0] != num_tokens)
    return ffi::Error::InvalidArgument("rows must be [T, K, H] for pages [K, A, G, H] and slots [T]");
  auto* dst = static_cast<uint16_t*>(out->untyped_data());
  if (dst != pages.untyped_data())  // XLA did not alias them: start from a copy of the pages
    std::memcpy(dst, pages.untyped_data(), pages.size_bytes());
  const auto* src = static_cast<const uint16_t*>(rows.untyped_data());
  const int32_t* slot = slots.typed_data();
  const int64_t num_slots = num_pages * page_size;
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (slot[t] < 0 || slot[t] >= num_slots) continue;
    for (int64_t k = 0; k < num_kv_heads; ++k)
      std::memcpy(dst + (k * num_slots + slot[t]) * head_dim, src + (t * num_kv_heads + k) * head_dim,
                  head_dim * sizeof(uint16_t));
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmjaxWriteKvPages, WriteKvPages,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()         // pages
                                  .Arg<ffi::AnyBuffer>()         // rows
                                  .Arg<ffi::Buffer<ffi::S32>>()  // slots
                                  .Ret<ffi::AnyBuffer>());       // the pages, written (aliases pages)

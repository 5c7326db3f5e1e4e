// Zeroed KV pages that cost what is touched: an XLA FFI custom call with no operands whose result is
// zero everywhere, zeroed by the operating system rather than written.
//
//   () -> pages (any shape and element type)
//
// A new KV cache is mostly pages no request has reached. Written with zeros (jnp.zeros), each of its
// 4 KiB memory pages is faulted in and filled before the first step: 1 GiB, the default budget, took
// 0.5-0.7 s of a new engine on the 2-core benchmark host, and made the whole cache resident. Here the
// page-aligned interior of the result is handed back to the kernel (madvise MADV_DONTNEED): XLA's CPU
// buffers are the process heap's, private anonymous memory, which Linux refills with zeros on the next
// touch (man 2 madvise), so a page costs its fault only when a step first writes or reads it. The
// unaligned ends, a buffer under kMinAdviseBytes, or a failed madvise (not Linux, or memory that is not
// private anonymous) are zeroed with memset.

#include <cstdint>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Below this, memset is as cheap as the system call.
constexpr size_t kMinAdviseBytes = size_t{1} << 20;

// Zero [begin, end) by dropping its whole memory pages; false where nothing was dropped.
bool ZeroByDroppingPages(char* begin, char* end, char** aligned_begin, char** aligned_end) {
#if defined(__linux__)
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t first = (reinterpret_cast<uintptr_t>(begin) + page - 1) / page * page;
  const uintptr_t last = reinterpret_cast<uintptr_t>(end) / page * page;
  if (page == 0 || last <= first) return false;
  if (madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED) != 0) return false;
  *aligned_begin = reinterpret_cast<char*>(first);
  *aligned_end = reinterpret_cast<char*>(last);
  return true;
#else
  (void)begin, (void)end, (void)aligned_begin, (void)aligned_end;
  return false;
#endif
}

ffi::Error ZeroedPages(ffi::Result<ffi::AnyBuffer> out) {
  char* begin = static_cast<char*>(out->untyped_data());
  const size_t size = out->size_bytes();
  char* end = begin + size;
  char *middle_begin = nullptr, *middle_end = nullptr;
  if (size >= kMinAdviseBytes && ZeroByDroppingPages(begin, end, &middle_begin, &middle_end)) {
    std::memset(begin, 0, middle_begin - begin);
    std::memset(middle_end, 0, end - middle_end);
  } else {
    std::memset(begin, 0, size);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmjaxZeroedPages, ZeroedPages,
                              ffi::Ffi::Bind().Ret<ffi::AnyBuffer>());  // the zeroed buffer

// Byte copies between the rings and callers' buffers.
//
// Why not plain memcpy: on the development VM (AMD EPYC, FSRM/ERMS), glibc's
// memcpy uses `rep movsb` for copies of a few KiB and more, and `rep movsb`
// collapses from ~37 GB/s to ~2 GB/s when the destination lies 1-31 bytes
// past the source modulo 4 KiB (measured, docs/transport.md). A ring copy's
// relative alignment is whatever the application's buffer and the ring
// position happen to be, so that cliff would hit real programs at random. An
// explicit vector loop has no such cliff (31-40 GB/s at every offset).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace doorway::transport::internal {

inline constexpr size_t kVectorCopyMin = 1024;

#if defined(__x86_64__)
__attribute__((target("avx2"))) inline void CopyAvx2(void* dst, const void* src, size_t n) {
  auto* d = static_cast<char*>(dst);
  auto* s = static_cast<const char*>(src);
  size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
    __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 32));
    __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 64));
    __m256i e = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 96));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), a);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i + 32), b);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i + 64), c);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i + 96), e);
  }
  std::memcpy(d + i, s + i, n - i);  // < 128 bytes: no rep movsb
}

inline void CopySse2(void* dst, const void* src, size_t n) {
  auto* d = static_cast<char*>(dst);
  auto* s = static_cast<const char*>(src);
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16));
    __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 32));
    __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 48));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), a);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i + 16), b);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i + 32), c);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i + 48), e);
  }
  std::memcpy(d + i, s + i, n - i);
}

inline bool HaveAvx2() {
  // Evaluated once; __builtin_cpu_init makes this safe before libgcc's own
  // constructor has run (e.g. when called from another constructor).
  static const bool have = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return have;
}
#endif

// Copies n <= 64 bytes without a call: all loads first, then all stores,
// in at most two 16-byte pieces from each end (overlapping when n is not a
// power of two). Why not memcpy: a call in the data path's one function
// makes the compiler save and spill registers around it, and every such
// store waits in the store buffer behind the ring's index store (a 64 B
// write() took ~15 stores more; docs/transport.md "seventh session").
inline __attribute__((always_inline)) void CopySmall(void* dst, const void* src, size_t n) {
  auto* d = static_cast<char*>(dst);
  auto* s = static_cast<const char*>(src);
  if (n >= 16) {
    char a[16], b[16], c[16], e[16];
    __builtin_memcpy(a, s, 16);
    __builtin_memcpy(e, s + n - 16, 16);
    if (n > 32) {
      __builtin_memcpy(b, s + 16, 16);
      __builtin_memcpy(c, s + n - 32, 16);
      __builtin_memcpy(d + 16, b, 16);
      __builtin_memcpy(d + n - 32, c, 16);
    }
    __builtin_memcpy(d, a, 16);
    __builtin_memcpy(d + n - 16, e, 16);
  } else if (n >= 8) {
    uint64_t a, e;
    __builtin_memcpy(&a, s, 8);
    __builtin_memcpy(&e, s + n - 8, 8);
    __builtin_memcpy(d, &a, 8);
    __builtin_memcpy(d + n - 8, &e, 8);
  } else if (n >= 4) {
    uint32_t a, e;
    __builtin_memcpy(&a, s, 4);
    __builtin_memcpy(&e, s + n - 4, 4);
    __builtin_memcpy(d, &a, 4);
    __builtin_memcpy(d + n - 4, &e, 4);
  } else if (n > 0) {
    char a = s[0], m = s[n / 2], e = s[n - 1];
    d[0] = a;
    d[n / 2] = m;
    d[n - 1] = e;
  }
}

// Copies n > 64 bytes; the ranges must not overlap.
// Out of line: the caller is inlined into the data path, and a call costs
// nothing next to a copy of more than 64 bytes.
__attribute__((noinline)) inline void CopyLarge(void* dst, const void* src, size_t n) {
#if defined(__x86_64__)
  if (n >= kVectorCopyMin) {
    if (HaveAvx2()) {
      CopyAvx2(dst, src, n);
    } else {
      CopySse2(dst, src, n);
    }
    return;
  }
#endif
  std::memcpy(dst, src, n);
}

// Copies n bytes; the ranges must not overlap. Inline (the small case is
// the data path of small messages), the large case may be a call.
inline __attribute__((always_inline)) void CopyBytes(void* dst, const void* src, size_t n) {
  if (n <= 64) {
    CopySmall(dst, src, n);
  } else {
    CopyLarge(dst, src, n);
  }
}

#if defined(__x86_64__)
inline bool HavePrefetchW() {
  // CPUID 0x80000001 ECX bit 8 (PRFCHW / 3DNowPrefetch): AMD since K8, Intel
  // since Broadwell. Older processors may not decode it as a no-op.
  static const bool have = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(0x80000001u, &a, &b, &c, &d) != 0 && (c & (1u << 8)) != 0;
  }();
  return have;
}
#endif

// Asks for the cache line at p in a writable (exclusive) state ahead of a
// store. The producer calls it for the line its next write will start in,
// right after publishing: the ownership request (from L3 or from the other
// core's cache) then overlaps the wait for the peer instead of delaying the
// next publish, which may not become visible before the data stores ahead of
// it (x86-TSO). A hint only: no fault, no effect on correctness.
inline void PrefetchForWrite(const void* p) {
#if defined(__x86_64__)
  if (HavePrefetchW()) asm volatile("prefetchw %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 1, 3);
#endif
}

}  // namespace doorway::transport::internal

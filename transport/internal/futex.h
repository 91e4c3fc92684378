// Thin wrappers over the futex(2) syscall for words that live in memory shared
// between processes. They never use FUTEX_PRIVATE_FLAG: a private futex is
// keyed by (mm, address) and would never wake a waiter in another process.
// (abseil's internal futex wrapper uses the private flag, so it is not reused.)
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>

namespace doorway::transport::internal {

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
static_assert(std::atomic<uint32_t>::is_always_lock_free);

// Sleeps while *word == expected, for at most `timeout_ns` (< 0: no limit).
// Returns 0 when woken (or spuriously), -EAGAIN if *word != expected on entry,
// -ETIMEDOUT, or -EINTR when a signal handler ran.
inline int FutexWait(std::atomic<uint32_t>* word, uint32_t expected, int64_t timeout_ns) {
  struct timespec ts;
  struct timespec* tsp = nullptr;
  if (timeout_ns >= 0) {
    ts.tv_sec = timeout_ns / 1000000000;
    ts.tv_nsec = timeout_ns % 1000000000;
    tsp = &ts;
  }
  long r =
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, expected, tsp, nullptr, 0);
  if (r == 0) return 0;
  return -errno;
}

// Wakes up to `count` waiters. Returns the number woken or -errno.
inline int FutexWake(std::atomic<uint32_t>* word, int count) {
  long r =
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, count, nullptr, nullptr, 0);
  if (r >= 0) return static_cast<int>(r);
  return -errno;
}

inline int64_t MonotonicNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#else
  std::atomic_signal_fence(std::memory_order_seq_cst);
#endif
}

}  // namespace doorway::transport::internal

#include "transport/fence.h"

#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#if defined(__SANITIZE_THREAD__)
#define DOORWAY_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DOORWAY_TSAN 1
#endif
#endif
#ifndef DOORWAY_TSAN
#define DOORWAY_TSAN 0
#endif

namespace doorway::transport {

namespace internal {
constinit std::atomic<bool> g_fast_publish{false};
}  // namespace internal

namespace {

long RealMembarrier(int cmd, unsigned flags, int cpu_id) {
  long r = syscall(SYS_membarrier, cmd, flags, cpu_id);
  return r < 0 ? -errno : r;
}

// The system call, or a test's replacement. Relaxed: set by a test before the
// code under test runs (and inherited by its fork()ed children).
constinit std::atomic<internal::MembarrierFn> g_membarrier{nullptr};

long Membarrier(int cmd) {
  internal::MembarrierFn fn = g_membarrier.load(std::memory_order_relaxed);
  return fn != nullptr ? fn(cmd, 0, 0) : RealMembarrier(cmd, 0, 0);
}

constexpr long kNeeded = MEMBARRIER_CMD_GLOBAL_EXPEDITED | MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED;

bool QueryAndRegister() {
  long cmds = Membarrier(MEMBARRIER_CMD_QUERY);
  if (cmds < 0 || (cmds & kNeeded) != kNeeded) return false;
  if (Membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) != 0) return false;
  // A filter may allow the registration and deny the fence itself: try it
  // once, so that a process whose waiters could not fence never advertises.
  return Membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0;
}

// In a fork()ed child (one thread, so registering is cheap): Linux copies
// the registration with the address space, and registering again is then a
// no-op; if it ever failed, the child's wakers fall back to seq_cst. Only
// called in the child (raw system calls, async-signal-safe).
void OnForkChild() {
  if (!internal::g_fast_publish.load(std::memory_order_relaxed)) return;
  if (Membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) != 0) {
    internal::g_fast_publish.store(false, std::memory_order_relaxed);
  }
}

constinit std::atomic<bool> g_process_fence{false};

void OnForkChildProcessFence() {
  if (!g_process_fence.load(std::memory_order_relaxed)) return;
  if (Membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0) {
    g_process_fence.store(false, std::memory_order_relaxed);
  }
}

}  // namespace

bool EnableProcessFence() {
  if (g_process_fence.load(std::memory_order_relaxed)) return true;
  constexpr long kCmds =
      MEMBARRIER_CMD_PRIVATE_EXPEDITED | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED;
  long cmds = Membarrier(MEMBARRIER_CMD_QUERY);
  if (cmds < 0 || (cmds & kCmds) != kCmds) return false;
  if (Membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0) return false;
  if (Membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0) return false;
  static const int atfork = pthread_atfork(nullptr, nullptr, OnForkChildProcessFence);
  (void)atfork;
  g_process_fence.store(true, std::memory_order_relaxed);
  return true;
}

bool ProcessFenceEnabled() { return g_process_fence.load(std::memory_order_relaxed); }

void ProcessFence() {
  for (;;) {
    if (Membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0) return;
    // A fresh page per call: no lock (a handler may call this), no page
    // that a concurrent call makes read-only under our write. Writing it
    // makes a TLB entry; taking the write permission away flushes it on
    // every CPU that runs this mm, by IPI.
    void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) {
      static_cast<volatile char*>(p)[0] = 1;
      int r = mprotect(p, 4096, PROT_READ);
      munmap(p, 4096);
      if (r == 0) return;
    }
    sched_yield();  // out of memory for one page: try again
  }
}

bool EnableAsymmetricFence() {
  // TSAN does not model membarrier (fence.h): keep the seq_cst publish.
  if (DOORWAY_TSAN) return false;
  if (internal::g_fast_publish.load(std::memory_order_relaxed)) return true;
  if (!QueryAndRegister()) return false;
  // Once per process (a function-local static's guard is fine here: this is
  // the runtime's start-up, or a test, never a signal handler).
  static const int atfork = pthread_atfork(nullptr, nullptr, OnForkChild);
  (void)atfork;
  // Relaxed: the flag only selects which store a waker uses; the
  // registration above happened-before in this thread, and another thread
  // that sees true runs in the same (registered) address space.
  internal::g_fast_publish.store(true, std::memory_order_relaxed);
  return true;
}

bool HeavyFence() { return Membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0; }

namespace internal {

void SetMembarrierForTesting(MembarrierFn fn) { g_membarrier.store(fn, std::memory_order_relaxed); }

void ResetAsymmetricFenceForTesting() { g_fast_publish.store(false, std::memory_order_relaxed); }

void ResetProcessFenceForTesting() { g_process_fence.store(false, std::memory_order_relaxed); }

}  // namespace internal

}  // namespace doorway::transport

#include "transport/shm_mutex.h"

#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "transport/internal/futex.h"

namespace doorway::transport {

namespace internal {
constinit thread_local TidCache t_shm_tid{0, 0};
constinit std::atomic<uint32_t> g_shm_fork_generation{1};
}  // namespace internal

namespace {

void OnForkChild() { internal::g_shm_fork_generation.fetch_add(1, std::memory_order_relaxed); }

bool OwnerAlive(uint32_t tid) {
  if (tid == 0) return false;
  if (kill(static_cast<pid_t>(tid), 0) == 0) return true;
  return errno != ESRCH;  // EPERM: exists, belongs to someone else
}

bool OwnThread(uint32_t tid) {
  return tid != 0 && syscall(SYS_tgkill, getpid(), static_cast<pid_t>(tid), 0) == 0;
}

}  // namespace

uint32_t ShmMutex::SelfTidSlow() {
  // First call of this thread (generation 0 never matches), or the first
  // since a fork: registering here, before any tid is cached, is enough.
  static const int registered = pthread_atfork(nullptr, nullptr, OnForkChild);
  (void)registered;
  internal::TidCache& c = internal::t_shm_tid;
  c.tid = static_cast<uint32_t>(syscall(SYS_gettid)) & kTidMask;
  c.generation = internal::g_shm_fork_generation.load(std::memory_order_relaxed);
  return c.tid;
}

int ShmMutex::Lock(const WaitOptions& opts, Holders holders) {
  const uint32_t tid = SelfTid();
  uint32_t cur = 0;
  // Fast path: one uncontended CAS (acquire pairs with Unlock's release).
  if (word_->compare_exchange_strong(cur, tid, std::memory_order_acquire,
                                     std::memory_order_relaxed))
    return 0;
  if (opts.timeout_ns == 0) return -EAGAIN;
  const int64_t start = internal::MonotonicNs();
  const int64_t deadline = opts.timeout_ns < 0 ? INT64_MAX : start + opts.timeout_ns;
  // Short bounded spin: critical sections are one memcpy.
  for (int i = 0; i < 200; ++i) {
    internal::CpuRelax();
    cur = word_->load(std::memory_order_relaxed);
    if (cur == 0 && word_->compare_exchange_weak(cur, tid, std::memory_order_acquire,
                                                 std::memory_order_relaxed))
      return 0;
  }
  const int64_t interval =
      opts.liveness_interval_ns > 0 ? opts.liveness_interval_ns : kDefaultLivenessIntervalNs;
  for (;;) {
    cur = word_->load(std::memory_order_relaxed);
    if (cur == 0) {
      // We may have slept with others: keep the waiters bit so Unlock wakes them.
      if (word_->compare_exchange_weak(cur, tid | kWaitersBit, std::memory_order_acquire,
                                       std::memory_order_relaxed))
        return 0;
      continue;
    }
    if (!(cur & kWaitersBit)) {
      if (!word_->compare_exchange_weak(cur, cur | kWaitersBit, std::memory_order_relaxed,
                                        std::memory_order_relaxed))
        continue;
      cur |= kWaitersBit;
    }
    // Contended only: one tgkill(sig 0) per slice, ESRCH for a tid outside
    // our thread group (tid 0 is never a holder).
    if (holders == Holders::kThisProcess && !OwnThread(cur & kTidMask)) return -EIO;
    int64_t now = internal::MonotonicNs();
    if (now >= deadline) return -ETIMEDOUT;
    int64_t slice = deadline - now;
    if (slice > interval) slice = interval;
    int rc = internal::FutexWait(word_, cur, slice);
    if (rc == -EINTR) return -EINTR;
    if (rc == -ETIMEDOUT) {
      uint32_t owner = cur & kTidMask;
      if (owner != tid && !OwnerAlive(owner)) {
        // Take over from a dead owner (acquire: whatever it published).
        if (word_->compare_exchange_strong(cur, tid | kWaitersBit, std::memory_order_acquire,
                                           std::memory_order_relaxed))
          return kOwnerDied;
      }
    }
  }
}

void ShmMutex::WakeOne() { internal::FutexWake(word_, 1); }

}  // namespace doorway::transport

// A cross-process mutex on one 32-bit word in shared memory, serialising the
// threads and processes (after fork) that share one end of a ring
// (DESIGN.md §5). The rings themselves are SPSC; this lock makes an end
// "single" again.
//
// Word: 0 = free; otherwise (owner tid) | kWaitersBit when someone may sleep.
//   Lock:    CAS 0 -> tid                       (one uncontended atomic)
//   Unlock:  exchange(0); FUTEX_WAKE only if kWaitersBit was set
//   Slow:    set kWaitersBit, FUTEX_WAIT (shared futex) in bounded slices.
//
// Holder death: when a slice expires, the waiter checks whether the owner tid
// still exists (kill(tid, 0) == ESRCH). If it does not, the waiter takes the
// lock over and Lock returns kOwnerDied. This is safe for the rings because a
// ring operation publishes its index only at the very end: a holder that died
// mid-copy leaves the ring consistent (its uncommitted bytes are simply not
// published). Caveats, documented in docs/transport.md: tids are compared in
// the caller's pid namespace, a recycled tid delays recovery until it exits,
// and a peer (which can write the whole segment) can hold or corrupt our lock
// word. That only stalls this connection, bounded by the caller's timeout and
// liveness fd like any other wait, which is no worse than a peer that stops
// reading.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cerrno>
#include <cstdint>

#include "transport/wait.h"

namespace doorway::transport {

inline constexpr int kOwnerDied = 1;

class ShmMutex {
 public:
  static constexpr uint32_t kWaitersBit = 0x80000000u;
  static constexpr uint32_t kTidMask = 0x3fffffffu;

  ShmMutex() = default;
  explicit ShmMutex(std::atomic<uint32_t>* word) : word_(word) {}

  // 0 when acquired, kOwnerDied when acquired from a dead owner, -EBUSY.
  // Inline: it is on every accelerated read and write (one CAS).
  int TryLock() {
    uint32_t expected = 0;
    // Acquire on success pairs with the release in Unlock (the previous
    // holder's ring operations happen before ours).
    if (word_->compare_exchange_strong(expected, SelfTid(), std::memory_order_acquire,
                                       std::memory_order_relaxed))
      return 0;
    return -EBUSY;
  }
  // Who may legitimately hold the lock. An end used by one process only
  // (no fork since the connection was made) can only be held by a thread of
  // that process: any other tid in the word was written by the peer, and
  // Lock says so (-EIO) instead of waiting for a holder that never lets go.
  enum class Holders : uint8_t { kAnyProcess, kThisProcess };

  // 0 / kOwnerDied when acquired; -EAGAIN (opts.timeout_ns == 0), -ETIMEDOUT,
  // -EINTR (a signal handler ran while asleep), -EIO (kThisProcess and the
  // word names no thread of this process). liveness_fd in opts is not used;
  // liveness_interval_ns bounds the owner-death check interval.
  int Lock(const WaitOptions& opts, Holders holders = Holders::kAnyProcess);
  // Async-signal-safe. Returns 0, or -EPERM if the word did not hold our tid
  // (corrupted by the peer, or a caller bug); the lock is released anyway.
  int Unlock() {
    // Release pairs with the acquire CAS in Lock/TryLock.
    uint32_t prev = word_->exchange(0, std::memory_order_release);
    if (__builtin_expect((prev & kWaitersBit) != 0, 0)) WakeOne();
    return (prev & kTidMask) == SelfTid() ? 0 : -EPERM;
  }

  std::atomic<uint32_t>* word() const { return word_; }

  // The calling thread's tid, cached per thread and refreshed after fork.
  // Inline, from initial-exec TLS: a call through __tls_get_addr and a
  // guard variable cost ~60 instructions, twice per read or write.
  static uint32_t SelfTid();

 private:
  static uint32_t SelfTidSlow();
  void WakeOne();

  std::atomic<uint32_t>* word_ = nullptr;
};

// RAII helper for the common case (blocking lock, no timeout).
class ShmMutexLock {
 public:
  explicit ShmMutexLock(ShmMutex m) : m_(m) { rc_ = m_.Lock(WaitOptions{}); }
  ~ShmMutexLock() {
    if (rc_ >= 0) m_.Unlock();
  }
  ShmMutexLock(const ShmMutexLock&) = delete;
  ShmMutexLock& operator=(const ShmMutexLock&) = delete;
  int status() const { return rc_; }

 private:
  ShmMutex m_;
  int rc_;
};

namespace internal {
// The tid cache of ShmMutex::SelfTid: initial-exec (libdoorway.so is loaded
// at start-up, LD_PRELOAD or linked in) and of external linkage, since gold
// gets the initial-exec TLS of file-local variables wrong
// (runtime/signals.cc "TLS and gold", //abi:tls_relocations_test). Not
// hidden: the library's tests link it as a shared object.
struct TidCache {
  uint32_t generation;
  uint32_t tid;
};
extern __attribute__((tls_model("initial-exec"))) constinit thread_local TidCache t_shm_tid;
// Bumped in the child after fork, so that cached tids are refreshed.
extern constinit std::atomic<uint32_t> g_shm_fork_generation;
}  // namespace internal

inline uint32_t ShmMutex::SelfTid() {
  const internal::TidCache& c = internal::t_shm_tid;
  if (__builtin_expect(
          c.generation == internal::g_shm_fork_generation.load(std::memory_order_relaxed), 1)) {
    return c.tid;
  }
  return SelfTidSlow();
}

}  // namespace doorway::transport

#include "transport/lock_bias.h"

#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>

#include "transport/internal/futex.h"

namespace doorway::transport {

namespace {

// held_ is process-local memory: a private futex.
void WaitHeld(std::atomic<uint32_t>* held, int64_t timeout_ns) {
  struct timespec ts {
    static_cast<time_t>(timeout_ns / 1000000000), static_cast<long>(timeout_ns % 1000000000)
  };
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(held), FUTEX_WAIT_PRIVATE, 1u, &ts, nullptr, 0);
}

void WakeHeld(std::atomic<uint32_t>* held) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(held), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}

// Is t a thread of this process? No after fork in the child (t is the
// parent's), nor after t exited.
bool OwnThread(uint32_t t) {
  return syscall(SYS_tgkill, getpid(), static_cast<pid_t>(t), 0) == 0 || errno != ESRCH;
}

constexpr int64_t kSliceNs = 10'000'000;  // re-check that the owner lives

}  // namespace

void LockBias::BackOut() {
  held_.store(0, std::memory_order_release);
  // The owner no longer names us (B2): a revoker may sleep on held.
  WakeHeld(&held_);
}

void LockBias::WakeAll(ShmMutex lock) {
  WakeHeld(&held_);
  // A normal waiter may have set the word's waiters bit after the
  // revocation, before our plain L1 (only when L1's load of owner was
  // stale): wake it rather than let it sleep a whole slice.
  internal::FutexWake(lock.word(), INT_MAX);
}

bool LockBias::WaitOwnerLeft(std::atomic<uint32_t>* word, uint32_t t, uint32_t self, bool wait) {
  // Our own thread: we are in the slow path of a lock, or a handler that
  // interrupted our own hold (whose L1 sees the revocation: ShmMutex::Unlock).
  if (t == self) return true;
  for (int spins = 0;; ++spins) {
    // R3. Acquire pairs with L2 (and with B1's release, for the word load
    // below: a hold's B1 follows the previous hold's L1).
    if (held_.load(std::memory_order_acquire) == 0) return true;
    if (!wait && (word->load(std::memory_order_relaxed) & ShmMutex::kTidMask) == t) return false;
    if (spins < 100) {
      internal::CpuRelax();
      continue;
    }
    if (!OwnThread(t)) return true;  // fork child, or t exited (it cannot hold then)
    if (!wait) {
      // t is between B1 and B3: a few instructions, unless preempted.
      sched_yield();
      continue;
    }
    WaitHeld(&held_, kSliceNs);  // -EINTR (a handler ran), timeout: re-check
  }
}

LockBias::Slow LockBias::Resolve(std::atomic<uint32_t>* word, uint32_t tid, bool may_claim,
                                 bool wait) {
  for (;;) {
    uint32_t o = owner_.load(std::memory_order_acquire);
    if (o == kNone) return Slow::kNormal;
    if (o == kUnclaimed) {
      const uint32_t want = may_claim && ProcessFenceEnabled() ? tid : kNone;
      if (owner_.compare_exchange_weak(o, want, std::memory_order_acq_rel,
                                       std::memory_order_relaxed)) {
        return want == kNone ? Slow::kNormal : Slow::kClaimed;
      }
      continue;
    }
    if (o == tid) return Slow::kClaimed;  // ours (TryEnter raced a handler's claim)
    if ((o & kRevokingBit) == 0) {
      // R1. Relaxed: the fence (R2) orders it before R3 and before the
      // owner's next B2.
      if (!owner_.compare_exchange_weak(o, o | kRevokingBit, std::memory_order_relaxed,
                                        std::memory_order_relaxed)) {
        continue;
      }
      o |= kRevokingBit;
    }
    // R2, also when another thread set kRevokingBit: its fence may still be
    // on the way, and fencing twice is harmless.
    ProcessFence();
    if (!WaitOwnerLeft(word, o & ShmMutex::kTidMask, tid, wait)) return Slow::kBusy;
    // R4. Release: a thread that sees kNone and takes the word by CAS comes
    // after our R3 (and thus after T's L2).
    uint32_t expected = o;
    owner_.compare_exchange_strong(expected, kNone, std::memory_order_release,
                                   std::memory_order_relaxed);
    return Slow::kNormal;
  }
}

bool LockBias::Adopt(uint32_t tid) {
  held_.store(1, std::memory_order_release);  // B1
  std::atomic_signal_fence(std::memory_order_seq_cst);
  if (owner_.load(std::memory_order_relaxed) == tid) return true;  // B2; the word is ours (CAS)
  BackOut();
  return false;
}

bool LockBias::BeginRevoke() {
  for (;;) {
    uint32_t o = owner_.load(std::memory_order_relaxed);
    if (o == kNone) return false;
    if (o == kUnclaimed) {
      if (owner_.compare_exchange_weak(o, kNone, std::memory_order_relaxed)) return false;
      continue;
    }
    if (o & kRevokingBit) return true;
    if (owner_.compare_exchange_weak(o, o | kRevokingBit, std::memory_order_relaxed)) return true;
  }
}

void LockBias::FinishRevoke(std::atomic<uint32_t>* word, uint32_t self) {
  uint32_t o = owner_.load(std::memory_order_relaxed);
  if ((o & kRevokingBit) == 0 || o == kNone) return;
  // Not waiting: a thread parked in a blocking read holds its end until
  // data comes, and fork must not wait for that. The state stays revoking
  // when the owner is inside a hold; the next thread that finds it
  // completes R3-R4.
  if (!WaitOwnerLeft(word, o & ShmMutex::kTidMask, self, false)) return;
  owner_.compare_exchange_strong(o, kNone, std::memory_order_release, std::memory_order_relaxed);
}

}  // namespace doorway::transport

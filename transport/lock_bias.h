// A biased lock in front of one end's ShmMutex, for a process with several
// threads whose connection is in practice used by one of them (redis-server:
// five threads, all I/O on the main one).
//
// Why: ShmMutex::Unlock is an `xchg`. A locked instruction waits for the
// store buffer to drain, and the buffer holds the operation's index store,
// whose line the peer polls: one cross-core transfer per read or write
// (~74% of redis-server's ManagedWrite samples). A process with one thread
// already skips it (runtime/accel.cc kHeldPlain, __libc_single_threaded);
// this does the same for the thread a connection's end is biased to.
//
// State, process-local (never in the segment: the peer cannot forge it):
//   owner: kUnclaimed -> tid (the first thread that locks the end claims it)
//          tid -> tid | kRevokingBit -> kNone (another thread wanted it)
//          kUnclaimed -> kNone (biasing is off, or the end is shared)
//          Monotone: a bias is never given back (no rebias). kNone is for
//          good: from then on everybody uses the ShmMutex.
//   held:  1 while the owner is inside a biased hold. Written only by the
//          owner thread (and by signal handlers on it).
//
// The owner (TryEnter / Leave), all plain stores and loads:
//   B0  if word != 0: slow path (see TryEnter)
//   B1  held = 1                          (release: after the previous hold's
//                                          word = 0, see FinishRevoke)
//       compiler barrier
//   B2  if owner != tid: back out (held = 0, wake revokers), slow path
//   B3  word = tid                        (the shared lock word, so that the
//                                          ShmMutex sees the end taken if a
//                                          revocation turns this hold into a
//                                          normal one; also what the
//                                          runtime's re-entry check reads)
//       ... the ring operation ...
//   L1  word = 0 (release)   if owner is still tid, else ShmMutex::Unlock
//   L2  held = 0 (release)   pairs with the revoker's acquire load of held
//       compiler barrier
//   L3  if owner != tid: wake revokers (FUTEX_WAKE on held)
//
// A revoker (any other thread):
//   R1  owner = T | kRevokingBit          (CAS from T)
//   R2  ProcessFence(): membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)
//   R3  wait until held == 0 (acquire; FUTEX_WAIT on held in slices)
//   R4  owner = kNone; then the ShmMutex, as everybody from now on.
//
// Why that excludes (Dekker with an asymmetric fence): the membarrier makes
// every running thread of this process execute a full barrier (an IPI; a
// thread that is not running passed one at its context switch). That
// barrier falls somewhere in T's program: if before T's B2 load, that load
// sees R1 and T backs out; otherwise B1 precedes the barrier and R3 sees
// held == 1 and waits for L2. The same argument with B1/B2 replaced by
// L2/L3 shows that a revoker that sleeps in R3 is woken: either R3's load
// sees L2, or L3's load sees R1 and wakes it (FUTEX_WAIT compares held
// atomically with going to sleep). T's stores inside the hold happen
// before the revoker's (L2 release, R3 acquire), and the revoker's hold
// happens before T's next one through the ShmMutex (T's B2 saw kRevoking
// or kNone, so T takes the ShmMutex by CAS).
//
// Claiming (kUnclaimed -> tid) gives no biased hold by itself: the new
// owner takes the ShmMutex by CAS first, which orders it after any normal
// holder (a hold taken by the one-thread path before a second thread
// existed), and then calls Adopt (B1-B2 again) to turn that hold into a
// biased one. A revocation that comes in between makes Adopt fail: the hold
// stays a normal one.
//
// Revoking without waiting (BeginRevoke / FinishRevoke with wait = false:
// fork, and poll's try-lock, which must not wait for a reader parked in a
// blocking read): after the fence, held == 1 and word == T means that T is
// inside a hold whose word store is visible, so everybody else's CAS fails
// until T's L1, which sees the revocation (it came before the fence, and
// L1 follows B3, which followed the fence) and does ShmMutex::Unlock (and
// wakes the word's waiters). held == 1 and word != T means T is between
// B1 and B3 (a few instructions; T backs out or stores the word): spin
// until one or the other. The owner state stays T | kRevokingBit; whoever
// finds it later completes R3-R4 (T itself without waiting: it holds
// nothing when it is in the slow path).
//
// Signal handlers: a handler on T that locks the same end finds held == 1
// (TryEnter says kSelfHeld); the runtime then does what it does for its own
// thread's hold (accel.cc LockEndContended). A handler on another thread
// revokes like any thread. Nothing here takes a mutex or allocates.
//
// fork: the parent revokes every bias before forking (runtime MarkAllShared,
// without waiting); in the child, T | kRevokingBit names a thread of the
// parent, which is no thread of the child (tgkill: ESRCH), so the child
// completes the revocation at once and uses the shared word, which T holds
// if it was inside a hold. An end that another process may hold (fork,
// exec) is never biased: its owner goes straight to kNone.
//
// Feature detection: a claim gives a bias only if this process registered
// for MEMBARRIER_CMD_PRIVATE_EXPEDITED (EnableProcessFence, fence.h); else
// owner goes to kNone and every hold is the ShmMutex's, as before.
#pragma once

#include <atomic>
#include <cstdint>

#include "transport/fence.h"
#include "transport/shm_mutex.h"

namespace doorway::transport {

class LockBias {
 public:
  static constexpr uint32_t kUnclaimed = 0;
  static constexpr uint32_t kRevokingBit = 0x40000000u;
  static constexpr uint32_t kNone = 0x80000000u;
  static_assert((ShmMutex::kTidMask & (kRevokingBit | kNone)) == 0);

  enum class Fast : uint8_t {
    kEntered,   // a biased hold: release it with Leave
    kSelfHeld,  // this thread is inside a biased hold of this end already
    kSlow,      // not this thread's bias: Resolve
  };
  enum class Slow : uint8_t {
    kClaimed,  // this thread owns the bias: take the ShmMutex, then Adopt
    kNormal,   // no bias, for good: use the ShmMutex
    kBusy,     // (wait = false only) the owner is inside a hold: try later
  };

  // Inline: this is every read and write of a biased end.
  __attribute__((always_inline)) Fast TryEnter(std::atomic<uint32_t>* word, uint32_t tid) {
    if (owner_.load(std::memory_order_relaxed) != tid) return Fast::kSlow;
    if (held_.load(std::memory_order_relaxed) != 0) return Fast::kSelfHeld;
    // B0: the word taken means a hold of this thread that is not a biased
    // one (the one-thread path's, taken before a second thread existed, in
    // whose wait a handler now runs), or a peer's forgery: the ShmMutex's
    // path sorts both out (re-entry, or -EIO).
    if (word->load(std::memory_order_relaxed) != 0) return Fast::kSlow;
    held_.store(1, std::memory_order_release);  // B1
    // The hardware StoreLoad is the revoker's membarrier (R2); this keeps
    // the compiler from hoisting B2 above B1.
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (__builtin_expect(owner_.load(std::memory_order_relaxed) != tid, 0)) {  // B2
      BackOut();
      return Fast::kSlow;
    }
    word->store(tid, std::memory_order_relaxed);  // B3
    std::atomic_signal_fence(std::memory_order_seq_cst);
    return Fast::kEntered;
  }

  // Releases a hold that TryEnter (kEntered) or Adopt (true) gave.
  __attribute__((always_inline)) void Leave(ShmMutex lock, uint32_t tid) {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (__builtin_expect(owner_.load(std::memory_order_relaxed) == tid, 1)) {
      lock.word()->store(0, std::memory_order_release);  // L1
    } else {
      // Revoked meanwhile without waiting for us (fork, poll): others may
      // wait on the word.
      (void)lock.Unlock();
    }
    held_.store(0, std::memory_order_release);  // L2
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (__builtin_expect(owner_.load(std::memory_order_relaxed) != tid, 0)) WakeAll(lock);  // L3
  }

  // For a thread that TryEnter sent to the slow path. wait = false: do not
  // wait for an owner inside a hold (kBusy instead). may_claim: an
  // unclaimed bias becomes this thread's if biasing is on; else kNone.
  Slow Resolve(std::atomic<uint32_t>* word, uint32_t tid, bool may_claim, bool wait);

  // After Resolve said kClaimed and the caller took the ShmMutex (CAS):
  // true if the hold is now a biased one (release with Leave), false if a
  // revocation came first (release with ShmMutex::Unlock).
  bool Adopt(uint32_t tid);

  // Revocation of many ends at once (fork): BeginRevoke on each, one
  // ProcessFence() if any returned true, then FinishRevoke on each. Never
  // waits for an owner inside a hold (see the header comment).
  bool BeginRevoke();
  void FinishRevoke(std::atomic<uint32_t>* word, uint32_t self);

  // An end that another process may hold: no bias, ever.
  void Disable() { owner_.store(kNone, std::memory_order_relaxed); }
  bool Unbiased() const { return owner_.load(std::memory_order_relaxed) == kNone; }
  uint32_t owner_for_testing() const { return owner_.load(std::memory_order_relaxed); }

 private:
  void BackOut();
  void WakeAll(ShmMutex lock);
  // R3: true when T left (or is no thread of ours); false: wait was false
  // and T is inside a hold whose word is visibly T's.
  bool WaitOwnerLeft(std::atomic<uint32_t>* word, uint32_t t, uint32_t self, bool wait);

  std::atomic<uint32_t> owner_{kUnclaimed};
  std::atomic<uint32_t> held_{0};
};

}  // namespace doorway::transport

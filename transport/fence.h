// Asymmetric fence for the rings' wake-up protocol (membarrier(2)).
//
// The wake-up protocol (wait.h, ring.h D1/D2) is a Dekker pair: the waker
// stores an index and then loads a waiter flag (`sleeping`, `armed`); the
// waiter stores the flag and then re-reads the index. Both sides need a full
// fence between their store and their load. The waker's side is on every
// publish of every message (an `xchg` on x86, waiting for the index line
// that the peer polls), the waiter's side only when it is about to sleep or
// to wait in poll/epoll. The asymmetric fence moves the whole cost to the
// rare side, as liburcu's and folly's asymmetricHeavyBarrier do:
//
//   waker (registered process)             waiter
//   f = fenced.load(acquire)               sleeping/armed = 1       (seq_cst, W1)
//   if (f) index.store(release)            if (fenced.load()) HeavyFence()   (F1)
//   else   index.store(seq_cst)            recheck the index                 (D2)
//   compiler barrier; load the flag
//
// HeavyFence is membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED): every thread of
// every process registered with MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED that
// runs during the call executes a full barrier (an IPI), and one that does not
// run has passed one (the context switch). So the waker's plain store and its
// flag load are separated by a full barrier wherever the waiter's call falls
// between them (then the store is visible to the recheck), or the barrier
// came before the store (then the flag load follows the waiter's flag store),
// or after the load (then the store preceded it and the recheck sees it).
//
// Rules that make it safe:
//   * `fenced` (per wait line, shared memory) says "the waiters of this line
//     fence". A waiter reads it *after* its own flag store W1 and fences if it
//     is set, whoever set it. It is never cleared while the connection lives:
//     a waker that read 1 may be preempted before its plain store, so no
//     hand-over back to the symmetric mode is possible. A waker that reads 0
//     uses the seq_cst store, which is correct against either kind of waiter.
//     A waiter whose flag store is not yet visible when the waker loads the
//     flag stored it after the waker saw `fenced` = 1 (x86 loads stay in
//     order; `acquire` in C++ terms), so it sees `fenced` = 1 after W1 and
//     fences.
//   * A waker uses the plain store only if its own process is registered
//     (FastPublish()): otherwise the waiter's membarrier would not reach it.
//     Registration belongs to the address space: a fork()ed child inherits it
//     (checked on Linux 6.18 with MEMBARRIER_CMD_GET_REGISTRATIONS; the child
//     re-registers anyway, see fence.cc), exec() drops it and the new image
//     starts unregistered (g_fast_publish is false until it registers again).
//   * A process advertises (sets `fenced` on the lines it waits on) only when
//     it registered successfully, i.e. when it can also issue the heavy fence.
//   * A waiter that must fence but cannot (membarrier denied later, e.g. by a
//     seccomp filter installed after start-up) cannot trust its recheck: it
//     sleeps in short slices (kUnfencedSliceNs) and re-reads, and an armer
//     reports "ready" (its caller does not sleep). Slower, never a hang.
//   * Another build of doorway on the peer side ignores `fenced` (it is in
//     the wait line's padding for older builds): its waker publishes with
//     seq_cst, which is correct; its waiters never set it. A hostile peer can
//     set `fenced` on a line it waits on (it only loses its own wake-ups) or
//     on ours (our waiters then pay a membarrier per sleep).
//
// Under ThreadSanitizer the fast mode is never enabled: TSAN does not model
// membarrier, and a lost wake-up is not a data race it could report anyway.
#pragma once

#include <atomic>

namespace doorway::transport {

// Queries and registers this process for the asymmetric fence (idempotent,
// thread-safe). Returns true if the fast publish is on: membarrier supports
// the global expedited commands and the registration succeeded. False under
// TSAN, when the kernel lacks the commands, or when a seccomp filter denies
// them: then this process's wakers always publish with seq_cst and its waiters
// never advertise `fenced` (they still honour it). Call it early (the runtime
// does at start-up): registering a process that already runs several threads
// costs the kernel an RCU grace period.
bool EnableAsymmetricFence();

// membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED). False if the call failed (then
// the caller must not rely on it; see "Rules" above). ~0.4 µs on the
// development VM with the other CPU idle.
bool HeavyFence();

// The process-private asymmetric fence of the biased end locks
// (lock_bias.h): membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) reaches only
// this process's threads (the global command above also interrupts every
// other registered process). EnableProcessFence registers (idempotent,
// thread-safe; the runtime calls it at start-up, with the asymmetric fence's
// switch DOORWAY_ASYMMETRIC_FENCE) and says whether the fence works; the
// fork child re-registers. Unlike the global one, TSAN builds use it too:
// the biased lock's happens-before edges are all atomics, which TSAN sees.
bool EnableProcessFence();
bool ProcessFenceEnabled();
// The fence itself. Only after EnableProcessFence returned true. Never
// fails: if membarrier fails later (a seccomp filter installed after
// start-up), it falls back to an mprotect() of a private page, whose TLB
// shoot-down interrupts every CPU that runs this address space (folly's
// asymmetricHeavyBarrier fallback; weaker: a kernel that invalidates TLBs
// by broadcast instead of IPIs gives no barrier), and logs nothing.
void ProcessFence();

// The shortest sleep slice of a waiter that had to fence and could not.
inline constexpr long long kUnfencedSliceNs = 1'000'000;  // 1 ms

namespace internal {

// True once this process registered (EnableAsymmetricFence): wakers may then
// publish with a plain store on lines whose waiters fence. Relaxed loads: it
// only goes from false to true within one address space (the fork child
// handler re-checks it), and a stale false only costs the seq_cst store.
extern constinit std::atomic<bool> g_fast_publish;

inline bool FastPublish() { return g_fast_publish.load(std::memory_order_relaxed); }

// Test hooks. The membarrier system call is replaced by `fn` (nullptr:
// the real one), e.g. to inject a kernel without it or a seccomp denial.
using MembarrierFn = long (*)(int cmd, unsigned flags, int cpu_id);
void SetMembarrierForTesting(MembarrierFn fn);
// Turns the fast publish (and the advertising) off again, for tests that
// compare both modes in one process. Always safe for this process's wakers
// (the seq_cst store is correct against either kind of waiter); the
// kernel-side registration stays.
void ResetAsymmetricFenceForTesting();
// Turns the process fence (and thus new biases) off again.
void ResetProcessFenceForTesting();

}  // namespace internal

}  // namespace doorway::transport

// Blocking waits on a Ring: bounded adaptive spin, then a shared futex.
//
// Who wakes whom:
//   * a consumer waiting for data sleeps on RingControl::data_wait; the
//     producer wakes it from Write/Commit/ShutdownWrite;
//   * a producer waiting for space sleeps on RingControl::space_wait; the
//     consumer wakes it from Read/Release/ShutdownRead.
//
// Protocol (no lost wake-up, a syscall only when someone sleeps):
//   waiter                                   waker
//   s = seq.load()                           index/state.store(seq_cst)   (R1/R2/R3, D1)
//   sleeping = 1            (seq_cst, W1)    if (sleeping.load(seq_cst) &&           (D1)
//   if (ready()) done                  (D2)      sleeping.exchange(0))
//   FUTEX_WAIT(seq, s, slice)                  { seq += 1; FUTEX_WAKE(seq, all) }
// W1, the ready() loads, the waker's store and its flag load are all seq_cst,
// so in their single total order either the waker sees the flag or the
// waiter's recheck sees the new index. A wake between the recheck and
// FUTEX_WAIT changed seq, so FUTEX_WAIT returns at once. In the fenced mode
// (fence.h) the waker's store is a release store, and the waiter issues
// membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) between W1 and its recheck
// (F1) instead, if the line says its waiters fence. Only the waker that
// clears the flag calls FUTEX_WAKE (one syscall per sleep, not one per
// operation while the sleeper is being scheduled), and it wakes every
// sleeper, because several threads of one end may have registered through
// the same flag. A waiter never clears the flag (that could hide another
// sleeper's registration); a flag left set after a timeout costs the other
// side one spare FUTEX_WAKE.
//
// Spin policy (docs/transport.md has the measurements): before registering as
// a waiter, the thread spins up to SpinPolicy::budget_ns() with a pause
// instruction, reading the clock every 64 iterations and calling
// sched_yield() every kSpinYieldNs so that two spinners sharing one core
// cannot starve each other. A consumer's poll also prefetches the line its
// next Read starts in (Ring::ReadReadyPrefetch). The budget adapts: a wait that succeeds while
// spinning keeps the budget at >= 2x the time it took; a wait that had to
// sleep doubles the budget if the event came within max_ns (spinning longer
// would have caught it without the ~18 µs/hop futex wake-up), and halves it
// otherwise. After the spin window the thread sleeps in the kernel: an idle
// connection costs no CPU.
//
// Sharing a core: spinning only pays when the peer runs on another CPU. When
// both sides share one (an oversubscribed machine, or both pinned to one
// CPU), a spinner only delays the peer it waits for until sched_yield or
// the scheduler's tick: measured on the development VM, a 64 B ping-pong
// with both sides on one CPU took longer than kernel TCP. So each side
// publishes the CPU it waits on (WaitOptions::own_cpu, the data_wait line
// of the ring it consumes, written only when it changes) and reads the
// peer's (WaitOptions::peer_cpu); when they are equal the wait goes to
// sleep at once. sched_getcpu() reads the rseq area (no system call).
//
// Peer death: the caller passes a kernel fd that reports the peer's death as
// POLLHUP/POLLERR/POLLRDHUP (the door connection's Unix socket). While such an
// fd is given, FUTEX_WAIT sleeps in slices of liveness_interval_ns and the fd
// is polled (poll(fd, 0), one syscall) when a slice expires, i.e. at most
// every liveness_interval_ns of idle time, never on the data path. When the
// peer is gone the wait marks the peer's half of the ring closed (so Read
// returns the remaining data then EOF, Write returns -EPIPE) and returns 0.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "transport/ring.h"

namespace doorway::transport {

// Defaults, chosen from measurements on the 2-vCPU development VM (futex
// wake-up ~18 µs per hop, cache-line handoff ~37 ns per hop): see
// docs/transport.md.
inline constexpr int64_t kDefaultSpinInitialNs = 20'000;
inline constexpr int64_t kDefaultSpinMaxNs = 50'000;
inline constexpr int64_t kDefaultSpinMinNs = 0;
inline constexpr int64_t kSpinYieldNs = 5'000;
inline constexpr int64_t kDefaultLivenessIntervalNs = 100'000'000;  // 100 ms

struct WaitOptions {
  // < 0: wait forever; 0: do not wait (returns -EAGAIN if not ready);
  // > 0: relative timeout (SO_RCVTIMEO/SO_SNDTIMEO), -ETIMEDOUT when it expires.
  int64_t timeout_ns = -1;
  // Kernel fd whose POLLHUP/POLLERR/POLLRDHUP means "the peer is gone"; -1: none.
  int liveness_fd = -1;
  // If set and >= 0 when the wait checks the peer, used instead of
  // liveness_fd: the caller's fd number was closed under the wait (another
  // thread's close()) and this duplicate of the socket stands in for it.
  const std::atomic<int>* liveness_fd_override = nullptr;
  // Upper bound on the time between liveness checks while asleep.
  int64_t liveness_interval_ns = kDefaultLivenessIntervalNs;
  // If set: a counter that the caller's signal handlers bump (this
  // thread's). When it moves away from `interrupt_epoch` during the wait
  // (checked while spinning and after every futex wake or slice), the wait
  // returns -EINTR: a handler ran, though maybe not during the futex
  // system call, which alone would have said EINTR.
  const std::atomic<uint64_t>* interrupt_counter = nullptr;
  uint64_t interrupt_epoch = 0;
  // "Sharing a core" above: where this side publishes the CPU it waits on
  // (Ring::waiter_cpu() of the ring it consumes) and where the peer
  // publishes its own (waiter_cpu() of the ring this side produces into).
  // Either null: spin by the policy alone.
  std::atomic<uint32_t>* own_cpu = nullptr;
  const std::atomic<uint32_t>* peer_cpu = nullptr;
};

// Process-local adaptive spin budget for one waiting end; thread-safe (relaxed
// atomics: a lost update only perturbs a heuristic).
class SpinPolicy {
 public:
  explicit SpinPolicy(int64_t initial_ns = kDefaultSpinInitialNs,
                      int64_t max_ns = kDefaultSpinMaxNs, int64_t min_ns = kDefaultSpinMinNs);
  // A policy that never spins (futex only).
  static SpinPolicy Disabled() { return SpinPolicy(0, 0, 0); }

  SpinPolicy(const SpinPolicy& o)
      : budget_ns_(o.budget_ns()), max_ns_(o.max_ns_), min_ns_(o.min_ns_) {}

  int64_t budget_ns() const { return budget_ns_.load(std::memory_order_relaxed); }
  int64_t max_ns() const { return max_ns_; }
  void OnSpinSuccess(int64_t spent_ns);
  void OnSlept(int64_t waited_ns);

  // Streaming back-off: pauses before the first poll of a spin (0 = poll at
  // once). A wait that its first poll satisfies means the other side
  // produces (or frees space) faster than this side consumes; polling the
  // peer's index line right behind it costs the peer a cache-line transfer
  // per operation (wait.h "Spin policy"). Starts at kBackoffMinPauses after
  // such a wait, doubles up to kBackoffMaxPauses while first polls keep
  // succeeding, and drops to 0 when a first poll finds nothing. Every
  // kBackoffProbeEvery-th wait polls at once as a probe, so that a back-off
  // left over from a stream cannot outlive it (with a back-off longer than
  // the peer's reply time, the delayed first poll always succeeds).
  static constexpr uint32_t kBackoffMinPauses = 2;
  static constexpr uint32_t kBackoffMaxPauses = 32;
  static constexpr uint32_t kBackoffProbeEvery = 8;
  uint32_t backoff_pauses() const { return backoff_.load(std::memory_order_relaxed); }
  // The back-off for the wait that starts now (0 for a probe).
  uint32_t BackoffForWait();
  // Result of a spin's first poll, made after `used` back-off pauses.
  void OnFirstPoll(bool ready, uint32_t used);

 private:
  std::atomic<int64_t> budget_ns_;
  int64_t max_ns_;
  int64_t min_ns_;
  std::atomic<uint32_t> backoff_{0};
  std::atomic<uint32_t> backoff_waits_{0};
};

// Blocks until Read on `ring` would not return -EAGAIN (data, EOF, reset,
// corruption). Returns 0, -EAGAIN (timeout_ns == 0), -ETIMEDOUT, or -EINTR
// (a signal handler ran while asleep). `spin` may be null (no spinning).
int WaitReadable(Ring& ring, const WaitOptions& opts, SpinPolicy* spin);

// Blocks until Write of `min_bytes` (clamped to [1, capacity]) would not
// return -EAGAIN. Same results as WaitReadable.
int WaitWritable(Ring& ring, size_t min_bytes, const WaitOptions& opts, SpinPolicy* spin);

// Returns true if `fd` reports that the peer is gone (POLLHUP, POLLERR,
// POLLRDHUP or POLLNVAL), without blocking.
bool PeerGone(int fd);

}  // namespace doorway::transport

#include "transport/wait.h"

#include <poll.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>

#include "transport/internal/futex.h"

namespace doorway::transport {

SpinPolicy::SpinPolicy(int64_t initial_ns, int64_t max_ns, int64_t min_ns)
    : budget_ns_(std::clamp(initial_ns, min_ns, max_ns)), max_ns_(max_ns), min_ns_(min_ns) {}

void SpinPolicy::OnSpinSuccess(int64_t spent_ns) {
  int64_t b = budget_ns();
  int64_t want = std::min(max_ns_, std::max(b, 2 * spent_ns));
  if (want != b) budget_ns_.store(want, std::memory_order_relaxed);
}

void SpinPolicy::OnSlept(int64_t waited_ns) {
  if (max_ns_ <= 0) return;
  int64_t b = budget_ns();
  int64_t next;
  if (waited_ns <= max_ns_) {
    // The event came soon after we gave up: spinning longer would have paid.
    next = std::min(max_ns_, std::max<int64_t>(2 * b, 1000));
  } else {
    next = std::max(min_ns_, b / 2);
  }
  if (next != b) budget_ns_.store(next, std::memory_order_relaxed);
}

uint32_t SpinPolicy::BackoffForWait() {
  uint32_t b = backoff_pauses();
  if (b == 0) return 0;
  uint32_t n = backoff_waits_.load(std::memory_order_relaxed) + 1;
  backoff_waits_.store(n, std::memory_order_relaxed);
  return n % kBackoffProbeEvery == 0 ? 0 : b;
}

void SpinPolicy::OnFirstPoll(bool ready, uint32_t used) {
  uint32_t b = backoff_pauses();
  uint32_t next;
  if (!ready) {
    next = 0;
  } else if (used == 0) {
    next = b == 0 ? kBackoffMinPauses : b;  // first sign of a stream, or a probe that confirms it
  } else {
    next = std::min(2 * used, kBackoffMaxPauses);
  }
  if (next != b) backoff_.store(next, std::memory_order_relaxed);
}

namespace {
int LivenessFd(const WaitOptions& opts) {
  if (opts.liveness_fd_override != nullptr) {
    int fd = opts.liveness_fd_override->load(std::memory_order_acquire);
    if (fd >= 0) return fd;
  }
  return opts.liveness_fd;
}
}  // namespace

bool PeerGone(int fd) {
  if (fd < 0) return false;
  struct pollfd p = {fd, POLLRDHUP, 0};
  // A raw system call, not libc's poll: under the preload, poll() is
  // doorway's, which would answer for this fd from the rings instead of
  // reporting the kernel socket's hang-up.
  int r = static_cast<int>(syscall(SYS_poll, &p, 1, 0));
  if (r <= 0) return false;
  return (p.revents & (POLLHUP | POLLERR | POLLRDHUP | POLLNVAL)) != 0;
}

namespace {

template <typename Ready>
int WaitOn(Ring& ring, internal::WaitLine& wl, Ready ready, bool consumer, const WaitOptions& opts,
           SpinPolicy* spin) {
  // Streaming back-off (SpinPolicy::backoff_pauses): when it is on, the
  // caller's failed attempt has just looked at the peer's index; do not look
  // again before the pauses.
  const uint32_t backoff = spin != nullptr ? spin->BackoffForWait() : 0;
  if ((backoff == 0 || opts.timeout_ns == 0) && ready()) return 0;
  if (opts.timeout_ns == 0) return -EAGAIN;
  // fence.h: from the first wait on (spinning included, so that a waker of a
  // spinning ping-pong gets the cheap publish too), this line's waiters fence.
  AdvertiseFence(wl);
  // relaxed: the counter is this thread's own (bumped by its handlers).
  auto interrupted = [&opts] {
    return opts.interrupt_counter != nullptr &&
           opts.interrupt_counter->load(std::memory_order_relaxed) != opts.interrupt_epoch;
  };
  // A handler ran: EINTR, unless the peer is gone. A caller that restarts
  // after every signal (SA_RESTART) under a signal stream faster than the
  // liveness slice would otherwise never see a slice expire, nor its dead
  // peer (found by tests/reliability/integrity_test.sh).
  auto on_signal = [&] {
    if (opts.liveness_fd < 0 || !PeerGone(LivenessFd(opts))) return -EINTR;
    if (consumer) {
      ring.MarkWriterGone();
    } else {
      ring.MarkReaderGone();
    }
    return 0;
  };
  RingStats* stats = ring.stats();
  // The clock costs ~33 ns (vDSO) on the development VM, as much as the whole
  // cache-line handoff we are waiting for: read it only when a short timeout
  // needs it, or every kPollsPerClock polls while spinning. A long timeout
  // starts at the first clock reading of the spin, < kPollsPerClock pauses
  // (~2 µs here) late.
  constexpr int64_t kLazyClockMinTimeoutNs = 1'000'000;
  int64_t start =
      opts.timeout_ns > 0 && opts.timeout_ns < kLazyClockMinTimeoutNs ? internal::MonotonicNs() : 0;

  // ---- spin phase: bounded in time (budget) and therefore in count.
  int64_t budget = spin != nullptr ? spin->budget_ns() : 0;
  if (opts.timeout_ns > 0 && budget > opts.timeout_ns) budget = opts.timeout_ns;
  if (opts.own_cpu != nullptr && opts.peer_cpu != nullptr) {
    // Relaxed: hints; a stale value costs one wait the wrong strategy.
    int cpu = sched_getcpu();
    if (cpu >= 0) {
      const auto me = static_cast<uint32_t>(cpu) + 1;
      if (opts.own_cpu->load(std::memory_order_relaxed) != me) {
        opts.own_cpu->store(me, std::memory_order_relaxed);
      }
      if (opts.peer_cpu->load(std::memory_order_relaxed) == me) budget = 0;
    }
  }
  if (budget > 0) {
    constexpr uint32_t kPollsPerClock = 64;  // ~2 µs with a ~31 ns pause
    int64_t spin_end = 0, next_yield = 0, last = 0;
    for (uint32_t i = 1;; ++i) {
      internal::CpuRelax();
      if (i > backoff) {
        bool r = ready();
        if (i == backoff + 1) spin->OnFirstPoll(r, backoff);
        if (r) {
          StatAdd(stats->spin_hits);
          spin->OnSpinSuccess(last != 0 ? last - start : 0);
          return 0;
        }
      }
      if (i % kPollsPerClock == 0) {
        if (interrupted()) return on_signal();
        int64_t now = internal::MonotonicNs();
        if (start == 0) start = now;  // undercounts by < kPollsPerClock polls
        if (spin_end == 0) {
          spin_end = start + budget;
          next_yield = start + kSpinYieldNs;
        }
        if (now >= spin_end) break;
        if (now >= next_yield) {
          sched_yield();  // let a partner that shares this core run
          next_yield = now + kSpinYieldNs;
        }
        last = now;
      }
    }
  }
  StatAdd(stats->spin_misses);
  if (start == 0) start = internal::MonotonicNs();
  const int64_t deadline = opts.timeout_ns < 0 ? INT64_MAX : start + opts.timeout_ns;

  // ---- sleep phase: each iteration sleeps at most one slice.
  for (;;) {
    // seq_cst: see the protocol in wait.h (the load must not move after W1).
    uint32_t seq = wl.seq.load(std::memory_order_seq_cst);
    // W1 pairs with D1 in WakeIfWaiting. Skip the store (and the line
    // transfer) when the flag is already set by us or a sibling.
    if (wl.sleeping.load(std::memory_order_seq_cst) == 0)
      wl.sleeping.store(1, std::memory_order_seq_cst);
    // F1 (fence.h): on a line whose waiters fence, a waker may have
    // published with a plain store; the heavy fence makes the recheck below
    // see it, or the waker see our flag. If the fence failed (a seccomp
    // filter installed after start-up), a wake-up may be lost: sleep in short
    // slices and look again.
    const bool unfenced = FenceAfterArming(wl) < 0;
    if (ready()) break;  // D2
    // A handler that ran after the last check (with no spin budget: before
    // the wait began) would otherwise go unnoticed until a wake-up or the
    // end of a slice.
    if (interrupted()) return on_signal();
    int64_t now = internal::MonotonicNs();
    if (now >= deadline) return -ETIMEDOUT;
    int64_t slice = opts.timeout_ns < 0 ? -1 : deadline - now;
    if (opts.liveness_fd >= 0) {
      int64_t iv = opts.liveness_interval_ns > 0 ? opts.liveness_interval_ns : 1'000'000;
      if (slice < 0 || slice > iv) slice = iv;
    }
    if (unfenced && (slice < 0 || slice > kUnfencedSliceNs)) slice = kUnfencedSliceNs;
    int rc = internal::FutexWait(&wl.seq, seq, slice);
    StatAdd(stats->futex_waits);
    if (ready()) break;
    if (rc == -EINTR || interrupted()) return on_signal();
    if (rc == -ETIMEDOUT && opts.liveness_fd >= 0 && PeerGone(LivenessFd(opts))) {
      if (consumer) {
        ring.MarkWriterGone();
      } else {
        ring.MarkReaderGone();
      }
      return 0;
    }
    // 0 (woken, maybe spuriously or for another waiter), -EAGAIN (seq moved),
    // -ETIMEDOUT (slice or deadline): loop; the deadline check is at the top.
  }
  if (spin != nullptr) spin->OnSlept(internal::MonotonicNs() - start);
  return 0;
}

}  // namespace

int WaitReadable(Ring& ring, const WaitOptions& opts, SpinPolicy* spin) {
  return WaitOn(
      ring, ring.control()->data_wait, [&ring] { return ring.ReadReadyPrefetch(); }, true, opts,
      spin);
}

int WaitWritable(Ring& ring, size_t min_bytes, const WaitOptions& opts, SpinPolicy* spin) {
  return WaitOn(
      ring, ring.control()->space_wait, [&ring, min_bytes] { return ring.WriteReady(min_bytes); },
      false, opts, spin);
}

}  // namespace doorway::transport

// Signal handlers the program installs run through a trampoline that counts
// them (per thread), so that doorway's waits notice a handler that ran while
// they spun or between two futex slices.
//
// Why: a blocking kernel call returns EINTR when a handler runs while it
// waits (and Linux restarts it after an SA_RESTART handler only for some
// calls, signal(7)). doorway's waits on accelerated sockets spin and sleep
// on a futex; a signal that arrives outside the futex system call runs its
// handler without interrupting anything, and the wait would go on: a
// Python program whose SIGALRM handler raises would block in poll() until
// its timeout. With the count, the wait sees the handler ran and returns
// -EINTR like the kernel's call; the caller then restarts or not as the
// kernel would.
//
// Handlers are wrapped only while installed through the interposed calls
// (abi/process.cc): sigaction and __sigaction, and every glibc call that
// installs a handler through glibc's internal sigaction, which an
// interposed sigaction never sees: signal, bsd_signal, ssignal (one BSD
// function under three names), sysv_signal and __sysv_signal, sigset, and
// siginterrupt (which changes what signal() installs). sigaction() reports
// the program's own handler back, never the trampoline. Not covered:
// sigvec (a compat-only symbol that new programs cannot link) and a
// program that calls rt_sigaction with syscall(2).
#ifndef DOORWAY_RUNTIME_SIGNALS_H_
#define DOORWAY_RUNTIME_SIGNALS_H_

#include <signal.h>

#include <atomic>
#include <cstdint>

namespace doorway::runtime {

// ---- Critical sections: asynchronous signals wait until the copy is done.
//
// The kernel runs a signal handler only between system calls, so a handler
// that reads or writes a socket always finds it between two operations.
// doorway's operations run in user space: a handler can interrupt its
// thread while that thread holds one end of a ring in the middle of a copy.
// If the handler then reads or writes the same end, it can neither go on
// (the ring is half-updated) nor wait (for its own thread). So, while a
// thread is inside a section (holding an end's lock and not parked in a
// wait), the counting trampoline does not run the program's handler for an
// asynchronous signal: it saves the signal (number, siginfo, a copy of the
// ucontext, the handler and its sa_mask/sa_flags as installed) in a small
// per-thread queue, blocks the signal in the interrupted context (its
// uc_sigmask, restored by sigreturn, so further instances stay pending in
// the kernel, queued or merged by the kernel's own rules) and returns.
// Leaving the outermost section, or parking in a wait inside one, runs the
// saved handlers on the same thread with the mask the kernel would have
// set (sa_mask, plus the signal unless SA_NODEFER), then unblocks the
// signal. Handlers thus run after the copy is committed and the lock
// released, as if the signal had come at the end of the system call.
//
// Never deferred: signals a fault raised (SIGSEGV, SIGBUS, SIGFPE, SIGILL,
// SIGTRAP, SIGSYS with a kernel si_code > 0: the faulting instruction would
// run again), and SIGABRT (abort() on this thread does not come back to
// the section). Waits (spin, futex, kernel poll) are not sections, so a
// signal interrupts them exactly as before (EINTR or restart).
//
// Costs on the data path: a thread-local increment and decrement per
// section, two loads; no system call. A deferred signal costs two or three
// rt_sigprocmask calls when it is delivered. Caveats: the handler runs on
// the thread's current stack (not on a sigaltstack it asked for with
// SA_ONSTACK); the ucontext it gets is a copy of the interrupted context
// (reading it is fine; changes to it have no effect); if more than
// kMaxDeferredSignals are pending at once, or a deferred handler left by
// longjmp, the extra signal runs at once (the old behaviour: the handler's
// own call on the end it interrupted gets EINTR).
inline constexpr std::uint32_t kMaxDeferredSignals = 4;

namespace internal {
struct SignalDeferral {
  // > 0: inside a section. Changed only by the thread itself (handlers that
  // interrupt it leave it as they found it); read by its trampoline.
  std::atomic<std::uint32_t> depth{0};
  // Free-running: saved signals [head, tail) wait for delivery.
  std::atomic<std::uint32_t> head{0};
  std::atomic<std::uint32_t> tail{0};
};
extern __attribute__((
    tls_model("initial-exec"))) constinit thread_local SignalDeferral t_signal_deferral;
// Runs the saved handlers (depth must be 0).
void DeliverDeferredSignals();
}  // namespace internal

// relaxed + signal fences everywhere below: only this thread and its own
// signal handlers touch these; the fences keep the compiler from moving
// the section's memory accesses across the depth changes.
inline void EnterSignalSection() {
  internal::SignalDeferral& d = internal::t_signal_deferral;
  d.depth.store(d.depth.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

inline void LeaveSignalSection() {
  internal::SignalDeferral& d = internal::t_signal_deferral;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  std::uint32_t depth = d.depth.load(std::memory_order_relaxed) - 1;
  d.depth.store(depth, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  if (__builtin_expect(depth == 0 && d.tail.load(std::memory_order_relaxed) !=
                                         d.head.load(std::memory_order_relaxed),
                       0)) {
    internal::DeliverDeferredSignals();
  }
}

// A section for a scope.
class SignalSection {
 public:
  SignalSection() { EnterSignalSection(); }
  ~SignalSection() { LeaveSignalSection(); }
  SignalSection(const SignalSection&) = delete;
  SignalSection& operator=(const SignalSection&) = delete;
};

// Inside a section, a stretch where signals run again (a wait): Open runs
// the handlers saved so far; Close enters the section(s) again.
class SignalWindow {
 public:
  void Open() {
    internal::SignalDeferral& d = internal::t_signal_deferral;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    saved_ = d.depth.load(std::memory_order_relaxed);
    d.depth.store(0, std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (d.tail.load(std::memory_order_relaxed) != d.head.load(std::memory_order_relaxed)) {
      internal::DeliverDeferredSignals();
    }
  }
  void Close() {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    internal::t_signal_deferral.depth.store(saved_, std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);
  }

 private:
  std::uint32_t saved_ = 0;
};

// This thread's count of handler runs (initial-exec TLS: safe to touch in a
// signal handler).
const std::atomic<std::uint64_t>* SignalEpochOfThisThread();

// The interposed calls; return like libc (-1 and errno on failure).
int Sigaction(int sig, const struct sigaction* act, struct sigaction* old);
// glibc's signal() = bsd_signal() = ssignal(): SA_RESTART (unless
// siginterrupt(sig, 1) was called), the signal blocked in its handler.
sighandler_t Signal(int sig, sighandler_t handler);
// sysv_signal(): SA_RESETHAND | SA_NODEFER, no SA_RESTART.
sighandler_t SysvSignal(int sig, sighandler_t handler);
// sigset(): no flags; SIG_HOLD blocks the signal instead; the signal is
// unblocked otherwise; returns SIG_HOLD if it was blocked.
sighandler_t Sigset(int sig, sighandler_t disp);
// siginterrupt(): clears (flag != 0) or sets SA_RESTART on the installed
// handler and remembers it for later signal() calls, as glibc does.
int Siginterrupt(int sig, int flag);

}  // namespace doorway::runtime

#endif  // DOORWAY_RUNTIME_SIGNALS_H_

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

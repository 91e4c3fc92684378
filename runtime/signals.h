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
// Handlers are wrapped only while installed through sigaction() or
// signal() (interposed in abi/); sigaction() reports the program's own
// handler back, never the trampoline.
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
sighandler_t Signal(int sig, sighandler_t handler);

}  // namespace doorway::runtime

#endif  // DOORWAY_RUNTIME_SIGNALS_H_

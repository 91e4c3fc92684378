// The poll engine: poll/ppoll/select/pselect over any mix of kernel fds and
// accelerated connections (DESIGN §7; epoll is not handled here yet).
//
// How it works: an accelerated connection's readiness comes from its rings
// (accel.h ConnPollEvents), a kernel fd's from the kernel.
//  * One accelerated fd waiting for one direction (how Python, curl and most
//    synchronous code use poll for timeouts): the transport's own wait, a
//    bounded spin then the ring's futex (transport/wait.h), exactly like a
//    blocking read or write.
//  * Anything else: evaluate both kinds without blocking, spin a bounded
//    time re-checking the rings (a peer on another core answers within
//    microseconds; a kernel sleep costs ~18 µs per wake-up on this VM), then
//    arm the accelerated fds' rings (accel.h ArmDoorbells) and sleep in the
//    kernel's ppoll on the kernel fds plus the accelerated fds' Unix
//    sockets, where the peer's doorbell (data, EOF or room arrived) or
//    hang-up wakes it. Events are then recomputed from the rings.
#ifndef DOORWAY_RUNTIME_POLL_H_
#define DOORWAY_RUNTIME_POLL_H_

#include <poll.h>
#include <signal.h>
#include <sys/select.h>

#include <cstdint>

namespace doorway::runtime {

// Whether any fd in the array is an accelerated connection (one table load
// per fd): if not, the caller may use the kernel's poll directly.
bool AnyAccelerated(const pollfd* fds, nfds_t n);
bool AnyAccelerated(int nfds, const fd_set* r, const fd_set* w, const fd_set* e);

// poll semantics; timeout_ns < 0 waits forever. sigmask as for ppoll (may be
// null). Returns the number of fds with events, or -errno (-EINTR, -EINVAL,
// -ENOMEM).
int EnginePoll(pollfd* fds, nfds_t n, std::int64_t timeout_ns, const sigset_t* sigmask);

// select semantics on top of EnginePoll; *timeout_ns (if not null and >= 0)
// is updated with the time left, as Linux's select updates its timeval.
int EngineSelect(int nfds, fd_set* r, fd_set* w, fd_set* e, std::int64_t* timeout_ns,
                 const sigset_t* sigmask);

}  // namespace doorway::runtime

#endif  // DOORWAY_RUNTIME_POLL_H_

// Readiness waits. Pass-through until accelerated fds exist (the wait engine
// in runtime/ will take these over).
// Fortified glibc headers (Bazel's opt mode sets _FORTIFY_SOURCE) declare
// read/recv/poll as inline wrappers that would clash with our definitions.
#undef _FORTIFY_SOURCE

#include <poll.h>
#include <sys/epoll.h>
#include <sys/select.h>

#include "abi/internal/trampoline.h"

extern "C" [[noreturn]] void __chk_fail(void);

DOORWAY_EXPORT int poll(pollfd* fds, nfds_t nfds, int timeout) {
  return DOORWAY_REAL(poll)(fds, nfds, timeout);
}

DOORWAY_EXPORT int __poll_chk(pollfd* fds, nfds_t nfds, int timeout, size_t fdslen) {
  if (fdslen / sizeof(*fds) < nfds) __chk_fail();
  return DOORWAY_REAL(poll)(fds, nfds, timeout);
}

DOORWAY_EXPORT int ppoll(pollfd* fds, nfds_t nfds, const timespec* timeout,
                         const sigset_t* sigmask) {
  return DOORWAY_REAL(ppoll)(fds, nfds, timeout, sigmask);
}

DOORWAY_EXPORT int __ppoll_chk(pollfd* fds, nfds_t nfds, const timespec* timeout,
                               const sigset_t* sigmask, size_t fdslen) {
  if (fdslen / sizeof(*fds) < nfds) __chk_fail();
  return DOORWAY_REAL(ppoll)(fds, nfds, timeout, sigmask);
}

DOORWAY_EXPORT int select(int nfds, fd_set* r, fd_set* w, fd_set* e, timeval* timeout) {
  return DOORWAY_REAL(select)(nfds, r, w, e, timeout);
}

DOORWAY_EXPORT int pselect(int nfds, fd_set* r, fd_set* w, fd_set* e, const timespec* timeout,
                           const sigset_t* sigmask) {
  return DOORWAY_REAL(pselect)(nfds, r, w, e, timeout, sigmask);
}

DOORWAY_EXPORT int epoll_create(int size) { return DOORWAY_REAL(epoll_create)(size); }

DOORWAY_EXPORT int epoll_create1(int flags) { return DOORWAY_REAL(epoll_create1)(flags); }

DOORWAY_EXPORT int epoll_ctl(int epfd, int op, int fd, epoll_event* event) {
  // An accelerated listener's fd is an epoll fd (runtime/accel.h), and the
  // kernel refuses EPOLLEXCLUSIVE on an epoll fd (EINVAL), which nginx asks
  // for on its listeners. Without the flag every waiter is woken for a new
  // connection and all but one find accept() saying EAGAIN: correct, just
  // not exclusive.
  if (event != nullptr && (event->events & EPOLLEXCLUSIVE) &&
      doorway::fdtable::GlobalTable().Tag(fd) == doorway::runtime::kTagListener) {
    epoll_event ev = *event;
    ev.events &= ~EPOLLEXCLUSIVE;
    return DOORWAY_REAL(epoll_ctl)(epfd, op, fd, &ev);
  }
  return DOORWAY_REAL(epoll_ctl)(epfd, op, fd, event);
}

DOORWAY_EXPORT int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout) {
  return DOORWAY_REAL(epoll_wait)(epfd, events, maxevents, timeout);
}

DOORWAY_EXPORT int epoll_pwait(int epfd, epoll_event* events, int maxevents, int timeout,
                               const sigset_t* sigmask) {
  return DOORWAY_REAL(epoll_pwait)(epfd, events, maxevents, timeout, sigmask);
}

DOORWAY_EXPORT int epoll_pwait2(int epfd, epoll_event* events, int maxevents,
                                const timespec* timeout, const sigset_t* sigmask) {
  return DOORWAY_REAL(epoll_pwait2)(epfd, events, maxevents, timeout, sigmask);
}

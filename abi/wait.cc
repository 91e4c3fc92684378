// Readiness waits. poll/ppoll/select/pselect go to the wait engine
// (runtime/poll.h) when an accelerated connection is among the fds; epoll
// still passes through (accelerated fds report readability to the kernel
// with doorbells, but are always writable to it).
// Fortified glibc headers (Bazel's opt mode sets _FORTIFY_SOURCE) declare
// read/recv/poll as inline wrappers that would clash with our definitions.
#undef _FORTIFY_SOURCE

#include <poll.h>
#include <sys/epoll.h>
#include <sys/select.h>

#include <cerrno>
#include <cstdint>

#include "abi/internal/trampoline.h"
#include "runtime/epoll.h"
#include "runtime/poll.h"
#include "runtime/sockets.h"

using doorway::abi::Ret;
namespace rt = doorway::runtime;

extern "C" [[noreturn]] void __chk_fail(void);

namespace {

std::int64_t MsToNs(int ms) { return ms < 0 ? -1 : static_cast<std::int64_t>(ms) * 1000000; }

std::int64_t TsToNs(const timespec* ts) {
  if (ts == nullptr) return -1;
  return static_cast<std::int64_t>(ts->tv_sec) * 1000000000 + ts->tv_nsec;
}

// The wait engine (runtime/poll.h) takes over only when an accelerated
// connection is among the fds; otherwise the kernel answers alone.
int Poll(pollfd* fds, nfds_t nfds, std::int64_t timeout_ns, const sigset_t* sigmask) {
  return Ret(rt::EnginePoll(fds, nfds, timeout_ns, sigmask));
}

}  // namespace

DOORWAY_EXPORT int poll(pollfd* fds, nfds_t nfds, int timeout) {
  if (rt::AnyAccelerated(fds, nfds)) return Poll(fds, nfds, MsToNs(timeout), nullptr);
  return DOORWAY_REAL(poll)(fds, nfds, timeout);
}

DOORWAY_EXPORT int __poll_chk(pollfd* fds, nfds_t nfds, int timeout, size_t fdslen) {
  if (fdslen / sizeof(*fds) < nfds) __chk_fail();
  return poll(fds, nfds, timeout);
}

DOORWAY_EXPORT int ppoll(pollfd* fds, nfds_t nfds, const timespec* timeout,
                         const sigset_t* sigmask) {
  if (rt::AnyAccelerated(fds, nfds)) {
    if (timeout != nullptr &&
        (timeout->tv_sec < 0 || timeout->tv_nsec < 0 || timeout->tv_nsec >= 1000000000)) {
      errno = EINVAL;
      return -1;
    }
    return Poll(fds, nfds, TsToNs(timeout), sigmask);
  }
  return DOORWAY_REAL(ppoll)(fds, nfds, timeout, sigmask);
}

DOORWAY_EXPORT int __ppoll_chk(pollfd* fds, nfds_t nfds, const timespec* timeout,
                               const sigset_t* sigmask, size_t fdslen) {
  if (fdslen / sizeof(*fds) < nfds) __chk_fail();
  return ppoll(fds, nfds, timeout, sigmask);
}

DOORWAY_EXPORT int select(int nfds, fd_set* r, fd_set* w, fd_set* e, timeval* timeout) {
  if (!rt::AnyAccelerated(nfds, r, w, e)) return DOORWAY_REAL(select)(nfds, r, w, e, timeout);
  if (timeout != nullptr && (timeout->tv_sec < 0 || timeout->tv_usec < 0)) {
    errno = EINVAL;
    return -1;
  }
  std::int64_t ns = -1;
  if (timeout != nullptr) {
    ns = static_cast<std::int64_t>(timeout->tv_sec) * 1000000000 + timeout->tv_usec * 1000;
  }
  int rc = rt::EngineSelect(nfds, r, w, e, timeout != nullptr ? &ns : nullptr, nullptr);
  if (timeout != nullptr) {  // Linux updates the timeout with the time left
    timeout->tv_sec = ns / 1000000000;
    timeout->tv_usec = (ns % 1000000000) / 1000;
  }
  return Ret(rc);
}

DOORWAY_EXPORT int pselect(int nfds, fd_set* r, fd_set* w, fd_set* e, const timespec* timeout,
                           const sigset_t* sigmask) {
  if (!rt::AnyAccelerated(nfds, r, w, e)) {
    return DOORWAY_REAL(pselect)(nfds, r, w, e, timeout, sigmask);
  }
  if (timeout != nullptr &&
      (timeout->tv_sec < 0 || timeout->tv_nsec < 0 || timeout->tv_nsec >= 1000000000)) {
    errno = EINVAL;
    return -1;
  }
  std::int64_t ns = TsToNs(timeout);
  return Ret(rt::EngineSelect(nfds, r, w, e, timeout != nullptr ? &ns : nullptr, sigmask));
}

// Every epoll fd is known (runtime/epoll.h), so that nesting it in another
// set is seen.
DOORWAY_EXPORT int epoll_create(int size) {
  int fd = DOORWAY_REAL(epoll_create)(size);
  if (fd >= 0 && rt::TrackingEnabled()) rt::NoteEpollCreated(fd);
  return fd;
}

DOORWAY_EXPORT int epoll_create1(int flags) {
  int fd = DOORWAY_REAL(epoll_create1)(flags);
  if (fd >= 0 && rt::TrackingEnabled()) rt::NoteEpollCreated(fd);
  return fd;
}

DOORWAY_EXPORT int epoll_ctl(int epfd, int op, int fd, epoll_event* event) {
  // An accelerated listener's fd is an epoll fd (runtime/accel.h), and the
  // kernel refuses EPOLLEXCLUSIVE on an epoll fd (EINVAL), which nginx asks
  // for on its listeners. Without the flag every waiter is woken for a new
  // connection and all but one find accept() saying EAGAIN: correct, just
  // not exclusive.
  std::uint32_t tag = doorway::fdtable::GlobalTable().Tag(fd);
  if (event != nullptr && (event->events & EPOLLEXCLUSIVE) && tag == rt::kTagListener) {
    epoll_event ev = *event;
    ev.events &= ~EPOLLEXCLUSIVE;
    return DOORWAY_REAL(epoll_ctl)(epfd, op, fd, &ev);
  }
  if (tag == rt::kTagConnection || tag == rt::kTagEpoll || tag == rt::kTagEpollPlain ||
      doorway::fdtable::GlobalTable().Tag(epfd) == rt::kTagEpoll) {
    return Ret(rt::EpollCtl(epfd, op, fd, event));
  }
  return DOORWAY_REAL(epoll_ctl)(epfd, op, fd, event);
}

// Sets with accelerated members go to the epoll engine (runtime/epoll.h).
DOORWAY_EXPORT int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout) {
  if (doorway::fdtable::GlobalTable().Tag(epfd) == rt::kTagEpoll) {
    return Ret(rt::EpollWait(epfd, events, maxevents, MsToNs(timeout), nullptr));
  }
  return DOORWAY_REAL(epoll_wait)(epfd, events, maxevents, timeout);
}

DOORWAY_EXPORT int epoll_pwait(int epfd, epoll_event* events, int maxevents, int timeout,
                               const sigset_t* sigmask) {
  if (doorway::fdtable::GlobalTable().Tag(epfd) == rt::kTagEpoll) {
    return Ret(rt::EpollWait(epfd, events, maxevents, MsToNs(timeout), sigmask));
  }
  return DOORWAY_REAL(epoll_pwait)(epfd, events, maxevents, timeout, sigmask);
}

DOORWAY_EXPORT int epoll_pwait2(int epfd, epoll_event* events, int maxevents,
                                const timespec* timeout, const sigset_t* sigmask) {
  if (doorway::fdtable::GlobalTable().Tag(epfd) == rt::kTagEpoll) {
    if (timeout != nullptr &&
        (timeout->tv_sec < 0 || timeout->tv_nsec < 0 || timeout->tv_nsec >= 1000000000)) {
      errno = EINVAL;
      return -1;
    }
    return Ret(rt::EpollWait(epfd, events, maxevents, TsToNs(timeout), sigmask));
  }
  return DOORWAY_REAL(epoll_pwait2)(epfd, events, maxevents, timeout, sigmask);
}

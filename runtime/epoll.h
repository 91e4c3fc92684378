// epoll over accelerated connections (DESIGN §7).
//
// How it works: epoll_ctl on an accelerated connection registers its Unix
// socket with the kernel's epoll set for wake-ups only (EPOLLIN|EPOLLRDHUP,
// level-triggered, with a marker in the data), and records the program's
// events and data in an EpollSet installed in the fd table at the epoll fd
// (tag kTagEpoll). epoll_wait on such a set computes the members' events
// from their rings (level, EPOLLET, EPOLLONESHOT), asks the kernel for the
// other fds' events, spins a bounded time, then sleeps in the kernel, woken
// by doorbells; kernel events carrying the marker are only hints and never
// reach the program. Before sleeping it arms the members' rings, so that
// their peers send a doorbell when data, EOF or room arrives.
//
// Known limits: the cost of epoll_wait grows with the number of accelerated
// members (they are evaluated on each call), not only with ready events;
// EPOLLEXCLUSIVE is accepted and ignored for accelerated members; a set
// shared by fork keeps one registry per process (changes made with
// epoll_ctl in one process are not seen by the other's doorway).
#ifndef DOORWAY_RUNTIME_EPOLL_H_
#define DOORWAY_RUNTIME_EPOLL_H_

#include <signal.h>
#include <sys/epoll.h>

#include <cstdint>

namespace doorway::runtime {

// Returns the result, or -errno.
int EpollCtl(int epfd, int op, int fd, epoll_event* event);
// timeout_ns < 0: forever. sigmask as for epoll_pwait (may be null).
int EpollWait(int epfd, epoll_event* events, int maxevents, std::int64_t timeout_ns,
              const sigset_t* sigmask);

}  // namespace doorway::runtime

#endif  // DOORWAY_RUNTIME_EPOLL_H_

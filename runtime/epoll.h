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
// Nested sets: every epoll fd created through epoll_create/epoll_create1
// gets an (empty) EpollSet, tag kTagEpollPlain, so that adding it to
// another set is seen. The outer set then records it as a nested member
// (its kernel registration, like an accelerated member's, is a wake-up hint
// with a marker): the inner set is ready when one of its accelerated
// members is (peeked, without consuming edge-triggered or one-shot state)
// or the kernel says its epoll fd is readable; the outer set's wait arms
// the inner set's members before sleeping.
//
// Known limits: the cost of epoll_wait grows with the number of accelerated
// members (they are evaluated on each call), not only with ready events; a
// set shared by fork keeps one registry per process (changes made with
// epoll_ctl in one process are not seen by the other's doorway); epoll fds
// a program inherited through exec are not known as such (nesting them
// works for their kernel members only); a nested set with a doorbell
// pending may wake its outer set once with nothing to report.
#ifndef DOORWAY_RUNTIME_EPOLL_H_
#define DOORWAY_RUNTIME_EPOLL_H_

#include <signal.h>
#include <sys/epoll.h>

#include <cstdint>

namespace doorway::runtime {

// A new epoll fd (epoll_create, epoll_create1).
void NoteEpollCreated(int epfd);

// Returns the result, or -errno.
int EpollCtl(int epfd, int op, int fd, epoll_event* event);
// timeout_ns < 0: forever. sigmask as for epoll_pwait (may be null).
int EpollWait(int epfd, epoll_event* events, int maxevents, std::int64_t timeout_ns,
              const sigset_t* sigmask);

}  // namespace doorway::runtime

#endif  // DOORWAY_RUNTIME_EPOLL_H_

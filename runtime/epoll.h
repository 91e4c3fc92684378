// epoll over accelerated connections (DESIGN §7).
//
// How it works: epoll_ctl on an accelerated connection registers its Unix
// socket with the kernel's epoll set for wake-ups only (EPOLLIN|EPOLLRDHUP,
// level-triggered, with a marker in the data), and records the program's
// events and data in an EpollSet installed in the fd table at the epoll fd
// (tag kTagEpoll). The program's events are computed from the rings (level,
// EPOLLET, EPOLLONESHOT); kernel events carrying the marker are only
// wake-ups and never reach the program.
//
// Cost O(ready), not O(members): a member is either on the set's check list
// (evaluated from its rings at every wait: newly added or modified, woken by
// a doorbell, or ready within its last 64 waits — "hot", spun over before
// sleeping) or armed (its rings' doorbell flags set in shared memory: the
// peer's next publish — data, EOF, room — clears the flag and sends one
// byte on the Unix socket, which the kernel epoll set reports with the
// member's marker). A member leaves the check list only by being armed and
// found not ready after arming (after 64 idle waits, or when the set goes
// to sleep), so a member off the list always has a doorbell coming.
// Things that change a member's readiness without its peer (close, dup2
// over it, shutdown by this process, a doorbell taken by another waiter of
// this process, fork) go through a process-wide change log
// (NoteEpollChange) that each set reads at each wait: O(changes).
//
// Nested sets: every epoll fd created through epoll_create/epoll_create1
// gets an (empty) EpollSet, tag kTagEpollPlain, so that adding it to
// another set is seen. The outer set then records it as a nested member
// (its kernel registration, like an accelerated member's, is a wake-up hint
// with a marker), evaluated at each wait: the inner set is ready when one
// of its check-list members is (peeked, without consuming edge-triggered or
// one-shot state) or the kernel says its epoll fd is readable (its kernel
// members, or a doorbell of an armed member); the outer set's wait arms the
// inner set's check-list members before sleeping.
//
// Known limits: a set shared by fork keeps one registry per process
// (changes made with epoll_ctl in one process are not seen by the other's
// doorway), and the connections that existed at the fork are evaluated and
// armed at every wait of every set (the old O(members) way: another process
// may take their doorbells); epoll fds a program inherited through exec are
// not known as such (nesting them works for their kernel members only); a
// nested set with a doorbell pending may wake its outer set once with
// nothing to report; a change from the change log (close, shutdown) made
// while another thread already sleeps in epoll_wait does not wake it.
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

// The readiness of the accelerated connection at fd changed without its
// peer sending a doorbell (close, dup2 over it, shutdown by this process):
// every epoll set holding fd looks at it at its next wait. fd -1: every set
// looks at all its members once (a doorbell was taken by another waiter of
// this process; a fork). Lock-free and async-signal-safe (close may run in
// a handler).
void NoteEpollChange(int fd);

struct Connection;
// The last fd of c in this process is going away (close, dup2 over it,
// close_range; called before the kernel closes it): deletes the kernel
// registration an EPOLL_CTL_DEL left parked (epoll.cc "Parking"), so that
// it cannot outlive the program's registration when another process (or a
// thread's call) still holds the socket. Async-signal-safe.
void EpollDropParked(Connection& c);

// Before fork: every parked registration is deleted from the kernel (a
// child shares the kernel's sets; it must not find registrations its
// registry does not know of, nor delete the parent's).
void EpollUnparkAll();

// The accelerated connection at fd is about to become a kernel socket at
// the same number (runtime/pass.h): every set of this process that has it
// forgets it and deletes its kernel registration (of the connection's Unix
// socket). Returns the program's registrations (at most max), for the
// caller to add the kernel socket to those sets with (epoll_ctl) once it
// has the number.
struct EpollProgramReg {
  int epfd;
  epoll_event ev;
};
int EpollTakeConnection(int fd, EpollProgramReg* out, int max);

}  // namespace doorway::runtime

#endif  // DOORWAY_RUNTIME_EPOLL_H_

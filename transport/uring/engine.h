// The io_uring engine of the real-socket fallback path (DESIGN §8).
//
// How the pieces fit together
// ---------------------------
// The runtime (runtime/fallback.*) hands this engine the data calls of
// kernel sockets that doorway does not accelerate, when DOORWAY_FALLBACK=uring.
// The engine knows nothing about fd tables or interposition; it turns one
// synchronous call into io_uring requests on a ring that belongs to the
// calling thread, and gives back exactly what the direct system call would:
// a byte count or -errno.
//
//   ThreadRing   one per thread, created lazily on the thread's first call,
//                in a page marked MADV_WIPEONFORK (so a fork child finds
//                "no ring" and makes its own) whose ring mappings are
//                MADV_DONTFORK. The ring fd is registered
//                (IORING_REGISTER_RING_FD) and then closed, so the program
//                can neither see nor close it. A pthread key destructor
//                unmaps it at thread exit; the kernel drops the ring at
//                thread exit or exec.
//   fast path    every call is first issued with MSG_DONTWAIT: one
//                io_uring_enter that submits the request and finds its
//                completion (socket requests with MSG_DONTWAIT complete
//                inline). That is also how the engine learns that the call
//                would block, because io_uring itself ignores O_NONBLOCK on
//                sockets (it parks the request on an internal poll) — see
//                docs/fallback.md.
//   slow path    "would block": one fcntl(F_GETFL). O_NONBLOCK -> EAGAIN (or
//                the partial count). Blocking socket -> one getsockopt for
//                SO_RCVTIMEO/SO_SNDTIMEO (io_uring ignores them too), then
//                the request goes out without MSG_DONTWAIT, hard-linked to an
//                IORING_OP_FUTEX_WAKE on the ring's own CQ tail, and the
//                thread sleeps in futex(FUTEX_WAIT) on that tail. The futex
//                syscall follows SA_RESTART exactly as recv/send do: a handler
//                installed with SA_RESTART resumes the wait, one without it
//                makes the wait return EINTR. With a timeout, the wait is
//                io_uring_enter with a timeout, which — like a socket call
//                with SO_RCVTIMEO — returns EINTR on any handled signal.
//   signals      when the wait is interrupted the request is still in
//                flight and owns the caller's buffer: the engine cancels it
//                (IORING_OP_ASYNC_CANCEL) and waits for its completion; bytes
//                that moved before the cancel are returned as a partial
//                transfer, as the kernel does, otherwise -EINTR (-EAGAIN
//                for a timeout).
//   SIGPIPE      io_uring never raises SIGPIPE; on -EPIPE without
//                MSG_NOSIGNAL the engine raises it on the calling thread,
//                as the socket layer does.
//   re-entry     a signal handler that calls in while its thread is inside
//                the engine gets kNotHandled and uses the direct syscall: the
//                ring is never touched by two frames at once.
//
// Nothing here calls the symbols doorway interposes (read, close, ...): the
// engine uses liburing's raw-syscall helpers and its own raw syscalls.
// Nothing allocates after a thread's ring exists, and no lock is taken.
//
// Kernel requirements (checked by Initialize, else the runtime stays in
// pass-through): SEND/RECV/SENDMSG/RECVMSG/ASYNC_CANCEL, IORING_FEAT_EXT_ARG
// (5.11) and registered ring fds (5.18). IORING_OP_FUTEX_WAKE (6.7) is used
// when present; without it a call that must block finishes with the direct
// syscall (the only way to get SA_RESTART right without it).
#ifndef DOORWAY_TRANSPORT_URING_ENGINE_H_
#define DOORWAY_TRANSPORT_URING_ENGINE_H_

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <cstdint>
#include <limits>

namespace doorway::transport::uring {

// Returned when the engine did not perform the call (engine not initialised,
// the thread has no ring, re-entered from a signal handler, arguments it does
// not carry): the caller makes the direct system call instead. Never a
// valid byte count or -errno.
inline constexpr ssize_t kNotHandled = std::numeric_limits<ssize_t>::min();

struct Support {
  bool ok = false;          // the engine can run on this kernel
  bool futex_wake = false;  // IORING_OP_FUTEX_WAKE: blocking waits in io_uring
  bool futex_wait = false;  // IORING_OP_FUTEX_WAIT: WaitFdOrFutex
  const char* reason = "";  // why not, when !ok (static string)
};

struct Options {
  // IORING_SETUP_SQPOLL: a kernel thread per ring takes submissions from
  // shared memory, so the fast path makes no system call at all while that
  // thread is awake (it sleeps after kSqIdleMs without work); the caller
  // spins briefly for the completion. Costs a busy kernel thread per
  // active application thread: only for machines with cores to spare.
  bool sqpoll = false;
};

// Probes the kernel and prepares process-wide state (the thread-exit key).
// Call once, at initialisation, not from a signal handler (the probe
// allocates). Later calls return the first answer (and ignore options).
Support Initialize(const Options& options = {});

// Whether Initialize succeeded.
bool Ready();

// The calls. Each returns what the system call of the same name returns
// (byte count, or -errno), or kNotHandled. fd must be a socket.
ssize_t Recv(int fd, void* buf, size_t n, int flags);        // also read(2) with flags 0
ssize_t Send(int fd, const void* buf, size_t n, int flags);  // also write(2) with flags 0
ssize_t Sendto(int fd, const void* buf, size_t n, int flags, const sockaddr* addr, socklen_t len);
// recvmsg/recvfrom: io_uring writes msg_namelen, msg_controllen and
// msg_flags back as the syscall does (so SCM_RIGHTS works); MSG_WAITALL is
// left to the syscall.
ssize_t Recvmsg(int fd, msghdr* msg, int flags);
ssize_t Recvfrom(int fd, void* buf, size_t n, int flags, sockaddr* addr, socklen_t* len);
ssize_t Readv(int fd, const iovec* iov, int iovcnt);
ssize_t Writev(int fd, const iovec* iov, int iovcnt);
ssize_t Sendmsg(int fd, const msghdr* msg, int flags);

// One wait on a kernel fd and a shared-memory futex word together — what a
// poll/epoll over a mix of kernel sockets and doorway connections needs —
// in one io_uring_enter: IORING_OP_POLL_ADD beside IORING_OP_FUTEX_WAIT
// (Linux 6.7; liburing 2.3 has no helper, so the SQE is filled by hand).
// The futex is a shared one (no FUTEX2_PRIVATE): the waker may be another
// process that maps the same memory and calls FUTEX_WAKE on it.
//   returns 1  something happened: *revents = the fd's poll events (0 if
//              none), *woken = the futex was woken or *word != expected
//           0  timeout (timeout_ms < 0: none)
//          <0  -errno: -EINTR when a handled signal arrived (poll(2)
//              semantics: never restarted), -EOPNOTSUPP without FUTEX_WAIT
//              in the kernel, kNotHandled-like failures as -EBUSY (the
//              thread is already inside the engine)
int WaitFdOrFutex(int fd, short events, const std::uint32_t* word, std::uint32_t expected,
                  int timeout_ms, short* revents, bool* woken);

// Per-thread counters (for tests and the benchmark), reset in a fork child.
struct ThreadStats {
  std::uint64_t calls = 0;      // calls the engine carried
  std::uint64_t blocked = 0;    // requests that went to the slow path
  std::uint64_t cancelled = 0;  // requests cancelled by a signal or timeout
  bool has_ring = false;
};
ThreadStats GetThreadStats();

}  // namespace doorway::transport::uring

#endif  // DOORWAY_TRANSPORT_URING_ENGINE_H_

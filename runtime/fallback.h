// The I/O path of descriptors that doorway does not accelerate: sockets to
// remote hosts, to peers without doorway or of other users, and every
// non-socket fd. Each function has libc's contract (returns -1 and sets errno
// on failure). abi/ calls these for every fd that is not accelerated.
//
// Two modes (DOORWAY_FALLBACK, applied once by Configure at initialisation):
//   passthrough  every call is libc's function (the default; see
//                docs/fallback.md for the measurements behind it).
//   uring        calls on sockets the runtime tracks (fdtable occupied) go
//                to the io_uring engine (//transport/uring), which answers
//                exactly as the syscall would or declines (then libc's
//                function runs). Non-sockets — files, pipes, ttys — always
//                take libc's function.
//   uring-sqpoll the same with SQPOLL rings (opt-in, for spare cores).
// The pass-through cost is one relaxed load of a flag that never changes
// after initialisation, and a predictable branch.
//
// The engine declines (and libc's function runs) what it does not carry:
// see transport/uring/engine.cc (e.g. MSG_WAITALL on recvmsg, unusual flags,
// more than 64 iovecs, zero-length calls).
#ifndef DOORWAY_RUNTIME_FALLBACK_H_
#define DOORWAY_RUNTIME_FALLBACK_H_

#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>

#include "fdtable/fdtable.h"
#include "runtime/config.h"
#include "runtime/real.h"

namespace doorway::runtime::fallback {

// Applies the mode; kUring silently becomes kPassthrough (with a warning in
// the log) where the kernel cannot run the engine. Call at initialisation,
// not from a signal handler. Returns the mode in effect.
FallbackMode Configure(FallbackMode requested);
FallbackMode CurrentMode();

namespace internal {

// Set once by Configure.
extern std::atomic<bool> g_uring;

inline bool UseEngine(int fd) {
  // Relaxed: a flag written once at initialisation, before the program's
  // threads run; either path is correct for a call that races with it.
  return __builtin_expect(g_uring.load(std::memory_order_relaxed), 0) &&
         fdtable::GlobalTable().Occupied(fd);
}

// The engine, with libc's function where it declines. libc's contract.
ssize_t EngineRecv(int fd, void* buf, size_t n, int flags, bool is_read);
ssize_t EngineReadv(int fd, const iovec* iov, int iovcnt);
ssize_t EngineRecvfrom(int fd, void* buf, size_t n, int flags, sockaddr* addr, socklen_t* len);
ssize_t EngineRecvmsg(int fd, msghdr* msg, int flags);
ssize_t EngineSend(int fd, const void* buf, size_t n, int flags, bool is_write);
ssize_t EngineWritev(int fd, const iovec* iov, int iovcnt);
ssize_t EngineSendto(int fd, const void* buf, size_t n, int flags, const sockaddr* addr,
                     socklen_t len);
ssize_t EngineSendmsg(int fd, const msghdr* msg, int flags);

}  // namespace internal

inline ssize_t Read(int fd, void* buf, size_t n) {
  if (internal::UseEngine(fd)) return internal::EngineRecv(fd, buf, n, 0, /*is_read=*/true);
  return DOORWAY_REAL(read)(fd, buf, n);
}
inline ssize_t Readv(int fd, const iovec* iov, int iovcnt) {
  if (internal::UseEngine(fd)) return internal::EngineReadv(fd, iov, iovcnt);
  return DOORWAY_REAL(readv)(fd, iov, iovcnt);
}
inline ssize_t Write(int fd, const void* buf, size_t n) {
  if (internal::UseEngine(fd)) return internal::EngineSend(fd, buf, n, 0, /*is_write=*/true);
  return DOORWAY_REAL(write)(fd, buf, n);
}
inline ssize_t Writev(int fd, const iovec* iov, int iovcnt) {
  if (internal::UseEngine(fd)) return internal::EngineWritev(fd, iov, iovcnt);
  return DOORWAY_REAL(writev)(fd, iov, iovcnt);
}
inline ssize_t Recv(int fd, void* buf, size_t n, int flags) {
  if (internal::UseEngine(fd)) return internal::EngineRecv(fd, buf, n, flags, /*is_read=*/false);
  return DOORWAY_REAL(recv)(fd, buf, n, flags);
}
inline ssize_t Recvfrom(int fd, void* buf, size_t n, int flags, sockaddr* addr, socklen_t* len) {
  if (internal::UseEngine(fd)) return internal::EngineRecvfrom(fd, buf, n, flags, addr, len);
  return DOORWAY_REAL(recvfrom)(fd, buf, n, flags, addr, len);
}
inline ssize_t Recvmsg(int fd, msghdr* msg, int flags) {
  if (internal::UseEngine(fd)) return internal::EngineRecvmsg(fd, msg, flags);
  return DOORWAY_REAL(recvmsg)(fd, msg, flags);
}
inline ssize_t Send(int fd, const void* buf, size_t n, int flags) {
  if (internal::UseEngine(fd)) return internal::EngineSend(fd, buf, n, flags, /*is_write=*/false);
  return DOORWAY_REAL(send)(fd, buf, n, flags);
}
inline ssize_t Sendto(int fd, const void* buf, size_t n, int flags, const sockaddr* addr,
                      socklen_t len) {
  if (internal::UseEngine(fd)) return internal::EngineSendto(fd, buf, n, flags, addr, len);
  return DOORWAY_REAL(sendto)(fd, buf, n, flags, addr, len);
}
inline ssize_t Sendmsg(int fd, const msghdr* msg, int flags) {
  if (internal::UseEngine(fd)) return internal::EngineSendmsg(fd, msg, flags);
  return DOORWAY_REAL(sendmsg)(fd, msg, flags);
}

}  // namespace doorway::runtime::fallback

#endif  // DOORWAY_RUNTIME_FALLBACK_H_

// The I/O path of descriptors that doorway does not accelerate: sockets to
// remote hosts, to peers without doorway or of other users, and every
// non-socket fd. Each function has libc's contract (returns -1 and sets errno
// on failure) and, today, is libc's function. The io_uring engine of the
// fallback path (DESIGN §8, DOORWAY_FALLBACK) plugs in here and only here:
// abi/ calls these for every fd that is not accelerated.
#ifndef DOORWAY_RUNTIME_FALLBACK_H_
#define DOORWAY_RUNTIME_FALLBACK_H_

#include <sys/socket.h>
#include <sys/uio.h>

#include "runtime/real.h"

namespace doorway::runtime::fallback {

inline ssize_t Read(int fd, void* buf, size_t n) { return DOORWAY_REAL(read)(fd, buf, n); }
inline ssize_t Readv(int fd, const iovec* iov, int iovcnt) {
  return DOORWAY_REAL(readv)(fd, iov, iovcnt);
}
inline ssize_t Write(int fd, const void* buf, size_t n) { return DOORWAY_REAL(write)(fd, buf, n); }
inline ssize_t Writev(int fd, const iovec* iov, int iovcnt) {
  return DOORWAY_REAL(writev)(fd, iov, iovcnt);
}
inline ssize_t Recv(int fd, void* buf, size_t n, int flags) {
  return DOORWAY_REAL(recv)(fd, buf, n, flags);
}
inline ssize_t Recvfrom(int fd, void* buf, size_t n, int flags, sockaddr* addr, socklen_t* len) {
  return DOORWAY_REAL(recvfrom)(fd, buf, n, flags, addr, len);
}
inline ssize_t Recvmsg(int fd, msghdr* msg, int flags) {
  return DOORWAY_REAL(recvmsg)(fd, msg, flags);
}
inline ssize_t Send(int fd, const void* buf, size_t n, int flags) {
  return DOORWAY_REAL(send)(fd, buf, n, flags);
}
inline ssize_t Sendto(int fd, const void* buf, size_t n, int flags, const sockaddr* addr,
                      socklen_t len) {
  return DOORWAY_REAL(sendto)(fd, buf, n, flags, addr, len);
}
inline ssize_t Sendmsg(int fd, const msghdr* msg, int flags) {
  return DOORWAY_REAL(sendmsg)(fd, msg, flags);
}

}  // namespace doorway::runtime::fallback

#endif  // DOORWAY_RUNTIME_FALLBACK_H_

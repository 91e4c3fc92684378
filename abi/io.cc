// Data calls. An accelerated fd is served by the runtime; every other fd
// takes the fallback path (runtime/fallback.h). Nothing is accelerated yet.
// Fortified glibc headers (Bazel's opt mode sets _FORTIFY_SOURCE) declare
// read/recv/poll as inline wrappers that would clash with our definitions.
#undef _FORTIFY_SOURCE

#include <poll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "abi/internal/trampoline.h"
#include "runtime/fallback.h"
#include "runtime/pass.h"

using doorway::abi::Managed;
using doorway::abi::Ret;
namespace rt = doorway::runtime;

extern "C" [[noreturn]] void __chk_fail(void);

namespace {
ssize_t ManagedRead(int fd, void* buf, size_t n, int flags) {
  return Ret(rt::ManagedRead(fd, buf, n, flags));
}
ssize_t ManagedWrite(int fd, const void* buf, size_t n, int flags) {
  return Ret(rt::ManagedWrite(fd, buf, n, flags));
}
// TCP does not report a source address: *len becomes 0.
ssize_t ManagedRecvfrom(int fd, void* buf, size_t n, int flags, sockaddr* addr, socklen_t* len) {
  msghdr m{};
  iovec iov{buf, n};
  ssize_t r = rt::ManagedRecv(fd, &iov, 1, flags, &m);
  if (r >= 0 && addr != nullptr && len != nullptr && rt::IsAccelerated(fd)) *len = 0;
  return Ret(r);
}
}  // namespace

DOORWAY_EXPORT ssize_t read(int fd, void* buf, size_t n) {
  if (Managed(fd)) return ManagedRead(fd, buf, n, 0);
  return rt::fallback::Read(fd, buf, n);
}

DOORWAY_EXPORT ssize_t __read_chk(int fd, void* buf, size_t n, size_t buflen) {
  if (n > buflen) __chk_fail();
  if (Managed(fd)) return ManagedRead(fd, buf, n, 0);
  return rt::fallback::Read(fd, buf, n);
}

DOORWAY_EXPORT ssize_t readv(int fd, const iovec* iov, int iovcnt) {
  if (Managed(fd)) return Ret(rt::ManagedRecv(fd, iov, iovcnt, 0, nullptr));
  return rt::fallback::Readv(fd, iov, iovcnt);
}

DOORWAY_EXPORT ssize_t write(int fd, const void* buf, size_t n) {
  if (Managed(fd)) return ManagedWrite(fd, buf, n, 0);
  return rt::fallback::Write(fd, buf, n);
}

DOORWAY_EXPORT ssize_t writev(int fd, const iovec* iov, int iovcnt) {
  if (Managed(fd)) return Ret(rt::ManagedSend(fd, iov, iovcnt, 0));
  return rt::fallback::Writev(fd, iov, iovcnt);
}

DOORWAY_EXPORT ssize_t recv(int fd, void* buf, size_t n, int flags) {
  if (Managed(fd)) return ManagedRead(fd, buf, n, flags);
  return rt::fallback::Recv(fd, buf, n, flags);
}

DOORWAY_EXPORT ssize_t __recv_chk(int fd, void* buf, size_t n, size_t buflen, int flags) {
  if (n > buflen) __chk_fail();
  if (Managed(fd)) return ManagedRead(fd, buf, n, flags);
  return rt::fallback::Recv(fd, buf, n, flags);
}

DOORWAY_EXPORT ssize_t recvfrom(int fd, void* buf, size_t n, int flags, sockaddr* addr,
                                socklen_t* len) {
  if (Managed(fd)) return ManagedRecvfrom(fd, buf, n, flags, addr, len);
  return rt::fallback::Recvfrom(fd, buf, n, flags, addr, len);
}

DOORWAY_EXPORT ssize_t __recvfrom_chk(int fd, void* buf, size_t n, size_t buflen, int flags,
                                      sockaddr* addr, socklen_t* len) {
  if (n > buflen) __chk_fail();
  if (Managed(fd)) return ManagedRecvfrom(fd, buf, n, flags, addr, len);
  return rt::fallback::Recvfrom(fd, buf, n, flags, addr, len);
}

// recvmsg and recvmmsg go through the runtime: descriptors that arrive in
// SCM_RIGHTS control messages are entered in the table.
DOORWAY_EXPORT ssize_t recvmsg(int fd, msghdr* msg, int flags) {
  if (Managed(fd)) {
    return Ret(rt::ManagedRecv(fd, msg->msg_iov, static_cast<int>(msg->msg_iovlen), flags, msg));
  }
  return Ret(rt::Recvmsg(fd, msg, flags));
}

DOORWAY_EXPORT int recvmmsg(int fd, mmsghdr* msgs, unsigned int n, int flags, timespec* timeout) {
  if (Managed(fd)) return Ret(rt::ManagedRecvmmsg(fd, msgs, n, flags, timeout));
  return Ret(rt::Recvmmsg(fd, msgs, n, flags, timeout));
}

DOORWAY_EXPORT ssize_t send(int fd, const void* buf, size_t n, int flags) {
  if (Managed(fd)) return ManagedWrite(fd, buf, n, flags);
  return rt::fallback::Send(fd, buf, n, flags);
}

DOORWAY_EXPORT ssize_t sendto(int fd, const void* buf, size_t n, int flags, const sockaddr* addr,
                              socklen_t len) {
  // A connected TCP socket ignores the address, as the kernel does.
  if (Managed(fd)) return ManagedWrite(fd, buf, n, flags);
  return rt::fallback::Sendto(fd, buf, n, flags, addr, len);
}

DOORWAY_EXPORT ssize_t sendmsg(int fd, const msghdr* msg, int flags) {
  if (Managed(fd)) {
    return Ret(rt::ManagedSend(fd, msg->msg_iov, static_cast<int>(msg->msg_iovlen), flags));
  }
  // SCM_RIGHTS may carry accelerated fds, which must become kernel sockets
  // first (runtime/pass.h).
  if (msg != nullptr && msg->msg_controllen != 0) return Ret(rt::SendmsgWithRights(fd, msg, flags));
  return rt::fallback::Sendmsg(fd, msg, flags);
}

DOORWAY_EXPORT int sendmmsg(int fd, mmsghdr* msgs, unsigned int n, int flags) {
  if (Managed(fd)) return Ret(rt::ManagedSendmmsg(fd, msgs, n, flags));
  return Ret(rt::SendmmsgWithRights(fd, msgs, n, flags));
}

DOORWAY_EXPORT ssize_t sendfile(int out_fd, int in_fd, off_t* offset, size_t count) {
  if (Managed(out_fd)) return Ret(rt::ManagedSendfile(out_fd, in_fd, offset, count));
  return DOORWAY_REAL(sendfile)(out_fd, in_fd, offset, count);
}

DOORWAY_EXPORT ssize_t sendfile64(int out_fd, int in_fd, off64_t* offset, size_t count) {
  if (Managed(out_fd)) return Ret(rt::ManagedSendfile(out_fd, in_fd, offset, count));
  return DOORWAY_REAL(sendfile64)(out_fd, in_fd, offset, count);
}

DOORWAY_EXPORT ssize_t splice(int fd_in, loff_t* off_in, int fd_out, loff_t* off_out, size_t len,
                              unsigned int flags) {
  if (Managed(fd_in) || Managed(fd_out)) {
    return Ret(rt::ManagedSplice(fd_in, off_in, fd_out, off_out, len, flags));
  }
  return DOORWAY_REAL(splice)(fd_in, off_in, fd_out, off_out, len, flags);
}

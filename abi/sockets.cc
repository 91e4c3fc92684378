// Socket life-cycle and control calls.
// Fortified glibc headers (Bazel's opt mode sets _FORTIFY_SOURCE) declare
// read/recv/poll as inline wrappers that would clash with our definitions.
#undef _FORTIFY_SOURCE

#include <sys/socket.h>

#include "abi/internal/trampoline.h"

using doorway::abi::EnsureInitialised;
using doorway::abi::Ret;
namespace rt = doorway::runtime;

DOORWAY_EXPORT int socket(int domain, int type, int protocol) {
  EnsureInitialised();
  return Ret(rt::Socket(domain, type, protocol));
}

DOORWAY_EXPORT int socketpair(int domain, int type, int protocol, int sv[2]) {
  EnsureInitialised();
  return Ret(rt::Socketpair(domain, type, protocol, sv));
}

DOORWAY_EXPORT int bind(int fd, const sockaddr* addr, socklen_t len) {
  rt::Discover(fd);
  return DOORWAY_REAL(bind)(fd, addr, len);
}

DOORWAY_EXPORT int listen(int fd, int backlog) {
  EnsureInitialised();
  rt::Discover(fd);
  return DOORWAY_REAL(listen)(fd, backlog);
}

DOORWAY_EXPORT int accept(int fd, sockaddr* addr, socklen_t* len) {
  rt::Discover(fd);
  return Ret(rt::Accept(fd, addr, len));
}

DOORWAY_EXPORT int accept4(int fd, sockaddr* addr, socklen_t* len, int flags) {
  rt::Discover(fd);
  return Ret(rt::Accept4(fd, addr, len, flags));
}

DOORWAY_EXPORT int connect(int fd, const sockaddr* addr, socklen_t len) {
  EnsureInitialised();
  rt::Discover(fd);
  return DOORWAY_REAL(connect)(fd, addr, len);
}

DOORWAY_EXPORT int shutdown(int fd, int how) {
  rt::Discover(fd);
  return DOORWAY_REAL(shutdown)(fd, how);
}

DOORWAY_EXPORT int getsockname(int fd, sockaddr* addr, socklen_t* len) {
  return DOORWAY_REAL(getsockname)(fd, addr, len);
}

DOORWAY_EXPORT int getpeername(int fd, sockaddr* addr, socklen_t* len) {
  return DOORWAY_REAL(getpeername)(fd, addr, len);
}

DOORWAY_EXPORT int getsockopt(int fd, int level, int name, void* value, socklen_t* len) {
  return DOORWAY_REAL(getsockopt)(fd, level, name, value, len);
}

DOORWAY_EXPORT int setsockopt(int fd, int level, int name, const void* value, socklen_t len) {
  rt::Discover(fd);
  return DOORWAY_REAL(setsockopt)(fd, level, name, value, len);
}

// Socket life-cycle and control calls.
// Fortified glibc headers (Bazel's opt mode sets _FORTIFY_SOURCE) declare
// read/recv/poll as inline wrappers that would clash with our definitions.
#undef _FORTIFY_SOURCE

#include <sys/socket.h>

#include "abi/internal/trampoline.h"

using doorway::abi::EnsureInitialised;
using doorway::abi::Managed;
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
  if (Managed(fd)) return Ret(rt::ManagedBind(fd, addr, len));
  rt::Discover(fd);
  int rc = DOORWAY_REAL(bind)(fd, addr, len);
  if (rc == 0) rt::NoteHistory(fd, rt::SocketFile::kHistoryBound);
  return rc;
}

DOORWAY_EXPORT int listen(int fd, int backlog) {
  EnsureInitialised();
  rt::Discover(fd);
  return Ret(rt::Listen(fd, backlog));
}

DOORWAY_EXPORT int accept(int fd, sockaddr* addr, socklen_t* len) {
  if (Managed(fd)) return Ret(rt::ManagedAccept(fd, addr, len, 0, false));
  rt::Discover(fd);
  return Ret(rt::Accept(fd, addr, len));
}

DOORWAY_EXPORT int accept4(int fd, sockaddr* addr, socklen_t* len, int flags) {
  if (Managed(fd)) return Ret(rt::ManagedAccept(fd, addr, len, flags, true));
  rt::Discover(fd);
  return Ret(rt::Accept4(fd, addr, len, flags));
}

DOORWAY_EXPORT int connect(int fd, const sockaddr* addr, socklen_t len) {
  EnsureInitialised();
  rt::Discover(fd);
  return Ret(rt::Connect(fd, addr, len));
}

DOORWAY_EXPORT int shutdown(int fd, int how) {
  if (Managed(fd)) return Ret(rt::ManagedShutdown(fd, how));
  rt::Discover(fd);
  return DOORWAY_REAL(shutdown)(fd, how);
}

DOORWAY_EXPORT int getsockname(int fd, sockaddr* addr, socklen_t* len) {
  if (Managed(fd)) return Ret(rt::ManagedGetsockname(fd, addr, len, false));
  return DOORWAY_REAL(getsockname)(fd, addr, len);
}

DOORWAY_EXPORT int getpeername(int fd, sockaddr* addr, socklen_t* len) {
  if (Managed(fd)) return Ret(rt::ManagedGetsockname(fd, addr, len, true));
  return DOORWAY_REAL(getpeername)(fd, addr, len);
}

DOORWAY_EXPORT int getsockopt(int fd, int level, int name, void* value, socklen_t* len) {
  if (Managed(fd)) return Ret(rt::ManagedGetsockopt(fd, level, name, value, len));
  return DOORWAY_REAL(getsockopt)(fd, level, name, value, len);
}

DOORWAY_EXPORT int setsockopt(int fd, int level, int name, const void* value, socklen_t len) {
  if (Managed(fd)) return Ret(rt::ManagedSetsockopt(fd, level, name, value, len));
  rt::Discover(fd);
  int rc = DOORWAY_REAL(setsockopt)(fd, level, name, value, len);
  if (rc == 0) rt::NoteOptionSet(fd, level, name);
  return rc;
}

// Calls that create, duplicate or close descriptors: the shadow table must
// follow every one of them.
// Fortified glibc headers (Bazel's opt mode sets _FORTIFY_SOURCE) declare
// read/recv/poll as inline wrappers that would clash with our definitions.
#undef _FORTIFY_SOURCE

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdarg>

#include "abi/internal/trampoline.h"

using doorway::abi::Ret;
namespace rt = doorway::runtime;

DOORWAY_EXPORT int close(int fd) { return Ret(rt::Close(fd)); }

DOORWAY_EXPORT int close_range(unsigned int first, unsigned int last, int flags) {
  return Ret(rt::CloseRange(first, last, flags));
}

DOORWAY_EXPORT void closefrom(int lowfd) { rt::Closefrom(lowfd); }

DOORWAY_EXPORT int dup(int fd) { return Ret(rt::Dup(fd)); }

DOORWAY_EXPORT int dup2(int oldfd, int newfd) { return Ret(rt::Dup2(oldfd, newfd)); }

DOORWAY_EXPORT int dup3(int oldfd, int newfd, int flags) {
  return Ret(rt::Dup3(oldfd, newfd, flags));
}

// fcntl's third argument is an int or a pointer depending on the command;
// glibc itself reads it as a pointer-sized value, and so do we.
DOORWAY_EXPORT int fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  unsigned long arg = va_arg(ap, unsigned long);
  va_end(ap);
  if (doorway::abi::Managed(fd)) return Ret(rt::ManagedFcntl(fd, cmd, arg, false));
  return Ret(rt::Fcntl(fd, cmd, arg, false));
}

DOORWAY_EXPORT int fcntl64(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  unsigned long arg = va_arg(ap, unsigned long);
  va_end(ap);
  if (doorway::abi::Managed(fd)) return Ret(rt::ManagedFcntl(fd, cmd, arg, true));
  return Ret(rt::Fcntl(fd, cmd, arg, true));
}

DOORWAY_EXPORT int ioctl(int fd, unsigned long request, ...) {
  va_list ap;
  va_start(ap, request);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  if (doorway::abi::Managed(fd)) return Ret(rt::ManagedIoctl(fd, request, arg));
  return DOORWAY_REAL(ioctl)(fd, request, arg);
}

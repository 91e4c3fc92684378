#include "runtime/fallback.h"

#include <cerrno>

#include "runtime/log.h"
#include "transport/uring/engine.h"

namespace doorway::runtime::fallback {

namespace uring = ::doorway::transport::uring;

namespace internal {

constinit std::atomic<bool> g_uring{false};

namespace {

// The engine's answer in libc's form. kNotHandled (the engine declined) and
// ENOTSOCK (the fd number now names something else: a close/open race in
// the program) take libc's function; Retry makes that call.
template <class Retry>
ssize_t Finish(ssize_t r, Retry&& retry) {
  if (r == uring::kNotHandled || r == -ENOTSOCK) return retry();
  if (r < 0) {
    errno = static_cast<int>(-r);
    return -1;
  }
  return r;
}

}  // namespace

ssize_t EngineRecv(int fd, void* buf, size_t n, int flags, bool is_read) {
  return Finish(uring::Recv(fd, buf, n, flags), [&] {
    return is_read ? DOORWAY_REAL(read)(fd, buf, n) : DOORWAY_REAL(recv)(fd, buf, n, flags);
  });
}

ssize_t EngineReadv(int fd, const iovec* iov, int iovcnt) {
  return Finish(uring::Readv(fd, iov, iovcnt),
                [&] { return DOORWAY_REAL(readv)(fd, iov, iovcnt); });
}

ssize_t EngineSend(int fd, const void* buf, size_t n, int flags, bool is_write) {
  return Finish(uring::Send(fd, buf, n, flags), [&] {
    return is_write ? DOORWAY_REAL(write)(fd, buf, n) : DOORWAY_REAL(send)(fd, buf, n, flags);
  });
}

ssize_t EngineWritev(int fd, const iovec* iov, int iovcnt) {
  return Finish(uring::Writev(fd, iov, iovcnt),
                [&] { return DOORWAY_REAL(writev)(fd, iov, iovcnt); });
}

ssize_t EngineSendto(int fd, const void* buf, size_t n, int flags, const sockaddr* addr,
                     socklen_t len) {
  return Finish(uring::Sendto(fd, buf, n, flags, addr, len),
                [&] { return DOORWAY_REAL(sendto)(fd, buf, n, flags, addr, len); });
}

ssize_t EngineSendmsg(int fd, const msghdr* msg, int flags) {
  return Finish(uring::Sendmsg(fd, msg, flags),
                [&] { return DOORWAY_REAL(sendmsg)(fd, msg, flags); });
}

}  // namespace internal

FallbackMode Configure(FallbackMode requested) {
  bool on = false;
  if (requested == FallbackMode::kUring) {
    uring::Support s = uring::Initialize();
    if (s.ok) {
      on = true;
      DOORWAY_LOG(kInfo, "fallback: io_uring engine on (%s)",
                  s.futex_wake ? "blocking waits in io_uring"
                               : "no IORING_OP_FUTEX_WAKE: blocking waits by direct syscall");
    } else {
      RawLog(LogLevel::kWarn, "DOORWAY_FALLBACK=uring: %s; using passthrough", s.reason);
    }
  }
  internal::g_uring.store(on, std::memory_order_relaxed);
  return CurrentMode();
}

FallbackMode CurrentMode() {
  return internal::g_uring.load(std::memory_order_relaxed) ? FallbackMode::kUring
                                                           : FallbackMode::kPassthrough;
}

}  // namespace doorway::runtime::fallback

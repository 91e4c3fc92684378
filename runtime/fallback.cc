#include "runtime/fallback.h"

#include <cerrno>

#include "runtime/log.h"
#include "transport/uring/engine.h"

namespace doorway::runtime::fallback {

namespace uring = ::doorway::transport::uring;

namespace {
constinit FallbackMode g_mode = FallbackMode::kPassthrough;  // written once, at initialisation
}  // namespace

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

ssize_t EngineRecvfrom(int fd, void* buf, size_t n, int flags, sockaddr* addr, socklen_t* len) {
  return Finish(uring::Recvfrom(fd, buf, n, flags, addr, len),
                [&] { return DOORWAY_REAL(recvfrom)(fd, buf, n, flags, addr, len); });
}

ssize_t EngineRecvmsg(int fd, msghdr* msg, int flags) {
  return Finish(uring::Recvmsg(fd, msg, flags),
                [&] { return DOORWAY_REAL(recvmsg)(fd, msg, flags); });
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
  FallbackMode mode = FallbackMode::kPassthrough;
  if (requested == FallbackMode::kUring || requested == FallbackMode::kUringSqpoll) {
    uring::Options options;
    options.sqpoll = requested == FallbackMode::kUringSqpoll;
    uring::Support s = uring::Initialize(options);
    if (s.ok) {
      mode = requested;
      DOORWAY_LOG(kInfo, "fallback: io_uring engine on%s (%s)", options.sqpoll ? ", SQPOLL" : "",
                  s.futex_wake ? "blocking waits in io_uring"
                               : "no IORING_OP_FUTEX_WAKE: blocking waits by direct syscall");
    } else {
      RawLog(LogLevel::kWarn,
             "DOORWAY_FALLBACK: io_uring engine unavailable: %s; using passthrough", s.reason);
    }
  }
  g_mode = mode;
  internal::g_uring.store(mode != FallbackMode::kPassthrough, std::memory_order_relaxed);
  return mode;
}

FallbackMode CurrentMode() { return g_mode; }

}  // namespace doorway::runtime::fallback

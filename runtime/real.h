// The real libc functions that doorway interposes, resolved once.
//
// Every interposed symbol eventually calls the function it shadows; the
// runtime's own I/O calls these too, never the interposed names. Each entry is
// resolved with dlsym(RTLD_NEXT) by ResolveAll() (run from the runtime's
// constructor) or lazily on first use, whichever comes first — calls can
// arrive before our constructor runs (other libraries' constructors) and from
// inside dlsym itself. While a thread is inside dlsym, a call that finds its
// entry unresolved goes straight to the kernel with syscall(2) when libc's
// signature matches the system call's, and aborts with a message otherwise.
#ifndef DOORWAY_RUNTIME_REAL_H_
#define DOORWAY_RUNTIME_REAL_H_

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>

// X(name, syscall number usable as a same-signature fallback, or 0)
#define DOORWAY_REAL_SYMBOLS(X)       \
  X(socket, SYS_socket)               \
  X(socketpair, SYS_socketpair)       \
  X(bind, SYS_bind)                   \
  X(listen, SYS_listen)               \
  X(accept, SYS_accept)               \
  X(accept4, SYS_accept4)             \
  X(connect, SYS_connect)             \
  X(shutdown, SYS_shutdown)           \
  X(close, SYS_close)                 \
  X(close_range, SYS_close_range)     \
  X(closefrom, 0)                     \
  X(dup, SYS_dup)                     \
  X(dup2, SYS_dup2)                   \
  X(dup3, SYS_dup3)                   \
  X(fcntl, 0)                         \
  X(fcntl64, 0)                       \
  X(ioctl, 0)                         \
  X(getsockname, SYS_getsockname)     \
  X(getpeername, SYS_getpeername)     \
  X(getsockopt, SYS_getsockopt)       \
  X(setsockopt, SYS_setsockopt)       \
  X(read, SYS_read)                   \
  X(readv, SYS_readv)                 \
  X(write, SYS_write)                 \
  X(writev, SYS_writev)               \
  X(recv, 0)                          \
  X(recvfrom, SYS_recvfrom)           \
  X(recvmsg, SYS_recvmsg)             \
  X(recvmmsg, SYS_recvmmsg)           \
  X(send, 0)                          \
  X(sendto, SYS_sendto)               \
  X(sendmsg, SYS_sendmsg)             \
  X(sendmmsg, SYS_sendmmsg)           \
  X(sendfile, SYS_sendfile)           \
  X(sendfile64, SYS_sendfile)         \
  X(splice, SYS_splice)               \
  X(poll, SYS_poll)                   \
  X(ppoll, 0)                         \
  X(select, SYS_select)               \
  X(pselect, 0)                       \
  X(epoll_create, SYS_epoll_create)   \
  X(epoll_create1, SYS_epoll_create1) \
  X(epoll_ctl, SYS_epoll_ctl)         \
  X(epoll_wait, SYS_epoll_wait)       \
  X(epoll_pwait, 0)                   \
  X(epoll_pwait2, 0)                  \
  X(fork, 0)                          \
  X(execve, SYS_execve)               \
  X(execv, 0)                         \
  X(execvp, 0)                        \
  X(execvpe, 0)                       \
  X(fexecve, 0)                       \
  X(execveat, SYS_execveat)           \
  X(posix_spawn, 0)                   \
  X(posix_spawnp, 0)                  \
  X(sigaction, 0)                     \
  X(signal, 0)

namespace doorway::runtime::real {

enum class Id : int {
#define DOORWAY_REAL_ENUM(name, nr) k_##name,
  DOORWAY_REAL_SYMBOLS(DOORWAY_REAL_ENUM)
#undef DOORWAY_REAL_ENUM
      kCount
};

// Resolved addresses, indexed by Id. Constant-initialised (all null).
extern std::atomic<void*> g_table[static_cast<int>(Id::kCount)];

// Slow path: resolves one entry (or returns its syscall fallback while this
// thread is inside dlsym). Never returns null: aborts with a message instead.
void* Resolve(Id id);

// Resolves every entry; called from the runtime's constructor.
void ResolveAll();

#define DOORWAY_REAL_ACCESSOR(name, nr)                                                \
  inline decltype(&::name) name() {                                                    \
    /* Relaxed: the pointer is the only data; any thread's resolution is good. */      \
    void* f = g_table[static_cast<int>(Id::k_##name)].load(std::memory_order_relaxed); \
    if (__builtin_expect(f == nullptr, 0)) f = Resolve(Id::k_##name);                  \
    return reinterpret_cast<decltype(&::name)>(f);                                     \
  }
DOORWAY_REAL_SYMBOLS(DOORWAY_REAL_ACCESSOR)
#undef DOORWAY_REAL_ACCESSOR

}  // namespace doorway::runtime::real

// DOORWAY_REAL(read)(fd, buf, n) calls libc's read.
#define DOORWAY_REAL(name) (::doorway::runtime::real::name())

#endif  // DOORWAY_RUNTIME_REAL_H_

// Spare TCP sockets: the program's TCP socket that an accelerated connect
// replaces with the door connection is kept for the program's next socket()
// instead of being destroyed.
//
// Why: on the development VM creating a TCP socket costs ~7 µs and
// destroying it (which dup3 does when the door socket takes its fd number)
// about as much again: together ~30% of an accelerated connect, the reason
// accelerated connection set-up was slower than kernel TCP. A connect that
// is accelerated leaves its TCP socket untouched (never bound: the local
// port is chosen without bind, see SynthesizedPort; never connected), so
// that socket is as good as a new one for a later socket() of the same
// family.
//
// Only a socket the program made with socket() in this process, never
// bound, never connected, with no option set and no file flag but
// O_NONBLOCK, and held by one fd, is kept (KeepSpareSocket's caller checks;
// fork makes every history unknown). At most kSpareSockets are kept, at fd
// numbers from kSpareMinFd up when the limit allows it (so that the
// program's own fd numbers stay what the kernel would give), close-on-exec,
// dropped in a fork child (the parent may hand the same socket out), and
// checked by inode before reuse (a program that closes fds it does not know,
// e.g. a daemon closing everything, may have closed one; it is then just
// forgotten).
//
// A spare made before the program changed its effective uid is not handed
// out (the socket's owner is what netfilter's owner match sees). Not
// covered: a program that changes network namespace (setns) between a
// connect and its next socket() gets a socket of the old namespace.
#pragma once

#include <atomic>
#include <cstdint>

namespace doorway::runtime {

inline constexpr int kSpareSockets = 4;
inline constexpr int kSpareMinFd = 512;

// A duplicate of fd's TCP socket at a spare's place, or -1 if the pool is
// full: the caller replaces fd, then hands the duplicate to KeepSpareSocket
// (or closes it if the replacement failed).
int DuplicateForSpare(int fd);
// Keeps `spare` (from DuplicateForSpare; a TCP socket of `domain`, O_NONBLOCK
// set or not) for a later socket(), or closes it. Async-signal-safe
// (try-lock; on contention it is closed). dev/ino: the socket's identity if
// known (TakeSpareSocket's), else 0 (then it is asked with fstat).
void KeepSpareSocket(int spare, int domain, bool nonblock, std::uint64_t dev = 0,
                     std::uint64_t ino = 0);

// A spare TCP socket of `domain` installed at the lowest free fd, as
// socket() would, with `flags` (SOCK_NONBLOCK, SOCK_CLOEXEC); -1 if none.
// *dev, *ino (if given): its identity.
int TakeSpareSocket(int domain, int flags, std::uint64_t* dev = nullptr,
                    std::uint64_t* ino = nullptr);

// The spares' fds, so that close_range/closefrom leave them alone. Returns
// how many were written (at most max).
int SpareSocketFds(int* out, int max);

// Where doorway keeps descriptors of its own (spares, kept door sockets):
// kSpareMinFd, or lower when the soft fd limit is lower (F_DUPFD fails with
// EINVAL at or above it).
int HiddenFdBase();
// Moves fd to a hidden number (close-on-exec, from HiddenFdBase), closing
// fd; the new fd, or -1 (fd closed too) if fd < 0 or no number is free.
int HideFd(int fd);

// The lock of doorway's small per-process pools (spares, kept door
// sockets): try-only, since socket(), connect() and close() may run in a
// signal handler that interrupted a thread holding it. acquire/release:
// the entries written by the previous holder are visible.
struct TryLockFlag {
  std::atomic_flag busy = ATOMIC_FLAG_INIT;
  bool TryLock() { return !busy.test_and_set(std::memory_order_acquire); }
  void Unlock() { busy.clear(std::memory_order_release); }
  // A fork child: only its one thread exists.
  void Reset() { busy.clear(std::memory_order_relaxed); }
};

// A local port for an accelerated connection from an unbound socket: from
// the kernel's ephemeral range (ip_local_port_range), a per-process
// sequence from a random start. Binding the socket to port 0 cost ~5 µs per
// connect and would make it unfit for reuse; the port it reserved was
// released at the dup3 anyway, so uniqueness is what it was: likely, not
// guaranteed.
std::uint16_t SynthesizedPort();

}  // namespace doorway::runtime

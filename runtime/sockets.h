// What the runtime knows about each socket fd, and the calls that change it.
//
// How the pieces fit: every socket the process creates (socket, socketpair,
// accept), duplicates (dup*, fcntl F_DUPFD*), receives (SCM_RIGHTS) or
// inherits (found by a scan of /proc/self/fd at initialisation) gets a
// SocketFile in the shadow fd table (//fdtable); dup'ed fds share one
// SocketFile, as they share one open file description in the kernel. Sockets
// that appear some other way (raw syscalls, glibc-internal sockets handed to
// the program) are recognised lazily, on the first socket-specific call
// (Discover). Closing removes the entry before the kernel closes the fd, so a
// number the kernel hands out again is never confused with the old socket.
//
// Every function here calls the real libc function (see real.h) and returns
// its result, or -errno on failure: abi/ turns that into errno at one exit
// point. All of them are async-signal-safe and take no lock.
#ifndef DOORWAY_RUNTIME_SOCKETS_H_
#define DOORWAY_RUNTIME_SOCKETS_H_

#include <sys/socket.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>

#include "fdtable/fdtable.h"

namespace doorway::runtime {

enum class Origin : std::uint8_t {
  kSocket = 1,      // socket(2)
  kSocketpair = 2,  // socketpair(2)
  kAccept = 3,      // accept(2)/accept4(2)
  kInherited = 4,   // open when the runtime started (fork+exec, systemd, inetd)
  kReceived = 5,    // arrived in an SCM_RIGHTS control message
  kDiscovered = 6,  // first seen in a socket call (created behind our back)
};

struct SocketFile {
  static constexpr std::uint32_t kTypeTag = 0x534F434B;  // "SOCK"
  SocketFile() = default;
  SocketFile(const SocketFile& o)
      : domain(o.domain),
        type(o.type),
        protocol(o.protocol),
        origin(o.origin),
        history(o.history.load(std::memory_order_relaxed)),
        spare_dev(o.spare_dev),
        spare_ino(o.spare_ino) {}
  SocketFile& operator=(const SocketFile& o) {
    domain = o.domain;
    type = o.type;
    protocol = o.protocol;
    origin = o.origin;
    history.store(o.history.load(std::memory_order_relaxed), std::memory_order_relaxed);
    spare_dev = o.spare_dev;
    spare_ino = o.spare_ino;
    return *this;
  }
  int domain = 0;
  int type = 0;  // without SOCK_NONBLOCK/SOCK_CLOEXEC
  int protocol = 0;
  Origin origin = Origin::kSocket;
  // Which socket options the program has set (bits from accel.cc's option
  // list; bit 31: one outside it), so that an accelerated connect copies
  // only those from the kernel socket instead of asking for every option.
  std::atomic<std::uint32_t> options_set{0};
  // What the program did to the socket through doorway (kHistory* bits), so
  // that an accelerated connect can skip asking the kernel. Only a socket
  // made by socket(2) in this process starts with a known history; fork
  // makes every history unknown (the other process may use the socket).
  std::atomic<std::uint8_t> history{kHistoryUnknown};
  static constexpr std::uint8_t kHistoryUnknown = 1;
  static constexpr std::uint8_t kHistoryBound = 2;
  static constexpr std::uint8_t kHistoryConnectTried = 4;
  // The socket's inode when socket() handed out a spare (spare.h) whose
  // identity it checked: a connect that keeps it as a spare again need not
  // ask the kernel. 0: unknown.
  std::uint64_t spare_dev = 0;
  std::uint64_t spare_ino = 0;
};

// Records history bits (SocketFile::kHistory*) of the plain socket fd.
void NoteHistory(int fd, std::uint8_t bits);
// After fork: no socket's history is known any more.
void ForgetHistories();

// Records that the program set (level, name) on the plain socket fd.
void NoteOptionSet(int fd, int level, int name);

// Reads domain, type and protocol of fd from the kernel; false if fd is not
// a socket. errno is preserved.
bool Classify(int fd, SocketFile* out);

// Makes sure fd is in the table if it is a socket (lazy recognition).
void Discover(int fd);

// Registers every socket open in this process (initialisation, after exec).
// Returns how many were found.
int ScanInheritedSockets();

// Whether tracking is on (off under DOORWAY_DISABLE=1).
bool TrackingEnabled();
void SetTrackingEnabled(bool on);

int Socket(int domain, int type, int protocol);
int Socketpair(int domain, int type, int protocol, int sv[2]);
int Accept(int fd, sockaddr* addr, socklen_t* len);
int Accept4(int fd, sockaddr* addr, socklen_t* len, int flags);
int Close(int fd);
int CloseRange(unsigned first, unsigned last, int flags);
void Closefrom(int lowfd);
int Dup(int fd);
int Dup2(int oldfd, int newfd);
int Dup3(int oldfd, int newfd, int flags);
// fcntl for every command: F_DUPFD and F_DUPFD_CLOEXEC are tracked.
int Fcntl(int fd, int cmd, unsigned long arg, bool fcntl64);
ssize_t Recvmsg(int fd, msghdr* msg, int flags);
int Recvmmsg(int fd, mmsghdr* msgs, unsigned n, int flags, timespec* timeout);
pid_t Fork();

// For doorway_fd_info() and tests: what the table knows of fd, if anything
// (*accelerated: it is an accelerated connection).
bool Describe(int fd, SocketFile* out, bool* accelerated = nullptr);

}  // namespace doorway::runtime

#endif  // DOORWAY_RUNTIME_SOCKETS_H_

#include "runtime/sockets.h"

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "runtime/accel.h"
#include "runtime/epoll.h"
#include "runtime/fallback.h"
#include "runtime/log.h"
#include "runtime/real.h"
#include "runtime/spare.h"
#include "runtime/stats.h"

namespace doorway::runtime {

namespace {

using fdtable::GlobalTable;
using fdtable::Make;
using fdtable::Ref;

// Relaxed: a process-wide switch set once during initialisation, before the
// program's threads exist.
constinit std::atomic<bool> g_tracking{true};

// errno-preserving guard for the runtime's own system calls (abseil's
// ErrnoSaver): the program must see errno only from the call it made.
class ErrnoSaver {
 public:
  ErrnoSaver() : saved_(errno) {}
  ~ErrnoSaver() { errno = saved_; }
  ErrnoSaver(const ErrnoSaver&) = delete;
  ErrnoSaver& operator=(const ErrnoSaver&) = delete;

 private:
  int saved_;
};

int Neg(int r) { return r < 0 ? -errno : r; }

const char* OriginName(Origin o) {
  switch (o) {
    case Origin::kSocket:
      return "new";
    case Origin::kSocketpair:
      return "socketpair";
    case Origin::kAccept:
      return "accepted";
    case Origin::kInherited:
      return "inherited";
    case Origin::kReceived:
      return "received";
    case Origin::kDiscovered:
      return "discovered";
  }
  return "?";
}

void Track(int fd, const SocketFile& file) {
  if (!TrackingEnabled()) return;
  bool ok = false;
  Ref obj = Make<SocketFile>(file);
  // Displaced entries are stale (the kernel reused a number we missed the
  // close of, e.g. a raw close syscall); drop them.
  Ref old = GlobalTable().Install(fd, std::move(obj), &ok);
  if (old) OnFdDetached(old);
  if (!ok) {
    DOORWAY_LOG(kWarn, "cannot track fd %d (out of table space)", fd);
    return;
  }
  if (file.domain == AF_INET || file.domain == AF_INET6) StatsNoteSocket();
  DOORWAY_LOG(kDebug, "fd %d: %s socket (domain %d, type %d, protocol %d)", fd,
              OriginName(file.origin), file.domain, file.type, file.protocol);
}

void TrackAs(int fd, int domain, int type, int protocol, Origin origin, std::uint64_t spare_dev = 0,
             std::uint64_t spare_ino = 0) {
  SocketFile f;
  f.spare_dev = spare_dev;
  f.spare_ino = spare_ino;
  f.domain = domain;
  f.type = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
  // The kernel picks the default protocol for 0 and reports it through
  // SO_PROTOCOL; record what it would report.
  if (protocol == 0 && (domain == AF_INET || domain == AF_INET6)) {
    if (f.type == SOCK_STREAM) protocol = IPPROTO_TCP;
    if (f.type == SOCK_DGRAM) protocol = IPPROTO_UDP;
  }
  f.protocol = protocol;
  f.origin = origin;
  if (origin == Origin::kSocket) f.history.store(0, std::memory_order_relaxed);
  Track(fd, f);
}

void TrackClassified(int fd, Origin origin) {
  SocketFile f;
  if (Classify(fd, &f)) {
    f.origin = origin;
    Track(fd, f);
  }
}

// fd now refers to what `from` refers to (dup family).
void TrackDuplicate(int from, int fd) {
  if (!TrackingEnabled()) return;
  std::uint32_t tag = GlobalTable().Tag(from);
  Ref src = GlobalTable().Get(from);
  Ref old;
  if (src) {
    OnFdAttached(src);
    old = GlobalTable().Install(fd, std::move(src), nullptr, tag);
  } else {
    old = GlobalTable().Remove(fd);
  }
  if (old) OnFdDetached(old);
}

void TrackReceivedRights(const msghdr* msg) {
  if (msg->msg_control == nullptr || msg->msg_controllen < sizeof(cmsghdr)) return;
  for (cmsghdr* c = CMSG_FIRSTHDR(const_cast<msghdr*>(msg)); c != nullptr;
       c = CMSG_NXTHDR(const_cast<msghdr*>(msg), c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* data = CMSG_DATA(c);
    for (size_t i = 0; i < n; ++i) {
      int fd;
      __builtin_memcpy(&fd, data + i * sizeof(int), sizeof(int));
      TrackClassified(fd, Origin::kReceived);
    }
  }
}

}  // namespace

bool TrackingEnabled() { return g_tracking.load(std::memory_order_relaxed); }
void SetTrackingEnabled(bool on) { g_tracking.store(on, std::memory_order_relaxed); }

bool Classify(int fd, SocketFile* out) {
  ErrnoSaver saver;
  struct stat st;
  if (syscall(SYS_fstat, fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return false;
  int v[3] = {0, 0, 0};
  const int opts[3] = {SO_DOMAIN, SO_TYPE, SO_PROTOCOL};
  for (int i = 0; i < 3; ++i) {
    socklen_t len = sizeof(int);
    if (syscall(SYS_getsockopt, fd, SOL_SOCKET, opts[i], &v[i], &len) != 0) return false;
  }
  out->domain = v[0];
  out->type = v[1];
  out->protocol = v[2];
  return true;
}

void Discover(int fd) {
  if (!TrackingEnabled() || GlobalTable().Occupied(fd)) return;
  TrackClassified(fd, Origin::kDiscovered);
}

int ScanInheritedSockets() {
  ErrnoSaver saver;
  int found = 0;
  // Raw getdents64 rather than opendir: no allocation, no interposed calls.
  int dir = static_cast<int>(
      syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir < 0) {
    // No /proc (a minimal container): probe the low fds instead.
    for (int fd = 0; fd < 1024; ++fd) {
      SocketFile f;
      if (Classify(fd, &f)) {
        f.origin = Origin::kInherited;
        Track(fd, f);
        ++found;
      }
    }
    return found;
  }
  alignas(8) char buf[4096];
  for (;;) {
    long n = syscall(SYS_getdents64, dir, buf, sizeof(buf));
    if (n <= 0) break;
    for (long off = 0; off < n;) {
      auto* d = reinterpret_cast<struct dirent64*>(buf + off);
      off += d->d_reclen;
      const char* name = d->d_name;
      if (name[0] < '0' || name[0] > '9') continue;
      int fd = static_cast<int>(strtol(name, nullptr, 10));
      if (fd == dir || GlobalTable().Occupied(fd)) continue;
      SocketFile f;
      if (Classify(fd, &f)) {
        f.origin = Origin::kInherited;
        Track(fd, f);
        ++found;
      }
    }
  }
  syscall(SYS_close, dir);
  return found;
}

int Socket(int domain, int type, int protocol) {
  // A TCP socket that an accelerated connect left unused (spare.h).
  if ((domain == AF_INET || domain == AF_INET6) &&
      (type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) == SOCK_STREAM &&
      (protocol == 0 || protocol == IPPROTO_TCP) && TrackingEnabled()) {
    std::uint64_t dev = 0, ino = 0;
    if (int fd = TakeSpareSocket(domain, type & (SOCK_NONBLOCK | SOCK_CLOEXEC), &dev, &ino);
        fd >= 0) {
      TrackAs(fd, domain, type, protocol, Origin::kSocket, dev, ino);
      return fd;
    }
  }
  int fd = DOORWAY_REAL(socket)(domain, type, protocol);
  if (fd < 0) return -errno;
  TrackAs(fd, domain, type, protocol, Origin::kSocket);
  return fd;
}

int Socketpair(int domain, int type, int protocol, int sv[2]) {
  int r = DOORWAY_REAL(socketpair)(domain, type, protocol, sv);
  if (r < 0) return -errno;
  TrackAs(sv[0], domain, type, protocol, Origin::kSocketpair);
  TrackAs(sv[1], domain, type, protocol, Origin::kSocketpair);
  return r;
}

namespace {
void TrackAccepted(int listener, int fd) {
  if (!TrackingEnabled()) return;
  Ref l = GlobalTable().Get(listener);
  if (const SocketFile* lf = l.As<SocketFile>(); lf != nullptr) {
    TrackAs(fd, lf->domain, lf->type, lf->protocol, Origin::kAccept);
  } else {
    TrackClassified(fd, Origin::kAccept);
  }
}
}  // namespace

int Accept(int fd, sockaddr* addr, socklen_t* len) {
  int r = DOORWAY_REAL(accept)(fd, addr, len);
  if (r < 0) return -errno;
  TrackAccepted(fd, r);
  return r;
}

int Accept4(int fd, sockaddr* addr, socklen_t* len, int flags) {
  int r = DOORWAY_REAL(accept4)(fd, addr, len, flags);
  if (r < 0) return -errno;
  TrackAccepted(fd, r);
  return r;
}

int Close(int fd) {
  // Remove first, close second: once the kernel has closed the fd it may
  // hand the number to another thread's socket(), whose entry we must not
  // drop. The reference is released after the kernel call.
  // An accelerated connection shuts its rings down before the kernel closes
  // the door socket, so the peer sees the reset before the hang-up.
  Ref old = GlobalTable().Remove(fd);
  if (old) OnFdDetached(old, fd);
  return Neg(DOORWAY_REAL(close)(fd));
}

int CloseRange(unsigned first, unsigned last, int flags) {
  bool closing = first <= last && (flags & ~(CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC)) == 0 &&
                 (flags & CLOSE_RANGE_CLOEXEC) == 0;
  if (!closing) return Neg(DOORWAY_REAL(close_range)(first, last, flags));
  // Descriptors doorway owns (segment memfds, a listener's kernel socket
  // and doors) are closed by the objects that own them, never behind their
  // backs: programs close whole ranges before exec (Python's close_fds).
  int hidden[1024];
  int nhidden = CollectOwnFds(first, last, hidden, 1024);
  // Table entries go before the kernel closes the fds (see Close).
  if (first < static_cast<unsigned>(fdtable::FdTable::kMaxFds)) {
    int hi = last >= static_cast<unsigned>(fdtable::FdTable::kMaxFds)
                 ? fdtable::FdTable::kMaxFds - 1
                 : static_cast<int>(last);
    GlobalTable().RemoveRange(static_cast<int>(first), hi, [](int, Ref r) { OnFdDetached(r); });
  }
  unsigned lo = first;
  for (int i = 0; i < nhidden; ++i) {
    unsigned h = static_cast<unsigned>(hidden[i]);
    if (h > lo && DOORWAY_REAL(close_range)(lo, h - 1, flags) != 0) return -errno;
    lo = h + 1;
    flags &= ~CLOSE_RANGE_UNSHARE;  // done by the first call
  }
  if (lo <= last && lo != 0 && DOORWAY_REAL(close_range)(lo, last, flags) != 0) return -errno;
  if (lo == 0 && DOORWAY_REAL(close_range)(0, last, flags) != 0) return -errno;
  return 0;
}

void Closefrom(int lowfd) {
  (void)CloseRange(lowfd < 0 ? 0 : static_cast<unsigned>(lowfd), ~0U, 0);
}

int Dup(int fd) {
  int r = DOORWAY_REAL(dup)(fd);
  if (r < 0) return -errno;
  TrackDuplicate(fd, r);
  return r;
}

int Dup2(int oldfd, int newfd) {
  int r = DOORWAY_REAL(dup2)(oldfd, newfd);
  if (r < 0) return -errno;
  if (oldfd != newfd) TrackDuplicate(oldfd, r);
  return r;
}

int Dup3(int oldfd, int newfd, int flags) {
  int r = DOORWAY_REAL(dup3)(oldfd, newfd, flags);
  if (r < 0) return -errno;
  TrackDuplicate(oldfd, r);
  return r;
}

int Fcntl(int fd, int cmd, unsigned long arg, bool fcntl64) {
  int r = fcntl64 ? DOORWAY_REAL(fcntl64)(fd, cmd, arg) : DOORWAY_REAL(fcntl)(fd, cmd, arg);
  if (r < 0) return -errno;
  if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) TrackDuplicate(fd, r);
  return r;
}

ssize_t Recvmsg(int fd, msghdr* msg, int flags) {
  ssize_t r = fallback::Recvmsg(fd, msg, flags);
  if (r < 0) return -errno;
  if (TrackingEnabled()) TrackReceivedRights(msg);
  return r;
}

int Recvmmsg(int fd, mmsghdr* msgs, unsigned n, int flags, timespec* timeout) {
  int r = DOORWAY_REAL(recvmmsg)(fd, msgs, n, flags, timeout);
  if (r < 0) return -errno;
  if (TrackingEnabled()) {
    for (int i = 0; i < r; ++i) TrackReceivedRights(&msgs[i].msg_hdr);
  }
  return r;
}

pid_t Fork() {
  // The table lives in ordinary memory, so the child inherits it as the
  // kernel's fd table is inherited. Accelerated connections become shared:
  // a close in one process must not shut them down under the other.
  MarkAllShared();
  EpollUnparkAll();  // the child shares the kernel's epoll sets (epoll.h)
  ForgetHistories();
  pid_t pid = DOORWAY_REAL(fork)();
  if (pid < 0) return -errno;
  if (pid == 0) ForgetPendingHellos();
  StatsAfterFork(pid);
  return pid;
}

void NoteHistory(int fd, std::uint8_t bits) {
  Ref r = GlobalTable().Get(fd);
  if (SocketFile* f = r.As<SocketFile>(); f != nullptr) {
    f->history.fetch_or(bits, std::memory_order_relaxed);
  }
}

void ForgetHistories() {
  GlobalTable().ForEach([](int, const Ref& r) {
    if (SocketFile* f = const_cast<Ref&>(r).As<SocketFile>(); f != nullptr) {
      f->history.fetch_or(SocketFile::kHistoryUnknown, std::memory_order_relaxed);
    }
  });
}

void NoteOptionSet(int fd, int level, int name) {
  Ref r = GlobalTable().Get(fd);
  if (SocketFile* f = r.As<SocketFile>(); f != nullptr) {
    f->options_set.fetch_or(OptionBit(level, name), std::memory_order_relaxed);
  }
}

bool Describe(int fd, SocketFile* out, bool* accelerated) {
  Ref r = GlobalTable().Get(fd);
  if (accelerated != nullptr) *accelerated = false;
  if (const SocketFile* f = r.As<SocketFile>(); f != nullptr) {
    *out = *f;
    return true;
  }
  if (const Connection* c = r.As<Connection>(); c != nullptr) {
    out->domain = c->local.family;
    out->type = SOCK_STREAM;
    out->protocol = IPPROTO_TCP;
    out->origin = c->role == transport::Role::kClient ? Origin::kSocket : Origin::kAccept;
    if (accelerated != nullptr) *accelerated = true;
    return true;
  }
  if (const Listener* l = r.As<Listener>(); l != nullptr) {
    out->domain = l->domain;
    out->type = SOCK_STREAM;
    out->protocol = IPPROTO_TCP;
    out->origin = Origin::kSocket;
    return true;
  }
  return false;
}

}  // namespace doorway::runtime

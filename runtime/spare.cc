#include "runtime/spare.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>

#include "runtime/real.h"

namespace doorway::runtime {
namespace {

struct Spare {
  int fd = -1;  // written under the lock through atomic_ref (SpareSocketFds reads it without)
  int domain = 0;
  bool nonblock = false;
  dev_t dev = 0;
  ino_t ino = 0;
};

// The lock is try-only: socket() and connect() may run in a signal handler
// that interrupted a thread holding it.
struct Pool : TryLockFlag {
  Spare spare[kSpareSockets];
};

Pool g_pool;

void StoreFd(Spare& s, int fd) { std::atomic_ref<int>(s.fd).store(fd, std::memory_order_relaxed); }

// SynthesizedPort's sequence; reseeded in a fork child, whose connections
// would otherwise take the parent's next ports.
std::atomic<unsigned> g_port_seq{0};
std::atomic<bool> g_port_seeded{false};

// A forked child must not hand out what the parent may hand out too. Only
// this thread exists in the child: the lock is simply reset.
void DropInChild() {
  for (Spare& s : g_pool.spare) {
    if (s.fd >= 0) DOORWAY_REAL(close)(s.fd);
    s = Spare{};
  }
  g_pool.Reset();
  g_port_seeded.store(false, std::memory_order_relaxed);
}

[[maybe_unused]] const int g_atfork = pthread_atfork(nullptr, nullptr, DropInChild);

}  // namespace

int HiddenFdBase() {
  static const int base = [] {
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return kSpareMinFd;
    auto soft = static_cast<long>(rl.rlim_cur);
    if (soft > 2L * kSpareMinFd) return kSpareMinFd;
    return static_cast<int>(soft / 2);
  }();
  return base;
}

int HideFd(int fd) {
  if (fd < 0) return -1;
  int h = DOORWAY_REAL(fcntl)(fd, F_DUPFD_CLOEXEC, HiddenFdBase());
  DOORWAY_REAL(close)(fd);
  return h;
}

int DuplicateForSpare(int fd) {
  // A snapshot: KeepSpareSocket closes the duplicate if the pool filled up.
  bool room = false;
  for (Spare& s : g_pool.spare) {
    room = room || std::atomic_ref<int>(s.fd).load(std::memory_order_relaxed) < 0;
  }
  return room ? DOORWAY_REAL(fcntl)(fd, F_DUPFD_CLOEXEC, HiddenFdBase()) : -1;
}

void KeepSpareSocket(int spare, int domain, bool nonblock, std::uint64_t dev, std::uint64_t ino) {
  if (ino == 0) {
    struct stat st {};
    if (fstat(spare, &st) != 0 || !S_ISSOCK(st.st_mode)) {
      DOORWAY_REAL(close)(spare);
      return;
    }
    dev = st.st_dev;
    ino = st.st_ino;
  }
  bool kept = false;
  if (g_pool.TryLock()) {
    for (Spare& s : g_pool.spare) {
      if (s.fd >= 0) continue;
      s.domain = domain;
      s.nonblock = nonblock;
      s.dev = dev;
      s.ino = ino;
      StoreFd(s, spare);
      kept = true;
      break;
    }
    g_pool.Unlock();
  }
  if (!kept) DOORWAY_REAL(close)(spare);
}

int TakeSpareSocket(int domain, int flags, std::uint64_t* dev, std::uint64_t* ino) {
  if (!g_pool.TryLock()) return -1;
  Spare got;
  for (Spare& s : g_pool.spare) {
    if (s.fd >= 0 && s.domain == domain) {
      got = s;
      StoreFd(s, -1);
      s = Spare{};
      break;
    }
  }
  g_pool.Unlock();
  if (got.fd < 0) return -1;
  // Still the socket we kept? A program that closes fds it does not know
  // (a daemon closing everything) may have closed it and reused the number:
  // then it is not ours to close either.
  struct stat st {};
  if (fstat(got.fd, &st) != 0 || !S_ISSOCK(st.st_mode) || st.st_dev != got.dev ||
      st.st_ino != got.ino) {
    return -1;
  }
  // A socket's inode carries its creator's uid, which the kernel's owner
  // checks (netfilter's owner match, uid routing) see: a program that
  // dropped privileges since gets a socket of its own.
  if (st.st_uid != geteuid()) {
    DOORWAY_REAL(close)(got.fd);
    return -1;
  }
  int fd = DOORWAY_REAL(fcntl)(got.fd, (flags & SOCK_CLOEXEC) ? F_DUPFD_CLOEXEC : F_DUPFD, 0);
  DOORWAY_REAL(close)(got.fd);
  if (fd < 0) return -1;
  const bool nonblock = (flags & SOCK_NONBLOCK) != 0;
  if (nonblock != got.nonblock &&
      DOORWAY_REAL(fcntl)(fd, F_SETFL, nonblock ? O_RDWR | O_NONBLOCK : O_RDWR) != 0) {
    DOORWAY_REAL(close)(fd);
    return -1;
  }
  if (dev != nullptr) *dev = st.st_dev;
  if (ino != nullptr) *ino = st.st_ino;
  return fd;
}

int SpareSocketFds(int* out, int max) {
  int n = 0;
  for (Spare& s : g_pool.spare) {
    int fd = std::atomic_ref<int>(s.fd).load(std::memory_order_relaxed);
    if (fd >= 0 && n < max) out[n++] = fd;
  }
  return n;
}

std::uint16_t SynthesizedPort() {
  struct Range {
    unsigned lo = 32768, hi = 60999;  // the kernel's default
  };
  static const Range range = [] {
    Range r;
    int fd = static_cast<int>(syscall(
        SYS_openat, AT_FDCWD, "/proc/sys/net/ipv4/ip_local_port_range", O_RDONLY | O_CLOEXEC));
    if (fd < 0) return r;
    char buf[64] = {};
    long n = syscall(SYS_read, fd, buf, sizeof(buf) - 1);
    syscall(SYS_close, fd);
    if (n <= 0) return r;
    char* end = nullptr;
    unsigned long lo = strtoul(buf, &end, 10);
    unsigned long hi = strtoul(end, nullptr, 10);
    if (lo >= 1 && lo <= hi && hi <= 65535) {
      r.lo = static_cast<unsigned>(lo);
      r.hi = static_cast<unsigned>(hi);
    }
    return r;
  }();
  if (!g_port_seeded.load(std::memory_order_relaxed)) {
    // Two threads may both seed: either start is as good.
    unsigned seed = 0;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != sizeof(seed)) {
      seed = static_cast<unsigned>(getpid()) * 2654435761u;
    }
    g_port_seq.store(seed, std::memory_order_relaxed);
    g_port_seeded.store(true, std::memory_order_relaxed);
  }
  const unsigned span = range.hi - range.lo + 1;
  return static_cast<std::uint16_t>(range.lo +
                                    g_port_seq.fetch_add(1, std::memory_order_relaxed) % span);
}

}  // namespace doorway::runtime

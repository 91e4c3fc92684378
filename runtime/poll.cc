#include "runtime/poll.h"

#include <sched.h>
#include <sys/mman.h>
#include <time.h>

#include <cerrno>
#include <cstring>

#include "fdtable/fdtable.h"
#include "runtime/accel.h"
#include "runtime/epoll.h"
#include "runtime/real.h"
#include "runtime/signals.h"
#include "transport/fence.h"
#include "transport/wait.h"

namespace doorway::runtime {

namespace {

using fdtable::GlobalTable;
using fdtable::Ref;

// Spin before sleeping in the kernel. The transport's adaptive policy suits
// one connection; a poll set is the sum of many, so a fixed budget that
// covers a same-host round trip (a few µs) with margin.
constexpr std::int64_t kSpinNs = 30'000;
constexpr nfds_t kStackFds = 64;
// Connection evaluations per look at the kernel while spinning over a few
// kernel fds (see the spin in EnginePoll): ~30-40 ns each against ~750 ns
// for a ppoll on an accelerated listener. With one connection, the kernel
// every 32 looks; with 32 or more, at every look (so that a kernel fd is
// looked at every ~1-2 µs whatever the number of connections).
constexpr unsigned kKernelEvery = 32;

std::int64_t SpinNs() { return GetConfig().spin_ns >= 0 ? GetConfig().spin_ns : kSpinNs; }

std::int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Per-call scratch: a copy of the pollfds for the kernel and a reference
// to each accelerated connection (which keeps it alive during the wait).
struct Scratch {
  pollfd* kfds = nullptr;
  Ref* refs = nullptr;
  void* mem = nullptr;
  size_t mem_size = 0;
  pollfd stack_kfds[kStackFds];
  Ref stack_refs[kStackFds];

  bool Init(nfds_t n) {
    if (n <= kStackFds) {
      kfds = stack_kfds;
      refs = stack_refs;
      return true;
    }
    // mmap rather than malloc: poll may be called from a signal handler.
    mem_size = n * (sizeof(pollfd) + sizeof(Ref));
    mem = mmap(nullptr, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
      mem = nullptr;
      return false;
    }
    kfds = static_cast<pollfd*>(mem);
    refs = reinterpret_cast<Ref*>(static_cast<char*>(mem) + n * sizeof(pollfd));
    for (nfds_t i = 0; i < n; ++i) new (&refs[i]) Ref();
    return true;
  }
  void Release(nfds_t n) {
    for (nfds_t i = 0; i < n; ++i) refs[i].Reset();
    if (mem != nullptr) munmap(mem, mem_size);
  }
};

constexpr short kAlways = POLLERR | POLLHUP | POLLNVAL;

// Fills revents of the accelerated entries; returns how many have events.
// liveness: a connection with nothing to report may look for its peer's
// death (ConnPollEvents with the fd: a clock read, ~30 ns, at each call).
// The spin's looks do without: a spin that finds nothing ends in a sleep
// on the door sockets, which a dead peer's hang-up wakes.
int EvaluateAccelerated(pollfd* fds, nfds_t n, Ref* refs, bool liveness = true) {
  int ready = 0;
  for (nfds_t i = 0; i < n; ++i) {
    Connection* c = refs[i].As<Connection>();
    if (c == nullptr) continue;
    short ev =
        ConnPollEvents(*c, liveness ? fds[i].fd : -1, fds[i].events) & (fds[i].events | kAlways);
    fds[i].revents = ev;
    if (ev != 0) ++ready;
  }
  return ready;
}

// Kernel poll over the kernel fds, and (include_accelerated) the Unix
// sockets under the accelerated fds; copies the kernel fds' revents into
// fds. Returns their count, or -errno.
int PollKernel(pollfd* fds, nfds_t n, Ref* refs, pollfd* kfds, const timespec* ts,
               const sigset_t* sigmask, bool include_accelerated) {
  for (nfds_t i = 0; i < n; ++i) {
    kfds[i] = fds[i];
    kfds[i].revents = 0;
    if (refs[i].As<Connection>() != nullptr) {
      // Doorbells (POLLIN) and the peer's hang-up wake the wait; the
      // socket's own writability means nothing for the connection.
      kfds[i].events = POLLIN | POLLRDHUP;
      if (!include_accelerated) kfds[i].fd = -1;  // ignored by the kernel
    }
  }
  int r = DOORWAY_REAL(ppoll)(kfds, n, ts, sigmask);
  if (r < 0) return -errno;
  int ready = 0;
  for (nfds_t i = 0; i < n; ++i) {
    Connection* c = refs[i].As<Connection>();
    if (c != nullptr) {
      if (kfds[i].revents & (POLLHUP | POLLERR)) NotePeerHangup(*c);
      // An epoll set holding c may have been waiting for that doorbell.
      if ((kfds[i].revents & POLLIN) && DrainDoorbells(fds[i].fd) > 0 &&
          c->epoll_regs.load(std::memory_order_relaxed) > 0) {
        NoteEpollChange(-1);
      }
      continue;
    }
    fds[i].revents = kfds[i].revents;
    if (kfds[i].revents != 0) ++ready;
  }
  return ready;
}

// One accelerated fd waiting for one direction: the transport's wait.
int WaitOne(pollfd* fd, Connection& c, std::int64_t timeout_ns) {
  const std::int64_t deadline = timeout_ns < 0 ? -1 : NowNs() + timeout_ns;
  for (;;) {
    short ev = ConnPollEvents(c, -1, fd->events) & (fd->events | kAlways);
    if (ev != 0) {
      fd->revents = ev;
      return 1;
    }
    std::int64_t left = deadline < 0 ? -1 : deadline - NowNs();
    if (deadline >= 0 && left <= 0) return 0;
    int w = ConnWait(c, fd->fd, fd->events, left);
    if (w == -EINTR) return -EINTR;  // poll is never restarted (signal(7))
    if (w == -ETIMEDOUT || w == -EAGAIN) return 0;
  }
}

}  // namespace

bool AnyAccelerated(const pollfd* fds, nfds_t n) {
  for (nfds_t i = 0; i < n; ++i) {
    if (GlobalTable().Tag(fds[i].fd) == kTagConnection) return true;
  }
  return false;
}

bool AnyAccelerated(int nfds, const fd_set* r, const fd_set* w, const fd_set* e) {
  for (int fd = 0; fd < nfds && fd < FD_SETSIZE; ++fd) {
    bool in = (r != nullptr && FD_ISSET(fd, r)) || (w != nullptr && FD_ISSET(fd, w)) ||
              (e != nullptr && FD_ISSET(fd, e));
    if (in && GlobalTable().Tag(fd) == kTagConnection) return true;
  }
  return false;
}

int EnginePoll(pollfd* fds, nfds_t n, std::int64_t timeout_ns, const sigset_t* sigmask) {
  if (n == 1 && sigmask == nullptr) {
    short dir = fds[0].events & (POLLIN | POLLOUT);
    if (dir == POLLIN || dir == POLLOUT) {
      Ref r = GlobalTable().Get(fds[0].fd);
      if (Connection* c = r.As<Connection>(); c != nullptr) {
        fds[0].revents = 0;
        return WaitOne(&fds[0], *c, timeout_ns);
      }
    }
  }
  Scratch s;
  if (!s.Init(n)) return -ENOMEM;
  bool have_kernel = false;
  nfds_t kernel_fds = 0;
  nfds_t accelerated = 0;
  for (nfds_t i = 0; i < n; ++i) {
    fds[i].revents = 0;
    if (GlobalTable().Tag(fds[i].fd) == kTagConnection) {
      s.refs[i] = GlobalTable().Get(fds[i].fd);
      if (s.refs[i].As<Connection>() != nullptr) {
        ++accelerated;
        continue;
      }
      s.refs[i].Reset();  // closed or replaced meanwhile: the kernel decides
    }
    if (fds[i].fd >= 0) {
      have_kernel = true;
      ++kernel_fds;
    }
  }
  const std::int64_t start = NowNs();
  const std::int64_t deadline = timeout_ns < 0 ? -1 : start + timeout_ns;
  const timespec zero{0, 0};
  int result = 0;
  bool spun = false;
  // A handler that runs while we spin or between two kernel waits must end
  // the call with EINTR as it would end the kernel's poll (signals.h).
  const std::atomic<std::uint64_t>* signals = SignalEpochOfThisThread();
  const std::uint64_t epoch = signals->load(std::memory_order_relaxed);
  for (;;) {
    int ready = EvaluateAccelerated(fds, n, s.refs);
    if (have_kernel && (ready > 0 || timeout_ns == 0 || !spun)) {
      int k = PollKernel(fds, n, s.refs, s.kfds, &zero, nullptr, false);
      if (k < 0) {
        result = k;
        break;
      }
      ready += k;
    }
    if (ready > 0 || timeout_ns == 0) {
      result = ready;
      break;
    }
    if (!spun) {
      // Spin on the rings (and, now and then, the kernel fds).
      spun = true;
      const std::int64_t spin_start = NowNs();
      std::int64_t spin_end = spin_start + SpinNs();
      if (deadline >= 0 && spin_end > deadline) spin_end = deadline;
      // With a few kernel fds, the kernel is asked every kernel_every looks
      // and a ring that turns ready returns with the last answer, which this
      // spin took at most kernel_every looks (~1-2 µs) earlier: as if the
      // kernel's own poll scanned the kernel fds first and was preempted
      // before the accelerated ones. A kernel fd that turns ready within
      // that window is reported by the next call, whose first look asks the
      // kernel (as one that turns ready just after the kernel's poll scanned
      // it). Both cheaper alternatives cost the reply path: a poll(2) after
      // the ring was seen ready (0.6 µs of sockperf's p50), or the kernel at
      // every look (ppoll on an accelerated listener, an epoll fd, costs
      // ~750 ns on the development VM, so a message waited ~375 ns on
      // average for the look to reach the ring). Many kernel fds: the kernel
      // every 64 looks, and a completing poll(2) when a ring is ready.
      const bool reuse_kernel = have_kernel && kernel_fds <= 4;
      const unsigned kernel_every =
          !reuse_kernel ? 64
          : accelerated >= kKernelEvery
              ? 1
              : kKernelEvery / static_cast<unsigned>(accelerated > 0 ? accelerated : 1);
      // k, and the kernel fds' revents, hold the kernel's last answer: the
      // first look's above (nothing ready, or we would not spin), then each
      // ask's. fresh: the result may be completed with it.
      int k = 0;
      bool fresh = reuse_kernel;
      // sched_yield every kSpinYieldNs, as the transport's waits do
      // (wait.h): with more waiting processes than CPUs (PostgreSQL's
      // backends), a spin that never yields holds the CPU that a woken one
      // needs for its work, until the scheduler's tick.
      std::int64_t next_yield = spin_start + transport::kSpinYieldNs;
      for (unsigned iter = 1;; ++iter) {
        CpuRelax();
        const bool ask = have_kernel && iter % kernel_every == 0;
        if (ask) {
          k = PollKernel(fds, n, s.refs, s.kfds, &zero, nullptr, false);
          if (k < 0) break;
        }
        fresh = ask || reuse_kernel;
        ready = EvaluateAccelerated(fds, n, s.refs, false) + (fresh ? k : 0);
        if (ready > 0) break;
        if ((iter & 15) == 0) {
          const std::int64_t now = NowNs();
          if (now >= spin_end || signals->load(std::memory_order_relaxed) != epoch) break;
          if (now >= next_yield) {
            sched_yield();
            next_yield = now + transport::kSpinYieldNs;
          }
        }
      }
      if (k < 0) {
        result = k;
        break;
      }
      if (ready > 0) {
        if (have_kernel && !fresh) {  // complete the kernel side of the answer
          k = PollKernel(fds, n, s.refs, s.kfds, &zero, nullptr, false);
          if (k < 0) {
            result = k;
            break;
          }
          ready = EvaluateAccelerated(fds, n, s.refs) + k;
        }
        result = ready;
        break;
      }
    }
    // Sleep in the kernel (see poll.h for what wakes it): arm the rings
    // first, and do not sleep if one turned ready meanwhile.
    // All flags first, then at most one heavy fence (transport/fence.h),
    // then the rechecks (accel.h ArmDoorbellsNoFence).
    bool fence = false;
    for (nfds_t i = 0; i < n; ++i) {
      if (Connection* c = s.refs[i].As<Connection>(); c != nullptr) {
        fence |= ArmDoorbellsNoFence(*c, fds[i].events);
      }
    }
    bool ready_now = fence && !transport::HeavyFence();
    for (nfds_t i = 0; i < n && !ready_now; ++i) {
      if (Connection* c = s.refs[i].As<Connection>(); c != nullptr) {
        ready_now |= ArmedReady(*c, fds[i].events);
      }
    }
    if (ready_now) continue;
    if (signals->load(std::memory_order_relaxed) != epoch) {
      result = -EINTR;  // poll is never restarted (signal(7))
      break;
    }
    std::int64_t now = NowNs();
    std::int64_t slice = deadline < 0 ? -1 : deadline - now;
    if (deadline >= 0 && slice < 0) slice = 0;
    timespec ts{};
    if (slice >= 0) {
      ts.tv_sec = slice / 1000000000;
      ts.tv_nsec = slice % 1000000000;
    }
    int k = PollKernel(fds, n, s.refs, s.kfds, slice >= 0 ? &ts : nullptr, sigmask, true);
    if (k < 0) {
      result = k;
      break;
    }
    ready = EvaluateAccelerated(fds, n, s.refs) + k;
    if (ready > 0) {
      result = ready;
      break;
    }
    if (deadline >= 0 && NowNs() >= deadline) {
      result = 0;
      break;
    }
  }
  s.Release(n);
  return result;
}

int EngineSelect(int nfds, fd_set* r, fd_set* w, fd_set* e, std::int64_t* timeout_ns,
                 const sigset_t* sigmask) {
  if (nfds < 0) return -EINVAL;
  if (nfds > FD_SETSIZE) nfds = FD_SETSIZE;
  pollfd stack[kStackFds];
  pollfd* fds = stack;
  void* mem = nullptr;
  size_t mem_size = 0;
  nfds_t n = 0;
  for (int fd = 0; fd < nfds; ++fd) {
    bool in = (r != nullptr && FD_ISSET(fd, r)) || (w != nullptr && FD_ISSET(fd, w)) ||
              (e != nullptr && FD_ISSET(fd, e));
    if (in) ++n;
  }
  if (n > kStackFds) {
    mem_size = n * sizeof(pollfd);
    mem = mmap(nullptr, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return -ENOMEM;
    fds = static_cast<pollfd*>(mem);
  }
  n = 0;
  for (int fd = 0; fd < nfds; ++fd) {
    short ev = 0;
    if (r != nullptr && FD_ISSET(fd, r)) ev |= POLLIN;
    if (w != nullptr && FD_ISSET(fd, w)) ev |= POLLOUT;
    if (e != nullptr && FD_ISSET(fd, e)) ev |= POLLPRI;
    if (ev != 0) fds[n++] = pollfd{fd, ev, 0};
  }
  std::int64_t start = NowNs();
  std::int64_t t = timeout_ns != nullptr ? *timeout_ns : -1;
  int rc = EnginePoll(fds, n, t, sigmask);
  if (rc >= 0) {
    // select reports an fd in each set it is ready for; a closed fd is EBADF.
    int count = 0;
    for (nfds_t i = 0; i < n; ++i) {
      if (fds[i].revents & POLLNVAL) {
        rc = -EBADF;
        break;
      }
    }
    if (rc >= 0) {
      if (r != nullptr) FD_ZERO(r);
      if (w != nullptr) FD_ZERO(w);
      if (e != nullptr) FD_ZERO(e);
      for (nfds_t i = 0; i < n; ++i) {
        short re = fds[i].revents;
        int fd = fds[i].fd;
        if ((fds[i].events & POLLIN) && (re & (POLLIN | POLLHUP | POLLERR))) {
          FD_SET(fd, r);
          ++count;
        }
        if ((fds[i].events & POLLOUT) && (re & (POLLOUT | POLLERR))) {
          FD_SET(fd, w);
          ++count;
        }
        if ((fds[i].events & POLLPRI) && (re & POLLPRI)) {
          FD_SET(fd, e);
          ++count;
        }
      }
      rc = count;
    }
  }
  if (timeout_ns != nullptr && *timeout_ns > 0) {
    std::int64_t left = *timeout_ns - (NowNs() - start);
    *timeout_ns = left > 0 ? left : 0;
  }
  if (mem != nullptr) munmap(mem, mem_size);
  return rc;
}

}  // namespace doorway::runtime

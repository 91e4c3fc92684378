#include "runtime/epoll.h"

#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <time.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <new>
#include <utility>

#include "fdtable/fdtable.h"
#include "runtime/accel.h"
#include "runtime/real.h"
#include "runtime/signals.h"

namespace doorway::runtime {

namespace {

using fdtable::GlobalTable;
using fdtable::Make;
using fdtable::Ref;

// Kernel registrations of accelerated members carry this in the top 16 bits
// of their data: user-space pointers and small integers never do.
constexpr std::uint64_t kMarker = 0xD00Dull << 48;
constexpr std::uint64_t kMarkerMask = 0xFFFFull << 48;
constexpr std::int64_t kSpinNs = 30'000;  // as runtime/poll.cc

std::int64_t SpinNs() { return GetConfig().spin_ns >= 0 ? GetConfig().spin_ns : kSpinNs; }

std::int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

struct Member {
  int fd;
  std::uint32_t events;  // what the program asked for (EPOLLET, EPOLLONESHOT...)
  epoll_data_t data;
  Ref conn;
  std::uint32_t last;  // events reported and still holding (edge-triggered)
  std::uint32_t rx_gen, tx_gen;
  bool disabled;          // EPOLLONESHOT fired
  bool nested;            // conn is the EpollSet of a nested epoll fd
  bool quiet;             // peer gone: its kernel registration was removed (KernelWait)
  std::uint64_t rx_seen;  // ArrivedBytes when EPOLLIN was last reported (edge-triggered)
};

// Bytes that ever arrived on c's incoming ring (consumed + readable): new
// data is a new edge for EPOLLET, as each arriving segment is for the
// kernel's TCP, whether or not the program read up to EAGAIN.
std::uint64_t ArrivedBytes(Connection& c) {
  const transport::RingStats* st = c.rx.stats();
  // Queued: no end lock is held here (a reading thread owns Readable's cache).
  std::int64_t readable = c.rx.Queued();
  return (st != nullptr ? st->bytes.load(std::memory_order_relaxed) : 0) +
         static_cast<std::uint64_t>(readable > 0 ? readable : 0);
}

class SpinLock {
 public:
  void Lock() {
    while (flag_.exchange(true, std::memory_order_acquire)) sched_yield();
  }
  void Unlock() { flag_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> flag_{false};
};

}  // namespace

// The accelerated members of one epoll set. Memory from mmap: the object may
// die in whichever thread drops the last reference.
struct EpollSet {
  static constexpr std::uint32_t kTypeTag = 0x45504F4C;  // "EPOL"
  EpollSet() = default;
  ~EpollSet() {
    for (int i = 0; i < count; ++i) members[i].~Member();
    if (members != nullptr) munmap(members, static_cast<size_t>(cap) * sizeof(Member));
    if (index != nullptr) munmap(index, static_cast<size_t>(index_cap) * sizeof(int));
  }
  EpollSet(const EpollSet&) = delete;
  EpollSet& operator=(const EpollSet&) = delete;

  // O(1): index[fd] is the member's position in `members`, or -1.
  Member* Find(int fd) {
    if (fd < 0 || fd >= index_cap || index[fd] < 0) return nullptr;
    return &members[index[fd]];
  }
  bool Add(Member m) {
    if (m.fd < 0) return false;
    if (m.fd >= index_cap) {
      int ncap = index_cap == 0 ? 1024 : index_cap;
      while (ncap <= m.fd) ncap *= 2;
      void* mem = mmap(nullptr, static_cast<size_t>(ncap) * sizeof(int), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (mem == MAP_FAILED) return false;
      int* fresh = static_cast<int*>(mem);
      for (int i = 0; i < ncap; ++i) fresh[i] = i < index_cap ? index[i] : -1;
      if (index != nullptr) munmap(index, static_cast<size_t>(index_cap) * sizeof(int));
      index = fresh;
      index_cap = ncap;
    }
    if (count == cap) {
      int ncap = cap == 0 ? 64 : cap * 2;
      void* mem = mmap(nullptr, static_cast<size_t>(ncap) * sizeof(Member), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (mem == MAP_FAILED) return false;
      Member* fresh = static_cast<Member*>(mem);
      for (int i = 0; i < count; ++i) {
        new (&fresh[i]) Member(std::move(members[i]));
        members[i].~Member();
      }
      if (members != nullptr) munmap(members, static_cast<size_t>(cap) * sizeof(Member));
      members = fresh;
      cap = ncap;
    }
    index[m.fd] = count;
    new (&members[count++]) Member(std::move(m));
    return true;
  }
  void Remove(Member* m) {
    if (m->nested) --nested;
    if (m->quiet) quiet.fetch_sub(1, std::memory_order_relaxed);
    index[m->fd] = -1;
    Member* lastm = &members[count - 1];
    if (m != lastm) {
      *m = std::move(*lastm);
      index[m->fd] = static_cast<int>(m - members);
    }
    lastm->~Member();
    --count;
  }

  SpinLock lock;
  int epfd = -1;
  int nested = 0;  // members that are epoll sets
  // Members with Member::quiet set. Written under the lock; read without it
  // by EpollCtl to skip looking for one (the common case: none).
  std::atomic<int> quiet{0};
  Member* members = nullptr;
  int count = 0;
  int cap = 0;
  int* index = nullptr;  // by fd number (mmap'd, grown by doubling)
  int index_cap = 0;
};

namespace {

// What accelerated member m of connection c would be told now: `now`, its
// level events, and `report`, less what an edge-triggered member was told
// already, with the state Commit records once it is told.
struct Reading {
  std::uint32_t now, report, rx_gen, tx_gen;
  std::uint64_t arrived;
};

Reading Read(const Member& m, Connection& c) {
  std::uint32_t interest =
      m.events & (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLRDNORM | EPOLLWRNORM | EPOLLPRI);
  Reading r{};
  r.now = static_cast<std::uint32_t>(ConnPollEvents(c)) & (interest | EPOLLERR | EPOLLHUP);
  r.report = r.now;
  if ((m.events & EPOLLET) == 0) return r;
  r.rx_gen = c.rx_eagain_gen.load(std::memory_order_relaxed);
  r.tx_gen = c.tx_eagain_gen.load(std::memory_order_relaxed);
  r.arrived = (r.now & EPOLLIN) ? ArrivedBytes(c) : m.rx_seen;
  r.report = r.now & ~m.last;
  // After the program saw EAGAIN, readiness is a new edge; so is data that
  // arrived since the last report.
  if ((r.now & EPOLLIN) && (r.rx_gen != m.rx_gen || r.arrived != m.rx_seen)) {
    r.report |= r.now & (EPOLLIN | EPOLLRDNORM);
  }
  if ((r.now & EPOLLOUT) && r.tx_gen != m.tx_gen) r.report |= r.now & (EPOLLOUT | EPOLLWRNORM);
  return r;
}

// Records, for an edge-triggered member, what Read found (and reported).
void Commit(Member& m, const Reading& r) {
  if ((m.events & EPOLLET) == 0) return;
  m.last = r.now;
  if (r.report != 0) {
    m.rx_gen = r.rx_gen;
    m.tx_gen = r.tx_gen;
    m.rx_seen = r.arrived;
  }
}

// Whether nested set s has something to report (its accelerated members,
// peeked without consuming their edge or one-shot state, and, if
// check_kernel, its kernel members through its epoll fd).
bool NestedReady(EpollSet& s, bool check_kernel, int depth) {
  if (depth > 5) return false;  // the kernel nests at most 5 levels deep (ELOOP)
  bool ready = false;
  s.lock.Lock();
  for (int i = 0; i < s.count && !ready; ++i) {
    Member& m = s.members[i];
    if (m.disabled) continue;
    if (m.nested) {
      if (EpollSet* inner = m.conn.As<EpollSet>())
        ready = NestedReady(*inner, check_kernel, depth + 1);
      continue;
    }
    if (Connection* c = m.conn.As<Connection>()) ready = Read(m, *c).report != 0;
  }
  int epfd = s.epfd;
  s.lock.Unlock();
  if (!ready && check_kernel && epfd >= 0) {
    pollfd p{epfd, POLLIN, 0};
    ready = DOORWAY_REAL(poll)(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0;
  }
  return ready;
}

// Arms every accelerated member of s (and of the sets nested in it) for
// `events`; true if one is ready already.
bool ArmSet(EpollSet& s, int depth) {
  if (depth > 5) return false;
  bool ready_now = false;
  s.lock.Lock();
  for (int i = 0; i < s.count; ++i) {
    Member& m = s.members[i];
    if (m.disabled) continue;
    if (m.nested) {
      if (EpollSet* inner = m.conn.As<EpollSet>()) ready_now |= ArmSet(*inner, depth + 1);
    } else if (Connection* c = m.conn.As<Connection>()) {
      bool ready = ArmDoorbells(*c, static_cast<short>(m.events & (EPOLLIN | EPOLLOUT)));
      // Ready, but already reported to an edge-triggered member (e.g. EOF):
      // not a reason to stay awake; only a new edge is.
      ready_now |= ready && Read(m, *c).report != 0;
    }
  }
  s.lock.Unlock();
  return ready_now;
}

// The program's events for the members of s now, applying EPOLLET and
// EPOLLONESHOT. Drops members whose fd no longer refers to their object.
int Collect(EpollSet& s, epoll_event* out, int max, bool check_kernel = true) {
  int n = 0;
  for (int i = 0; i < s.count && n < max;) {
    Member& m = s.members[i];
    // Closed (or replaced) since it was added: the kernel dropped its
    // registration when the file closed; drop ours.
    if (GlobalTable().Tag(m.fd) != (m.nested ? kTagEpoll : kTagConnection) &&
        !(m.nested && GlobalTable().Tag(m.fd) == kTagEpollPlain)) {
      s.Remove(&m);
      continue;
    }
    if (GlobalTable().Get(m.fd).node() != m.conn.node()) {
      s.Remove(&m);
      continue;
    }
    ++i;
    if (m.disabled) continue;
    std::uint32_t report = 0;
    if (m.nested) {
      std::uint32_t now = 0;
      EpollSet* inner = m.conn.As<EpollSet>();
      if (inner != nullptr && NestedReady(*inner, check_kernel, 1)) now = EPOLLIN & m.events;
      // Kernel readiness is only looked at now and then: keep the last edge.
      if (!check_kernel && (m.events & EPOLLET)) now |= m.last & EPOLLIN;
      report = now;
      if (m.events & EPOLLET) {
        report = now & ~m.last;
        m.last = now;
      }
    } else {
      Reading r = Read(m, *m.conn.As<Connection>());
      Commit(m, r);
      report = r.report;
    }
    if (report == 0) continue;
    out[n].events = report;
    out[n].data = m.data;
    ++n;
    if (m.events & EPOLLONESHOT) {
      m.disabled = true;
      // Until the program re-arms it with EPOLL_CTL_MOD, the kernel need
      // not wake us for it either.
      epoll_event quiet{};
      quiet.data.u64 = kMarker | static_cast<std::uint32_t>(m.fd);
      (void)DOORWAY_REAL(epoll_ctl)(s.epfd, EPOLL_CTL_MOD, m.fd, &quiet);
    }
  }
  return n;
}

// Kernel events for the set, without blocking unless timeout_ms != 0;
// removes the accelerated members' wake-up hints (settling stray doorbells).
int KernelWait(EpollSet& s, int epfd, epoll_event* out, int max, int timeout_ms,
               const sigset_t* sigmask) {
  if (max <= 0) return 0;
  int k = DOORWAY_REAL(epoll_pwait)(epfd, out, max, timeout_ms, sigmask);
  if (k < 0) return -errno;
  int kept = 0;
  for (int i = 0; i < k; ++i) {
    if ((out[i].data.u64 & kMarkerMask) == kMarker) {
      int fd = static_cast<int>(out[i].data.u64 & 0xffffffffu);
      Ref r = GlobalTable().Get(fd);
      if (Connection* c = r.As<Connection>(); c != nullptr) {
        if (out[i].events & (EPOLLHUP | EPOLLERR)) {
          NotePeerHangup(*c);
          // The hang-up stays reported by the kernel (EPOLLHUP cannot be
          // masked, and a MOD re-arms it); from now on the rings say it
          // (EOF, EPIPE). So the kernel registration goes: otherwise a
          // member the program watches edge-triggered, whose hang-up it was
          // told of already, would wake every kernel wait at once, forever.
          s.lock.Lock();
          if (Member* m = s.Find(fd); m != nullptr && !m->quiet && m->conn.node() == r.node()) {
            (void)DOORWAY_REAL(epoll_ctl)(epfd, EPOLL_CTL_DEL, fd, nullptr);
            m->quiet = true;
            s.quiet.fetch_add(1, std::memory_order_relaxed);
          }
          s.lock.Unlock();
        }
        if (out[i].events & EPOLLIN) DrainDoorbells(fd);
      }
      continue;
    }
    out[kept++] = out[i];
  }
  return kept;
}

}  // namespace

void NoteEpollCreated(int epfd) {
  Ref fresh = Make<EpollSet>();
  if (!fresh) return;  // nesting this set will not be seen: the kernel still works
  fresh.As<EpollSet>()->epfd = epfd;
  GlobalTable().Install(epfd, std::move(fresh), nullptr, kTagEpollPlain).Reset();
}

namespace {

// The EpollSet at epfd (made if needed), tagged kTagEpoll: it has a member
// that the kernel cannot answer for.
Ref ManagedSet(int epfd) {
  Ref sr = GlobalTable().Get(epfd);
  if (sr.As<EpollSet>() == nullptr) {
    sr = Make<EpollSet>();
    if (!sr) return sr;
  }
  if (GlobalTable().Tag(epfd) != kTagEpoll) {
    // The same object again under the new tag: a set this one is nested in
    // refers to it.
    GlobalTable().Install(epfd, sr.Clone(), nullptr, kTagEpoll).Reset();
  }
  return sr;
}

}  // namespace

int EpollCtl(int epfd, int op, int fd, epoll_event* event) {
  const std::uint32_t tag = GlobalTable().Tag(fd);
  const bool nested = tag == kTagEpoll || tag == kTagEpollPlain;
  if (tag != kTagConnection && !nested) {
    if (op == EPOLL_CTL_DEL && GlobalTable().Tag(epfd) == kTagEpoll) {
      // A member whose fd was replaced: forget it too.
      Ref sr = GlobalTable().Get(epfd);
      if (EpollSet* s = sr.As<EpollSet>(); s != nullptr) {
        s->lock.Lock();
        if (Member* m = s->Find(fd)) s->Remove(m);
        s->lock.Unlock();
      }
    }
    return DOORWAY_REAL(epoll_ctl)(epfd, op, fd, event) == 0 ? 0 : -errno;
  }
  Ref target = GlobalTable().Get(fd);
  if ((nested ? target.As<EpollSet>() == nullptr : target.As<Connection>() == nullptr)) {
    return DOORWAY_REAL(epoll_ctl)(epfd, op, fd, event) == 0 ? 0 : -errno;
  }
  // The kernel checks the operation (EEXIST, ENOENT, EINVAL, ELOOP, EBADF):
  // register the wake-up part with it first.
  if (op != EPOLL_CTL_DEL && event == nullptr) return -EFAULT;
  // The kernel watches the Unix socket (the nested epoll fd) for doorbells
  // and the peer's hang-up only; the program's events are computed here.
  epoll_event kev{};
  kev.events = nested ? EPOLLIN : EPOLLIN | EPOLLRDHUP;
  kev.data.u64 = kMarker | static_cast<std::uint32_t>(fd);
  if (op != EPOLL_CTL_DEL && (event->events & EPOLLEXCLUSIVE) != 0) {
    // The kernel's rules for EPOLLEXCLUSIVE (only with these events; never
    // with EPOLL_CTL_MOD, nor on a registration made with it, nor on an
    // epoll fd): check the program's events here, and register the wake-up
    // with the flag too (without EPOLLRDHUP, which it refuses; a peer's
    // close still shows as EPOLLHUP), so that the kernel applies the rest.
    constexpr std::uint32_t kExclusiveOk = EPOLLIN | EPOLLOUT | EPOLLRDNORM | EPOLLRDBAND |
                                           EPOLLWRNORM | EPOLLWRBAND | EPOLLERR | EPOLLHUP |
                                           EPOLLWAKEUP | EPOLLET | EPOLLEXCLUSIVE;
    if (op == EPOLL_CTL_ADD && (event->events & ~kExclusiveOk) != 0) return -EINVAL;
    kev.events = EPOLLIN | EPOLLEXCLUSIVE;
  }
  // A member quieted after its peer's hang-up has no kernel registration
  // any more: answer for the kernel (EEXIST), or register it again (MOD).
  bool quiet = false;
  if (GlobalTable().Tag(epfd) == kTagEpoll) {
    Ref qr = GlobalTable().Get(epfd);
    EpollSet* qs = qr.As<EpollSet>();
    if (qs != nullptr && qs->quiet.load(std::memory_order_relaxed) > 0) {
      qs->lock.Lock();
      Member* qm = qs->Find(fd);
      quiet = qm != nullptr && qm->quiet && qm->conn.node() == target.node();
      qs->lock.Unlock();
    }
  }
  if (quiet && op == EPOLL_CTL_ADD) return -EEXIST;
  if (!(quiet && op == EPOLL_CTL_DEL)) {
    int kop = quiet ? EPOLL_CTL_ADD : op;
    if (DOORWAY_REAL(epoll_ctl)(epfd, kop, fd, op == EPOLL_CTL_DEL ? nullptr : &kev) != 0) {
      return -errno;
    }
  }
  Ref sr = ManagedSet(epfd);
  EpollSet* s = sr.As<EpollSet>();
  if (s == nullptr) return -ENOMEM;
  s->lock.Lock();
  s->epfd = epfd;
  Member* m = s->Find(fd);
  int rc = 0;
  if (op == EPOLL_CTL_DEL) {
    if (m != nullptr) s->Remove(m);
  } else {
    Member fresh{fd,     event->events, event->data,      Ref(), 0, 0, 0, false,
                 nested, false,         ~std::uint64_t{0}};
    if (Connection* c = target.As<Connection>()) {
      fresh.rx_gen = c->rx_eagain_gen.load(std::memory_order_relaxed) - 1;  // first wait: an edge
      fresh.tx_gen = c->tx_eagain_gen.load(std::memory_order_relaxed) - 1;
    }
    fresh.conn = std::move(target);
    if (m != nullptr) {
      if (m->nested) --s->nested;
      if (m->quiet) s->quiet.fetch_sub(1, std::memory_order_relaxed);
      *m = std::move(fresh);
      if (nested) ++s->nested;
    } else if (!s->Add(std::move(fresh))) {
      rc = -ENOMEM;
    } else if (nested) {
      ++s->nested;
    }
  }
  s->lock.Unlock();
  return rc;
}

int EpollWait(int epfd, epoll_event* events, int maxevents, std::int64_t timeout_ns,
              const sigset_t* sigmask) {
  if (maxevents <= 0) return -EINVAL;
  Ref sr = GlobalTable().Get(epfd);
  EpollSet* s = sr.As<EpollSet>();
  auto ms_of = [](std::int64_t ns) {
    return ns < 0 ? -1 : static_cast<int>((ns + 999999) / 1000000);
  };
  if (s == nullptr || s->count == 0) {
    int k = DOORWAY_REAL(epoll_pwait)(epfd, events, maxevents, ms_of(timeout_ns), sigmask);
    return k < 0 ? -errno : k;
  }
  const std::int64_t deadline = timeout_ns < 0 ? -1 : NowNs() + timeout_ns;
  bool spun = false;
  // A handler that runs while we spin must end the call with EINTR, as it
  // would end the kernel's epoll_wait (signals.h).
  const std::atomic<std::uint64_t>* signals = SignalEpochOfThisThread();
  const std::uint64_t epoch = signals->load(std::memory_order_relaxed);
  for (;;) {
    s->lock.Lock();
    int n = Collect(*s, events, maxevents);
    s->lock.Unlock();
    int k = KernelWait(*s, epfd, events + n, maxevents - n, 0, nullptr);
    if (k < 0) return k;
    if (n + k > 0 || timeout_ns == 0) return n + k;
    if (!spun) {
      spun = true;
      std::int64_t spin_end = NowNs() + SpinNs();
      if (deadline >= 0 && spin_end > deadline) spin_end = deadline;
      for (unsigned iter = 1; NowNs() < spin_end; ++iter) {
        s->lock.Lock();
        n = Collect(*s, events, maxevents, (iter & 63) == 0);
        s->lock.Unlock();
        if (n > 0) {
          k = KernelWait(*s, epfd, events + n, maxevents - n, 0, nullptr);
          return k < 0 ? n : n + k;
        }
        if ((iter & 63) == 0) {
          k = KernelWait(*s, epfd, events, maxevents, 0, nullptr);
          if (k != 0) return k;
          if (signals->load(std::memory_order_relaxed) != epoch) return -EINTR;
        }
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      }
      continue;
    }
    std::int64_t left = deadline < 0 ? -1 : deadline - NowNs();
    if (deadline >= 0 && left <= 0) return 0;
    // Arm every member so that its peer rings when it turns ready; do not
    // sleep if one is ready already.
    if (ArmSet(*s, 0)) continue;
    if (signals->load(std::memory_order_relaxed) != epoch) return -EINTR;
    k = KernelWait(*s, epfd, events, maxevents, ms_of(left), sigmask);
    if (k < 0) return k;  // EINTR: epoll_wait is never restarted
    if (k > 0) {
      // Kernel fds are ready; add any accelerated members that are too.
      s->lock.Lock();
      n = Collect(*s, events + k, maxevents - k);
      s->lock.Unlock();
      return k + n;
    }
  }
}

}  // namespace doorway::runtime

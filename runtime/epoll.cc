#include "runtime/epoll.h"

#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <new>
#include <utility>

#include "fdtable/fdtable.h"
#include "runtime/accel.h"
#include "runtime/real.h"
#include "runtime/signals.h"
#include "transport/fence.h"
#include "transport/wait.h"

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
// A set's spin budget adapts as a blocking call's does (transport/wait.h
// SpinPolicy): it doubles, up to this, when a sleep ended soon after the
// spin gave up, and halves when it did not. redis-benchmark's 50
// connections answer ~40-60 µs apart: with a fixed 30 µs the server slept
// and was rung between most requests (perf stat, -n 200000 GET+SET:
// ~350k doorbells at 30 µs, 210-260k at 60 µs).
constexpr std::int64_t kSpinMaxNs = 100'000;
// The longest spin of a wait while a reply is due: a member that wants
// EPOLLIN was written to since its incoming data was last seen, so its peer
// owes the next message (a request/response conversation in progress). A
// pipelining client (redis-benchmark -P 16, 50 connections) waits for a
// CPU-bound server that answers its connections in bursts several hundred
// µs apart; with the 100 µs cap it slept between bursts, and every member
// it armed for that sleep cost the server a doorbell (a sendto on the Unix
// socket, ~18% of the server's time): docs/event-loops.md "-P 16". The
// budget adapts as the other one (SpinPolicy: >= 2x the spin that caught
// the reply, doubled when a sleep ended within this cap, halved when not,
// also when a wait times out), so a peer slower than this stops costing
// spins after a few waits; and no spin at all when a member's peer waits
// on this CPU (SpinHint).
constexpr std::int64_t kSpinDueMaxNs = 1'000'000;
// A member on the check list that a wait finds not ready stays there (is
// evaluated at each wait, never armed) until this many waits in a row
// found it so; then it is armed and leaves the list. Ski rental: a wasted
// evaluation costs ~0.1 µs, a doorbell the peer's sendto plus our
// recvfrom (a few µs), so a busy connection (request/response, a peer
// that answers within a few dozen of our waits) is served without
// doorbells, and an idle one costs at most about one doorbell's worth of
// evaluations before it is armed. A set that goes to sleep arms all of
// them whatever their count. (A time window instead, tried first, armed
// the connections of redis-benchmark's 50 clients between two requests
// and doubled the doorbells.)
constexpr std::uint32_t kIdleWaits = 64;

std::int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

// ---- the process-wide change log (epoll.h NoteEpollChange) ----
//
// A ring of fd numbers; slot i holds ((i + 1) << 32) | fd once written, so
// a reader can tell a slot not written yet or overwritten since (then it
// looks at all its members: always safe). Writers: one fetch_add and one
// store, no lock (close may run in a signal handler). Each set reads the
// entries since its last position under its own lock.
constexpr std::uint64_t kLogSize = 4096;
struct ChangeLog {
  std::atomic<std::uint64_t> head{0};
  std::atomic<std::uint64_t> slot[kLogSize];
};
constinit ChangeLog g_log;

struct Member {
  int fd = -1;
  std::uint32_t events = 0;  // what the program asked for (EPOLLET, EPOLLONESHOT...)
  epoll_data_t data{};
  Ref conn;
  std::uint32_t last = 0;  // events reported and still holding (edge-triggered)
  std::uint32_t rx_gen = 0, tx_gen = 0;
  bool disabled = false;   // EPOLLONESHOT fired
  bool nested = false;     // conn is the EpollSet of a nested epoll fd
  bool quiet = false;      // peer gone: its kernel registration was removed (KernelWait)
  bool in_check = false;   // on EpollSet::check
  bool in_always = false;  // on EpollSet::always
  bool parked = false;     // deleted by the program, kernel registration kept ("Parking")
  std::uint64_t rx_seen = ~std::uint64_t{0};  // ArrivedBytes when EPOLLIN was last reported (ET)
  std::uint32_t idle_waits = 0;               // waits in a row that found it not ready (check list)
  // Writes to the connection (its tx ring's ops) when incoming data was last
  // seen: a reply is due while they differ (kSpinDueMaxNs).
  std::uint64_t tx_mark = 0;
};

// m's fd no longer refers to its object (closed, replaced).
// One load of the fd's slot: evaluated for every check-list member at
// every wait.
bool Stale(const Member& m) {
  const fdtable::Node* node = m.conn.node();
  if (m.nested) {
    return !GlobalTable().Holds(m.fd, node, kTagEpoll) &&
           !GlobalTable().Holds(m.fd, node, kTagEpollPlain);
  }
  return !GlobalTable().Holds(m.fd, node, kTagConnection);
}

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

// A growable array of ints in mmap'd memory (the set may die in whichever
// thread drops its last reference, so no malloc).
class IntArray {
 public:
  IntArray() = default;
  ~IntArray() {
    if (v_ != nullptr) munmap(v_, static_cast<size_t>(cap_) * sizeof(int));
  }
  IntArray(const IntArray&) = delete;
  IntArray& operator=(const IntArray&) = delete;
  int* data() { return v_; }
  int& operator[](int i) { return v_[i]; }
  int cap() const { return cap_; }
  // Grows to at least n elements, new ones set to `fill`.
  bool Reserve(int n, int fill = 0) {
    if (n <= cap_) return true;
    int ncap = cap_ == 0 ? 64 : cap_;
    while (ncap < n) ncap *= 2;
    void* mem = mmap(nullptr, static_cast<size_t>(ncap) * sizeof(int), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return false;
    int* fresh = static_cast<int*>(mem);
    if (cap_ > 0) std::memcpy(fresh, v_, static_cast<size_t>(cap_) * sizeof(int));
    for (int i = cap_; i < ncap; ++i) fresh[i] = fill;
    if (v_ != nullptr) munmap(v_, static_cast<size_t>(cap_) * sizeof(int));
    v_ = fresh;
    cap_ = ncap;
    return true;
  }

 private:
  int* v_ = nullptr;
  int cap_ = 0;
};

// A list of fd numbers (the check and always lists), each fd at most once
// (the member's in_check / in_always flag says whether it is there).
struct FdList {
  IntArray v;
  int n = 0;
  void Push(int fd) { v[n++] = fd; }  // capacity reserved by EpollSet::Add
  void Erase(int fd) {
    for (int i = 0; i < n; ++i) {
      if (v[i] == fd) {
        std::memmove(&v[i], &v[i + 1], static_cast<size_t>(n - i - 1) * sizeof(int));
        --n;
        return;
      }
    }
  }
};

}  // namespace

// The accelerated and nested members of one epoll set (see epoll.h). Lives
// in the fd table at the epoll fd; every field is under `lock` except
// `quiet` (read without it).
struct EpollSet {
  static constexpr std::uint32_t kTypeTag = 0x45504F4C;  // "EPOL"
  EpollSet() : log_pos(g_log.head.load(std::memory_order_acquire)) {}
  ~EpollSet() {
    for (int i = 0; i < count; ++i) {
      if (members[i].parked) (void)ClaimPark(members[i]);
      DropRegistration(members[i]);
      members[i].~Member();
    }
    if (members != nullptr) munmap(members, static_cast<size_t>(cap) * sizeof(Member));
  }
  EpollSet(const EpollSet&) = delete;
  EpollSet& operator=(const EpollSet&) = delete;

  // O(1): index[fd] is the member's position in `members`, or -1.
  Member* Find(int fd) {
    if (fd < 0 || fd >= index.cap() || index[fd] < 0) return nullptr;
    return &members[index[fd]];
  }
  bool Add(Member m) {
    if (m.fd < 0) return false;
    if (!index.Reserve(m.fd + 1, -1)) return false;
    // Room for every member on each list, so that pushing never fails.
    if (!check.v.Reserve(count + 1) || !always.v.Reserve(count + 1) ||
        !revoke.v.Reserve(count + 1)) {
      return false;
    }
    if (count == cap && !GrowMembers()) return false;
    if (m.nested) {
      ++nested;
      if (EpollSet* inner = m.conn.As<EpollSet>()) inner->nested_in.fetch_add(1);
    }
    if (Connection* c = m.conn.As<Connection>())
      c->epoll_regs.fetch_add(1, std::memory_order_relaxed);
    index[m.fd] = count;
    new (&members[count++]) Member(std::move(m));
    return true;
  }
  // Drops m from the registry. A parked member's kernel registration is
  // left alone (the callers delete it first when it is still theirs and
  // the fd still refers to the connection).
  void Remove(Member* m) {
    if (m->parked) (void)ClaimPark(*m);
    if (m->in_check) check.Erase(m->fd);
    if (m->in_always) always.Erase(m->fd);
    DropRegistration(*m);
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
  // After a sleep: takes back the arming of the members ArmSet armed
  // revocably for it ("Taking the arming back"), unless another thread
  // waits in the set too. The members go back on the check list.
  void Revoke() {
    if (waiters.load(std::memory_order_relaxed) == 1 &&
        nested_in.load(std::memory_order_relaxed) == 0) {
      for (int i = 0; i < revoke.n; ++i) {
        Member* m = Find(revoke.v[i]);
        if (m == nullptr || m->in_check || m->in_always || m->parked || m->disabled) continue;
        Connection* c = m->conn.As<Connection>();
        if (c == nullptr) continue;
        (void)c->rx.DisarmReadDoorbell();
        MarkCheck(*m);
      }
    }
    revoke.n = 0;
  }
  // m must be evaluated at the next waits (until armed and not ready).
  void MarkCheck(Member& m) {
    if (m.in_check || m.in_always) return;
    m.in_check = true;
    check.Push(m.fd);
  }
  // Members that are evaluated (and armed) at every wait: nested sets, and
  // connections shared with another process (its waits may take their
  // doorbells).
  void MarkAlways(Member& m) {
    if (m.in_always) return;
    if (m.in_check) {
      check.Erase(m.fd);
      m.in_check = false;
    }
    m.in_always = true;
    always.Push(m.fd);
  }
  void Classify(Member& m) {
    if (m.parked) return;  // not the program's member: never evaluated nor armed
    Connection* c = m.conn.As<Connection>();
    if (m.nested || (c != nullptr && c->shared.load(std::memory_order_relaxed))) {
      MarkAlways(m);
    } else {
      MarkCheck(m);
    }
  }
  // Every member to its list: after the change log overflowed or asked so.
  // Parked members whose fd was closed go (backwards: Remove moves the
  // last member into the hole).
  void Rescan() {
    for (int i = count - 1; i >= 0; --i) Look(members[i]);
  }
  void Look(Member& m) {
    if (!m.parked) {
      Classify(m);
    } else if (Stale(m)) {
      Remove(&m);
    }
  }
  // The parked-registration record of m's connection (accel.h
  // Connection::epoll_parked) for this set.
  std::uint64_t ParkRecord(const Member& m) const {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(epfd) + 1) << 32) |
           static_cast<std::uint32_t>(m.fd);
  }
  // Takes back parked m's kernel registration: true if it is still there
  // (nobody deleted it: the caller now owns it), false if a close of the
  // connection's fd deleted it (EpollDropParked). Clears m.parked.
  bool ClaimPark(Member& m) {
    m.parked = false;
    Connection* c = m.conn.As<Connection>();
    std::uint64_t mine = ParkRecord(m);
    return c != nullptr &&
           c->epoll_parked.compare_exchange_strong(mine, 0, std::memory_order_acq_rel);
  }
  // The change log's entries since the last call.
  void ConsumeLog() {
    std::uint64_t head = g_log.head.load(std::memory_order_acquire);  // pairs with the fetch_add
    if (head == log_pos) return;
    if (head - log_pos > kLogSize) {
      Rescan();
    } else {
      for (std::uint64_t i = log_pos; i != head; ++i) {
        // Acquire pairs with NoteEpollChange's release store: the change
        // (shut_rd...) is visible to the evaluation that follows.
        std::uint64_t e = g_log.slot[i % kLogSize].load(std::memory_order_acquire);
        int fd = static_cast<int>(static_cast<std::uint32_t>(e));
        if ((e >> 32) != ((i + 1) & 0xffffffffu) || fd < 0) {
          Rescan();
          break;
        }
        if (Member* m = Find(fd)) Look(*m);
      }
    }
    log_pos = head;
  }

  SpinLock lock;
  // How long a wait on this set spins before it sleeps (unless
  // DOORWAY_SPIN_NS fixes it); relaxed atomics inside.
  transport::SpinPolicy spin{kSpinNs, kSpinMaxNs, 0};
  // The same while a reply is due (kSpinDueMaxNs).
  transport::SpinPolicy spin_due{kSpinNs, kSpinDueMaxNs, 0};
  int epfd = -1;
  int nested = 0;  // members that are epoll sets
  // Members with Member::quiet set. Written under the lock; read without it
  // by EpollCtl to skip looking for one (the common case: none).
  std::atomic<int> quiet{0};
  Member* members = nullptr;  // dense, [0, count); mmap'd
  int count = 0;
  int cap = 0;
  IntArray index;  // by fd number
  FdList check, always;
  // The members the last sleep armed revocably (ArmSet at depth 0).
  FdList revoke;
  // Threads in EpollWait on this set (Revoke only when alone). Changed
  // outside the lock, read under it: a thread's increment precedes its
  // ArmSet, which takes the lock.
  std::atomic<int> waiters{0};
  // Sets of this process this one is nested in. An outer set's sleep
  // relies on the arming of this set's members that are off its check
  // list, so Revoke does nothing while it is nested (the increment precedes
  // the outer set's ArmSet of this one, which takes this set's lock).
  std::atomic<int> nested_in{0};
  std::uint64_t log_pos;  // next change-log entry to read

 private:
  static void DropRegistration(Member& m) {
    if (Connection* c = m.conn.As<Connection>())
      c->epoll_regs.fetch_sub(1, std::memory_order_relaxed);
    if (m.nested) {
      if (EpollSet* inner = m.conn.As<EpollSet>())
        inner->nested_in.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  bool GrowMembers() {
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
    return true;
  }
};

void NoteEpollChange(int fd) {
  // acq_rel: a reader that sees the new head sees the change made before
  // (release); the slot store below publishes the entry itself.
  std::uint64_t i = g_log.head.fetch_add(1, std::memory_order_acq_rel);
  g_log.slot[i % kLogSize].store(((i + 1) << 32) | static_cast<std::uint32_t>(fd),
                                 std::memory_order_release);
}

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
  static_assert(EPOLLOUT == POLLOUT && EPOLLWRNORM == POLLWRNORM);
  r.now = static_cast<std::uint32_t>(ConnPollEvents(c, -1, static_cast<short>(interest))) &
          (interest | EPOLLERR | EPOLLHUP);
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

// Sets the doorbell flags that cover what m waits for, given what Read
// found (r): "data" for EPOLLIN and EPOLLRDHUP (and when it asked for
// neither direction, so that EOF and reset, EPOLLHUP/EPOLLERR, still
// ring); "room" for EPOLLOUT only while the member is not writable. A
// writable member needs no room doorbell: level-triggered, it is reported
// (and stays on the check list) for as long as it is writable; edge-
// triggered, its next edge comes only after a write said EAGAIN, and that
// write arms the room doorbell itself (accel.cc ManagedSend). Otherwise
// every read by the peer of a busy connection would ring for nothing (the
// peer reads what we wrote: nginx's responses).
//
// Ordering (no lost wake-up): the member's doorbell bytes were drained
// (KernelWait) before this; ArmDoorbells stores the flag (seq_cst, W1 in
// transport/ring.cc) and then re-reads the ring (D2); the caller then
// evaluates the member once more (Read, after W1) before it may leave the
// check list. The peer publishes (seq_cst store) and then loads the flag
// (D1). In the single total order either our re-read follows its publish
// (we see the data and stay on the list) or its D1 follows our W1 (it
// clears the flag and sends a byte, which stays on the socket until our
// next KernelWait drains it, and the level-triggered kernel registration
// wakes the set meanwhile).
//
// revocable: the "data" flag is armed with Ring::kArmRevocable, which the
// set takes back when it wakes ("Taking the arming back" below).
//
// On a ring whose waiters fence (transport/fence.h) the peer publishes
// without a full fence; then the re-read must follow a heavy fence. Arm
// only stores the flags and returns whether that fence is needed: ArmSet
// arms all members, fences once, then re-reads them all; Evaluate fences
// for its one member. A failed fence proves nothing: the member counts as
// ready (stays on the check list).
bool Arm(const Member& m, Connection& c, const Reading& r, bool revocable = false) {
  short ev = 0;
  if (m.events & (EPOLLIN | EPOLLRDNORM | EPOLLRDHUP)) ev |= POLLIN;
  if ((m.events & (EPOLLOUT | EPOLLWRNORM)) && (r.now & (EPOLLOUT | EPOLLWRNORM)) == 0) {
    ev |= POLLOUT;
  }
  if ((m.events & (EPOLLIN | EPOLLRDNORM | EPOLLRDHUP | EPOLLOUT | EPOLLWRNORM)) == 0) ev = POLLIN;
  bool fence = false;
  if (revocable && (ev & POLLIN)) {
    NoteArmed(c);
    fence |= c.rx.ArmReadDoorbellNoFence(transport::Ring::kArmRevocable);
    ev &= ~POLLIN;
  }
  if (ev != 0) fence |= ArmDoorbellsNoFence(c, ev);
  return fence;
}

// Taking the arming back. A set that goes to sleep arms every member of its
// check list (the members ready in recent waits), and each of their peers
// then pays a doorbell (a sendto on the Unix socket) on its next publish,
// even when the set is awake again long before: a pipelining client that
// sleeps while its server writes replies to all its connections in one
// burst cost the server one doorbell per connection per sleep (~29 per
// sleep, ~15% of the server's time: docs/event-loops.md "-P 16"). So a set
// that wakes takes back the arming of the members it armed for that sleep
// and puts them back on its check list (evaluated from the rings again, so
// nothing is lost: a member off the list still always has a doorbell
// coming), when the wake brought events to return (a wait that timed out
// leaves its arming for the kernel's set, see EpollWait). Only its own arming: the members armed
// with kArmRevocable, which the set does only for a connection this set alone holds in this process
// and no other process shares (epoll_regs == 1, not shared: any other set or poll arms with the
// sticky bit, which a revocation leaves set), at the top level of a wait (an outer set arming a
// nested set's members arms them sticky), and only when no other thread waits in the set (it may
// sleep on that arming) and the set is not nested in another (whose sleep may rely on it).
bool Revocable(const Connection& c) {
  return c.epoll_regs.load(std::memory_order_relaxed) == 1 &&
         !c.shared.load(std::memory_order_relaxed);
}

bool NestedReady(EpollSet& s, bool check_kernel, int depth);

// Whether member m has something to report (peeked).
bool PeekMember(Member& m, bool check_kernel, int depth) {
  if (m.disabled) return false;
  if (m.nested) {
    EpollSet* inner = m.conn.As<EpollSet>();
    return inner != nullptr && NestedReady(*inner, check_kernel, depth + 1);
  }
  Connection* c = m.conn.As<Connection>();
  return c != nullptr && Read(m, *c).report != 0;
}

// Whether nested set s has something to report: its check-list and
// always-list members, peeked without consuming their edge or one-shot
// state (the others are armed: a doorbell of theirs makes s's epoll fd
// readable), and, if check_kernel, whatever makes its epoll fd readable.
bool NestedReady(EpollSet& s, bool check_kernel, int depth) {
  if (depth > 5) return false;  // the kernel nests at most 5 levels deep (ELOOP)
  bool ready = false;
  s.lock.Lock();
  s.ConsumeLog();
  for (int i = 0; i < s.always.n && !ready; ++i) {
    if (Member* m = s.Find(s.always.v[i])) ready = PeekMember(*m, check_kernel, depth);
  }
  for (int i = 0; i < s.check.n && !ready; ++i) {
    if (Member* m = s.Find(s.check.v[i])) ready = PeekMember(*m, check_kernel, depth);
  }
  int epfd = s.epfd;
  s.lock.Unlock();
  if (!ready && check_kernel && epfd >= 0) {
    pollfd p{epfd, POLLIN, 0};
    ready = DOORWAY_REAL(poll)(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0;
  }
  return ready;
}

// Before sleeping: arms the members of s that are not armed (the check
// list, which is then left by those found not ready after arming; the
// always list; the sets nested in s, recursively). True if one is ready
// already (do not sleep then).
bool ArmSet(EpollSet& s, int depth) {
  if (depth > 5) return false;
  bool ready_now = false;
  s.lock.Lock();
  s.ConsumeLog();
  // First every flag, then at most one heavy fence, then the re-reads (Arm).
  bool fence = false;
  for (int i = 0; i < s.always.n; ++i) {
    Member* m = s.Find(s.always.v[i]);
    if (m == nullptr || m->disabled || m->nested) continue;
    if (Connection* c = m->conn.As<Connection>()) fence |= Arm(*m, *c, Read(*m, *c));
  }
  for (int i = 0; i < s.check.n; ++i) {
    Member* m = s.Find(s.check.v[i]);
    if (m == nullptr || Stale(*m) || m->disabled) continue;
    if (Connection* c = m->conn.As<Connection>()) {
      fence |= Arm(*m, *c, Read(*m, *c), depth == 0 && Revocable(*c));
    }
  }
  const bool unfenced = fence && !transport::HeavyFence();
  ready_now = unfenced;
  for (int i = 0; i < s.always.n; ++i) {
    Member* m = s.Find(s.always.v[i]);
    if (m == nullptr || m->disabled) continue;
    if (m->nested) {
      if (EpollSet* inner = m->conn.As<EpollSet>()) ready_now |= ArmSet(*inner, depth + 1);
    } else if (Connection* c = m->conn.As<Connection>()) {
      // Ready, but already reported to an edge-triggered member (e.g. EOF):
      // not a reason to stay awake; only a new edge is.
      ready_now |= Read(*m, *c).report != 0;
    }
  }
  int kept = 0;
  if (depth == 0) s.revoke.n = 0;
  for (int i = 0; i < s.check.n; ++i) {
    int fd = s.check.v[i];
    Member* m = s.Find(fd);
    if (m == nullptr) continue;
    if (Stale(*m)) {  // closed: Collect drops it after the sleep
      s.check.v[kept++] = fd;
      continue;
    }
    Connection* c = m->conn.As<Connection>();
    if (!m->disabled && c != nullptr) {
      // As armed above (relaxed hints: should they have changed since, a
      // revocable bit stays armed and rings once, or a revocation finds
      // only the sticky bit; either is harmless).
      const bool revocable = depth == 0 && Revocable(*c);
      if (unfenced || Read(*m, *c).report != 0) {
        ready_now = true;
        s.check.v[kept++] = fd;
        continue;
      }
      if (revocable) s.revoke.Push(fd);
    }
    m->in_check = false;  // armed and not ready (or disabled: MOD puts it back)
  }
  s.check.n = kept;
  s.lock.Unlock();
  return ready_now;
}

// Reports member m if it has something to tell (EPOLLET, EPOLLONESHOT
// applied). For a check-list member that has nothing, if `prune` (once per
// epoll_wait call, not per spin round) and kIdleWaits waits in a row found
// it so: arm it and drop it from the list unless arming found it ready. Returns 1 if an event was
// written to *out.
int Evaluate(EpollSet& s, Member& m, epoll_event* out, bool check_kernel, bool prune) {
  std::uint32_t report = 0;
  if (m.nested) {
    std::uint32_t level = 0;
    EpollSet* inner = m.conn.As<EpollSet>();
    if (inner != nullptr && NestedReady(*inner, check_kernel, 1)) level = EPOLLIN & m.events;
    // Kernel readiness is only looked at now and then: keep the last edge.
    if (!check_kernel && (m.events & EPOLLET)) level |= m.last & EPOLLIN;
    report = level;
    if (m.events & EPOLLET) {
      report = level & ~m.last;
      m.last = level;
    }
  } else {
    Connection& c = *m.conn.As<Connection>();
    Reading r = Read(m, c);
    Commit(m, r);
    if (r.now & EPOLLIN) m.tx_mark = c.tx.stats()->ops.load(std::memory_order_relaxed);
    if (r.report == 0 && prune && m.in_check && ++m.idle_waits >= kIdleWaits) {
      // A failed fence (see Arm): keep the member on the check list.
      if (Arm(m, c, r) && !transport::HeavyFence()) return 0;
      r = Read(m, c);  // after W1 (see Arm)
      Commit(m, r);
      if (r.report == 0) {
        m.in_check = false;  // the caller drops it from the list
        return 0;
      }
    }
    report = r.report;
  }
  if (report == 0) return 0;
  m.idle_waits = 0;
  out->events = report;
  out->data = m.data;
  if (m.events & EPOLLONESHOT) {
    m.disabled = true;
    if (m.in_check) m.in_check = false;  // the caller drops it; MOD puts it back
    // Its kernel registration stays as it is: nothing arms a disabled
    // member, so at most one doorbell comes (drained like any other), and
    // a MOD that re-arms it need not reach the kernel. (It used to be
    // switched off there, and the MOD that does not reach the kernel left
    // it so: a re-armed member never woke a sleeping set.)
  }
  return 1;
}

// The program's events for the members of s that may have any: the always
// list and the check list (not the armed members: their doorbells put them
// on the check list first, KernelWait). Drops members whose fd no longer
// refers to their object. Under s.lock.
int Collect(EpollSet& s, epoll_event* out, int max, bool count, bool check_kernel = true) {
  s.ConsumeLog();
  int n = 0;
  for (int i = 0; i < s.always.n && n < max;) {
    Member* m = s.Find(s.always.v[i]);
    if (m == nullptr) {  // cannot happen: Remove takes it off the list
      s.always.Erase(s.always.v[i]);
      continue;
    }
    // Closed (or replaced) since it was added: the kernel dropped its
    // registration when the file closed; drop ours.
    if (Stale(*m)) {
      s.Remove(m);
      continue;
    }
    ++i;
    if (!m->disabled) n += Evaluate(s, *m, out + n, check_kernel, false);
  }
  // The check list, compacted in place: the members looked at and kept go
  // after those not looked at (maxevents reached), so that a later call
  // starts with those (round robin, as the kernel's ready list).
  int kept = 0, i = 0;
  const int len = s.check.n;
  for (; i < len && n < max; ++i) {
    int fd = s.check.v[i];
    Member* m = s.Find(fd);
    if (m == nullptr || !m->in_check) continue;
    if (Stale(*m)) {
      m->in_check = false;  // already off the list being rebuilt
      s.Remove(m);
      continue;
    }
    if (m->disabled) {
      m->in_check = false;
      continue;
    }
    n += Evaluate(s, *m, out + n, check_kernel, count);
    if (m->in_check) s.check.v[kept++] = fd;
  }
  int rest = len - i;
  if (rest > 0) {
    std::memmove(&s.check.v[kept], &s.check.v[i], static_cast<size_t>(rest) * sizeof(int));
    std::rotate(s.check.v.data(), s.check.v.data() + kept, s.check.v.data() + kept + rest);
  }
  s.check.n = kept + rest;
  return n;
}

// Kernel events for the set, without blocking unless timeout_ms != 0.
// Accelerated members' wake-ups are taken off: their doorbells drained and
// the members put on the check list (where Collect evaluates them next).
//
// revoked (a sleeping wait's): a wake that brought kernel events takes the
// sleep's arming back at once (EpollSet::Revoke), before the doorbells are
// drained and the members evaluated, and says so: the peer of each member
// armed for the sleep pays a doorbell for every message it sends until
// then (a server answering a pipelining client's connections in one burst
// rang all of them while the woken client was still draining and
// evaluating).
int KernelWait(EpollSet& s, int epfd, epoll_event* out, int max, int timeout_ms,
               const sigset_t* sigmask, bool* revoked = nullptr) {
  if (max <= 0) return 0;
  int k = DOORWAY_REAL(epoll_pwait)(epfd, out, max, timeout_ms, sigmask);
  if (k < 0) return -errno;
  if (revoked != nullptr && k > 0) {
    s.lock.Lock();
    s.Revoke();
    s.lock.Unlock();
    *revoked = true;
  }
  int kept = 0;
  for (int i = 0; i < k; ++i) {
    if ((out[i].data.u64 & kMarkerMask) != kMarker) {
      out[kept++] = out[i];
      continue;
    }
    int fd = static_cast<int>(out[i].data.u64 & 0xffffffffu);
    Ref r = GlobalTable().Get(fd);
    Connection* c = r.As<Connection>();
    if (c == nullptr) continue;  // a nested set's wake-up: it is on the always list
    bool hangup = (out[i].events & (EPOLLHUP | EPOLLERR)) != 0;
    if (hangup) NotePeerHangup(*c);
    // Drained before the member is evaluated and, if not ready, re-armed
    // (see Arm): a doorbell rung after that stays on the socket.
    // epoll_regs relaxed: it changes under the sets' locks, with the
    // membership; a set that has just added c evaluates it at its next wait
    // anyway (new members start on the check list), so a stale count here
    // loses nothing.
    if ((out[i].events & EPOLLIN) && DrainDoorbells(fd) > 0 &&
        c->epoll_regs.load(std::memory_order_relaxed) > 1) {
      // Another set (or another fd of this connection in this one) may
      // have been waiting for this doorbell: it looks at its members.
      NoteEpollChange(-1);
    }
    s.lock.Lock();
    Member* m = s.Find(fd);
    if (m != nullptr && m->parked && m->conn.node() == r.node()) {
      // Not the program's member any more: its doorbell is drained, and
      // a hang-up (reported by the kernel until the registration goes)
      // ends the parking.
      if (hangup) {
        if (s.ClaimPark(*m)) (void)DOORWAY_REAL(epoll_ctl)(epfd, EPOLL_CTL_DEL, fd, nullptr);
        s.Remove(m);
      }
    } else if (m != nullptr && m->conn.node() == r.node()) {
      if (hangup && !m->quiet) {
        // The hang-up stays reported by the kernel (EPOLLHUP cannot be
        // masked, and a MOD re-arms it); from now on the rings say it
        // (EOF, EPIPE). So the kernel registration goes: otherwise a
        // member the program watches edge-triggered, whose hang-up it was
        // told of already, would wake every kernel wait at once, forever.
        (void)DOORWAY_REAL(epoll_ctl)(epfd, EPOLL_CTL_DEL, fd, nullptr);
        m->quiet = true;
        s.quiet.fetch_add(1, std::memory_order_relaxed);
      }
      s.MarkCheck(*m);
    } else if (c->epoll_regs.load(std::memory_order_relaxed) > 0) {
      NoteEpollChange(-1);  // a doorbell of a connection this set does not hold
    }
    s.lock.Unlock();
  }
  return kept;
}

// What a wait about to spin learns from its check-list members (under
// s.lock): whether a reply is due on one of them (kSpinDueMaxNs), and
// whether the peer of one waits on this CPU. Spinning only pays when the
// peer runs elsewhere: on one CPU the spin delays the very peer it waits
// for (transport/wait.h "Sharing a core", measured there for blocking
// calls). Publishes the CPU this side waits on in each member's incoming
// ring, for its peer's waits (a store only when it changed). O(check list),
// once per epoll_wait that spins.
struct SpinHint {
  bool due = false;
  bool peer_on_this_cpu = false;
};

SpinHint LookAtPeers(EpollSet& s) {
  SpinHint h;
  const int cpu = sched_getcpu();  // the rseq area: no system call
  const std::uint32_t me = cpu >= 0 ? static_cast<std::uint32_t>(cpu) + 1 : 0;
  for (int i = 0; i < s.check.n; ++i) {
    Member* m = s.Find(s.check.v[i]);
    if (m == nullptr || m->nested || m->disabled || m->parked) continue;
    Connection* c = m->conn.As<Connection>();
    if (c == nullptr) continue;
    if ((m->events & EPOLLIN) && c->tx.stats()->ops.load(std::memory_order_relaxed) != m->tx_mark) {
      h.due = true;
    }
    if (me == 0) continue;
    // Relaxed: hints; a stale value costs one wait the wrong strategy.
    std::atomic<std::uint32_t>* own = c->rx.waiter_cpu();
    if (own->load(std::memory_order_relaxed) != me) own->store(me, std::memory_order_relaxed);
    if (c->tx.waiter_cpu()->load(std::memory_order_relaxed) == me) h.peer_on_this_cpu = true;
  }
  return h;
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

namespace {
// EPOLL_CTL_MOD of member m (of connection `target`), under s.lock. In
// place: the member keeps its place on its list and its idle count (event
// loops such as redis's ae switch EPOLLOUT on and off with a MOD around
// every request; removing and adding would cost O(check list)).
void ModifyInPlace(EpollSet& s, Member& m, const epoll_event& event, const Ref& target) {
  m.events = event.events;
  m.data = event.data;
  m.last = 0;
  m.disabled = false;
  m.rx_seen = ~std::uint64_t{0};
  if (const Connection* c = target.As<Connection>()) {
    m.rx_gen = c->rx_eagain_gen.load(std::memory_order_relaxed) - 1;  // an edge, as on ADD
    m.tx_gen = c->tx_eagain_gen.load(std::memory_order_relaxed) - 1;
  }
  s.Classify(m);
}

// EPOLL_CTL_ADD and EPOLL_CTL_DEL without the kernel ("parking").
// redis's ae (redis-benchmark's event loop) deletes a connection from its
// set when its last event goes and adds it again when one comes back:
// twice each per request. Each reached the kernel (the Unix socket's
// wake-up registration), about half of redis-benchmark's CPU time under
// doorway. So a DEL of a member leaves its kernel registration in place
// ("parked": not the program's member any more, never evaluated, armed or
// reported) and a later ADD of the same connection takes it back. Only
// when the kernel's answers cannot differ: a connection held by this fd
// alone in this process and by no other process (fds == 1, not shared),
// not EPOLLEXCLUSIVE, not quieted, and one parked registration per
// connection (Connection::epoll_parked, which says whose it is). The
// kernel would drop the registration when the file closes, but another
// process (a fork or exec child) or a thread blocked in a call may hold the
// file: so the close of the connection's fd deletes it first
// (EpollDropParked, from OnFdDetached), and a fork deletes them all
// (EpollUnparkAll). A parked member's doorbell is drained like any other
// (at most one: nothing arms it); a hang-up ends its parking (the kernel
// would report it on every wait). Under s.lock; m is at fd in s. Returns
// the call's result, or 1: not handled, go on.
int ParkOrUnpark(EpollSet& s, Member& m, int op, const epoll_event* event, const Ref& target) {
  const bool same = m.conn.node() == target.node();
  if (m.parked) {
    if (same) {
      if (op != EPOLL_CTL_ADD) return -ENOENT;  // deleted, as far as the program knows
      const bool owned = s.ClaimPark(m);
      if (owned && (event->events & EPOLLEXCLUSIVE) == 0) {
        m.idle_waits = 0;
        ModifyInPlace(s, m, *event, target);  // as a fresh ADD: on the check list
        return 0;
      }
      // EPOLLEXCLUSIVE: the kernel's to check and register.
      if (owned) (void)DOORWAY_REAL(epoll_ctl)(s.epfd, EPOLL_CTL_DEL, m.fd, nullptr);
    }
    // Another connection at fd now: the parked one's file was closed, and
    // its registration deleted with it.
    s.Remove(&m);
    return 1;
  }
  Connection* c = target.As<Connection>();
  if (op != EPOLL_CTL_DEL || !same || c == nullptr || m.nested || m.quiet ||
      (m.events & EPOLLEXCLUSIVE) != 0 || c->shared.load(std::memory_order_relaxed) ||
      c->fds.load(std::memory_order_relaxed) != 1) {
    return 1;
  }
  std::uint64_t none = 0;
  if (!c->epoll_parked.compare_exchange_strong(none, s.ParkRecord(m), std::memory_order_acq_rel)) {
    return 1;  // parked in another set
  }
  if (m.in_check) {
    s.check.Erase(m.fd);
    m.in_check = false;
  }
  if (m.in_always) {
    s.always.Erase(m.fd);
    m.in_always = false;
  }
  m.parked = true;
  return 0;
}
}  // namespace

void EpollDropParked(Connection& c) {
  std::uint64_t rec = c.epoll_parked.exchange(0, std::memory_order_acq_rel);
  if (rec == 0) return;
  int epfd = static_cast<int>((rec >> 32) - 1);
  int fd = static_cast<int>(static_cast<std::uint32_t>(rec));
  (void)DOORWAY_REAL(epoll_ctl)(epfd, EPOLL_CTL_DEL, fd, nullptr);
  // The set drops its member when it reads the change log (the caller
  // notes the close: epoll_regs counts parked members too).
}

void EpollUnparkAll() {
  GlobalTable().ForEach([](int, const Ref& r) {
    EpollSet* s = const_cast<Ref&>(r).As<EpollSet>();
    if (s == nullptr) return;
    s->lock.Lock();
    for (int i = s->count - 1; i >= 0; --i) {
      Member& m = s->members[i];
      if (!m.parked) continue;
      if (s->ClaimPark(m) && !Stale(m)) {
        (void)DOORWAY_REAL(epoll_ctl)(s->epfd, EPOLL_CTL_DEL, m.fd, nullptr);
      }
      s->Remove(&m);
    }
    s->lock.Unlock();
  });
}

int EpollTakeConnection(int fd, EpollProgramReg* out, int max) {
  Ref cr = GlobalTable().Get(fd);
  Connection* c = cr.As<Connection>();
  if (c == nullptr || (c->epoll_regs.load(std::memory_order_relaxed) == 0 &&
                       c->epoll_parked.load(std::memory_order_relaxed) == 0)) {
    return 0;
  }
  // Flags kept on a one-shot registration that fired: the kernel's
  // registration of the new socket waits for EPOLL_CTL_MOD likewise.
  constexpr std::uint32_t kFlags = EPOLLET | EPOLLONESHOT | EPOLLEXCLUSIVE | EPOLLWAKEUP;
  int n = 0;
  GlobalTable().ForEach([&](int, const Ref& r) {
    EpollSet* s = const_cast<Ref&>(r).As<EpollSet>();
    if (s == nullptr) return;
    s->lock.Lock();
    Member* m = s->Find(fd);
    if (m != nullptr && !m->nested && m->conn.As<Connection>() == c) {
      const bool program_has_it = !m->parked;
      if (m->parked) (void)s->ClaimPark(*m);
      // The wake-up registration of the connection's Unix socket, which
      // outlives the number (the relay holds the socket).
      (void)DOORWAY_REAL(epoll_ctl)(s->epfd, EPOLL_CTL_DEL, fd, nullptr);
      if (program_has_it && n < max) {
        out[n].epfd = s->epfd;
        out[n].ev.events = m->disabled ? (m->events & kFlags) : m->events;
        out[n].ev.data = m->data;
        ++n;
      }
      s->Remove(m);
    }
    s->lock.Unlock();
  });
  return n;
}

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
  // Parking: see "EPOLL_CTL_ADD and EPOLL_CTL_DEL without the kernel"
  // below EpollCtl.
  if (!nested && GlobalTable().Tag(epfd) == kTagEpoll) {
    Ref pr = GlobalTable().Get(epfd);
    if (EpollSet* ps = pr.As<EpollSet>(); ps != nullptr) {
      int rc = 1;
      ps->lock.Lock();
      if (Member* pm = ps->Find(fd); pm != nullptr) rc = ParkOrUnpark(*ps, *pm, op, event, target);
      ps->lock.Unlock();
      if (rc <= 0) return rc;
    }
  }
  // EPOLL_CTL_MOD of a connection this set already has: the kernel's part
  // (the Unix socket, for doorbells and the peer's hang-up) does not change
  // with the program's events, and the kernel would say 0, so it is not
  // asked (redis's ae makes two MODs per request). Not for EPOLLEXCLUSIVE,
  // whose errors are the kernel's, nor a quieted member (see below).
  if (op == EPOLL_CTL_MOD && !nested && (event->events & EPOLLEXCLUSIVE) == 0 &&
      GlobalTable().Tag(epfd) == kTagEpoll) {
    Ref mr = GlobalTable().Get(epfd);
    if (EpollSet* ms = mr.As<EpollSet>(); ms != nullptr) {
      ms->lock.Lock();
      Member* mm = ms->Find(fd);
      if (mm != nullptr && !mm->quiet && (mm->events & EPOLLEXCLUSIVE) == 0 &&
          mm->conn.node() == target.node()) {
        ModifyInPlace(*ms, *mm, *event, target);
        ms->lock.Unlock();
        return 0;
      }
      ms->lock.Unlock();
    }
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
  int rc = 0;
  Member* m = s->Find(fd);
  if (m != nullptr && op == EPOLL_CTL_MOD && m->conn.node() == target.node()) {
    if (m->quiet) {  // registered with the kernel again above
      m->quiet = false;
      s->quiet.fetch_sub(1, std::memory_order_relaxed);
    }
    ModifyInPlace(*s, *m, *event, target);
    s->lock.Unlock();
    return 0;
  }
  if (m != nullptr) s->Remove(m);
  if (op != EPOLL_CTL_DEL) {
    Member fresh;
    fresh.fd = fd;
    fresh.events = event->events;
    fresh.data = event->data;
    fresh.nested = nested;
    if (Connection* c = target.As<Connection>()) {
      fresh.rx_gen = c->rx_eagain_gen.load(std::memory_order_relaxed) - 1;  // first wait: an edge
      fresh.tx_gen = c->tx_eagain_gen.load(std::memory_order_relaxed) - 1;
      fresh.tx_mark = c->tx.stats()->ops.load(std::memory_order_relaxed);
    }
    fresh.conn = std::move(target);
    if (!s->Add(std::move(fresh))) {
      rc = -ENOMEM;
    } else {
      // Evaluated at the next wait, which arms it if it is not ready.
      s->Classify(*s->Find(fd));
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
  struct Waiting {  // EpollSet::waiters, for every return below
    explicit Waiting(EpollSet& set) : s(set) { s.waiters.fetch_add(1, std::memory_order_seq_cst); }
    ~Waiting() { s.waiters.fetch_sub(1, std::memory_order_relaxed); }
    EpollSet& s;
  } waiting(*s);
  const std::int64_t start = NowNs();
  const std::int64_t deadline = timeout_ns < 0 ? -1 : start + timeout_ns;
  bool spun = false;
  bool rearm = false;  // the last sleep's wake revoked its arming and reported nothing
  std::int64_t spin_start = 0;
  const bool fixed = GetConfig().spin_ns >= 0;
  transport::SpinPolicy* policy = nullptr;  // the adaptive budget this call spun by
  // A handler that runs while we spin must end the call with EINTR, as it
  // would end the kernel's epoll_wait (signals.h).
  const std::atomic<std::uint64_t>* signals = SignalEpochOfThisThread();
  const std::uint64_t epoch = signals->load(std::memory_order_relaxed);
  for (;;) {
    // Kernel events first: doorbells put their members on the check list,
    // which Collect then evaluates.
    int k = KernelWait(*s, epfd, events, maxevents, 0, nullptr);
    if (k < 0) return k;
    s->lock.Lock();
    int n = Collect(*s, events + k, maxevents - k, true);
    s->lock.Unlock();
    if (n + k > 0 || timeout_ns == 0) return n + k;
    if (!spun) {
      // Spin over the check list only (the members ready in recent waits and
      // those just woken): the others are armed, and their doorbells show
      // up in the kernel wait looked at every 64 rounds. O(hot members).
      spun = true;
      s->lock.Lock();
      const SpinHint hint = LookAtPeers(*s);
      s->lock.Unlock();
      if (!fixed) policy = hint.due ? &s->spin_due : &s->spin;
      spin_start = NowNs();
      std::int64_t budget = fixed ? GetConfig().spin_ns : policy->budget_ns();
      if (hint.peer_on_this_cpu) budget = 0;
      std::int64_t spin_end = spin_start + budget;
      if (deadline >= 0 && spin_end > deadline) spin_end = deadline;
      // The clock every 16 rounds (from the first, so that a zero budget
      // does not spin): a vDSO clock_gettime costs ~30 ns on the
      // development VM, a quarter of a round's time (perf of sockperf's
      // server), and a message that arrives waits for the round to end.
      // sched_yield every kSpinYieldNs, as the transport's waits do
      // (wait.h): with more waiting processes than CPUs (PostgreSQL's
      // backends), a spin that never yields holds the CPU that a woken one
      // needs for its work, until the scheduler's tick.
      std::int64_t next_yield = spin_start + transport::kSpinYieldNs;
      for (unsigned iter = 1;; ++iter) {
        if ((iter & 15) == 1) {
          const std::int64_t now = NowNs();
          if (now >= spin_end) break;
          if (now >= next_yield) {
            sched_yield();
            next_yield = now + transport::kSpinYieldNs;
          }
        }
        if ((iter & 63) == 0) {
          k = KernelWait(*s, epfd, events, maxevents, 0, nullptr);
          if (k < 0) return k;
          if (signals->load(std::memory_order_relaxed) != epoch) return k > 0 ? k : -EINTR;
        } else {
          k = 0;
        }
        s->lock.Lock();
        n = Collect(*s, events + k, maxevents - k, false, (iter & 63) == 0);
        s->lock.Unlock();
        if (n + k > 0) {
          if (policy != nullptr) policy->OnSpinSuccess(NowNs() - spin_start);
          return n + k;
        }
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      }
      continue;
    }
    std::int64_t left = deadline < 0 ? -1 : deadline - NowNs();
    if (deadline >= 0 && left <= 0) {
      if (rearm) {
        // The last sleep's wake took its arming back and then brought
        // nothing to report (a nested set's or a parked member's wake-up):
        // arm again, as a wait that times out leaves its members armed.
        rearm = false;
        if (ArmSet(*s, 0)) continue;
      }
      // Nothing came within the timeout: halve the budget, as after a
      // sleep longer than its cap. An idle loop whose timer is shorter than
      // the spin (an event loop's 1 ms tick while a reply is due) would
      // otherwise spin through every timeout, i.e. all the time.
      if (policy != nullptr) policy->OnSlept(policy->max_ns() + 1);
      return 0;
    }
    // Arm the members that are not (the check list, the always list) so
    // that their peers ring when they turn ready; do not sleep if one is
    // ready already.
    if (ArmSet(*s, 0)) continue;
    if (signals->load(std::memory_order_relaxed) != epoch) return -EINTR;
    bool revoked = false;
    k = KernelWait(*s, epfd, events, maxevents, ms_of(left), sigmask, &revoked);
    if (k < 0) return k;  // EINTR: epoll_wait is never restarted
    s->lock.Lock();
    n = Collect(*s, events + k, maxevents - k, true);
    // Only after a wake that brings events: the program will be back in a
    // wait of this set soon. After a timeout the arming stays, as it did
    // before revocation existed, for a program that then waits for the
    // set's fd elsewhere (poll on the epoll fd; the KernelSetWakes cases).
    // A wake with kernel events took it back already (KernelWait).
    if (k + n > 0 && !revoked) s->Revoke();
    s->lock.Unlock();
    rearm = revoked && k + n == 0;
    if (k + n > 0) {
      if (policy != nullptr && spin_start != 0) policy->OnSlept(NowNs() - spin_start);
      return k + n;
    }
  }
}

}  // namespace doorway::runtime

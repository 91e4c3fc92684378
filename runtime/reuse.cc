#include "runtime/reuse.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <utility>

#include "runtime/accel.h"
#include "runtime/door.h"
#include "runtime/log.h"
#include "runtime/real.h"
#include "runtime/spare.h"
#include "transport/wait.h"

namespace doorway::runtime {
namespace {

struct Kept {
  int fd = -1;  // written under the lock through atomic_ref (ClientDoorFds reads it without)
  std::uint64_t ino = 0;
  Endpoint dest;
  std::uint64_t door_id = 0;
  uid_t uid = 0;
  std::int64_t kept_ns = 0;  // CLOCK_MONOTONIC when kept
  transport::ArenaSlotRef watch;
  // watch.Released() was seen true (it stays true): the scans do not read
  // the arena's shared lines again, each a likely miss on a line the server
  // wrote (measured: 6% of a connect with 64 entries to scan).
  bool released = false;
  bool nonblock = false;  // O_NONBLOCK on the socket's file
  bool armed = false;     // its connection armed doorbells (drain them)
};

bool Released(Kept& k) { return k.released || (k.released = k.watch.Released()); }

// On contention (spare.h TryLockFlag) the socket is simply closed, or the
// connect takes the door.
struct Pool : TryLockFlag {
  Kept kept[kReusedDoors];
};

Pool g_pool;

// The wake FIFOs of the listeners this process kept sockets for, by door
// identity: opened once per listener (NoteDoorWake replaces a dead
// listener's). Slots are claimed with a compare-exchange on door_id and
// published by fd.
struct Wake {
  std::atomic<std::uint64_t> door_id{0};
  std::atomic<int> fd{-1};
};
Wake g_wakes[kMaxDoorWakes];

int WakeFor(std::uint64_t door_id) {
  for (Wake& w : g_wakes) {
    if (w.door_id.load(std::memory_order_acquire) == door_id) {
      return w.fd.load(std::memory_order_acquire);
    }
  }
  return -1;
}

void StoreFd(Kept& k, int fd) { std::atomic_ref<int>(k.fd).store(fd, std::memory_order_relaxed); }

bool SameDest(const Endpoint& a, const Endpoint& b) {
  return a.family == b.family && a.port == b.port && a.scope_id == b.scope_id &&
         memcmp(a.addr, b.addr, sizeof(a.addr)) == 0;
}

// A forked child must not send Hellos on sockets its parent uses too. Only
// this thread exists in the child: the lock is simply reset.
void DropInChild() {
  for (Kept& k : g_pool.kept) {
    if (k.fd >= 0) DOORWAY_REAL(close)(k.fd);
    k = Kept{};
  }
  g_pool.Reset();
}

[[maybe_unused]] const int g_atfork = pthread_atfork(nullptr, nullptr, DropInChild);

std::int64_t NowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1'000'000'000LL + ts.tv_nsec;
}

// An entry whose server has not released it after this long holds a
// connection its server keeps open (or a slot it will never release): it
// may give way to a new one. Younger ones are waited for: a client that
// connects faster than its server accepts is up to the whole pool ahead,
// and evicting the oldest would throw away the very entries about to be
// released (measured: 16 000 of 20 000 connects then made new door
// connections).
constexpr std::int64_t kStaleNs = 1'000'000'000;

}  // namespace

void KeepClientDoor(int fd, std::uint64_t ino, const Endpoint& dest, std::uint64_t door_id,
                    uid_t server_uid, transport::ArenaSlotRef slot, bool nonblock, bool armed) {
  int evicted = -1;
  bool kept = false;
  if (ino != 0 && slot.valid() && WakeFor(door_id) >= 0 && g_pool.TryLock()) {
    const std::int64_t now = NowNs();
    // A free entry, else the oldest seen released (ready for reuse, but
    // there are more than enough: e.g. to listeners since closed), else the
    // oldest if it is stale.
    Kept* e = nullptr;
    Kept* released = nullptr;
    for (Kept& k : g_pool.kept) {
      if (k.fd < 0) {
        e = &k;
        break;
      }
      if (e == nullptr || k.kept_ns < e->kept_ns) e = &k;
      if ((released == nullptr || k.kept_ns < released->kept_ns) && k.released) {
        released = &k;
      }
    }
    // Full, and no entry seen released: entries are marked only when a
    // connect to their destination looks, so a pool full of entries for
    // other destinations (a program that talks to many listeners in turn)
    // looked unreleased and kept nothing for up to kStaleNs. A few of them
    // are asked (each ask reads a line of an arena: a likely miss, only
    // while the pool is full).
    if (e->fd >= 0 && released == nullptr) {
      int asks = 0;
      for (Kept& k : g_pool.kept) {
        if (k.fd < 0 || k.released) continue;
        if (Released(k)) {
          released = &k;
          break;
        }
        if (++asks == 4) break;
      }
    }
    if (e->fd >= 0 && released != nullptr) e = released;
    if (e->fd < 0 || e == released || now - e->kept_ns > kStaleNs) {
      if (e->fd >= 0) evicted = e->fd;
      e->ino = ino;
      e->dest = dest;
      e->door_id = door_id;
      e->uid = server_uid;
      e->kept_ns = now;
      e->watch = std::move(slot);
      e->released = false;
      e->nonblock = nonblock;
      e->armed = armed;
      StoreFd(*e, fd);
      kept = true;
    }
    g_pool.Unlock();
  }
  if (!kept) DOORWAY_REAL(close)(fd);
  if (evicted >= 0) DOORWAY_REAL(close)(evicted);
}

namespace {

// Called with the pool locked: the oldest entry for dest whose server
// released it (they come back in about the order they went), or nullptr;
// *in_flight: the entries for dest not released yet and not stale.
// An entry seen released stays so (Kept::released); of the others only the
// kLooks oldest are asked (each look reads a line of the arena the server
// wrote, a likely miss: with every entry asked, the scans were 5% of a
// connect, more in a wait).
constexpr int kLooks = 4;

Kept* OldestReleased(const Endpoint& dest, std::int64_t now, int* in_flight) {
  Kept* best = nullptr;
  Kept* oldest[kLooks] = {};  // the oldest not seen released, by kept_ns
  int n = 0;
  *in_flight = 0;
  for (Kept& k : g_pool.kept) {
    if (k.fd < 0 || !SameDest(k.dest, dest) || WakeFor(k.door_id) < 0) continue;
    if (k.released) {
      if (best == nullptr || k.kept_ns < best->kept_ns) best = &k;
      continue;
    }
    if (now - k.kept_ns > kStaleNs) continue;
    ++*in_flight;
    int i = n < kLooks ? n++ : kLooks;
    for (; i > 0 && oldest[i - 1]->kept_ns > k.kept_ns; --i) {
      if (i < kLooks) oldest[i] = oldest[i - 1];
    }
    if (i < kLooks) oldest[i] = &k;
  }
  if (best != nullptr) return best;
  for (int i = 0; i < n; ++i) {
    if (Released(*oldest[i])) {
      --*in_flight;
      return oldest[i];
    }
  }
  return nullptr;
}

// Waiting for a release instead of entering the door. A client that
// connects and closes faster than its server accepts and closes runs ahead
// by the entries in flight; without a wait, each connect it makes ahead
// entered the door: a new socket pair on both sides, the dearer kind of
// set-up for the server too, which then fell further behind (measured:
// 1 500-2 450 of 3 000 connects entered the door under a load of 2). With
// kWaitDepth entries in flight the server has that many Hellos queued, so
// it does not sleep, and the oldest of them is about one accept away: the
// wait is short, and the connect reuses a socket. Fewer in flight: the door
// (a wait would make the two sides take turns, each waking the other).
// A server that holds its connections (entries stay unreleased) costs a
// connect the budget at most; each wait that times out halves the budget
// (down to kWaitMinNs), each that succeeds restores it.
constexpr int kWaitDepth = 4;
constexpr std::int64_t kWaitMaxNs = 100'000;
constexpr std::int64_t kWaitMinNs = 5'000;
std::atomic<std::int64_t> g_wait_budget_ns{kWaitMaxNs};

}  // namespace

int TakeClientDoor(const Endpoint& dest, std::uint64_t* ino, std::uint64_t* door_id,
                   uid_t* server_uid, transport::ArenaSlotRef* prev, int* wake, bool* nonblock) {
  if (!g_pool.TryLock()) return -1;
  int fd = -1;
  std::int64_t now = NowNs();
  int in_flight = 0;
  Kept* best = OldestReleased(dest, now, &in_flight);
  if (best == nullptr && in_flight >= kWaitDepth) {
    // sched_yield between looks: the server may share this CPU (then it
    // runs), else the call returns at once and this is a slow spin.
    const std::int64_t budget = g_wait_budget_ns.load(std::memory_order_relaxed);
    const std::int64_t deadline = now + budget;
    while (best == nullptr && in_flight >= kWaitDepth && now < deadline) {
      g_pool.Unlock();
      sched_yield();
      now = NowNs();
      if (!g_pool.TryLock()) return -1;
      best = OldestReleased(dest, now, &in_flight);
    }
    g_wait_budget_ns.store(best != nullptr ? kWaitMaxNs : std::max(kWaitMinNs, budget / 2),
                           std::memory_order_relaxed);
  }
  transport::ArenaSlotRef watch;
  bool armed = false;
  if (best != nullptr) {
    fd = best->fd;
    *ino = best->ino;
    *door_id = best->door_id;
    *server_uid = best->uid;
    *nonblock = best->nonblock;
    armed = best->armed;
    watch = std::move(best->watch);
    StoreFd(*best, -1);
    *best = Kept{};
  }
  g_pool.Unlock();
  if (fd < 0) return -1;
  *prev = std::move(watch);
  *wake = WakeFor(*door_id);
  // Still the socket we kept? A program that closes fds it does not know
  // (a daemon closing everything) may have closed it and reused the number:
  // then it is not ours to close either.
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode) || st.st_ino != *ino) return -1;
  // The old connection's doorbells from the server (one per arming at
  // most): the new one starts with a quiet socket. A server that closed its
  // end instead of parking it (its connection was in an epoll set, or it
  // had no room, or it exited) shows as a hang-up after them: the connect
  // takes the door. Without doorbells armed none came: a poll asks for the
  // hang-up alone. Asked here because the Hello goes in the wake FIFO
  // (WakeListener), whose write cannot tell whether anyone parked the end.
  bool hung_up = false;
  if (armed) {
    (void)DrainDoorbells(fd, &hung_up);
  } else {
    hung_up = transport::PeerGone(fd);
  }
  if (hung_up) {
    DOORWAY_REAL(close)(fd);
    return -1;
  }
  return fd;
}

// Whether fd is the FIFO now at path (a listener's FIFO is replaced by its
// successor's on the same port, whose door may even reuse the inode, and so
// the door identity, of the old one).
bool IsFifoAt(int fd, const char* path) {
  struct stat a {};
  struct stat b {};
  return fstat(fd, &a) == 0 && lstat(path, &b) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino && a.st_nlink > 0;
}

bool NoteDoorWake(std::uint64_t door_id, const char* door_path) {
  if (door_id == 0) return false;
  char wp[kDoorPathMax + 8];
  if (!WakePath(door_path, wp, sizeof(wp))) return false;
  for (Wake& w : g_wakes) {
    if (w.door_id.load(std::memory_order_acquire) != door_id) continue;
    int fd = w.fd.load(std::memory_order_acquire);
    if (fd >= 0 && IsFifoAt(fd, wp)) return true;
    // A dead listener's: forget it (a kept socket of that listener fails
    // its Hello before it would write there). Claimed by swapping the fd.
    if (fd >= 0 && w.fd.compare_exchange_strong(fd, -1, std::memory_order_acq_rel)) {
      w.door_id.store(0, std::memory_order_release);
      DOORWAY_REAL(close)(fd);
    }
    break;
  }
  // Read-write: a FIFO open for reading by ourselves never makes a write
  // fail with EPIPE (and SIGPIPE) after its listener is gone; the bytes then
  // go nowhere, as the Hello before them did. Non-blocking: never waits.
  int fd = static_cast<int>(
      syscall(SYS_openat, AT_FDCWD, wp, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW));
  if (fd < 0) {
    DOORWAY_LOG(kDebug, "no wake FIFO %s (%s): door sockets to it are not kept", wp,
                strerror(errno));
    return false;
  }
  struct stat st {};
  // The door directory is ours (DoorDirectory checked it): a FIFO there is
  // our listener's; the check costs once per listener.
  if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode) || !UidAllowed(st.st_uid)) {
    DOORWAY_REAL(close)(fd);
    return false;
  }
  int h = HideFd(fd);
  if (h < 0) return false;
  for (int pass = 0; pass < 2; ++pass) {
    for (Wake& w : g_wakes) {
      std::uint64_t expected = 0;
      if (w.door_id.compare_exchange_strong(expected, door_id, std::memory_order_acq_rel)) {
        w.fd.store(h, std::memory_order_release);
        return true;
      }
    }
    // Full: free the entries of listeners that are gone (their FIFO was
    // removed). A program that opens many listeners over its life would
    // otherwise fill the table with dead ones (the conformance suite did).
    for (Wake& w : g_wakes) {
      int old = w.fd.load(std::memory_order_acquire);
      struct stat ost {};
      if (old >= 0 && fstat(old, &ost) == 0 && ost.st_nlink == 0 &&
          w.fd.compare_exchange_strong(old, -1, std::memory_order_acq_rel)) {
        w.door_id.store(0, std::memory_order_release);
        DOORWAY_REAL(close)(old);
      }
    }
  }
  DOORWAY_REAL(close)(h);  // full (or another thread noted it meanwhile)
  return WakeFor(door_id) >= 0;
}

bool WakeListener(int wake, const void* record, std::size_t size) {
  // One write of at most PIPE_BUF bytes: atomic, so records of several
  // clients never interleave, and a full FIFO refuses it whole (EAGAIN).
  static_assert(kWakeRecordMax <= PIPE_BUF);
  if (size > kWakeRecordMax) return false;
  return syscall(SYS_write, wake, record, size) == static_cast<long>(size);
}

int ClientDoorFds(int* out, int max) {
  int n = 0;
  for (Wake& w : g_wakes) {
    int fd = w.fd.load(std::memory_order_relaxed);
    if (fd >= 0 && n < max) out[n++] = fd;
  }
  for (Kept& k : g_pool.kept) {
    int fd = std::atomic_ref<int>(k.fd).load(std::memory_order_relaxed);
    if (fd >= 0 && n < max) out[n++] = fd;
  }
  return n;
}

}  // namespace doorway::runtime

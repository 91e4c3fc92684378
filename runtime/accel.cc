#include "runtime/accel.h"

#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <numa.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/single_threaded.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>

#include "runtime/config.h"
#include "runtime/epoll.h"
#include "runtime/log.h"
#include "runtime/real.h"
#include "runtime/relay.h"
#include "runtime/reuse.h"
#include "runtime/signals.h"
#include "runtime/sockets.h"
#include "runtime/spare.h"
#include "runtime/stats.h"
#include "transport/fence.h"

namespace doorway::runtime {

using fdtable::GlobalTable;
using fdtable::Make;
using fdtable::Ref;
using transport::Role;

namespace {

// ---------------------------------------------------------------- options

struct OptDesc {
  int level;
  int name;
};
constexpr OptDesc kOpts[OptionSnapshot::kCount] = {
    {SOL_SOCKET, SO_KEEPALIVE},
    {SOL_SOCKET, SO_REUSEADDR},
    {SOL_SOCKET, SO_REUSEPORT},
    {SOL_SOCKET, SO_SNDBUF},
    {SOL_SOCKET, SO_RCVBUF},
    {SOL_SOCKET, SO_OOBINLINE},
    {SOL_SOCKET, SO_PRIORITY},
    {SOL_SOCKET, SO_RCVLOWAT},
    {SOL_SOCKET, SO_SNDLOWAT},
    {SOL_SOCKET, SO_DONTROUTE},
    {IPPROTO_TCP, TCP_NODELAY},
    {IPPROTO_TCP, TCP_CORK},
    {IPPROTO_TCP, TCP_KEEPIDLE},
    {IPPROTO_TCP, TCP_KEEPINTVL},
    {IPPROTO_TCP, TCP_KEEPCNT},
    {IPPROTO_TCP, TCP_MAXSEG},
    {IPPROTO_TCP, TCP_USER_TIMEOUT},
    {IPPROTO_TCP, TCP_NOTSENT_LOWAT},
    {IPPROTO_IP, IP_TOS},
    {IPPROTO_IP, IP_TTL},
};
constexpr int kSndbufIndex = 3;
constexpr int kRcvbufIndex = 4;

int OptIndex(int level, int name) {
  for (int i = 0; i < OptionSnapshot::kCount; ++i) {
    if (kOpts[i].level == level && kOpts[i].name == name) return i;
  }
  return -1;
}

std::int64_t TimevalToNs(const timeval& tv) {
  return static_cast<std::int64_t>(tv.tv_sec) * 1000000000 + tv.tv_usec * 1000;
}

timeval NsToTimeval(std::int64_t ns) {
  timeval tv;
  tv.tv_sec = ns / 1000000000;
  tv.tv_usec = (ns % 1000000000) / 1000;
  return tv;
}

// getsockopt's copy-out rule: at most *len bytes, *len becomes what was copied.
int PutOpt(const void* v, socklen_t size, void* value, socklen_t* len) {
  if (len == nullptr) return -EFAULT;
  if (static_cast<int>(*len) < 0) return -EINVAL;
  socklen_t n = *len < size ? *len : size;
  if (n > 0 && value == nullptr) return -EFAULT;
  if (n > 0) memcpy(value, v, n);
  *len = n;
  return 0;
}

std::int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

// ---------------------------------------------------------------- helpers

// The door handshake message (client -> server, with the segment's memfd).
struct Hello {
  static constexpr std::uint32_t kMagic = 0x4F4C4548;  // "HELO"
  static constexpr std::uint32_t kVersion = 2;         // 2: segment_offset
  std::uint32_t magic;
  std::uint32_t version;
  Endpoint client;  // the client's TCP-level address
  Endpoint server;  // the address the client connected to
  // Where the connection's segment starts in the memfd (an arena slot,
  // transport/segment.h "Arenas"; untrusted, validated by AttachAt).
  std::uint64_t segment_offset;
};

bool HelloValid(const Hello& h) {
  return h.magic == Hello::kMagic && h.version == Hello::kVersion &&
         (h.client.family == AF_INET || h.client.family == AF_INET6) &&
         (h.server.family == AF_INET || h.server.family == AF_INET6);
}

// A connection on a kept door socket (reuse.h), as its client writes it
// into the listener's wake FIFO: which parked end it uses, named by the
// arena slot of the socket's previous connection (both sides hold it), and
// the Hello. When the new segment is a slot of that same arena (the usual
// case) the Hello is here and nothing goes on the socket: no sendmsg for
// the client, no epoll_wait or recvmsg for the server (they were ~25% of
// each side's connection set-up). Else the Hello follows on the socket with
// the arena's memfd, as through a door. Untrusted (any program of the
// user can write the FIFO): every field is checked.
struct WakeRecord {
  static constexpr std::uint32_t kMagic = 0x324B4157;  // "WAK2"
  static constexpr std::uint32_t kHelloHere = 1;
  static constexpr std::uint32_t kHelloOnSocket = 2;
  std::uint32_t magic;
  std::uint32_t kind;
  transport::SlotIdentity prev;
  Hello hello;
};
static_assert(sizeof(WakeRecord) <= kWakeRecordMax);
static_assert(std::is_trivially_copyable_v<WakeRecord>);

long RawSend(int fd, const void* buf, size_t n, int flags) {
  return syscall(SYS_sendto, fd, buf, n, flags, nullptr, 0);
}

// Takes the lock of one end of a ring (threads and forked processes sharing
// the socket). The kernel's socket lock is not interruptible: neither is
// this one, so a signal only makes it retry. 0 (or kOwnerDied: the previous
// holder died; the ring is consistent, see shm_mutex.h) or -errno (-EIO: a
// connection that only this process holds found its lock word forged by the
// peer, which would otherwise stall even a non-blocking call forever).
//
// A signal handler that calls into the end its own thread holds (the thread
// was interrupted inside a read or write of that end) would wait for itself
// forever. Callers hold the lock inside a signal section (signals.h
// "Critical sections"), so handlers of asynchronous signals run only after
// the lock is released, or while the call is parked in a wait
// (t_parked_on: it holds the lock but touches nothing of the ring until it
// wakes): the handler's call then runs inside the parked one, without the
// lock, and LockEnd returns kReentered (do not unlock). What remains is a
// handler that ran inside a section anyway (a fault signal's, or more
// signals at once than the deferral queue holds) while the interrupted call
// was in the middle of a copy: going on would corrupt the ring and waiting
// would never end: -EINTR.
constexpr int kReentered = 2;
}  // namespace
// Not file-local: gold bug (runtime/signals.cc "TLS and gold").
__attribute__((
    tls_model("initial-exec"),
    visibility("hidden"))) constinit thread_local const std::atomic<std::uint32_t>* t_parked_on =
    nullptr;
namespace {

// Marks this thread as parked in a wait on the end whose lock word is w;
// signal handlers run again meanwhile (the ones deferred so far, first).
class Parked {
 public:
  explicit Parked(const std::atomic<std::uint32_t>* w) : prev_(t_parked_on) {
    t_parked_on = w;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    window_.Open();
  }
  ~Parked() {
    window_.Close();
    std::atomic_signal_fence(std::memory_order_seq_cst);
    t_parked_on = prev_;
  }
  Parked(const Parked&) = delete;
  Parked& operator=(const Parked&) = delete;

 private:
  const std::atomic<std::uint32_t>* prev_;
  SignalWindow window_;
};

// The contended path of LockEnd, out of line: the uncontended one is the
// data path.
__attribute__((noinline)) int LockEndContended(transport::ShmMutex& lock, bool shared) {
  using H = transport::ShmMutex::Holders;
  // Is the holder this very thread (we run in its signal handler)?
  if ((lock.word()->load(std::memory_order_relaxed) & transport::ShmMutex::kTidMask) ==
      transport::ShmMutex::SelfTid()) {
    return t_parked_on == lock.word() ? kReentered : -EINTR;
  }
  // Another thread or process holds it: a wait, where signals run (once
  // Lock has taken the lock, a handler's call on this end finds it ours and
  // parked, and runs inside: nothing of the ring has been touched yet).
  Parked parked(lock.word());
  int rc;
  while ((rc = lock.Lock(transport::WaitOptions{}, shared ? H::kAnyProcess : H::kThisProcess)) ==
         -EINTR) {
  }
  return rc;
}

// LockEnd's result when it took the lock without an atomic read-modify-
// write (UnlockEnd releases it the same way).
constexpr int kHeldPlain = 3;
// LockEnd's result for a biased hold (transport/lock_bias.h): released by
// LockBias::Leave.
constexpr int kHeldBiased = 4;

// The rest of LockEnd: claiming the end's bias, or revoking another
// thread's (which waits for that thread to leave its hold, in a wait where
// signal handlers run, as LockEndContended's), then the ShmMutex.
__attribute__((noinline)) int LockEndSlow(transport::ShmMutex& lock, transport::LockBias& bias,
                                          bool shared) {
  const std::uint32_t tid = transport::ShmMutex::SelfTid();
  // Claims and revocations of an owner outside its holds need no wait (no
  // signal window: a claim is on every new connection's first operation).
  transport::LockBias::Slow s = bias.Resolve(lock.word(), tid, /*may_claim=*/!shared, false);
  if (s == transport::LockBias::Slow::kBusy) {
    Parked parked(lock.word());
    s = bias.Resolve(lock.word(), tid, /*may_claim=*/!shared, /*wait=*/true);
  }
  int rc = lock.TryLock();
  if (rc == -EBUSY) rc = LockEndContended(lock, shared);
  if (rc != 0) return rc;  // kOwnerDied stays a normal hold (rare), as errors and kReentered
  if (s == transport::LockBias::Slow::kClaimed && bias.Adopt(tid)) return kHeldBiased;
  return 0;
}

// Call inside a SignalSection. Inline: the uncontended case is one CAS, or
// plain stores:
//
// A process that has never made a second thread (glibc's
// __libc_single_threaded) holding an end no other process has (`shared`:
// fork, exec) has nobody to exclude: it writes its tid with a
// plain store instead, which a signal handler's call on the same end sees
// as its own thread's hold (LockEndContended), as with the CAS. Why: a
// locked instruction waits for the store buffer to drain, and the buffer
// holds the previous operation's index store, whose line the peer polls:
// the unlock's xchg was half of a 64 B write's time (perf: 52% of
// ManagedWrite), one cross-core line transfer per write.
//
// A process with several threads: the end's bias (transport/lock_bias.h)
// gives the thread that uses it the same plain stores, until another
// thread wants the end; a handler on that thread finds the biased hold its
// own (kSelfHeld) and is treated as LockEndContended treats its own
// thread's CAS hold. Unbiased ends (shared, revoked, no membarrier): the
// CAS.
inline __attribute__((always_inline)) int LockEnd(transport::ShmMutex& lock,
                                                  transport::LockBias& bias, bool shared) {
  if (!shared && __libc_single_threaded != 0) {
    if (__builtin_expect(lock.word()->load(std::memory_order_relaxed) == 0, 1)) {
      lock.word()->store(transport::ShmMutex::SelfTid(), std::memory_order_relaxed);
      std::atomic_signal_fence(std::memory_order_seq_cst);  // before the ring, for a handler
      return kHeldPlain;
    }
    return LockEndContended(lock, shared);
  }
  if (!bias.Unbiased()) {
    switch (bias.TryEnter(lock.word(), transport::ShmMutex::SelfTid())) {
      case transport::LockBias::Fast::kEntered:
        return kHeldBiased;
      case transport::LockBias::Fast::kSelfHeld:
        return t_parked_on == lock.word() ? kReentered : -EINTR;
      case transport::LockBias::Fast::kSlow:
        return LockEndSlow(lock, bias, shared);
    }
  }
  int rc = lock.TryLock();
  if (__builtin_expect(rc != -EBUSY, 1)) return rc;
  return LockEndContended(lock, shared);
}

// Releases what LockEnd(lock) returned lrc for. A thread made while this
// one held the end (by a signal handler that ran in a wait) may be waiting
// for it: then the full unlock, which wakes waiters.
inline __attribute__((always_inline)) void UnlockEnd(transport::ShmMutex& lock,
                                                     transport::LockBias& bias, int lrc) {
  if (lrc == kHeldPlain && __libc_single_threaded != 0) {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    lock.word()->store(0, std::memory_order_relaxed);
  } else if (lrc == kHeldBiased) {
    bias.Leave(lock, transport::ShmMutex::SelfTid());
  } else if (lrc != kReentered) {
    lock.Unlock();
  }
}

// LockEnd for a caller that must not wait (poll's look at the ring under
// the lock, which has lock-free answers when the end is busy): a biased
// owner that is inside a hold (a reader parked in a blocking read) is
// busy, not waited for. -EBUSY, or what UnlockEnd takes.
int TryLockEnd(transport::ShmMutex& lock, transport::LockBias& bias, bool shared) {
  const std::uint32_t tid = transport::ShmMutex::SelfTid();
  transport::LockBias::Slow s = transport::LockBias::Slow::kNormal;
  if (!bias.Unbiased()) {
    switch (bias.TryEnter(lock.word(), tid)) {
      case transport::LockBias::Fast::kEntered:
        return kHeldBiased;
      case transport::LockBias::Fast::kSelfHeld:
        return -EBUSY;
      case transport::LockBias::Fast::kSlow:
        s = bias.Resolve(lock.word(), tid, /*may_claim=*/!shared, /*wait=*/false);
        if (s == transport::LockBias::Slow::kBusy) return -EBUSY;
        break;
    }
  }
  int rc = lock.TryLock();
  if (rc != 0) return rc == transport::kOwnerDied ? 0 : rc;
  if (s == transport::LockBias::Slow::kClaimed && bias.Adopt(tid)) return kHeldBiased;
  return 0;
}

// Doorbells (transport/ring.h "doorbells"): a side about to sleep in the
// kernel on its Unix socket (the poll and epoll engines) arms its rings;
// the other side's operation that meets an armed ring reports it through
// TakeDoorbell, and we send one byte on the socket. Called under the end's
// lock, as TakeDoorbell requires.
__attribute__((noinline)) void RingDoorbell(int fd) {
  char x = 'd';
  (void)RawSend(fd, &x, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
}

inline void SendDoorbell(transport::Ring& ring, int fd) {
  if (__builtin_expect(ring.TakeDoorbell(), 0)) RingDoorbell(fd);
}

// After a signal interrupted a blocking call: would the kernel have
// restarted it? Linux restarts socket calls when the handler has SA_RESTART
// and the socket has no timeout (sock_intr_errno). We cannot tell which
// signal it was, so restart only if every installed handler has SA_RESTART.
// Rare path: one rt_sigaction per signal.
bool RestartAfterSignal(std::int64_t timeout_ns) {
  if (timeout_ns > 0) return false;
  for (int sig = 1; sig <= 64; ++sig) {
    struct kernel_sigaction {
      void* handler;
      unsigned long flags;
      void* restorer;
      unsigned long mask;
    } ka{};
    // Fault signals come from the faulting instruction, not during a
    // wait: their handlers (crash reporters, sanitizers, Python's
    // faulthandler; rarely with SA_RESTART) must not turn every restart
    // into EINTR.
    if (sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE || sig == SIGILL || sig == SIGTRAP ||
        sig == SIGSYS) {
      continue;
    }
    if (syscall(SYS_rt_sigaction, sig, nullptr, &ka, sizeof(ka.mask)) != 0) continue;
    void* h = ka.handler;
    if (h == reinterpret_cast<void*>(SIG_DFL) || h == reinterpret_cast<void*>(SIG_IGN)) continue;
    if ((ka.flags & SA_RESTART) == 0) return false;
  }
  return true;
}

// After a blocking call's wait returned w with `done` bytes moved so far:
// whether to go on (data, room, or a signal the kernel would restart the
// call for), or stop with *result set as the kernel would (a timeout is
// EAGAIN, an interrupting signal EINTR; either only if nothing moved).
bool KeepWaiting(int w, std::size_t done, std::int64_t timeout_ns, ssize_t* result) {
  if (w == -ETIMEDOUT || w == -EAGAIN) {
    if (done == 0) *result = -EAGAIN;
    return false;
  }
  if (w == -EINTR) {
    if (done == 0 && RestartAfterSignal(timeout_ns)) return true;
    if (done == 0) *result = -EINTR;
    return false;
  }
  return true;
}

void RaiseSigpipe(int flags) {
  if ((flags & MSG_NOSIGNAL) == 0) {
    // The kernel sends SIGPIPE to the calling thread.
    syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), SIGPIPE);
  }
}

std::size_t IovLen(const iovec* iov, int iovcnt) {
  std::size_t n = 0;
  for (int i = 0; i < iovcnt; ++i) n += iov[i].iov_len;
  return n;
}

// Copies (iov, iovcnt) advanced by n bytes into scratch, at most
// kScratchIov entries: a longer vector is moved a window at a time (a short
// transfer is legal, and the callers loop), which keeps the stack small for
// calls made from signal handlers on an alternate stack.
constexpr int kScratchIov = 64;
int Advance(const iovec* iov, int iovcnt, std::size_t n, iovec* scratch) {
  int out = 0;
  for (int i = 0; i < iovcnt && out < kScratchIov; ++i) {
    if (n >= iov[i].iov_len) {
      n -= iov[i].iov_len;
      continue;
    }
    scratch[out].iov_base = static_cast<char*>(iov[i].iov_base) + n;
    scratch[out].iov_len = iov[i].iov_len - n;
    n = 0;
    ++out;
  }
  return out;
}

constexpr int kMaxIov = 1024;  // IOV_MAX

transport::WaitOptions WaitFor(const Connection& c, int fd, std::int64_t timeout_ns,
                               std::int64_t start_ns) {
  transport::WaitOptions w;
  w.liveness_fd = fd;
  w.interrupt_counter = SignalEpochOfThisThread();
  w.interrupt_epoch = w.interrupt_counter->load(std::memory_order_relaxed);
  w.liveness_fd_override = &c.held_fd;
  w.own_cpu = c.rx.waiter_cpu();
  w.peer_cpu = c.tx.waiter_cpu();
  if (timeout_ns > 0) {
    std::int64_t left = timeout_ns - (NowNs() - start_ns);
    w.timeout_ns = left > 0 ? left : 1;
  } else {
    w.timeout_ns = -1;
  }
  return w;
}

// ---------------------------------------------------------------- close under a waiting call
// (Connection::held_fd.) A call that is about to wait counts itself in
// c.waiting until it returns; close() of the last fd that finds a waiter
// duplicates the Unix socket into held_fd and leaves the release to the last
// waiter. Dekker pair: the closer stores release_pending then loads waiting,
// a waiter decrements waiting then loads release_pending (all seq_cst), so
// at least one of them sees the other and FinishRelease runs exactly once.

void ConnRelease(Connection& c);

// Connection::door_dup: at most kMaxDoorDups at once in a process, so that
// a program with many connections does not hold twice as many fds (its
// RLIMIT_NOFILE counts them all). A fork child's count is its copy of the
// parent's, as are its connections.
constexpr int kMaxDoorDups = 64;
std::atomic<int> g_door_dups{0};

// Keeps the hidden fd h as c's door_dup, or closes it (too many held).
void KeepDoorDup(Connection& c, int h) {
  if (g_door_dups.fetch_add(1, std::memory_order_relaxed) < kMaxDoorDups) {
    c.door_dup.store(h, std::memory_order_relaxed);
    return;
  }
  g_door_dups.fetch_sub(1, std::memory_order_relaxed);
  DOORWAY_REAL(close)(h);
}

// c's door_dup, now the caller's (-1: none).
int TakeDoorDup(Connection& c) {
  int h = c.door_dup.exchange(-1, std::memory_order_acq_rel);
  if (h >= 0) g_door_dups.fetch_sub(1, std::memory_order_relaxed);
  return h;
}

void CloseDoorDup(Connection& c) {
  if (int h = TakeDoorDup(c); h >= 0) DOORWAY_REAL(close)(h);
}

// c's end of its door socket is not kept (reuse.h): the client learns it
// from the segment (a server's only), so that it does not keep its own end
// either; then the hidden duplicate goes.
void DropDoor(Connection& c) {
  if (c.role == Role::kServer) c.seg.MarkDoorDropped();
  CloseDoorDup(c);
}

void FinishRelease(Connection& c) {
  if (!c.release_pending.exchange(false, std::memory_order_acq_rel)) return;
  ConnRelease(c);
  DropDoor(c);
  int h = c.held_fd.exchange(-1, std::memory_order_acq_rel);
  if (h >= 0) DOORWAY_REAL(close)(h);
}

void CountWaiter(Connection& c, bool* counted) {
  if (*counted) return;
  *counted = true;
  c.waiting.fetch_add(1, std::memory_order_seq_cst);
}

void WaiterDone(Connection& c) {
  c.waiting.fetch_sub(1, std::memory_order_seq_cst);
  if (c.release_pending.load(std::memory_order_seq_cst) &&
      c.waiting.load(std::memory_order_seq_cst) == 0) {
    FinishRelease(c);
  }
}

// The fd to send doorbells on: the caller's, unless another thread closed
// it under the call (then the number may already name another file).
int FdFor(const Connection& c, int fd) {
  int h = c.held_fd.load(std::memory_order_acquire);
  return h >= 0 ? h : fd;
}

// SendDoorbell on c's socket (FdFor), looked up only when a doorbell is due.
inline void SendDoorbell(transport::Ring& ring, const Connection& c, int fd) {
  if (__builtin_expect(ring.TakeDoorbell(), 0)) RingDoorbell(FdFor(c, fd));
}

// Blocking waits notice a dead peer through their liveness slices, and
// poll/epoll through the door socket they sleep on; a caller that never
// waits (a non-blocking reader or writer, poll with a zero timeout) saw a
// peer that died or exited without closing as silent forever, where TCP
// says EOF or ECONNRESET. When such a caller finds nothing to do it polls
// the door socket, at most every kIdleLivenessNs per connection: a clock
// read per EAGAIN, at most one poll(2) per 10 ms.
constexpr std::int64_t kIdleLivenessNs = 10'000'000;
bool PeerGoneRarely(Connection& c, int fd) {
  if (fd < 0) return false;
  std::int64_t now = NowNs();
  if (now < c.next_liveness_ns.load(std::memory_order_relaxed)) return false;
  c.next_liveness_ns.store(now + kIdleLivenessNs, std::memory_order_relaxed);
  if (!transport::PeerGone(fd)) return false;
  NotePeerHangup(c);
  return true;
}

// ---------------------------------------------------------------- data path

// The peer's process let go of the connection without closing it (it
// exited or died): TCP's close sends RST instead of FIN when the socket
// still held unread data, so the connection is reset if bytes we sent are
// still in the ring, else closed (EOF).
bool PeerLeftUnread(Connection& c) {
  return c.tx.ReaderState() == transport::EndState::kOpen && !c.tx.WriteReady(c.tx.capacity());
}

// ConnRecvT<true> / ConnSendT<true> are the same code for one buffer
// (read, recv, write, send): the compiler drops the vector paths, and the
// whole call is inlined into ManagedRead/ManagedWrite (a 64 B message costs
// a few hundred instructions, and each nested call's prologue was ~10%).
#define DOORWAY_DATA_PATH inline __attribute__((always_inline))

// A SignalSection, or nothing when the caller holds one (a nested section
// costs two more thread-local stores per call).
template <bool kActive>
struct MaybeSignalSection {
  MaybeSignalSection() {
    if constexpr (kActive) EnterSignalSection();
  }
  ~MaybeSignalSection() {
    if constexpr (kActive) LeaveSignalSection();
  }
  MaybeSignalSection(const MaybeSignalSection&) = delete;
  MaybeSignalSection& operator=(const MaybeSignalSection&) = delete;
};

// The part of a read after its first attempt: the loop that waits, takes
// more for MSG_WAITALL or a long vector, and turns EOF, resets and errors
// into the kernel's results. Entered with the end's lock held (lrc) inside
// the caller's signal section; `first` is the first attempt's result when
// has_first. Out of line: the first attempt that returns bytes is the data
// path, and this loop's state (waits, the scratch vector) would cost it
// register spills and saves (stores, docs/transport.md "seventh session").
template <bool kOne>
__attribute__((noinline)) ssize_t ConnRecvRest(Connection& c, int fd, const iovec* iov, int iovcnt,
                                               int flags, transport::ShmMutex lock, int lrc,
                                               bool has_first, std::int64_t first) {
  std::size_t want = IovLen(iov, iovcnt);
  bool peek = (flags & MSG_PEEK) != 0;
  bool waitall = (flags & MSG_WAITALL) != 0 && !peek;
  bool dontwait = (flags & MSG_DONTWAIT) != 0 || c.nonblocking.load(std::memory_order_relaxed);
  std::int64_t timeout = c.opts.rcvtimeo_ns.load(std::memory_order_relaxed);
  std::int64_t start = timeout > 0 ? NowNs() : 0;

  iovec scratch[kScratchIov];
  bool counted = false;  // in c.waiting
  std::size_t got = 0;
  ssize_t result = 0;
  for (;;) {
    std::int64_t r;
    if (has_first) {
      r = first;
      has_first = false;
    } else if (peek) {
      r = c.rx.Peek(0, iov, iovcnt);
    } else if (iovcnt == 1) {
      // read(), recv(): the ring's single-buffer call, without the window
      // (a read that filled the buffer has nothing more to take).
      r = c.rx.Read(static_cast<char*>(iov[0].iov_base) + got, iov[0].iov_len - got);
    } else {
      int n = Advance(iov, iovcnt, got, scratch);
      r = c.rx.Read(scratch, n);
      // The window of a long vector filled up: take what else is there now,
      // as the kernel fills the whole vector from what it has.
      if (r > 0 && !waitall && static_cast<std::size_t>(r) == IovLen(scratch, n) &&
          got + static_cast<std::size_t>(r) < want) {
        got += static_cast<std::size_t>(r);
        continue;
      }
    }
    if (r > 0) {
      got += static_cast<std::size_t>(r);
      if (!waitall || got >= want) break;
      continue;
    }
    if (r == 0) {
      // EOF: from a close, or from a wait that found the peer's socket hung
      // up (transport/wait.h marks it closed). A peer that died with our
      // bytes unread is a reset (one poll(2), once per connection).
      if (got == 0 && !peek && PeerLeftUnread(c) && transport::PeerGone(FdFor(c, fd))) {
        NotePeerHangup(c);
        continue;
      }
      break;
    }
    if (r == -EAGAIN) {
      if (got > 0 && !waitall) break;  // the rest of a long vector found nothing more
      if (c.shut_rd.load(std::memory_order_relaxed)) break;
      if (dontwait) {
        if (got == 0 && PeerGoneRarely(c, FdFor(c, fd))) continue;  // the rest, then EOF
        if (got == 0) result = -EAGAIN;
        c.rx_eagain_gen.fetch_add(1, std::memory_order_relaxed);
        break;
      }
      CountWaiter(c, &counted);
      // The epoch before Parked runs the deferred handlers: a signal that
      // came during the copy interrupts this wait, as in the kernel (its
      // signal is pending when the call is about to sleep).
      transport::WaitOptions wo = WaitFor(c, fd, timeout, start);
      Parked parked(lock.word());
      int w = transport::WaitReadable(c.rx, wo, &c.rx_spin);
      if (!KeepWaiting(w, got, timeout, &result)) break;
      continue;
    }
    if (r == -ECONNRESET || r == -EIO) {
      if (r == -EIO) DOORWAY_LOG(kWarn, "fd %d: corrupt shared memory from the peer; reset", fd);
      if (got > 0) break;
      // Like TCP: ECONNRESET once, then EOF.
      if (!c.reset_reported.exchange(true)) result = -ECONNRESET;
      break;
    }
    if (got == 0) result = r;
    break;
  }
  if (got > 0 && !peek) SendDoorbell(c.rx, c, fd);  // room for a writer waiting in poll
  UnlockEnd(lock, c.rx_bias, lrc);
  if (counted) WaiterDone(c);
  return result < 0 ? result : static_cast<ssize_t>(got);
}

template <bool kOne, bool kInSection = false>
DOORWAY_DATA_PATH ssize_t ConnRecvT(Connection& c, int fd, const iovec* iov, int iovcnt,
                                    int flags) {
  if constexpr (kOne) iovcnt = 1;
  if (iovcnt < 0 || iovcnt > kMaxIov) return -EINVAL;
  if (flags & MSG_OOB) return -EINVAL;  // no urgent data ever arrives
  if (flags & MSG_ERRQUEUE) return -EAGAIN;
  if constexpr (kOne) {
    if (iov[0].iov_len == 0) return 0;
  } else {
    if (IovLen(iov, iovcnt) == 0) return 0;
  }

  // Signals that arrive from here on run their handlers when the call
  // returns or waits (signals.h "Critical sections"); kInSection: the
  // caller's section covers this call already.
  MaybeSignalSection<!kInSection> section;
  transport::ShmMutex lock(c.rx.consumer_lock_word());  // c.seg.ConsumerLock, inline
  int lrc = LockEnd(lock, c.rx_bias, c.shared.load(std::memory_order_relaxed));
  if (lrc < 0) return lrc;
  if constexpr (kOne) {
    // read(), recv(): one attempt with the ring's single-buffer call; if it
    // returns bytes that complete the call (no MSG_PEEK, no MSG_WAITALL
    // asking for more), that is the whole read, as in ConnRecvRest.
    if ((flags & MSG_PEEK) == 0) {
      std::int64_t r = c.rx.Read(iov[0].iov_base, iov[0].iov_len);
      if (__builtin_expect(r > 0, 1) &&
          ((flags & MSG_WAITALL) == 0 || static_cast<std::size_t>(r) == iov[0].iov_len)) {
        SendDoorbell(c.rx, c, fd);  // room for a writer waiting in poll
        UnlockEnd(lock, c.rx_bias, lrc);
        return r;
      }
      return ConnRecvRest<kOne>(c, fd, iov, iovcnt, flags, lock, lrc, true, r);
    }
  }
  return ConnRecvRest<kOne>(c, fd, iov, iovcnt, flags, lock, lrc, false, 0);
}

// The reader of c's tx ring closed normally (nothing unread) while this end
// still writes: TCP's CLOSE_WAIT.
bool PeerClosedReading(const Connection& c) {
  return c.tx.WriterState() == transport::EndState::kOpen &&
         c.tx.ReaderState() == transport::EndState::kClosed;
}

// Populating the tx ring's pages ahead of the writer, in its first lap.
// A fresh ring's pages are allocated by the writer's first touch, one fault
// per 4 KiB page, and a reader that follows right behind faults on each page
// again: its fault maps the neighbouring pages too (the kernel's fault-around,
// 64 KiB), but they do not exist yet. With pipelined small messages that is
// the reader's biggest cost outside the program itself (redis-server under
// redis-benchmark -P 16: ~4% of its time in page faults, each ring carrying
// less than one lap per benchmark test; docs/event-loops.md "sixth
// session"). So once a connection has written kPopulateStart bytes, the
// writer populates the pages up to the end of the next kPopulateChunk
// beyond its position (MADV_POPULATE_WRITE: allocated and mapped, one system
// call per chunk instead of a fault per page), and the reader's one fault
// per 64 KiB maps them all. Connections that write less than kPopulateStart
// (most) keep demand paging: no memory beyond what they touch. After the
// first lap every page was touched, and the check costs one compare.
constexpr std::uint64_t kPopulateStart = 32 << 10;
constexpr std::uint64_t kPopulateChunk = 64 << 10;
// Cleared when the kernel lacks MADV_POPULATE_WRITE (before Linux 5.14).
constinit std::atomic<bool> g_populate_ok{true};
#ifdef MADV_POPULATE_WRITE
constexpr int kMadvPopulateWrite = MADV_POPULATE_WRITE;
#else
constexpr int kMadvPopulateWrite = 23;  // Linux 5.14
#endif

__attribute__((noinline)) void PopulateAhead(Connection& c) {
  const std::uint64_t cap = c.tx.capacity();
  // The producer's own copy of its tail (its lock line, in our cache): a
  // hint, read after the write.
  const std::uint64_t pos = c.tx.control()->prod_lock.index.load(std::memory_order_relaxed);
  if (pos >= cap || c.seg.placement().pages != transport::PageKind::kSmall ||
      !g_populate_ok.load(std::memory_order_relaxed)) {
    c.tx_populated.store(cap, std::memory_order_relaxed);  // done (or never)
    return;
  }
  if (pos < kPopulateStart) return;
  const std::uint64_t done = c.tx_populated.load(std::memory_order_relaxed);
  const std::uint64_t target = std::min(cap, (pos & ~(kPopulateChunk - 1)) + 2 * kPopulateChunk);
  if (target <= done) return;
  const std::uint64_t from = std::max(done, pos & ~std::uint64_t{4095});
  c.tx_populated.store(target, std::memory_order_relaxed);
  std::byte* data = static_cast<std::byte*>(c.seg.base()) +
                    c.seg.layout().ring_data_offset[transport::TxRingIndex(c.role)];
  const int saved = errno;  // the write succeeded: errno stays as it was
  if (madvise(data + from, target - from, kMadvPopulateWrite) != 0 && errno == EINVAL) {
    g_populate_ok.store(false, std::memory_order_relaxed);
  }
  errno = saved;
}

// The part of a write after its first attempt (as ConnRecvRest): waits,
// the rest of a partial write, errors. Entered with the end's lock held.
template <bool kOne>
__attribute__((noinline)) ssize_t ConnSendRest(Connection& c, int fd, const iovec* iov, int iovcnt,
                                               int flags, transport::ShmMutex lock, int lrc,
                                               bool has_first, std::int64_t first) {
  std::size_t want = IovLen(iov, iovcnt);
  bool dontwait = (flags & MSG_DONTWAIT) != 0 || c.nonblocking.load(std::memory_order_relaxed);
  std::int64_t timeout = c.opts.sndtimeo_ns.load(std::memory_order_relaxed);
  std::int64_t start = timeout > 0 ? NowNs() : 0;

  iovec scratch[kScratchIov];
  bool counted = false;  // in c.waiting
  std::size_t sent = 0;
  ssize_t result = 0;
  for (;;) {
    std::int64_t r;
    if (has_first) {
      r = first;
      has_first = false;
    } else if (iovcnt == 1) {
      // write(), send(): the ring's single-buffer call.
      r = c.tx.Write(static_cast<const char*>(iov[0].iov_base) + sent, iov[0].iov_len - sent);
    } else {
      int n = Advance(iov, iovcnt, sent, scratch);
      r = c.tx.Write(scratch, n);
    }
    if (r > 0) {
      sent += static_cast<std::size_t>(r);
      SendDoorbell(c.tx, c, fd);
      if (sent >= want) break;
      continue;
    }
    if (r == -EAGAIN) {
      if (dontwait) {
        if (sent == 0 && PeerGoneRarely(c, FdFor(c, fd))) continue;  // now EPIPE
        if (sent == 0) result = -EAGAIN;
        c.tx_eagain_gen.fetch_add(1, std::memory_order_relaxed);
        // An epoll set owes an edge-triggered EPOLLOUT now, when room comes:
        // ring for it (epoll.cc Arm leaves a writable member's room doorbell
        // unarmed). Room already back: no doorbell will come for it, so the
        // sets look at their members.
        if (c.epoll_regs.load(std::memory_order_relaxed) > 0) {
          NoteArmed(c);
          if (c.tx.ArmWriteDoorbell(1)) NoteEpollChange(-1);
        }
        break;
      }
      CountWaiter(c, &counted);
      transport::WaitOptions wo = WaitFor(c, fd, timeout, start);  // before Parked: ConnRecv
      Parked parked(lock.word());
      int w = transport::WaitWritable(c.tx, 1, wo, &c.tx_spin);
      if (!KeepWaiting(w, sent, timeout, &result)) break;
      continue;
    }
    if (sent > 0) break;
    if (r == -EPIPE && PeerClosedReading(c) && !c.reset_reported.exchange(true)) {
      // TCP in CLOSE_WAIT takes the first send after the peer's close (the
      // bytes are dropped); the peer's RST to it makes later sends EPIPE.
      sent = want;
      break;
    }
    if (r == -EPIPE) {
      RaiseSigpipe(flags);
      result = -EPIPE;
    } else if (r == -ECONNRESET || r == -EIO) {
      // TCP reports the reset once, then EPIPE.
      if (!c.reset_reported.exchange(true)) {
        result = -ECONNRESET;
      } else {
        RaiseSigpipe(flags);
        result = -EPIPE;
      }
    } else {
      result = r;
    }
    break;
  }
  UnlockEnd(lock, c.tx_bias, lrc);
  if (counted) WaiterDone(c);
  // After the unlock: the bytes are published and the doorbell sent.
  if (__builtin_expect(sent > 0 && c.tx_populated.load(std::memory_order_relaxed) < c.tx.capacity(),
                       0)) {
    PopulateAhead(c);
  }
  return result < 0 ? result : static_cast<ssize_t>(sent);
}

template <bool kOne, bool kInSection = false>
DOORWAY_DATA_PATH ssize_t ConnSendT(Connection& c, int fd, const iovec* iov, int iovcnt,
                                    int flags) {
  if constexpr (kOne) iovcnt = 1;
  if (iovcnt < 0 || iovcnt > kMaxIov) return -EINVAL;
  if (flags & MSG_OOB) return -EOPNOTSUPP;
  if (c.shut_wr.load(std::memory_order_relaxed)) {
    RaiseSigpipe(flags);
    return -EPIPE;
  }
  if constexpr (kOne) {
    if (iov[0].iov_len == 0) return 0;
  } else {
    if (IovLen(iov, iovcnt) == 0) return 0;
  }

  MaybeSignalSection<!kInSection> section;              // as in ConnRecvT
  transport::ShmMutex lock(c.tx.producer_lock_word());  // c.seg.ProducerLock, inline
  int lrc = LockEnd(lock, c.tx_bias, c.shared.load(std::memory_order_relaxed));
  if (lrc < 0) return lrc;
  if constexpr (kOne) {
    // write(), send(): one attempt with the ring's single-buffer call; if
    // it took every byte, that is the whole write, as in ConnSendRest.
    std::int64_t r = c.tx.Write(iov[0].iov_base, iov[0].iov_len);
    if (__builtin_expect(r > 0 && static_cast<std::size_t>(r) == iov[0].iov_len, 1)) {
      SendDoorbell(c.tx, c, fd);
      UnlockEnd(lock, c.tx_bias, lrc);
      // After the unlock: the bytes are published and the doorbell sent.
      if (__builtin_expect(c.tx_populated.load(std::memory_order_relaxed) < c.tx.capacity(), 0)) {
        PopulateAhead(c);
      }
      return r;
    }
    return ConnSendRest<kOne>(c, fd, iov, iovcnt, flags, lock, lrc, true, r);
  }
  return ConnSendRest<kOne>(c, fd, iov, iovcnt, flags, lock, lrc, false, 0);
}

__attribute__((noinline)) ssize_t ConnRecv(Connection& c, int fd, const iovec* iov, int iovcnt,
                                           int flags) {
  return iovcnt == 1 ? ConnRecvT<true>(c, fd, iov, 1, flags)
                     : ConnRecvT<false>(c, fd, iov, iovcnt, flags);
}

__attribute__((noinline)) ssize_t ConnSend(Connection& c, int fd, const iovec* iov, int iovcnt,
                                           int flags) {
  return iovcnt == 1 ? ConnSendT<true>(c, fd, iov, 1, flags)
                     : ConnSendT<false>(c, fd, iov, iovcnt, flags);
}

void ConnShutdownWrite(Connection& c, int fd, bool reset) {
  if (c.shut_wr.exchange(true) && !reset) return;
  SignalSection section;
  transport::ShmMutex lock = c.seg.ProducerLock(transport::TxRingIndex(c.role));
  int lrc = LockEnd(lock, c.tx_bias, c.shared.load(std::memory_order_relaxed));
  if (lrc < 0) return;
  c.tx.ShutdownWrite(reset);
  if (fd >= 0) SendDoorbell(c.tx, fd);
  UnlockEnd(lock, c.tx_bias, lrc);
}

// The last fd of c in this process is going away.
void ConnRelease(Connection& c) {
  if (c.shared.load(std::memory_order_relaxed)) return;
  // Unread data, or SO_LINGER with a zero timeout: the peer gets a reset,
  // as TCP sends RST in both cases.
  // Queued, not Readable: no lock is held here (a thread still inside a
  // read of this connection owns the consumer's cache).
  bool unread = c.rx.Queued() > 0 || (c.opts.linger_onoff.load(std::memory_order_relaxed) != 0 &&
                                      c.opts.linger_secs.load(std::memory_order_relaxed) == 0);
  c.shut_wr.store(true, std::memory_order_relaxed);
  c.tx.ShutdownWrite(unread);
  c.rx.ShutdownRead(unread);
}

// ---------------------------------------------------------------- setup

// A buffer size the program set (it differs from a fresh socket's) sizes
// the ring; otherwise the transport's default.
std::uint64_t RingCapacityFor(int bytes, int kernel_default) {
  if (bytes <= 0 || bytes == kernel_default) return transport::kDefaultRingCapacity;
  return transport::RingCapacityFor(static_cast<std::uint64_t>(bytes));
}

// A fresh TCP socket's SO_SNDBUF/SO_RCVBUF: what "not set by the program" looks like.
void KernelDefaultBuffers(int* snd, int* rcv) {
  static std::atomic<int> s{-1}, r{-1};
  if (s.load(std::memory_order_relaxed) < 0) {
    int fd = DOORWAY_REAL(socket)(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int v = 0;
    socklen_t len = sizeof(v);
    if (fd >= 0 && DOORWAY_REAL(getsockopt)(fd, SOL_SOCKET, SO_SNDBUF, &v, &len) == 0) s = v;
    len = sizeof(v);
    if (fd >= 0 && DOORWAY_REAL(getsockopt)(fd, SOL_SOCKET, SO_RCVBUF, &v, &len) == 0) r = v;
    if (fd >= 0) DOORWAY_REAL(close)(fd);
  }
  *snd = s.load(std::memory_order_relaxed);
  *rcv = r.load(std::memory_order_relaxed);
}

void InitConnection(Connection& c, transport::Segment seg, Role role) {
  c.seg = std::move(seg);
  c.role = role;
  StatsOpen(c);  // the rings count into the connection's stats slot
  c.tx = c.seg.MakeTxRing(role, StatsTx(c));
  c.rx = c.seg.MakeRxRing(role, StatsRx(c));
  // NUMA placement matters only with more than one node; mbind with
  // MPOL_MF_MOVE costs ~0.2 ms, a large share of a connection's setup.
  static const bool kMultiNode = numa_available() >= 0 && numa_max_node() > 0;
  if (kMultiNode) (void)c.seg.BindIncomingRing(role);
}

// Presents ep in the family of a socket of `domain` (a v6 socket sees v4
// peers as ::ffff:a.b.c.d).
Endpoint AsDomain(const Endpoint& ep, int domain) {
  if (domain != AF_INET6 || ep.family != AF_INET) return ep;
  Endpoint m;
  m.family = AF_INET6;
  m.port = ep.port;
  m.addr[10] = 0xff;
  m.addr[11] = 0xff;
  memcpy(m.addr + 12, ep.addr, 4);
  return m;
}

// The address the kernel would pick as the source for a local destination.
Endpoint SourceFor(const Endpoint& dest_in, int domain) {
  Endpoint dest = Unmapped(dest_in);
  Endpoint src;
  src.family = dest.family;
  if (IsLoopback(dest)) {
    if (dest.family == AF_INET) {
      src.addr[0] = 127;
      src.addr[3] = 1;
    } else {
      src.addr[15] = 1;
    }
  } else if (IsLocalInterfaceAddress(dest)) {
    memcpy(src.addr, dest.addr, 16);
  }
  return AsDomain(src, domain);
}

// The connection's local address: the program's bind, or for a socket the
// program has certainly not bound (`unbound`) the source address and a
// synthesized ephemeral port (spare.h: no bind, so that the socket can be
// reused), or else (a socket of unknown history with no port) a bind to an
// ephemeral port as connect would do.
bool ClaimLocalAddress(int fd, const Endpoint& dest, int domain, bool unbound, Endpoint* local) {
  if (unbound) {
    *local = SourceFor(dest, domain);
    local->port = SynthesizedPort();
    return true;
  }
  sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  Endpoint cur;
  if (DOORWAY_REAL(getsockname)(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return false;
  if (!EndpointFromSockaddr(reinterpret_cast<sockaddr*>(&ss), len, &cur)) return false;
  if (cur.port == 0) {
    Endpoint want = SourceFor(dest, domain);
    socklen_t wl = EndpointToSockaddr(want, &ss);
    if (DOORWAY_REAL(bind)(fd, reinterpret_cast<sockaddr*>(&ss), wl) != 0) {
      // e.g. IPV6_V6ONLY with a mapped source: any address will do.
      Endpoint any;
      any.family = static_cast<std::uint16_t>(domain);
      wl = EndpointToSockaddr(any, &ss);
      if (DOORWAY_REAL(bind)(fd, reinterpret_cast<sockaddr*>(&ss), wl) != 0) return false;
    }
    len = sizeof(ss);
    if (DOORWAY_REAL(getsockname)(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return false;
    if (!EndpointFromSockaddr(reinterpret_cast<sockaddr*>(&ss), len, &cur)) return false;
    if (IsWildcard(cur)) {
      Endpoint src = SourceFor(dest, domain);
      memcpy(cur.addr, src.addr, 16);
      cur.family = src.family;
    }
  }
  *local = cur;
  return true;
}

// memfd < 0: none (a reused door socket whose previous connection's arena
// holds the new slot too, reuse.h).
int SendHello(int door, const Hello& hello, int memfd) {
  iovec iov{const_cast<Hello*>(&hello), sizeof(hello)};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (memfd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &memfd, sizeof(int));
  }
  ssize_t n = DOORWAY_REAL(sendmsg)(door, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n != static_cast<ssize_t>(sizeof(hello))) return n < 0 ? -errno : -EPROTO;
  return 0;
}

// Receives the Hello and the memfd from an accepted door connection.
// Returns the memfd or -errno.
// -EAGAIN: not there yet (after waiting up to wait_ms).
// kNoMemfd: a Hello without memfd, accepted only with no_memfd_ok (a
// reused door socket, whose previous connection's arena is held).
constexpr int kNoMemfd = -4096;
int ReceiveHello(int conn, Hello* hello, int wait_ms, bool no_memfd_ok = false) {
  const std::int64_t deadline = wait_ms > 0 ? NowNs() + std::int64_t{wait_ms} * 1000000 : 0;
  bool eof_seen = false;
  int doorbells = 0;
  for (int attempt = 0;; ++attempt) {
    iovec iov{hello, sizeof(*hello)};
    alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = DOORWAY_REAL(recvmsg)(conn, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EAGAIN && wait_ms > 0) {
      // The client sends its Hello right after connecting; it may be behind
      // the connection itself. Wait until the deadline, whatever signals
      // (a forking server's SIGCHLD) interrupt the poll meanwhile.
      std::int64_t left_ms = (deadline - NowNs()) / 1000000;
      if (left_ms > 0 && attempt < 1000) {
        pollfd p{conn, POLLIN, 0};
        (void)DOORWAY_REAL(poll)(&p, 1, static_cast<int>(left_ms));
        continue;
      }
    }
    if (n == 0 && !eof_seen) {
      // Linux's non-blocking SEQPACKET recvmsg looks at the queue, then at
      // the peer's shutdown: a client that queues its Hello and closes in
      // between (the server preempted inside the call) reads as end of
      // file with the Hello queued. Traced: 1 connection in ~10^5 lost by
      // a connect+close loop. The shutdown comes after every message the
      // client sent, so a second call finds the Hello if there is one.
      eof_seen = true;
      continue;
    }
    if (n < 0) return -errno;
    if (n == 0) return -ECONNRESET;  // the client went away before its Hello
    // A reused door socket (reuse.h) may still hold doorbells of its
    // previous connection (one byte, no control message) before the Hello.
    if (n == 1 && msg.msg_controllen == 0 && ++doorbells <= 64) continue;
    int memfd = -1;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        if (memfd < 0) {
          memfd = fd;
        } else {
          DOORWAY_REAL(close)(fd);  // a hostile client's extras
        }
      }
    }
    if (n != static_cast<ssize_t>(sizeof(*hello)) || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) ||
        !HelloValid(*hello) || (memfd < 0 && !no_memfd_ok)) {
      if (memfd >= 0) DOORWAY_REAL(close)(memfd);
      return -EPROTO;
    }
    return memfd >= 0 ? memfd : kNoMemfd;
  }
}

void Install(int fd, Ref obj, std::uint32_t tag) {
  if (Connection* c = obj.As<Connection>()) {
    if (c->socket_ino == 0) {
      struct stat st;
      c->socket_ino = fstat(fd, &st) == 0 ? st.st_ino : 0;
    }
    StatsPublish(*c, fd);  // visible in stat
  }
  OnFdAttached(obj);
  bool ok = false;
  Ref old = GlobalTable().Install(fd, std::move(obj), &ok, tag);
  if (old) OnFdDetached(old);
}

// One connection from a door, or -EAGAIN if none is pending (or the one
// pending was unusable: it is dropped and the client sees a reset).
// The listener's sources, as registered in its epoll fd (data).
constexpr unsigned kSourceTcp = 0;
constexpr unsigned kSourceDoor = 1;     // + door index
constexpr unsigned kSourcePending = 3;  // a door connection waiting for its Hello
constexpr unsigned kSourceWake = 4;     // connections on kept door sockets (the wake FIFO)
constexpr unsigned kSourceCount = 5;

// Listener::reused_key's hash of a kept end's slot identity.
std::uint64_t SlotKey(const transport::SlotIdentity& id) {
  return (id.ino * 0x9E3779B97F4A7C15ull) ^ (id.dev << 32) ^ id.offset ^ id.generation;
}

// Parks door connection conn in a free slot of l.pending, watched by the
// listener's epoll fd (listen_fd) for `events` (a kept end, with `reused`,
// by none); false if no slot is free.
// With memfd >= 0, the Hello arrived and the set-up waits for memory: the
// memfd and addresses are stored before the slot publishes conn.
bool Park(Listener& l, int listen_fd, int conn, std::uint32_t events, int memfd, const Hello* hello,
          Listener::Reused* reused = nullptr) {
  // Connections waiting for memory use the first kMaxRetry slots (the only
  // ones with room for a Hello); those waiting for their Hello the others
  // first, from the last.
  for (int k = 0; k < Listener::kMaxPending; ++k) {
    const int i = memfd >= 0 ? k : Listener::kMaxPending - 1 - k;
    if (memfd >= 0 && i >= Listener::kMaxRetry) break;
    std::atomic<int>& slot = l.pending[i];
    int expected = -1;
    // -2: claimed, not yet published (no claimer takes a negative value).
    if (!slot.compare_exchange_strong(expected, -2)) continue;
    const std::uint64_t bit = std::uint64_t{1} << i;
    if (reused != nullptr) {
      l.reused_key[i].store(SlotKey(reused->arena.Identity()), std::memory_order_relaxed);
      l.reused[i] = std::move(*reused);
      l.pending_reused.fetch_or(bit, std::memory_order_relaxed);
    } else {
      l.pending_reused.fetch_and(~bit, std::memory_order_relaxed);
    }
    if (memfd >= 0) {
      l.retry_memfd[i] = memfd;
      l.retry_client[i] = hello->client;
      l.retry_server[i] = hello->server;
      l.retry_offset[i] = hello->segment_offset;
    }
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = kSourcePending | std::uint64_t{static_cast<unsigned>(i)} << 8;
    // A kept end is watched by no set (Listener::wake_rd says why).
    if (reused == nullptr && DOORWAY_REAL(epoll_ctl)(listen_fd, EPOLL_CTL_ADD, conn, &ev) != 0) {
      if (memfd >= 0) l.retry_memfd[i] = -1;
      if (reused != nullptr) l.reused[i] = Listener::Reused{};
      slot.store(-1);
      return false;
    }
    slot.store(conn);  // publishes the fields above (seq_cst store, claimers exchange)
    return true;
  }
  return false;
}

// Parks door connection conn until its Hello arrives; false if no slot.
bool ParkPending(Listener& l, int listen_fd, int conn) {
  return Park(l, listen_fd, conn, EPOLLIN, -1, nullptr);
}

// Takes the connection parked in slot i, or -1 if none (or another thread
// took it); *memfd gets its stored memfd (-1: Hello not received). The slot
// stays claimed (-2: no parker or claimer touches it) until the caller
// stores -1 (done) or the connection back (still waiting for its Hello).
int ClaimParked(Listener& l, int i, int* memfd) {
  std::atomic<int>& slot = l.pending[i];
  int conn = slot.load();
  if (conn < 0 || !slot.compare_exchange_strong(conn, -2)) return -1;
  *memfd = i < Listener::kMaxRetry ? std::exchange(l.retry_memfd[i], -1) : -1;
  return conn;
}

// Completes the accept of door connection conn whose Hello was received
// (memfd >= 0) or not (-errno). Returns the connection's fd; -ENOMEM (or
// -ENFILE) when memory (or the system's file table) is exhausted: the
// connection is parked with its Hello and a later accept completes it, as
// a TCP connection waits in the backlog when the kernel's accept fails so;
// -EAGAIN when it was unusable (it is dropped: the client sees a reset),
// also when out of memory on a listener shared by fork (which never parks)
// or with every parking slot taken.
// has_flags: the SOCK_NONBLOCK/SOCK_CLOEXEC that conn has now.
// reused: what a kept door socket's slot held (reuse.h): with a Hello
// without memfd (kNoMemfd), the slot is in reused->arena.
int FinishDoor(Listener& l, int listen_fd, int conn, const ucred& cred, int memfd,
               const Hello& hello, sockaddr* addr, socklen_t* len, int flags, int has_flags,
               const Listener::Reused* reused = nullptr) {
  transport::Segment seg;
  const char* why = nullptr;
  int retry = 0;  // -errno to return if the connection can wait for memory
  Ref obj;
  if (memfd < 0 && !(memfd == kNoMemfd && reused != nullptr && reused->arena.valid())) {
    why = "bad hello";
  } else if (!(obj = Make<Connection>()) || !GlobalTable().Prepare(conn)) {
    // Prepare: the Install below cannot fail (the fd table's page for conn
    // exists); failing there would leave the program a bare door socket.
    why = "out of memory";
    retry = memfd >= 0 ? -ENOMEM : 0;
  } else if (int rc = memfd >= 0 ? transport::Segment::AttachAt(memfd, hello.segment_offset, &seg,
                                                                IsOwnUid(cred.uid))
                                 : transport::Segment::AttachBeside(reused->arena,
                                                                    hello.segment_offset, &seg);
             rc != 0) {
    // mmap: ENOMEM (memory, RLIMIT_AS, vm.max_map_count), EAGAIN (locked
    // memory), ENFILE; anything else is the client's fault.
    if (memfd >= 0 && (rc == -ENOMEM || rc == -EAGAIN || rc == -ENFILE)) {
      why = "out of memory";
      retry = rc == -ENFILE ? -ENFILE : -ENOMEM;
    } else {
      if (memfd >= 0) DOORWAY_REAL(close)(memfd);
      why = "segment rejected";
    }
  }
  if (why != nullptr) {
    obj.Reset();
    if (retry != 0 && !l.shared.load(std::memory_order_relaxed)) {
      // Parked, it must not leak into a program started by exec meanwhile.
      if ((has_flags & SOCK_CLOEXEC) == 0) DOORWAY_REAL(fcntl)(conn, F_SETFD, FD_CLOEXEC);
      // EPOLLOUT (a door socket has room): the listener stays readable
      // while the connection waits, as a TCP listener with one queued.
      if (Park(l, listen_fd, conn, EPOLLOUT, memfd, &hello)) {
        DOORWAY_LOG(kDebug, "door connection from pid %d waits: %s", static_cast<int>(cred.pid),
                    why);
        return retry;
      }
    }
    if (retry != 0) DOORWAY_REAL(close)(memfd);
    DOORWAY_LOG(kDebug, "door connection from pid %d dropped: %s", static_cast<int>(cred.pid), why);
    DOORWAY_REAL(close)(conn);
    if (reused != nullptr && reused->dup >= 0) DOORWAY_REAL(close)(reused->dup);
    return -EAGAIN;
  }
  Connection& c = *obj.As<Connection>();
  InitConnection(c, std::move(seg), Role::kServer);
  c.recyclable = IsOwnUid(cred.uid);
  c.listener_index = l.registry_index;
  c.listener_serial = l.serial;
  c.peer_uid = cred.uid;
  c.peer_pid = cred.pid;
  if (reused != nullptr) c.socket_ino = reused->ino;
  if (reused != nullptr && reused->dup >= 0) KeepDoorDup(c, reused->dup);
  c.local = AsDomain(hello.server, l.domain);
  c.peer = AsDomain(hello.client, l.domain);
  c.opts.CopyFrom(l.opts);
  bool nonblock = (flags & SOCK_NONBLOCK) != 0;
  c.nonblocking.store(nonblock, std::memory_order_relaxed);
  if ((flags ^ has_flags) & SOCK_NONBLOCK) {
    DOORWAY_REAL(fcntl)(conn, F_SETFL, nonblock ? O_RDWR | O_NONBLOCK : O_RDWR);
  }
  if ((flags ^ has_flags) & SOCK_CLOEXEC) {
    DOORWAY_REAL(fcntl)(conn, F_SETFD, (flags & SOCK_CLOEXEC) ? FD_CLOEXEC : 0);
  }
  Endpoint peer = c.peer;
  Install(conn, std::move(obj), kTagConnection);
  CopyOut(peer, addr, len);
  StatsNoteAccelerated(true);
  DOORWAY_LOG(kDebug, "fd %d: accelerated connection accepted (peer pid %d)", conn,
              static_cast<int>(cred.pid));
  return conn;
}

// One connection from a door, or -EAGAIN if none is pending (or the one
// pending was unusable: it is dropped and the client sees a reset, or its
// Hello is late: it is parked).
int AcceptDoor(Listener& l, int listen_fd, int door, sockaddr* addr, socklen_t* len, int flags) {
  // A door connection needs two descriptors: its socket, and the memfd that
  // arrives with the Hello, which the kernel drops if there is no room for
  // it (the client would then see a reset). Keep one free across the
  // accept, so that running out of fds leaves the connection pending and
  // accept says EMFILE, as the kernel's accept does.
  int reserve = DOORWAY_REAL(fcntl)(door, F_DUPFD_CLOEXEC, 0);
  if (reserve < 0) return -errno;
  // With the program's flags: the Hello is read with MSG_DONTWAIT anyway.
  const int has_flags = flags & (SOCK_CLOEXEC | SOCK_NONBLOCK);
  int conn = DOORWAY_REAL(accept4)(door, nullptr, nullptr, has_flags);
  int accept_errno = errno;
  DOORWAY_REAL(close)(reserve);
  if (conn < 0) return accept_errno == EAGAIN ? -EAGAIN : -accept_errno;
  ucred cred{};
  socklen_t cl = sizeof(cred);
  if (DOORWAY_REAL(getsockopt)(conn, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 ||
      !UidAllowed(cred.uid)) {
    DOORWAY_LOG(kDebug, "door connection from pid %d dropped: peer uid not allowed",
                static_cast<int>(cred.pid));
    DOORWAY_REAL(close)(conn);
    return -EAGAIN;
  }
  // The client sends its Hello right after its connect: wait for it a
  // little (a TCP connection in the accept queue is complete, and a program
  // told by poll that the listener is readable expects accept to succeed);
  // a client held up longer (a loaded machine) is parked, not dropped.
  // A listener shared with other processes (fork) never parks: its epoll
  // fd is theirs too, and a parked connection's readiness would wake them
  // for a connection only this process can complete. It waits longer.
  Hello hello{};
  const bool shared = l.shared.load(std::memory_order_relaxed);
  int memfd = ReceiveHello(conn, &hello, shared ? 1000 : 200);
  if (memfd == -EAGAIN && !shared) {
    // Parked, it must not leak into a program started by exec meanwhile.
    if ((has_flags & SOCK_CLOEXEC) == 0) DOORWAY_REAL(fcntl)(conn, F_SETFD, FD_CLOEXEC);
    if (ParkPending(l, listen_fd, conn)) return -EAGAIN;
    return FinishDoor(l, listen_fd, conn, cred, memfd, hello, addr, len, flags,
                      has_flags | SOCK_CLOEXEC);
  }
  return FinishDoor(l, listen_fd, conn, cred, memfd, hello, addr, len, flags, has_flags);
}

// A parked door connection whose Hello has arrived (or that waits for
// memory: tried again), or -EAGAIN (or -ENOMEM/-ENFILE if memory is still
// short: it stays parked).
// slots: the pending slots the listener's epoll fd reported (bit i: slot
// i; never a kept end's, which no set watches).
int AcceptPending(Listener& l, int listen_fd, sockaddr* addr, socklen_t* len, int flags,
                  std::uint64_t slots) {
  for (int i = 0; i < Listener::kMaxPending; ++i) {
    if ((slots & (std::uint64_t{1} << i)) == 0) continue;
    int memfd = -1;
    int conn = ClaimParked(l, i, &memfd);  // no other thread looks at it now
    if (conn < 0) continue;
    if (l.reused != nullptr &&
        (l.pending_reused.load(std::memory_order_relaxed) & (std::uint64_t{1} << i)) != 0) {
      l.pending[i].store(conn);  // a kept end parked since the report: its record takes it
      continue;
    }
    Hello hello{};
    if (memfd >= 0) {
      hello.client = l.retry_client[i];
      hello.server = l.retry_server[i];
      hello.segment_offset = l.retry_offset[i];
    } else if ((memfd = ReceiveHello(conn, &hello, 0)) == -EAGAIN) {
      l.pending[i].store(conn);  // back (the slot stayed claimed)
      continue;
    }
    l.pending[i].store(-1);
    (void)DOORWAY_REAL(epoll_ctl)(listen_fd, EPOLL_CTL_DEL, conn, nullptr);
    ucred cred{};
    socklen_t cl = sizeof(cred);
    (void)DOORWAY_REAL(getsockopt)(conn, SOL_SOCKET, SO_PEERCRED, &cred, &cl);
    // Its flags are unknown here (another accept call parked it): set both.
    int has_flags = ~flags & (SOCK_CLOEXEC | SOCK_NONBLOCK);
    int c = FinishDoor(l, listen_fd, conn, cred, memfd, hello, addr, len, flags, has_flags);
    if (c != -EAGAIN) return c;
  }
  return -EAGAIN;
}

// Closes the parked kept ends whose client closed its end for good (it
// exited, or dropped the socket from its pool): no epoll set watches them
// (Listener::wake_rd), so without this look each would hold an fd (at most
// kMaxPending) until the listener closes. One poll(2) over all of them;
// called by accept before it sleeps and when parking finds no free slot.
//
// A client that exits right after starting connections on kept sockets
// leaves their records in the FIFO and their ends hung up: those
// connections are still to be accepted (they read as ended, as a TCP
// connection whose client closed in the backlog). A record is written
// before its end hangs up, so an end seen hung up with the FIFO empty
// afterwards has none pending, unless an accept is between reading its
// record and claiming the end (Listener::records_inflight, counted before
// the read): then nothing is closed this time.
void ReapKeptEnds(Listener& l) {
  const std::uint64_t kept = l.pending_reused.load(std::memory_order_relaxed);
  if (kept == 0 || l.reused == nullptr) return;
  pollfd p[Listener::kMaxPending];
  int slot[Listener::kMaxPending];
  int n = 0;
  for (int i = 0; i < Listener::kMaxPending; ++i) {
    if ((kept & (std::uint64_t{1} << i)) == 0) continue;
    // A number read without claiming the slot: polled only (harmless if
    // stale); closed only if the claim below returns the same number.
    int fd = l.pending[i].load(std::memory_order_relaxed);
    if (fd < 0) continue;
    p[n] = {fd, POLLRDHUP, 0};
    slot[n++] = i;
  }
  // Raw: poll() is doorway's, and these sockets are no program's.
  if (n == 0 || syscall(SYS_poll, p, static_cast<nfds_t>(n), 0) <= 0) return;
  bool any = false;
  for (int k = 0; k < n; ++k) any = any || (p[k].revents & (POLLHUP | POLLERR | POLLRDHUP)) != 0;
  if (!any) return;
  pollfd w{l.wake_rd, POLLIN, 0};
  if (syscall(SYS_poll, &w, 1, 0) != 0 || l.records_inflight.load() != 0) return;
  for (int k = 0; k < n; ++k) {
    // POLLNVAL: not an open fd (stale number): nothing to close.
    if ((p[k].revents & (POLLHUP | POLLERR | POLLRDHUP)) == 0) continue;
    const int i = slot[k];
    int memfd = -1;
    int conn = ClaimParked(l, i, &memfd);
    if (conn < 0) continue;
    if (conn != p[k].fd ||
        (l.pending_reused.load(std::memory_order_relaxed) & (std::uint64_t{1} << i)) == 0) {
      l.pending[i].store(conn);  // parked again since the poll: not the one that hung up
      continue;
    }
    DOORWAY_REAL(close)(conn);
    l.reused[i] = Listener::Reused{};
    l.pending[i].store(-1);
  }
}

// The parked kept end whose previous connection was on slot `id`, claimed
// (its slot index in *slot), or -1 (none: its server end was closed since
// the client looked, by ReapKeptEnds or DropParked, or the record is
// forged). A slot another thread holds for a moment (ReapKeptEnds looking,
// or a parker publishing it) is waited for, bounded.
int ClaimKept(Listener& l, const transport::SlotIdentity& id, int* slot) {
  const std::uint64_t key = SlotKey(id);
  const std::uint64_t kept = l.pending_reused.load(std::memory_order_relaxed);
  for (int i = 0; i < Listener::kMaxPending; ++i) {
    if ((kept & (std::uint64_t{1} << i)) == 0 ||
        l.reused_key[i].load(std::memory_order_relaxed) != key) {
      continue;
    }
    for (int tries = 0; tries < 10000; ++tries) {
      int memfd = -1;
      int conn = ClaimParked(l, i, &memfd);
      if (conn >= 0) {
        if ((l.pending_reused.load(std::memory_order_relaxed) & (std::uint64_t{1} << i)) != 0 &&
            l.reused[i].arena.Identity() == id) {
          *slot = i;
          return conn;
        }
        l.pending[i].store(conn);  // another end with the same hash
        break;
      }
      if (l.pending[i].load() != -2) break;
      sched_yield();
    }
  }
  return -1;
}

// A stray write into the wake FIFO (a program of the user writing it, not
// a client's record) puts every record after it out of step: what is
// there is dropped. The connections of records dropped so (never a
// client's own doing) stay unaccepted, as in a TCP backlog nobody
// accepts from; their clients see a reset once they close the kept socket.
void DiscardWakes(const Listener& l) {
  char buf[4096];
  for (int i = 0; i < 64 && DOORWAY_REAL(read)(l.wake_rd, buf, sizeof(buf)) > 0; ++i) {
  }
}

// One connection announced by a record in the listener's wake FIFO
// (WakeRecord), or -EAGAIN: none was there (*empty), or it was unusable
// (dropped: a record whose parked end is gone, a bad Hello).
int AcceptRecord(Listener& l, int listen_fd, sockaddr* addr, socklen_t* len, int flags,
                 bool* empty) {
  *empty = false;
  WakeRecord rec;
  // seq_cst, before the read: ReapKeptEnds's pairing load comes after its
  // look at the FIFO.
  l.records_inflight.fetch_add(1);
  // Records are written whole (WakeListener) and read one at a time, so a
  // read never splits one, with any number of accepting threads.
  ssize_t n = DOORWAY_REAL(read)(l.wake_rd, &rec, sizeof(rec));
  int i = -1;
  int conn = -1;
  const bool good = n == static_cast<ssize_t>(sizeof(rec)) && rec.magic == WakeRecord::kMagic &&
                    (rec.kind == WakeRecord::kHelloHere || rec.kind == WakeRecord::kHelloOnSocket);
  if (good && l.reused_key != nullptr) conn = ClaimKept(l, rec.prev, &i);
  l.records_inflight.fetch_sub(1);
  if (n < 0) {
    *empty = errno == EAGAIN;
    return -EAGAIN;
  }
  if (!good) {
    DiscardWakes(l);
    return -EAGAIN;
  }
  if (conn < 0) {
    DOORWAY_LOG(kDebug, "wake record for no parked door socket dropped");
    return -EAGAIN;
  }
  Hello hello = rec.hello;
  int memfd = kNoMemfd;
  if (rec.kind == WakeRecord::kHelloOnSocket) {
    // The client writes the record, then the Hello: it may be on its way.
    memfd = ReceiveHello(conn, &hello, 200);
  } else if (!HelloValid(hello)) {
    memfd = -EPROTO;
  }
  Listener::Reused info = std::move(l.reused[i]);
  l.pending[i].store(-1);
  ucred cred{};
  cred.uid = info.uid;
  cred.pid = info.pid;
  const int nonblock = info.nonblock ? SOCK_NONBLOCK : 0;
  int has_flags = SOCK_CLOEXEC | nonblock;  // hidden ends are close-on-exec
  if (memfd >= 0 || memfd == kNoMemfd) {
    // A kept end lives at a high number (reuse.h); accept gives the lowest
    // free one, as the kernel's.
    int low = DOORWAY_REAL(fcntl)(conn, (flags & SOCK_CLOEXEC) ? F_DUPFD_CLOEXEC : F_DUPFD, 0);
    if (low >= 0) {
      // The hidden end stays (Connection::door_dup) unless the Hello brought
      // a memfd (a connection that may wait for memory is parked by its fd).
      if (memfd == kNoMemfd) {
        info.dup = conn;
      } else {
        DOORWAY_REAL(close)(conn);
      }
      conn = low;
      has_flags = (flags & SOCK_CLOEXEC) | nonblock;
    }
  }
  return FinishDoor(l, listen_fd, conn, cred, memfd, hello, addr, len, flags, has_flags, &info);
}

// Which of listener fd's sources have a pending connection, waiting up to
// timeout_ms (0: just look; -1: forever) for one: a bit per source, or
// -errno (-EINTR).
// *pending_slots: which pending slots (Park) have something.
int ReadySources(int fd, int timeout_ms, std::uint64_t* pending_slots) {
  epoll_event ev[8];
  int n = DOORWAY_REAL(epoll_wait)(fd, ev, 8, timeout_ms);
  if (n < 0) return -errno;
  int mask = 0;
  *pending_slots = 0;
  for (int i = 0; i < n; ++i) {
    const std::uint64_t src = ev[i].data.u64 & 0xff;
    if (src >= kSourceCount) continue;
    mask |= 1 << src;
    const std::uint64_t slot = ev[i].data.u64 >> 8;
    if (src == kSourcePending && slot < Listener::kMaxPending)
      *pending_slots |= std::uint64_t{1} << slot;
  }
  return mask;
}

bool IsTcpSocket(const SocketFile* f) {
  return f != nullptr && f->type == SOCK_STREAM &&
         (f->domain == AF_INET || f->domain == AF_INET6) && f->protocol == IPPROTO_TCP;
}

}  // namespace

// ---------------------------------------------------------------- objects

void OptionSnapshot::CopyFrom(const OptionSnapshot& o) {
  for (int i = 0; i < kCount; ++i) {
    value[i].store(o.value[i].load(std::memory_order_relaxed), std::memory_order_relaxed);
    known[i].store(o.known[i].load(std::memory_order_relaxed), std::memory_order_relaxed);
  }
  rcvtimeo_ns.store(o.rcvtimeo_ns.load(std::memory_order_relaxed), std::memory_order_relaxed);
  sndtimeo_ns.store(o.sndtimeo_ns.load(std::memory_order_relaxed), std::memory_order_relaxed);
  linger_onoff.store(o.linger_onoff.load(std::memory_order_relaxed), std::memory_order_relaxed);
  linger_secs.store(o.linger_secs.load(std::memory_order_relaxed), std::memory_order_relaxed);
}

void OptionSnapshot::ReadFrom(int fd) {
  for (int i = 0; i < kCount; ++i) {
    int v = 0;
    socklen_t len = sizeof(v);
    bool ok = DOORWAY_REAL(getsockopt)(fd, kOpts[i].level, kOpts[i].name, &v, &len) == 0;
    value[i].store(v, std::memory_order_relaxed);
    known[i].store(ok, std::memory_order_relaxed);
  }
  ReadTimeoutsAndLinger(fd);
}

void OptionSnapshot::ReadTimeoutsAndLinger(int fd) {
  timeval tv{};
  socklen_t len = sizeof(tv);
  if (DOORWAY_REAL(getsockopt)(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, &len) == 0) {
    rcvtimeo_ns.store(TimevalToNs(tv), std::memory_order_relaxed);
  }
  len = sizeof(tv);
  if (DOORWAY_REAL(getsockopt)(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, &len) == 0) {
    sndtimeo_ns.store(TimevalToNs(tv), std::memory_order_relaxed);
  }
  linger lg{};
  len = sizeof(lg);
  if (DOORWAY_REAL(getsockopt)(fd, SOL_SOCKET, SO_LINGER, &lg, &len) == 0) {
    linger_onoff.store(lg.l_onoff, std::memory_order_relaxed);
    linger_secs.store(lg.l_linger, std::memory_order_relaxed);
  }
}

std::uint32_t OptionBit(int level, int name) {
  if ((level == SOL_SOCKET && (name == SO_RCVTIMEO || name == SO_SNDTIMEO || name == SO_LINGER))) {
    return 1u << 30;
  }
  int i = OptIndex(level, name);
  return i >= 0 ? 1u << i : 1u << 31;
}

void OptionSnapshot::ReadChanged(int fd, int domain, std::uint32_t mask) {
  // Kernel defaults per family, read once from a fresh socket.
  static OptionSnapshot defaults[2];
  static std::atomic<bool> have[2];
  int d = domain == AF_INET6 ? 1 : 0;
  if (!have[d].load(std::memory_order_acquire)) {
    int probe = DOORWAY_REAL(socket)(domain, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0) {
      ReadFrom(fd);
      return;
    }
    defaults[d].ReadFrom(probe);
    DOORWAY_REAL(close)(probe);
    // Release pairs with the acquire above: a reader of have[] sees the
    // snapshot. Two threads may both fill it; they write the same values.
    have[d].store(true, std::memory_order_release);
  }
  CopyFrom(defaults[d]);
  if (mask & (1u << 30)) ReadTimeoutsAndLinger(fd);
  if (mask & (1u << 31)) {
    ReadFrom(fd);  // something we do not list: take everything from the kernel
    return;
  }
  for (int i = 0; i < kCount; ++i) {
    if ((mask & (1u << i)) == 0) continue;
    int v = 0;
    socklen_t len = sizeof(v);
    bool ok = DOORWAY_REAL(getsockopt)(fd, kOpts[i].level, kOpts[i].name, &v, &len) == 0;
    value[i].store(v, std::memory_order_relaxed);
    known[i].store(ok, std::memory_order_relaxed);
  }
}

Connection::~Connection() {
  if (int h = held_fd.load(std::memory_order_relaxed); h >= 0) DOORWAY_REAL(close)(h);
  CloseDoorDup(*this);
  StatsClose(*this);
  if (recyclable && !shared.load(std::memory_order_relaxed)) std::move(seg).Recycle(role);
}

namespace {
// Whether some process of this network namespace still has a Unix socket
// bound to `path` (/proc/net/unix lists every bound socket with its path
// last on the line). Fixed buffer, raw system calls: closing a listener may
// happen in a signal handler. On any doubt (cannot read), true.
bool UnixPathHeld(const char* path) {
  int fd = static_cast<int>(syscall(SYS_openat, AT_FDCWD, "/proc/net/unix", O_RDONLY | O_CLOEXEC));
  if (fd < 0) return true;
  const std::size_t plen = strlen(path);
  char buf[4096];
  std::size_t have = 0;
  bool held = false, eof = false;
  while (!held && !(eof && have == 0)) {
    if (!eof && have < sizeof(buf)) {
      long n = syscall(SYS_read, fd, buf + have, sizeof(buf) - have);
      if (n < 0) {
        held = true;
        break;
      }
      if (n == 0) eof = true;
      have += static_cast<std::size_t>(n);
    }
    char* nl = static_cast<char*>(memchr(buf, '\n', have));
    if (nl == nullptr && !eof && have < sizeof(buf)) continue;
    std::size_t len = nl != nullptr ? static_cast<std::size_t>(nl - buf) : have;
    // The line ends with " <path>".
    if (len > plen && buf[len - plen - 1] == ' ' && memcmp(buf + len - plen, path, plen) == 0) {
      held = true;
    }
    std::size_t used = nl != nullptr ? len + 1 : have;
    memmove(buf, buf + used, have - used);
    have -= used;
  }
  syscall(SYS_close, fd);
  return held;
}
}  // namespace

namespace {

// Closes l's parked door connections (their clients see a reset); with
// listen_fd >= 0 also takes them out of the listener's epoll fd (not in a
// fork child, whose epoll fd is its parent's too). Returns how many.
int DropParked(Listener& l, int listen_fd) {
  int n = 0;
  for (int i = 0; i < Listener::kMaxPending; ++i) {
    int memfd = -1;
    int conn = ClaimParked(l, i, &memfd);
    if (conn < 0) continue;
    const bool kept = l.reused != nullptr && (l.pending_reused.load(std::memory_order_relaxed) &
                                              (std::uint64_t{1} << i)) != 0;
    if (listen_fd >= 0 && !kept) {
      (void)DOORWAY_REAL(epoll_ctl)(listen_fd, EPOLL_CTL_DEL, conn, nullptr);
    }
    if (memfd >= 0) DOORWAY_REAL(close)(memfd);
    DOORWAY_REAL(close)(conn);
    if (l.reused != nullptr) l.reused[i] = Listener::Reused{};
    l.pending[i].store(-1);
    ++n;
  }
  return n;
}

}  // namespace

namespace {

// ---------------------------------------------------------------- door socket reuse (reuse.h)

// Live listeners, for a closing server connection to park its door socket
// end with the listener it came from, without keeping the listener alive
// (a reference would keep its doors open after the program closed it).
// Dekker pair: a parker increments users then loads serial, the destructor
// stores serial 0 then loads users (all seq_cst): either the parker sees 0,
// or the destructor waits for it, so nothing is parked after the listener's
// DropParked.
struct ListenerEntry {
  std::atomic<bool> claimed{false};
  std::atomic<std::uint64_t> serial{0};
  std::atomic<int> users{0};
  Listener* listener = nullptr;
};
constexpr int kMaxListeners = 64;
ListenerEntry g_listeners[kMaxListeners];
std::atomic<std::uint64_t> g_listener_serial{0};

void RegisterListener(Listener& l) {
  for (int i = 0; i < kMaxListeners; ++i) {
    ListenerEntry& e = g_listeners[i];
    bool expected = false;
    if (!e.claimed.compare_exchange_strong(expected, true)) continue;
    e.listener = &l;
    l.serial = g_listener_serial.fetch_add(1, std::memory_order_relaxed) + 1;
    l.registry_index = i;
    e.serial.store(l.serial, std::memory_order_seq_cst);
    return;
  }
}

void UnregisterListener(Listener& l) {
  if (l.registry_index < 0) return;
  ListenerEntry& e = g_listeners[l.registry_index];
  e.serial.store(0, std::memory_order_seq_cst);
  // A parker is inside for a few system calls. Bounded: a signal handler
  // that closes the listener while its own thread was interrupted parking
  // would wait forever; it goes on after ~1 s (that end may then stay
  // parked, and its client's next connection on it is lost).
  for (int spins = 0; e.users.load(std::memory_order_seq_cst) != 0 && spins < 100000; ++spins) {
    sched_yield();
  }
  e.listener = nullptr;
  e.claimed.store(false, std::memory_order_release);
  l.registry_index = -1;
}

// Sets up l's side of door socket reuse: the wake FIFO beside its first
// door, registered in the listener's epoll set ep, and the kept ends'
// records. Without them (a FIFO that cannot be made) kept ends are not
// parked: connections simply do not reuse door sockets.
void OpenWake(Listener& l, int ep) {
  char wp[kDoorPathMax + 8];
  if (l.door_fd[0] < 0 || !WakePath(l.door_path[0], wp, sizeof(wp))) return;
  l.reused = new (std::nothrow) Listener::Reused[Listener::kMaxPending];
  l.reused_key = new (std::nothrow) std::atomic<std::uint64_t>[Listener::kMaxPending] {};
  if (l.reused == nullptr || l.reused_key == nullptr) {
    delete[] std::exchange(l.reused, nullptr);
    delete[] std::exchange(l.reused_key, nullptr);
    return;
  }
  // A stale FIFO of a listener that died: its door was just replaced too.
  (void)unlink(wp);
  if (mkfifo(wp, 0600) == 0) {
    // Non-blocking: an open for reading does not wait for a writer; ours
    // comes next, before any client's.
    l.wake_rd = HideFd(static_cast<int>(
        syscall(SYS_openat, AT_FDCWD, wp, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW)));
    l.wake_wr = HideFd(static_cast<int>(
        syscall(SYS_openat, AT_FDCWD, wp, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW)));
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kSourceWake;
  if (l.wake_rd < 0 || l.wake_wr < 0 ||
      DOORWAY_REAL(epoll_ctl)(ep, EPOLL_CTL_ADD, l.wake_rd, &ev) != 0) {
    for (int* f : {&l.wake_rd, &l.wake_wr}) {
      if (*f >= 0) DOORWAY_REAL(close)(std::exchange(*f, -1));
    }
    (void)unlink(wp);
  }
}

// Parks the server end `h` (a hidden duplicate) of c's door socket with the
// listener c came from, for the client's next connection; closes it if it
// cannot.
void ParkForReuse(const Connection& c, int h) {
  bool parked = false;
  if (c.listener_index >= 0 && c.listener_index < kMaxListeners) {
    ListenerEntry& e = g_listeners[c.listener_index];
    e.users.fetch_add(1, std::memory_order_seq_cst);
    if (e.serial.load(std::memory_order_seq_cst) == c.listener_serial) {
      Listener* l = e.listener;
      // The client's doorbells for the old connection go (the parked end
      // must not look ready for them); a client that closed its end for
      // good (not kept: its pool was full) shows as a hang-up after them:
      // no use parking ours.
      // Always drained, even for a connection that never armed a doorbell
      // (then none came): the drain also sees a client that closed its end
      // for good (it exited), which must not be parked. Parked, it would
      // hold an fd until the listener's next accept (churn_test's server
      // kept 8-15 such ends after its clients exited when this drain was
      // skipped).
      bool hung_up = false;
      if (l->wake_rd >= 0 && !l->shared.load(std::memory_order_relaxed) &&
          (DrainDoorbells(h, &hung_up), !hung_up)) {
        Listener::Reused info;
        info.arena = c.seg.SlotRef();
        info.uid = c.peer_uid;
        info.pid = c.peer_pid;
        info.ino = c.socket_ino;
        info.nonblock = c.nonblocking.load(std::memory_order_relaxed);
        parked = Park(*l, -1, h, 0, -1, nullptr, &info);
        if (!parked) {
          // Full: perhaps of ends whose clients are gone.
          ReapKeptEnds(*l);
          parked = Park(*l, -1, h, 0, -1, nullptr, &info);
        }
      }
    }
    e.users.fetch_sub(1, std::memory_order_seq_cst);
  }
  if (!parked) {
    c.seg.MarkDoorDropped();
    DOORWAY_REAL(close)(h);
  }
}

// The last fd of c, `fd`, is being closed: keeps c's door socket for the
// next connection between the same client and listener instead (reuse.h),
// after telling the peer as the socket's hang-up would have. False if c does
// not qualify (the caller releases it as usual).
bool ReuseDoorSocket(Connection& c, int fd) {
  if (!GetConfig().reuse_doors || c.shared.load(std::memory_order_relaxed) || !c.recyclable ||
      c.odd_flags.load(std::memory_order_relaxed) || !c.seg.in_arena() || c.socket_ino == 0 ||
      (c.role == Role::kClient && c.door_id == 0)) {
    return false;
  }
  // A kernel epoll set that holds fd keeps its registration while any fd
  // of the socket is open: it would report the next connection's events
  // under this one's data. Only sockets no set holds are kept.
  if (c.epoll_regs.load(std::memory_order_relaxed) != 0 ||
      c.epoll_parked.load(std::memory_order_relaxed) != 0) {
    return false;
  }
  transport::ArenaSlotRef watch;
  if (c.role == Role::kClient) {
    watch = c.seg.SlotRef();
    // A server that closes its end for good says so in the segment: nothing
    // to keep. One that is done writing (it closed, or it died and a wait
    // of ours saw the hang-up) may have hung up: asked here, so that a dead
    // server's socket is not held. One still writing, the usual case of a
    // client that closes first, is not asked (a system call per
    // connection): if it dies later, TakeClientDoor's poll finds out.
    if (!watch.valid() || c.seg.DoorDropped() ||
        (c.rx.WriterState() != transport::EndState::kOpen && transport::PeerGone(fd))) {
      return false;
    }
  } else if (c.listener_serial == 0) {
    return false;
  }
  int h = TakeDoorDup(c);
  if (h < 0 && (h = DOORWAY_REAL(fcntl)(fd, F_DUPFD_CLOEXEC, HiddenFdBase())) < 0) return false;
  ConnRelease(c);
  // The peer learns of the close from the rings; one waiting in poll/epoll
  // (armed) gets the doorbell the hang-up used to be. No lock, as in
  // ConnRelease: no other call of this process uses c any more.
  SendDoorbell(c.tx, h);
  SendDoorbell(c.rx, h);
  if (c.role == Role::kClient) {
    KeepClientDoor(h, c.socket_ino, c.door_dest, c.door_id, c.door_uid, std::move(watch),
                   c.nonblocking.load(std::memory_order_relaxed),
                   c.ever_armed.load(std::memory_order_relaxed));
  } else {
    ParkForReuse(c, h);
  }
  return true;
}

}  // namespace

Listener::~Listener() {
  UnregisterListener(*this);
  if (tcp_fd >= 0) DOORWAY_REAL(close)(tcp_fd);
  DropParked(*this, -1);
  for (int i = 0; i < 2; ++i) {
    if (door_fd[i] < 0) continue;
    // Only the process that opened a door removes it, and only if no
    // forked process may still be accepting from it.
    bool is_shared = shared.load(std::memory_order_relaxed);
    bool remove = !is_shared && creator == getpid();
    if (remove) unlink(door_path[i]);
    DOORWAY_REAL(close)(door_fd[i]);
    // A door shared by fork: whichever process closes it last removes it,
    // once no process holds a socket bound to its path any more.
    if (is_shared && !UnixPathHeld(door_path[i])) {
      unlink(door_path[i]);
      remove = true;
    }
    // The wake FIFO (reuse.h) goes with the first door.
    char wp[kDoorPathMax + 8];
    if (i == 0 && remove && wake_rd >= 0 && WakePath(door_path[0], wp, sizeof(wp))) unlink(wp);
  }
  for (int f : {wake_rd, wake_wr}) {
    if (f >= 0) DOORWAY_REAL(close)(f);
  }
  delete[] reused;
  delete[] reused_key;
}

void OnFdAttached(const Ref& ref) {
  if (Connection* c = ref.As<Connection>()) c->fds.fetch_add(1, std::memory_order_relaxed);
  if (Listener* l = ref.As<Listener>()) l->fds.fetch_add(1, std::memory_order_relaxed);
}

void OnFdDetached(const Ref& ref, int fd) {
  if (Connection* c = ref.As<Connection>()) {
    // An epoll set holding this fd drops the registration at its next
    // wait (the kernel drops its own when the file closes).
    if (c->epoll_parked.load(std::memory_order_relaxed) != 0) EpollDropParked(*c);
    if (c->epoll_regs.load(std::memory_order_relaxed) > 0) NoteEpollChange(fd);
    // acq_rel: the thread that releases the last fd sees every other
    // thread's use of the connection before shutting it down.
    if (c->fds.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    // Another thread waits in a call on it: as with the kernel, the
    // connection stays open until that call returns (see FinishRelease).
    if (fd >= 0 && c->waiting.load(std::memory_order_seq_cst) > 0) {
      int h = DOORWAY_REAL(fcntl)(fd, F_DUPFD_CLOEXEC, 0);
      if (h >= 0) {
        c->held_fd.store(h, std::memory_order_release);
        c->release_pending.store(true, std::memory_order_seq_cst);
        if (c->waiting.load(std::memory_order_seq_cst) == 0) FinishRelease(*c);
        return;
      }
    }
    if (fd >= 0 && ReuseDoorSocket(*c, fd)) return;
    ConnRelease(*c);
    DropDoor(*c);  // the peer sees the hang-up now, as without it
  }
  // A listener's hidden fds close when the object dies (its destructor):
  // a thread blocked in accept() still holds a reference.
}

void InitInheritedConnection(Connection& c, transport::Segment seg, Role role,
                             const Endpoint& local, const Endpoint& peer, bool shared, int fd) {
  InitConnection(c, std::move(seg), role);
  c.local = local;
  c.peer = peer;
  c.shared.store(shared, std::memory_order_relaxed);
  if (shared) {
    c.rx_bias.Disable();
    c.tx_bias.Disable();
  }
  int fl = DOORWAY_REAL(fcntl)(fd, F_GETFL);
  c.nonblocking.store(fl >= 0 && (fl & O_NONBLOCK) != 0, std::memory_order_relaxed);
  StatsPublish(c, fd);
}

int CollectOwnFds(unsigned first, unsigned last, int* out, int max) {
  int n = 0;
  auto add = [&](int fd) {
    if (fd < 0 || static_cast<unsigned>(fd) < first || static_cast<unsigned>(fd) > last) return;
    for (int i = 0; i < n; ++i) {
      if (out[i] == fd) return;
    }
    if (n == max) return;
    int i = n++;
    while (i > 0 && out[i - 1] > fd) {  // keep sorted
      out[i] = out[i - 1];
      --i;
    }
    out[i] = fd;
  };
  // The log file (DOORWAY_LOG_FILE), when it is ours and not stderr.
  if (int lf = g_log_fd.load(std::memory_order_relaxed); lf > 2) add(lf);
  add(RelayServerFd());
  int pooled[transport::kMaxReuseFds + kSpareSockets + kReusedDoors + kMaxDoorWakes];
  int np = transport::ReusePoolFds(pooled, transport::kMaxReuseFds);
  np += SpareSocketFds(pooled + np, kSpareSockets);
  np += ClientDoorFds(pooled + np, kReusedDoors + kMaxDoorWakes);
  for (int i = 0; i < np; ++i) add(pooled[i]);
  GlobalTable().ForEach([&](int, const Ref& r) {
    if (const Connection* c = r.As<Connection>()) {
      add(c->seg.fd());
      add(c->door_dup.load(std::memory_order_relaxed));
    }
    if (const Listener* l = r.As<Listener>()) {
      add(l->tcp_fd);
      add(l->door_fd[0]);
      add(l->door_fd[1]);
      add(l->wake_rd);
      add(l->wake_wr);
      for (const std::atomic<int>& p : l->pending) add(p.load(std::memory_order_relaxed));
    }
  });
  return n;
}

void ForgetPendingHellos() {
  GlobalTable().ForEach([](int, const Ref& r) {
    if (Listener* l = const_cast<Ref&>(r).As<Listener>()) DropParked(*l, -1);
    // Shared now, so never kept: a copy would only keep the door socket
    // open in a child that closed every fd it knows (closefrom), hiding
    // its parent's death from the peer.
    if (Connection* c = const_cast<Ref&>(r).As<Connection>()) CloseDoorDup(*c);
  });
}

void MarkAllShared() {
  // Parked door connections (Listener::pending) cannot be shared: the other
  // process would be woken for them and could not complete them. The few
  // parked at the moment of a fork are dropped (their clients see a reset).
  GlobalTable().ForEach([](int fd, const Ref& r) {
    if (Listener* l = const_cast<Ref&>(r).As<Listener>()) {
      if (int n = DropParked(*l, fd); n > 0) {
        DOORWAY_LOG(kDebug, "fd %d: %d door connection(s) waiting for a Hello dropped at fork", fd,
                    n);
      }
    }
  });
  // The ends' biases go (transport/lock_bias.h "Revoking without
  // waiting"): the other process takes the ends by the ShmMutex, which a
  // biased owner would not see. One fence for all; a thread parked in a
  // hold (a blocking read) is not waited for: its tid is in the lock word,
  // and its unlock is then the ShmMutex's.
  bool fence = false;
  GlobalTable().ForEach([&fence](int, const Ref& r) {
    if (Connection* c = r.As<Connection>()) {
      c->shared.store(true, std::memory_order_relaxed);
      fence |= c->rx_bias.BeginRevoke();
      fence |= c->tx_bias.BeginRevoke();
    }
    if (Listener* l = r.As<Listener>()) l->shared.store(true, std::memory_order_relaxed);
  });
  if (fence) {
    transport::ProcessFence();
    const std::uint32_t self = transport::ShmMutex::SelfTid();
    GlobalTable().ForEach([self](int, const Ref& r) {
      if (Connection* c = r.As<Connection>()) {
        c->rx_bias.FinishRevoke(c->rx.consumer_lock_word(), self);
        c->tx_bias.FinishRevoke(c->tx.producer_lock_word(), self);
      }
    });
  }
  // Both processes' epoll sets move these connections to their always
  // lists: the other process's waits may take their doorbells.
  NoteEpollChange(-1);
}

bool IsAccelerated(int fd) { return GlobalTable().Tag(fd) == kTagConnection; }

namespace {
// ConnPollEvents' common case without the ends' locks: both halves of both
// rings open and not shut down here. Then the answer is only "data?" and
// "room?", which the shared indices give (seq_cst loads: D2 of the
// doorbell protocol, as the predicates the waits use). The states are read
// after the indices and only ever move away from open, so "open" then was
// open when the indices were read. False: not that case (or corrupt
// indices), ask the rings under their locks. Epoll and poll evaluate every
// hot member at every wait (and spin over them): the two lock round trips
// were the largest part of that.
//
// want_out false: POLLOUT is not computed (nor tx corruption looked for),
// so that the tx ring's consumer index is not read. The peer stores it
// when it reads our message; a waiter spinning on that line takes it
// shared at every look, and the peer's store must then invalidate our
// copy before its reply's stores (queued behind it: x86 stores complete in
// order) become visible, on the path of every round trip.
bool QuickPollEvents(Connection& c, short* ev, bool want_out) {
  using transport::EndState;
  if (c.shut_rd.load(std::memory_order_relaxed) || c.shut_wr.load(std::memory_order_relaxed)) {
    return false;
  }
  const bool rx_any = c.rx.ReadReady();
  const std::int64_t tx_used = want_out ? c.tx.Queued() : 0;
  if (c.rx.WriterState() != EndState::kOpen || c.rx.ReaderState() != EndState::kOpen ||
      c.tx.WriterState() != EndState::kOpen || c.tx.ReaderState() != EndState::kOpen) {
    return false;
  }
  // Open states: rx_any means the indices differ (data, or corruption,
  // which Queued tells apart).
  const std::int64_t rx_used = rx_any ? c.rx.Queued() : 0;
  if (tx_used < 0 || rx_used < 0) return false;
  *ev = static_cast<short>((rx_used > 0 ? POLLIN | POLLRDNORM : 0) |
                           (want_out && static_cast<std::uint64_t>(tx_used) < c.tx.capacity()
                                ? POLLOUT | POLLWRNORM
                                : 0));
  return true;
}
}  // namespace

short ConnPollEvents(Connection& c, int fd, short asked) {
  short ev = 0;
  if (QuickPollEvents(c, &ev, (asked & (POLLOUT | POLLWRNORM)) != 0)) {
    if ((ev & POLLIN) == 0 && PeerGoneRarely(c, fd)) return ConnPollEvents(c);
    return ev;
  }
  char scratch;
  iovec iov{&scratch, 1};
  // Peek reports data (> 0), EOF (0), reset or corruption (< 0 other than
  // -EAGAIN) without consuming anything. Peek and Writable refresh the end's
  // cached index, which the end's lock protects: when another thread (or
  // process) holds it, the lock-free predicates answer instead (data or
  // room, or the end is finished; the closed/reset detail waits for the
  // next poll). Found by tsan (process_threads_linked_test).
  // Held locks inside signal sections: a handler that interrupted us here
  // and read this socket would find the lock taken by its own thread.
  std::int64_t rx;
  transport::ShmMutex rlock = c.seg.ConsumerLock(transport::RxRingIndex(c.role));
  const bool shared = c.shared.load(std::memory_order_relaxed);
  EnterSignalSection();
  if (int lrc = TryLockEnd(rlock, c.rx_bias, shared); lrc >= 0) {
    rx = c.rx.Peek(0, &iov, 1);
    UnlockEnd(rlock, c.rx_bias, lrc);
  } else {
    rx = c.rx.ReadReady() ? 1 : -EAGAIN;
  }
  LeaveSignalSection();
  bool rx_data = rx > 0;
  bool rx_closed = rx == 0 || (rx < 0 && rx != -EAGAIN);
  bool rx_reset = rx < 0 && rx != -EAGAIN;
  if (rx_data || rx_closed || c.shut_rd.load(std::memory_order_relaxed)) ev |= POLLIN | POLLRDNORM;
  if (rx_closed) ev |= POLLRDHUP;
  std::int64_t tx;
  transport::ShmMutex wlock = c.seg.ProducerLock(transport::TxRingIndex(c.role));
  EnterSignalSection();
  if (int lrc = TryLockEnd(wlock, c.tx_bias, shared); lrc >= 0) {
    tx = c.tx.Writable();
    UnlockEnd(wlock, c.tx_bias, lrc);
  } else {
    tx = c.tx.WriteReady(1) ? 1 : 0;
  }
  LeaveSignalSection();
  bool tx_broken = tx < 0;
  bool shut_wr = c.shut_wr.load(std::memory_order_relaxed);
  if (tx > 0 || tx_broken || shut_wr) ev |= POLLOUT | POLLWRNORM;
  // As TCP: hang-up when both directions are done; error after a reset
  // that has not been reported by a read or write yet.
  if (rx_closed && (shut_wr || tx_broken)) ev |= POLLHUP;
  if ((rx_reset || tx == -ECONNRESET || tx == -EIO) &&
      !c.reset_reported.load(std::memory_order_relaxed)) {
    ev |= POLLERR;
  }
  if ((ev & (POLLIN | POLLHUP | POLLERR)) == 0 && PeerGoneRarely(c, fd)) return ConnPollEvents(c);
  return ev;
}

bool ArmDoorbellsNoFence(Connection& c, short events) {
  NoteArmed(c);
  bool fence = false;
  if (events & (POLLIN | POLLRDNORM)) fence |= c.rx.ArmReadDoorbellNoFence();
  if (events & (POLLOUT | POLLWRNORM)) fence |= c.tx.ArmWriteDoorbellNoFence();
  return fence;
}

bool ArmedReady(Connection& c, short events) {
  // D2 (transport/ring.h): the rechecks after the flag stores (and the
  // heavy fence, when one was needed).
  bool ready = false;
  if (events & (POLLIN | POLLRDNORM)) ready |= c.rx.ReadReady();
  if (events & (POLLOUT | POLLWRNORM)) ready |= c.tx.WriteReady(1);
  return ready;
}

bool ArmDoorbells(Connection& c, short events) {
  // One fence for both directions. A failed fence proves nothing: ready.
  if (ArmDoorbellsNoFence(c, events) && !transport::HeavyFence()) return true;
  return ArmedReady(c, events);
}

int DrainDoorbells(int fd, bool* hung_up) {
  // Each doorbell is one SEQPACKET message; a bounded number per call (the
  // peer sends at most one per armed flag and arming; any left over keep
  // the socket readable, so the next wait comes back for them). recvmmsg
  // takes them in one system call where a recv loop took two (the last
  // one to hear EAGAIN): one per wake-up instead of two.
  constexpr unsigned kBatch = 16;
  char buf[8];  // doorbells are one byte; a longer message is truncated and dropped anyway
  iovec iov{buf, sizeof(buf)};
  mmsghdr msgs[kBatch];
  int n = 0;
  for (int round = 0; round < 4; ++round) {
    std::memset(msgs, 0, sizeof(msgs));
    for (unsigned i = 0; i < kBatch; ++i) {
      msgs[i].msg_hdr.msg_iov = &iov;
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    long got = syscall(SYS_recvmmsg, fd, msgs, kBatch, MSG_DONTWAIT, nullptr);
    if (got <= 0) break;
    // After the peer's hang-up every further message reads as empty (EOF).
    long bells = 0;
    while (bells < got && msgs[bells].msg_len > 0) ++bells;
    n += static_cast<int>(bells);
    if (bells < got && hung_up != nullptr) *hung_up = true;
    if (bells < static_cast<long>(kBatch)) break;
  }
  return n;
}

int ConnWait(Connection& c, int fd, short events, std::int64_t timeout_ns) {
  transport::WaitOptions w;
  w.liveness_fd = fd;
  w.interrupt_counter = SignalEpochOfThisThread();
  w.interrupt_epoch = w.interrupt_counter->load(std::memory_order_relaxed);
  w.timeout_ns = timeout_ns;
  return (events & POLLIN) ? transport::WaitReadable(c.rx, w, &c.rx_spin)
                           : transport::WaitWritable(c.tx, 1, w, &c.tx_spin);
}

void NotePeerHangup(Connection& c) {
  if (PeerLeftUnread(c)) {
    c.rx.ShutdownWrite(true);
    c.tx.ShutdownRead(true);
  }
  c.seg.MarkPeerGone(c.role);
}

// ---------------------------------------------------------------- listen

int Listen(int fd, int backlog) {
  std::uint32_t tag = GlobalTable().Tag(fd);
  if (tag != kTagPlain) {
    Ref r = GlobalTable().Get(fd);
    if (Listener* l = r.As<Listener>()) {
      return DOORWAY_REAL(listen)(l->tcp_fd, backlog) == 0 ? 0 : -errno;
    }
    if (r.As<Connection>() != nullptr) return -EINVAL;
  }
  if (DOORWAY_REAL(listen)(fd, backlog) != 0) return -errno;
  if (!TrackingEnabled() || !GetConfig().accelerate) return 0;
  Ref r = GlobalTable().Get(fd);
  const SocketFile* f = r.As<SocketFile>();
  if (!IsTcpSocket(f)) return 0;
  int domain = f->domain;
  sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  Endpoint local;
  if (DOORWAY_REAL(getsockname)(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0 ||
      !EndpointFromSockaddr(reinterpret_cast<sockaddr*>(&ss), len, &local)) {
    return 0;
  }
  Ref obj = Make<Listener>();
  if (!obj) return 0;
  Listener& l = *obj.As<Listener>();
  l.domain = domain;
  l.local = local;
  l.creator = getpid();
  Endpoint door_ep = Unmapped(local);
  int d0 = OpenDoor(door_ep, l.door_path[0], sizeof(l.door_path[0]));
  if (d0 < 0) {
    DOORWAY_LOG(kDebug, "fd %d: listening without a door (%s)", fd, strerror(-d0));
    return 0;
  }
  l.door_fd[0] = d0;
  if (domain == AF_INET6 && IsWildcard(local)) {
    int v6only = 0;
    socklen_t vl = sizeof(v6only);
    DOORWAY_REAL(getsockopt)(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &vl);
    if (!v6only) {
      Endpoint any4;
      any4.family = AF_INET;
      any4.port = local.port;
      int d1 = OpenDoor(any4, l.door_path[1], sizeof(l.door_path[1]));
      if (d1 >= 0) l.door_fd[1] = d1;
    }
  }
  int fd_flags = DOORWAY_REAL(fcntl)(fd, F_GETFD);
  int fl_flags = DOORWAY_REAL(fcntl)(fd, F_GETFL);
  int tcp = DOORWAY_REAL(fcntl)(fd, F_DUPFD_CLOEXEC, 0);
  int ep = DOORWAY_REAL(epoll_create1)(EPOLL_CLOEXEC);
  bool ok = tcp >= 0 && ep >= 0;
  if (ok) {
    l.tcp_fd = tcp;
    DOORWAY_REAL(fcntl)(tcp, F_SETFL, (fl_flags & ~O_ACCMODE) | O_NONBLOCK);
    // data: which source (kSourceTcp, kSourceDoor + i), for ManagedAccept.
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kSourceTcp;
    ok = DOORWAY_REAL(epoll_ctl)(ep, EPOLL_CTL_ADD, tcp, &ev) == 0;
    for (int i = 0; i < 2; ++i) {
      ev.data.u64 = kSourceDoor + static_cast<unsigned>(i);
      if (ok && l.door_fd[i] >= 0) {
        ok = DOORWAY_REAL(epoll_ctl)(ep, EPOLL_CTL_ADD, l.door_fd[i], &ev) == 0;
      }
    }
  }
  if (ok && (fl_flags & O_NONBLOCK)) DOORWAY_REAL(fcntl)(ep, F_SETFL, O_NONBLOCK);
  // The epoll fd takes the program's fd number; the kernel listener lives
  // on at tcp_fd. dup3 is atomic: no moment where fd is closed.
  if (ok) ok = DOORWAY_REAL(dup3)(ep, fd, (fd_flags & FD_CLOEXEC) ? O_CLOEXEC : 0) == fd;
  // Kept (hidden) for parking reused door sockets (reuse.h).
  if (ok && GetConfig().reuse_doors) OpenWake(l, ep);
  if (ep >= 0) DOORWAY_REAL(close)(ep);
  if (!ok) {
    // The destructor closes tcp and the doors (and unlinks them).
    return 0;
  }
  l.opts.ReadFrom(tcp);
  char name[64];
  DoorName(door_ep, name, sizeof(name));
  DOORWAY_LOG(kDebug, "fd %d: accelerated listener (door %s%s)", fd, name,
              l.door_fd[1] >= 0 ? " + tcp4 wildcard" : "");
  if (l.wake_rd >= 0) RegisterListener(l);
  Install(fd, std::move(obj), kTagListener);
  return 0;
}

// ---------------------------------------------------------------- connect

int Connect(int fd, const sockaddr* addr, socklen_t len) {
  std::uint32_t tag = GlobalTable().Tag(fd);
  if (tag != kTagPlain) {
    Ref r = GlobalTable().Get(fd);
    if (Connection* c = r.As<Connection>()) {
      // A non-blocking connect said EINPROGRESS; the next connect reports
      // the completion once, as Linux does; after that, EISCONN.
      int expected = 1;
      if (c->connect_state.compare_exchange_strong(expected, 2)) return 0;
      return -EISCONN;
    }
    if (Listener* l = r.As<Listener>()) {
      return DOORWAY_REAL(connect)(l->tcp_fd, addr, len) == 0 ? 0 : -errno;
    }
  }
  Ref r = GlobalTable().Get(fd);
  SocketFile* f = r.As<SocketFile>();
  auto kernel = [&] {
    if (f != nullptr)
      f->history.fetch_or(SocketFile::kHistoryConnectTried, std::memory_order_relaxed);
    return DOORWAY_REAL(connect)(fd, addr, len) == 0 ? 0 : -errno;
  };
  Endpoint dest;
  if (!TrackingEnabled() || !GetConfig().accelerate || !EndpointFromSockaddr(addr, len, &dest) ||
      !MayHaveDoor(dest)) {
    return kernel();
  }
  if (!IsTcpSocket(f) || addr->sa_family != f->domain) return kernel();
  int domain = f->domain;
  std::uint32_t options_set = f->options_set.load(std::memory_order_relaxed);
  std::uint8_t history = f->history.load(std::memory_order_relaxed);
  // Only a socket that has never started connecting may take the door.
  if ((history & (SocketFile::kHistoryUnknown | SocketFile::kHistoryConnectTried)) != 0) {
    tcp_info ti{};
    socklen_t til = sizeof(ti);
    if (DOORWAY_REAL(getsockopt)(fd, IPPROTO_TCP, TCP_INFO, &ti, &til) != 0 ||
        ti.tcpi_state != TCP_CLOSE) {
      return kernel();
    }
  }
  // A door socket kept from an earlier connection to dest (reuse.h) takes
  // the door's place: no socket, connect or door lookup. If its server has
  // gone since, its Hello fails and the door is taken as usual.
  DoorCandidates doors;
  const Endpoint door_dest = Unmapped(dest);
  std::uint64_t reused_ino = 0;
  uid_t reused_uid = 0;
  transport::ArenaSlotRef prev;  // the kept socket's previous connection's slot
  int wake = -1;
  bool reused_nonblock = false;  // the kept socket's O_NONBLOCK
  int reused = GetConfig().reuse_doors ? TakeClientDoor(door_dest, &reused_ino, &doors.id[0],
                                                        &reused_uid, &prev, &wake, &reused_nonblock)
                                       : -1;
  int door_index = 0;
  if (reused < 0) reused_ino = 0;  // TakeClientDoor's outputs are void on -1
  if (reused >= 0) {
    doors.count = 1;
    doors.owner[0] = reused_uid;
  } else if (FindDoors(dest, &doors) == 0) {
    return kernel();
  }

  // Everything the Hello needs is ready before the door connects: the
  // server wakes on the connect and should not wait long for the Hello.
  Endpoint local;
  transport::Segment seg;
  Ref obj;
  const char* why = nullptr;
  int snd_default = 0, rcv_default = 0;
  KernelDefaultBuffers(&snd_default, &rcv_default);
  const bool unbound = (history & (SocketFile::kHistoryUnknown | SocketFile::kHistoryBound)) == 0;
  int door = -1;
  uid_t server_uid = 0;
  // Read before the door is entered: from the door's connect to the Hello
  // only what must be is done (the server woke and waits for it).
  const int fd_flags = DOORWAY_REAL(fcntl)(fd, F_GETFD);
  const int cloexec = (fd_flags & FD_CLOEXEC) ? O_CLOEXEC : 0;
  const int fl_flags = DOORWAY_REAL(fcntl)(fd, F_GETFL);
  const bool nonblock = (fl_flags & O_NONBLOCK) != 0;
  // The door connection takes the program's fd number. The TCP socket,
  // which never connected, is kept for the next socket() if it is as good
  // as new (spare.h): made here by socket(), never bound or connected (the
  // history), no option set, no file flag but O_NONBLOCK, and no other fd
  // (r and its fd's slot are the only references).
  int spare = -1;
  if (history == 0 && options_set == 0 && f->origin == Origin::kSocket &&
      (fl_flags & ~O_NONBLOCK) == O_RDWR && r.use_count() == 2) {
    spare = DuplicateForSpare(fd);
  }
  if (!ClaimLocalAddress(fd, dest, domain, unbound, &local)) {
    why = "no local address";
  } else if (!(obj = Make<Connection>())) {
    why = "out of memory";
  } else {
    OptionSnapshot* opts = &obj.As<Connection>()->opts;
    opts->ReadChanged(fd, domain, options_set);
    transport::SegmentOptions so;
    so.ring_capacity[transport::kClientToServer] =
        RingCapacityFor(opts->value[kSndbufIndex].load(std::memory_order_relaxed), snd_default);
    so.ring_capacity[transport::kServerToClient] =
        RingCapacityFor(opts->value[kRcvbufIndex].load(std::memory_order_relaxed), rcv_default);
    // A reused segment is still mapped by its previous peer: only for a
    // listener of our own uid (checked again once connected).
    so.reuse = IsOwnUid(doors.owner[0]) && (doors.count < 2 || IsOwnUid(doors.owner[1]));
    so.arena = so.reuse;
    so.arena_key = doors.id[0];
    // Huge pages (hugetlbfs) only with a server of our own uid: a peer can
    // make our accesses to them fault (Segment::Attach's hugetlb).
    if (!so.reuse && so.pages == transport::PagePolicy::kAuto) {
      so.pages = transport::PagePolicy::kNoHugeTlb;
    }
    // The connection is complete (stats included, whose first use creates
    // a file) before the door connects: from the connect to the Hello
    // there are only a few fast system calls, and the server waits for it.
    if (int rc = transport::Segment::Create(so, &seg); rc != 0) {
      why = "cannot create segment";
    } else {
      InitConnection(*obj.As<Connection>(), std::move(seg), Role::kClient);
      if (reused >= 0) {
        door = reused;
        server_uid = reused_uid;
      } else if ((door = EnterDoor(doors, &server_uid, &door_index)) < 0) {
        why = "no door answered";
      } else if (!IsOwnUid(server_uid) &&
                 (obj.As<Connection>()->seg.generation() > 1 ||
                  obj.As<Connection>()->seg.in_arena() ||
                  obj.As<Connection>()->seg.placement().pages == transport::PageKind::kHugeTlb)) {
        why = "door served by another uid";
      }
    }
  }
  if (why != nullptr) {
    DOORWAY_LOG(kDebug, "fd %d: door found but %s; using TCP", fd, why);
    if (door >= 0) DOORWAY_REAL(close)(door);
    if (spare >= 0) DOORWAY_REAL(close)(spare);
    // No Hello went out: nobody else has the segment.
    if (Connection* oc = obj.As<Connection>()) std::move(oc->seg).Discard();
    return kernel();
  }
  Connection& c = *obj.As<Connection>();
  c.local = AsDomain(local, domain);
  c.peer = AsDomain(Unmapped(dest), domain);
  c.door_dest = door_dest;
  // What the connection keeps of its door (reuse.h); again if a kept
  // socket's announcement fails and a door is taken instead.
  auto note_door = [&] {
    c.recyclable = IsOwnUid(server_uid);
    c.socket_ino = reused_ino;
    c.door_uid = server_uid;
  };
  note_door();
  c.nonblocking.store(nonblock, std::memory_order_relaxed);
  // The fd is the connection before the server can learn of it: the server
  // accepting is what makes another thread of this process (one that polls
  // or reads the client's fd because the server said so) expect a
  // connected socket, as TCP's client is established before its server's
  // accept returns. Announced earlier, that thread saw the TCP socket that
  // never connected (POLLHUP, ENOTCONN from recv: CPython's
  // TCPCloserTest.testClose). A kept socket's announcement can still fail
  // (below), and then, if no door answers either, the connection goes over
  // TCP after all: that needs the TCP socket, kept (a duplicate, or the
  // spare) until the announcement went out.
  int tcp_keep = -1;
  if (reused >= 0) tcp_keep = spare >= 0 ? spare : DOORWAY_REAL(fcntl)(fd, F_DUPFD_CLOEXEC, 0);
  auto close_tcp_keep = [&] {
    if (tcp_keep >= 0 && tcp_keep != spare) DOORWAY_REAL(close)(tcp_keep);
    tcp_keep = -1;
  };
  if (DOORWAY_REAL(dup3)(door, fd, cloexec) != fd) {
    DOORWAY_LOG(kWarn, "fd %d: dup3 failed (%s) before the door handshake; using TCP", fd,
                strerror(errno));
    close_tcp_keep();
    if (spare >= 0) DOORWAY_REAL(close)(spare);
    DOORWAY_REAL(close)(door);
    std::move(c.seg).Discard();  // no Hello went out
    return kernel();
  }
  // A new door socket is non-blocking; a kept one has its last
  // connection's flags.
  if (c.socket_ino == 0 ? !nonblock : nonblock != reused_nonblock) {
    DOORWAY_REAL(fcntl)(fd, F_SETFL, nonblock ? O_NONBLOCK : 0);
  }
  if (nonblock) c.connect_state.store(1, std::memory_order_relaxed);
  Ref self = obj.Clone();
  Install(fd, std::move(obj), kTagConnection);
  // Counted as a call in progress on c: if another thread closes fd during
  // the announcement, the release waits for us (FinishRelease) instead of
  // keeping the door socket for a next connection under our Hello.
  bool counted = false;
  CountWaiter(c, &counted);

  // The Hello goes at once: the server woke on the door's connect and its
  // accept waits for the Hello (sleeping in poll if it is late, two context
  // switches). If the server died since the door answered, the connection
  // is still made and is reset, as a TCP connection whose server dies after
  // the handshake.
  Hello hello{};
  hello.magic = Hello::kMagic;
  hello.version = Hello::kVersion;
  hello.client = Unmapped(local);
  hello.server = Unmapped(dest);
  hello.segment_offset = c.seg.offset();
  int hello_rc = 0;
  if (reused >= 0) {
    // Over a kept socket the Hello goes in the wake record (WakeRecord),
    // unless the new slot is in another arena than the socket's previous
    // connection: then it follows on the socket with the memfd.
    WakeRecord rec{};
    rec.magic = WakeRecord::kMagic;
    rec.prev = prev.Identity();
    rec.hello = hello;
    const bool beside = prev.SameArena(c.seg);
    rec.kind = beside ? WakeRecord::kHelloHere : WakeRecord::kHelloOnSocket;
    if (!WakeListener(wake, &rec, sizeof(rec))) {
      hello_rc = -EAGAIN;
    } else if (!beside) {
      hello_rc = SendHello(door, hello, c.seg.fd());
    }
  } else {
    hello_rc = SendHello(door, hello, c.seg.fd());
  }
  if (hello_rc != 0 && reused >= 0) {
    // The wake FIFO is full (its listener is that far behind), or the kept
    // socket's server end was closed since TakeClientDoor looked: nobody
    // got the Hello; take the door. (A thread polling fd meanwhile may have
    // seen that closed end's hang-up: a window of a few system calls.)
    DOORWAY_LOG(kDebug,
                "fd %d: connection on a kept door socket not announced (%s); taking the door", fd,
                strerror(-hello_rc));
    const int kept = door;
    reused = -1;
    reused_ino = 0;
    door = FindDoors(dest, &doors) > 0 ? EnterDoor(doors, &server_uid, &door_index) : -1;
    const bool ours = GlobalTable().Get(fd).node() == self.node();
    if (door >= 0 && IsOwnUid(server_uid) && ours && DOORWAY_REAL(dup3)(door, fd, cloexec) == fd) {
      DOORWAY_REAL(close)(kept);
      note_door();
      struct stat st;
      c.socket_ino = fstat(fd, &st) == 0 ? st.st_ino : 0;
      if (!nonblock) DOORWAY_REAL(fcntl)(fd, F_SETFL, 0);
      hello_rc = SendHello(door, hello, c.seg.fd());
    } else {
      DOORWAY_LOG(kDebug, "fd %d: kept door socket closed, no door answered; using TCP", fd);
      if (door >= 0) DOORWAY_REAL(close)(door);
      DOORWAY_REAL(close)(kept);
      // Nobody got the segment; the slot is retired with the connection
      // (another thread may still hold it), not recycled.
      c.recyclable = false;
      const bool back = ours && tcp_keep >= 0 && DOORWAY_REAL(dup3)(tcp_keep, fd, cloexec) == fd;
      if (back) Install(fd, std::move(r), kTagPlain);
      if (tcp_keep == spare) spare = -1;
      if (tcp_keep >= 0) DOORWAY_REAL(close)(tcp_keep);
      tcp_keep = -1;
      if (spare >= 0) DOORWAY_REAL(close)(spare);
      WaiterDone(c);
      return back ? kernel() : -ECONNREFUSED;
    }
  }
  close_tcp_keep();
  // Kept for reuse only through the first door (the arena's key names its
  // listener, whose wake FIFO announces Hellos on kept sockets). Read at
  // close only, so set after the Hello (NoteDoorWake may stat the FIFO).
  if (reused >= 0 || (door_index == 0 && IsOwnUid(server_uid) && GetConfig().reuse_doors &&
                      NoteDoorWake(doors.id[0], doors.path[0]))) {
    c.door_id = doors.id[0];
  }
  // A kept socket's hidden end stays for the close (Connection::door_dup).
  if (reused >= 0) {
    KeepDoorDup(c, door);
  } else {
    DOORWAY_REAL(close)(door);
  }
  if (hello_rc != 0) {
    DOORWAY_LOG(kDebug, "fd %d: the server went away during the handshake (%s)", fd,
                strerror(-hello_rc));
    NotePeerHangup(c);
  }
  WaiterDone(c);
  // Its identity is known if it was a spare before (checked then).
  if (spare >= 0) KeepSpareSocket(spare, domain, nonblock, f->spare_dev, f->spare_ino);
  StatsNoteAccelerated(false);
  DOORWAY_LOG(kDebug, "fd %d: accelerated connection to port %u", fd, dest.port);
  return nonblock ? -EINPROGRESS : 0;
}

// ---------------------------------------------------------------- accept

// A blocking accept that finds nothing pending looks again for up to
// Listener::accept_spin_ns (sched_yield between looks: a client on this
// CPU runs, else this is a slow spin) before it sleeps in epoll_wait. Why:
// a server whose clients connect every few microseconds went to sleep
// after each accept, and each client's connect then paid the wake-up of a
// sleeping CPU (on this VM a halted vCPU: the IPI and the wake-up were ~8%
// of a connect's CPU time) and waited for it. The budget follows the gaps
// between connections: a sleep shorter than kAcceptSpinMaxNs (a spin would
// have caught it) sets it to the maximum; a longer one halves it; a spin
// that catches a connection keeps it. Returns what ReadySources returns
// (0: nothing came; an error as it found it).
constexpr std::int64_t kAcceptSpinMaxNs = 50'000;

int AcceptSpin(Listener& l, int fd, std::uint64_t* pending_slots) {
  int ready = ReadySources(fd, 0, pending_slots);
  const std::int64_t budget = l.accept_spin_ns.load(std::memory_order_relaxed);
  if (ready != 0 || budget <= 0) return ready;
  const std::int64_t deadline = NowNs() + budget;
  while (ready == 0 && NowNs() < deadline) {
    sched_yield();
    ready = ReadySources(fd, 0, pending_slots);
  }
  return ready;
}

void AcceptSlept(Listener& l, std::int64_t slept_ns) {
  const std::int64_t budget = l.accept_spin_ns.load(std::memory_order_relaxed);
  l.accept_spin_ns.store(slept_ns < kAcceptSpinMaxNs ? kAcceptSpinMaxNs : budget / 2,
                         std::memory_order_relaxed);
}

int ManagedAccept(int fd, sockaddr* addr, socklen_t* len, int flags, bool accept4) {
  Ref r = GlobalTable().Get(fd);
  Listener* l = r.As<Listener>();
  if (l == nullptr) {
    int rc =
        accept4 ? DOORWAY_REAL(accept4)(fd, addr, len, flags) : DOORWAY_REAL(accept)(fd, addr, len);
    return rc < 0 ? -errno : rc;
  }
  if (accept4 && (flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) != 0) return -EINVAL;
  if (!accept4) flags = 0;
  if (addr != nullptr && len == nullptr) return -EFAULT;
  if (len != nullptr && static_cast<int>(*len) < 0) return -EINVAL;
  // The last accept found a wake record: look for the next one first.
  // Nothing waits, so neither the listener's flags nor its other sources
  // matter (they get their turn once the records are taken).
  if (l->wake_records.load(std::memory_order_relaxed)) {
    bool empty = false;
    int c = AcceptRecord(*l, fd, addr, len, flags, &empty);
    if (c != -EAGAIN) return c;
    if (empty) l->wake_records.store(false, std::memory_order_relaxed);
  }
  int fl = DOORWAY_REAL(fcntl)(fd, F_GETFL);
  bool nonblock = fl >= 0 && (fl & O_NONBLOCK) != 0;
  std::int64_t timeout = l->opts.rcvtimeo_ns.load(std::memory_order_relaxed);
  std::int64_t start = timeout > 0 ? NowNs() : 0;
  // The listener's fd is an epoll fd over its sources: one epoll_wait
  // tells which to accept from (and, if none, sleeps until one has a
  // connection), instead of trying each source in turn.
  for (;;) {
    int timeout_ms = 0;
    if (!nonblock) {
      timeout_ms = -1;
      if (timeout > 0) {
        std::int64_t left = timeout - (NowNs() - start);
        if (left <= 0) return -EAGAIN;
        timeout_ms = static_cast<int>((left + 999999) / 1000000);
      }
    }
    std::uint64_t pending_slots = 0;
    int ready =
        timeout_ms != 0 ? AcceptSpin(*l, fd, &pending_slots) : ReadySources(fd, 0, &pending_slots);
    if (ready == 0 && timeout_ms != 0) {
      ReapKeptEnds(*l);  // idle: a good time
      const std::int64_t slept = NowNs();
      ready = ReadySources(fd, timeout_ms, &pending_slots);
      AcceptSlept(*l, NowNs() - slept);
    }
    if (ready == -EINTR) {
      // accept(2) restarts under SA_RESTART (unless SO_RCVTIMEO is set).
      if (!RestartAfterSignal(timeout)) return -EINTR;
      continue;
    }
    if (ready < 0) return ready;
    if (ready == 0) {
      if (nonblock) return -EAGAIN;
      continue;  // the timeout check above decides
    }
    // Rotate the first source tried so that neither kind starves.
    unsigned turn = l->turn.fetch_add(1, std::memory_order_relaxed);
    for (unsigned k = 0; k < kSourceCount; ++k) {
      unsigned src = (turn + k) % kSourceCount;
      if ((ready & (1 << src)) == 0) continue;
      if (src == kSourceTcp) {
        int c = DOORWAY_REAL(accept4)(l->tcp_fd, addr, len, flags);
        if (c >= 0) {
          SocketFile sf;
          sf.domain = l->domain;
          sf.type = SOCK_STREAM;
          sf.protocol = IPPROTO_TCP;
          sf.origin = Origin::kAccept;
          GlobalTable().Install(c, Make<SocketFile>(sf)).Reset();
          return c;
        }
        if (errno != EAGAIN) return -errno;
      } else if (src == kSourcePending) {
        int c = AcceptPending(*l, fd, addr, len, flags, pending_slots);
        if (c != -EAGAIN) return c;
      } else if (src == kSourceWake) {
        // A record that names no parked end (dropped at a fork, reaped, or
        // forged) or a stray write is consumed all the same: it would keep
        // the listener readable and a blocking accept spinning.
        bool empty = false;
        int c = AcceptRecord(*l, fd, addr, len, flags, &empty);
        if (!empty) l->wake_records.store(true, std::memory_order_relaxed);
        if (c != -EAGAIN) return c;
      } else if (int d = l->door_fd[src - kSourceDoor]; d >= 0) {
        int c = AcceptDoor(*l, fd, d, addr, len, flags);
        if (c != -EAGAIN) return c;
      }
    }
    // Another thread or process took what was pending (or a door
    // connection was unusable): look again.
  }
}

// ---------------------------------------------------------------- data calls

ssize_t ManagedRecv(int fd, const iovec* iov, int iovcnt, int flags, msghdr* msg) {
  Ref r = GlobalTable().Get(fd);
  if (Connection* c = r.As<Connection>()) {
    ssize_t n = ConnRecv(*c, fd, iov, iovcnt, flags);
    if (msg != nullptr && n >= 0) {
      msg->msg_namelen = 0;
      msg->msg_controllen = 0;
      msg->msg_flags = 0;
    }
    return n;
  }
  Listener* l = r.As<Listener>();
  msghdr m{};
  m.msg_iov = const_cast<iovec*>(iov);
  m.msg_iovlen = static_cast<size_t>(iovcnt);
  ssize_t n =
      DOORWAY_REAL(recvmsg)(l != nullptr ? l->tcp_fd : fd, msg != nullptr ? msg : &m, flags);
  return n < 0 ? -errno : n;
}

ssize_t ManagedSend(int fd, const iovec* iov, int iovcnt, int flags) {
  Ref r = GlobalTable().Get(fd);
  if (Connection* c = r.As<Connection>()) return ConnSend(*c, fd, iov, iovcnt, flags);
  Listener* l = r.As<Listener>();
  msghdr m{};
  m.msg_iov = const_cast<iovec*>(iov);
  m.msg_iovlen = static_cast<size_t>(iovcnt);
  ssize_t n = DOORWAY_REAL(sendmsg)(l != nullptr ? l->tcp_fd : fd, &m, flags);
  return n < 0 ? -errno : n;
}

// ManagedRead and ManagedWrite in a process that has never made a second
// thread: the fd's object is looked up and released inside a signal
// section (no handler runs between, except during a wait, which is not
// between the count's load and store), so its count needs no locked
// instruction (fdtable.h GetUncontended), nor does the end's lock
// (LockEnd). With neither, a 64 B read or write makes no locked
// instruction at all, and does not wait for the previous one's index
// store to reach the peer's core.
template <bool kWrite>
inline __attribute__((always_inline)) bool UncontendedIo(int fd, void* buf, size_t n, int flags,
                                                         ssize_t* result) {
  SignalSection section;
  Ref r = GlobalTable().GetUncontended(fd);
  Connection* c = r.As<Connection>();
  if (c != nullptr) {
    iovec iov{buf, n};
    *result = kWrite ? ConnSendT<true, true>(*c, fd, &iov, 1, flags)
                     : ConnRecvT<true, true>(*c, fd, &iov, 1, flags);
  }
  r.ResetUncontended(__libc_single_threaded != 0);
  return c != nullptr;
}

// ManagedRead and ManagedWrite in a process with threads (or when fd is
// not a connection), out of line: the single-threaded path is inlined into
// ManagedRead/ManagedWrite, and this one's frame would cost it stores.
__attribute__((noinline)) ssize_t ManagedReadShared(int fd, void* buf, size_t n, int flags) {
  iovec iov{buf, n};
  Ref r = GlobalTable().Get(fd);
  if (Connection* c = r.As<Connection>()) return ConnRecvT<true>(*c, fd, &iov, 1, flags);
  r.Reset();
  return ManagedRecv(fd, &iov, 1, flags, nullptr);
}

__attribute__((noinline)) ssize_t ManagedWriteShared(int fd, void* buf, size_t n, int flags) {
  iovec iov{const_cast<void*>(buf), n};
  Ref r = GlobalTable().Get(fd);
  if (Connection* c = r.As<Connection>()) return ConnSendT<true>(*c, fd, &iov, 1, flags);
  r.Reset();
  return ManagedSend(fd, &iov, 1, flags);
}

// The rest of ManagedRead/ManagedWrite when the one-frame path below did
// not do the call: UncontendedIo (one thread), else the shared path.
template <bool kWrite>
__attribute__((noinline)) ssize_t ManagedIoGeneral(int fd, void* buf, size_t n, int flags) {
  if (ssize_t rc = 0;
      __libc_single_threaded != 0 && UncontendedIo<kWrite>(fd, buf, n, flags, &rc)) {
    return rc;
  }
  return kWrite ? ManagedWriteShared(fd, buf, n, flags) : ManagedReadShared(fd, buf, n, flags);
}

__attribute__((noinline, cold)) void DropUncontended(fdtable::Node* node) {
  Ref(node).ResetUncontended(__libc_single_threaded != 0);
}

// The common case of read() and write() in a process with one thread, as
// one function that makes no call: the fd is a connection this process
// alone holds, its end's lock is free, and the ring has what the call needs
// (write: room for every byte; read: at least one byte, no MSG_PEEK or
// MSG_WAITALL). Then the result is ConnSendT's/ConnRecvT's for that case:
// the bytes move, a doorbell is rung if the peer armed one, and the call
// returns the count. Otherwise it returns 0 having changed nothing (the
// signal section, the reference and the lock are given back, the ring's
// All-or-nothing calls WriteWhole/ReadSome leave it as it was) and the
// caller takes the general path, which decides everything else (EAGAIN,
// waits, EOF, errors, partial writes). Why a path of its own: each call and
// each register the general path keeps across its calls is a store, and a
// writer's stores wait in the store buffer behind its previous index store,
// whose line the reader keeps reading; 64 B messages were bound by that
// (docs/transport.md "seventh session"). The reference and the lock are
// taken as UncontendedIo and LockEnd take them (plain stores, inside the
// signal section).
template <bool kWrite>
inline __attribute__((always_inline)) ssize_t OneFrameIo(int fd, void* buf, size_t n) {
  EnterSignalSection();
  ssize_t r = 0;
  fdtable::Node* node = GlobalTable().GetUncontended(fd).Release();
  if (node != nullptr && node->type_tag == Connection::kTypeTag) {
    Connection& c = *std::launder(reinterpret_cast<Connection*>(node->payload));
    transport::Ring& ring = kWrite ? c.tx : c.rx;
    std::atomic<std::uint32_t>* word =
        kWrite ? ring.producer_lock_word() : ring.consumer_lock_word();
    if (!c.shared.load(std::memory_order_relaxed) &&
        (!kWrite || !c.shut_wr.load(std::memory_order_relaxed)) &&
        word->load(std::memory_order_relaxed) == 0) {
      word->store(transport::ShmMutex::SelfTid(), std::memory_order_relaxed);  // LockEnd
      std::atomic_signal_fence(std::memory_order_seq_cst);
      r = kWrite ? ring.WriteWhole(buf, n) : ring.ReadSome(buf, n);
      if (r > 0) SendDoorbell(ring, c, fd);
      std::atomic_signal_fence(std::memory_order_seq_cst);  // UnlockEnd
      word->store(0, std::memory_order_relaxed);
      if constexpr (kWrite) {
        if (__builtin_expect(
                r > 0 && c.tx_populated.load(std::memory_order_relaxed) < c.tx.capacity(), 0)) {
          PopulateAhead(c);
        }
      }
    }
  }
  if (node != nullptr) {
    // ResetUncontended's count, inline; the last reference (the fd was
    // closed under us by a handler that ran inside the section) out of line.
    const std::uint32_t refs = node->refs.load(std::memory_order_relaxed);
    if (__builtin_expect(refs == 1, 0)) {
      DropUncontended(node);
    } else {
      node->refs.store(refs - 1, std::memory_order_relaxed);
    }
  }
  LeaveSignalSection();
  return r;
}

ssize_t ManagedRead(int fd, void* buf, size_t n, int flags) {
  if (__builtin_expect(__libc_single_threaded != 0 &&
                           (flags & (MSG_PEEK | MSG_WAITALL | MSG_OOB | MSG_ERRQUEUE)) == 0,
                       1)) {
    if (ssize_t r = OneFrameIo<false>(fd, buf, n); r > 0) return r;
  }
  return ManagedIoGeneral<false>(fd, buf, n, flags);
}

ssize_t ManagedWrite(int fd, const void* buf, size_t n, int flags) {
  if (__builtin_expect(__libc_single_threaded != 0 && (flags & MSG_OOB) == 0, 1)) {
    if (ssize_t r = OneFrameIo<true>(fd, const_cast<void*>(buf), n); r > 0) return r;
  }
  return ManagedIoGeneral<true>(fd, const_cast<void*>(buf), n, flags);
}

int ManagedRecvmmsg(int fd, mmsghdr* msgs, unsigned n, int flags, timespec* timeout) {
  (void)timeout;  // like the kernel, checked only between messages
  unsigned done = 0;
  for (; done < n; ++done) {
    msghdr& h = msgs[done].msg_hdr;
    int f = flags & ~MSG_WAITFORONE;
    if (done > 0 && (flags & MSG_WAITFORONE)) f |= MSG_DONTWAIT;
    ssize_t r = ManagedRecv(fd, h.msg_iov, static_cast<int>(h.msg_iovlen), f, &h);
    if (r < 0) {
      if (done == 0) return static_cast<int>(r);
      break;
    }
    msgs[done].msg_len = static_cast<unsigned>(r);
    if (r == 0) {
      ++done;
      break;
    }
  }
  return static_cast<int>(done);
}

int ManagedSendmmsg(int fd, mmsghdr* msgs, unsigned n, int flags) {
  unsigned done = 0;
  for (; done < n; ++done) {
    msghdr& h = msgs[done].msg_hdr;
    ssize_t r = ManagedSend(fd, h.msg_iov, static_cast<int>(h.msg_iovlen), flags);
    if (r < 0) {
      if (done == 0) return static_cast<int>(r);
      break;
    }
    msgs[done].msg_len = static_cast<unsigned>(r);
  }
  return static_cast<int>(done);
}

ssize_t ManagedSendfile(int out_fd, int in_fd, off_t* offset, size_t count) {
  Ref r = GlobalTable().Get(out_fd);
  Connection* c = r.As<Connection>();
  if (c == nullptr) {
    ssize_t n = DOORWAY_REAL(sendfile)(out_fd, in_fd, offset, count);
    return n < 0 ? -errno : n;
  }
  // Through a bounce buffer into the ring: one copy from the page cache,
  // with the write path's blocking, signal and error semantics.
  char buf[65536];
  size_t total = 0;
  off_t pos = offset != nullptr ? *offset : 0;
  while (total < count) {
    size_t chunk = count - total < sizeof(buf) ? count - total : sizeof(buf);
    ssize_t got =
        offset != nullptr ? pread(in_fd, buf, chunk, pos) : DOORWAY_REAL(read)(in_fd, buf, chunk);
    if (got < 0) {
      if (total == 0) return -errno;
      break;
    }
    if (got == 0) break;
    iovec iov{buf, static_cast<size_t>(got)};
    ssize_t put = ConnSend(*c, out_fd, &iov, 1, 0);
    if (put < 0) {
      if (offset == nullptr) lseek(in_fd, -got, SEEK_CUR);
      if (total == 0) return put;
      break;
    }
    total += static_cast<size_t>(put);
    pos += put;
    if (put < got) {
      if (offset == nullptr) lseek(in_fd, put - got, SEEK_CUR);
      break;
    }
  }
  if (offset != nullptr) *offset = pos;
  return static_cast<ssize_t>(total);
}

ssize_t ManagedSplice(int fd_in, loff_t* off_in, int fd_out, loff_t* off_out, size_t len,
                      unsigned flags) {
  Ref rin = GlobalTable().Get(fd_in);
  Ref rout = GlobalTable().Get(fd_out);
  Connection* cin = rin.As<Connection>();
  Connection* cout = rout.As<Connection>();
  if (cin == nullptr && cout == nullptr) {
    ssize_t n = DOORWAY_REAL(splice)(fd_in, off_in, fd_out, off_out, len, flags);
    return n < 0 ? -errno : n;
  }
  // splice moves pages between a pipe and a socket; here the socket side is
  // a ring, so the bytes go through a bounce buffer. One end must be a pipe
  // (as for the kernel), and sockets take no offset.
  if ((cin != nullptr && off_in != nullptr) || (cout != nullptr && off_out != nullptr)) {
    return -ESPIPE;
  }
  char buf[65536];
  size_t chunk = len < sizeof(buf) ? len : sizeof(buf);
  int nb = (flags & SPLICE_F_NONBLOCK) ? MSG_DONTWAIT : 0;
  if (cin != nullptr) {
    iovec iov{buf, chunk};
    ssize_t got = ConnRecv(*cin, fd_in, &iov, 1, nb | MSG_PEEK);
    if (got <= 0) return got;
    ssize_t put = off_out != nullptr ? pwrite(fd_out, buf, static_cast<size_t>(got), *off_out)
                                     : DOORWAY_REAL(write)(fd_out, buf, static_cast<size_t>(got));
    if (put < 0) return -errno;
    if (off_out != nullptr) *off_out += put;
    iovec drop{buf, static_cast<size_t>(put)};
    (void)ConnRecv(*cin, fd_in, &drop, 1, MSG_DONTWAIT);
    return put;
  }
  ssize_t got =
      off_in != nullptr ? pread(fd_in, buf, chunk, *off_in) : DOORWAY_REAL(read)(fd_in, buf, chunk);
  if (got <= 0) return got < 0 ? -errno : 0;
  iovec iov{buf, static_cast<size_t>(got)};
  ssize_t put = ConnSend(*cout, fd_out, &iov, 1, nb);
  if (put >= 0 && off_in != nullptr) *off_in += put;
  return put;
}

int ManagedShutdown(int fd, int how) {
  Ref r = GlobalTable().Get(fd);
  Connection* c = r.As<Connection>();
  if (c == nullptr) {
    Listener* l = r.As<Listener>();
    return DOORWAY_REAL(shutdown)(l != nullptr ? l->tcp_fd : fd, how) == 0 ? 0 : -errno;
  }
  if (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR) return -EINVAL;
  if (how != SHUT_WR) {
    c->shut_rd.store(true, std::memory_order_relaxed);
    c->rx.WakeConsumers();
  }
  if (how != SHUT_RD) ConnShutdownWrite(*c, fd, false);
  // Readiness changed here, not by the peer: no doorbell comes for it.
  if (c->epoll_regs.load(std::memory_order_relaxed) > 0) NoteEpollChange(fd);
  return 0;
}

int ManagedGetsockname(int fd, sockaddr* addr, socklen_t* len, bool peer) {
  Ref r = GlobalTable().Get(fd);
  if (Connection* c = r.As<Connection>()) {
    if (len == nullptr) return -EFAULT;
    if (static_cast<int>(*len) < 0) return -EINVAL;
    CopyOut(peer ? c->peer : c->local, addr, len);
    return 0;
  }
  Listener* l = r.As<Listener>();
  int k = l != nullptr ? l->tcp_fd : fd;
  int rc = peer ? DOORWAY_REAL(getpeername)(k, addr, len) : DOORWAY_REAL(getsockname)(k, addr, len);
  return rc == 0 ? 0 : -errno;
}

int ManagedGetsockopt(int fd, int level, int name, void* value, socklen_t* len) {
  Ref r = GlobalTable().Get(fd);
  Connection* c = r.As<Connection>();
  if (c == nullptr) {
    Listener* l = r.As<Listener>();
    int k = l != nullptr ? l->tcp_fd : fd;
    return DOORWAY_REAL(getsockopt)(k, level, name, value, len) == 0 ? 0 : -errno;
  }
  int v = 0;
  if (level == SOL_SOCKET) {
    switch (name) {
      case SO_TYPE:
        v = SOCK_STREAM;
        return PutOpt(&v, sizeof(v), value, len);
      case SO_DOMAIN:
        v = c->local.family;
        return PutOpt(&v, sizeof(v), value, len);
      case SO_PROTOCOL:
        v = IPPROTO_TCP;
        return PutOpt(&v, sizeof(v), value, len);
      case SO_ERROR:
      case SO_ACCEPTCONN:
        return PutOpt(&v, sizeof(v), value, len);
      case SO_RCVTIMEO:
      case SO_SNDTIMEO: {
        timeval tv = NsToTimeval(name == SO_RCVTIMEO ? c->opts.rcvtimeo_ns.load()
                                                     : c->opts.sndtimeo_ns.load());
        return PutOpt(&tv, sizeof(tv), value, len);
      }
      case SO_LINGER: {
        linger lg{c->opts.linger_onoff.load(), c->opts.linger_secs.load()};
        return PutOpt(&lg, sizeof(lg), value, len);
      }
      default:
        break;
    }
  }
  if (level == IPPROTO_TCP && name == TCP_INFO) {
    tcp_info ti{};
    ti.tcpi_state = TCP_ESTABLISHED;
    ti.tcpi_snd_mss = 65483;
    ti.tcpi_rcv_mss = 65483;
    ti.tcpi_rtt = 1;
    ti.tcpi_snd_cwnd = 10;
    return PutOpt(&ti, sizeof(ti), value, len);
  }
  int i = OptIndex(level, name);
  if (i < 0 || !c->opts.known[i].load(std::memory_order_relaxed)) return -ENOPROTOOPT;
  v = c->opts.value[i].load(std::memory_order_relaxed);
  return PutOpt(&v, sizeof(v), value, len);
}

int ManagedSetsockopt(int fd, int level, int name, const void* value, socklen_t len) {
  Ref r = GlobalTable().Get(fd);
  Connection* c = r.As<Connection>();
  if (c == nullptr) {
    Listener* l = r.As<Listener>();
    if (l != nullptr) {
      if (DOORWAY_REAL(setsockopt)(l->tcp_fd, level, name, value, len) != 0) return -errno;
      l->opts.ReadFrom(l->tcp_fd);
      return 0;
    }
    return DOORWAY_REAL(setsockopt)(fd, level, name, value, len) == 0 ? 0 : -errno;
  }
  if (static_cast<int>(len) < 0) return -EINVAL;
  if (level == SOL_SOCKET && (name == SO_RCVTIMEO || name == SO_SNDTIMEO)) {
    if (len < sizeof(timeval)) return -EINVAL;
    timeval tv;
    memcpy(&tv, value, sizeof(tv));
    if (tv.tv_usec < 0 || tv.tv_usec >= 1000000) return -EDOM;
    std::int64_t ns = tv.tv_sec < 0 ? 0 : TimevalToNs(tv);
    (name == SO_RCVTIMEO ? c->opts.rcvtimeo_ns : c->opts.sndtimeo_ns).store(ns);
    return 0;
  }
  if (level == SOL_SOCKET && name == SO_LINGER) {
    if (len < sizeof(linger)) return -EINVAL;
    linger lg;
    memcpy(&lg, value, sizeof(lg));
    c->opts.linger_onoff.store(lg.l_onoff);
    c->opts.linger_secs.store(lg.l_linger);
    return 0;
  }
  int i = OptIndex(level, name);
  if (i >= 0) {
    if (len < sizeof(int)) return -EINVAL;
    int v;
    memcpy(&v, value, sizeof(v));
    // As the kernel does: buffer sizes are doubled (bookkeeping overhead).
    if (i == kSndbufIndex) v = v < 2304 ? 4608 : v * 2;
    if (i == kRcvbufIndex) v = v < 1152 ? 2304 : v * 2;
    if ((level == IPPROTO_TCP && name == TCP_NODELAY) ||
        (level == SOL_SOCKET && name == SO_KEEPALIVE)) {
      v = v != 0 ? 1 : 0;
    }
    c->opts.value[i].store(v, std::memory_order_relaxed);
    c->opts.known[i].store(true, std::memory_order_relaxed);
    return 0;
  }
  // Options that only steer the kernel's TCP (congestion control, marks,
  // fast open...) have nothing to steer here; accept them as TCP would.
  if (level == SOL_SOCKET || level == IPPROTO_TCP || level == IPPROTO_IP || level == IPPROTO_IPV6) {
    return 0;
  }
  return -ENOPROTOOPT;
}

int ManagedIoctl(int fd, unsigned long request, void* arg) {
  Ref r = GlobalTable().Get(fd);
  Connection* c = r.As<Connection>();
  Listener* l = r.As<Listener>();
  if (c != nullptr) {
    switch (request) {
      // Without the end's lock (the kernel's ioctl does not wait for a
      // blocked read or write either): Queued reads a consistent pair of
      // indices and no cache that the lock holder owns.
      case FIONREAD: {  // == SIOCINQ
        std::int64_t n = c->rx.Queued();
        int v = n < 0 ? 0 : (n > 0x7fffffff ? 0x7fffffff : static_cast<int>(n));
        memcpy(arg, &v, sizeof(v));
        return 0;
      }
      case SIOCOUTQ:
      case SIOCOUTQNSD: {
        // Bytes the peer has not read yet; none once it closed or reset
        // its reading side (the kernel drops the queue on the peer's reset).
        std::int64_t used = c->tx.ReaderState() == transport::EndState::kOpen ? c->tx.Queued() : 0;
        int v = used < 0 ? 0 : static_cast<int>(used);
        memcpy(arg, &v, sizeof(v));
        return 0;
      }
      case FIONBIO: {
        int on;
        memcpy(&on, arg, sizeof(on));
        c->nonblocking.store(on != 0, std::memory_order_relaxed);
        break;  // and mirror it on the kernel file below
      }
      case FIOASYNC:
      case FIOSETOWN:
      case SIOCSPGRP:
        c->odd_flags.store(true, std::memory_order_relaxed);
        break;
      default:
        break;
    }
  }
  int k = fd;
  if (l != nullptr && request != FIONBIO) k = l->tcp_fd;
  return DOORWAY_REAL(ioctl)(k, request, arg) == 0 ? 0 : -errno;
}

int ManagedFcntl(int fd, int cmd, unsigned long arg, bool fcntl64) {
  if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) return Fcntl(fd, cmd, arg, fcntl64);
  if (cmd == F_SETFL || cmd == F_SETOWN || cmd == F_SETOWN_EX || cmd == F_SETSIG) {
    Ref r = GlobalTable().Get(fd);
    if (Connection* c = r.As<Connection>()) {
      if (cmd == F_SETFL) c->nonblocking.store((arg & O_NONBLOCK) != 0, std::memory_order_relaxed);
      if (cmd != F_SETFL || (arg & ~static_cast<unsigned long>(O_NONBLOCK | O_ACCMODE)) != 0) {
        c->odd_flags.store(true, std::memory_order_relaxed);
      }
    }
  }
  int rc = fcntl64 ? DOORWAY_REAL(fcntl64)(fd, cmd, arg) : DOORWAY_REAL(fcntl)(fd, cmd, arg);
  return rc < 0 ? -errno : rc;
}

int ManagedBind(int fd, const sockaddr* addr, socklen_t len) {
  Ref r = GlobalTable().Get(fd);
  if (r.As<Connection>() != nullptr) return -EINVAL;
  Listener* l = r.As<Listener>();
  return DOORWAY_REAL(bind)(l != nullptr ? l->tcp_fd : fd, addr, len) == 0 ? 0 : -errno;
}

// ---------------------------------------------------------------- passing a listener

namespace {

// Where relays of door connections connect to reach l's kernel listener.
Endpoint KernelListenerAddress(const Listener& l) {
  Endpoint dest = l.local;
  if (IsWildcard(dest)) {
    memset(dest.addr, 0, sizeof(dest.addr));
    if (dest.family == AF_INET) {
      dest.addr[0] = 127;
      dest.addr[3] = 1;
    } else {
      dest.addr[15] = 1;
    }
  }
  return dest;
}

// The door connection just accepted at c goes on as a kernel TCP connection
// in l's backlog (relay.h RelayConnectionTo); c's number is closed.
void RelayIntoBacklog(int c, const Endpoint& dest, int* relayed) {
  if (int rc = RelayConnectionTo(c, dest); rc != 0) {
    DOORWAY_LOG(kWarn, "fd %d: a pending door connection is lost (no relay: %s)", c, strerror(-rc));
  } else {
    ++*relayed;
  }
  Close(c);
}

// Every connection on l's wake FIFO (connections on kept door sockets).
void DrainRecords(Listener& l, int fd, const Endpoint& dest, int* relayed) {
  if (l.wake_rd < 0) return;
  for (int i = 0; i < 4096; ++i) {
    bool empty = false;
    int c = AcceptRecord(l, fd, nullptr, nullptr, SOCK_CLOEXEC, &empty);
    if (c >= 0) {
      RelayIntoBacklog(c, dest, relayed);
    } else if (empty || c != -EAGAIN) {
      return;
    }
  }
}

// A registration of the listener's fd in one of the program's epoll sets.
struct EpollReg {
  int epfd;
  epoll_event ev;
};

// The program's epoll sets that hold fd (kernel registrations, read from
// /proc/self/fdinfo): the kernel drops them when the file at fd (the
// listener's epoll fd) closes, and the kernel listener that takes the
// number must be registered again. Raw system calls, fixed buffers.
// Returns how many (at most max); none without /proc.
int FindEpollRegs(int fd, EpollReg* out, int max) {
  int dir = static_cast<int>(
      syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir < 0) return 0;
  int n = 0;
  alignas(8) char buf[4096];
  for (;;) {
    long got = syscall(SYS_getdents64, dir, buf, sizeof(buf));
    if (got <= 0) break;
    for (long off = 0; off < got && n < max;) {
      struct Dirent {
        std::uint64_t ino;
        std::int64_t off;
        unsigned short reclen;
        unsigned char type;
        char name[1];
      };
      auto* d = reinterpret_cast<Dirent*>(buf + off);
      off += d->reclen;
      if (d->name[0] < '0' || d->name[0] > '9') continue;
      const int ep = atoi(d->name);
      if (ep == fd || ep == dir) continue;
      char path[64], target[32] = {};
      snprintf(path, sizeof(path), "/proc/self/fd/%d", ep);
      long tl = syscall(SYS_readlinkat, AT_FDCWD, path, target, sizeof(target) - 1);
      if (tl <= 0 || strcmp(target, "anon_inode:[eventpoll]") != 0) continue;
      snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", ep);
      int info = static_cast<int>(syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC));
      if (info < 0) continue;
      char text[16384];
      long len = syscall(SYS_read, info, text, sizeof(text) - 1);
      syscall(SYS_close, info);
      if (len <= 0) continue;
      text[len] = '\0';
      // "tfd: %8d events: %8x data: %16llx  pos:..." per registration.
      for (char* line = strstr(text, "tfd:"); line != nullptr && n < max;
           line = strstr(line + 4, "tfd:")) {
        int tfd = -1;
        unsigned events = 0;
        unsigned long long data = 0;
        if (sscanf(line, "tfd: %d events: %x data: %llx", &tfd, &events, &data) == 3 && tfd == fd) {
          out[n].epfd = ep;
          out[n].ev.events = events;
          out[n].ev.data.u64 = data;
          ++n;
        }
      }
    }
  }
  syscall(SYS_close, dir);
  return n;
}

}  // namespace

int UnaccelerateListener(int fd) {
  Ref r = GlobalTable().Get(fd);
  Listener* l = r.As<Listener>();
  if (l == nullptr) return -EINVAL;
  // New clients find the doors refusing (a Unix listener shut down for
  // reading refuses connects; those queued can still be accepted) and
  // connect over TCP: from now on the kernel listener serves everyone.
  for (int d : l->door_fd) {
    if (d >= 0) DOORWAY_REAL(shutdown)(d, SHUT_RD);
  }
  // Door connections already made (their clients' connect returned) are
  // in the listener's backlog as far as the program knows: each goes on as
  // a kernel TCP connection relayed to its rings, queued at the kernel
  // listener, so that whichever process accepts gets it.
  const Endpoint dest = KernelListenerAddress(*l);
  int relayed = 0;
  DrainRecords(*l, fd, dest, &relayed);
  for (int d : l->door_fd) {
    for (int i = 0; d >= 0 && i < 4096; ++i) {
      pollfd p{d, POLLIN, 0};
      if (syscall(SYS_poll, &p, 1, 0) != 1) break;
      int c = AcceptDoor(*l, fd, d, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) {
        RelayIntoBacklog(c, dest, &relayed);
      } else if (c != -EAGAIN && c != -ENOMEM && c != -ENFILE) {
        break;  // EMFILE: the rest are lost when the door closes
      }
    }
  }
  // Parked door connections (Hello late, or waiting for memory): each is
  // given a moment for its Hello.
  const std::int64_t deadline = NowNs() + 500'000'000;
  for (int round = 0; round < 10000; ++round) {
    std::uint64_t waiting = 0;
    const std::uint64_t kept =
        l->reused != nullptr ? l->pending_reused.load(std::memory_order_relaxed) : 0;
    for (int i = 0; i < Listener::kMaxPending; ++i) {
      if (l->pending[i].load() >= 0 && (kept & (std::uint64_t{1} << i)) == 0) {
        waiting |= std::uint64_t{1} << i;
      }
    }
    if (waiting == 0 || NowNs() > deadline) break;
    int c = AcceptPending(*l, fd, nullptr, nullptr, SOCK_CLOEXEC, waiting);
    if (c >= 0) {
      RelayIntoBacklog(c, dest, &relayed);
    } else {
      timespec ts{0, 1'000'000};
      nanosleep(&ts, nullptr);
    }
  }
  DrainRecords(*l, fd, dest, &relayed);
  // The rest: kept door sockets with no connection on them (their clients
  // see the hang-up and take the door next time, which refuses: TCP), and
  // connections whose Hello never came (reset).
  int dropped = DropParked(*l, fd);
  // The kernel listener takes the program's number (and its other numbers
  // for this listener), with the program's O_NONBLOCK: both processes then
  // share one kernel listener, as they would without doorway.
  const int fl = DOORWAY_REAL(fcntl)(fd, F_GETFL);
  const int tfl = DOORWAY_REAL(fcntl)(l->tcp_fd, F_GETFL);
  if (fl >= 0 && tfl >= 0) {
    DOORWAY_REAL(fcntl)(l->tcp_fd, F_SETFL, (tfl & ~O_NONBLOCK) | (fl & O_NONBLOCK));
  }
  int numbers[64];
  int n = 0;
  GlobalTable().ForEach([&](int other, const Ref& o) {
    if (o.As<Listener>() == l && n < 64) numbers[n++] = other;
  });
  int rc = 0;
  for (int i = 0; i < n; ++i) {
    const int num = numbers[i];
    EpollReg regs[16];
    const int nregs = FindEpollRegs(num, regs, 16);
    const int fdflags = DOORWAY_REAL(fcntl)(num, F_GETFD);
    if (DOORWAY_REAL(dup3)(l->tcp_fd, num,
                           (fdflags > 0 && (fdflags & FD_CLOEXEC)) ? O_CLOEXEC : 0) != num) {
      if (num == fd) rc = -errno;
      continue;
    }
    SocketFile sf;
    sf.domain = l->domain;
    sf.type = SOCK_STREAM;
    sf.protocol = IPPROTO_TCP;
    sf.origin = Origin::kSocket;
    Ref old = GlobalTable().Install(num, Make<SocketFile>(sf), nullptr, kTagPlain);
    if (old) OnFdDetached(old);
    // The program's epoll sets go on watching the number, as they would.
    for (int k = 0; k < nregs; ++k) {
      if (DOORWAY_REAL(epoll_ctl)(regs[k].epfd, EPOLL_CTL_ADD, num, &regs[k].ev) != 0) {
        DOORWAY_LOG(kWarn, "fd %d: listener not registered again in epoll set %d (%s)", num,
                    regs[k].epfd, strerror(errno));
      }
    }
  }
  DOORWAY_LOG(kDebug,
              "fd %d: listener is a kernel listener again (%d pending door connection(s) relayed "
              "into its backlog, %d dropped)",
              fd, relayed, dropped);
  return rc;
}

}  // namespace doorway::runtime

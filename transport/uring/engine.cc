#include "transport/uring/engine.h"

#include <fcntl.h>
#include <liburing.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace doorway::transport::uring {

namespace {

// ---------------------------------------------------------------------------
// Raw system calls that leave errno alone (the caller sets errno once, at the
// ABI's exit point) and never go through a symbol doorway interposes.

#if defined(__x86_64__)
inline long Sys(long nr, long a = 0, long b = 0, long c = 0, long d = 0, long e = 0, long f = 0) {
  long ret;
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  register long r9 __asm__("r9") = f;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return ret;
}
#else
inline long Sys(long nr, long a = 0, long b = 0, long c = 0, long d = 0, long e = 0, long f = 0) {
  int saved = errno;
  long r = ::syscall(nr, a, b, c, d, e, f);
  if (r == -1) r = -errno;
  errno = saved;
  return r;
}
#endif

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Opcodes and flags newer than liburing 2.3's headers.
constexpr std::uint8_t kOpFutexWait = 51;       // IORING_OP_FUTEX_WAIT, Linux 6.7
constexpr std::uint8_t kOpFutexWake = 52;       // IORING_OP_FUTEX_WAKE, Linux 6.7
constexpr std::uint32_t kFutex2SizeU32 = 0x02;  // FUTEX2_SIZE_U32
constexpr std::uint32_t kFutex2Private = 128;   // FUTEX2_PRIVATE

constexpr unsigned kRingEntries = 8;  // at most 3 requests are ever in flight
constexpr int kMaxIov = 64;           // larger vectors take the direct syscall

// Returned by the Run* helpers when the kernel refused the submission.
constexpr int kRefused = -0x7fff;

// user_data tags. At most one request of each kind is in flight per ring.
constexpr std::uint64_t kTagOp = 1;
constexpr std::uint64_t kTagWake = 2;
constexpr std::uint64_t kTagCancel = 3;
constexpr std::uint64_t kTagPoll = 4;     // WaitFdOrFutex
constexpr std::uint64_t kTagFutex = 5;    // WaitFdOrFutex
constexpr std::uint64_t kTagCancel2 = 6;  // WaitFdOrFutex

// Flags the engine carries; anything else takes the direct syscall.
constexpr int kRecvFlags = MSG_DONTWAIT | MSG_WAITALL | MSG_PEEK;
constexpr int kSendFlags = MSG_DONTWAIT | MSG_NOSIGNAL | MSG_MORE | MSG_EOR;

enum : std::uint32_t { kNone = 0, kReady = 1, kFailed = 2 };

// Lives in its own page, MADV_WIPEONFORK: a fork child reads all zeros
// (state kNone) and builds a fresh ring instead of touching the parent's.
struct ThreadRing {
  std::uint32_t state;
  io_uring ring;
  ThreadStats stats;
};
static_assert(sizeof(ThreadRing) <= 4096);

constinit std::atomic<int> g_init{0};  // 0 = not yet, 1 = ok, 2 = unsupported
constinit Support g_support{};
constinit bool g_futex_wake = false;
constinit bool g_futex_wait = false;
constinit bool g_sqpoll = false;

// SQPOLL: how long the kernel thread polls before it sleeps, and how many
// pause rounds the caller spins for an inline completion before it waits
// in io_uring_enter.
constexpr unsigned kSqIdleMs = 50;
constexpr int kSqSpin = 256;
constinit pthread_key_t g_key = 0;

}  // namespace
// Initial-exec TLS: touching it never allocates (preload objects are loaded
// at startup, so static TLS is available). Not file-local: gold, the
// toolchain's linker, resolves file-local initial-exec TLS of a shared
// object to the wrong variable (runtime/signals.cc "TLS and gold").
__attribute__((tls_model("initial-exec"),
               visibility("hidden"))) constinit thread_local void* t_uring_ring =
    nullptr;  // a ThreadRing* (whose type is file-local)
// Set while this thread is inside the engine; a signal handler that calls in
// meanwhile takes the direct syscall.
__attribute__((tls_model("initial-exec"),
               visibility("hidden"))) constinit thread_local bool t_uring_busy = false;
namespace {

ThreadRing* const kDead = reinterpret_cast<ThreadRing*>(1);

void UnmapRing(io_uring* r) {
  size_t sqes = r->sq.ring_entries * sizeof(io_uring_sqe);
  if (r->sq.sqes != nullptr) Sys(SYS_munmap, reinterpret_cast<long>(r->sq.sqes), sqes);
  if (r->cq.ring_ptr != nullptr && r->cq.ring_ptr != r->sq.ring_ptr) {
    Sys(SYS_munmap, reinterpret_cast<long>(r->cq.ring_ptr), r->cq.ring_sz);
  }
  if (r->sq.ring_ptr != nullptr)
    Sys(SYS_munmap, reinterpret_cast<long>(r->sq.ring_ptr), r->sq.ring_sz);
}

// Thread exit (pthread key destructor). The kernel drops the registered
// ring when the thread exits; we give back the mappings.
void DestroyThreadRing(void* p) {
  auto* t = static_cast<ThreadRing*>(p);
  if (t == nullptr || t == kDead) return;
  if (t->state == kReady) UnmapRing(&t->ring);
  Sys(SYS_munmap, reinterpret_cast<long>(t), 4096);
  // Calls made by later thread-exit destructors take the direct syscall.
  t_uring_ring = kDead;
}

// Creates the ring of this thread. Raw syscalls only: no allocation, no
// interposed symbol (liburing 2.3 issues its own syscalls).
bool SetupRing(ThreadRing* t) {
  io_uring_params p{};
  if (g_sqpoll) {
    p.flags |= IORING_SETUP_SQPOLL;
    p.sq_thread_idle = kSqIdleMs;
  }
  int r = io_uring_queue_init_params(kRingEntries, &t->ring, &p);
  if (r < 0) return false;
  if ((p.features & IORING_FEAT_EXT_ARG) == 0 || io_uring_register_ring_fd(&t->ring) != 1) {
    io_uring_queue_exit(&t->ring);  // closes the ring fd with a raw syscall
    memset(&t->ring, 0, sizeof(t->ring));
    return false;
  }
  // From now on the ring is reached through its registered index only: close
  // the fd so that the program can neither see it nor close it (closefrom(),
  // daemons closing every fd) and no fd number is reused under us.
  Sys(SYS_close, t->ring.ring_fd);
  t->ring.ring_fd = -1;
  // A fork child must not see the parent's rings at all.
  io_uring* ring = &t->ring;
  Sys(SYS_madvise, reinterpret_cast<long>(ring->sq.ring_ptr), ring->sq.ring_sz, MADV_DONTFORK);
  if (ring->cq.ring_ptr != ring->sq.ring_ptr) {
    Sys(SYS_madvise, reinterpret_cast<long>(ring->cq.ring_ptr), ring->cq.ring_sz, MADV_DONTFORK);
  }
  Sys(SYS_madvise, reinterpret_cast<long>(ring->sq.sqes),
      ring->sq.ring_entries * sizeof(io_uring_sqe), MADV_DONTFORK);
  return true;
}

// The calling thread's ring, marked busy; nullptr if the engine cannot run
// here (then nothing is marked).
ThreadRing* Acquire() {
  if (t_uring_busy) return nullptr;  // re-entered from a signal handler
  t_uring_busy = true;
  // Ordered before everything below as seen by a handler on this thread.
  std::atomic_signal_fence(std::memory_order_seq_cst);
  ThreadRing* t = static_cast<ThreadRing*>(t_uring_ring);
  if (t == kDead) {
    t_uring_busy = false;
    return nullptr;
  }
  if (t == nullptr) {
    long m = Sys(SYS_mmap, 0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m < 0 && m > -4096) {
      t_uring_ring = kDead;
      t_uring_busy = false;
      return nullptr;
    }
    t = reinterpret_cast<ThreadRing*>(m);
    // Without WIPEONFORK a child would use the parent's ring: no ring then.
    if (Sys(SYS_madvise, m, 4096, MADV_WIPEONFORK) != 0) t->state = kFailed;
    t_uring_ring = t;
    pthread_setspecific(g_key, t);  // no allocation for a low key number
  }
  if (t->state == kNone) t->state = SetupRing(t) ? kReady : kFailed;
  if (t->state != kReady) {
    t_uring_busy = false;
    return nullptr;
  }
  return t;
}

void Release() {
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_uring_busy = false;
}

// ---------------------------------------------------------------------------
// One call, described so that it can be re-issued for its remainder.

enum class Kind : std::uint8_t { kRecv, kSend, kRecvmsg, kSendmsg };

struct Op {
  Op(Kind k, int f, int fl) : kind(k), fd(f), flags(fl) {}

  Kind kind;
  int fd;
  int flags;
  char* buf = nullptr;  // kRecv, kSend
  size_t len = 0;
  msghdr msg{};  // kRecvmsg, kSendmsg: msg.msg_iov points at the caller's
                 // copy of the vector (Advance trims it), kept out of Op so
                 // that read/write use little stack (handlers may run on a
                 // small sigaltstack)

  bool IsSend() const { return kind == Kind::kSend || kind == Kind::kSendmsg; }

  size_t Remaining() const {
    if (kind == Kind::kRecv || kind == Kind::kSend) return len;
    size_t n = 0;
    for (size_t i = 0; i < msg.msg_iovlen; ++i) n += msg.msg_iov[i].iov_len;
    return n;
  }

  // Drops the first n bytes (after a partial transfer).
  void Advance(size_t n) {
    if (n == 0) return;
    if (kind == Kind::kRecv || kind == Kind::kSend) {
      buf += n;
      len -= n;
      return;
    }
    while (msg.msg_iovlen > 0 && n >= msg.msg_iov[0].iov_len) {
      n -= msg.msg_iov[0].iov_len;
      ++msg.msg_iov;
      --msg.msg_iovlen;
    }
    if (msg.msg_iovlen > 0) {
      msg.msg_iov[0].iov_base = static_cast<char*>(msg.msg_iov[0].iov_base) + n;
      msg.msg_iov[0].iov_len -= n;
    }
    // Ancillary data goes with the first byte only.
    msg.msg_control = nullptr;
    msg.msg_controllen = 0;
  }

  void Prep(io_uring_sqe* sqe, int with_flags) {
    switch (kind) {
      case Kind::kRecv:
        io_uring_prep_recv(sqe, fd, buf, len, with_flags);
        break;
      case Kind::kSend:
        io_uring_prep_send(sqe, fd, buf, len, with_flags);
        break;
      case Kind::kRecvmsg:
        io_uring_prep_recvmsg(sqe, fd, &msg, static_cast<unsigned>(with_flags));
        break;
      case Kind::kSendmsg:
        io_uring_prep_sendmsg(sqe, fd, &msg, static_cast<unsigned>(with_flags));
        break;
    }
    sqe->user_data = kTagOp;
  }
};

// Reaps every available completion; records the op's result in *op_res and
// counts the others. Returns how many were reaped.
struct Pending {
  bool op = false;
  bool wake = false;
  bool cancel = false;
  int op_res = 0;
  bool Any() const { return op || wake || cancel; }
};

void Reap(io_uring* ring, Pending* p) {
  io_uring_cqe* cqe = nullptr;
  while (io_uring_peek_cqe(ring, &cqe) == 0 && cqe != nullptr) {
    switch (cqe->user_data) {
      case kTagOp:
        p->op = false;
        p->op_res = cqe->res;
        break;
      case kTagWake:
        p->wake = false;
        break;
      case kTagCancel:
        p->cancel = false;
        break;
      default:
        break;
    }
    io_uring_cqe_seen(ring, cqe);
  }
}

// Submits whatever is queued and waits until nothing of ours is in flight.
// Signals do not end this wait: what is left in flight is either a
// non-blocking request or one that has been cancelled, and either completes
// promptly; returning earlier would leave the kernel writing into a buffer
// the caller owns again.
void Drain(io_uring* ring, Pending* p) {
  Reap(ring, p);
  while (p->Any()) {
    int r = io_uring_submit_and_wait(ring, 1);  // -EINTR: a handler ran; wait again
    if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
      // This task cannot enter the ring (a vfork child on an SQPOLL ring,
      // whose requests the poller thread took): completions still arrive,
      // so look again shortly instead of spinning on the failing call.
      timespec ts{0, 100000};
      Sys(SYS_nanosleep, reinterpret_cast<long>(&ts), 0);
    }
    Reap(ring, p);
  }
}

// Cancels the op (if still in flight) and drains the ring.
void CancelAndDrain(ThreadRing* t, Pending* p) {
  Reap(&t->ring, p);
  if (p->op) {
    io_uring_sqe* sqe = io_uring_get_sqe(&t->ring);
    io_uring_prep_cancel64(sqe, kTagOp, 0);
    sqe->user_data = kTagCancel;
    p->cancel = true;
    ++t->stats.cancelled;
  }
  Drain(&t->ring, p);
}

// Submits the queued SQEs (and waits for wait_nr completions). If the
// kernel refuses the submission itself (e.g. a vfork child, which has no
// registered ring, or ENOMEM), nothing is in flight: the queued SQEs are
// withdrawn and false is returned, so that the caller can decline the call.
bool Submit(io_uring* ring, unsigned wait_nr) {
  for (int i = 0; i < 100; ++i) {  // bounded: EINTR/EAGAIN before submission
    int r = wait_nr > 0 ? io_uring_submit_and_wait(ring, wait_nr) : io_uring_submit(ring);
    if (r >= 0) return true;
    // S1: acquire pairs with the kernel's release of the SQ head: the kernel
    // has consumed every SQE below it.
    unsigned head = __atomic_load_n(ring->sq.khead, __ATOMIC_ACQUIRE);
    if (head == *ring->sq.ktail) return true;  // submitted; only the wait failed
    if (r != -EINTR && r != -EAGAIN) break;
  }
  unsigned head = __atomic_load_n(ring->sq.khead, __ATOMIC_ACQUIRE);
  if (head == *ring->sq.ktail) return true;
  // Nothing past head was consumed (the kernel takes SQEs in order and
  // refused): withdraw them.
  __atomic_store_n(ring->sq.ktail, head, __ATOMIC_RELEASE);
  ring->sq.sqe_head = ring->sq.sqe_tail = head;
  return false;
}

// The op with MSG_DONTWAIT: completes inline.
int RunNonblocking(ThreadRing* t, Op& op) {
  io_uring_sqe* sqe = io_uring_get_sqe(&t->ring);  // the ring is idle: never null
  op.Prep(sqe, op.flags | MSG_DONTWAIT);
  Pending p;
  p.op = true;
  if (g_sqpoll) {
    // No system call unless the poller sleeps (liburing then wakes it).
    if (!Submit(&t->ring, 0)) return kRefused;
    for (int i = 0; i < kSqSpin && p.op; ++i) {  // bounded spin
      Reap(&t->ring, &p);
      CpuRelax();
    }
  } else if (!Submit(&t->ring, 1)) {
    return kRefused;
  }
  Drain(&t->ring, &p);
  return p.op_res;
}

long NowNs() {
  timespec ts{};
  Sys(SYS_clock_gettime, CLOCK_MONOTONIC, reinterpret_cast<long>(&ts));
  return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

// One blocking request without a timeout: the op hard-linked to a futex wake
// on the CQ tail, and a futex wait on that tail. Returns the op's result, or
// -EINTR if a signal whose handler lacks SA_RESTART interrupted it before
// anything moved.
int RunBlockingFutex(ThreadRing* t, Op& op) {
  io_uring* ring = &t->ring;
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  op.Prep(sqe, op.flags);
  sqe->flags |= IOSQE_IO_HARDLINK;  // the wake runs whatever the op's result
  io_uring_sqe* wake = io_uring_get_sqe(ring);
  io_uring_prep_rw(kOpFutexWake, wake, static_cast<int>(kFutex2SizeU32 | kFutex2Private),
                   ring->cq.ktail, 0, /*val=nr to wake*/ 1);
  wake->addr3 = FUTEX_BITSET_MATCH_ANY;
  wake->user_data = kTagWake;
  Pending p;
  p.op = p.wake = true;
  if (!Submit(ring, 0)) return kRefused;
  ++t->stats.blocked;
  for (;;) {
    // F1: acquire pairs with the kernel's release store of the CQ tail when
    // it posts a completion: the CQEs below the tail we read are visible.
    unsigned tail = __atomic_load_n(ring->cq.ktail, __ATOMIC_ACQUIRE);
    Reap(ring, &p);
    if (!p.op) break;
    // The kernel publishes the op's completion (moves the tail) before the
    // hard-linked wake runs, so a wait on an unchanged tail cannot miss it.
    // No timeout: FUTEX_WAIT with a timeout fails with EINTR after any
    // handler (ERESTART_RESTARTBLOCK), without one it follows SA_RESTART
    // (ERESTARTSYS), which is what recv/send do.
    long r = Sys(SYS_futex, reinterpret_cast<long>(ring->cq.ktail), FUTEX_WAIT_PRIVATE, tail, 0);
    if (r == -EINTR) {
      // A handler without SA_RESTART ran (with SA_RESTART the kernel
      // restarts the futex wait and we never see it).
      CancelAndDrain(t, &p);
      return p.op_res == -ECANCELED ? -EINTR : p.op_res;
    }
  }
  Drain(ring, &p);  // the wake's completion follows the op's
  return p.op_res;
}

// One blocking request with SO_RCVTIMEO/SO_SNDTIMEO: wait with a timeout.
// Like the socket call with a timeout, any handled signal ends the wait with
// EINTR (SA_RESTART or not); the timeout ends it with EAGAIN.
int RunBlockingTimeout(ThreadRing* t, Op& op, long deadline_ns) {
  io_uring* ring = &t->ring;
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  op.Prep(sqe, op.flags);
  Pending p;
  p.op = true;
  if (!Submit(ring, 0)) return kRefused;
  ++t->stats.blocked;
  int why = 0;
  for (;;) {
    Reap(ring, &p);
    if (!p.op) return p.op_res;
    long left = deadline_ns - NowNs();
    if (left <= 0) {
      why = -EAGAIN;
      break;
    }
    __kernel_timespec ts{left / 1000000000L, left % 1000000000L};
    io_uring_cqe* cqe = nullptr;
    int r = io_uring_wait_cqe_timeout(ring, &cqe, &ts);
    if (r == -EINTR) {
      why = -EINTR;
      break;
    }
  }
  CancelAndDrain(t, &p);
  return p.op_res == -ECANCELED ? why : p.op_res;
}

// The direct syscall for the remainder (kernels without FUTEX_WAKE).
long RunDirect(Op& op) {
  switch (op.kind) {
    case Kind::kRecv:
      return Sys(SYS_recvfrom, op.fd, reinterpret_cast<long>(op.buf), op.len, op.flags, 0, 0);
    case Kind::kSend:
      return Sys(SYS_sendto, op.fd, reinterpret_cast<long>(op.buf), op.len, op.flags, 0, 0);
    case Kind::kRecvmsg:
      return Sys(SYS_recvmsg, op.fd, reinterpret_cast<long>(&op.msg), op.flags);
    case Kind::kSendmsg:
      return Sys(SYS_sendmsg, op.fd, reinterpret_cast<long>(&op.msg), op.flags);
  }
  return -EINVAL;
}

// The blocking part of a call on a blocking socket. Sends (and receives with
// MSG_WAITALL) continue until everything moved, as the syscall does; a
// signal, the timeout, EOF or an error ends them with the partial count.
long Block(ThreadRing* t, Op& op) {
  long timeout_ns = 0;
  {
    timeval tv{};
    socklen_t len = sizeof(tv);
    if (Sys(SYS_getsockopt, op.fd, SOL_SOCKET, op.IsSend() ? SO_SNDTIMEO : SO_RCVTIMEO,
            reinterpret_cast<long>(&tv), reinterpret_cast<long>(&len)) == 0) {
      timeout_ns = tv.tv_sec * 1000000000L + tv.tv_usec * 1000L;
    }
  }
  long deadline = timeout_ns > 0 ? NowNs() + timeout_ns : 0;
  bool more = op.IsSend() || (op.flags & MSG_WAITALL) != 0;
  long done = 0;
  // Bounded: every round moves at least one byte or ends the loop.
  for (;;) {
    long r;
    if (!g_futex_wake) {
      r = RunDirect(op);
    } else if (timeout_ns > 0) {
      r = RunBlockingTimeout(t, op, deadline);
    } else {
      r = RunBlockingFutex(t, op);
    }
    if (r == kRefused) r = RunDirect(op);  // the ring refused: the syscall
    if (r < 0) return done > 0 ? done : r;
    done += r;
    if (r == 0 || !more) return done;
    op.Advance(static_cast<size_t>(r));
    if (op.Remaining() == 0) return done;
  }
}

bool NonBlockingFile(int fd) {
  long fl = Sys(SYS_fcntl, fd, F_GETFL);
  return fl >= 0 && (fl & O_NONBLOCK) != 0;
}

// What the socket layer does on EPIPE: SIGPIPE to the calling thread.
long Finish(const Op& op, long r) {
  if (r == -EPIPE && op.IsSend() && (op.flags & MSG_NOSIGNAL) == 0) {
    Sys(SYS_tgkill, Sys(SYS_getpid), Sys(SYS_gettid), SIGPIPE);
  }
  return r;
}

ssize_t Execute(Op& op) {
  ThreadRing* t = Acquire();
  if (t == nullptr) return kNotHandled;
  ++t->stats.calls;
  size_t total = op.Remaining();
  long r = RunNonblocking(t, op);
  if (r == kRefused) {
    Release();
    return kNotHandled;
  }
  bool partial = r >= 0 && static_cast<size_t>(r) < total &&
                 (op.IsSend() || ((op.flags & MSG_WAITALL) != 0 && r > 0));
  if ((op.flags & MSG_DONTWAIT) != 0 || (r != -EAGAIN && !partial) || NonBlockingFile(op.fd)) {
    Release();
    return Finish(op, r);
  }
  // A blocking socket and the call is not complete: block for the rest.
  long done = r > 0 ? r : 0;
  op.Advance(static_cast<size_t>(done));
  long rest = Block(t, op);
  Release();
  if (rest < 0) return done > 0 ? done : Finish(op, rest);
  return done + rest;
}

// Copies the vector into storage[kMaxIov] (the engine trims its copy).
bool LoadIov(Op& op, const iovec* iov, size_t iovcnt, iovec* storage) {
  if (iovcnt == 0 || iovcnt > static_cast<size_t>(kMaxIov)) return false;
  memcpy(storage, iov, iovcnt * sizeof(iovec));
  op.msg.msg_iov = storage;
  op.msg.msg_iovlen = iovcnt;
  return true;
}

bool Usable() { return g_init.load(std::memory_order_acquire) == 1; }

}  // namespace

Support Initialize(const Options& options) {
  int state = g_init.load(std::memory_order_acquire);
  if (state != 0) return g_support;
  g_sqpoll = options.sqpoll;
  Support s;
  io_uring_probe* probe = io_uring_get_probe();
  if (probe == nullptr) {
    s.reason = "io_uring unavailable (kernel, sysctl kernel.io_uring_disabled, or seccomp)";
  } else {
    bool ops = io_uring_opcode_supported(probe, IORING_OP_SEND) &&
               io_uring_opcode_supported(probe, IORING_OP_RECV) &&
               io_uring_opcode_supported(probe, IORING_OP_SENDMSG) &&
               io_uring_opcode_supported(probe, IORING_OP_RECVMSG) &&
               io_uring_opcode_supported(probe, IORING_OP_ASYNC_CANCEL);
    s.futex_wake = io_uring_opcode_supported(probe, kOpFutexWake);
    s.futex_wait = io_uring_opcode_supported(probe, kOpFutexWait);
    io_uring_free_probe(probe);
    if (!ops) {
      s.reason = "kernel lacks IORING_OP_SEND/RECV/SENDMSG/RECVMSG/ASYNC_CANCEL";
    } else if (pthread_key_create(&g_key, &DestroyThreadRing) != 0) {
      s.reason = "no pthread key left";
    } else {
      s.ok = true;
    }
  }
  if (s.ok) {
    // Build this thread's ring now, which also checks EXT_ARG and
    // registered ring fds.
    g_futex_wake = s.futex_wake;
    g_futex_wait = s.futex_wait;
    g_init.store(1, std::memory_order_release);
    ThreadRing* t = Acquire();
    if (t == nullptr) {
      s.ok = false;
      s.reason =
          "cannot set up a ring (needs IORING_FEAT_EXT_ARG and registered ring fds, "
          "Linux 5.18)";
      g_init.store(2, std::memory_order_release);
    } else {
      Release();
    }
  } else {
    g_init.store(2, std::memory_order_release);
  }
  g_support = s;
  return s;
}

bool Ready() { return Usable(); }

ssize_t Recv(int fd, void* buf, size_t n, int flags) {
  if (!Usable() || n == 0 || (flags & ~kRecvFlags) != 0 ||
      (flags & (MSG_PEEK | MSG_WAITALL)) == (MSG_PEEK | MSG_WAITALL)) {
    return kNotHandled;
  }
  Op op{Kind::kRecv, fd, flags};
  op.buf = static_cast<char*>(buf);
  op.len = n;
  return Execute(op);
}

ssize_t Send(int fd, const void* buf, size_t n, int flags) {
  if (!Usable() || n == 0 || (flags & ~kSendFlags) != 0) return kNotHandled;
  Op op{Kind::kSend, fd, flags};
  op.buf = static_cast<char*>(const_cast<void*>(buf));
  op.len = n;
  return Execute(op);
}

ssize_t Sendto(int fd, const void* buf, size_t n, int flags, const sockaddr* addr, socklen_t len) {
  if (addr == nullptr) return Send(fd, buf, n, flags);
  if (!Usable() || n == 0 || (flags & ~kSendFlags) != 0) return kNotHandled;
  Op op{Kind::kSendmsg, fd, flags};
  iovec one{const_cast<void*>(buf), n};
  op.msg.msg_iov = &one;
  op.msg.msg_iovlen = 1;
  op.msg.msg_name = const_cast<sockaddr*>(addr);
  op.msg.msg_namelen = len;
  return Execute(op);
}

ssize_t Recvmsg(int fd, msghdr* msg, int flags) {
  // MSG_WAITALL would continue into a trimmed copy of the header and need
  // the write-backs of several requests merged: left to the syscall.
  if (!Usable() || msg == nullptr || (flags & ~(kRecvFlags | MSG_CMSG_CLOEXEC)) != 0 ||
      (flags & MSG_WAITALL) != 0) {
    return kNotHandled;
  }
  Op op{Kind::kRecvmsg, fd, flags};
  iovec storage[kMaxIov];
  if (!LoadIov(op, msg->msg_iov, msg->msg_iovlen, storage) || op.Remaining() == 0) {
    return kNotHandled;
  }
  op.msg.msg_name = msg->msg_name;
  op.msg.msg_namelen = msg->msg_namelen;
  op.msg.msg_control = msg->msg_control;
  op.msg.msg_controllen = msg->msg_controllen;
  ssize_t r = Execute(op);
  if (r >= 0 && r != kNotHandled) {
    // The kernel wrote these back into our copy, as recvmsg(2) does into
    // the caller's (the vector itself is the caller's memory).
    msg->msg_namelen = op.msg.msg_namelen;
    msg->msg_controllen = op.msg.msg_controllen;
    msg->msg_flags = op.msg.msg_flags;
  }
  return r;
}

ssize_t Recvfrom(int fd, void* buf, size_t n, int flags, sockaddr* addr, socklen_t* len) {
  if (addr == nullptr) return Recv(fd, buf, n, flags);
  if (len == nullptr || n == 0 || (flags & MSG_WAITALL) != 0) return kNotHandled;
  iovec one{buf, n};
  msghdr m{};
  m.msg_name = addr;
  m.msg_namelen = *len;
  m.msg_iov = &one;
  m.msg_iovlen = 1;
  ssize_t r = Recvmsg(fd, &m, flags);
  if (r >= 0 && r != kNotHandled) *len = m.msg_namelen;
  return r;
}

ssize_t Readv(int fd, const iovec* iov, int iovcnt) {
  if (!Usable() || iovcnt <= 0) return kNotHandled;
  Op op{Kind::kRecvmsg, fd, 0};
  iovec storage[kMaxIov];
  if (!LoadIov(op, iov, static_cast<size_t>(iovcnt), storage) || op.Remaining() == 0) {
    return kNotHandled;
  }
  return Execute(op);
}

ssize_t Writev(int fd, const iovec* iov, int iovcnt) {
  if (!Usable() || iovcnt <= 0) return kNotHandled;
  Op op{Kind::kSendmsg, fd, 0};
  iovec storage[kMaxIov];
  if (!LoadIov(op, iov, static_cast<size_t>(iovcnt), storage) || op.Remaining() == 0) {
    return kNotHandled;
  }
  return Execute(op);
}

ssize_t Sendmsg(int fd, const msghdr* msg, int flags) {
  if (!Usable() || msg == nullptr || (flags & ~kSendFlags) != 0) return kNotHandled;
  Op op{Kind::kSendmsg, fd, flags};
  iovec storage[kMaxIov];
  if (!LoadIov(op, msg->msg_iov, msg->msg_iovlen, storage) || op.Remaining() == 0) {
    return kNotHandled;
  }
  op.msg.msg_name = msg->msg_name;
  op.msg.msg_namelen = msg->msg_namelen;
  op.msg.msg_control = msg->msg_control;
  op.msg.msg_controllen = msg->msg_controllen;
  return Execute(op);
}

int WaitFdOrFutex(int fd, short events, const std::uint32_t* word, std::uint32_t expected,
                  int timeout_ms, short* revents, bool* woken) {
  *revents = 0;
  *woken = false;
  if (!Usable() || !g_futex_wait) return -EOPNOTSUPP;
  ThreadRing* t = Acquire();
  if (t == nullptr) return -EBUSY;
  io_uring* ring = &t->ring;
  io_uring_sqe* poll = io_uring_get_sqe(ring);
  io_uring_prep_poll_add(poll, fd, static_cast<unsigned>(static_cast<unsigned short>(events)));
  poll->user_data = kTagPoll;
  io_uring_sqe* fut = io_uring_get_sqe(ring);
  // Shared futex: no FUTEX2_PRIVATE, so that another process's FUTEX_WAKE
  // on the same shared page finds us.
  io_uring_prep_rw(kOpFutexWait, fut, static_cast<int>(kFutex2SizeU32),
                   const_cast<std::uint32_t*>(word), 0, expected);
  fut->addr3 = FUTEX_BITSET_MATCH_ANY;
  fut->user_data = kTagFutex;
  if (!Submit(ring, 0)) {
    Release();
    return -EBUSY;
  }
  bool poll_pending = true, futex_pending = true;
  int poll_res = -ECANCELED, futex_res = -ECANCELED;
  auto reap = [&] {
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(ring, &cqe) == 0 && cqe != nullptr) {
      if (cqe->user_data == kTagPoll) {
        poll_pending = false;
        poll_res = cqe->res;
      } else if (cqe->user_data == kTagFutex) {
        futex_pending = false;
        futex_res = cqe->res;
      }
      io_uring_cqe_seen(ring, cqe);
    }
  };
  long deadline = timeout_ms >= 0 ? NowNs() + timeout_ms * 1000000L : 0;
  int ret = 0;
  for (;;) {
    reap();
    if (!poll_pending || !futex_pending) {
      ret = 1;
      break;
    }
    int r;
    io_uring_cqe* cqe = nullptr;
    if (timeout_ms >= 0) {
      long left = deadline - NowNs();
      if (left <= 0) break;  // timeout: ret 0
      __kernel_timespec ts{left / 1000000000L, left % 1000000000L};
      r = io_uring_wait_cqe_timeout(ring, &cqe, &ts);
    } else {
      r = io_uring_wait_cqe(ring, &cqe);
    }
    if (r == -EINTR) {
      ret = -EINTR;
      break;
    }
  }
  // Cancel whichever is still armed, then wait until both are gone.
  for (int i = 0; i < 2; ++i) {
    bool pending = i == 0 ? poll_pending : futex_pending;
    if (!pending) continue;
    io_uring_sqe* c = io_uring_get_sqe(ring);
    io_uring_prep_cancel64(c, i == 0 ? kTagPoll : kTagFutex, 0);
    c->user_data = kTagCancel2;
  }
  Submit(ring, 0);
  for (int i = 0; (poll_pending || futex_pending) && i < 1000000; ++i) {
    io_uring_cqe* cqe = nullptr;
    io_uring_wait_cqe(ring, &cqe);  // a cancelled poll/futex completes at once
    reap();
  }
  {
    io_uring_cqe* cqe = nullptr;  // the cancels' own completions
    while (io_uring_peek_cqe(ring, &cqe) == 0 && cqe != nullptr) io_uring_cqe_seen(ring, cqe);
  }
  Release();
  if (poll_res > 0) *revents = static_cast<short>(poll_res);
  if (poll_res == -EBADF) *revents = POLLNVAL;  // as poll(2) reports it
  // FUTEX_WAIT completes with 0 when woken and with -EAGAIN when the word
  // already differed from `expected`; a cancelled one with -ECANCELED.
  *woken = futex_res == 0 || futex_res == -EAGAIN;
  if (ret == 1 && *revents == 0 && !*woken) {
    ret = poll_res < 0 && poll_res != -ECANCELED ? poll_res : futex_res;
  }
  return ret;
}

ThreadStats GetThreadStats() {
  ThreadRing* t = static_cast<ThreadRing*>(t_uring_ring);
  if (t == nullptr || t == kDead) return {};
  ThreadStats s = t->stats;
  s.has_ring = t->state == kReady;
  return s;
}

}  // namespace doorway::transport::uring

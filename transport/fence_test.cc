// The asymmetric fence (fence.h): wake-ups in the fenced mode across fork()ed
// processes, and the fallbacks when membarrier is unavailable or fails.
// Never asserts on timing; every wait has a timeout that fails the test
// instead of hanging (a lost wake-up in a futex-only ping-pong would hang).
#include "transport/fence.h"

#include <linux/membarrier.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include "gtest/gtest.h"
#include "transport/internal/futex.h"
#include "transport/internal/layout.h"
#include "transport/internal/test_util.h"
#include "transport/segment.h"
#include "transport/wait.h"

namespace doorway::transport {
namespace {

constexpr int64_t kWaitTimeoutNs = 10'000'000'000;  // a lost wake-up fails, never hangs
constexpr size_t kMsg = 64;
// Each timed phase stops after this long, however few rounds it made (a
// loaded machine): fewer rounds only make the test weaker, never fail it.
constexpr int64_t kPhaseBudgetNs = 2'000'000'000;
constexpr uint64_t kLast = uint64_t{1} << 63;  // marks the ping-pong's last round

// Fresh state for each test: the real system call, nothing registered in
// this process's view (the kernel-side registration cannot be undone and
// does not matter: only g_fast_publish selects the waker's store).
void ResetFence() {
  internal::SetMembarrierForTesting(nullptr);
  internal::ResetAsymmetricFenceForTesting();
}

long FailAll(int, unsigned, int) { return -ENOSYS; }
long QueryWithoutGlobal(int cmd, unsigned, int) {
  return cmd == MEMBARRIER_CMD_QUERY ? MEMBARRIER_CMD_PRIVATE_EXPEDITED : -EINVAL;
}
// A seccomp filter that denies the registration, or only the fence itself.
long DenyRegister(int cmd, unsigned f, int c) {
  if (cmd == MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) return -EPERM;
  return syscall(SYS_membarrier, cmd, f, c) < 0 ? -errno : 0;
}
long DenyFence(int cmd, unsigned f, int c) {
  if (cmd == MEMBARRIER_CMD_GLOBAL_EXPEDITED) return -EPERM;
  long r = syscall(SYS_membarrier, cmd, f, c);
  return r < 0 ? -errno : r;
}

Segment NewSegment() {
  SegmentOptions o;
  o.ring_capacity[0] = o.ring_capacity[1] = 4096;
  o.pages = PagePolicy::kSmall;
  Segment s;
  EXPECT_EQ(Segment::Create(o, &s), 0);
  return s;
}

// Reads exactly n bytes, waiting (bounded) as needed. 0 or an error.
int ReadAll(Ring& r, void* buf, size_t n, SpinPolicy* spin) {
  size_t got = 0;
  WaitOptions o;
  o.timeout_ns = kWaitTimeoutNs;
  while (got < n) {
    int64_t k = r.Read(static_cast<char*>(buf) + got, n - got);
    if (k > 0) {
      got += static_cast<size_t>(k);
      continue;
    }
    if (k != -EAGAIN) return k == 0 ? -EPIPE : static_cast<int>(k);
    if (int w = WaitReadable(r, o, spin); w != 0) return w;
  }
  return 0;
}

int WriteAll(Ring& r, const void* buf, size_t n, SpinPolicy* spin) {
  size_t put = 0;
  WaitOptions o;
  o.timeout_ns = kWaitTimeoutNs;
  while (put < n) {
    int64_t k = r.Write(static_cast<const char*>(buf) + put, n - put);
    if (k > 0) {
      put += static_cast<size_t>(k);
      continue;
    }
    if (k != -EAGAIN) return static_cast<int>(k);
    if (int w = WaitWritable(r, 1, o, spin); w != 0) return w;
  }
  return 0;
}

// `rounds` 64 B round trips (the first half futex only, so that nearly every
// wait sleeps; the second half with a short spin, so that spins, sleeps and
// the races between them mix), then a stream of `stream_bytes` in random
// chunks through a 4 KiB ring, futex only, so that the producer sleeps for
// space (space_wait) as often as the consumer for data. The partner is a
// fork()ed child (server role); the result is its exit status (0: ok).
// `in_child` runs first in the child (e.g. to inject a failing fence).
int PingPongAndStream(Segment& seg, int rounds, uint64_t stream_bytes, void (*in_child)()) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    if (in_child != nullptr) in_child();
    RingStats rs, ts;
    Ring rx = seg.MakeRxRing(Role::kServer, &rs);
    Ring tx = seg.MakeTxRing(Role::kServer, &ts);
    SpinPolicy none = SpinPolicy::Disabled();
    SpinPolicy some(2'000, 5'000, 0);
    char buf[kMsg];
    for (int i = 0; i < rounds; ++i) {
      SpinPolicy* sp = i < rounds / 2 ? &none : &some;
      if (ReadAll(rx, buf, kMsg, sp) != 0) _exit(10);
      uint64_t v;
      std::memcpy(&v, buf, 8);
      if ((v & ~kLast) != static_cast<uint64_t>(i)) _exit(11);
      if (WriteAll(tx, buf, kMsg, sp) != 0) _exit(12);
      if (v & kLast) break;
    }
    testing::Rng rng(7);
    std::vector<uint8_t> chunk(3000);
    uint64_t got = 0, sum = 0;
    while (got < stream_bytes) {
      size_t want = static_cast<size_t>(rng.Uniform(1, chunk.size()));
      if (want > stream_bytes - got) want = static_cast<size_t>(stream_bytes - got);
      if (ReadAll(rx, chunk.data(), want, &none) != 0) _exit(13);
      for (size_t k = 0; k < want; ++k) sum = sum * 31 + chunk[k] + got + k;
      got += want;
    }
    if (WriteAll(tx, &sum, sizeof sum, &none) != 0) _exit(14);
    _exit(0);
  }
  RingStats ts, rs;
  Ring tx = seg.MakeTxRing(Role::kClient, &ts);
  Ring rx = seg.MakeRxRing(Role::kClient, &rs);
  SpinPolicy none = SpinPolicy::Disabled();
  SpinPolicy some(2'000, 5'000, 0);
  char buf[kMsg] = {};
  int failed = 0;
  const int64_t end = internal::MonotonicNs() + kPhaseBudgetNs;
  for (int i = 0; i < rounds && failed == 0; ++i) {
    SpinPolicy* sp = i < rounds / 2 ? &none : &some;
    uint64_t v = static_cast<uint64_t>(i);
    // Bounded in time too (a loaded machine): the last round says so.
    const bool last = i + 1 == rounds || (i % 64 == 63 && internal::MonotonicNs() > end);
    if (last) v |= kLast;
    std::memcpy(buf, &v, 8);
    if (WriteAll(tx, buf, kMsg, sp) != 0) failed = 20;
    if (failed == 0 && ReadAll(rx, buf, kMsg, sp) != 0) failed = 21;
    uint64_t back;
    std::memcpy(&back, buf, 8);
    if (failed == 0 && back != v) failed = 22;
    if (last) break;
  }
  testing::Rng rng(7), data(9);
  std::vector<uint8_t> chunk(3000);
  uint64_t put = 0, sum = 0;
  while (put < stream_bytes && failed == 0) {
    size_t n = static_cast<size_t>(rng.Uniform(1, chunk.size()));
    if (n > stream_bytes - put) n = static_cast<size_t>(stream_bytes - put);
    for (size_t k = 0; k < n; ++k) {
      chunk[k] = static_cast<uint8_t>(data.Next());
      sum = sum * 31 + chunk[k] + put + k;
    }
    if (WriteAll(tx, chunk.data(), n, &none) != 0) failed = 23;
    put += n;
  }
  uint64_t child_sum = 0;
  if (failed == 0 && ReadAll(rx, &child_sum, sizeof child_sum, &none) != 0) failed = 24;
  if (failed == 0 && child_sum != sum) failed = 25;
  if (failed != 0) kill(pid, SIGKILL);
  int st = testing::WaitChild(pid);
  // The child slept for data (futex only) and this side woke it.
  if (failed == 0 && ts.futex_wakes.load() == 0) failed = 26;
  return failed != 0 ? failed : st;
}

TEST(AsymmetricFence, WakeUpsAcrossForkedProcesses) {
  if (testing::kUnderTsan) GTEST_SKIP() << "TSAN: fast mode off, and fork in a threaded process";
  ResetFence();
  if (!EnableAsymmetricFence()) GTEST_SKIP() << "membarrier global expedited unavailable";
  EXPECT_TRUE(internal::FastPublish());
  Segment seg = NewSegment();
  // The child must still be registered (the kernel copies the registration
  // with the address space; the atfork handler registers again anyway).
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    constexpr int kGetRegistrations = 1 << 9;  // MEMBARRIER_CMD_GET_REGISTRATIONS (6.3)
    long regs = syscall(SYS_membarrier, kGetRegistrations, 0, 0);
    if (regs >= 0 && (regs & MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0) _exit(1);
    _exit(internal::FastPublish() ? 0 : 2);
  }
  ASSERT_EQ(testing::WaitChild(pid), 0);

  const int rounds = testing::kUnderSanitizer ? 1000 : 4000;
  const uint64_t stream = testing::kUnderSanitizer ? (1u << 20) : (4u << 20);
  EXPECT_EQ(PingPongAndStream(seg, rounds, stream, nullptr), 0);
  // Every end view advertised its side's line (Segment::MakeTxRing/MakeRxRing).
  internal::RingControl* r0 = seg.MakeTxRing(Role::kClient, nullptr).control();
  internal::RingControl* r1 = seg.MakeRxRing(Role::kClient, nullptr).control();
  EXPECT_EQ(r0->data_wait.fenced.load(), 1u);
  EXPECT_EQ(r0->space_wait.fenced.load(), 1u);
  EXPECT_EQ(r1->data_wait.fenced.load(), 1u);
  EXPECT_EQ(r1->space_wait.fenced.load(), 1u);
}

// The Dekker pair itself, as a store-buffering litmus test between two
// processes released together many times: the waker publishes a byte (plain
// store on the fenced line) and loads the flag (inside Write); the waiter
// stores the flag, fences (F1) and rechecks. Outcome "neither saw the
// other" is a lost wake-up and must never happen. (With the waiter's fence
// removed, x86 shows that outcome within a few thousand iterations; the
// ping-pong above rarely hits the window.)
struct Litmus {
  std::atomic<uint32_t> arrive[2];
  std::atomic<uint32_t> stop;  // set by the parent when the time budget is spent
  std::atomic<uint32_t> error;
};

bool Rendezvous(Litmus* l, int me, uint32_t i) {
  l->arrive[me].store(i, std::memory_order_seq_cst);
  int64_t deadline = 0;
  for (uint32_t spins = 0; l->arrive[1 - me].load(std::memory_order_seq_cst) < i; ++spins) {
    if (l->error.load() != 0 || l->stop.load() != 0) return false;
    if (spins % 1024 == 1023) {
      int64_t now = internal::MonotonicNs();
      if (deadline == 0) deadline = now + kWaitTimeoutNs;
      if (now > deadline) return false;
      sched_yield();  // the partner may share this CPU
    }
  }
  return true;
}

// A few pauses (0..15, from the round number) so that the two sides' start
// offsets vary from round to round and cover the window.
void Jitter(uint32_t x) {
  for (uint32_t k = (x >> 7) % 16; k > 0; --k) internal::CpuRelax();
}

TEST(AsymmetricFence, NoLostWakeUpInTheStoreBufferingRace) {
  if (testing::kUnderTsan) GTEST_SKIP() << "TSAN: fast mode off, and fork in a threaded process";
  ResetFence();
  if (!EnableAsymmetricFence()) GTEST_SKIP() << "membarrier global expedited unavailable";
  Segment seg = NewSegment();
  auto* l = static_cast<Litmus*>(
      mmap(nullptr, sizeof(Litmus), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(l, MAP_FAILED);
  new (l) Litmus{};
  Ring probe = seg.MakeTxRing(Role::kClient, nullptr);
  internal::WaitLine& w = probe.control()->data_wait;
  w.fenced.store(1);  // as the consumer side would advertise
  const uint32_t kIters = testing::kUnderSanitizer ? 20'000 : 100'000;
  // Per iteration: 1 = the waker saw the flag, 2 = the waiter saw the data.
  std::atomic<uint32_t>* seen = static_cast<std::atomic<uint32_t>*>(
      mmap(nullptr, kIters * sizeof(uint32_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
           -1, 0));
  ASSERT_NE(static_cast<void*>(seen), MAP_FAILED);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {  // the waiter (consumer)
    Ring cons = seg.MakeRxRing(Role::kServer, nullptr);
    for (uint32_t i = 1; i <= kIters; ++i) {
      if (!Rendezvous(l, 1, 2 * i)) _exit(l->stop.load() != 0 ? 0 : 1);
      Jitter(i * 2654435761u);
      w.sleeping.store(1, std::memory_order_seq_cst);  // W1
      if (FenceAfterArming(w) != 1) _exit(2);          // F1
      if (cons.ReadReady()) seen[i - 1].fetch_or(2);   // D2
      if (!Rendezvous(l, 1, 2 * i + 1)) _exit(l->stop.load() != 0 ? 0 : 3);
      char c;
      if (cons.Read(&c, 1) != 1) _exit(4);
      w.sleeping.store(0);  // test only: reset for the next round
    }
    _exit(0);
  }
  RingStats ps;
  Ring prod = seg.MakeTxRing(Role::kClient, &ps);
  uint32_t lost = 0, done = 0;
  bool ok = true;
  const int64_t end = internal::MonotonicNs() + kPhaseBudgetNs;
  for (uint32_t i = 1; i <= kIters && ok; ++i) {
    if (i % 1024 == 0 && internal::MonotonicNs() > end) {
      l->stop.store(1);  // the child is at (or before) this round's rendezvous
      break;
    }
    ok = Rendezvous(l, 0, 2 * i);
    if (!ok) break;
    uint64_t before = ps.futex_wakes.load();
    Jitter(i * 40503u + 17);
    if (prod.Write("x", 1) != 1) ok = false;  // R1 (release) + flag load
    if (ps.futex_wakes.load() != before) seen[i - 1].fetch_or(1);
    // The waiter then consumes the byte and resets its flag before it
    // arrives at the next round's rendezvous.
    ok = ok && Rendezvous(l, 0, 2 * i + 1);
    if (ok) done = i;
  }
  if (!ok) l->error.store(1);
  int st = testing::WaitChild(pid);
  EXPECT_TRUE(ok);
  EXPECT_EQ(st, 0);
  for (uint32_t i = 0; i < done; ++i) lost += seen[i].load() == 0;
  EXPECT_EQ(lost, 0u) << "of " << done << " rounds";
  munmap(seen, kIters * sizeof(uint32_t));
  munmap(l, sizeof(Litmus));
  ResetFence();
}

TEST(AsymmetricFence, DoorbellInFencedMode) {
  if (testing::kUnderTsan) GTEST_SKIP() << "TSAN: fast mode off";
  ResetFence();
  if (!EnableAsymmetricFence()) GTEST_SKIP() << "membarrier global expedited unavailable";
  Segment seg = NewSegment();
  RingStats ps, cs;
  Ring prod = seg.MakeTxRing(Role::kClient, &ps);
  Ring cons = seg.MakeRxRing(Role::kServer, &cs);
  for (int i = 0; i < 100; ++i) {
    ASSERT_FALSE(cons.ArmReadDoorbell());  // empty: not ready, armed
    EXPECT_EQ(prod.control()->data_wait.fenced.load(), 1u);
    ASSERT_EQ(prod.Write("x", 1), 1);
    EXPECT_TRUE(prod.TakeDoorbell());
    EXPECT_TRUE(cons.ArmReadDoorbell());  // data: ready
    char c;
    ASSERT_EQ(cons.Read(&c, 1), 1);
    prod.TakeDoorbell();  // the second arming may have been taken by no write: ignore
  }
  // Two-step arming: the fenced line asks for the fence.
  EXPECT_TRUE(cons.ArmReadDoorbellNoFence());
  EXPECT_TRUE(Ring::ArmFence());
  EXPECT_FALSE(cons.ReadReady());
}

TEST(AsymmetricFence, UnavailableMeansSymmetricMode) {
  for (internal::MembarrierFn fn : {&FailAll, &QueryWithoutGlobal, &DenyRegister, &DenyFence}) {
    ResetFence();
    internal::SetMembarrierForTesting(fn);
    EXPECT_FALSE(EnableAsymmetricFence());
    EXPECT_FALSE(internal::FastPublish());
  }
  // Nothing advertised: the waiters never set `fenced`, the wakers publish
  // with seq_cst, and everything still flows between processes.
  ResetFence();
  internal::SetMembarrierForTesting(&FailAll);
  ASSERT_FALSE(EnableAsymmetricFence());
  Segment seg = NewSegment();
  if (!testing::kUnderTsan) {
    EXPECT_EQ(PingPongAndStream(seg, 1000, 1u << 20, nullptr), 0);
  }
  RingStats cs;
  Ring cons = seg.MakeRxRing(Role::kServer, &cs);
  EXPECT_FALSE(cons.ArmReadDoorbell());
  EXPECT_FALSE(cons.ArmReadDoorbellNoFence());  // no fence needed
  for (int i = 0; i < 2; ++i) {
    internal::RingControl* rc = seg.MakeTxRing(Role::kClient, nullptr).control();
    if (i == 1) rc = seg.MakeRxRing(Role::kClient, nullptr).control();
    EXPECT_EQ(rc->data_wait.fenced.load(), 0u);
    EXPECT_EQ(rc->space_wait.fenced.load(), 0u);
  }
  ResetFence();
}

TEST(AsymmetricFence, FailingFenceOnAFencedLine) {
  // A line whose waiters fence (set here as a peer would), and this
  // process's fence failing (a seccomp filter installed after start-up): an
  // armer must report "ready" (its recheck proves nothing), a waiter must
  // still get its data (short slices instead of a trusted sleep).
  ResetFence();
  Segment seg = NewSegment();
  RingStats cs;
  Ring cons = seg.MakeRxRing(Role::kServer, &cs);
  cons.control()->data_wait.fenced.store(1);
  cons.control()->space_wait.fenced.store(1);
  internal::SetMembarrierForTesting(&DenyFence);
  EXPECT_TRUE(cons.ArmReadDoorbell());  // empty, but the fence failed
  EXPECT_TRUE(cons.ArmReadDoorbellNoFence());
  EXPECT_FALSE(Ring::ArmFence());
  WaitOptions o;
  o.timeout_ns = 20'000'000;
  EXPECT_EQ(WaitReadable(cons, o, nullptr), -ETIMEDOUT);  // still times out correctly
  ResetFence();

  if (testing::kUnderTsan) return;  // fork
  // The waker (this process) registered and publishing with plain stores;
  // the child's fences fail, so its wake-ups may be lost and only the
  // slices bring it back: slower, but everything arrives.
  if (!EnableAsymmetricFence()) GTEST_SKIP() << "membarrier global expedited unavailable";
  Segment seg2 = NewSegment();
  EXPECT_EQ(PingPongAndStream(seg2, 300, 256u << 10,
                              [] { internal::SetMembarrierForTesting(&DenyFence); }),
            0);
  ResetFence();
}

}  // namespace
}  // namespace doorway::transport

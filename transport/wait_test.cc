#include "transport/wait.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>

#include "gtest/gtest.h"
#include "transport/internal/futex.h"
#include "transport/internal/layout.h"
#include "transport/internal/test_util.h"
#include "transport/segment.h"

namespace doorway::transport {
namespace {

class WaitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SegmentOptions o;
    o.ring_capacity[0] = o.ring_capacity[1] = 4096;
    o.pages = PagePolicy::kSmall;
    ASSERT_EQ(Segment::Create(o, &seg_), 0);
    prod_ = seg_.MakeTxRing(Role::kClient, &pstats_);
    cons_ = seg_.MakeRxRing(Role::kServer, &cstats_);
  }
  // Bounded wait (<= 10 s) until a thread has registered as a waiter.
  static bool WaitForWaiter(internal::WaitLine& w) {
    for (int i = 0; i < 10000; ++i) {
      if (w.sleeping.load() != 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return false;
  }
  Segment seg_;
  RingStats pstats_, cstats_;
  Ring prod_, cons_;
};

TEST_F(WaitTest, ReadyReturnsAtOnce) {
  ASSERT_EQ(prod_.Write("a", 1), 1);
  SpinPolicy spin;
  EXPECT_EQ(WaitReadable(cons_, WaitOptions{}, &spin), 0);
  EXPECT_EQ(WaitWritable(prod_, 100, WaitOptions{}, &spin), 0);
  EXPECT_EQ(cstats_.futex_waits.load(), 0u);
}

TEST_F(WaitTest, NonBlockingAndTimeout) {
  WaitOptions nb;
  nb.timeout_ns = 0;
  EXPECT_EQ(WaitReadable(cons_, nb, nullptr), -EAGAIN);
  WaitOptions t;
  t.timeout_ns = 20'000'000;
  SpinPolicy spin(5'000, 5'000, 0);
  EXPECT_EQ(WaitReadable(cons_, t, &spin), -ETIMEDOUT);
  EXPECT_GE(cstats_.futex_waits.load(), 1u);
  EXPECT_EQ(cstats_.spin_misses.load(), 1u);
  // A flag left set by a timed-out waiter costs exactly one spare wake.
  EXPECT_EQ(prod_.control()->data_wait.sleeping.load(), 1u);
  ASSERT_EQ(prod_.Write("a", 1), 1);
  ASSERT_EQ(prod_.Write("b", 1), 1);
  EXPECT_EQ(pstats_.futex_wakes.load(), 1u);
  char two[2];
  ASSERT_EQ(cons_.Read(two, 2), 2);
  // Writable with a full ring.
  std::string fill(4096, 'x');
  ASSERT_EQ(prod_.Write(fill.data(), fill.size()), 4096);
  EXPECT_EQ(WaitWritable(prod_, 1, t, nullptr), -ETIMEDOUT);
  EXPECT_EQ(WaitWritable(prod_, 1, nb, nullptr), -EAGAIN);
}

TEST_F(WaitTest, SleepingConsumerIsWokenOnce) {
  SpinPolicy none = SpinPolicy::Disabled();
  std::atomic<int> rc{1};
  std::thread waiter([&] { rc = WaitReadable(cons_, WaitOptions{}, &none); });
  ASSERT_TRUE(WaitForWaiter(prod_.control()->data_wait));
  ASSERT_EQ(prod_.Write("x", 1), 1);
  waiter.join();
  EXPECT_EQ(rc.load(), 0);
  EXPECT_EQ(pstats_.futex_wakes.load(), 1u);
  EXPECT_GE(cstats_.futex_waits.load(), 1u);
  char c;
  EXPECT_EQ(cons_.Read(&c, 1), 1);
  // Nobody waits any more: no more wake-ups.
  for (int i = 0; i < 100; ++i) ASSERT_EQ(prod_.Write("y", 1), 1);
  EXPECT_EQ(pstats_.futex_wakes.load(), 1u);
}

TEST_F(WaitTest, SleepingProducerIsWokenBySpace) {
  std::string fill(4096, 'x');
  ASSERT_EQ(prod_.Write(fill.data(), fill.size()), 4096);
  std::atomic<int> rc{1};
  std::thread waiter([&] { rc = WaitWritable(prod_, 1000, WaitOptions{}, nullptr); });
  ASSERT_TRUE(WaitForWaiter(prod_.control()->space_wait));
  char buf[512];
  ASSERT_EQ(cons_.Read(buf, sizeof buf), 512);  // not enough for 1000 yet
  ASSERT_EQ(cons_.Read(buf, sizeof buf), 512);
  waiter.join();
  EXPECT_EQ(rc.load(), 0);
  EXPECT_GE(cstats_.futex_wakes.load(), 1u);
  EXPECT_GE(prod_.Writable(), 1000);
}

TEST_F(WaitTest, ShutdownWakesReaderAndWriter) {
  std::atomic<int> rc{1};
  std::thread waiter([&] { rc = WaitReadable(cons_, WaitOptions{}, nullptr); });
  ASSERT_TRUE(WaitForWaiter(prod_.control()->data_wait));
  prod_.ShutdownWrite(false);
  waiter.join();
  EXPECT_EQ(rc.load(), 0);
  char c;
  EXPECT_EQ(cons_.Read(&c, 1), 0);

  // Ring 1 (server -> client): writer blocked on a full ring, reader closes.
  RingStats s1, s2;
  Ring tx = seg_.MakeTxRing(Role::kServer, &s1);
  Ring rx = seg_.MakeRxRing(Role::kClient, &s2);
  std::string fill(4096, 'x');
  ASSERT_EQ(tx.Write(fill.data(), fill.size()), 4096);
  std::thread w2([&] { rc = WaitWritable(tx, 1, WaitOptions{}, nullptr); });
  ASSERT_TRUE(WaitForWaiter(tx.control()->space_wait));
  rx.ShutdownRead(false);
  w2.join();
  EXPECT_EQ(rc.load(), 0);
  EXPECT_EQ(tx.Write("a", 1), -EPIPE);
}

std::atomic<int> g_signals{0};
void OnSignal(int) { g_signals.fetch_add(1); }

TEST_F(WaitTest, SignalInterruptsWithEintr) {
  struct sigaction sa = {}, old = {};
  sa.sa_handler = OnSignal;
  sa.sa_flags = 0;  // no SA_RESTART
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);
  for (int64_t timeout : {int64_t{-1}, int64_t{10'000'000'000}}) {
    std::atomic<int> rc{1};
    std::atomic<bool> done{false};
    std::thread waiter([&] {
      WaitOptions o;
      o.timeout_ns = timeout;
      rc = WaitReadable(cons_, o, nullptr);
      done = true;
    });
    ASSERT_TRUE(WaitForWaiter(prod_.control()->data_wait));
    // Keep signalling until the waiter returns (bounded: 10 s).
    for (int i = 0; i < 1000 && !done.load(); ++i) {
      pthread_kill(waiter.native_handle(), SIGUSR1);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    waiter.join();
    EXPECT_EQ(rc.load(), -EINTR) << "timeout " << timeout;
  }
  EXPECT_GE(g_signals.load(), 2);
  sigaction(SIGUSR1, &old, nullptr);
}

// A signal stream faster than the liveness slice, and a caller that
// restarts after each EINTR (SA_RESTART): the dead peer must still be seen
// (it was not: every wait was interrupted before its slice expired).
TEST_F(WaitTest, PeerDeathSeenUnderASignalStorm) {
  struct sigaction sa = {}, old = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  close(sv[1]);  // the peer is gone before the wait starts
  std::atomic<bool> done{false};
  std::atomic<int> rc{1}, restarts{0};
  std::thread waiter([&] {
    WaitOptions o;
    o.liveness_fd = sv[0];
    o.liveness_interval_ns = 10'000'000'000;  // never expires in this test
    for (int i = 0; i < 100000; ++i) {
      rc = WaitReadable(cons_, o, nullptr);
      if (rc.load() != -EINTR) break;
      restarts.fetch_add(1);
    }
    done = true;
  });
  ASSERT_TRUE(WaitForWaiter(prod_.control()->data_wait));
  for (int i = 0; i < 10000 && !done.load(); ++i) {
    pthread_kill(waiter.native_handle(), SIGUSR1);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  waiter.join();
  EXPECT_EQ(rc.load(), 0);
  EXPECT_LE(restarts.load(), 0);  // the first interrupted wait saw the hang-up
  char buf[4];
  EXPECT_EQ(cons_.Read(buf, sizeof buf), 0);  // EOF
  close(sv[0]);
  sigaction(SIGUSR1, &old, nullptr);
}

TEST_F(WaitTest, PeerDeathThroughLivenessFd) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ASSERT_EQ(prod_.Write("last", 4), 4);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The "peer": holds its end of the door socket, then dies abruptly.
    close(sv[0]);
    pause();
    _exit(0);
  }
  close(sv[1]);
  EXPECT_FALSE(PeerGone(sv[0]));
  char buf[8];
  ASSERT_EQ(cons_.Read(buf, sizeof buf), 4);
  std::atomic<int> rc{1};
  std::thread waiter([&] {
    WaitOptions o;
    o.liveness_fd = sv[0];
    o.liveness_interval_ns = 5'000'000;
    rc = WaitReadable(cons_, o, nullptr);
  });
  ASSERT_TRUE(WaitForWaiter(prod_.control()->data_wait));
  kill(child, SIGKILL);
  EXPECT_EQ(testing::WaitChild(child), 128 + SIGKILL);
  waiter.join();
  EXPECT_EQ(rc.load(), 0);
  EXPECT_TRUE(PeerGone(sv[0]));
  EXPECT_EQ(cons_.Read(buf, sizeof buf), 0);  // EOF
  // The writer side of the other ring sees EPIPE after its peer is marked gone.
  RingStats s;
  Ring tx = seg_.MakeTxRing(Role::kServer, &s);
  std::string fill(4096, 'x');
  ASSERT_EQ(tx.Write(fill.data(), fill.size()), 4096);
  WaitOptions o;
  o.liveness_fd = sv[0];
  o.liveness_interval_ns = 1'000'000;
  EXPECT_EQ(WaitWritable(tx, 1, o, nullptr), 0);
  EXPECT_EQ(tx.Write("a", 1), -EPIPE);
  close(sv[0]);
}

TEST(SpinPolicy, Adapts) {
  SpinPolicy p(10'000, 50'000, 0);
  EXPECT_EQ(p.budget_ns(), 10'000);
  p.OnSpinSuccess(1'000);
  EXPECT_EQ(p.budget_ns(), 10'000);  // a quick success keeps the budget
  p.OnSpinSuccess(8'000);
  EXPECT_EQ(p.budget_ns(), 16'000);  // >= 2x the time it took
  p.OnSlept(30'000);                 // came soon after: spin longer
  EXPECT_EQ(p.budget_ns(), 32'000);
  p.OnSlept(30'000);
  EXPECT_EQ(p.budget_ns(), 50'000);  // capped
  p.OnSlept(10'000'000);             // long idle: back off
  EXPECT_EQ(p.budget_ns(), 25'000);
  for (int i = 0; i < 40; ++i) p.OnSlept(10'000'000);
  EXPECT_EQ(p.budget_ns(), 0);
  p.OnSlept(20'000);  // recovers from zero
  EXPECT_EQ(p.budget_ns(), 1'000);
  SpinPolicy d = SpinPolicy::Disabled();
  d.OnSlept(1);
  EXPECT_EQ(d.budget_ns(), 0);
}

TEST(SpinPolicy, StreamingBackoff) {
  SpinPolicy p;
  EXPECT_EQ(p.BackoffForWait(), 0u);
  p.OnFirstPoll(false, 0);  // a first poll that finds nothing: no stream
  EXPECT_EQ(p.backoff_pauses(), 0u);
  p.OnFirstPoll(true, 0);  // ready at the first poll: a stream
  EXPECT_EQ(p.backoff_pauses(), SpinPolicy::kBackoffMinPauses);
  uint32_t b = p.BackoffForWait();
  EXPECT_EQ(b, SpinPolicy::kBackoffMinPauses);
  for (int i = 0; i < 10; ++i) p.OnFirstPoll(true, p.backoff_pauses());  // doubles, capped
  EXPECT_EQ(p.backoff_pauses(), SpinPolicy::kBackoffMaxPauses);
  // Every kBackoffProbeEvery-th wait is a probe (no back-off); one that still
  // finds data at once keeps the back-off, one that finds nothing ends it.
  int probes = 0;
  for (uint32_t i = 0; i < 2 * SpinPolicy::kBackoffProbeEvery; ++i) {
    uint32_t w = p.BackoffForWait();
    if (w == 0) {
      ++probes;
      p.OnFirstPoll(true, 0);
    } else {
      EXPECT_EQ(w, SpinPolicy::kBackoffMaxPauses);
    }
  }
  EXPECT_EQ(probes, 2);
  EXPECT_EQ(p.backoff_pauses(), SpinPolicy::kBackoffMaxPauses);
  p.OnFirstPoll(false, 0);
  EXPECT_EQ(p.backoff_pauses(), 0u);
  EXPECT_EQ(p.BackoffForWait(), 0u);
}

TEST_F(WaitTest, BackoffStillSeesData) {
  // A wait with the back-off at its maximum returns at once when data is
  // already there (after the pauses), and a non-blocking one without pausing.
  SpinPolicy spin;
  for (int i = 0; i < 10; ++i) spin.OnFirstPoll(true, spin.backoff_pauses());
  ASSERT_EQ(spin.backoff_pauses(), SpinPolicy::kBackoffMaxPauses);
  WaitOptions now;
  now.timeout_ns = 0;
  EXPECT_EQ(WaitReadable(cons_, now, &spin), -EAGAIN);
  ASSERT_EQ(prod_.Write("x", 1), 1);
  EXPECT_EQ(WaitReadable(cons_, now, &spin), 0);
  WaitOptions bounded;
  bounded.timeout_ns = 5'000'000'000;
  EXPECT_EQ(WaitReadable(cons_, bounded, &spin), 0);
  EXPECT_EQ(cstats_.futex_waits.load(), 0u);
}

TEST_F(WaitTest, SpinCatchesAQuickWriter) {
  // Not a timing assertion: either the spin or the futex path must deliver.
  SpinPolicy spin(50'000, 50'000, 0);
  std::atomic<int> rc{1};
  std::thread waiter([&] { rc = WaitReadable(cons_, WaitOptions{}, &spin); });
  ASSERT_EQ(prod_.Write("x", 1), 1);
  waiter.join();
  EXPECT_EQ(rc.load(), 0);
  EXPECT_LE(cstats_.spin_hits.load() + cstats_.spin_misses.load(), 1u);  // 0: ready at once
}

// Pins the calling thread to the CPU it runs on; returns that CPU.
int PinHere() {
  int cpu = sched_getcpu();
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof set, &set) == 0 ? cpu : -1;
}

TEST_F(WaitTest, NoSpinWhenThePeerSharesTheCpu) {
  // The peer (a producer thread here) says it waits on our CPU: the wait
  // must register as a sleeper at once instead of spinning. With a 20 s
  // spin budget, a wait that spun would still be spinning when the writer
  // gives up waiting for the sleeper (10 s) and writes: a spin hit.
  SpinPolicy spin(20'000'000'000, 20'000'000'000, 0);
  std::atomic<uint32_t> peer_cpu{0};
  std::atomic<int> rc{1};
  std::atomic<int> pinned{-1};
  std::thread waiter([&] {
    int cpu = PinHere();
    pinned = cpu;
    peer_cpu = static_cast<uint32_t>(cpu) + 1;
    WaitOptions o;
    o.own_cpu = cons_.waiter_cpu();
    o.peer_cpu = &peer_cpu;
    rc = WaitReadable(cons_, o, &spin);
  });
  (void)WaitForWaiter(prod_.control()->data_wait);
  ASSERT_EQ(prod_.Write("x", 1), 1);
  waiter.join();
  ASSERT_GE(pinned.load(), 0);
  EXPECT_EQ(rc.load(), 0);
  EXPECT_EQ(cstats_.spin_hits.load(), 0u);
  EXPECT_EQ(cstats_.spin_misses.load(), 1u);
  // The waiter published its CPU for its peer.
  EXPECT_EQ(cons_.waiter_cpu()->load(), static_cast<uint32_t>(pinned.load()) + 1);
}

TEST_F(WaitTest, SpinWhenThePeerIsElsewhere) {
  // The same wait with the peer on another CPU spins: the writer, which
  // waits for a sleeper only 50 ms, writes while the 20 s spin runs.
  SpinPolicy spin(20'000'000'000, 20'000'000'000, 0);
  std::atomic<uint32_t> peer_cpu{0};
  std::atomic<int> rc{1};
  std::thread waiter([&] {
    int cpu = PinHere();
    peer_cpu = static_cast<uint32_t>(cpu) + 2;  // another CPU
    WaitOptions o;
    o.own_cpu = cons_.waiter_cpu();
    o.peer_cpu = &peer_cpu;
    rc = WaitReadable(cons_, o, &spin);
  });
  for (int i = 0; i < 50 && prod_.control()->data_wait.sleeping.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(prod_.Write("x", 1), 1);
  waiter.join();
  EXPECT_EQ(rc.load(), 0);
  EXPECT_EQ(cstats_.spin_misses.load(), 0u);
}

}  // namespace
}  // namespace doorway::transport

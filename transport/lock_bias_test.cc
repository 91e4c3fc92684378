#include "transport/lock_bias.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "transport/fence.h"
#include "transport/shm_mutex.h"

namespace doorway::transport {
namespace {

// What runtime/accel.cc LockEnd/UnlockEnd do, without the runtime's
// signal-section and one-thread parts. true: a biased hold.
bool Lock(LockBias& b, ShmMutex m) {
  const uint32_t tid = ShmMutex::SelfTid();
  switch (b.TryEnter(m.word(), tid)) {
    case LockBias::Fast::kEntered:
      return true;
    case LockBias::Fast::kSelfHeld:
      ADD_FAILURE() << "self-held outside a handler";
      abort();
    case LockBias::Fast::kSlow:
      break;
  }
  LockBias::Slow s = b.Resolve(m.word(), tid, /*may_claim=*/true, /*wait=*/true);
  EXPECT_NE(s, LockBias::Slow::kBusy);
  int rc;
  while ((rc = m.Lock(WaitOptions{})) == -EINTR) {
  }
  EXPECT_EQ(rc, 0);
  return s == LockBias::Slow::kClaimed && b.Adopt(tid);
}

void Unlock(LockBias& b, ShmMutex m, bool biased) {
  if (biased) {
    b.Leave(m, ShmMutex::SelfTid());
  } else {
    EXPECT_EQ(m.Unlock(), 0);
  }
}

class LockBiasTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!EnableProcessFence()) GTEST_SKIP() << "no MEMBARRIER_CMD_PRIVATE_EXPEDITED";
  }
};

// Checksummed counter that only the lock protects (plain memory: a lost
// exclusion shows up as a wrong sum here, and as a race under TSAN).
struct Guarded {
  std::atomic<uint32_t> word{0};
  LockBias bias;
  uint64_t count = 0;
  uint64_t sum = 0;
};

// Two threads hammer one end; the second starts after the first has claimed
// the bias and is in the middle of its run, so the revocation meets the
// owner at arbitrary points of its holds. Many fresh ends, one revocation
// each.
TEST_F(LockBiasTest, TwoThreadsHammerWithChecksum) {
  constexpr int kRounds = 200;
  constexpr int kOps = 2000;
  int biased_holds = 0;
  for (int round = 0; round < kRounds; ++round) {
    Guarded g;
    ShmMutex m(&g.word);
    std::atomic<int> a_done_ops{0};
    std::atomic<int> a_biased{0};
    std::thread a([&] {
      for (int i = 0; i < kOps; ++i) {
        bool biased = Lock(g.bias, m);
        if (biased) a_biased.fetch_add(1, std::memory_order_relaxed);
        uint64_t c = g.count;
        g.sum += 2 * i + 1;
        g.count = c + 1;
        Unlock(g.bias, m, biased);
        a_done_ops.store(i + 1, std::memory_order_release);
      }
    });
    // Start b somewhere inside a's run (bounded wait: a makes progress).
    const int start_at = 1 + (round * 37) % (kOps / 2);
    while (a_done_ops.load(std::memory_order_acquire) < start_at) std::this_thread::yield();
    std::thread b([&] {
      for (int i = 0; i < kOps; ++i) {
        bool biased = Lock(g.bias, m);
        EXPECT_FALSE(biased);  // a claimed it first
        uint64_t c = g.count;
        g.sum += 3;
        g.count = c + 1;
        Unlock(g.bias, m, biased);
      }
    });
    a.join();
    b.join();
    EXPECT_EQ(g.count, 2u * kOps);
    EXPECT_EQ(g.sum, static_cast<uint64_t>(kOps) * kOps + 3u * kOps);
    EXPECT_EQ(g.bias.owner_for_testing(), LockBias::kNone);
    EXPECT_EQ(g.word.load(), 0u);
    EXPECT_GE(a_biased.load(), start_at);
    biased_holds += a_biased.load();
  }
  EXPECT_GT(biased_holds, 0);
}

// A thread that appears while the owner is inside a biased hold (here:
// parked in it, as a blocking read parks) waits for it to leave, and sees
// what it wrote.
TEST_F(LockBiasTest, NewThreadWaitsForTheBiasedHolder) {
  Guarded g;
  ShmMutex m(&g.word);
  // The claim: the ShmMutex's CAS, then Adopt makes the hold biased.
  ASSERT_TRUE(Lock(g.bias, m));
  Unlock(g.bias, m, true);
  ASSERT_EQ(g.bias.owner_for_testing(), ShmMutex::SelfTid());
  EXPECT_EQ(g.word.load(), 0u);
  ASSERT_TRUE(Lock(g.bias, m));  // plain stores from now on
  EXPECT_EQ(g.word.load(), ShmMutex::SelfTid());
  std::atomic<bool> trying{false}, acquired{false};
  std::thread other([&] {
    trying.store(true);
    bool biased = Lock(g.bias, m);
    EXPECT_FALSE(biased);
    acquired.store(true);
    EXPECT_EQ(g.count, 1u);  // our write, made before we left
    g.count = 2;
    Unlock(g.bias, m, biased);
  });
  while (!trying.load()) std::this_thread::yield();
  // However long we stay, the other thread must not get in (it revokes,
  // fences and waits on held). Bounded: a few thousand yields.
  for (int i = 0; i < 2000; ++i) {
    EXPECT_FALSE(acquired.load());
    std::this_thread::yield();
  }
  g.count = 1;
  Unlock(g.bias, m, true);
  other.join();
  EXPECT_TRUE(acquired.load());
  EXPECT_EQ(g.count, 2u);
  EXPECT_EQ(g.bias.owner_for_testing(), LockBias::kNone);
  // The former owner now takes the ShmMutex like everybody.
  EXPECT_FALSE(Lock(g.bias, m));
  Unlock(g.bias, m, false);
}

// A signal handler on the owner thread, while it holds the end biased,
// finds the hold its own (the runtime then re-enters or says EINTR, never
// waits for itself); after the hold it gets the biased path itself.
Guarded* g_signal_end;
std::atomic<int> g_handler_result{-1};
void OnSignal(int) {
  ShmMutex m(&g_signal_end->word);
  LockBias::Fast f = g_signal_end->bias.TryEnter(m.word(), ShmMutex::SelfTid());
  g_handler_result.store(static_cast<int>(f));
  if (f == LockBias::Fast::kEntered) g_signal_end->bias.Leave(m, ShmMutex::SelfTid());
}

TEST_F(LockBiasTest, SignalHandlerOnTheOwnerFindsItsOwnHold) {
  Guarded g;
  g_signal_end = &g;
  ShmMutex m(&g.word);
  ASSERT_TRUE(Lock(g.bias, m));  // claimed
  Unlock(g.bias, m, true);
  struct sigaction sa = {}, old = {};
  sa.sa_handler = OnSignal;
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);
  ASSERT_TRUE(Lock(g.bias, m));
  raise(SIGUSR1);
  EXPECT_EQ(g_handler_result.load(), static_cast<int>(LockBias::Fast::kSelfHeld));
  Unlock(g.bias, m, true);
  raise(SIGUSR1);
  EXPECT_EQ(g_handler_result.load(), static_cast<int>(LockBias::Fast::kEntered));
  EXPECT_EQ(g.word.load(), 0u);
  sigaction(SIGUSR1, &old, nullptr);
}

// The owner between B1 and B3 (held = 1, its word store not yet made;
// Adopt leaves exactly that state, as the caller took the word itself):
// neither kind of revoker may go on to the ShmMutex then, since the word
// does not exclude it yet. The waiting one waits for held = 0, the other
// for the word or held.
TEST_F(LockBiasTest, RevokerDoesNotPassAnOwnerBeforeItsWordStore) {
  Guarded g;
  ShmMutex m(&g.word);
  ASSERT_TRUE(Lock(g.bias, m));  // claimed
  Unlock(g.bias, m, true);
  const uint32_t tid = ShmMutex::SelfTid();
  ASSERT_TRUE(g.bias.Adopt(tid));  // held = 1, word = 0
  std::atomic<int> nowait{-1}, waiting{-1};
  std::thread t1([&] {
    nowait.store(
        static_cast<int>(g.bias.Resolve(m.word(), ShmMutex::SelfTid(), true, /*wait=*/false)));
  });
  std::thread t2([&] {
    waiting.store(
        static_cast<int>(g.bias.Resolve(m.word(), ShmMutex::SelfTid(), true, /*wait=*/true)));
  });
  for (int i = 0; i < 2000; ++i) {
    EXPECT_EQ(nowait.load(), -1);
    EXPECT_EQ(waiting.load(), -1);
    std::this_thread::yield();
  }
  g.word.store(tid);  // B3: now the word excludes; the non-waiting one says busy
  t1.join();
  EXPECT_EQ(nowait.load(), static_cast<int>(LockBias::Slow::kBusy));
  for (int i = 0; i < 1000; ++i) {
    EXPECT_EQ(waiting.load(), -1);
    std::this_thread::yield();
  }
  g.bias.Leave(m, tid);  // revoked meanwhile: ShmMutex::Unlock, wakes t2
  t2.join();
  EXPECT_EQ(waiting.load(), static_cast<int>(LockBias::Slow::kNormal));
  EXPECT_EQ(g.word.load(), 0u);
  EXPECT_EQ(g.bias.owner_for_testing(), LockBias::kNone);
}

// A hold that is not a biased one but this thread's (the one-thread
// path's plain store, taken before a second thread existed) or a forged
// word: the owner does not enter over it; the ShmMutex's path decides.
TEST_F(LockBiasTest, OwnerDoesNotEnterOverATakenWord) {
  Guarded g;
  ShmMutex m(&g.word);
  ASSERT_TRUE(Lock(g.bias, m));  // claimed
  Unlock(g.bias, m, true);
  const uint32_t tid = ShmMutex::SelfTid();
  g.word.store(tid);  // as runtime/accel.cc kHeldPlain
  EXPECT_EQ(g.bias.TryEnter(m.word(), tid), LockBias::Fast::kSlow);
  EXPECT_EQ(g.bias.Resolve(m.word(), tid, true, false), LockBias::Slow::kClaimed);
  EXPECT_EQ(m.TryLock(), -EBUSY);
  g.word.store(0);
  EXPECT_EQ(g.bias.TryEnter(m.word(), tid), LockBias::Fast::kEntered);
  g.bias.Leave(m, tid);
  EXPECT_EQ(g.word.load(), 0u);
}

// fork's revocation does not wait for an owner inside a hold: the word
// keeps it taken, and the owner's unlock is then the ShmMutex's. The forked
// child completes the revocation at once (the owner is no thread of its).
TEST_F(LockBiasTest, RevocationWithoutWaitingAndFork) {
  struct Mapped {
    std::atomic<uint32_t> word{0};
  };
  void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  Mapped* shared = new (p) Mapped;
  ShmMutex m(&shared->word);
  LockBias bias;
  std::atomic<int> stage{0};
  std::thread owner([&] {
    EXPECT_TRUE(Lock(bias, m));  // claim
    Unlock(bias, m, true);
    bool biased = Lock(bias, m);
    EXPECT_TRUE(biased);
    stage.store(1);
    while (stage.load() != 2) std::this_thread::yield();
    Unlock(bias, m, biased);
  });
  while (stage.load() != 1) std::this_thread::yield();
  // MarkAllShared's sequence.
  EXPECT_TRUE(bias.BeginRevoke());
  ProcessFence();
  bias.FinishRevoke(m.word(), ShmMutex::SelfTid());
  EXPECT_EQ(m.TryLock(), -EBUSY);  // the owner's hold is visible in the word
  pid_t child = fork();
  if (child == 0) {
    const uint32_t tid = ShmMutex::SelfTid();
    int ok = bias.Resolve(m.word(), tid, true, true) == LockBias::Slow::kNormal ? 0 : 1;
    if (m.TryLock() != -EBUSY) ok |= 2;  // the parent's thread still holds it
    _exit(ok);
  }
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  stage.store(2);
  owner.join();
  EXPECT_EQ(shared->word.load(), 0u);  // released by ShmMutex::Unlock
  EXPECT_EQ(m.TryLock(), 0);
  EXPECT_EQ(m.Unlock(), 0);
  EXPECT_NE(bias.owner_for_testing() & (LockBias::kRevokingBit | LockBias::kNone), 0u);
  munmap(p, 4096);
}

// Without the process fence (old kernel, seccomp) nothing is biased.
long FailingMembarrier(int, unsigned, int) { return -ENOSYS; }

TEST(LockBiasNoFence, NoBiasWithoutMembarrier) {
  internal::SetMembarrierForTesting(FailingMembarrier);
  internal::ResetProcessFenceForTesting();
  EXPECT_FALSE(EnableProcessFence());
  Guarded g;
  ShmMutex m(&g.word);
  EXPECT_FALSE(Lock(g.bias, m));
  Unlock(g.bias, m, false);
  EXPECT_EQ(g.bias.owner_for_testing(), LockBias::kNone);
  internal::SetMembarrierForTesting(nullptr);
}

}  // namespace
}  // namespace doorway::transport

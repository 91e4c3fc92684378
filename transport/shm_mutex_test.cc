#include "transport/shm_mutex.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "transport/internal/test_util.h"

namespace doorway::transport {
namespace {

struct Shared {
  std::atomic<uint32_t> word{0};
  uint64_t counter = 0;  // protected by word
};

Shared* MapShared() {
  void* p =
      mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  return new (p) Shared;
}

TEST(ShmMutex, TryLockUnlock) {
  Shared* s = MapShared();
  ASSERT_NE(s, nullptr);
  ShmMutex m(&s->word);
  EXPECT_EQ(m.TryLock(), 0);
  EXPECT_EQ(s->word.load() & ShmMutex::kTidMask, ShmMutex::SelfTid());
  EXPECT_EQ(m.TryLock(), -EBUSY);
  WaitOptions nb;
  nb.timeout_ns = 0;
  EXPECT_EQ(m.Lock(nb), -EAGAIN);
  EXPECT_EQ(m.Unlock(), 0);
  EXPECT_EQ(s->word.load(), 0u);
  EXPECT_EQ(m.Lock(WaitOptions{}), 0);
  EXPECT_EQ(m.Unlock(), 0);
  munmap(s, sizeof(Shared));
}

// A word that names a thread outside this process (a live one: the forked
// child; or tid 1) is a forgery when only this process may hold the lock:
// -EIO at once, not a wait for a holder that never lets go. A holder that is
// one of our threads is waited for as usual.
TEST(ShmMutex, ForeignHolderIsCorruptionForThisProcessOnly) {
  Shared* s = MapShared();
  ShmMutex m(&s->word);
  pid_t child = fork();
  if (child == 0) {
    pause();
    _exit(0);
  }
  ASSERT_GT(child, 0);
  for (uint32_t forged :
       {static_cast<uint32_t>(child), static_cast<uint32_t>(child) | ShmMutex::kWaitersBit, 1u,
        ShmMutex::kWaitersBit}) {
    s->word.store(forged);
    EXPECT_EQ(m.Lock(WaitOptions{}, ShmMutex::Holders::kThisProcess), -EIO) << forged;
  }
  s->word.store(static_cast<uint32_t>(child));
  WaitOptions o;
  o.timeout_ns = 20'000'000;
  EXPECT_EQ(m.Lock(o, ShmMutex::Holders::kAnyProcess), -ETIMEDOUT);  // a live holder elsewhere
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  s->word.store(0);

  ASSERT_EQ(m.Lock(WaitOptions{}), 0);
  std::atomic<int> rc{1};
  std::thread t(
      [&] { rc = ShmMutex(&s->word).Lock(WaitOptions{}, ShmMutex::Holders::kThisProcess); });
  usleep(20'000);
  EXPECT_EQ(rc.load(), 1);  // still waiting for our own thread
  EXPECT_EQ(m.Unlock(), 0);
  t.join();
  EXPECT_EQ(rc.load(), 0);
  munmap(s, sizeof(Shared));
}

TEST(ShmMutex, TimeoutWhileHeld) {
  Shared* s = MapShared();
  ShmMutex m(&s->word);
  ASSERT_EQ(m.Lock(WaitOptions{}), 0);
  std::atomic<int> rc{1};
  std::thread t([&] {
    WaitOptions o;
    o.timeout_ns = 20'000'000;
    rc = ShmMutex(&s->word).Lock(o);
  });
  t.join();
  EXPECT_EQ(rc.load(), -ETIMEDOUT);
  EXPECT_NE(s->word.load() & ShmMutex::kWaitersBit, 0u);  // the waiter announced itself
  EXPECT_EQ(m.Unlock(), 0);
  munmap(s, sizeof(Shared));
}

TEST(ShmMutex, ThreadsSerialise) {
  Shared* s = MapShared();
  const int kThreads = 4;
  const int kIters = testing::kUnderSanitizer ? 2000 : 20000;
  std::vector<std::thread> ts;
  for (int i = 0; i < kThreads; ++i) {
    ts.emplace_back([s, kIters] {
      ShmMutex m(&s->word);
      for (int j = 0; j < kIters; ++j) {
        ShmMutexLock l(m);
        ASSERT_EQ(l.status(), 0);
        s->counter = s->counter + 1;
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(s->counter, uint64_t{kThreads} * kIters);
  munmap(s, sizeof(Shared));
}

TEST(ShmMutex, ProcessesSerialise) {
  if (testing::kUnderTsan) GTEST_SKIP() << "fork under TSAN";
  Shared* s = MapShared();
  const int kProcs = 3;
  const int kIters = testing::kUnderSanitizer ? 2000 : 20000;
  std::vector<pid_t> kids;
  for (int i = 0; i < kProcs; ++i) {
    pid_t p = fork();
    ASSERT_GE(p, 0);
    if (p == 0) {
      ShmMutex m(&s->word);
      for (int j = 0; j < kIters; ++j) {
        if (m.Lock(WaitOptions{}) != 0) _exit(2);
        s->counter = s->counter + 1;
        if (m.Unlock() != 0) _exit(3);
      }
      _exit(0);
    }
    kids.push_back(p);
  }
  for (pid_t p : kids) EXPECT_EQ(testing::WaitChild(p), 0);
  EXPECT_EQ(s->counter, uint64_t{kProcs} * kIters);
  munmap(s, sizeof(Shared));
}

TEST(ShmMutex, OwnerDeathIsRecovered) {
  if (testing::kUnderTsan) GTEST_SKIP() << "fork under TSAN";
  Shared* s = MapShared();
  pid_t p = fork();
  ASSERT_GE(p, 0);
  if (p == 0) {
    ShmMutex m(&s->word);
    if (m.Lock(WaitOptions{}) != 0) _exit(2);
    _exit(0);  // dies holding the lock
  }
  EXPECT_EQ(testing::WaitChild(p), 0);
  EXPECT_EQ(s->word.load() & ShmMutex::kTidMask, static_cast<uint32_t>(p));
  ShmMutex m(&s->word);
  WaitOptions o;
  o.liveness_interval_ns = 5'000'000;
  o.timeout_ns = 10'000'000'000;
  EXPECT_EQ(m.Lock(o), kOwnerDied);
  EXPECT_EQ(m.Unlock(), 0);
  EXPECT_EQ(m.Lock(o), 0);
  EXPECT_EQ(m.Unlock(), 0);
  munmap(s, sizeof(Shared));
}

TEST(ShmMutex, TidRefreshedAfterFork) {
  if (testing::kUnderTsan) GTEST_SKIP() << "fork under TSAN";
  uint32_t parent = ShmMutex::SelfTid();
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t p = fork();
  ASSERT_GE(p, 0);
  if (p == 0) {
    uint32_t t = ShmMutex::SelfTid();
    _exit(t == static_cast<uint32_t>(getpid()) && t != parent ? 0 : 1);
  }
  EXPECT_EQ(testing::WaitChild(p), 0);
  close(fds[0]);
  close(fds[1]);
}

}  // namespace
}  // namespace doorway::transport

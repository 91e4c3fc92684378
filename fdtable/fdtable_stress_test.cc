// Many threads installing, replacing, removing and looking up the same small
// range of fds. Checks that a lookup never yields a destroyed object and
// that every object is destroyed exactly once. Run under --config=tsan and
// --config=asan too.
#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "fdtable/fdtable.h"
#include "gtest/gtest.h"

namespace doorway::fdtable {
namespace {

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr int kIterations = 20000;
#else
constexpr int kIterations = 300000;
#endif
constexpr int kThreads = 8;
constexpr int kFds = 64;

std::atomic<long> g_created{0};
std::atomic<long> g_destroyed{0};

struct Obj {
  static constexpr std::uint32_t kTypeTag = 0x5157;
  explicit Obj(int fd) : fd(fd), magic(kAlive) {
    g_created.fetch_add(1, std::memory_order_relaxed);
  }
  ~Obj() {
    EXPECT_EQ(magic.exchange(kDead), kAlive);
    g_destroyed.fetch_add(1, std::memory_order_relaxed);
  }
  static constexpr std::uint64_t kAlive = 0xA11FEA11FEA11FEull;
  static constexpr std::uint64_t kDead = 0xDEADDEADDEADDEADull;
  int fd;
  std::atomic<std::uint64_t> magic;
};

TEST(FdTableStress, ConcurrentInstallRemoveGet) {
  static FdTable table;  // static: too big for the stack
  std::atomic<long> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < kIterations; ++i) {
        int fd = static_cast<int>(rng() % kFds) + 1000 * (rng() % 3);
        switch (rng() % 4) {
          case 0:
            table.Install(fd, Make<Obj>(fd)).Reset();
            break;
          case 1:
            table.Remove(fd).Reset();
            break;
          default: {
            Ref r = table.Get(fd);
            if (r) {
              Obj* o = r.As<Obj>();
              if (o == nullptr || o->magic.load() != Obj::kAlive || o->fd != fd) bad.fetch_add(1);
            }
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  table.RemoveRange(0, FdTable::kMaxFds - 1, [](int, Ref) {});
  EXPECT_EQ(g_created.load(), g_destroyed.load());
}

}  // namespace
}  // namespace doorway::fdtable

#include "fdtable/fdtable.h"

#include <atomic>
#include <vector>

#include "gtest/gtest.h"

namespace doorway::fdtable {
namespace {

std::atomic<int> g_live{0};

struct Thing {
  static constexpr std::uint32_t kTypeTag = 0x7411;
  explicit Thing(int v) : value(v) { g_live.fetch_add(1); }
  ~Thing() { g_live.fetch_sub(1); }
  int value;
};

struct Other {
  static constexpr std::uint32_t kTypeTag = 0x0743;
  int x = 0;
};

TEST(FdTable, EmptyLookups) {
  FdTable t;
  EXPECT_FALSE(t.Get(0));
  EXPECT_FALSE(t.Get(-1));
  EXPECT_FALSE(t.Get(FdTable::kMaxFds));
  EXPECT_FALSE(t.Get(123456));
  EXPECT_FALSE(t.Remove(5));
}

TEST(FdTable, InstallGetRemove) {
  FdTable t;
  int before = g_live.load();
  {
    bool ok = false;
    Ref old = t.Install(7, Make<Thing>(42), &ok);
    EXPECT_TRUE(ok);
    EXPECT_FALSE(old);
    Ref r = t.Get(7);
    ASSERT_TRUE(r);
    ASSERT_NE(r.As<Thing>(), nullptr);
    EXPECT_EQ(r.As<Thing>()->value, 42);
    EXPECT_EQ(r.As<Other>(), nullptr);
    EXPECT_FALSE(t.Get(6));
    EXPECT_FALSE(t.Get(8));
    Ref removed = t.Remove(7);
    EXPECT_TRUE(removed);
    EXPECT_FALSE(t.Get(7));
    // r and removed still hold the object.
    EXPECT_EQ(g_live.load(), before + 1);
    EXPECT_EQ(r.As<Thing>()->value, 42);
  }
  EXPECT_EQ(g_live.load(), before);
}

TEST(FdTable, InstallReplacesAndHandsBackOld) {
  FdTable t;
  int before = g_live.load();
  t.Install(3, Make<Thing>(1)).Reset();
  Ref old = t.Install(3, Make<Thing>(2));
  ASSERT_TRUE(old);
  EXPECT_EQ(old.As<Thing>()->value, 1);
  old.Reset();
  EXPECT_EQ(t.Get(3).As<Thing>()->value, 2);
  t.Remove(3).Reset();
  EXPECT_EQ(g_live.load(), before);
}

TEST(FdTable, BeyondLimitIsRefused) {
  FdTable t;
  bool ok = true;
  Ref back = t.Install(FdTable::kMaxFds, Make<Thing>(9), &ok);
  EXPECT_FALSE(ok);
  EXPECT_TRUE(back);
  back = t.Install(-3, std::move(back), &ok);
  EXPECT_FALSE(ok);
  EXPECT_TRUE(back);
}

TEST(FdTable, HighFdsAndRemoveRange) {
  FdTable t;
  int before = g_live.load();
  const int fds[] = {0, 511, 512, 1000, 70000, FdTable::kMaxFds - 1};
  for (int fd : fds) t.Install(fd, Make<Thing>(fd)).Reset();
  for (int fd : fds) EXPECT_EQ(t.Get(fd).As<Thing>()->value, fd);
  int removed = 0;
  t.RemoveRange(500, 70000, [&](int fd, Ref r) {
    EXPECT_EQ(r.As<Thing>()->value, fd);
    ++removed;
  });
  EXPECT_EQ(removed, 4);
  EXPECT_TRUE(t.Get(0));
  EXPECT_FALSE(t.Get(511));
  EXPECT_FALSE(t.Get(70000));
  EXPECT_TRUE(t.Get(FdTable::kMaxFds - 1));
  t.RemoveRange(0, 0x7fffffff, [&](int, Ref) { ++removed; });
  EXPECT_EQ(removed, 6);
  EXPECT_EQ(g_live.load(), before);
}

TEST(FdTable, TagsTravelWithEntries) {
  FdTable t;
  EXPECT_EQ(t.Tag(9), 0u);
  t.Install(9, Make<Thing>(9), nullptr, 5).Reset();
  EXPECT_EQ(t.Tag(9), 5u);
  EXPECT_EQ(t.Get(9).As<Thing>()->value, 9);
  Ref old = t.Install(9, Make<Thing>(10));
  EXPECT_EQ(old.As<Thing>()->value, 9);
  EXPECT_EQ(t.Tag(9), 0u);
  t.Install(700, Make<Thing>(700), nullptr, FdTable::kTagMask).Reset();
  EXPECT_EQ(t.Tag(700), FdTable::kTagMask);
  std::vector<int> seen;
  t.ForEach([&](int fd, const Ref& r) {
    seen.push_back(fd);
    EXPECT_EQ(r.As<Thing>()->value, fd == 9 ? 10 : fd);
  });
  EXPECT_EQ(seen, (std::vector<int>{9, 700}));
  t.Remove(700).Reset();
  t.Remove(9).Reset();
  EXPECT_EQ(t.Tag(700), 0u);
}

TEST(FdTable, HoldsComparesObjectAndTag) {
  FdTable t;
  Ref a = Make<Thing>(1);
  Ref b = Make<Thing>(2);
  EXPECT_FALSE(t.Holds(4, a.node(), 3));
  t.Install(4, a.Clone(), nullptr, 3).Reset();
  EXPECT_TRUE(t.Holds(4, a.node(), 3));
  EXPECT_FALSE(t.Holds(4, a.node(), 2));  // another tag
  EXPECT_FALSE(t.Holds(4, b.node(), 3));  // another object
  EXPECT_FALSE(t.Holds(5, a.node(), 3));  // another fd
  EXPECT_FALSE(t.Holds(4, nullptr, 0));
  EXPECT_FALSE(t.Holds(-1, a.node(), 3));
  EXPECT_FALSE(t.Holds(FdTable::kMaxFds, a.node(), 3));
  t.Install(4, b.Clone(), nullptr, 3).Reset();  // the number reused
  EXPECT_FALSE(t.Holds(4, a.node(), 3));
  EXPECT_TRUE(t.Holds(4, b.node(), 3));
  t.Remove(4).Reset();
  EXPECT_FALSE(t.Holds(4, b.node(), 3));
}

TEST(FdTable, CloneKeepsAlive) {
  int before = g_live.load();
  Ref a = Make<Thing>(5);
  Ref b = a.Clone();
  a.Reset();
  EXPECT_EQ(g_live.load(), before + 1);
  EXPECT_EQ(b.As<Thing>()->value, 5);
  b.Reset();
  EXPECT_EQ(g_live.load(), before);
}

// GetUncontended/ResetUncontended count as Get/Reset do (the data path of
// a one-thread process uses them): the object lives while any reference
// does, and the last one dropped destroys it, whichever kind it is.
TEST(FdTable, UncontendedReferencesCountAsOthers) {
  FdTable t;
  int before = g_live.load();
  bool ok = false;
  t.Install(9, Make<Thing>(3), &ok).Reset();
  ASSERT_TRUE(ok);
  EXPECT_FALSE(t.GetUncontended(8));
  EXPECT_FALSE(t.GetUncontended(-1));
  {
    Ref r = t.GetUncontended(9);
    ASSERT_NE(r.As<Thing>(), nullptr);
    EXPECT_EQ(r.As<Thing>()->value, 3);
    EXPECT_EQ(r.use_count(), 2u);
    Ref g = t.Get(9);
    EXPECT_EQ(g.use_count(), 3u);
    r.ResetUncontended(true);
    EXPECT_FALSE(r);
    EXPECT_EQ(g.use_count(), 2u);
  }
  // Removed while an uncontended reference holds it: that one destroys it,
  // with the plain decrement or (a thread appeared meanwhile) the atomic one.
  for (bool single : {true, false}) {
    t.Install(9, Make<Thing>(4), &ok).Reset();
    Ref r = t.GetUncontended(9);
    t.Remove(9).Reset();
    EXPECT_EQ(g_live.load(), before + 1);
    EXPECT_EQ(r.As<Thing>()->value, 4);
    r.ResetUncontended(single);
    EXPECT_EQ(g_live.load(), before);
  }
}

TEST(Pool, NodesAreReused) {
  Pool& p = GlobalPool();
  Ref a = Make<Thing>(1);
  Node* n = a.node();
  a.Reset();
  // LIFO free list: the next allocation reuses the node just freed.
  Ref b = Make<Other>();
  EXPECT_EQ(b.node(), n);
  EXPECT_EQ(b.As<Thing>(), nullptr);
  EXPECT_NE(b.As<Other>(), nullptr);
  EXPECT_GT(p.Capacity(), 0u);
}

TEST(Pool, GrowsBeyondOneChunk) {
  std::vector<Ref> refs;
  for (int i = 0; i < 1000; ++i) {
    refs.push_back(Make<Thing>(i));
    ASSERT_TRUE(refs.back());
  }
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(refs[i].As<Thing>()->value, i);
  EXPECT_GE(GlobalPool().Capacity(), 1000u);
}

}  // namespace
}  // namespace doorway::fdtable

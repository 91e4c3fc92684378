// The tx ring's pages are populated ahead of the writer in its first lap
// (accel.cc PopulateAhead): once kPopulateStart bytes went out, the pages up
// to the end of the next 64 KiB chunk beyond the writer exist, so that the
// reader's fault maps them all at once; a connection that writes little
// allocates nothing ahead. Checked through the page cache (mincore), not
// through timing.
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <vector>

#include "fdtable/fdtable.h"
#include "gtest/gtest.h"
#include "runtime/accel.h"

namespace doorway::runtime {
namespace {

class PopulateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv_), 0);
    fdtable::Ref r = fdtable::Make<Connection>();
    ASSERT_TRUE(r);
    c_ = r.As<Connection>();
    transport::SegmentOptions so;
    so.pages = transport::PagePolicy::kSmall;  // 4 KiB pages: what the check is about
    transport::Segment seg;
    ASSERT_EQ(transport::Segment::Create(so, &seg), 0);
    Endpoint ep;
    ep.family = AF_INET;
    InitInheritedConnection(*c_, std::move(seg), transport::Role::kClient, ep, ep, false, sv_[0]);
    ASSERT_EQ(c_->seg.placement().pages, transport::PageKind::kSmall);
    data_ = static_cast<std::byte*>(c_->seg.base()) +
            c_->seg.layout().ring_data_offset[transport::TxRingIndex(c_->role)];
    cap_ = c_->seg.layout().ring_capacity[transport::TxRingIndex(c_->role)];
    fdtable::GlobalTable().Install(sv_[0], std::move(r), nullptr, kTagConnection).Reset();
  }
  void TearDown() override {
    fdtable::GlobalTable().Remove(sv_[0]).Reset();
    close(sv_[0]);
    close(sv_[1]);
  }
  // Whether the tx ring's page holding byte `off` exists (in the memfd's
  // page cache, whoever allocated it).
  bool Resident(std::uint64_t off) const {
    unsigned char v = 0;
    const long page = sysconf(_SC_PAGESIZE);
    std::byte* p = data_ + (off & ~static_cast<std::uint64_t>(page - 1));
    EXPECT_EQ(mincore(p, static_cast<size_t>(page), &v), 0);
    return (v & 1) != 0;
  }
  void Write(std::size_t n) {
    std::vector<char> buf(n, 'x');
    ASSERT_EQ(ManagedWrite(sv_[0], buf.data(), n, 0), static_cast<ssize_t>(n));
  }

  int sv_[2] = {-1, -1};
  Connection* c_ = nullptr;
  std::byte* data_ = nullptr;
  std::uint64_t cap_ = 0;
};

TEST_F(PopulateTest, SmallWritesAllocateNothingAhead) {
  ASSERT_GE(cap_, std::uint64_t{1} << 20);
  Write(20 << 10);
  EXPECT_TRUE(Resident(0));
  EXPECT_TRUE(Resident((20 << 10) - 1));
  EXPECT_FALSE(Resident(24 << 10));
  EXPECT_FALSE(Resident(100 << 10));
}

TEST_F(PopulateTest, PagesAheadOfTheWriterExist) {
  ASSERT_GE(cap_, std::uint64_t{1} << 20);
  Write(40 << 10);
  // Up to the end of the chunk after the writer's: [40 KiB, 128 KiB).
  for (std::uint64_t off = 40 << 10; off < (128 << 10); off += 4096) {
    EXPECT_TRUE(Resident(off)) << off;
  }
  EXPECT_FALSE(Resident(128 << 10));
  EXPECT_FALSE(Resident(512 << 10));
  // Further on, one chunk at a time, never more than two chunks ahead.
  Write(100 << 10);  // at 140 KiB, in the chunk [128 KiB, 192 KiB)
  EXPECT_TRUE(Resident((256 << 10) - 1));
  EXPECT_FALSE(Resident(256 << 10));
}

TEST_F(PopulateTest, StopsAfterTheFirstLap) {
  // Write and read back a whole lap and more: every page was touched once,
  // and nothing past the ring is ever asked for (the ring's data area ends
  // at cap_ within the segment).
  transport::RingStats stats;
  transport::Ring peer = c_->seg.MakeRing(transport::TxRingIndex(c_->role), &stats);
  std::vector<char> buf(64 << 10, 'y');
  std::uint64_t moved = 0;
  while (moved < cap_ + (200 << 10)) {
    ASSERT_EQ(ManagedWrite(sv_[0], buf.data(), buf.size(), 0), static_cast<ssize_t>(buf.size()));
    moved += buf.size();
    // Consumed as the peer would, so that the ring never fills.
    ASSERT_EQ(peer.Read(buf.data(), buf.size()), static_cast<std::int64_t>(buf.size()));
  }
  EXPECT_EQ(c_->tx_populated.load(), cap_);
}

}  // namespace
}  // namespace doorway::runtime

#include "transport/segment.h"

#include <fcntl.h>
#include <numa.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "transport/internal/layout.h"

namespace doorway::transport {
namespace {

using internal::SegmentHeader;
using internal::SegmentPrefix;

SegmentOptions SmallOptions(uint64_t cap = 64 << 10) {
  SegmentOptions o;
  o.ring_capacity[0] = o.ring_capacity[1] = cap;
  o.pages = PagePolicy::kSmall;
  return o;
}

TEST(ComputeLayout, AlignsAndRejects) {
  SegmentLayout l;
  uint64_t caps[2] = {4096, 1 << 20};
  ASSERT_EQ(ComputeLayout(caps, 4096, 4096, &l), 0);
  EXPECT_EQ(l.ring_data_offset[0], 4096u);
  EXPECT_EQ(l.ring_data_offset[1], 8192u);
  EXPECT_EQ(l.segment_size, 8192u + (1 << 20));
  ASSERT_EQ(ComputeLayout(caps, 4096, 2 << 20, &l), 0);
  EXPECT_EQ(l.segment_size, 2u << 20);
  uint64_t bad1[2] = {4096, 5000};
  EXPECT_EQ(ComputeLayout(bad1, 4096, 4096, &l), -EINVAL);
  uint64_t bad2[2] = {2048, 4096};
  EXPECT_EQ(ComputeLayout(bad2, 4096, 4096, &l), -EINVAL);
  uint64_t bad3[2] = {uint64_t{1} << 31, 4096};
  EXPECT_EQ(ComputeLayout(bad3, 4096, 4096, &l), -EINVAL);
  EXPECT_EQ(ComputeLayout(caps, 1000, 4096, &l), -EINVAL);
}

TEST(RingCapacityFor, RoundsAndClamps) {
  EXPECT_EQ(RingCapacityFor(0), kDefaultRingCapacity);
  EXPECT_EQ(RingCapacityFor(1), kMinRingCapacity);
  EXPECT_EQ(RingCapacityFor(4096), 4096u);
  EXPECT_EQ(RingCapacityFor(4097), 8192u);
  EXPECT_EQ(RingCapacityFor(212992), 262144u);  // Linux's default SO_RCVBUF
  EXPECT_EQ(RingCapacityFor(uint64_t{1} << 40), kMaxRingCapacity);
}

TEST(Segment, CreateSealsAndMaps) {
  Segment s;
  ASSERT_EQ(Segment::Create(SmallOptions(), &s), 0);
  ASSERT_TRUE(s.valid());
  int seals = fcntl(s.fd(), F_GET_SEALS);
  ASSERT_GE(seals, 0);
  EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
            F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  EXPECT_EQ(seals & F_SEAL_WRITE, 0);
  struct stat st;
  ASSERT_EQ(fstat(s.fd(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), s.layout().segment_size);
  // Sealed: cannot shrink or grow, and cannot be unsealed.
  EXPECT_NE(ftruncate(s.fd(), 4096), 0);
  EXPECT_NE(ftruncate(s.fd(), st.st_size * 2), 0);
  EXPECT_NE(fcntl(s.fd(), F_ADD_SEALS, F_SEAL_WRITE), 0);
  // CLOEXEC, and no name in any file system (an anonymous memfd).
  EXPECT_TRUE(fcntl(s.fd(), F_GETFD) & FD_CLOEXEC);
  char link[256] = {};
  std::string path = "/proc/self/fd/" + std::to_string(s.fd());
  ASSERT_GT(readlink(path.c_str(), link, sizeof link - 1), 0);
  EXPECT_EQ(std::string(link).rfind("/memfd:doorway", 0), 0u) << link;
  EXPECT_EQ(s.placement().pages, PageKind::kSmall);
  SegmentLayout l;
  EXPECT_EQ(ValidateSegmentHeader(s.base(), s.layout().segment_size, &l), 0);
  EXPECT_EQ(l.ring_capacity[0], 64u << 10);
}

TEST(Segment, AttachSharesData) {
  Segment a, b;
  ASSERT_EQ(Segment::Create(SmallOptions(), &a), 0);
  int fd = dup(a.fd());
  ASSERT_GE(fd, 0);
  ASSERT_EQ(Segment::Attach(fd, &b), 0);
  EXPECT_NE(a.base(), b.base());
  RingStats st;
  Ring tx = a.MakeTxRing(Role::kClient, &st);
  Ring rx = b.MakeRxRing(Role::kServer, &st);
  Ring tx2 = b.MakeTxRing(Role::kServer, &st);
  Ring rx2 = a.MakeRxRing(Role::kClient, &st);
  ASSERT_EQ(tx.Write("ping", 4), 4);
  ASSERT_EQ(tx2.Write("pong!", 5), 5);
  char buf[8];
  ASSERT_EQ(rx.Read(buf, sizeof buf), 4);
  EXPECT_EQ(std::string(buf, 4), "ping");
  ASSERT_EQ(rx2.Read(buf, sizeof buf), 5);
  EXPECT_EQ(std::string(buf, 5), "pong!");
  b.MarkPeerGone(Role::kServer);  // the client died, from the server's view
  EXPECT_EQ(rx.Read(buf, sizeof buf), 0);
  EXPECT_EQ(tx2.Write("x", 1), -EPIPE);
}

bool PoolHolds(int fd) {
  int fds[kCreatorPoolSize];
  int n = ReusePoolFds(fds, kCreatorPoolSize);
  for (int i = 0; i < n; ++i) {
    if (fds[i] == fd) return true;
  }
  return false;
}

// Reuse (segment.h): the creator hands a segment out again only after the
// receiver released it, re-initialised; the receiver's Attach of the same
// memfd reuses its mapping; a forked child reuses nothing it inherited.
TEST(Segment, ReuseAfterReceiverReleases) {
  SegmentOptions opts = SmallOptions();
  opts.reuse = true;
  Segment a, b;
  ASSERT_EQ(Segment::Create(opts, &a), 0);
  ASSERT_EQ(Segment::Attach(dup(a.fd()), &b), 0);
  RingStats st;
  ASSERT_EQ(a.MakeTxRing(Role::kClient, &st).Write("hello", 5), 5);
  void* const a_base = a.base();
  void* const b_base = b.base();
  const int a_fd = a.fd();
  std::move(a).Recycle(Role::kClient);
  EXPECT_FALSE(a.valid());
  EXPECT_TRUE(PoolHolds(a_fd));

  // The receiver still holds it: a new connection gets a new segment.
  Segment c;
  ASSERT_EQ(Segment::Create(opts, &c), 0);
  EXPECT_NE(c.base(), a_base);
  c = Segment();

  // Other capacities never match a pooled segment.
  Segment b2 = std::move(b);
  std::move(b2).Recycle(Role::kServer);
  SegmentOptions other = SmallOptions(128 << 10);
  other.reuse = true;
  Segment o;
  ASSERT_EQ(Segment::Create(other, &o), 0);
  EXPECT_NE(o.base(), a_base);
  o = Segment();

  Segment d;
  ASSERT_EQ(Segment::Create(opts, &d), 0);
  EXPECT_EQ(d.base(), a_base);
  EXPECT_EQ(d.fd(), a_fd);
  EXPECT_EQ(d.generation(), 2u);
  EXPECT_FALSE(PoolHolds(a_fd));
  Segment e;
  ASSERT_EQ(Segment::Attach(dup(d.fd()), &e), 0);
  EXPECT_EQ(e.base(), b_base);  // the receiver's cached mapping
  Ring rx = e.MakeRxRing(Role::kServer, &st);
  EXPECT_EQ(rx.Readable(), 0u);  // nothing of the previous connection
  ASSERT_EQ(d.MakeTxRing(Role::kClient, &st).Write("x", 1), 1);
  char buf[8];
  ASSERT_EQ(rx.Read(buf, sizeof buf), 1);
  EXPECT_EQ(buf[0], 'x');

  // Without opts.reuse, never from the pool.
  std::move(e).Recycle(Role::kServer);
  std::move(d).Recycle(Role::kClient);
  Segment f;
  ASSERT_EQ(Segment::Create(SmallOptions(), &f), 0);
  EXPECT_NE(f.base(), a_base);

  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    Segment g;
    // (Addresses and fd numbers may repeat: the child unmapped and closed.)
    bool fresh = !PoolHolds(a_fd) && Segment::Create(opts, &g) == 0 && g.generation() == 1;
    _exit(fresh ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  Segment h;
  ASSERT_EQ(Segment::Create(opts, &h), 0);
  EXPECT_EQ(h.base(), a_base);  // the parent still reuses it
}

SegmentOptions ArenaOptions() {
  SegmentOptions o = SmallOptions();
  o.reuse = true;
  o.arena = true;
  return o;
}

// Arenas (segment.h): slots of one memfd, each a connection's segment; a
// slot comes back only after both sides are done with it.
TEST(Segment, ArenaSlotsAreReusedOnlyAfterRelease) {
  SegmentOptions opts = ArenaOptions();
  Segment a, b;
  ASSERT_EQ(Segment::Create(opts, &a), 0);
  ASSERT_TRUE(a.in_arena());
  ASSERT_EQ(Segment::Create(opts, &b), 0);
  ASSERT_TRUE(b.in_arena());
  EXPECT_EQ(a.fd(), b.fd());  // one memfd
  EXPECT_NE(a.offset(), b.offset());
  EXPECT_EQ(b.base(), static_cast<std::byte*>(a.base()) + (b.offset() - a.offset()));

  // The receiver maps the arena once, for both slots.
  Segment ra, rb;
  ASSERT_EQ(Segment::AttachAt(dup(a.fd()), a.offset(), &ra), 0);
  const int b_copy = dup(b.fd());
  ASSERT_EQ(Segment::AttachAt(b_copy, b.offset(), &rb), 0);
  // One fd per arena in the receiver, not one per connection.
  EXPECT_EQ(rb.fd(), ra.fd());
  EXPECT_EQ(fcntl(b_copy, F_GETFD), -1);
  EXPECT_EQ(static_cast<std::byte*>(rb.base()) - static_cast<std::byte*>(ra.base()),
            static_cast<std::ptrdiff_t>(b.offset()) - static_cast<std::ptrdiff_t>(a.offset()));
  RingStats st;
  ASSERT_EQ(a.MakeTxRing(Role::kClient, &st).Write("to a", 4), 4);
  ASSERT_EQ(b.MakeTxRing(Role::kClient, &st).Write("to b!", 5), 5);
  char buf[8];
  ASSERT_EQ(ra.MakeRxRing(Role::kServer, &st).Read(buf, sizeof buf), 4);
  EXPECT_EQ(std::string(buf, 4), "to a");
  ASSERT_EQ(rb.MakeRxRing(Role::kServer, &st).Read(buf, sizeof buf), 5);
  EXPECT_EQ(std::string(buf, 5), "to b!");

  // Recycled by the creator but not released by the receiver: not reused.
  const uint64_t a_offset = a.offset();
  std::move(a).Recycle(Role::kClient);
  Segment c;
  ASSERT_EQ(Segment::Create(opts, &c), 0);
  EXPECT_NE(c.offset(), a_offset);
  // Released too: reused, re-initialised, with the next generation.
  std::move(ra).Recycle(Role::kServer);
  std::vector<Segment> more;
  bool reused = false;
  for (uint32_t i = 0; i < kArenaSlots && !reused; ++i) {
    Segment d;
    ASSERT_EQ(Segment::Create(opts, &d), 0);
    if (d.fd() == b.fd() && d.offset() == a_offset) {
      reused = true;
      EXPECT_EQ(d.generation(), 2u);
      Segment rd;
      ASSERT_EQ(Segment::AttachAt(dup(d.fd()), d.offset(), &rd), 0);
      EXPECT_EQ(rd.MakeRxRing(Role::kServer, &st).Readable(), 0u);
    }
    more.push_back(std::move(d));
  }
  EXPECT_TRUE(reused);

  // A slot never sent (Discard) is free at once; one not recycled (the
  // destructor: shared by fork) never comes back.
  Segment e;
  ASSERT_EQ(Segment::Create(opts, &e), 0);
  const uint64_t e_offset = e.offset();
  const int e_fd = e.fd();
  std::move(e).Discard();
  EXPECT_FALSE(e.valid());
  Segment f;
  for (uint32_t i = 0; i < kArenaSlots; ++i) {
    Segment g;
    ASSERT_EQ(Segment::Create(opts, &g), 0);
    if (g.fd() == e_fd && g.offset() == e_offset) {
      f = std::move(g);
      break;
    }
    more.push_back(std::move(g));
  }
  ASSERT_TRUE(f.valid());
  const uint64_t f_offset = f.offset();
  {
    Segment rf;
    ASSERT_EQ(Segment::AttachAt(dup(f.fd()), f.offset(), &rf), 0);
    std::move(rf).Recycle(Role::kServer);
  }
  f = Segment();  // destroyed, not recycled
  for (uint32_t i = 0; i < 2 * kArenaSlots; ++i) {
    Segment g;
    ASSERT_EQ(Segment::Create(opts, &g), 0);
    EXPECT_FALSE(g.fd() == e_fd && g.offset() == f_offset);
    more.push_back(std::move(g));
  }

  // A forked child takes nothing from the parent's arenas.
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    Segment h;
    bool fresh =
        Segment::Create(opts, &h) == 0 && h.in_arena() && h.generation() == 1 && h.offset() == 0;
    struct stat hs, ps;
    fresh = fresh && fstat(h.fd(), &hs) == 0 && fstat(e_fd, &ps) == 0 && hs.st_ino != ps.st_ino;
    _exit(fresh ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

// A slot whose rings carried much gets its data pages freed by the side
// that is done second, so idle arenas hold only headers.
// The runtime's door socket reuse (runtime/reuse.h): the creator watches the
// receiver's release of a slot after both recycled it, and the receiver
// attaches the next slot of the same arena without its memfd.
TEST(Segment, ArenaSlotRefWatchesReleaseAndAttachesBeside) {
  SegmentOptions opts = ArenaOptions();
  Segment a;
  ASSERT_EQ(Segment::Create(opts, &a), 0);
  Segment ra;
  ASSERT_EQ(Segment::AttachAt(dup(a.fd()), a.offset(), &ra), 0);
  ArenaSlotRef watch = a.SlotRef();
  ArenaSlotRef held = ra.SlotRef();
  ASSERT_TRUE(watch.valid());
  ASSERT_TRUE(held.valid());
  // Both ends name the connection's slot alike (the wake records' key).
  EXPECT_EQ(watch.Identity(), held.Identity());
  EXPECT_NE(watch.Identity().ino, 0u);
  EXPECT_EQ(ArenaSlotRef().Identity(), SlotIdentity{});
  EXPECT_TRUE(watch.SameArena(ra));  // one process: one mapping for both ends
  EXPECT_FALSE(watch.Released());
  // The receiver's word that it drops its door socket end, for this
  // connection only.
  EXPECT_FALSE(a.DoorDropped());
  ra.MarkDoorDropped();
  EXPECT_TRUE(a.DoorDropped());
  std::move(a).Recycle(Role::kClient);
  EXPECT_FALSE(watch.Released()) << "the receiver has not released it";
  std::move(ra).Recycle(Role::kServer);
  EXPECT_TRUE(watch.Released());

  Segment b;
  ASSERT_EQ(Segment::Create(opts, &b), 0);
  ASSERT_TRUE(watch.SameArena(b));
  // The next connection, even on the same slot, is another one.
  EXPECT_NE(b.SlotRef().Identity(), watch.Identity());
  EXPECT_FALSE(b.DoorDropped());
  EXPECT_TRUE(watch.Released()) << "a slot handed out again was released before";
  Segment rb;
  ASSERT_EQ(Segment::AttachBeside(held, b.offset(), &rb), 0);
  RingStats st;
  ASSERT_EQ(b.MakeTxRing(Role::kClient, &st).Write("beside", 6), 6);
  char buf[8];
  ASSERT_EQ(rb.MakeRxRing(Role::kServer, &st).Read(buf, sizeof buf), 6);
  EXPECT_EQ(std::string(buf, 6), "beside");

  // Offsets from the peer are checked as AttachAt checks them.
  Segment bad;
  EXPECT_NE(Segment::AttachBeside(held, b.offset() + 1, &bad), 0);
  EXPECT_NE(Segment::AttachBeside(held, uint64_t{1} << 40, &bad), 0);
  EXPECT_NE(Segment::AttachBeside(ArenaSlotRef(), b.offset(), &bad), 0);
  EXPECT_FALSE(bad.valid());

  // A segment of its own (not an arena slot) has no slot reference.
  SegmentOptions plain = opts;
  plain.arena = false;
  plain.reuse = false;
  Segment p;
  ASSERT_EQ(Segment::Create(plain, &p), 0);
  EXPECT_FALSE(p.SlotRef().valid());
}

TEST(Segment, ArenaFreesHeavySlotsPages) {
  for (int creator_last = 0; creator_last < 2; ++creator_last) {
    Segment a, b;
    ASSERT_EQ(Segment::Create(ArenaOptions(), &a), 0);
    ASSERT_EQ(Segment::AttachAt(dup(a.fd()), a.offset(), &b), 0);
    RingStats st;
    Ring tx = a.MakeTxRing(Role::kClient, &st);
    Ring rx = b.MakeRxRing(Role::kServer, &st);
    std::vector<char> buf(16 << 10, 'x');
    for (uint64_t moved = 0; moved <= kReuseMaxBytes;) {
      ASSERT_EQ(tx.Write(buf.data(), buf.size()), static_cast<ssize_t>(buf.size()));
      ASSERT_EQ(rx.Read(buf.data(), buf.size()), static_cast<ssize_t>(buf.size()));
      moved += buf.size();
    }
    const auto* data =
        static_cast<const unsigned char*>(a.base()) + a.layout().ring_data_offset[kClientToServer];
    const uint64_t cap = a.layout().ring_capacity[kClientToServer];
    auto resident = [&] {
      std::vector<unsigned char> v(cap / 4096);
      EXPECT_EQ(mincore(const_cast<unsigned char*>(data), cap, v.data()), 0);
      int n = 0;
      for (unsigned char c : v) n += c & 1;
      return n;
    };
    ASSERT_GT(resident(), 0);
    if (creator_last) {
      std::move(b).Recycle(Role::kServer);
      EXPECT_GT(resident(), 0);  // the creator may still read
      std::move(a).Recycle(Role::kClient);
    } else {
      // The arena stays mapped by other slots: look through a mapping of ours.
      Segment keep;
      ASSERT_EQ(Segment::Create(ArenaOptions(), &keep), 0);
      std::move(a).Recycle(Role::kClient);
      EXPECT_GT(resident(), 0);  // the receiver may still read
      std::move(b).Recycle(Role::kServer);
      EXPECT_EQ(resident(), 0);
      continue;
    }
    EXPECT_EQ(resident(), 0);
  }
}

// A slot past the first 8 of its arena has its pages freed even if it
// carried little (a burst of connections must not stay resident).
TEST(Segment, ArenaFreesColdSlotsPages) {
  std::vector<Segment> held;
  Segment a;
  for (uint32_t i = 0; i < 2 * kArenaSlots; ++i) {
    Segment s;
    ASSERT_EQ(Segment::Create(ArenaOptions(), &s), 0);
    if (s.offset() / s.layout().segment_size >= 8) {
      a = std::move(s);
      break;
    }
    held.push_back(std::move(s));
  }
  ASSERT_TRUE(a.valid());
  Segment b;
  ASSERT_EQ(Segment::AttachAt(dup(a.fd()), a.offset(), &b), 0);
  RingStats st;
  std::vector<char> buf(4096, 'y');
  ASSERT_EQ(a.MakeTxRing(Role::kClient, &st).Write(buf.data(), buf.size()), 4096);
  ASSERT_EQ(b.MakeRxRing(Role::kServer, &st).Read(buf.data(), buf.size()), 4096);
  auto* data = static_cast<unsigned char*>(a.base()) + a.layout().ring_data_offset[kClientToServer];
  unsigned char v = 0;
  ASSERT_EQ(mincore(data, 4096, &v), 0);
  ASSERT_EQ(v & 1, 1);
  std::move(a).Recycle(Role::kClient);
  std::move(b).Recycle(Role::kServer);
  ASSERT_EQ(mincore(data, 4096, &v), 0);  // the arena stays mapped (held slots)
  EXPECT_EQ(v & 1, 0);
}

// Threads that connect and close at once through the arenas: every
// connection gets a slot no other live connection has, sees only its own
// bytes, and the slots come back (bounded: the arenas do not run out).
TEST(Segment, ArenaUnderThreads) {
  constexpr int kThreads = 4;
  constexpr int kIters = 1500;
  std::atomic<int> errors{0};
  std::atomic<int> in_arena{0};
  auto work = [&](int t) {
    std::vector<Segment> lingering;  // some receivers finish late
    for (int i = 0; i < kIters; ++i) {
      Segment a, b;
      if (Segment::Create(ArenaOptions(), &a) != 0 ||
          Segment::AttachAt(dup(a.fd()), a.offset(), &b) != 0) {
        errors.fetch_add(1);
        continue;
      }
      if (a.in_arena()) in_arena.fetch_add(1);
      RingStats st;
      uint64_t word = (uint64_t{static_cast<uint32_t>(t)} << 32) | static_cast<uint32_t>(i);
      uint64_t got = 0;
      if (b.MakeRxRing(Role::kServer, &st).Readable() != 0 ||
          a.MakeTxRing(Role::kClient, &st).Write(&word, sizeof word) != sizeof word ||
          b.MakeRxRing(Role::kServer, &st).Read(&got, sizeof got) != sizeof got || got != word) {
        errors.fetch_add(1);
      }
      if (i % 3 == 0) {
        std::move(a).Recycle(Role::kClient);
        lingering.push_back(std::move(b));
        if (lingering.size() > 8) {
          std::move(lingering.front()).Recycle(Role::kServer);
          lingering.erase(lingering.begin());
        }
      } else {
        std::move(b).Recycle(Role::kServer);
        std::move(a).Recycle(Role::kClient);
      }
    }
    for (Segment& s : lingering) std::move(s).Recycle(Role::kServer);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(work, t);
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  // Slots come back: nearly all connections were arena slots.
  EXPECT_GT(in_arena.load(), kThreads * kIters * 9 / 10);
}

TEST(Segment, HeavySegmentsAreNotKept) {
  SegmentOptions opts = SmallOptions();
  opts.reuse = true;
  Segment a, b;
  ASSERT_EQ(Segment::Create(opts, &a), 0);
  ASSERT_EQ(Segment::Attach(dup(a.fd()), &b), 0);
  RingStats st;
  Ring tx = a.MakeTxRing(Role::kClient, &st);
  Ring rx = b.MakeRxRing(Role::kServer, &st);
  std::vector<char> buf(16 << 10);
  for (uint64_t moved = 0; moved <= kReuseMaxBytes;) {
    ASSERT_EQ(tx.Write(buf.data(), buf.size()), static_cast<ssize_t>(buf.size()));
    ASSERT_EQ(rx.Read(buf.data(), buf.size()), static_cast<ssize_t>(buf.size()));
    moved += buf.size();
  }
  const int a_fd = a.fd();
  std::move(b).Recycle(Role::kServer);
  std::move(a).Recycle(Role::kClient);
  EXPECT_FALSE(PoolHolds(a_fd));
}

TEST(Segment, MoveKeepsOwnership) {
  Segment a;
  ASSERT_EQ(Segment::Create(SmallOptions(), &a), 0);
  int fd = a.fd();
  Segment b(std::move(a));
  EXPECT_FALSE(a.valid());
  EXPECT_EQ(b.fd(), fd);
  Segment c;
  c = std::move(b);
  EXPECT_EQ(c.fd(), fd);
  EXPECT_GE(fcntl(fd, F_GETFD), 0);
}

// Builds an fd holding a copy of a valid segment, then lets `mutate` change
// the header bytes, `seal` choose the seals, and `extra` grow the file.
int MakeFd(void (*mutate)(std::byte*), unsigned seals, uint64_t extra = 0, bool memfd = true) {
  Segment s;
  if (Segment::Create(SmallOptions(4096), &s) != 0) return -1;
  uint64_t size = s.layout().segment_size;
  int fd;
  if (memfd) {
    fd = memfd_create("test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  } else {
    char tmpl[] = "/tmp/doorway_segment_test_XXXXXX";
    fd = mkstemp(tmpl);
    unlink(tmpl);
  }
  if (fd < 0 || ftruncate(fd, size + extra) != 0) return -1;
  // Page-aligned copy: the header types are 64-byte aligned.
  std::unique_ptr<std::byte, void (*)(std::byte*)> copy(
      static_cast<std::byte*>(::operator new (size, std::align_val_t{4096})),
      [](std::byte* p) { ::operator delete (p, std::align_val_t{4096}); });
  std::memcpy(copy.get(), s.base(), size);
  if (mutate != nullptr) mutate(copy.get());
  if (pwrite(fd, copy.get(), size, 0) != static_cast<ssize_t>(size)) return -1;
  if (seals != 0 && fcntl(fd, F_ADD_SEALS, seals) != 0) return -1;
  return fd;
}

constexpr unsigned kGoodSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

int AttachResult(int fd, uint64_t offset = 0) {
  Segment s;
  int rc = Segment::AttachAt(fd, offset, &s);
  if (rc != 0) close(fd);
  return rc;
}

// A file larger than its (first) segment is an arena: the segment at an
// offset is validated against what follows it.
TEST(SegmentValidate, ArenaSlotOffsets) {
  {
    int fd = MakeFd(nullptr, kGoodSeals, 8192);
    Segment s;
    ASSERT_EQ(Segment::AttachAt(fd, 0, &s), 0);
    EXPECT_TRUE(s.in_arena());
    EXPECT_EQ(s.offset(), 0u);
  }
  // Not page aligned; at or past the end; a slot whose header runs past
  // the end; a slot that is only zeroes.
  EXPECT_EQ(AttachResult(MakeFd(nullptr, kGoodSeals, 8192), 100), -EINVAL);
  EXPECT_EQ(AttachResult(MakeFd(nullptr, kGoodSeals, 8192), uint64_t{1} << 40), -EINVAL);
  int fd = MakeFd(nullptr, kGoodSeals, 8192);
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(AttachResult(fd, static_cast<uint64_t>(st.st_size)), -EINVAL);
  EXPECT_EQ(AttachResult(MakeFd(nullptr, kGoodSeals, 8192), 4096), -EINVAL);
}

TEST(SegmentValidate, AcceptsGoodCopy) {
  int fd = MakeFd(nullptr, kGoodSeals);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(AttachResult(fd), 0);
}

TEST(SegmentValidate, RejectsUnsealed) {
  EXPECT_EQ(AttachResult(MakeFd(nullptr, 0)), -EINVAL);
  EXPECT_EQ(AttachResult(MakeFd(nullptr, F_SEAL_SHRINK)), -EINVAL);
  EXPECT_EQ(AttachResult(MakeFd(nullptr, F_SEAL_SHRINK | F_SEAL_GROW)), -EINVAL);
  EXPECT_EQ(AttachResult(MakeFd(nullptr, kGoodSeals | F_SEAL_WRITE)), -EINVAL);
}

TEST(SegmentValidate, RejectsNonMemfd) {
  EXPECT_EQ(AttachResult(MakeFd(nullptr, 0, 0, /*memfd=*/false)), -EINVAL);
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  EXPECT_EQ(AttachResult(p[0]), -EINVAL);
  close(p[1]);
}

TEST(SegmentValidate, RejectsWrongSize) {
  // Header says larger than the file.
  EXPECT_EQ(AttachResult(MakeFd(
                [](std::byte* b) { reinterpret_cast<SegmentHeader*>(b)->segment_size += 4096; },
                kGoodSeals)),
            -EINVAL);
  // Too small to hold the prefix.
  int fd = memfd_create("tiny", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fcntl(fd, F_ADD_SEALS, kGoodSeals), 0);
  EXPECT_EQ(AttachResult(fd), -EINVAL);
}

TEST(SegmentValidate, RejectsBadMagicAndVersion) {
  EXPECT_EQ(AttachResult(MakeFd(
                [](std::byte* b) { reinterpret_cast<SegmentHeader*>(b)->magic ^= 1; }, kGoodSeals)),
            -EPROTO);
  EXPECT_EQ(
      AttachResult(MakeFd([](std::byte* b) { reinterpret_cast<SegmentHeader*>(b)->version = 99; },
                          kGoodSeals)),
      -EPROTO);
  EXPECT_EQ(
      AttachResult(MakeFd(
          [](std::byte* b) { reinterpret_cast<SegmentHeader*>(b)->prefix_size = 64; }, kGoodSeals)),
      -EINVAL);
  EXPECT_EQ(
      AttachResult(MakeFd([](std::byte* b) { reinterpret_cast<SegmentHeader*>(b)->ring_count = 3; },
                          kGoodSeals)),
      -EINVAL);
  EXPECT_EQ(
      AttachResult(MakeFd(
          [](std::byte* b) { reinterpret_cast<SegmentHeader*>(b)->ring_control_offset[1] += 64; },
          kGoodSeals)),
      -EINVAL);
}

internal::RingMeta* Meta(std::byte* b, int i) {
  return &reinterpret_cast<SegmentPrefix*>(b)->ring[i].meta;
}

TEST(SegmentValidate, RejectsBadRingGeometry) {
  // Capacity not a power of two / too small / too large.
  EXPECT_EQ(AttachResult(MakeFd([](std::byte* b) { Meta(b, 0)->capacity = 6000; }, kGoodSeals)),
            -EINVAL);
  EXPECT_EQ(AttachResult(MakeFd([](std::byte* b) { Meta(b, 1)->capacity = 64; }, kGoodSeals)),
            -EINVAL);
  EXPECT_EQ(
      AttachResult(MakeFd([](std::byte* b) { Meta(b, 1)->capacity = 1ull << 40; }, kGoodSeals)),
      -EINVAL);
  // Data outside the segment, unaligned, inside the prefix, overlapping, overflowing.
  EXPECT_EQ(AttachResult(MakeFd([](std::byte* b) { Meta(b, 1)->data_offset += 4096; }, kGoodSeals)),
            -EINVAL);
  EXPECT_EQ(AttachResult(MakeFd([](std::byte* b) { Meta(b, 0)->data_offset += 8; }, kGoodSeals)),
            -EINVAL);
  EXPECT_EQ(AttachResult(MakeFd([](std::byte* b) { Meta(b, 0)->data_offset = 0; }, kGoodSeals)),
            -EINVAL);
  EXPECT_EQ(
      AttachResult(MakeFd([](std::byte* b) { Meta(b, 1)->data_offset = Meta(b, 0)->data_offset; },
                          kGoodSeals)),
      -EINVAL);
  EXPECT_EQ(AttachResult(MakeFd([](std::byte* b) { Meta(b, 1)->data_offset = ~0ull & ~4095ull; },
                                kGoodSeals)),
            -EINVAL);
}

TEST(SegmentValidate, HeaderFunctionDirectly) {
  SegmentLayout l;
  std::vector<std::byte> junk(8192, std::byte{0x5a});
  EXPECT_EQ(ValidateSegmentHeader(junk.data(), junk.size(), &l), -EPROTO);
  EXPECT_EQ(ValidateSegmentHeader(junk.data(), 64, &l), -EINVAL);
}

TEST(Placement, NumaBindingOfIncomingRing) {
  Segment s;
  ASSERT_EQ(Segment::Create(SmallOptions(), &s), 0);
  if (numa_available() < 0) {
    EXPECT_EQ(s.BindIncomingRing(Role::kServer), -ENOSYS);
    GTEST_SKIP() << "no NUMA support";
  }
  EXPECT_EQ(s.BindIncomingRing(Role::kServer), 0);
  EXPECT_GE(s.placement().numa_node[kClientToServer], 0);
  EXPECT_EQ(s.placement().numa_error[kClientToServer], 0);
  EXPECT_EQ(s.BindIncomingRing(Role::kClient, 0), 0);
  EXPECT_EQ(s.placement().numa_node[kServerToClient], 0);
  EXPECT_EQ(s.BindIncomingRing(Role::kClient, numa_max_node() + 1), -EINVAL);
  // Data still flows after binding.
  RingStats st;
  Ring tx = s.MakeTxRing(Role::kClient, &st);
  Ring rx = s.MakeRxRing(Role::kServer, &st);
  char buf[4];
  ASSERT_EQ(tx.Write("abc", 3), 3);
  ASSERT_EQ(rx.Read(buf, sizeof buf), 3);
}

TEST(Placement, TransparentHugePagesWhenShmemAllows) {
  SegmentOptions o = SmallOptions(2 << 20);
  o.pages = PagePolicy::kNoHugeTlb;
  Segment s;
  ASSERT_EQ(Segment::Create(o, &s), 0);
  if (DetectPageSupport().shmem_thp) {
    EXPECT_EQ(s.placement().pages, PageKind::kTransparentHuge);
  } else {
    EXPECT_EQ(s.placement().pages, PageKind::kSmall);
  }
  o.pages = PagePolicy::kSmall;
  Segment t;
  ASSERT_EQ(Segment::Create(o, &t), 0);
  EXPECT_EQ(t.placement().pages, PageKind::kSmall);
  EXPECT_STREQ(PageKindName(t.placement().pages), "small");
}

// Reserves a few huge pages as root for the duration of a test, restoring the
// previous pool size afterwards.
class HugePagePool {
 public:
  explicit HugePagePool(int extra) {
    FILE* f = fopen(kPath, "r");
    if (f == nullptr) return;
    if (fscanf(f, "%ld", &old_) != 1) old_ = -1;
    fclose(f);
    if (old_ < 0 || geteuid() != 0) return;
    if (!Write(old_ + extra)) return;
    changed_ = true;
  }
  ~HugePagePool() {
    if (changed_) Write(old_);
  }
  bool changed() const { return changed_; }

 private:
  static constexpr const char* kPath = "/proc/sys/vm/nr_hugepages";
  static bool Write(long v) {
    FILE* f = fopen(kPath, "w");
    if (f == nullptr) return false;
    bool ok = fprintf(f, "%ld\n", v) > 0;
    ok = (fclose(f) == 0) && ok;
    return ok;
  }
  long old_ = -1;
  bool changed_ = false;
};

TEST(Placement, HugeTlbWithAPool) {
  std::unique_ptr<HugePagePool> pool;
  if (DetectPageSupport().hugetlb_free_pages < 4) pool = std::make_unique<HugePagePool>(4);
  PageSupport sup = DetectPageSupport();
  if (sup.hugetlb_free_pages < 4) {
    GTEST_SKIP() << "no huge-page pool and cannot reserve one (needs root)";
  }
  SegmentOptions o = SmallOptions(64 << 10);
  o.pages = PagePolicy::kHugeTlb;
  {
    Segment s;
    ASSERT_EQ(Segment::Create(o, &s), 0);
    EXPECT_EQ(s.placement().pages, PageKind::kHugeTlb);
    EXPECT_EQ(s.placement().page_size, sup.hugetlb_page_size);
    EXPECT_EQ(s.layout().segment_size % sup.hugetlb_page_size, 0u);
    // Refused from a peer that may not hand us huge pages (another uid).
    Segment refused;
    int fd = dup(s.fd());
    EXPECT_EQ(Segment::Attach(fd, &refused, /*hugetlb=*/false), -EPERM);
    EXPECT_FALSE(refused.valid());
    Segment r;
    ASSERT_EQ(Segment::Attach(fd, &r), 0);
    EXPECT_EQ(r.placement().pages, PageKind::kHugeTlb);
    RingStats st;
    Ring tx = s.MakeTxRing(Role::kClient, &st);
    Ring rx = r.MakeRxRing(Role::kServer, &st);
    char buf[4];
    ASSERT_EQ(tx.Write("abc", 3), 3);
    ASSERT_EQ(rx.Read(buf, sizeof buf), 3);
    // kAuto picks hugetlb when the pool has free pages.
    Segment a;
    o.pages = PagePolicy::kAuto;
    ASSERT_EQ(Segment::Create(o, &a), 0);
    EXPECT_EQ(a.placement().pages, PageKind::kHugeTlb);
  }
}

TEST(Placement, HugeTlbRequiredWithoutPoolFails) {
  if (DetectPageSupport().hugetlb_free_pages > 0) GTEST_SKIP() << "a pool exists";
  SegmentOptions o = SmallOptions();
  o.pages = PagePolicy::kHugeTlb;
  Segment s;
  EXPECT_EQ(Segment::Create(o, &s), -ENOMEM);
  o.pages = PagePolicy::kAuto;
  ASSERT_EQ(Segment::Create(o, &s), 0);
  EXPECT_NE(s.placement().pages, PageKind::kHugeTlb);
}

}  // namespace
}  // namespace doorway::transport

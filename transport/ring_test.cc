#include "transport/ring.h"

#include <sys/uio.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "transport/internal/layout.h"
#include "transport/internal/test_util.h"
#include "transport/segment.h"

namespace doorway::transport {
namespace {

using internal::RingControl;

// A segment with two rings of `cap` bytes; producer and consumer views of
// ring 0 (client -> server).
class RingTest : public ::testing::Test {
 protected:
  void Make(uint64_t cap) {
    SegmentOptions o;
    o.ring_capacity[0] = o.ring_capacity[1] = cap;
    o.pages = PagePolicy::kSmall;
    ASSERT_EQ(Segment::Create(o, &seg_), 0);
    prod_ = seg_.MakeTxRing(Role::kClient, &pstats_);
    cons_ = seg_.MakeRxRing(Role::kServer, &cstats_);
  }
  void SetUp() override { Make(4096); }
  RingControl* ctrl() { return prod_.control(); }

  Segment seg_;
  RingStats pstats_, cstats_;
  Ring prod_, cons_;
};

std::string Bytes(size_t n, uint64_t seed) {
  testing::Rng r(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(r.Next());
  return s;
}

// Queued: the same count from both ends, no cache touched, and corrupt
// indices (tail ahead by more than the capacity, head beyond the tail) are
// -EIO rather than a huge or negative count.
TEST_F(RingTest, QueuedFromBothEnds) {
  EXPECT_EQ(prod_.Queued(), 0);
  EXPECT_EQ(cons_.Queued(), 0);
  ASSERT_EQ(prod_.Write(std::string(100, 'a').data(), 100), 100);
  EXPECT_EQ(prod_.Queued(), 100);
  EXPECT_EQ(cons_.Queued(), 100);
  char buf[40];
  ASSERT_EQ(cons_.Read(buf, sizeof buf), 40);
  EXPECT_EQ(cons_.Queued(), 60);
  EXPECT_EQ(prod_.Queued(), 60);
  ctrl()->prod.index.store(40 + 4096 + 1);
  EXPECT_EQ(cons_.Queued(), -EIO);
  ctrl()->prod.index.store(39);
  EXPECT_EQ(cons_.Queued(), -EIO);
  ctrl()->prod.index.store(40 + 4096);  // full: fine
  EXPECT_EQ(cons_.Queued(), 4096);
}

TEST_F(RingTest, EmptyAndSimple) {
  char buf[16];
  EXPECT_EQ(cons_.Read(buf, sizeof buf), -EAGAIN);
  EXPECT_EQ(cons_.Readable(), 0);
  EXPECT_EQ(prod_.Writable(), 4096);
  EXPECT_EQ(prod_.Write("hello", 5), 5);
  EXPECT_EQ(cons_.Readable(), 5);
  EXPECT_EQ(cons_.Read(buf, sizeof buf), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");
  EXPECT_EQ(cons_.Read(buf, sizeof buf), -EAGAIN);
  EXPECT_EQ(prod_.Write(buf, 0), 0);
  EXPECT_EQ(cons_.Read(buf, 0), 0);
}

TEST_F(RingTest, FullPartialAndCapacityEdges) {
  std::string a = Bytes(5000, 1);
  EXPECT_EQ(prod_.Write(a.data(), a.size()), 4096);  // partial: only capacity fits
  EXPECT_EQ(prod_.Writable(), 0);
  EXPECT_EQ(prod_.Write(a.data(), 1), -EAGAIN);
  std::string out(8192, '\0');
  EXPECT_EQ(cons_.Read(out.data(), 100), 100);
  EXPECT_EQ(prod_.Writable(), 100);
  EXPECT_EQ(prod_.Write(a.data() + 4096, 904), 100);
  EXPECT_EQ(cons_.Read(out.data() + 100, out.size() - 100), 4096);
  EXPECT_EQ(out.substr(0, 4196), a.substr(0, 4196));
}

// WriteWhole: every byte or nothing, and "nothing" leaves the ring, the
// counters and the other calls' results as they were (the runtime then
// calls Write for the exact result).
TEST_F(RingTest, WriteWholeIsAllOrNothing) {
  std::string a = Bytes(4000, 3);
  EXPECT_EQ(prod_.WriteWhole(a.data(), 0), 0);
  EXPECT_EQ(prod_.WriteWhole(a.data(), 4097), 0);  // more than the capacity
  EXPECT_EQ(pstats_.ops.load(), 0u);
  ASSERT_EQ(prod_.WriteWhole(a.data(), 4000), 4000);
  EXPECT_EQ(pstats_.bytes.load(), 4000u);
  EXPECT_EQ(pstats_.ops.load(), 1u);
  EXPECT_EQ(prod_.WriteWhole(a.data(), 97), 0);  // 96 free
  EXPECT_EQ(prod_.Queued(), 4000);
  EXPECT_EQ(pstats_.ops.load(), 1u);
  ASSERT_EQ(prod_.WriteWhole(a.data(), 96), 96);  // exactly full
  std::string out(4196, '\0');
  ASSERT_EQ(cons_.Read(out.data(), 100), 100);
  ASSERT_EQ(prod_.WriteWhole(a.data() + 100, 100), 100);  // refreshes the head, wraps
  ASSERT_EQ(cons_.Read(out.data() + 100, 4096), 4096);
  EXPECT_EQ(out.substr(0, 4000), a);
  EXPECT_EQ(out.substr(4000, 96), a.substr(0, 96));
  EXPECT_EQ(out.substr(4096, 100), a.substr(100, 100));
  EXPECT_EQ(cons_.Queued(), 0);

  // Shut down either way, or corrupt: 0, and Write says what happened.
  ctrl()->cons.index.store(uint64_t{1} << 40);  // head far ahead of the tail
  EXPECT_EQ(prod_.WriteWhole(a.data(), 4096), 0);
  EXPECT_EQ(pstats_.corruptions.load(), 0u);
  EXPECT_EQ(prod_.Write(a.data(), 4096), -EIO);
  EXPECT_EQ(pstats_.corruptions.load(), 1u);
  ctrl()->cons.index.store(4196);
  ASSERT_EQ(prod_.WriteWhole(a.data(), 8), 8);
  cons_.ShutdownRead(false);
  EXPECT_EQ(prod_.WriteWhole(a.data(), 8), 0);
  EXPECT_EQ(prod_.Write(a.data(), 8), -EPIPE);
}

TEST_F(RingTest, WriteWholeAfterShutdownWriteAndReset) {
  char buf[8] = {};
  prod_.ShutdownWrite(false);
  EXPECT_EQ(prod_.WriteWhole(buf, 8), 0);
  EXPECT_EQ(prod_.Write(buf, 8), -EPIPE);
  Make(4096);
  cons_.ShutdownRead(true);
  EXPECT_EQ(prod_.WriteWhole(buf, 8), 0);
  EXPECT_EQ(prod_.Write(buf, 8), -ECONNRESET);
}

// ReadSome: Read's bytes when there are some, else 0 and nothing changed
// (Read then gives EAGAIN, EOF, ECONNRESET or EIO).
TEST_F(RingTest, ReadSomeIsReadWhenThereAreBytes) {
  char buf[64];
  EXPECT_EQ(cons_.ReadSome(buf, sizeof buf), 0);
  EXPECT_EQ(cons_.Read(buf, sizeof buf), -EAGAIN);
  ASSERT_EQ(prod_.Write("hello world", 11), 11);
  EXPECT_EQ(cons_.ReadSome(buf, 0), 0);
  EXPECT_EQ(cons_.ReadSome(buf, 5), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");
  EXPECT_EQ(cons_.ReadSome(buf, sizeof buf), 6);
  EXPECT_EQ(std::string(buf, 6), " world");
  EXPECT_EQ(cstats_.ops.load(), 2u);
  EXPECT_EQ(cstats_.bytes.load(), 11u);
  // Data then FIN: the data, then 0 with EOF left to Read.
  ASSERT_EQ(prod_.Write("xy", 2), 2);
  prod_.ShutdownWrite(false);
  EXPECT_EQ(cons_.ReadSome(buf, sizeof buf), 2);
  EXPECT_EQ(cons_.ReadSome(buf, sizeof buf), 0);
  EXPECT_EQ(cons_.Read(buf, sizeof buf), 0);
  // Reset discards; corrupt indices are not counted by ReadSome.
  Make(4096);
  ASSERT_EQ(prod_.Write("abc", 3), 3);
  prod_.ShutdownWrite(true);
  EXPECT_EQ(cons_.ReadSome(buf, sizeof buf), 0);
  EXPECT_EQ(cons_.Read(buf, sizeof buf), -ECONNRESET);
  Make(4096);
  ASSERT_EQ(prod_.Write("abc", 3), 3);
  ctrl()->prod.index.store(4096 + 1);
  EXPECT_EQ(cons_.ReadSome(buf, sizeof buf), 0);
  EXPECT_EQ(cstats_.corruptions.load(), 0u);
  EXPECT_EQ(cons_.Read(buf, sizeof buf), -EIO);
}

// Small messages (the inline copy, CopySmall) of every size 1..64 at every
// position around the wrap, through Write/Read and WriteWhole/ReadSome.
TEST_F(RingTest, SmallMessagesAcrossTheWrap) {
  std::string sent, got;
  char buf[80];
  uint64_t seed = 0;
  for (int lap = 0; lap < 3; ++lap) {
    for (size_t n = 1; n <= 64; ++n) {
      for (int k = 0; k < 5; ++k) {
        std::string m = Bytes(n, ++seed);
        int64_t w = (seed & 1) ? prod_.WriteWhole(m.data(), n) : prod_.Write(m.data(), n);
        ASSERT_EQ(w, static_cast<int64_t>(n));
        sent += m;
        size_t want = 1 + seed % 79;
        int64_t r = (seed & 2) ? cons_.ReadSome(buf, want) : cons_.Read(buf, want);
        ASSERT_GT(r, 0);
        got.append(buf, r);
      }
    }
  }
  int64_t r;
  while ((r = cons_.Read(buf, sizeof buf)) > 0) got.append(buf, r);
  EXPECT_EQ(got, sent);
  EXPECT_GT(sent.size(), 4u * 4096);
}

TEST_F(RingTest, WraparoundManySizes) {
  std::string sent, got;
  testing::Rng r(7);
  uint64_t pos = 0;
  for (int i = 0; i < 2000; ++i) {
    size_t n = r.Uniform(1, 4096);
    std::string chunk = Bytes(n, i);
    int64_t w = prod_.Write(chunk.data(), n);
    if (w == -EAGAIN) w = 0;
    ASSERT_GE(w, 0);
    sent.append(chunk, 0, w);
    std::string buf(r.Uniform(1, 5000), '\0');
    int64_t rd = cons_.Read(buf.data(), buf.size());
    if (rd == -EAGAIN) rd = 0;
    ASSERT_GE(rd, 0);
    got.append(buf, 0, rd);
    pos += w;
  }
  char tail[4096];
  int64_t rd;
  while ((rd = cons_.Read(tail, sizeof tail)) > 0) got.append(tail, rd);
  EXPECT_EQ(got, sent);
  EXPECT_GT(pos, 4u * 4096);  // wrapped several times
}

TEST_F(RingTest, IovecInAndOut) {
  std::string a = "abc", b = "", c = "defghij";
  struct iovec in[3] = {{a.data(), a.size()}, {b.data(), 0}, {c.data(), c.size()}};
  // Put the write across the wrap point.
  std::string fill(4090, 'x');
  char sink[4096];
  ASSERT_EQ(prod_.Write(fill.data(), fill.size()), 4090);
  ASSERT_EQ(cons_.Read(sink, sizeof sink), 4090);
  EXPECT_EQ(prod_.Write(in, 3), 10);
  char o1[2], o2[5], o3[10];
  struct iovec out[3] = {{o1, 2}, {o2, 5}, {o3, 10}};
  EXPECT_EQ(cons_.Read(out, 3), 10);
  EXPECT_EQ(std::string(o1, 2) + std::string(o2, 5) + std::string(o3, 3), "abcdefghij");
}

TEST_F(RingTest, PeekWithOffset) {
  std::string fill(4000, 'x');
  char sink[4096];
  ASSERT_EQ(prod_.Write(fill.data(), fill.size()), 4000);
  ASSERT_EQ(cons_.Read(sink, sizeof sink), 4000);
  ASSERT_EQ(prod_.Write("0123456789abcdefghijklmnopqrstuvwxyz", 36), 36);  // wraps
  char buf[64];
  struct iovec iov = {buf, 10};
  EXPECT_EQ(cons_.Peek(0, &iov, 1), 10);
  EXPECT_EQ(std::string(buf, 10), "0123456789");
  EXPECT_EQ(cons_.Peek(30, &iov, 1), 6);
  EXPECT_EQ(std::string(buf, 6), "uvwxyz");
  EXPECT_EQ(cons_.Peek(36, &iov, 1), -EAGAIN);
  EXPECT_EQ(cons_.Peek(1 << 30, &iov, 1), -EAGAIN);
  EXPECT_EQ(cons_.Readable(), 36);  // nothing consumed
  prod_.ShutdownWrite(false);
  EXPECT_EQ(cons_.Peek(36, &iov, 1), 0);  // EOF beyond the data
  EXPECT_EQ(cons_.Read(buf, sizeof buf), 36);
  EXPECT_EQ(cons_.Peek(0, &iov, 1), 0);
}

TEST_F(RingTest, ReserveCommitAcrossWrap) {
  std::string fill(4000, 'x');
  char sink[4096];
  ASSERT_EQ(prod_.Write(fill.data(), fill.size()), 4000);
  ASSERT_EQ(cons_.Read(sink, sizeof sink), 4000);
  RingSpan span;
  ASSERT_EQ(prod_.Reserve(200, &span), 200);
  EXPECT_EQ(span.len[0], 96u);
  EXPECT_EQ(span.len[1], 104u);
  for (size_t i = 0; i < span.len[0]; ++i) span.data[0][i] = std::byte(i);
  for (size_t i = 0; i < span.len[1]; ++i) span.data[1][i] = std::byte(96 + i);
  EXPECT_EQ(cons_.Readable(), 0);  // not yet published
  EXPECT_EQ(prod_.Commit(201), -EINVAL);
  EXPECT_EQ(prod_.Commit(150), 0);
  EXPECT_EQ(prod_.Commit(50), 0);
  EXPECT_EQ(prod_.Commit(1), -EINVAL);
  RingSpan in;
  ASSERT_EQ(cons_.Acquire(1000, &in), 200);
  ASSERT_EQ(in.size(), 200u);
  for (size_t i = 0; i < 200; ++i) {
    std::byte b = i < in.len[0] ? in.data[0][i] : in.data[1][i - in.len[0]];
    ASSERT_EQ(b, std::byte(i)) << i;
  }
  EXPECT_EQ(cons_.Release(201), -EINVAL);
  EXPECT_EQ(cons_.Release(120), 0);
  EXPECT_EQ(cons_.Readable(), 80);
  EXPECT_EQ(cons_.Release(80), 0);
  EXPECT_EQ(cons_.Readable(), 0);
  EXPECT_EQ(cons_.Acquire(10, &in), -EAGAIN);
  EXPECT_EQ(prod_.Reserve(0, &span), 0);
  ASSERT_EQ(prod_.Reserve(1 << 20, &span), 4096);
  EXPECT_EQ(span.size(), 4096u);
}

TEST_F(RingTest, ShutdownWriteGivesEofAfterDrain) {
  ASSERT_EQ(prod_.Write("abc", 3), 3);
  prod_.ShutdownWrite(false);
  EXPECT_EQ(prod_.Write("d", 1), -EPIPE);
  RingSpan s;
  EXPECT_EQ(prod_.Reserve(1, &s), -EPIPE);
  char buf[8];
  EXPECT_EQ(cons_.Read(buf, sizeof buf), 3);
  EXPECT_EQ(cons_.Read(buf, sizeof buf), 0);
  EXPECT_EQ(cons_.Read(buf, sizeof buf), 0);
  EXPECT_EQ(cons_.Acquire(8, &s), 0);
}

TEST_F(RingTest, ResetDiscards) {
  ASSERT_EQ(prod_.Write("abc", 3), 3);
  prod_.ShutdownWrite(true);
  char buf[8];
  EXPECT_EQ(cons_.Read(buf, sizeof buf), -ECONNRESET);
  // Reset never goes back to a plain close.
  prod_.ShutdownWrite(false);
  EXPECT_EQ(cons_.Read(buf, sizeof buf), -ECONNRESET);
}

TEST_F(RingTest, ShutdownReadGivesEpipeOrReset) {
  EXPECT_EQ(prod_.ReaderState(), EndState::kOpen);
  cons_.ShutdownRead(false);
  EXPECT_EQ(prod_.ReaderState(), EndState::kClosed);
  EXPECT_EQ(prod_.WriterState(), EndState::kOpen);
  EXPECT_EQ(prod_.Write("a", 1), -EPIPE);
  char buf[4];
  EXPECT_EQ(cons_.Read(buf, sizeof buf), 0);  // own read side shut down: EOF
  cons_.ShutdownRead(true);
  EXPECT_EQ(prod_.Write("a", 1), -ECONNRESET);
}

TEST_F(RingTest, PeerGoneMarks) {
  ASSERT_EQ(prod_.Write("xy", 2), 2);
  cons_.MarkWriterGone();
  char buf[4];
  EXPECT_EQ(cons_.Read(buf, sizeof buf), 2);
  EXPECT_EQ(cons_.Read(buf, sizeof buf), 0);
  prod_.MarkReaderGone();
  EXPECT_EQ(prod_.Write("a", 1), -EPIPE);
}

TEST_F(RingTest, CorruptTailIsEio) {
  char buf[8];
  ASSERT_EQ(prod_.Write("abc", 3), 3);
  ctrl()->prod.index.store(4096 + 1);  // more than capacity ahead of the head
  EXPECT_EQ(cons_.Read(buf, sizeof buf), -EIO);
  EXPECT_EQ(cons_.Readable(), -EIO);
  RingSpan s;
  EXPECT_EQ(cons_.Acquire(8, &s), -EIO);
  struct iovec iov = {buf, 8};
  EXPECT_EQ(cons_.Peek(0, &iov, 1), -EIO);
  EXPECT_GE(cstats_.corruptions.load(), 1u);
  ctrl()->prod.index.store(3);
  EXPECT_EQ(cons_.Read(buf, sizeof buf), 3);
  // Tail behind the head.
  ctrl()->prod.index.store(1);
  EXPECT_EQ(cons_.Read(buf, sizeof buf), -EIO);
  EXPECT_TRUE(cons_.ReadReady());  // so that a waiter returns and Read reports it
}

TEST_F(RingTest, CorruptHeadIsEio) {
  ASSERT_EQ(prod_.Write("abc", 3), 3);
  ctrl()->cons.index.store(10);  // head beyond tail
  // The producer re-reads the head when its cached view does not show enough
  // space; a small write may still use the (validated) cached head.
  EXPECT_EQ(prod_.Writable(), -EIO);
  std::string big(4096, 'z');
  EXPECT_EQ(prod_.Write(big.data(), big.size()), -EIO);
  RingSpan s;
  EXPECT_EQ(prod_.Reserve(4096, &s), -EIO);
  EXPECT_TRUE(prod_.WriteReady(1));
  ctrl()->cons.index.store(uint64_t{1} << 40);  // far ahead
  EXPECT_EQ(prod_.Write(big.data(), big.size()), -EIO);
  ctrl()->cons.index.store(0);
  EXPECT_EQ(prod_.Writable(), 4093);
}

// The spinning consumer's poll (ReadReadyPrefetch) answers as ReadReady,
// including when the peer scribbled on the head the prefetch address is
// taken from (masked: still a line of the data area; under ASAN a stray
// address would not fault on a prefetch, so the check here is the answer).
TEST_F(RingTest, PrefetchingPollAnswersAsReadReady) {
  EXPECT_FALSE(cons_.ReadReadyPrefetch());
  ASSERT_EQ(prod_.Write("abc", 3), 3);
  EXPECT_TRUE(cons_.ReadReadyPrefetch());
  char buf[3];
  ASSERT_EQ(cons_.Read(buf, sizeof buf), 3);
  EXPECT_FALSE(cons_.ReadReadyPrefetch());
  for (uint64_t head : {uint64_t{3} + (uint64_t{1} << 40), uint64_t{1} << 63, uint64_t{10}}) {
    ctrl()->cons.index.store(head);
    EXPECT_EQ(cons_.ReadReadyPrefetch(), cons_.ReadReady()) << head;
    EXPECT_TRUE(cons_.ReadReadyPrefetch()) << head;  // tail != head: Read answers (-EIO)
    EXPECT_EQ(cons_.Read(buf, sizeof buf), -EIO);
  }
  ctrl()->cons.index.store(3);
  ctrl()->state.writer.store(internal::kStateClosed);
  EXPECT_TRUE(cons_.ReadReadyPrefetch());  // EOF
  EXPECT_EQ(cons_.Read(buf, sizeof buf), 0);
}

TEST_F(RingTest, CorruptStateIsEio) {
  char buf[4];
  ctrl()->state.writer.store(7);
  EXPECT_EQ(cons_.Read(buf, sizeof buf), -EIO);
  EXPECT_EQ(cons_.WriterState(), EndState::kCorrupt);
  ctrl()->state.writer.store(0);
  ctrl()->state.reader.store(0xdeadbeef);
  EXPECT_EQ(prod_.Write("a", 1), -EIO);
}

TEST_F(RingTest, NoWakeWithoutWaiters) {
  char buf[64] = {};
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(prod_.Write(buf, sizeof buf), 64);
    ASSERT_EQ(cons_.Read(buf, sizeof buf), 64);
  }
  EXPECT_EQ(pstats_.futex_wakes.load(), 0u);
  EXPECT_EQ(cstats_.futex_wakes.load(), 0u);
  EXPECT_EQ(pstats_.bytes.load(), 64000u);
  EXPECT_EQ(cstats_.ops.load(), 1000u);
  // A registered waiter makes the next publish wake it (exactly one syscall).
  ctrl()->data_wait.sleeping.store(1);
  ASSERT_EQ(prod_.Write(buf, 1), 1);
  EXPECT_EQ(pstats_.futex_wakes.load(), 1u);
  EXPECT_EQ(ctrl()->data_wait.sleeping.load(), 0u);  // cleared by the waker
  ASSERT_EQ(prod_.Write(buf, 1), 1);
  EXPECT_EQ(pstats_.futex_wakes.load(), 1u);
}

TEST_F(RingTest, LargestCapacityLayout) {
  Make(1 << 20);
  std::string big = Bytes(3 << 19, 3);
  EXPECT_EQ(prod_.Write(big.data(), big.size()), 1 << 20);
  std::string out(1 << 20, '\0');
  EXPECT_EQ(cons_.Read(out.data(), out.size()), 1 << 20);
  EXPECT_EQ(out, big.substr(0, 1 << 20));
}

TEST_F(RingTest, DoorbellsOnlyWhenArmed) {
  char buf[64] = {};
  ASSERT_EQ(prod_.Write(buf, 8), 8);
  EXPECT_FALSE(prod_.TakeDoorbell());    // nobody armed
  EXPECT_TRUE(cons_.ArmReadDoorbell());  // already readable: do not wait
  ASSERT_EQ(cons_.Read(buf, sizeof buf), 8);
  EXPECT_FALSE(cons_.TakeDoorbell());
  EXPECT_FALSE(cons_.ArmReadDoorbell());  // empty: armed, wait in epoll
  ASSERT_EQ(prod_.Write(buf, 1), 1);
  EXPECT_TRUE(prod_.TakeDoorbell());  // one byte to send
  EXPECT_FALSE(prod_.TakeDoorbell());
  ASSERT_EQ(prod_.Write(buf, 1), 1);
  EXPECT_FALSE(prod_.TakeDoorbell());  // one doorbell per arming
  EXPECT_EQ(pstats_.doorbells.load(), 1u);
  ASSERT_EQ(cons_.Read(buf, sizeof buf), 2);

  // Space doorbell (EPOLLOUT) for a writer facing a full ring.
  std::string fill(4096, 'x');
  ASSERT_EQ(prod_.Write(fill.data(), fill.size()), 4096);
  EXPECT_FALSE(prod_.ArmWriteDoorbell(100));
  ASSERT_EQ(cons_.Read(buf, 50), 50);
  EXPECT_TRUE(cons_.TakeDoorbell());  // reported on any freed space; the writer rechecks
  EXPECT_TRUE(prod_.ArmWriteDoorbell(10));

  // A FIN rings the reader's doorbell too.
  std::string sink(8192, '\0');
  ASSERT_GT(cons_.Read(sink.data(), sink.size()), 0);
  (void)cons_.TakeDoorbell();
  EXPECT_FALSE(cons_.ArmReadDoorbell());
  prod_.ShutdownWrite(false);
  EXPECT_TRUE(prod_.TakeDoorbell());
  EXPECT_TRUE(cons_.ReadReady());
}

// A revocable arming (an epoll set that woke takes it back) costs the
// producer no doorbell once taken back, and taking it back leaves any
// sticky arming (another waiter's) in place.
TEST_F(RingTest, RevocableDoorbell) {
  char buf[8] = {};
  EXPECT_FALSE(cons_.DisarmReadDoorbell());  // never armed
  EXPECT_FALSE(cons_.ArmReadDoorbell(Ring::kArmRevocable));
  EXPECT_TRUE(cons_.DisarmReadDoorbell());
  ASSERT_EQ(prod_.Write(buf, 1), 1);
  EXPECT_FALSE(prod_.TakeDoorbell());  // taken back: no doorbell
  ASSERT_EQ(cons_.Read(buf, sizeof buf), 1);

  // Sticky and revocable together: taking back the one leaves the other.
  // (A sticky arming made after a revocable one may absorb it: the
  // revocation then answers false, and the doorbell still comes.)
  EXPECT_FALSE(cons_.ArmReadDoorbell());
  EXPECT_FALSE(cons_.ArmReadDoorbell(Ring::kArmRevocable));
  EXPECT_TRUE(cons_.DisarmReadDoorbell());
  ASSERT_EQ(prod_.Write(buf, 1), 1);
  EXPECT_TRUE(prod_.TakeDoorbell());
  ASSERT_EQ(cons_.Read(buf, sizeof buf), 1);

  // The producer consumed it first: the doorbell goes, the revocation
  // finds nothing.
  EXPECT_FALSE(cons_.ArmReadDoorbell(Ring::kArmRevocable));
  ASSERT_EQ(prod_.Write(buf, 1), 1);
  EXPECT_TRUE(prod_.TakeDoorbell());
  EXPECT_FALSE(cons_.DisarmReadDoorbell());
  EXPECT_TRUE(cons_.ArmReadDoorbell(Ring::kArmRevocable));  // readable: do not wait
}

}  // namespace
}  // namespace doorway::transport

// Stress: push >= 1 GiB (less under sanitizers) through one ring with random
// chunk sizes and a random mix of the copy, iovec, peek and zero-copy APIs,
// blocking with the adaptive waits, between two threads and between two
// processes (fork; the segment is inherited). Every byte is compared with the
// expected stream and a position-dependent checksum is compared at the end.
// Plus several writers sharing one end through the ShmMutex.
// Loops are bounded: every wait has a 60 s timeout that fails the test.
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "transport/internal/layout.h"
#include "transport/internal/test_util.h"
#include "transport/segment.h"
#include "transport/wait.h"

namespace doorway::transport {
namespace {

using testing::Checksum;
using testing::Pattern;
using testing::Rng;

constexpr uint64_t kTotal = testing::kUnderSanitizer ? (48ull << 20) : (1ull << 30);
constexpr uint64_t kCap = 128 << 10;
constexpr uint64_t kMaxChunk = 100 << 10;
constexpr int64_t kWaitTimeoutNs = 60'000'000'000;

const Pattern& Pat() {
  static const Pattern* p = new Pattern();
  return *p;
}

// Returns 0 on success, else a line number of the failure.
int Produce(Ring& r, uint64_t total, uint64_t seed, uint64_t* checksum) {
  const Pattern& pat = Pat();
  Rng rng(seed);
  SpinPolicy spin;
  WaitOptions wo;
  wo.timeout_ns = kWaitTimeoutNs;
  Checksum ck;
  uint64_t pos = 0;
  while (pos < total) {
    uint64_t n = rng.Uniform(1, kMaxChunk);
    if (n > total - pos) n = total - pos;
    const uint8_t* src = pat.At(pos);
    int64_t w;
    switch (rng.Next() % 3) {
      case 0:
        w = r.Write(src, n);
        break;
      case 1: {
        uint64_t a = rng.Uniform(0, n), b = rng.Uniform(a, n);
        struct iovec iov[3] = {{const_cast<uint8_t*>(src), a},
                               {const_cast<uint8_t*>(src + a), b - a},
                               {const_cast<uint8_t*>(src + b), n - b}};
        w = r.Write(iov, 3);
        break;
      }
      default: {
        RingSpan sp;
        w = r.Reserve(n, &sp);
        if (w > 0) {
          std::memcpy(sp.data[0], src, sp.len[0]);
          if (sp.len[1] != 0) std::memcpy(sp.data[1], src + sp.len[0], sp.len[1]);
          uint64_t c = rng.Uniform(1, static_cast<uint64_t>(w));  // partial commit
          if (r.Commit(c) != 0) return __LINE__;
          w = static_cast<int64_t>(c);
        }
        break;
      }
    }
    if (w == -EAGAIN) {
      if (WaitWritable(r, rng.Uniform(1, n), wo, &spin) != 0) return __LINE__;
      continue;
    }
    if (w <= 0) return __LINE__;
    ck.Add(src, static_cast<size_t>(w));
    pos += static_cast<uint64_t>(w);
  }
  r.ShutdownWrite(false);
  *checksum = ck.Value();
  return 0;
}

int Consume(Ring& r, uint64_t total, uint64_t seed, uint64_t* checksum) {
  const Pattern& pat = Pat();
  Rng rng(seed);
  SpinPolicy spin;
  WaitOptions wo;
  wo.timeout_ns = kWaitTimeoutNs;
  Checksum ck;
  std::vector<uint8_t> buf(kMaxChunk + 4096);
  uint64_t pos = 0;
  for (;;) {
    uint64_t n = rng.Uniform(1, kMaxChunk);
    int64_t got;
    switch (rng.Next() % 4) {
      case 0:
        got = r.Read(buf.data(), n);
        break;
      case 1: {  // peek at an offset first, then read with an iovec
        uint64_t off = rng.Uniform(0, 64);
        struct iovec pv = {buf.data(), n};
        int64_t pk = r.Peek(off, &pv, 1);
        if (pk > 0 && std::memcmp(buf.data(), pat.At(pos + off), pk) != 0) return __LINE__;
        uint64_t a = rng.Uniform(0, n);
        struct iovec iov[2] = {{buf.data(), a}, {buf.data() + a, n - a}};
        got = r.Read(iov, 2);
        break;
      }
      default: {
        RingSpan sp;
        got = r.Acquire(n, &sp);
        if (got > 0) {
          uint64_t c = rng.Uniform(1, static_cast<uint64_t>(got));  // partial release
          uint64_t c0 = c < sp.len[0] ? c : sp.len[0];
          std::memcpy(buf.data(), sp.data[0], c0);
          if (c > c0) std::memcpy(buf.data() + c0, sp.data[1], c - c0);
          if (r.Release(c) != 0) return __LINE__;
          got = static_cast<int64_t>(c);
        }
        break;
      }
    }
    if (got == -EAGAIN) {
      if (WaitReadable(r, wo, &spin) != 0) return __LINE__;
      continue;
    }
    if (got == 0) break;  // EOF
    if (got < 0) return __LINE__;
    if (pos + static_cast<uint64_t>(got) > total) return __LINE__;
    if (std::memcmp(buf.data(), pat.At(pos), static_cast<size_t>(got)) != 0) {
      fprintf(stderr, "mismatch in [%llu, +%lld)\n", static_cast<unsigned long long>(pos),
              static_cast<long long>(got));
      return __LINE__;
    }
    ck.Add(buf.data(), static_cast<size_t>(got));
    pos += static_cast<uint64_t>(got);
  }
  if (pos != total) return __LINE__;
  *checksum = ck.Value();
  return 0;
}

Segment MakeSegment() {
  SegmentOptions o;
  o.ring_capacity[0] = o.ring_capacity[1] = kCap;
  Segment s;
  EXPECT_EQ(Segment::Create(o, &s), 0);
  return s;
}

TEST(Stress, TwoThreadsOneGiB) {
  Segment seg = MakeSegment();
  RingStats ps, cs;
  Ring prod = seg.MakeTxRing(Role::kClient, &ps);
  Ring cons = seg.MakeRxRing(Role::kServer, &cs);
  Pat();
  uint64_t pck = 0, cck = 1;
  int prc = -1;
  std::thread t([&] { prc = Produce(prod, kTotal, 1, &pck); });
  int crc = Consume(cons, kTotal, 2, &cck);
  t.join();
  EXPECT_EQ(prc, 0);
  EXPECT_EQ(crc, 0);
  EXPECT_EQ(pck, cck);
  EXPECT_EQ(cs.bytes.load(), kTotal);
  printf("threads: %llu bytes, producer wakes %llu, consumer wakes %llu, spin hits %llu/%llu\n",
         static_cast<unsigned long long>(kTotal),
         static_cast<unsigned long long>(ps.futex_wakes.load()),
         static_cast<unsigned long long>(cs.futex_wakes.load()),
         static_cast<unsigned long long>(cs.spin_hits.load() + ps.spin_hits.load()),
         static_cast<unsigned long long>(cs.spin_hits.load() + ps.spin_hits.load() +
                                         cs.spin_misses.load() + ps.spin_misses.load()));
}

TEST(Stress, TwoProcessesOneGiB) {
  if (testing::kUnderTsan) GTEST_SKIP() << "fork is not supported under TSAN; threads cover it";
  Segment seg = MakeSegment();
  Pat();
  auto* result = static_cast<uint64_t*>(
      mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(result, MAP_FAILED);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    RingStats ps;
    Ring prod = seg.MakeTxRing(Role::kClient, &ps);
    int rc = Produce(prod, kTotal, 3, &result[0]);
    _exit(rc == 0 ? 0 : 1);
  }
  RingStats cs;
  Ring cons = seg.MakeRxRing(Role::kServer, &cs);
  uint64_t cck = 1;
  int crc = Consume(cons, kTotal, 4, &cck);
  EXPECT_EQ(testing::WaitChild(child), 0);
  EXPECT_EQ(crc, 0);
  EXPECT_EQ(result[0], cck);
  munmap(result, 4096);
}

// Several writers share the producer end (threads, and under non-TSAN builds
// also a forked process); each record (header + payload) is written under
// the end's lock, so records never interleave.
struct Record {
  uint32_t writer;
  uint32_t len;
  uint64_t seq;
};

int WriteRecords(const Segment& seg, Ring* prod, uint32_t writer, uint64_t records) {
  ShmMutex lock = seg.ProducerLock(kClientToServer);
  Rng rng(100 + writer);
  WaitOptions wo;
  wo.timeout_ns = kWaitTimeoutNs;
  SpinPolicy spin;
  std::vector<uint8_t> msg(sizeof(Record) + 2048);
  for (uint64_t i = 0; i < records; ++i) {
    Record h{writer, static_cast<uint32_t>(rng.Uniform(0, 2048)), i};
    std::memcpy(msg.data(), &h, sizeof h);
    std::memcpy(msg.data() + sizeof h, Pat().At(writer * 7919 + i), h.len);
    size_t size = sizeof h + h.len;
    for (int attempt = 0;; ++attempt) {
      if (attempt > 1000000) return __LINE__;
      if (lock.Lock(wo) < 0) return __LINE__;
      int64_t free = prod->Writable();
      int64_t w = free >= static_cast<int64_t>(size) ? prod->Write(msg.data(), size) : -EAGAIN;
      lock.Unlock();
      if (w == static_cast<int64_t>(size)) break;
      if (w != -EAGAIN) return __LINE__;
      if (WaitWritable(*prod, size, wo, &spin) != 0) return __LINE__;
    }
  }
  return 0;
}

int ReadExactly(Ring& r, void* buf, size_t n, SpinPolicy* spin) {
  WaitOptions wo;
  wo.timeout_ns = kWaitTimeoutNs;
  size_t done = 0;
  while (done < n) {
    int64_t g = r.Read(static_cast<uint8_t*>(buf) + done, n - done);
    if (g == -EAGAIN) {
      if (WaitReadable(r, wo, spin) != 0) return __LINE__;
      continue;
    }
    if (g <= 0) return done == 0 && g == 0 ? -1 : __LINE__;  // -1: clean EOF
    done += static_cast<size_t>(g);
  }
  return 0;
}

TEST(Stress, SharedWriterEndKeepsRecordsWhole) {
  const uint64_t kRecords = testing::kUnderSanitizer ? 5000 : 100000;
  const bool use_fork = !testing::kUnderTsan;
  Segment seg = MakeSegment();
  Pat();
  RingStats ps, cs;
  Ring prod = seg.MakeTxRing(Role::kClient, &ps);  // shared by the threads (under the lock)
  Ring cons = seg.MakeRxRing(Role::kServer, &cs);
  const uint32_t kWriters = 3;
  pid_t child = -1;
  if (use_fork) {
    child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      Ring mine = seg.MakeTxRing(Role::kClient, nullptr);
      _exit(WriteRecords(seg, &mine, kWriters, kRecords) == 0 ? 0 : 1);
    }
  }
  std::vector<std::thread> ts;
  std::atomic<int> bad{0};
  for (uint32_t w = 0; w < kWriters; ++w)
    ts.emplace_back([&, w] {
      if (WriteRecords(seg, &prod, w, kRecords) != 0) bad = 1;
    });
  const uint32_t writers = kWriters + (use_fork ? 1 : 0);
  std::vector<uint64_t> next(writers, 0);
  SpinPolicy spin;
  std::vector<uint8_t> payload(2048);
  uint64_t total = 0;
  int err = 0;
  while (total < writers * kRecords) {
    Record h;
    if ((err = ReadExactly(cons, &h, sizeof h, &spin)) != 0) break;
    if (h.writer >= writers || h.len > 2048 || h.seq != next[h.writer]) {
      err = __LINE__;
      break;
    }
    if ((err = ReadExactly(cons, payload.data(), h.len, &spin)) != 0) break;
    if (std::memcmp(payload.data(), Pat().At(h.writer * 7919 + h.seq), h.len) != 0) {
      err = __LINE__;
      break;
    }
    ++next[h.writer];
    ++total;
  }
  for (auto& t : ts) t.join();
  if (use_fork) {
    EXPECT_EQ(testing::WaitChild(child), 0);
  }
  EXPECT_EQ(err, 0);
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(total, writers * kRecords);
}

// A hostile peer process scribbles random values over both rings' control
// blocks (indices, states, wait flags, futex words, locks) while this process
// keeps using both ends with short timeouts: every call must return one of
// its documented results, promptly, and nothing may crash.
TEST(Stress, HostilePeerCannotCrashOrHang) {
  if (testing::kUnderTsan) GTEST_SKIP() << "fork under TSAN";
  SegmentOptions o;
  o.ring_capacity[0] = o.ring_capacity[1] = 4096;
  Segment seg;
  ASSERT_EQ(Segment::Create(o, &seg), 0);
  auto* stop = static_cast<std::atomic<int>*>(
      mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(static_cast<void*>(stop), MAP_FAILED);
  stop->store(0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    stop->store(2);  // started
    Rng rng(99);
    auto* base = static_cast<std::byte*>(seg.base());
    const size_t lo = internal::RingControlOffset(0);
    const size_t span = 2 * sizeof(internal::RingControl);
    for (uint64_t i = 0; i < 500'000'000 && stop->load() != 1; ++i) {
      size_t off = lo + rng.Uniform(0, span / 4 - 1) * 4;
      uint32_t v = static_cast<uint32_t>(rng.Next());
      if (rng.Next() % 4 != 0) v &= 1;  // mostly plausible small values
      reinterpret_cast<std::atomic<uint32_t>*>(base + off)->store(v, std::memory_order_relaxed);
      if (i % 8 == 7) usleep(20);  // bursts, so that the rings also work in between
    }
    _exit(0);
  }
  for (int i = 0; i < 10000 && stop->load() != 2; ++i) usleep(1000);  // child running
  RingStats st;
  Ring tx = seg.MakeTxRing(Role::kClient, &st);
  Ring rx = seg.MakeRxRing(Role::kClient, &st);
  Ring peer_rx = seg.MakeRxRing(Role::kServer, &st);  // we also drain "their" side
  ShmMutex lock = seg.ProducerLock(kClientToServer);
  WaitOptions wo;
  wo.timeout_ns = 1'000'000;
  wo.liveness_interval_ns = 1'000'000;
  SpinPolicy spin(2'000, 2'000, 0);
  std::vector<uint8_t> buf(8192, 0x5a);
  Rng rng(7);
  int bad = 0;
  const int kOps = testing::kUnderSanitizer ? 5000 : 100000;
  for (int i = 0; i < kOps && bad == 0; ++i) {
    size_t n = rng.Uniform(0, 6000);
    int64_t r;
    switch (rng.Next() % 6) {
      case 0:
        r = tx.Write(buf.data(), n);
        if (!(r >= 0 || r == -EAGAIN || r == -EPIPE || r == -ECONNRESET || r == -EIO))
          bad = __LINE__;
        if (r > static_cast<int64_t>(n)) bad = __LINE__;
        break;
      case 1:
        r = rx.Read(buf.data(), n);
        if (!(r >= 0 || r == -EAGAIN || r == -ECONNRESET || r == -EIO)) bad = __LINE__;
        if (r > static_cast<int64_t>(n)) bad = __LINE__;
        break;
      case 2:
        r = peer_rx.Read(buf.data(), n);
        if (r > static_cast<int64_t>(n)) bad = __LINE__;
        break;
      case 3:
        r = WaitReadable(rx, wo, &spin);
        if (!(r == 0 || r == -ETIMEDOUT)) bad = __LINE__;
        break;
      case 4:
        r = WaitWritable(tx, n, wo, &spin);
        if (!(r == 0 || r == -ETIMEDOUT)) bad = __LINE__;
        break;
      default:
        r = lock.Lock(wo);
        if (r >= 0) {
          lock.Unlock();
        } else if (r != -ETIMEDOUT) {
          bad = __LINE__;
        }
        break;
    }
  }
  stop->store(1);
  EXPECT_EQ(testing::WaitChild(child), 0);
  EXPECT_EQ(bad, 0);
  EXPECT_GT(st.corruptions.load(), 0u);  // the scribbles were seen
  printf("hostile peer: %llu corruptions detected, %llu bytes moved\n",
         static_cast<unsigned long long>(st.corruptions.load()),
         static_cast<unsigned long long>(st.bytes.load()));
  munmap(stop, 4096);
}

// The real hand-over: the segment fd travels over a Unix socket with
// SCM_RIGHTS to an unrelated mapping in another process, which validates and
// attaches it, binds its incoming ring to its NUMA node, and streams back.
int SendFd(int sock, int fd) {
  char byte = 'S';
  struct iovec iov = {&byte, 1};
  alignas(struct cmsghdr) char ctl[CMSG_SPACE(sizeof(int))] = {};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl;
  msg.msg_controllen = sizeof ctl;
  struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  return sendmsg(sock, &msg, 0) == 1 ? 0 : -errno;
}

int RecvFd(int sock) {
  char byte;
  struct iovec iov = {&byte, 1};
  alignas(struct cmsghdr) char ctl[CMSG_SPACE(sizeof(int))] = {};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl;
  msg.msg_controllen = sizeof ctl;
  if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1) return -1;
  struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
  if (c == nullptr || c->cmsg_type != SCM_RIGHTS) return -1;
  int fd;
  std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
  return fd;
}

TEST(Stress, SegmentPassedWithScmRights) {
  if (testing::kUnderTsan) GTEST_SKIP() << "fork under TSAN";
  const uint64_t kBytes = testing::kUnderSanitizer ? (16ull << 20) : (256ull << 20);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Pat();
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // the accepting side: receives the fd, attaches, sends data back
    close(sv[0]);
    int fd = RecvFd(sv[1]);
    if (fd < 0) _exit(10);
    Segment seg;
    if (Segment::Attach(fd, &seg) != 0) _exit(11);
    (void)seg.BindIncomingRing(Role::kServer);
    Ring tx = seg.MakeTxRing(Role::kServer, nullptr);
    uint64_t ck = 0;
    int rc = Produce(tx, kBytes, 5, &ck);
    if (rc != 0) _exit(12);
    if (write(sv[1], &ck, sizeof ck) != sizeof ck) _exit(13);
    _exit(0);
  }
  close(sv[1]);
  SegmentOptions o;
  o.ring_capacity[0] = o.ring_capacity[1] = kCap;
  Segment seg;
  ASSERT_EQ(Segment::Create(o, &seg), 0);
  (void)seg.BindIncomingRing(Role::kClient);
  ASSERT_EQ(SendFd(sv[0], seg.fd()), 0);
  RingStats cs;
  Ring rx = seg.MakeRxRing(Role::kClient, &cs);
  uint64_t cck = 1, pck = 0;
  EXPECT_EQ(Consume(rx, kBytes, 6, &cck), 0);
  EXPECT_EQ(read(sv[0], &pck, sizeof pck), static_cast<ssize_t>(sizeof pck));
  EXPECT_EQ(pck, cck);
  EXPECT_EQ(testing::WaitChild(child), 0);
  close(sv[0]);
}

}  // namespace
}  // namespace doorway::transport

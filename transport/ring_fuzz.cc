// libFuzzer target: a hostile peer scribbling on the shared state.
//
// Mode 0 (validation): a valid segment image in a heap buffer (so that ASan
// sees its exact bounds) gets header/meta bytes overwritten from the input,
// then ValidateSegmentHeader runs; if it accepts, Rings are built from the
// validated layout and filled/drained completely, which would touch memory
// outside the buffer if validation let a bad geometry through.
//
// Mode 1 (ring operations): a ring whose control block and data area are
// separate heap allocations runs a sequence of operations decoded from the
// input (write, read, peek, reserve/commit, acquire/release, shutdowns,
// readiness checks, non-blocking waits), interleaved with arbitrary writes to
// the control block (indices, states, waiter counts, futex words): the peer's
// view of the world. Results must stay within their documented ranges and no
// access may leave the allocations.
#include <sys/uio.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "transport/internal/layout.h"
#include "transport/ring.h"
#include "transport/segment.h"
#include "transport/wait.h"

using namespace doorway::transport;

namespace {

#define FUZZ_CHECK(c)           \
  do {                          \
    if (!(c)) __builtin_trap(); \
  } while (0)

struct Input {
  const uint8_t* p;
  size_t n;
  bool empty() const { return n == 0; }
  uint64_t Take(int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes && n > 0; ++i, ++p, --n) v |= uint64_t{*p} << (8 * i);
    return v;
  }
};

constexpr uint64_t kCap = 4096;

void FuzzValidation(Input in) {
  uint64_t caps[2] = {kCap << in.Take(1) % 3, kCap};
  SegmentLayout l;
  if (ComputeLayout(caps, 4096, 4096, &l) != 0) return;
  size_t size = l.segment_size;
  auto* buf = static_cast<std::byte*>(::operator new (size, std::align_val_t{4096}));
  std::memset(buf, 0, size);
  InitializeSegment(buf, l, PageKind::kSmall);
  // Up to 8 scribbles on the first 1 KiB (header and ring metadata), plus a
  // possibly lying "file size".
  int writes = static_cast<int>(in.Take(1) % 9);
  for (int i = 0; i < writes && !in.empty(); ++i) {
    uint64_t off = in.Take(2) % 1024;
    int width = 1 << (in.Take(1) % 4);  // 1, 2, 4, 8 bytes
    uint64_t v = in.Take(width);
    if (off + width <= size) std::memcpy(buf + off, &v, width);
  }
  uint64_t claimed = size;
  if (in.Take(1) & 1) claimed = in.Take(4) % (size + 1);
  SegmentLayout out;
  if (ValidateSegmentHeader(buf, claimed, &out) == 0) {
    FUZZ_CHECK(out.segment_size == claimed && claimed <= size);
    std::vector<uint8_t> tmp(out.ring_capacity[0] + out.ring_capacity[1]);
    for (uint32_t r = 0; r < 2; ++r) {
      FUZZ_CHECK(out.ring_data_offset[r] + out.ring_capacity[r] <= claimed);
      auto* ctrl = &reinterpret_cast<internal::SegmentPrefix*>(buf)->ring[r];
      // Fresh indices, so that the full fill/drain below is well defined.
      ctrl->prod.index.store(0);
      ctrl->prod_lock.index.store(0);
      ctrl->cons.index.store(0);
      ctrl->state.writer.store(0);
      ctrl->state.reader.store(0);
      Ring ring(ctrl, buf + out.ring_data_offset[r], out.ring_capacity[r], nullptr);
      FUZZ_CHECK(ring.Write(tmp.data(), tmp.size()) == static_cast<int64_t>(ring.capacity()));
      FUZZ_CHECK(ring.Read(tmp.data(), tmp.size()) == static_cast<int64_t>(ring.capacity()));
    }
  }
  ::operator delete (buf, std::align_val_t{4096});
}

void FuzzRing(Input in) {
  auto* ctrl = new internal::RingControl();
  std::memset(static_cast<void*>(ctrl), 0, sizeof *ctrl);
  uint64_t cap = 64 << (in.Take(1) % 7);  // 64 .. 4096
  auto* data = new std::byte[cap];
  RingStats stats;
  Ring prod(ctrl, data, cap, &stats);
  Ring cons(ctrl, data, cap, &stats);
  std::vector<uint8_t> src(2 * cap + 16, 0xab), dst(2 * cap + 16);
  WaitOptions nb;
  nb.timeout_ns = 0;
  for (int step = 0; step < 256 && !in.empty(); ++step) {
    uint8_t op = static_cast<uint8_t>(in.Take(1));
    uint64_t n = in.Take(2) % (2 * cap + 16);
    switch (op % 12) {
      case 0: {
        int64_t r = prod.Write(src.data(), n);
        FUZZ_CHECK(r <= static_cast<int64_t>(n) && r <= static_cast<int64_t>(cap));
        FUZZ_CHECK(r >= 0 || r == -EAGAIN || r == -EPIPE || r == -ECONNRESET || r == -EIO);
        break;
      }
      case 1: {
        uint64_t a = n / 2;
        struct iovec iov[2] = {{dst.data(), a}, {dst.data() + a, n - a}};
        int64_t r = cons.Read(iov, 2);
        FUZZ_CHECK(r <= static_cast<int64_t>(n));
        FUZZ_CHECK(r >= 0 || r == -EAGAIN || r == -ECONNRESET || r == -EIO);
        break;
      }
      case 2: {
        struct iovec iov = {dst.data(), n};
        int64_t r = cons.Peek(in.Take(2), &iov, 1);
        FUZZ_CHECK(r <= static_cast<int64_t>(n));
        break;
      }
      case 3: {
        RingSpan s;
        int64_t r = prod.Reserve(n, &s);
        if (r > 0) {
          FUZZ_CHECK(s.size() == static_cast<size_t>(r) && s.len[0] + s.len[1] <= cap);
          std::memset(s.data[0], 0x11, s.len[0]);
          if (s.len[1]) std::memset(s.data[1], 0x22, s.len[1]);
          FUZZ_CHECK(prod.Commit(in.Take(2) % (r + 1)) == 0 || true);
        }
        FUZZ_CHECK(prod.Commit(cap + 1) == -EINVAL);
        break;
      }
      case 4: {
        RingSpan s;
        int64_t r = cons.Acquire(n, &s);
        if (r > 0) {
          FUZZ_CHECK(s.size() == static_cast<size_t>(r) && s.len[0] + s.len[1] <= cap);
          volatile uint8_t sink = 0;
          for (size_t i = 0; i < s.len[0]; ++i) sink = sink + static_cast<uint8_t>(s.data[0][i]);
          for (size_t i = 0; i < s.len[1]; ++i) sink = sink + static_cast<uint8_t>(s.data[1][i]);
          cons.Release(in.Take(2) % (r + 1));
        }
        FUZZ_CHECK(cons.Release(cap + 1) == -EINVAL);
        break;
      }
      case 5:
      case 6: {  // the peer scribbles on the control block
        uint64_t off = in.Take(2) % sizeof(internal::RingControl);
        int width = 1 << (in.Take(1) % 4);
        uint64_t v = in.Take(width);
        if (off + width <= sizeof(internal::RingControl))
          std::memcpy(reinterpret_cast<std::byte*>(ctrl) + off, &v, width);
        break;
      }
      case 7:
        (op & 0x80) ? prod.ShutdownWrite(op & 0x40) : cons.ShutdownRead(op & 0x40);
        break;
      case 8:
        (void)prod.WriteReady(n);
        (void)cons.ReadReady();
        (void)prod.Writable();
        (void)cons.Readable();
        (void)cons.ArmReadDoorbell();
        (void)prod.ArmWriteDoorbell(n);
        (void)prod.TakeDoorbell();
        (void)cons.TakeDoorbell();
        break;
      case 9:
        FUZZ_CHECK(WaitReadable(cons, nb, nullptr) != -ETIMEDOUT);
        FUZZ_CHECK(WaitWritable(prod, n, nb, nullptr) != -ETIMEDOUT);
        break;
      case 10:
        (op & 0x80) ? cons.MarkWriterGone() : prod.MarkReaderGone();
        break;
      case 11: {
        uint64_t a = n / 3;
        struct iovec iov[3] = {{src.data(), a}, {src.data() + a, 0}, {src.data() + a, n - a}};
        int64_t r = prod.Write(iov, 3);
        FUZZ_CHECK(r <= static_cast<int64_t>(n));
        break;
      }
    }
  }
  delete[] data;
  delete ctrl;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  Input in{data + 1, size - 1};
  if (data[0] & 1) {
    FuzzValidation(in);
  } else {
    FuzzRing(in);
  }
  return 0;
}

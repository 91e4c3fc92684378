// ring_bench: the transport's performance against the physical floor, two
// processes pinned to different CPUs, everything measured in one run by this
// program. Not a test (it asserts nothing); results go to docs/transport.md.
//
//   bazel run -c opt //transport:ring_bench            # full run
//   bazel run -c opt //transport:ring_bench -- --quick # smaller counts, one round
//   bazel run -c opt //transport:ring_bench -- --rounds=9
//   bazel run -c opt //transport:ring_bench -- --only=pingpong,pipelined
//
// Every wait loop is bounded in time (a partner that died makes the bench
// abort, not spin), and children die with the parent (PR_SET_PDEATHSIG).
#include <arpa/inet.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "transport/fence.h"
#include "transport/internal/copy.h"
#include "transport/internal/futex.h"
#include "transport/segment.h"
#include "transport/wait.h"

namespace dt = doorway::transport;
using dt::internal::CpuRelax;
using dt::internal::MonotonicNs;

namespace {

bool g_quick = false;
int g_rounds = 5;
std::string g_only;  // comma-separated sections to run; empty: all

bool Section(const char* name) {
  if (g_only.empty()) return true;
  std::string list = "," + g_only + ",";
  return list.find(std::string(",") + name + ",") != std::string::npos;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
double Min(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }
double Max(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }
int g_cpu_parent = 0, g_cpu_child = 1;
constexpr int64_t kStallNs = 20'000'000'000;  // a partner silent this long = failure

[[noreturn]] void Die(const char* what) {
  fprintf(stderr, "ring_bench: %s (errno %d)\n", what, errno);
  _exit(2);
}

bool Pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  return sched_setaffinity(0, sizeof s, &s) == 0;
}

// Shared control page for the start barrier and floor measurements.
struct alignas(64) Line {
  std::atomic<uint64_t> v{0};
  char pad[56];
};
struct Shared {
  Line start;  // child -> parent: ready
  Line go;     // parent -> child: go
  Line ping;   // floor: handoff line
  Line pong;
  Line fa, fb;  // futex floor words (low 32 bits used)
};

Shared* g_sh = nullptr;
// Of the last pipelined run (rings or floor): how often each side found
// nothing to do and waited (a side that waits often is the faster one).
double g_reader_waits_per_msg = 0;
double g_writer_waits_per_msg = 0;
// How far the producer was ahead of the consumer, in messages, median over
// the batch marks (read at each mark by the consumer; -1: not measured).
double g_lag_msgs = -1;

// Spin until pred() with a time bound.
template <typename P>
void SpinUntil(P pred) {
  int64_t deadline = 0;
  for (uint64_t i = 1; !pred(); ++i) {
    CpuRelax();
    if ((i & 0xffff) == 0) {
      int64_t now = MonotonicNs();
      if (deadline == 0) deadline = now + kStallNs;
      if (now > deadline) Die("partner stalled");
    }
  }
}

// Runs child_fn in a forked child pinned to g_cpu_child and parent_fn here;
// returns parent_fn's result (seconds or ns, as the caller defines). The
// parent starts its clock after both sides are ready.
double RunPair(const std::function<void()>& child_fn, const std::function<double()>& parent_fn) {
  g_sh->start.v.store(0);
  g_sh->go.v.store(0);
  pid_t pid = fork();
  if (pid < 0) Die("fork");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (!Pin(g_cpu_child)) Die("pin child");
    g_sh->start.v.store(1);
    SpinUntil([] { return g_sh->go.v.load() == 1; });
    child_fn();
    _exit(0);
  }
  SpinUntil([] { return g_sh->start.v.load() == 1; });
  g_sh->go.v.store(1);
  double r = parent_fn();
  int st = 0;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) Die("child failed");
  return r;
}

// Batches of a timed loop. On the shared development VM other programs
// preempt the pinned processes for milliseconds at a time, and a round trip
// that spans such a gap measures the scheduler, not the transport. The spin
// ping-pongs and the pipelined stream therefore also time batches of
// operations (~0.1-5 ms each): the median batch is the figure of the
// uninterrupted stretches, printed next to the whole-run mean.
struct Batches {
  std::vector<double> ns_per_op;
  int64_t last = 0;
  uint64_t ops_at_last = 0;
  void Start() {
    ns_per_op.clear();
    last = MonotonicNs();
    ops_at_last = 0;
  }
  void Mark(uint64_t ops_done) {
    int64_t now = MonotonicNs();
    ns_per_op.push_back(double(now - last) / double(ops_done - ops_at_last));
    last = now;
    ops_at_last = ops_done;
  }
};
double g_last_mean = 0;  // whole-run mean of the last timed loop (same unit as its result)
constexpr uint64_t kRttBatch = 1000;

// ---------------------------------------------------------------- floors

double FloorHandoffNs(uint64_t n) {
  return RunPair(
      [n] {
        for (uint64_t i = 0; i < n; ++i) {
          SpinUntil([i] { return g_sh->ping.v.load(std::memory_order_acquire) == i + 1; });
          g_sh->pong.v.store(i + 1, std::memory_order_release);
        }
      },
      [n] {
        g_sh->ping.v.store(0);
        g_sh->pong.v.store(0);
        Batches b;
        int64_t t0 = MonotonicNs();
        b.Start();
        for (uint64_t i = 0; i < n; ++i) {
          g_sh->ping.v.store(i + 1, std::memory_order_release);
          SpinUntil([i] { return g_sh->pong.v.load(std::memory_order_acquire) == i + 1; });
          if ((i + 1) % kRttBatch == 0) b.Mark(i + 1);
        }
        g_last_mean = double(MonotonicNs() - t0) / n;
        return b.ns_per_op.empty() ? g_last_mean : Median(b.ns_per_op);
      });
}

std::atomic<uint32_t>* Word(Line& l) { return reinterpret_cast<std::atomic<uint32_t>*>(&l.v); }

// Wait (futex only, no spinning) until *w == v.
void FutexAwait(std::atomic<uint32_t>* w, uint32_t v) {
  int64_t deadline = MonotonicNs() + kStallNs;
  for (;;) {
    uint32_t cur = w->load(std::memory_order_acquire);
    if (cur == v) return;
    dt::internal::FutexWait(w, cur, 1'000'000'000);
    if (MonotonicNs() > deadline) Die("futex partner stalled");
  }
}

double FloorFutexNs(uint64_t n) {
  g_sh->fa.v.store(0);
  g_sh->fb.v.store(0);
  return RunPair(
      [n] {
        for (uint32_t i = 0; i < n; ++i) {
          FutexAwait(Word(g_sh->fa), i + 1);
          Word(g_sh->fb)->store(i + 1, std::memory_order_release);
          dt::internal::FutexWake(Word(g_sh->fb), 1);
        }
      },
      [n] {
        int64_t t0 = MonotonicNs();
        for (uint32_t i = 0; i < n; ++i) {
          Word(g_sh->fa)->store(i + 1, std::memory_order_release);
          dt::internal::FutexWake(Word(g_sh->fa), 1);
          FutexAwait(Word(g_sh->fb), i + 1);
        }
        return double(MonotonicNs() - t0) / n;
      });
}

// Single-core copy bandwidth of `chunk`-byte copies between page-aligned
// buffers, the destination `skew` bytes further into its page than the
// source. glibc's memcpy (rep movsb here) is the floor the targets refer to;
// the ring's own CopyBytes is shown too (see internal/copy.h for why).
double CopyGBps(bool ring_copy, size_t chunk, uint64_t total, size_t skew) {
  char* src = static_cast<char*>(aligned_alloc(4096, chunk + 4096));
  char* dst = static_cast<char*>(aligned_alloc(4096, chunk + 4096));
  std::memset(src, 1, chunk + 4096);
  std::memset(dst, 2, chunk + 4096);
  uint64_t reps = total / chunk;
  int64_t t0 = MonotonicNs();
  for (uint64_t i = 0; i < reps; ++i) {
    if (ring_copy) {
      dt::internal::CopyBytes(dst + skew, src, chunk);
    } else {
      std::memcpy(dst + skew, src, chunk);
    }
    asm volatile("" : : "r"(dst) : "memory");
  }
  double r = double(reps * chunk) / (MonotonicNs() - t0);
  free(src);
  free(dst);
  return r;
}

// ---------------------------------------------------------------- rings

dt::Segment NewSegment(uint64_t cap) {
  dt::SegmentOptions o;
  o.ring_capacity[0] = o.ring_capacity[1] = cap;
  dt::Segment s;
  if (dt::Segment::Create(o, &s) != 0) Die("segment");
  return s;
}

dt::WaitOptions Bounded() {
  dt::WaitOptions w;
  w.timeout_ns = kStallNs;
  return w;
}

void WriteAll(dt::Ring& r, const void* p, size_t n, dt::SpinPolicy* spin) {
  size_t done = 0;
  while (done < n) {
    int64_t w = r.Write(static_cast<const char*>(p) + done, n - done);
    if (w == -EAGAIN) {
      if (dt::WaitWritable(r, n - done, Bounded(), spin) != 0) Die("wait writable");
      continue;
    }
    if (w <= 0) Die("ring write");
    done += w;
  }
}

void ReadAll(dt::Ring& r, void* p, size_t n, dt::SpinPolicy* spin) {
  size_t done = 0;
  while (done < n) {
    int64_t g = r.Read(static_cast<char*>(p) + done, n - done);
    if (g == -EAGAIN) {
      if (dt::WaitReadable(r, Bounded(), spin) != 0) Die("wait readable");
      continue;
    }
    if (g <= 0) Die("ring read");
    done += g;
  }
}

struct PingPong {
  double rtt_ns;
  uint64_t wakes;
};

PingPong RingPingPongNs(uint64_t n, bool spin_enabled) {
  dt::Segment seg = NewSegment(dt::kDefaultRingCapacity);
  auto* wakes = reinterpret_cast<std::atomic<uint64_t>*>(&g_sh->fa.v);
  wakes->store(0);
  double r = RunPair(
      [&seg, n, spin_enabled] {
        dt::RingStats st;
        dt::Ring rx = seg.MakeRxRing(dt::Role::kServer, &st);
        dt::Ring tx = seg.MakeTxRing(dt::Role::kServer, &st);
        dt::SpinPolicy spin = spin_enabled ? dt::SpinPolicy() : dt::SpinPolicy::Disabled();
        char msg[64];
        for (uint64_t i = 0; i < n; ++i) {
          ReadAll(rx, msg, sizeof msg, &spin);
          WriteAll(tx, msg, sizeof msg, &spin);
        }
      },
      [&seg, n, spin_enabled, wakes] {
        dt::RingStats st;
        dt::Ring tx = seg.MakeTxRing(dt::Role::kClient, &st);
        dt::Ring rx = seg.MakeRxRing(dt::Role::kClient, &st);
        dt::SpinPolicy spin = spin_enabled ? dt::SpinPolicy() : dt::SpinPolicy::Disabled();
        char msg[64] = {1};
        Batches b;
        int64_t t0 = MonotonicNs();
        b.Start();
        for (uint64_t i = 0; i < n; ++i) {
          WriteAll(tx, msg, sizeof msg, &spin);
          ReadAll(rx, msg, sizeof msg, &spin);
          if ((i + 1) % kRttBatch == 0) b.Mark(i + 1);
        }
        wakes->store(st.futex_wakes.load());
        g_last_mean = double(MonotonicNs() - t0) / n;
        return b.ns_per_op.empty() ? g_last_mean : Median(b.ns_per_op);
      });
  return {r, wakes->load()};
}

// The floor and the rings in alternating batches of kRttBatch round trips
// in one process pair, so that each rings batch has a floor batch measured
// just before it. This VM moves its vCPUs between placements whose floors
// differ 2-8x within seconds; measured one after the other (above), floor
// and rings may come from different placements and their ratio means
// little. Returns the median of the per-pair ratios; *floor_ns and
// *ring_ns get the medians of the batches.
double InterleavedRatio(uint64_t batches, double* floor_ns, double* ring_ns) {
  dt::Segment seg = NewSegment(dt::kDefaultRingCapacity);
  auto* out =
      reinterpret_cast<double*>(mmap(nullptr, 2 * batches * sizeof(double), PROT_READ | PROT_WRITE,
                                     MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (out == MAP_FAILED) return 0;
  RunPair(
      [&seg, batches] {
        dt::RingStats st;
        dt::Ring rx = seg.MakeRxRing(dt::Role::kServer, &st);
        dt::Ring tx = seg.MakeTxRing(dt::Role::kServer, &st);
        dt::SpinPolicy spin;
        char msg[64];
        uint64_t seq = 0;
        for (uint64_t b = 0; b < batches; ++b) {
          for (uint64_t i = 0; i < kRttBatch; ++i) {
            ++seq;
            SpinUntil([seq] { return g_sh->ping.v.load(std::memory_order_acquire) == seq; });
            g_sh->pong.v.store(seq, std::memory_order_release);
          }
          for (uint64_t i = 0; i < kRttBatch; ++i) {
            ReadAll(rx, msg, sizeof msg, &spin);
            WriteAll(tx, msg, sizeof msg, &spin);
          }
        }
      },
      [&seg, batches, out] {
        g_sh->ping.v.store(0);
        g_sh->pong.v.store(0);
        dt::RingStats st;
        dt::Ring tx = seg.MakeTxRing(dt::Role::kClient, &st);
        dt::Ring rx = seg.MakeRxRing(dt::Role::kClient, &st);
        dt::SpinPolicy spin;
        char msg[64] = {1};
        uint64_t seq = 0;
        for (uint64_t b = 0; b < batches; ++b) {
          int64_t t0 = MonotonicNs();
          for (uint64_t i = 0; i < kRttBatch; ++i) {
            ++seq;
            g_sh->ping.v.store(seq, std::memory_order_release);
            SpinUntil([seq] { return g_sh->pong.v.load(std::memory_order_acquire) == seq; });
          }
          int64_t t1 = MonotonicNs();
          for (uint64_t i = 0; i < kRttBatch; ++i) {
            WriteAll(tx, msg, sizeof msg, &spin);
            ReadAll(rx, msg, sizeof msg, &spin);
          }
          int64_t t2 = MonotonicNs();
          out[2 * b] = double(t1 - t0) / kRttBatch;
          out[2 * b + 1] = double(t2 - t1) / kRttBatch;
        }
        return 0.0;
      });
  std::vector<double> fl, rg, ratio;
  for (uint64_t b = 0; b < batches; ++b) {
    if (out[2 * b] <= 0) continue;
    fl.push_back(out[2 * b]);
    rg.push_back(out[2 * b + 1]);
    ratio.push_back(out[2 * b + 1] / out[2 * b]);
  }
  munmap(out, 2 * batches * sizeof(double));
  if (ratio.empty()) return 0;
  *floor_ns = Median(fl);
  *ring_ns = Median(rg);
  return Median(ratio);
}

double RingStreamGBps(uint64_t cap, size_t chunk, uint64_t total) {
  dt::Segment seg = NewSegment(cap);
  return RunPair(
      [&seg, chunk, total] {
        dt::RingStats st;
        dt::Ring tx = seg.MakeTxRing(dt::Role::kServer, &st);
        dt::SpinPolicy spin;
        char* buf = static_cast<char*>(aligned_alloc(4096, chunk));
        std::memset(buf, 7, chunk);
        for (uint64_t sent = 0; sent < total; sent += chunk) WriteAll(tx, buf, chunk, &spin);
        free(buf);
      },
      [&seg, chunk, total] {
        dt::RingStats st;
        dt::Ring rx = seg.MakeRxRing(dt::Role::kClient, &st);
        dt::SpinPolicy spin;
        char* buf = static_cast<char*>(aligned_alloc(4096, chunk));
        std::memset(buf, 0, chunk);
        int64_t t0 = MonotonicNs();
        uint64_t got = 0;
        while (got < total) {
          int64_t g = rx.Read(buf, chunk);
          if (g == -EAGAIN) {
            if (dt::WaitReadable(rx, Bounded(), &spin) != 0) Die("stream wait");
            continue;
          }
          if (g <= 0) Die("stream read");
          got += g;
        }
        double r = double(total) / (MonotonicNs() - t0);
        free(buf);
        return r;
      });
}

// The pipelined floor: the physical best for a stream of 64 B messages, one
// cache line per message, producer streaming and consumer following. Each
// 64 B slot carries its message's sequence number in the same line (the
// payload is the other 56 bytes), so the consumer learns that a slot is
// full from the slot itself: no index line moves per message, only the
// message's own line. The buffer has the rings' size (1 MiB, wrapping) and
// is the data area of a segment like theirs (same page kind and NUMA
// placement). Back-pressure: the consumer stores its position in a line of
// its own every kFloorPublishEvery slots (16 KiB), and the producer loads it
// only when its cached copy says the buffer is full; that line moves at most
// twice per 256 messages. Timed as RingPipelinedMps: the consumer (the
// measuring process) marks 10 000-message batches and the whole run.
//
// The other two kinds add the rings' index protocol back, step by step
// (diagnostics, --only=pipelined-ladder): kTailLine publishes a producer
// index in a line of its own after every message, which the consumer caches
// and reloads only when it has caught up with its copy (as the rings'
// consumer does with the tail); kTailAndHead also has the consumer store
// its position after every message (as the rings' head). Neither has the
// rings' state, wait-line or statistics accesses.
enum class FloorKind { kInLine, kTailLine, kTailAndHead };
struct alignas(64) FloorSlot {
  std::atomic<uint64_t> seq;  // message index + 1; 0: never written
  char payload[56];
};
static_assert(sizeof(FloorSlot) == 64);
constexpr uint64_t kFloorPublishEvery = 256;
constexpr uint64_t kPipelinedBatch = 10'000;

template <FloorKind kKind>
double FloorPipelinedMps(uint64_t n) {
  dt::Segment seg = NewSegment(dt::kDefaultRingCapacity);
  const uint32_t ring = dt::TxRingIndex(dt::Role::kServer);
  const uint64_t slots = seg.layout().ring_capacity[ring] / sizeof(FloorSlot);
  auto* slot = reinterpret_cast<FloorSlot*>(static_cast<char*>(seg.base()) +
                                            seg.layout().ring_data_offset[ring]);
  std::atomic<uint64_t>& consumed = g_sh->ping.v;
  std::atomic<uint64_t>& produced = g_sh->pong.v;  // kTailLine, kTailAndHead only
  consumed.store(0);
  produced.store(0);
  g_sh->fb.v.store(0);
  double r = RunPair(
      [slot, slots, n, &consumed, &produced] {
        char m[56] = {3};
        uint64_t head = 0;  // the consumer's position as last seen
        uint64_t waits = 0;
        for (uint64_t i = 0; i < n; ++i) {
          if (i - head >= slots) {
            // Acquire pairs with the consumer's release: its copies out of
            // the slots before `head` are done.
            head = consumed.load(std::memory_order_acquire);
            if (i - head >= slots) {
              ++waits;
              SpinUntil([&] {
                head = consumed.load(std::memory_order_acquire);
                return i - head < slots;
              });
            }
          }
          FloorSlot& s = slot[i & (slots - 1)];
          std::memcpy(s.payload, m, sizeof m);
          if constexpr (kKind == FloorKind::kInLine) {
            s.seq.store(i + 1, std::memory_order_release);  // pairs with the acquire below
          } else {
            s.seq.store(i + 1, std::memory_order_relaxed);  // same bytes in the line
            produced.store(i + 1, std::memory_order_release);
          }
        }
        g_sh->fb.v.store(waits);
      },
      [slot, slots, n, &consumed, &produced] {
        char out[64];
        uint64_t waits = 0, tail = 0;
        std::vector<double> lag;
        Batches b;
        int64_t t0 = MonotonicNs();
        b.Start();
        for (uint64_t i = 0; i < n; ++i) {
          FloorSlot& s = slot[i & (slots - 1)];
          uint64_t seq;
          if constexpr (kKind == FloorKind::kInLine) {
            seq = s.seq.load(std::memory_order_acquire);
            if (seq != i + 1) {
              ++waits;
              SpinUntil([&] { return (seq = s.seq.load(std::memory_order_acquire)) == i + 1; });
            }
          } else {
            if (i >= tail) {
              tail = produced.load(std::memory_order_acquire);
              if (i >= tail) {
                ++waits;
                SpinUntil([&] { return i < (tail = produced.load(std::memory_order_acquire)); });
              }
            }
            seq = s.seq.load(std::memory_order_relaxed);
          }
          std::memcpy(out, &seq, sizeof seq);
          std::memcpy(out + 8, s.payload, sizeof s.payload);
          asm volatile("" : : "r"(out) : "memory");  // keep the copy
          if (kKind == FloorKind::kTailAndHead || (i + 1) % kFloorPublishEvery == 0) {
            consumed.store(i + 1, std::memory_order_release);
          }
          if ((i + 1) % kPipelinedBatch == 0) {
            b.Mark(i + 1);
            if constexpr (kKind != FloorKind::kInLine) {
              lag.push_back(double(produced.load(std::memory_order_relaxed) - (i + 1)));
            }
          }
        }
        g_last_mean = double(n) / (MonotonicNs() - t0) * 1e3;  // M msg/s
        g_reader_waits_per_msg = double(waits) / n;
        g_lag_msgs = lag.empty() ? -1 : Median(lag);
        return b.ns_per_op.empty() ? g_last_mean : 1e3 / Median(b.ns_per_op);
      });
  g_writer_waits_per_msg = double(g_sh->fb.v.load()) / n;
  return r;
}

double RingPipelinedMps(uint64_t n, size_t msg, bool batch_reader) {
  dt::Segment seg = NewSegment(dt::kDefaultRingCapacity);
  g_sh->fb.v.store(0);
  double r = RunPair(
      [&seg, n, msg] {
        dt::RingStats st;
        dt::Ring tx = seg.MakeTxRing(dt::Role::kServer, &st);
        dt::SpinPolicy spin;
        char m[64] = {3};
        for (uint64_t i = 0; i < n; ++i) WriteAll(tx, m, msg, &spin);
        g_sh->fb.v.store(st.spin_hits.load() + st.spin_misses.load());
      },
      [&seg, n, msg, batch_reader] {
        dt::RingStats st;
        dt::Ring rx = seg.MakeRxRing(dt::Role::kClient, &st);
        dt::SpinPolicy spin;
        std::vector<char> buf(batch_reader ? 64 << 10 : msg);
        uint64_t total = n * msg, got = 0;
        const uint64_t batch_bytes = kPipelinedBatch * msg;
        uint64_t next_mark = batch_bytes;
        Batches b;
        std::vector<double> lag;
        int64_t t0 = MonotonicNs();
        b.Start();
        while (got < total) {
          size_t want = batch_reader ? buf.size() : msg;
          if (want > total - got) want = total - got;
          int64_t g = rx.Read(buf.data(), want);
          if (g == -EAGAIN) {
            if (dt::WaitReadable(rx, Bounded(), &spin) != 0) Die("pipelined wait");
            continue;
          }
          if (g <= 0) Die("pipelined read");
          got += g;
          if (got >= next_mark) {
            b.Mark(got / msg);
            next_mark += batch_bytes;
            lag.push_back(double(rx.control()->prod.index.load(std::memory_order_relaxed) - got) /
                          double(msg));
          }
        }
        g_last_mean = double(n) / (MonotonicNs() - t0) * 1e3;  // M msg/s
        g_reader_waits_per_msg = double(st.spin_hits.load() + st.spin_misses.load()) / n;
        g_lag_msgs = lag.empty() ? -1 : Median(lag);
        return 1e3 / Median(b.ns_per_op);
      });
  g_writer_waits_per_msg = double(g_sh->fb.v.load()) / n;
  return r;
}

// One process writes and reads 64 B messages through a ring in turn: no
// second core, no line moving, only the calls' own instructions (and L1
// hits). Half of its time per message is what each side of the pipelined
// run spends if the work splits evenly, which bounds the pipelined rate.
double RingOneProcessMps(uint64_t n) {
  dt::Segment seg = NewSegment(dt::kDefaultRingCapacity);
  dt::RingStats st;
  dt::Ring tx = seg.MakeTxRing(dt::Role::kServer, &st);
  dt::Ring rx = seg.MakeRxRing(dt::Role::kClient, &st);
  dt::SpinPolicy spin;
  char m[64] = {3};
  int64_t t0 = MonotonicNs();
  for (uint64_t i = 0; i < n; ++i) {
    WriteAll(tx, m, sizeof m, &spin);
    ReadAll(rx, m, sizeof m, &spin);
  }
  g_last_mean = double(n) / (MonotonicNs() - t0) * 1e3;
  return g_last_mean;
}

// ---------------------------------------------------------------- kernel

double SocketStreamGBps(int domain, size_t chunk, uint64_t total) {
  int lfd = socket(domain, SOCK_STREAM, 0);
  if (lfd < 0) Die("socket");
  sockaddr_storage ss = {};
  socklen_t len;
  std::string path;
  if (domain == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_un*>(&ss);
    a->sun_family = AF_UNIX;
    path = "/tmp/ring_bench." + std::to_string(getpid());
    unlink(path.c_str());
    std::strncpy(a->sun_path, path.c_str(), sizeof a->sun_path - 1);
    len = sizeof *a;
  }
  if (bind(lfd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(lfd, 1) != 0) Die("bind");
  getsockname(lfd, reinterpret_cast<sockaddr*>(&ss), &len);
  double r = RunPair(
      [&] {
        int fd = socket(domain, SOCK_STREAM, 0);
        if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) Die("connect");
        std::vector<char> buf(chunk, 5);
        for (uint64_t sent = 0; sent < total;) {
          ssize_t w = send(fd, buf.data(), chunk, 0);
          if (w <= 0) Die("send");
          sent += w;
        }
        close(fd);
      },
      [&] {
        int fd = accept(lfd, nullptr, nullptr);
        if (fd < 0) Die("accept");
        std::vector<char> buf(chunk);
        int64_t t0 = MonotonicNs();
        uint64_t got = 0;
        while (got < total) {
          ssize_t g = recv(fd, buf.data(), chunk, 0);
          if (g <= 0) Die("recv");
          got += g;
        }
        double gbps = double(total) / (MonotonicNs() - t0);
        close(fd);
        return gbps;
      });
  close(lfd);
  if (!path.empty()) unlink(path.c_str());
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  bool use_fence = true;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) g_quick = true;
    if (std::strncmp(argv[i], "--rounds=", 9) == 0) g_rounds = std::max(1, atoi(argv[i] + 9));
    if (std::strncmp(argv[i], "--only=", 7) == 0) g_only = argv[i] + 7;
    if (std::strcmp(argv[i], "--no-asymmetric-fence") == 0) use_fence = false;
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      printf(
          "usage: ring_bench [--quick] [--rounds=N] [--only=pingpong,futex,stream,pipelined]\n"
          "       ring_bench --only=pipelined-ladder  (diagnostics, not in a full run)\n"
          "  --quick      10x smaller counts, one round\n"
          "  --rounds=N   rounds per figure (default 5); each figure is the median\n"
          "  --only=LIST  run only these sections (default: all)\n"
          "  --no-asymmetric-fence  publish with seq_cst stores (transport/fence.h)\n");
      return 0;
    }
  }
  setvbuf(stdout, nullptr, _IOLBF, 0);
  g_sh = static_cast<Shared*>(
      mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (g_sh == MAP_FAILED) Die("mmap");
  new (g_sh) Shared;

  cpu_set_t avail;
  sched_getaffinity(0, sizeof avail, &avail);
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &avail)) cpus.push_back(c);
  if (cpus.size() < 2) {
    fprintf(stderr, "ring_bench: needs 2 CPUs, have %zu\n", cpus.size());
    return 1;
  }
  g_cpu_parent = cpus[0];
  g_cpu_child = cpus[1];
  if (!Pin(g_cpu_parent)) Die("pin parent");
  printf("pinned: measuring process on CPU %d, partner process on CPU %d (sched_setaffinity)\n",
         g_cpu_parent, g_cpu_child);
  // Before the partners are forked (they inherit the registration), as the
  // runtime does at start-up.
  bool fenced = use_fence && dt::EnableAsymmetricFence();
  printf("asymmetric fence (membarrier, transport/fence.h): %s\n",
         fenced ? "on" : (use_fence ? "unavailable" : "off (--no-asymmetric-fence)"));
  dt::PageSupport ps = dt::DetectPageSupport();
  {
    dt::Segment s = NewSegment(dt::kDefaultRingCapacity);
    printf("segment: %s pages, hugetlb free %llu, shmem THP %s, NUMA %s; ring capacity %llu KiB\n",
           dt::PageKindName(s.placement().pages),
           static_cast<unsigned long long>(ps.hugetlb_free_pages), ps.shmem_thp ? "yes" : "no",
           s.placement().numa_available ? "yes" : "no",
           static_cast<unsigned long long>(dt::kDefaultRingCapacity >> 10));
  }
  const uint64_t q = g_quick ? 10 : 1;
  const int rounds = g_quick ? 1 : g_rounds;
  printf(
      "each figure is the median of %d rounds; in each round the floor and the rings run "
      "back to back;\nspin ping-pongs and pipelined messages: median over batches of each "
      "run (1000 round trips, 10 000 messages)\n",
      rounds);

  if (Section("pingpong") || Section("futex")) {
    std::vector<double> floor_v, futex_v, spin_v, nospin_v, spin_ratio_v, nospin_ratio_v;
    std::vector<double> floor_mean_v, spin_mean_v, spin_mean_ratio_v;
    std::vector<double> pair_ratio_v, pair_floor_v, pair_ring_v;
    uint64_t nospin_wakes = 0;
    for (int r = 0; r < rounds; ++r) {
      if (Section("pingpong")) {
        floor_v.push_back(FloorHandoffNs(400'000 / q));
        floor_mean_v.push_back(g_last_mean);
        spin_v.push_back(RingPingPongNs(400'000 / q, true).rtt_ns);
        spin_mean_v.push_back(g_last_mean);
        spin_ratio_v.push_back(spin_v.back() / floor_v.back());
        spin_mean_ratio_v.push_back(spin_mean_v.back() / floor_mean_v.back());
        double f = 0, g = 0;
        if (double x = InterleavedRatio(400 / q, &f, &g); x > 0) {
          pair_ratio_v.push_back(x);
          pair_floor_v.push_back(f);
          pair_ring_v.push_back(g);
        }
      }
      if (Section("futex")) {
        futex_v.push_back(FloorFutexNs(5'000 / q));
        PingPong np = RingPingPongNs(5'000 / q, false);
        nospin_v.push_back(np.rtt_ns);
        nospin_wakes = np.wakes;
        nospin_ratio_v.push_back(nospin_v.back() / futex_v.back());
      }
    }
    printf("\n%-52s %12s %12s %10s\n", "64 B ping-pong round trip", "ns", "floor ns", "ratio");
    if (Section("pingpong")) {
      double floor_ns = Median(floor_v), spin_ns = Median(spin_v);
      printf("%-52s %12.0f   (min %.0f, max %.0f)\n", "floor: cache-line handoff (spin)", floor_ns,
             Min(floor_v), Max(floor_v));
      printf("%-52s %12.0f %12.0f %9.2fx  (target <= 2x)\n", "rings, adaptive spin", spin_ns,
             floor_ns, spin_ns / floor_ns);
      printf("%-52s %12s %12s %9.2fx  (min %.2f, max %.2f)\n", "  ratio within each round, median",
             "", "", Median(spin_ratio_v), Min(spin_ratio_v), Max(spin_ratio_v));
      printf("%-52s %12.0f %12.0f %9.2fx  (ratio per round: min %.2f, max %.2f)\n",
             "  whole-run means instead of median batches", Median(spin_mean_v),
             Median(floor_mean_v), Median(spin_mean_ratio_v), Min(spin_mean_ratio_v),
             Max(spin_mean_ratio_v));
      if (!pair_ratio_v.empty()) {
        printf("%-52s %9.2fx  (rings %.0f ns, floor %.0f ns; per round min %.2f, max %.2f)\n",
               "rings / floor, alternating batches", Median(pair_ratio_v), Median(pair_ring_v),
               Median(pair_floor_v), Min(pair_ratio_v), Max(pair_ratio_v));
      }
    }
    if (Section("futex")) {
      double futex_ns = Median(futex_v), nospin_ns = Median(nospin_v);
      printf("%-52s %12.0f   (min %.0f, max %.0f)\n", "floor: futex wait/wake ping-pong", futex_ns,
             Min(futex_v), Max(futex_v));
      printf("%-52s %12.0f %12.0f %9.2fx  (target <= 1.1x; %llu FUTEX_WAKEs in %llu round trips)\n",
             "rings, spin disabled (futex only)", nospin_ns, futex_ns, nospin_ns / futex_ns,
             static_cast<unsigned long long>(nospin_wakes),
             static_cast<unsigned long long>(5'000 / q));
      printf("%-52s %12s %12s %9.2fx  (min %.2f, max %.2f)\n", "  ratio within each round, median",
             "", "", Median(nospin_ratio_v), Min(nospin_ratio_v), Max(nospin_ratio_v));
    }
  }

  if (Section("stream")) {
    const size_t kChunk = 64 << 10;
    const uint64_t kStream = (2ull << 30) / q;
    const uint64_t caps[] = {uint64_t{256} << 10, uint64_t{512} << 10, uint64_t{1} << 20,
                             uint64_t{4} << 20};
    std::vector<double> mc_v, tcp_v, uds_v, ring_v[4];
    double mc_skew = CopyGBps(false, kChunk, (1ull << 30) / q, 16);
    double rc = CopyGBps(true, kChunk, (4ull << 30) / q, 0);
    double rc_skew = CopyGBps(true, kChunk, (4ull << 30) / q, 16);
    for (int r = 0; r < rounds; ++r) {
      mc_v.push_back(CopyGBps(false, kChunk, (4ull << 30) / q, 0));
      tcp_v.push_back(SocketStreamGBps(AF_INET, kChunk, (512ull << 20) / q));
      uds_v.push_back(SocketStreamGBps(AF_UNIX, kChunk, (512ull << 20) / q));
      for (int c = 0; c < 4; ++c) ring_v[c].push_back(RingStreamGBps(caps[c], kChunk, kStream));
    }
    double mc = Median(mc_v), tcp = Median(tcp_v), uds = Median(uds_v);
    printf("\n%-52s %12s %12s %12s\n", "streaming, 64 KiB chunks", "GB/s", "/memcpy", "/TCP");
    printf("%-52s %12.2f\n", "floor: single-core glibc memcpy 64 KiB (aligned)", mc);
    printf("%-52s %12.2f %12.2f\n", "  glibc memcpy, destination +16 B in its page", mc_skew,
           mc_skew / mc);
    printf("%-52s %12.2f %12.2f\n", "  ring CopyBytes (aligned)", rc, rc / mc);
    printf("%-52s %12.2f %12.2f\n", "  ring CopyBytes, destination +16 B", rc_skew, rc_skew / mc);
    printf("%-52s %12.2f %12.2f\n", "kernel TCP loopback", tcp, tcp / mc);
    printf("%-52s %12.2f %12.2f %12.2f\n", "kernel Unix stream socket", uds, uds / mc, uds / tcp);
    for (int c = 0; c < 4; ++c) {
      double g = Median(ring_v[c]);
      char name[80];
      snprintf(name, sizeof name, "rings, capacity %llu KiB%s",
               static_cast<unsigned long long>(caps[c] >> 10),
               caps[c] == dt::kDefaultRingCapacity ? " (default)" : "");
      printf("%-52s %12.2f %12.2f %12.2f%s\n", name, g, g / mc, g / tcp,
             caps[c] == dt::kDefaultRingCapacity ? "  (targets >= 0.3x, >= 8x)" : "");
    }
  }

  if (Section("pipelined")) {
    const uint64_t kMsgs = 10'000'000 / q;
    std::vector<double> mps_v, mpsb_v;
    std::vector<double> waits_v, wwaits_v, mps_mean_v, floor_rw_v, floor_ww_v;
    std::vector<double> floor_v, floor_mean_v, ratio_v, ratio_mean_v;
    // In each round the floor runs right before the rings, as the ping-pong
    // floor does: this VM moves its vCPUs between placements whose cache-line
    // handoff differs ~4x, so only a floor from the same round says whether
    // a slow rings run had a slow machine under it.
    for (int r = 0; r < rounds; ++r) {
      floor_v.push_back(FloorPipelinedMps<FloorKind::kInLine>(kMsgs));
      floor_mean_v.push_back(g_last_mean);
      floor_rw_v.push_back(g_reader_waits_per_msg);
      floor_ww_v.push_back(g_writer_waits_per_msg);
      mps_v.push_back(RingPipelinedMps(kMsgs, 64, false));
      mps_mean_v.push_back(g_last_mean);
      waits_v.push_back(g_reader_waits_per_msg);
      wwaits_v.push_back(g_writer_waits_per_msg);
      ratio_v.push_back(mps_v.back() / floor_v.back());
      ratio_mean_v.push_back(mps_mean_v.back() / floor_mean_v.back());
      mpsb_v.push_back(RingPipelinedMps(kMsgs, 64, true));
    }
    printf("\n%-52s %12s\n", "64 B messages, pipelined", "M msg/s");
    printf("%-52s %12.1f  (min %.1f, max %.1f)\n", "floor: one line per message, sequence in line",
           Median(floor_v), Min(floor_v), Max(floor_v));
    printf("%-52s %12.1f  (min %.1f, max %.1f)\n", "  whole-run means instead of median batches",
           Median(floor_mean_v), Min(floor_mean_v), Max(floor_mean_v));
    printf("%-52s %12.1f  (target >= 20; min %.1f, max %.1f)\n",
           "rings, one Write and one Read per message", Median(mps_v), Min(mps_v), Max(mps_v));
    printf("%-52s %12.1f  (min %.1f, max %.1f)\n", "  whole-run means instead of median batches",
           Median(mps_mean_v), Min(mps_mean_v), Max(mps_mean_v));
    printf("%-52s %12.3f  (min %.3f, max %.3f)\n", "  reader waits per message, median",
           Median(waits_v), Min(waits_v), Max(waits_v));
    printf("%-52s %12.3f  (min %.3f, max %.3f)\n", "  writer waits per message, median",
           Median(wwaits_v), Min(wwaits_v), Max(wwaits_v));
    printf("%-52s %11.2fx  (min %.2f, max %.2f)\n", "rings / floor, same round, median batches",
           Median(ratio_v), Min(ratio_v), Max(ratio_v));
    printf("%-52s %11.2fx  (min %.2f, max %.2f)\n", "rings / floor, same round, whole-run means",
           Median(ratio_mean_v), Min(ratio_mean_v), Max(ratio_mean_v));
    printf("%-52s %12.1f\n", "rings, one Write per message, reader batches 64 KiB", Median(mpsb_v));
    printf(
        "  per round (floor first, then rings): M msg/s as median batches / whole-run mean;\n"
        "  waits per message of reader / writer (a side that waits often is the faster one)\n");
    for (int r = 0; r < rounds; ++r) {
      printf(
          "    round %d: floor %6.1f / %6.1f (waits %.3f / %.3f)   rings %6.1f / %6.1f "
          "(waits %.3f / %.3f)   rings/floor %.2f / %.2f\n",
          r + 1, floor_v[r], floor_mean_v[r], floor_rw_v[r], floor_ww_v[r], mps_v[r], mps_mean_v[r],
          waits_v[r], wwaits_v[r], ratio_v[r], ratio_mean_v[r]);
    }
  }
  // Diagnostics, only when asked for (not part of a full run): the floor
  // with the rings' index lines added back one at a time, each round in the
  // same process order, to see which per-message traffic costs the rings
  // their distance to the floor.
  if (!g_only.empty() && Section("pipelined-ladder")) {
    const uint64_t kMsgs = 10'000'000 / q;
    const char* names[5] = {"floor: one line per message, sequence in line",
                            "floor + a tail line stored per message",
                            "floor + tail and head lines stored per message",
                            "rings, one Write and one Read per message",
                            "rings, Write then Read in one process (one core)"};
    std::vector<double> med[5], mean[5], lag[5];
    for (int r = 0; r < rounds; ++r) {
      for (int k = 0; k < 5; ++k) {
        double v = k == 0   ? FloorPipelinedMps<FloorKind::kInLine>(kMsgs)
                   : k == 1 ? FloorPipelinedMps<FloorKind::kTailLine>(kMsgs)
                   : k == 2 ? FloorPipelinedMps<FloorKind::kTailAndHead>(kMsgs)
                   : k == 3 ? RingPipelinedMps(kMsgs, 64, false)
                            : RingOneProcessMps(kMsgs);
        med[k].push_back(v);
        mean[k].push_back(g_last_mean);
        lag[k].push_back(g_lag_msgs);
        g_lag_msgs = -1;
      }
    }
    printf("\n%-52s %12s %12s\n", "64 B messages, pipelined: index lines added", "M msg/s",
           "whole-run");
    for (int k = 0; k < 5; ++k) {
      printf("%-52s %12.1f %12.1f  (whole-run min %.1f, max %.1f)\n", names[k], Median(med[k]),
             Median(mean[k]), Min(mean[k]), Max(mean[k]));
    }
    printf(
        "  per round, whole-run means in the order above; [producer's lead in messages at the\n"
        "  batch marks, median; -1: not measured]\n");
    for (int r = 0; r < rounds; ++r) {
      printf("    round %d:", r + 1);
      for (int k = 0; k < 5; ++k) printf(" %6.1f [%5.0f]", mean[k][r], lag[k][r]);
      printf("\n");
    }
  }
  return 0;
}

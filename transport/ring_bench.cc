// ring_bench: the transport's performance against the physical floor, two
// processes pinned to different CPUs, everything measured in one run by this
// program. Not a test (it asserts nothing); results go to docs/transport.md.
//
//   bazel run -c opt //transport:ring_bench            # full run
//   bazel run -c opt //transport:ring_bench -- --quick # smaller counts
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

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "transport/internal/futex.h"
#include "transport/segment.h"
#include "transport/wait.h"

namespace dt = doorway::transport;
using dt::internal::CpuRelax;
using dt::internal::MonotonicNs;

namespace {

bool g_quick = false;
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
        int64_t t0 = MonotonicNs();
        for (uint64_t i = 0; i < n; ++i) {
          g_sh->ping.v.store(i + 1, std::memory_order_release);
          SpinUntil([i] { return g_sh->pong.v.load(std::memory_order_acquire) == i + 1; });
        }
        return double(MonotonicNs() - t0) / n;
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

double MemcpyGBps(size_t chunk, uint64_t total) {
  std::vector<char> src(chunk, 1), dst(chunk);
  uint64_t reps = total / chunk;
  int64_t t0 = MonotonicNs();
  for (uint64_t i = 0; i < reps; ++i) {
    std::memcpy(dst.data(), src.data(), chunk);
    asm volatile("" : : "r"(dst.data()) : "memory");
  }
  return double(reps * chunk) / (MonotonicNs() - t0);
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
        int64_t t0 = MonotonicNs();
        for (uint64_t i = 0; i < n; ++i) {
          WriteAll(tx, msg, sizeof msg, &spin);
          ReadAll(rx, msg, sizeof msg, &spin);
        }
        wakes->store(st.futex_wakes.load());
        return double(MonotonicNs() - t0) / n;
      });
  return {r, wakes->load()};
}

double RingStreamGBps(uint64_t cap, size_t chunk, uint64_t total) {
  dt::Segment seg = NewSegment(cap);
  return RunPair(
      [&seg, chunk, total] {
        dt::RingStats st;
        dt::Ring tx = seg.MakeTxRing(dt::Role::kServer, &st);
        dt::SpinPolicy spin;
        std::vector<char> buf(chunk, 7);
        for (uint64_t sent = 0; sent < total; sent += chunk) WriteAll(tx, buf.data(), chunk, &spin);
      },
      [&seg, chunk, total] {
        dt::RingStats st;
        dt::Ring rx = seg.MakeRxRing(dt::Role::kClient, &st);
        dt::SpinPolicy spin;
        std::vector<char> buf(chunk);
        int64_t t0 = MonotonicNs();
        uint64_t got = 0;
        while (got < total) {
          int64_t g = rx.Read(buf.data(), chunk);
          if (g == -EAGAIN) {
            if (dt::WaitReadable(rx, Bounded(), &spin) != 0) Die("stream wait");
            continue;
          }
          if (g <= 0) Die("stream read");
          got += g;
        }
        return double(total) / (MonotonicNs() - t0);
      });
}

double RingPipelinedMps(uint64_t n, size_t msg, bool batch_reader) {
  dt::Segment seg = NewSegment(dt::kDefaultRingCapacity);
  return RunPair(
      [&seg, n, msg] {
        dt::RingStats st;
        dt::Ring tx = seg.MakeTxRing(dt::Role::kServer, &st);
        dt::SpinPolicy spin;
        char m[64] = {3};
        for (uint64_t i = 0; i < n; ++i) WriteAll(tx, m, msg, &spin);
      },
      [&seg, n, msg, batch_reader] {
        dt::RingStats st;
        dt::Ring rx = seg.MakeRxRing(dt::Role::kClient, &st);
        dt::SpinPolicy spin;
        std::vector<char> buf(batch_reader ? 64 << 10 : msg);
        uint64_t total = n * msg, got = 0;
        int64_t t0 = MonotonicNs();
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
        }
        return double(n) / (MonotonicNs() - t0) * 1e3;  // M msg/s
      });
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
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) g_quick = true;
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

  double floor_ns = FloorHandoffNs(2'000'000 / q);
  double futex_ns = FloorFutexNs(20'000 / q);
  PingPong spin = RingPingPongNs(1'000'000 / q, true);
  PingPong nospin = RingPingPongNs(20'000 / q, false);
  printf("\n%-52s %12s %12s %10s\n", "64 B ping-pong round trip", "ns", "floor ns", "ratio");
  printf("%-52s %12.0f\n", "floor: cache-line handoff (spin)", floor_ns);
  printf("%-52s %12.0f\n", "floor: futex wait/wake ping-pong", futex_ns);
  printf("%-52s %12.0f %12.0f %9.2fx  (target <= 2x)\n", "rings, adaptive spin", spin.rtt_ns,
         floor_ns, spin.rtt_ns / floor_ns);
  printf("%-52s %12.0f %12.0f %9.2fx  (target <= 1.1x; %llu FUTEX_WAKEs)\n",
         "rings, spin disabled (futex only)", nospin.rtt_ns, futex_ns, nospin.rtt_ns / futex_ns,
         static_cast<unsigned long long>(nospin.wakes));

  const size_t kChunk = 64 << 10;
  const uint64_t kStream = (4ull << 30) / q;
  double mc = MemcpyGBps(kChunk, (8ull << 30) / q);
  double tcp = SocketStreamGBps(AF_INET, kChunk, (1ull << 30) / q);
  double uds = SocketStreamGBps(AF_UNIX, kChunk, (1ull << 30) / q);
  printf("\n%-52s %12s %12s %12s\n", "streaming, 64 KiB chunks", "GB/s", "/memcpy", "/TCP");
  printf("%-52s %12.2f\n", "floor: single-core memcpy 64 KiB", mc);
  printf("%-52s %12.2f %12.2f\n", "kernel TCP loopback", tcp, tcp / mc);
  printf("%-52s %12.2f %12.2f %12.2f\n", "kernel Unix stream socket", uds, uds / mc, uds / tcp);
  for (uint64_t cap :
       {uint64_t{128} << 10, uint64_t{256} << 10, uint64_t{1} << 20, uint64_t{4} << 20}) {
    double g = RingStreamGBps(cap, kChunk, kStream);
    char name[80];
    snprintf(name, sizeof name, "rings, capacity %llu KiB%s",
             static_cast<unsigned long long>(cap >> 10),
             cap == dt::kDefaultRingCapacity ? " (default)" : "");
    printf("%-52s %12.2f %12.2f %12.2f%s\n", name, g, g / mc, g / tcp,
           cap == dt::kDefaultRingCapacity ? "  (targets >= 0.3x, >= 8x)" : "");
  }

  const uint64_t kMsgs = 20'000'000 / q;
  double mps = RingPipelinedMps(kMsgs, 64, false);
  double mps_batch = RingPipelinedMps(kMsgs, 64, true);
  printf("\n%-52s %12s\n", "64 B messages, pipelined", "M msg/s");
  printf("%-52s %12.1f  (target >= 20)\n", "rings, one Write and one Read per message", mps);
  printf("%-52s %12.1f\n", "rings, one Write per message, reader batches 64 KiB", mps_batch);
  return 0;
}

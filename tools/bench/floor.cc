// The physical floor that the transports are compared against, measured with
// memory alone (no system call on the data path), at the same message sizes
// as //tools/bench:pingpong:
//
//   floor pingpong SIZE ITERS CPU_A CPU_B
//       two processes, pinned to CPU_A and CPU_B, pass a SIZE-byte message
//       back and forth through a shared mapping: the sender copies it in and
//       publishes a sequence number, the receiver spins on the number and
//       copies the message out (then back in, as the echo). Prints RTT
//       statistics in pingpong's format. For 64 B this is the cache-line
//       handoff (two lines: sequence number and data).
//   floor memcpy SIZE BYTES CPU
//       one core copying SIZE-byte blocks from a hot buffer into successive
//       places of a 1 MiB buffer (the transport's default ring capacity),
//       BYTES in all. Prints the bandwidth: the ceiling of a one-copy stream.
//
// Every spin is bounded in time (a partner that died makes the program fail,
// not hang) and the child dies with the parent (PR_SET_PDEATHSIG).
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "tools/bench/io_util.h"

namespace {

using doorway::bench::NowNs;

constexpr long kStallNs = 10'000'000'000;  // a partner silent this long = failure
constexpr size_t kMaxSize = size_t{1} << 20;

bool Pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  return sched_setaffinity(0, sizeof s, &s) == 0;
}

inline void Relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

struct alignas(64) Slot {
  std::atomic<uint64_t> seq{0};
  char pad[56];
  char data[kMaxSize];
};
struct Shared {
  Slot to_child;
  Slot to_parent;
};

// Spins until s.seq == want; false if nothing came for kStallNs.
bool Await(const Slot& s, uint64_t want) {
  long deadline = 0;
  for (unsigned i = 1; s.seq.load(std::memory_order_acquire) != want; ++i) {
    Relax();
    if ((i & 1023) == 0) {
      long now = NowNs();
      if (deadline == 0) deadline = now + kStallNs;
      if (now > deadline) return false;
    }
  }
  return true;
}

int PingPong(size_t size, long iters, int cpu_a, int cpu_b) {
  if (size == 0 || size > kMaxSize) return 2;
  void* m =
      mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return 1;
  auto* sh = new (m) Shared;
  long warmup = iters / 10;
  uint64_t rounds = static_cast<uint64_t>(warmup + iters);
  pid_t parent = getpid();
  pid_t child = fork();
  if (child < 0) return 1;
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    if (!Pin(cpu_b)) _exit(1);
    std::vector<char> buf(size);
    for (uint64_t i = 1; i <= rounds; ++i) {
      if (!Await(sh->to_child, i)) _exit(3);
      memcpy(buf.data(), sh->to_child.data, size);
      memcpy(sh->to_parent.data, buf.data(), size);
      sh->to_parent.seq.store(i, std::memory_order_release);
    }
    _exit(0);
  }
  if (!Pin(cpu_a)) return 1;
  std::vector<char> out(size, 'f'), in(size);
  std::vector<long> rtt;
  rtt.reserve(static_cast<size_t>(iters));
  for (uint64_t i = 1; i <= rounds; ++i) {
    long t0 = NowNs();
    memcpy(sh->to_child.data, out.data(), size);
    sh->to_child.seq.store(i, std::memory_order_release);
    if (!Await(sh->to_parent, i)) {
      fprintf(stderr, "floor: partner stalled\n");
      kill(child, SIGKILL);
      return 1;
    }
    memcpy(in.data(), sh->to_parent.data, size);
    if (i > static_cast<uint64_t>(warmup)) rtt.push_back(NowNs() - t0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
  std::sort(rtt.begin(), rtt.end());
  double sum = 0;
  for (long v : rtt) sum += static_cast<double>(v);
  printf("size=%zu iters=%ld p50_ns=%ld p99_ns=%ld mean_ns=%.0f min_ns=%ld\n", size, iters,
         rtt[rtt.size() / 2], rtt[rtt.size() * 99 / 100], sum / static_cast<double>(rtt.size()),
         rtt.front());
  return 0;
}

int Memcpy(size_t size, long bytes, int cpu) {
  constexpr size_t kRing = size_t{1} << 20;
  if (size == 0 || size > kRing) return 2;
  if (!Pin(cpu)) return 1;
  std::vector<char> src(size, 'm');
  std::vector<char> ring(kRing, 0);
  long blocks = std::max(1L, bytes / static_cast<long>(size));
  size_t pos = 0;
  // Warm the ring's pages first: a first touch is a page fault, not a copy.
  memset(ring.data(), 1, kRing);
  long t0 = NowNs();
  for (long i = 0; i < blocks; ++i) {
    memcpy(ring.data() + pos, src.data(), size);
    // The copy must happen even though nothing reads the ring.
    asm volatile("" : : "r"(ring.data()) : "memory");
    pos += size;
    if (pos + size > kRing) pos = 0;
  }
  long dt = NowNs() - t0;
  long total = blocks * static_cast<long>(size);
  printf("bytes=%ld ns=%ld gbps=%.3f\n", total, dt,
         static_cast<double>(total) / static_cast<double>(dt));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 6 && strcmp(argv[1], "pingpong") == 0) {
    return PingPong(static_cast<size_t>(atol(argv[2])), atol(argv[3]), atoi(argv[4]),
                    atoi(argv[5]));
  }
  if (argc == 5 && strcmp(argv[1], "memcpy") == 0) {
    return Memcpy(static_cast<size_t>(atol(argv[2])), atol(argv[3]), atoi(argv[4]));
  }
  fprintf(stderr, "usage: floor pingpong SIZE ITERS CPU_A CPU_B | floor memcpy SIZE BYTES CPU\n");
  return 2;
}

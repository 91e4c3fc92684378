// A plain POSIX TCP program for the fallback-path benchmark
// (tools/bench/fallback_bench.py): run unchanged without doorway, under
// doorway in pass-through, and under doorway with the io_uring engine.
// Nothing in it knows about doorway.
//
//   fallback_io server ADDR PORT
//       serves one connection: its first byte picks the test,
//       'P' echo (ping-pong), 'S' sink (read until EOF, answer the byte count)
//   fallback_io pingpong ADDR PORT SIZE ITERS
//       prints: p50_ns=... p99_ns=... mean_ns=...
//   fallback_io stream ADDR PORT CHUNK MIB
//       writes MIB MiB in CHUNK-byte write()s; prints: mib_s=...
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tools/bench/io_util.h"

namespace {

using doorway::bench::NowNs;
using doorway::bench::ReadFull;
using doorway::bench::WriteFull;

bool Addr(const char* host, int port, sockaddr_in* a) {
  *a = {};
  a->sin_family = AF_INET;
  a->sin_port = htons(static_cast<uint16_t>(port));
  return inet_pton(AF_INET, host, &a->sin_addr) == 1;
}

int Server(const char* host, int port) {
  sockaddr_in a;
  if (!Addr(host, port, &a)) return 2;
  int l = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(l, 1) != 0) {
    perror("fallback_io server: bind/listen");
    return 1;
  }
  printf("listening\n");
  fflush(stdout);
  int c = accept(l, nullptr, nullptr);
  if (c < 0) return 1;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  char mode = 0;
  if (!ReadFull(c, &mode, 1)) return 1;
  std::vector<char> buf(1 << 20);
  if (mode == 'P') {
    for (;;) {
      ssize_t r = read(c, buf.data(), buf.size());
      if (r <= 0) break;
      if (!WriteFull(c, buf.data(), static_cast<size_t>(r))) break;
    }
  } else {
    std::uint64_t total = 0;
    for (;;) {
      ssize_t r = read(c, buf.data(), buf.size());
      if (r <= 0) break;
      total += static_cast<std::uint64_t>(r);
    }
    WriteFull(c, reinterpret_cast<const char*>(&total), sizeof(total));
  }
  close(c);
  close(l);
  return 0;
}

int Connect(const char* host, int port, char mode) {
  sockaddr_in a;
  if (!Addr(host, port, &a)) return -1;
  int c = socket(AF_INET, SOCK_STREAM, 0);
  for (int tries = 0; connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0; ++tries) {
    if (tries > 200) {
      perror("fallback_io: connect");
      return -1;
    }
    close(c);
    c = socket(AF_INET, SOCK_STREAM, 0);
    usleep(10000);
  }
  int one = 1;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (!WriteFull(c, &mode, 1)) return -1;
  return c;
}

int Pingpong(const char* host, int port, size_t size, long iters) {
  int c = Connect(host, port, 'P');
  if (c < 0) return 1;
  std::vector<char> out(size, 'p'), in(size);
  std::vector<long> rtt;
  rtt.reserve(static_cast<size_t>(iters));
  long warmup = iters / 10;
  for (long i = 0; i < warmup + iters; ++i) {
    long t0 = NowNs();
    if (!WriteFull(c, out.data(), size) || !ReadFull(c, in.data(), size)) return 1;
    if (i >= warmup) rtt.push_back(NowNs() - t0);
  }
  close(c);
  std::sort(rtt.begin(), rtt.end());
  double sum = 0;
  for (long v : rtt) sum += static_cast<double>(v);
  printf("p50_ns=%ld p99_ns=%ld mean_ns=%.0f\n", rtt[rtt.size() / 2], rtt[rtt.size() * 99 / 100],
         sum / static_cast<double>(rtt.size()));
  return 0;
}

int Stream(const char* host, int port, size_t chunk, long mib) {
  int c = Connect(host, port, 'S');
  if (c < 0) return 1;
  std::vector<char> buf(chunk, 's');
  std::uint64_t want = static_cast<std::uint64_t>(mib) << 20;
  long t0 = NowNs();
  for (std::uint64_t put = 0; put < want; put += chunk) {
    if (!WriteFull(c, buf.data(), chunk)) return 1;
  }
  shutdown(c, SHUT_WR);
  std::uint64_t got = 0;
  if (!ReadFull(c, reinterpret_cast<char*>(&got), sizeof(got))) return 1;
  long dt = NowNs() - t0;
  close(c);
  if (got < want) return 1;
  printf("mib_s=%.1f\n", static_cast<double>(got) / (1 << 20) / (static_cast<double>(dt) / 1e9));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && strcmp(argv[1], "server") == 0) return Server(argv[2], atoi(argv[3]));
  if (argc == 6 && strcmp(argv[1], "pingpong") == 0) {
    return Pingpong(argv[2], atoi(argv[3]), static_cast<size_t>(atol(argv[4])), atol(argv[5]));
  }
  if (argc == 6 && strcmp(argv[1], "stream") == 0) {
    return Stream(argv[2], atoi(argv[3]), static_cast<size_t>(atol(argv[4])), atol(argv[5]));
  }
  fprintf(stderr,
          "usage: fallback_io server ADDR PORT | pingpong ADDR PORT SIZE ITERS |"
          " stream ADDR PORT CHUNK MIB\n");
  return 2;
}

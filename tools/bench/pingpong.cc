// A plain POSIX TCP ping-pong program, used unchanged with and without
// doorway (and later over every transport). Nothing in it knows about
// doorway.
//
//   pingpong server PORT                    echo one connection, then exit
//   pingpong client HOST PORT SIZE ITERS    print RTT statistics
//   pingpong sink PORT                      accept one connection, read to EOF,
//                                           print the throughput
//   pingpong stream HOST PORT SIZE SECONDS  write SIZE-byte chunks for SECONDS
//   pingpong acceptor PORT N                accept and close N connections
//   pingpong connector HOST PORT N          connect+close N times, print rate
//   pingpong calls SIZE ITERS               per-call cost of write+read on a
//                                           socketpair in one thread (the
//                                           interposition overhead, without
//                                           scheduler noise)
//
// The client sends SIZE bytes, waits for the SIZE-byte echo, ITERS times
// (after ITERS/10 warm-up rounds), and prints one line:
//   size=64 iters=100000 p50_ns=... p99_ns=... mean_ns=... min_ns=...
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "tools/bench/io_util.h"

namespace {

using doorway::bench::NowNs;
using doorway::bench::ReadFull;
using doorway::bench::WriteFull;

int Server(int port) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(l, 1) != 0) {
    perror("pingpong server: bind/listen");
    return 1;
  }
  printf("listening\n");
  fflush(stdout);
  int c = accept(l, nullptr, nullptr);
  if (c < 0) return 1;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  std::vector<char> buf(1 << 20);
  for (;;) {
    ssize_t r = read(c, buf.data(), buf.size());
    if (r <= 0) break;
    if (!WriteFull(c, buf.data(), static_cast<size_t>(r))) break;
  }
  close(c);
  close(l);
  return 0;
}

int Client(const char* host, int port, size_t size, long iters) {
  int c = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host, &a.sin_addr) != 1) return 2;
  for (int tries = 0; connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0; ++tries) {
    if (tries > 200) {
      perror("pingpong client: connect");
      return 1;
    }
    close(c);
    c = socket(AF_INET, SOCK_STREAM, 0);
    usleep(10000);
  }
  int one = 1;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  std::vector<char> out(size, 'p'), in(size);
  std::vector<long> rtt;
  rtt.reserve(static_cast<size_t>(iters));
  long warmup = iters / 10;
  for (long i = 0; i < warmup + iters; ++i) {
    long t0 = NowNs();
    if (!WriteFull(c, out.data(), size) || !ReadFull(c, in.data(), size)) {
      fprintf(stderr, "pingpong client: connection lost\n");
      return 1;
    }
    if (i >= warmup) rtt.push_back(NowNs() - t0);
  }
  close(c);
  std::sort(rtt.begin(), rtt.end());
  double sum = 0;
  for (long v : rtt) sum += static_cast<double>(v);
  printf("size=%zu iters=%ld p50_ns=%ld p99_ns=%ld mean_ns=%.0f min_ns=%ld\n", size, iters,
         rtt[rtt.size() / 2], rtt[rtt.size() * 99 / 100], sum / static_cast<double>(rtt.size()),
         rtt.front());
  return 0;
}

int Listener(int port) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(l, 128) != 0) {
    perror("pingpong: bind/listen");
    exit(1);
  }
  printf("listening\n");
  fflush(stdout);
  return l;
}

int Dial(const char* host, int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host, &a.sin_addr) != 1) exit(2);
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    perror("pingpong: connect");
    exit(1);
  }
  return c;
}

int Sink(int port) {
  int l = Listener(port);
  int c = accept(l, nullptr, nullptr);
  std::vector<char> buf(1 << 20);
  long total = 0, t0 = 0;
  for (;;) {
    ssize_t r = read(c, buf.data(), buf.size());
    if (r <= 0) break;
    if (t0 == 0) t0 = NowNs();
    total += r;
  }
  long dt = NowNs() - t0;
  printf("bytes=%ld ns=%ld gbps=%.3f\n", total, dt,
         static_cast<double>(total) / static_cast<double>(dt));
  return 0;
}

int Stream(const char* host, int port, size_t size, double seconds) {
  int c = Dial(host, port);
  std::vector<char> buf(size, 's');
  long end = NowNs() + static_cast<long>(seconds * 1e9);
  while (NowNs() < end) {
    for (int i = 0; i < 16; ++i) {
      if (!WriteFull(c, buf.data(), size)) return 1;
    }
  }
  close(c);
  return 0;
}

int Acceptor(int port, long n) {
  int l = Listener(port);
  for (long i = 0; i < n; ++i) {
    int c = accept(l, nullptr, nullptr);
    if (c < 0) return 1;
    close(c);
  }
  return 0;
}

int Connector(const char* host, int port, long n) {
  long t0 = NowNs();
  for (long i = 0; i < n; ++i) close(Dial(host, port));
  long dt = NowNs() - t0;
  printf("conns=%ld ns=%ld per_s=%.0f\n", n, dt,
         static_cast<double>(n) * 1e9 / static_cast<double>(dt));
  return 0;
}

int Calls(size_t size, long iters) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 1;
  std::vector<char> buf(size, 'c');
  long best = -1;
  // Best of five batches: the cost of the calls themselves, not of
  // whatever else the machine was doing.
  for (int batch = 0; batch < 5; ++batch) {
    long t0 = NowNs();
    for (long i = 0; i < iters; ++i) {
      if (write(sv[0], buf.data(), size) != static_cast<ssize_t>(size)) return 1;
      if (read(sv[1], buf.data(), size) != static_cast<ssize_t>(size)) return 1;
    }
    long dt = NowNs() - t0;
    if (best < 0 || dt < best) best = dt;
  }
  printf("size=%zu iters=%ld pair_ns=%.1f\n", size, iters,
         static_cast<double>(best) / static_cast<double>(iters));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && strcmp(argv[1], "server") == 0) return Server(atoi(argv[2]));
  if (argc == 6 && strcmp(argv[1], "client") == 0) {
    return Client(argv[2], atoi(argv[3]), static_cast<size_t>(atol(argv[4])), atol(argv[5]));
  }
  if (argc == 3 && strcmp(argv[1], "sink") == 0) return Sink(atoi(argv[2]));
  if (argc == 6 && strcmp(argv[1], "stream") == 0) {
    return Stream(argv[2], atoi(argv[3]), static_cast<size_t>(atol(argv[4])), atof(argv[5]));
  }
  if (argc == 4 && strcmp(argv[1], "acceptor") == 0) return Acceptor(atoi(argv[2]), atol(argv[3]));
  if (argc == 5 && strcmp(argv[1], "connector") == 0) {
    return Connector(argv[2], atoi(argv[3]), atol(argv[4]));
  }
  if (argc == 4 && strcmp(argv[1], "calls") == 0) {
    return Calls(static_cast<size_t>(atol(argv[2])), atol(argv[3]));
  }
  fprintf(stderr,
          "usage: pingpong server PORT | client HOST PORT SIZE ITERS | sink PORT |"
          " stream HOST PORT SIZE SECONDS | acceptor PORT N | connector HOST PORT N |"
          " calls SIZE ITERS\n");
  return 2;
}

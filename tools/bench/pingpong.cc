// A plain POSIX socket ping-pong program, used unchanged over every transport
// (kernel TCP, Unix-domain sockets, doorway). Nothing in it knows about
// doorway.
//
// PORT is a TCP port on 127.0.0.1, or, if it contains a '/', the path of a
// Unix-domain stream socket (HOST is then ignored): the same code, another
// address family.
//
//   pingpong server PORT                    echo one connection, then exit
//   pingpong client HOST PORT SIZE ITERS [GAP_NS]
//                                           print RTT statistics; with GAP_NS,
//                                           wait that long (busy, so that the
//                                           gap is exact) between round trips
//   pingpong sink PORT [READSIZE]           accept one connection, read to EOF
//                                           (READSIZE bytes per read, default
//                                           1 MiB), print the throughput
//   pingpong stream HOST PORT SIZE SECONDS  write SIZE-byte chunks for SECONDS
//   pingpong acceptor PORT N                accept and close N connections
//   pingpong connector HOST PORT N          connect+close N times, print rate
//   pingpong idleserver PORT N              accept N connections, echo on all
//                                           of them with one poll() loop until
//                                           every one is closed
//   pingpong idleclient HOST PORT N         open N connections, one 64 B round
//                                           trip on each, print "idle", then
//                                           poll() them (and stdin) until stdin
//                                           closes
//   pingpong calls SIZE ITERS               per-call cost of write+read on a
//                                           socketpair in one thread (the
//                                           interposition overhead, without
//                                           scheduler noise)
//   pingpong selfpair SIZE ITERS            the same over a loopback TCP
//                                           connection whose two ends are in
//                                           this process (accelerated under
//                                           doorway: the data path's per-call
//                                           cost, e.g. under callgrind)
//
// The client sends SIZE bytes, waits for the SIZE-byte echo, ITERS times
// (after ITERS/10 warm-up rounds), and prints one line:
//   size=64 iters=100000 p50_ns=... p99_ns=... mean_ns=... min_ns=... cpu_ns=...
// cpu_ns, printed by every side that moves data, is the process's CPU time
// over the measured part only (not start-up): the client's over its ITERS
// timed rounds, the server's, sink's and acceptor's from their first byte or
// connection to the end.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "tools/bench/io_util.h"

namespace {

using doorway::bench::CpuNs;
using doorway::bench::NowNs;
using doorway::bench::ReadFull;
using doorway::bench::WriteFull;

struct Addr {
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family = AF_INET;
};

Addr MakeAddr(const char* host, const char* port) {
  Addr a;
  if (strchr(port, '/') != nullptr) {
    auto* un = reinterpret_cast<sockaddr_un*>(&a.ss);
    if (strlen(port) >= sizeof(un->sun_path)) {
      fprintf(stderr, "pingpong: socket path too long: %s\n", port);
      exit(2);
    }
    un->sun_family = AF_UNIX;
    strcpy(un->sun_path, port);
    a.len = sizeof(sockaddr_un);
    a.family = AF_UNIX;
    return a;
  }
  auto* in = reinterpret_cast<sockaddr_in*>(&a.ss);
  in->sin_family = AF_INET;
  in->sin_port = htons(static_cast<uint16_t>(atoi(port)));
  if (inet_pton(AF_INET, host, &in->sin_addr) != 1) exit(2);
  a.len = sizeof(sockaddr_in);
  return a;
}

void NoDelay(int fd) {
  int one = 1;
  // Fails harmlessly (EOPNOTSUPP) on a Unix socket.
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int Listener(const char* port) {
  Addr a = MakeAddr("127.0.0.1", port);
  int l = socket(a.family, SOCK_STREAM, 0);
  int one = 1;
  if (a.family == AF_INET) setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (a.family == AF_UNIX) unlink(port);
  // SOMAXCONN (the kernel caps it at net.core.somaxconn): with 128, a
  // connector that ran 128 connections ahead of an acceptor descheduled by
  // other load overflowed kernel TCP's accept queue, and each dropped SYN
  // cost a 1 s retransmission (3 000 connections then ran at ~2 k/s).
  if (bind(l, reinterpret_cast<sockaddr*>(&a.ss), a.len) != 0 || listen(l, SOMAXCONN) != 0) {
    perror("pingpong: bind/listen");
    exit(1);
  }
  printf("listening\n");
  fflush(stdout);
  return l;
}

void Unlisten(int l, const char* port) {
  close(l);
  if (strchr(port, '/') != nullptr) unlink(port);
}

int Dial(const char* host, const char* port) {
  Addr a = MakeAddr(host, port);
  int c = socket(a.family, SOCK_STREAM, 0);
  if (connect(c, reinterpret_cast<sockaddr*>(&a.ss), a.len) != 0) {
    perror("pingpong: connect");
    exit(1);
  }
  return c;
}

int Server(const char* port) {
  int l = Listener(port);
  int c = accept(l, nullptr, nullptr);
  if (c < 0) return 1;
  NoDelay(c);
  std::vector<char> buf(1 << 20);
  long cpu0 = 0;
  for (;;) {
    ssize_t r = read(c, buf.data(), buf.size());
    if (r <= 0) break;
    if (cpu0 == 0) cpu0 = CpuNs();
    if (!WriteFull(c, buf.data(), static_cast<size_t>(r))) break;
  }
  printf("cpu_ns=%ld\n", CpuNs() - cpu0);
  close(c);
  Unlisten(l, port);
  return 0;
}

int Client(const char* host, const char* port, size_t size, long iters, long gap_ns) {
  Addr a = MakeAddr(host, port);
  int c = socket(a.family, SOCK_STREAM, 0);
  for (int tries = 0; connect(c, reinterpret_cast<sockaddr*>(&a.ss), a.len) != 0; ++tries) {
    if (tries > 200) {
      perror("pingpong client: connect");
      return 1;
    }
    close(c);
    c = socket(a.family, SOCK_STREAM, 0);
    usleep(10000);
  }
  NoDelay(c);
  std::vector<char> out(size, 'p'), in(size);
  std::vector<long> rtt;
  rtt.reserve(static_cast<size_t>(iters));
  long warmup = iters / 10;
  long cpu0 = 0;
  for (long i = 0; i < warmup + iters; ++i) {
    if (gap_ns > 0) {
      for (long until = NowNs() + gap_ns; NowNs() < until;) {
      }
    }
    if (i == warmup) cpu0 = CpuNs();
    long t0 = NowNs();
    if (!WriteFull(c, out.data(), size) || !ReadFull(c, in.data(), size)) {
      fprintf(stderr, "pingpong client: connection lost\n");
      return 1;
    }
    if (i >= warmup) rtt.push_back(NowNs() - t0);
  }
  long cpu = CpuNs() - cpu0;
  close(c);
  std::sort(rtt.begin(), rtt.end());
  double sum = 0;
  for (long v : rtt) sum += static_cast<double>(v);
  printf("size=%zu iters=%ld p50_ns=%ld p99_ns=%ld mean_ns=%.0f min_ns=%ld cpu_ns=%ld\n", size,
         iters, rtt[rtt.size() / 2], rtt[rtt.size() * 99 / 100],
         sum / static_cast<double>(rtt.size()), rtt.front(), cpu);
  return 0;
}

int Sink(const char* port, size_t read_size) {
  int l = Listener(port);
  int c = accept(l, nullptr, nullptr);
  std::vector<char> buf(read_size);
  long total = 0, t0 = 0, cpu0 = 0;
  for (;;) {
    ssize_t r = read(c, buf.data(), buf.size());
    if (r <= 0) break;
    if (t0 == 0) {
      t0 = NowNs();
      cpu0 = CpuNs();
    }
    total += r;
  }
  long dt = NowNs() - t0;
  printf("bytes=%ld ns=%ld gbps=%.3f cpu_ns=%ld\n", total, dt,
         static_cast<double>(total) / static_cast<double>(dt), CpuNs() - cpu0);
  close(c);
  Unlisten(l, port);
  return 0;
}

int Stream(const char* host, const char* port, size_t size, double seconds) {
  int c = Dial(host, port);
  std::vector<char> buf(size, 's');
  long cpu0 = CpuNs();
  long end = NowNs() + static_cast<long>(seconds * 1e9);
  while (NowNs() < end) {
    for (int i = 0; i < 16; ++i) {
      if (!WriteFull(c, buf.data(), size)) return 1;
    }
  }
  printf("cpu_ns=%ld\n", CpuNs() - cpu0);
  close(c);
  return 0;
}

int Acceptor(const char* port, long n) {
  int l = Listener(port);
  long cpu0 = 0;
  for (long i = 0; i < n; ++i) {
    int c = accept(l, nullptr, nullptr);
    if (c < 0) return 1;
    if (i == 0) cpu0 = CpuNs();
    close(c);
  }
  printf("cpu_ns=%ld\n", CpuNs() - cpu0);
  Unlisten(l, port);
  return 0;
}

int Connector(const char* host, const char* port, long n) {
  long t0 = NowNs(), cpu0 = CpuNs();
  for (long i = 0; i < n; ++i) close(Dial(host, port));
  long dt = NowNs() - t0;
  printf("conns=%ld ns=%ld per_s=%.0f cpu_ns=%ld\n", n, dt,
         static_cast<double>(n) * 1e9 / static_cast<double>(dt), CpuNs() - cpu0);
  return 0;
}

// One poll() loop over every connection: what an event-driven server does
// with many idle clients.
int IdleServer(const char* port, long n) {
  int l = Listener(port);
  std::vector<pollfd> fds;
  for (long i = 0; i < n; ++i) {
    int c = accept(l, nullptr, nullptr);
    if (c < 0) return 1;
    fds.push_back({c, POLLIN, 0});
  }
  Unlisten(l, port);
  char buf[65536];
  while (!fds.empty()) {
    if (poll(fds.data(), fds.size(), -1) < 0) return 1;
    for (size_t i = 0; i < fds.size();) {
      if (fds[i].revents != 0) {
        ssize_t r = read(fds[i].fd, buf, sizeof buf);
        if (r <= 0 || !WriteFull(fds[i].fd, buf, static_cast<size_t>(r))) {
          close(fds[i].fd);
          fds[i] = fds.back();
          fds.pop_back();
          continue;
        }
      }
      ++i;
    }
  }
  return 0;
}

int IdleClient(const char* host, const char* port, long n) {
  std::vector<int> conns;
  char msg[64] = {'i'}, in[64];
  // All connected first: the server accepts all n before it echoes.
  for (long i = 0; i < n; ++i) conns.push_back(Dial(host, port));
  for (int c : conns) {
    if (!WriteFull(c, msg, sizeof msg) || !ReadFull(c, in, sizeof in)) return 1;
  }
  printf("idle\n");
  fflush(stdout);
  // Wait on every connection and on stdin (closed by the driver to end the
  // run) in one poll(), as an event-driven client would.
  std::vector<pollfd> fds;
  for (int c : conns) fds.push_back({c, POLLIN, 0});
  fds.push_back({0, POLLIN, 0});
  for (;;) {
    if (poll(fds.data(), fds.size(), -1) < 0) return 1;
    if (fds.back().revents != 0) break;
    for (size_t i = 0; i + 1 < fds.size(); ++i) {
      if (fds[i].revents != 0) {
        fprintf(stderr, "pingpong idleclient: unexpected event on an idle connection\n");
        return 1;
      }
    }
  }
  for (int c : conns) close(c);
  return 0;
}

// A loopback TCP connection with both ends in this process (accelerated
// under doorway: connect does not wait for the accept).
bool TcpPair(int sv[2]) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (l < 0 || bind(l, reinterpret_cast<sockaddr*>(&a), len) != 0 || listen(l, 1) != 0 ||
      getsockname(l, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    return false;
  }
  sv[0] = socket(AF_INET, SOCK_STREAM, 0);
  if (sv[0] < 0 || connect(sv[0], reinterpret_cast<sockaddr*>(&a), len) != 0) return false;
  sv[1] = accept(l, nullptr, nullptr);
  close(l);
  if (sv[1] < 0) return false;
  NoDelay(sv[0]);
  NoDelay(sv[1]);
  return true;
}

int Calls(size_t size, long iters, bool tcp) {
  int sv[2];
  if (tcp ? !TcpPair(sv) : socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 1;
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
  if (argc == 3 && strcmp(argv[1], "server") == 0) return Server(argv[2]);
  if ((argc == 6 || argc == 7) && strcmp(argv[1], "client") == 0) {
    return Client(argv[2], argv[3], static_cast<size_t>(atol(argv[4])), atol(argv[5]),
                  argc == 7 ? atol(argv[6]) : 0);
  }
  if ((argc == 3 || argc == 4) && strcmp(argv[1], "sink") == 0) {
    return Sink(argv[2], argc == 4 ? static_cast<size_t>(atol(argv[3])) : size_t{1} << 20);
  }
  if (argc == 6 && strcmp(argv[1], "stream") == 0) {
    return Stream(argv[2], argv[3], static_cast<size_t>(atol(argv[4])), atof(argv[5]));
  }
  if (argc == 4 && strcmp(argv[1], "acceptor") == 0) return Acceptor(argv[2], atol(argv[3]));
  if (argc == 5 && strcmp(argv[1], "connector") == 0) {
    return Connector(argv[2], argv[3], atol(argv[4]));
  }
  if (argc == 4 && strcmp(argv[1], "idleserver") == 0) return IdleServer(argv[2], atol(argv[3]));
  if (argc == 5 && strcmp(argv[1], "idleclient") == 0) {
    return IdleClient(argv[2], argv[3], atol(argv[4]));
  }
  if (argc == 4 && strcmp(argv[1], "calls") == 0) {
    return Calls(static_cast<size_t>(atol(argv[2])), atol(argv[3]), false);
  }
  if (argc == 4 && strcmp(argv[1], "selfpair") == 0) {
    return Calls(static_cast<size_t>(atol(argv[2])), atol(argv[3]), true);
  }
  fprintf(
      stderr,
      "usage: pingpong server PORT | client HOST PORT SIZE ITERS [GAP_NS] | sink PORT [READSIZE] |"
      " stream HOST PORT SIZE SECONDS | acceptor PORT N | connector HOST PORT N |"
      " idleserver PORT N | idleclient HOST PORT N | calls SIZE ITERS | selfpair SIZE ITERS\n");
  return 2;
}

// epoll_wait cost against the number of registered idle connections
// (DESIGN §7: "epoll_wait costs O(ready events), not O(registered fds")).
// A plain POSIX program, run unchanged over kernel TCP and under doorway by
// tools/bench/epoll_scale_bench.py.
//
//   epoll_scale server PORT
//   epoll_scale client PORT IDLE ITERS [rt]
//
// The client opens IDLE + 1 connections; the server accepts them in an
// epoll loop (non-blocking listener in the set, each accepted connection
// added with EPOLLIN) and, once all are registered, sends one byte on the
// last one. The client reports that interval as the set-up time (with
// `rt`, each new connection makes one round trip before the next connect,
// so the server's epoll_wait runs once per connection with all the earlier
// ones registered: the pattern of a server whose clients arrive one by
// one). Then the
// client does ITERS one-byte round trips on that last connection (blocking
// write/read) while the IDLE others stay registered and silent; the server
// answers from its epoll loop. The client prints:
//   setup_s=<s> rtt_median_us=<us> rtt_mean_us=<us> server_cpu_us_per_rt=<us>
// server_cpu_us_per_rt is the server's CPU time (all of it, its spin
// included) during the round trips divided by their number, sent back by
// the server when the client closes.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "tools/bench/io_util.h"

namespace {

using doorway::bench::CpuNs;
using doorway::bench::NowNs;
using doorway::bench::ReadFull;
using doorway::bench::WriteFull;

[[noreturn]] void Die(const char* what) {
  perror(what);
  exit(1);
}

void RaiseFdLimit() {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) == 0) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
  }
}

sockaddr_in Loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

int Server(int port) {
  int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a = Loopback(port);
  if (bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) Die("bind");
  if (listen(l, 4096) != 0) Die("listen");
  printf("listening\n");
  fflush(stdout);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = l;
  if (epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev) != 0) Die("epoll_ctl listener");
  // The client tells how many connections to expect in its first byte
  // stream: 4 bytes on the first connection (read once all are there).
  std::vector<int> conns;
  epoll_event out[64];
  int expected = -1;
  long cpu0 = 0;
  long rounds = 0;
  for (;;) {
    int n = epoll_wait(ep, out, 64, -1);
    if (n < 0) Die("epoll_wait");
    for (int i = 0; i < n; ++i) {
      int fd = out[i].data.fd;
      if (fd == l) {
        for (;;) {
          int c = accept4(l, nullptr, nullptr, SOCK_NONBLOCK);
          if (c < 0) break;
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          ev.events = EPOLLIN;
          ev.data.fd = c;
          if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) != 0) Die("epoll_ctl conn");
          conns.push_back(c);
        }
        continue;
      }
      char buf[64];
      ssize_t r = read(fd, buf, sizeof(buf));
      if (r == 0) {
        // The active connection closed: report the CPU time and stop.
        long per = rounds > 0 ? (CpuNs() - cpu0) / rounds : 0;
        int first = conns.empty() ? -1 : conns.front();
        if (first >= 0 && first != fd) {
          int fl = fcntl(first, F_GETFL);
          fcntl(first, F_SETFL, fl & ~O_NONBLOCK);
          WriteFull(first, reinterpret_cast<const char*>(&per), sizeof(per));
        }
        return 0;
      }
      if (r < 0) continue;  // EAGAIN: nothing after all
      if (expected < 0 && r == 4 && fd == conns.front()) {
        memcpy(&expected, buf, 4);
      } else {
        ++rounds;
        if (!WriteFull(fd, buf, static_cast<size_t>(r))) Die("write");
        continue;
      }
    }
    if (expected > 0 && static_cast<int>(conns.size()) == expected && cpu0 == 0) {
      cpu0 = CpuNs();
      rounds = 0;  // the set-up round trips do not count
      char go = 'g';
      if (!WriteFull(conns.back(), &go, 1)) Die("write go");
    }
  }
}

int Client(int port, int idle, int iters, bool rt_each) {
  if (idle < 1 || iters < 10) {
    fprintf(stderr, "IDLE >= 1 (the first connection also carries the set-up), ITERS >= 10\n");
    return 2;
  }
  const int total = idle + 1;
  std::vector<int> conns;
  sockaddr_in a = Loopback(port);
  long t0 = NowNs();
  for (int i = 0; i < total; ++i) {
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0) Die("socket");
    if (connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) Die("connect");
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    conns.push_back(c);
    if (i == 0) {
      if (!WriteFull(c, reinterpret_cast<const char*>(&total), 4)) Die("write count");
    } else if (rt_each) {
      char h = 'h';
      if (!WriteFull(c, &h, 1) || !ReadFull(c, &h, 1)) Die("set-up round trip");
    }
  }
  int active = conns.back();
  char b = 0;
  if (!ReadFull(active, &b, 1)) Die("read go");
  long setup = NowNs() - t0;
  std::vector<long> rtt;
  rtt.reserve(static_cast<size_t>(iters));
  const int warmup = iters / 10;
  for (int i = 0; i < warmup + iters; ++i) {
    long s = NowNs();
    char x = 'p';
    if (!WriteFull(active, &x, 1) || !ReadFull(active, &x, 1)) Die("round trip");
    if (i >= warmup) rtt.push_back(NowNs() - s);
  }
  close(active);
  long per = 0;
  if (!ReadFull(conns.front(), reinterpret_cast<char*>(&per), sizeof(per))) Die("read cpu");
  std::sort(rtt.begin(), rtt.end());
  double sum = 0;
  for (long v : rtt) sum += static_cast<double>(v);
  printf("setup_s=%.3f rtt_median_us=%.2f rtt_mean_us=%.2f server_cpu_us_per_rt=%.2f\n",
         static_cast<double>(setup) / 1e9, static_cast<double>(rtt[rtt.size() / 2]) / 1e3,
         sum / static_cast<double>(rtt.size()) / 1e3, static_cast<double>(per) / 1e3);
  for (size_t i = 0; i + 1 < conns.size(); ++i) close(conns[i]);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  RaiseFdLimit();
  if (argc == 3 && strcmp(argv[1], "server") == 0) return Server(atoi(argv[2]));
  if ((argc == 5 || argc == 6) && strcmp(argv[1], "client") == 0) {
    return Client(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]),
                  argc == 6 && strcmp(argv[5], "rt") == 0);
  }
  fprintf(stderr, "usage: %s server PORT | client PORT IDLE ITERS [rt]\n", argv[0]);
  return 2;
}

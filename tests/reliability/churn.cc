// Load and churn programs for the reliability tests, run under doorway
// (plain POSIX socket programs; doorway is what the test preloads).
//
//   churn server PORT [NOFILE]
//       single-threaded epoll echo server on 127.0.0.1:PORT, non-blocking;
//       RLIMIT_NOFILE raised as far as allowed, or set to NOFILE if given.
//       Prints "listening"; exits 0 on SIGTERM after closing everything.
//       CHURN_WORKERS=W: W such processes share the listener (pre-forked
//       after listen, as nginx's workers); SIGTERM to the first stops all.
//       One process holds at most (hard RLIMIT_NOFILE - its own fds) / 2
//       accelerated connections (two descriptors each).
//   churn cycles PORT THREADS TOTAL MAXBYTES
//       THREADS threads share TOTAL connect/write/read-back/close cycles of
//       1..MAXBYTES random bytes each; any error or mismatch exits 1. Prints
//       "cycles N accelerated A seconds S" and its own fds and RssAnon after
//       the first 1000 cycles and at the end.
//   churn hold PORT N
//       opens N concurrent connections (RLIMIT_NOFILE raised as needed),
//       one round trip on each, a second round trip on all while all are
//       open; prints what it reached and its memory; then closes them.
//   churn burst PORT N
//       N connections, one byte written on each, closed half a second later.
//   churn lowfd PORT
//       in forked children, RLIMIT_NOFILE set just above the fds in use
//       (0..7 spare): socket+connect+round trip must work (accelerated or
//       TCP) or fail with EMFILE, never crash; prints one line per child.
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "abi/doorway.h"

namespace {

double Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int CountFds() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n - 1;  // the directory's own fd
}

long StatusKb(const char* key) {
  FILE* f = fopen("/proc/self/status", "r");
  if (f == nullptr) return -1;
  char line[256];
  long v = -1;
  size_t n = strlen(key);
  while (fgets(line, sizeof(line), f)) {
    if (strncmp(line, key, n) == 0 && line[n] == ':') v = atol(line + n + 1);
  }
  fclose(f);
  return v;
}

// Raises the soft limit (and the hard one if we may) to at least want.
rlim_t RaiseNofile(rlim_t want) {
  rlimit r;
  getrlimit(RLIMIT_NOFILE, &r);
  if (r.rlim_cur >= want) return r.rlim_cur;
  rlimit n{want, r.rlim_max > want ? r.rlim_max : want};
  if (setrlimit(RLIMIT_NOFILE, &n) == 0) return want;
  r.rlim_cur = r.rlim_max;
  setrlimit(RLIMIT_NOFILE, &r);
  getrlimit(RLIMIT_NOFILE, &r);
  return r.rlim_cur;
}

bool Accelerated(int fd) {
  using Fn = int (*)(int, doorway_socket_info*);
  static Fn fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "doorway_fd_info"));
  doorway_socket_info info{};
  return fn != nullptr && fn(fd, &info) == 0 && info.accelerated == 1;
}

int Connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

// Writes n bytes and reads them back. 0 or -errno (-EPROTO: wrong bytes).
int RoundTrip(int fd, const char* buf, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t w = write(fd, buf + done, n - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return w < 0 ? -errno : -EPIPE;
    done += static_cast<size_t>(w);
  }
  std::string got;
  got.resize(n);
  done = 0;
  while (done < n) {
    ssize_t r = read(fd, &got[done], n - done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return r < 0 ? -errno : -ECONNRESET;
    done += static_cast<size_t>(r);
  }
  return memcmp(got.data(), buf, n) == 0 ? 0 : -EPROTO;
}

// ---------------------------------------------------------------- server

volatile sig_atomic_t g_stop = 0;

int Server(int port, long nofile) {
  if (nofile > 0) {
    rlimit r{static_cast<rlim_t>(nofile), static_cast<rlim_t>(nofile)};
    if (setrlimit(RLIMIT_NOFILE, &r) != 0) perror("setrlimit");
  } else {
    RaiseNofile(1 << 20);
  }
  struct sigaction sa {};
  sa.sa_handler = [](int) { g_stop = 1; };
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(l, 4096) != 0) {
    perror("listen");
    return 1;
  }
  std::vector<pid_t> workers;
  const char* w = getenv("CHURN_WORKERS");
  for (int k = 1; w != nullptr && k < atoi(w); ++k) {
    pid_t pid = fork();
    if (pid == 0) {
      workers.clear();
      break;
    }
    if (pid > 0) workers.push_back(pid);
  }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = l;
  epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
  printf("listening\n");
  fflush(stdout);
  std::unordered_map<int, std::string> pending;  // unsent echo bytes
  long accepted = 0, accept_errors = 0;
  std::vector<epoll_event> evs(256);
  std::vector<char> buf(1 << 16);
  auto drop = [&](int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
    close(fd);
    pending.erase(fd);
  };
  while (!g_stop) {
    int n = epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), 200);
    for (int i = 0; i < n; ++i) {
      int fd = evs[i].data.fd;
      if (fd == l) {
        for (int k = 0; k < 64; ++k) {
          int c = accept4(l, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) {
            if (errno != EAGAIN && errno != EINTR) {
              // EMFILE/ENFILE: the kernel's answer; back off briefly.
              ++accept_errors;
              usleep(1000);
            }
            break;
          }
          ++accepted;
          epoll_event ce{};
          ce.events = EPOLLIN | EPOLLRDHUP;
          ce.data.fd = c;
          if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce) != 0) {
            close(c);
            continue;
          }
          pending[c];
        }
        continue;
      }
      std::string& out = pending[fd];
      bool dead = false;
      if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
        for (;;) {
          ssize_t r = read(fd, buf.data(), buf.size());
          if (r > 0) {
            out.append(buf.data(), static_cast<size_t>(r));
            if (out.size() > (8u << 20)) {
              dead = true;
              break;
            }
            continue;
          }
          if (r == 0 || (errno != EAGAIN && errno != EINTR)) dead = true;
          break;
        }
      }
      while (!out.empty()) {
        ssize_t w = write(fd, out.data(), out.size());
        if (w > 0) {
          out.erase(0, static_cast<size_t>(w));
          continue;
        }
        if (w < 0 && errno == EAGAIN) break;
        dead = true;
        break;
      }
      if (dead) {
        drop(fd);
        continue;
      }
      epoll_event ce{};
      ce.events = EPOLLIN | EPOLLRDHUP | (out.empty() ? 0u : static_cast<uint32_t>(EPOLLOUT));
      ce.data.fd = fd;
      epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce);
    }
  }
  std::vector<int> fds;
  for (auto& [fd, _] : pending) fds.push_back(fd);
  for (int fd : fds) drop(fd);
  close(ep);
  close(l);
  fprintf(stderr, "server: %ld accepted, %ld accept errors\n", accepted, accept_errors);
  int status = 0;
  for (pid_t pid : workers) {
    kill(pid, SIGTERM);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) status = 1;
  }
  return status;
}

// ---------------------------------------------------------------- clients

int Cycles(int port, int threads, long total, int maxbytes) {
  signal(SIGPIPE, SIG_IGN);
  std::atomic<long> next{0}, done{0}, accel{0};
  std::atomic<bool> failed{false};
  std::atomic<int> warm_fds{-1};
  std::atomic<long> warm_rss{-1};
  const long warm_at = total > 2000 ? 1000 : total / 2;
  double start = Now();
  auto worker = [&](unsigned seed) {
    std::string block(static_cast<size_t>(maxbytes), '\0');
    for (auto& c : block) c = static_cast<char>(rand_r(&seed));
    while (!failed.load()) {
      long i = next.fetch_add(1);
      if (i >= total) break;
      if (i == warm_at) {
        warm_fds = CountFds();
        warm_rss = StatusKb("RssAnon");
      }
      int fd = Connect(port);
      if (fd < 0) {
        fprintf(stderr, "cycle %ld: connect: %s\n", i, strerror(-fd));
        failed = true;
        break;
      }
      if (Accelerated(fd)) accel.fetch_add(1, std::memory_order_relaxed);
      size_t n = 1 + rand_r(&seed) % static_cast<unsigned>(maxbytes);
      int rc = RoundTrip(fd, block.data() + (block.size() - n), n);
      close(fd);
      if (rc != 0) {
        fprintf(stderr, "cycle %ld: round trip of %zu bytes: %s\n", i, n, strerror(-rc));
        failed = true;
        break;
      }
      done.fetch_add(1, std::memory_order_relaxed);
    }
  };
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) ts.emplace_back(worker, 1234u + t);
  for (auto& t : ts) t.join();
  double secs = Now() - start;
  printf("cycles %ld accelerated %ld seconds %.1f rate %.0f/s\n", done.load(), accel.load(), secs,
         done.load() / secs);
  printf("client fds after warm-up %d end %d; RssAnon kB after warm-up %ld end %ld\n",
         warm_fds.load(), CountFds(), warm_rss.load(), StatusKb("RssAnon"));
  return failed.load() || done.load() != total ? 1 : 0;
}

int Hold(int port, long n) {
  signal(SIGPIPE, SIG_IGN);
  // Two descriptors per accelerated connection (the door socket and the
  // segment's memfd), plus slack.
  rlim_t lim = RaiseNofile(static_cast<rlim_t>(2 * n + 200));
  // Where the limit cannot be raised that far (no CAP_SYS_RESOURCE), hold
  // what fits; the server (same limit) then needs as many.
  long fit = (static_cast<long>(lim) - 100) / 2;
  if (fit < n) {
    printf("RLIMIT_NOFILE %lu: holding %ld instead of %ld\n", static_cast<unsigned long>(lim), fit,
           n);
    n = fit;
  }
  long rss0 = StatusKb("RssAnon"), shm0 = StatusKb("RssShmem");
  std::vector<int> fds;
  fds.reserve(static_cast<size_t>(n));
  long accel = 0;
  double start = Now();
  int err = 0;
  for (long i = 0; i < n; ++i) {
    int fd = Connect(port);
    if (fd < 0) {
      err = -fd;
      break;
    }
    char c = static_cast<char>(i);
    if (int rc = RoundTrip(fd, &c, 1); rc != 0) {
      fprintf(stderr, "connection %ld: first round trip: %s\n", i, strerror(-rc));
      return 1;
    }
    if (Accelerated(fd)) ++accel;
    fds.push_back(fd);
  }
  double setup = Now() - start;
  // All open at once: every one still works.
  for (size_t i = 0; i < fds.size(); ++i) {
    char msg[16];
    int len = snprintf(msg, sizeof(msg), "%zu", i);
    if (int rc = RoundTrip(fds[i], msg, static_cast<size_t>(len)); rc != 0) {
      fprintf(stderr, "connection %zu: second round trip: %s\n", i, strerror(-rc));
      return 1;
    }
  }
  printf("held %zu connections (%ld accelerated) of %ld asked; soft RLIMIT_NOFILE %lu; %s\n",
         fds.size(), accel, n, static_cast<unsigned long>(lim), err ? strerror(err) : "no error");
  printf("set up in %.2f s; client RssAnon +%ld kB, RssShmem +%ld kB, fds %d\n", setup,
         StatusKb("RssAnon") - rss0, StatusKb("RssShmem") - shm0, CountFds());
  fflush(stdout);
  // Let the test look at the server while everything is open.
  if (const char* f = getenv("CHURN_HOLD_FILE")) {
    FILE* h = fopen(f, "w");
    if (h) fclose(h);
    for (int i = 0; i < 600 && access(f, F_OK) == 0; ++i) usleep(50'000);
  }
  for (int fd : fds) close(fd);
  return fds.empty() ? 1 : 0;
}

int Burst(int port, int n) {
  signal(SIGPIPE, SIG_IGN);
  std::vector<int> fds;
  for (int i = 0; i < n; ++i) {
    int fd = Connect(port);
    if (fd < 0) break;
    if (write(fd, "b", 1) != 1) break;
    fds.push_back(fd);
  }
  usleep(500'000);
  // Served (the echo is there) or waiting to be accepted (nothing yet):
  // never reset, as a TCP connection in the backlog is not.
  int echoed = 0, waiting = 0, reset = 0;
  for (int fd : fds) {
    char c;
    ssize_t r = recv(fd, &c, 1, MSG_DONTWAIT);
    if (r == 1) {
      ++echoed;
    } else if (r < 0 && errno == EAGAIN) {
      ++waiting;
    } else {
      ++reset;
    }
  }
  printf("burst %zu connected: %d echoed, %d waiting, %d reset\n", fds.size(), echoed, waiting,
         reset);
  for (int fd : fds) close(fd);
  return reset == 0 ? 0 : 1;
}

int LowFd(int port) {
  signal(SIGPIPE, SIG_IGN);
  int bad = 0;
  for (int spare = 0; spare < 8; ++spare) {
    pid_t p = fork();
    if (p == 0) {
      // Exactly `spare` free descriptors: the limit just above the highest
      // fd in use, the holes below it filled, then `spare` of those freed.
      int maxfd = 0;
      for (int fd = 0; fd < 1024; ++fd) {
        if (fcntl(fd, F_GETFD) >= 0) maxfd = fd;
      }
      rlimit r{static_cast<rlim_t>(maxfd + 1 + spare), static_cast<rlim_t>(maxfd + 1 + spare)};
      setrlimit(RLIMIT_NOFILE, &r);
      std::vector<int> fill;
      for (int f; (f = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) fill.push_back(f);
      for (int i = 0; i < spare && !fill.empty(); ++i) {
        close(fill.back());
        fill.pop_back();
      }
      int fd = Connect(port);
      if (fd < 0) {
        printf("spare %d: connect: %s\n", spare, strerror(-fd));
        _exit(fd == -EMFILE || fd == -ENFILE ? 0 : 1);
      }
      bool acc = Accelerated(fd);
      int rc = RoundTrip(fd, "ping", 4);
      printf("spare %d: connected (%s), round trip %s\n", spare, acc ? "accelerated" : "TCP",
             rc == 0 ? "ok" : strerror(-rc));
      _exit(rc == 0 ? 0 : 1);
    }
    int st = 0;
    waitpid(p, &st, 0);
    if (WIFSIGNALED(st)) {
      printf("spare %d: child killed by signal %d\n", spare, WTERMSIG(st));
      bad = 1;
    } else if (WEXITSTATUS(st) != 0) {
      bad = 1;
    }
    fflush(stdout);
  }
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc >= 3 && strcmp(argv[1], "server") == 0) {
    return Server(atoi(argv[2]), argc > 3 ? atol(argv[3]) : 0);
  }
  if (argc == 6 && strcmp(argv[1], "cycles") == 0) {
    return Cycles(atoi(argv[2]), atoi(argv[3]), atol(argv[4]), atoi(argv[5]));
  }
  if (argc == 4 && strcmp(argv[1], "hold") == 0) return Hold(atoi(argv[2]), atol(argv[3]));
  if (argc == 3 && strcmp(argv[1], "lowfd") == 0) return LowFd(atoi(argv[2]));
  if (argc == 4 && strcmp(argv[1], "burst") == 0) return Burst(atoi(argv[2]), atoi(argv[3]));
  fprintf(stderr, "usage: see churn.cc\n");
  return 2;
}

// Client and server for memfault_test.sh (plain POSIX socket programs; the
// test preloads doorway and the fault injector, memfault.cc).
//
//   memfault_peer server PORT
//       thread-per-connection echo server on 127.0.0.1:PORT, blocking
//       accept. Prints "listening", then one line per accept: "accepted
//       accelerated|tcp" or "accept error ENAME" (it then retries after
//       10 ms, as a server does). Exits 0 on SIGTERM.
//   memfault_peer client PORT COUNT BYTES
//       COUNT connections one after another, each a round trip of BYTES
//       random bytes (checked) then close. One line per connection:
//       "conn I accelerated ok", "conn I tcp ok", "conn I connect error
//       ENAME" or "conn I round trip error ENAME"/"... wrong bytes". Exit 0
//       if every round trip that started was correct, else 1.
//       MEMFAULT_PEER_AS=1: the first connection is made with RLIMIT_AS
//       just 1 MiB above the address space in use (a segment needs 2 MiB),
//       the others after the limit is restored.
//   memfault_peer hold PORT COUNT BYTES
//       COUNT connections open at once, then a round trip on each; lines
//       as for client. With MEMFAULT_PEER_HOLD_FILE set, creates that file
//       and keeps the connections open until it is removed (at most 30 s).
//   memfault_peer server PORT HIGHFD
//       as server, after opening /dev/null up to fd HIGHFD, so that
//       accepted connections get fd numbers in a new page of doorway's fd
//       table.
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "abi/doorway.h"

namespace {

bool Accelerated(int fd) {
  using Fn = int (*)(int, doorway_socket_info*);
  static Fn fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "doorway_fd_info"));
  doorway_socket_info info{};
  return fn != nullptr && fn(fd, &info) == 0 && info.accelerated == 1;
}

const char* Name(int e) {
  static char buf[32];
  const char* n = strerrorname_np(e);
  if (n != nullptr) return n;
  snprintf(buf, sizeof(buf), "E%d", e);
  return buf;
}

sockaddr_in Loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

void Echo(int fd) {
  char buf[65536];
  for (;;) {
    ssize_t r = read(fd, buf, sizeof(buf));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    for (ssize_t off = 0; off < r;) {
      ssize_t w = write(fd, buf + off, static_cast<size_t>(r - off));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        close(fd);
        return;
      }
      off += w;
    }
  }
  close(fd);
}

int Server(int port, int high) {
  signal(SIGPIPE, SIG_IGN);
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a = Loopback(port);
  if (l < 0 || bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(l, 128) != 0) {
    printf("listen error %s\n", Name(errno));
    return 1;
  }
  // After the listener, so that only accepted connections land up there.
  for (int fd = high > 0 ? open("/dev/null", O_RDONLY) : -1; fd >= 0 && fd < high;) {
    fd = open("/dev/null", O_RDONLY);
  }
  printf("listening\n");
  fflush(stdout);
  for (;;) {
    int c = accept(l, nullptr, nullptr);
    if (c < 0) {
      if (errno == EINTR) continue;
      printf("accept error %s\n", Name(errno));
      fflush(stdout);
      usleep(10000);
      continue;
    }
    printf("accepted %s\n", Accelerated(c) ? "accelerated" : "tcp");
    fflush(stdout);
    std::thread(Echo, c).detach();
  }
}

// 0, or -errno (-EPROTO: wrong bytes came back). Up to 64 KiB are written
// before reading (no thread: under a tight RLIMIT_AS a thread's stack
// cannot be mapped); more by a writer thread.
int RoundTrip(int fd, const std::string& out) {
  auto write_all = [&] {
    for (size_t off = 0; off < out.size();) {
      ssize_t w = write(fd, out.data() + off, out.size() - off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break;
      off += static_cast<size_t>(w);
    }
  };
  std::thread writer;
  if (out.size() <= 65536) {
    write_all();
  } else {
    writer = std::thread(write_all);
  }
  std::string in(out.size(), '\0');
  int rc = 0;
  for (size_t off = 0; off < in.size();) {
    ssize_t r = read(fd, &in[off], in.size() - off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      rc = r < 0 ? -errno : -ECONNRESET;
      shutdown(fd, SHUT_RDWR);  // unblocks the writer
      break;
    }
    off += static_cast<size_t>(r);
  }
  if (writer.joinable()) writer.join();
  if (rc == 0 && in != out) rc = -EPROTO;
  return rc;
}

long VmSizeKb() {
  FILE* f = fopen("/proc/self/status", "r");
  if (f == nullptr) return -1;
  char line[256];
  long v = -1;
  while (fgets(line, sizeof(line), f)) {
    if (strncmp(line, "VmSize:", 7) == 0) v = atol(line + 7);
  }
  fclose(f);
  return v;
}

int Dial(int i, int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    printf("conn %d socket error %s\n", i, Name(errno));
    return -1;
  }
  sockaddr_in a = Loopback(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    printf("conn %d connect error %s\n", i, Name(errno));
    close(fd);
    return -1;
  }
  return fd;
}

// One round trip on fd; prints the connection's line. False on an error.
bool Check(int i, int fd, std::mt19937_64& rng, size_t bytes) {
  std::string out(bytes, '\0');
  for (auto& ch : out) ch = static_cast<char>(rng());
  bool acc = Accelerated(fd);
  int rc = RoundTrip(fd, out);
  if (rc == -EPROTO) {
    printf("conn %d %s wrong bytes\n", i, acc ? "accelerated" : "tcp");
  } else if (rc != 0) {
    printf("conn %d %s round trip error %s\n", i, acc ? "accelerated" : "tcp", Name(-rc));
  } else {
    printf("conn %d %s ok\n", i, acc ? "accelerated" : "tcp");
  }
  return rc == 0;
}

int Client(int port, int count, size_t bytes, bool hold) {
  signal(SIGPIPE, SIG_IGN);
  std::mt19937_64 rng(static_cast<uint64_t>(getpid()));
  const char* as = getenv("MEMFAULT_PEER_AS");
  rlimit saved{};
  getrlimit(RLIMIT_AS, &saved);
  int status = 0;
  std::vector<int> fds;
  for (int i = 1; i <= count; ++i) {
    bool limit = as != nullptr && strcmp(as, "1") == 0 && i == 1;
    if (limit) {
      rlimit r = saved;
      r.rlim_cur = static_cast<rlim_t>(VmSizeKb() + 1024) * 1024;
      if (setrlimit(RLIMIT_AS, &r) != 0) {
        printf("setrlimit error %s\n", Name(errno));
        return 1;
      }
    }
    int fd = Dial(i, port);
    if (fd >= 0 && !hold && !Check(i, fd, rng, bytes)) status = 1;
    if (limit) setrlimit(RLIMIT_AS, &saved);
    if (hold) {
      fds.push_back(fd);
    } else if (fd >= 0) {
      close(fd);
    }
  }
  for (size_t k = 0; k < fds.size(); ++k) {
    if (fds[k] >= 0 && !Check(static_cast<int>(k) + 1, fds[k], rng, bytes)) status = 1;
  }
  // MEMFAULT_PEER_HOLD_FILE: created once all are checked; the
  // connections stay open until the test removes it (at most 30 s).
  const char* hold_file = getenv("MEMFAULT_PEER_HOLD_FILE");
  if (hold && hold_file != nullptr) {
    int f = open(hold_file, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (f >= 0) close(f);
    for (int k = 0; k < 3000 && access(hold_file, F_OK) == 0; ++k) usleep(10000);
  }
  for (int fd : fds) {
    if (fd >= 0) close(fd);
  }
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if ((argc == 3 || argc == 4) && strcmp(argv[1], "server") == 0) {
    return Server(atoi(argv[2]), argc == 4 ? atoi(argv[3]) : 0);
  }
  if (argc == 5 && (strcmp(argv[1], "client") == 0 || strcmp(argv[1], "hold") == 0)) {
    return Client(atoi(argv[2]), atoi(argv[3]), static_cast<size_t>(atol(argv[4])),
                  strcmp(argv[1], "hold") == 0);
  }
  fprintf(stderr, "usage: memfault_peer server PORT [HIGHFD] | client|hold PORT COUNT BYTES\n");
  return 2;
}

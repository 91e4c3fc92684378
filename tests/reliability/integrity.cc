// A large transfer through one connection (run under doorway), as hostile
// to the data path as an ordinary program can be: random chunk sizes and
// call kinds (write/send/writev/sendmsg; read/recv/readv/recvmsg,
// MSG_WAITALL), random MSG_PEEKs checked against the bytes that follow, and a
// signal storm (an interval timer every ~100 µs in both processes; the
// sender's handler has SA_RESTART, the receiver's does not, so EINTR and
// restarts both happen). The bytes are a seeded pseudo-random stream: the
// receiver checks every byte as it arrives; with "tee" each side also copies
// what it sent/received to stdout, for sha256sum.
//
//   integrity recv PORT BYTES SEED [tee]   listen, accept one, receive, verify
//   integrity send PORT BYTES SEED [tee]   connect, send
// Each reports on stderr: bytes, signals taken, EINTRs, peeks.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

// The stream: byte i is a function of (seed, i / 8), so that any offset can
// be produced without replaying the stream.
inline uint64_t StreamWord(uint64_t seed, uint64_t w) {
  uint64_t z = seed + w * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
// Bytes [off, off + n) of the stream (little-endian words).
void Fill(uint64_t seed, uint64_t off, unsigned char* p, size_t n) {
  while (n > 0) {
    uint64_t word = StreamWord(seed, off >> 3);
    unsigned char bytes[8];
    memcpy(bytes, &word, 8);
    size_t skip = off & 7;
    size_t take = 8 - skip < n ? 8 - skip : n;
    memcpy(p, bytes + skip, take);
    p += take;
    off += take;
    n -= take;
  }
}

// Copies what was sent or received to stdout (for sha256sum), if asked.
bool g_tee = false;
void Tee(const unsigned char* p, size_t n) {
  if (!g_tee) return;
  while (n > 0) {
    ssize_t w = write(1, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      perror("tee");
      exit(1);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

struct Rng {
  uint64_t s;
  uint64_t Next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  size_t Size() {  // mostly small, sometimes large
    switch (Next() % 4) {
      case 0:
        return 1 + Next() % 64;
      case 1:
        return 1 + Next() % 4096;
      case 2:
        return 1 + Next() % 65536;
      default:
        return 1 + Next() % (1 << 20);
    }
  }
};

volatile sig_atomic_t g_signals = 0;
void OnAlarm(int) { g_signals = g_signals + 1; }

void SignalStorm(bool restart) {
  struct sigaction sa {};
  sa.sa_handler = OnAlarm;
  sa.sa_flags = restart ? SA_RESTART : 0;
  sigaction(SIGALRM, &sa, nullptr);
  itimerval it{{0, 100}, {0, 100}};
  setitimer(ITIMER_REAL, &it, nullptr);
}
void StopStorm() {
  itimerval it{};
  setitimer(ITIMER_REAL, &it, nullptr);
}

sockaddr_in Addr(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

int Send(int port, uint64_t total, uint64_t seed) {
  signal(SIGPIPE, SIG_IGN);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a = Addr(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    perror("connect");
    return 1;
  }
  SignalStorm(true);
  Rng rng{seed * 7 + 1};
  std::vector<unsigned char> buf(1 << 20);
  uint64_t off = 0, eintr = 0;
  while (off < total) {
    size_t n = rng.Size();
    if (n > total - off) n = static_cast<size_t>(total - off);
    Fill(seed, off, buf.data(), n);
    ssize_t w;
    switch (rng.Next() % 4) {
      case 0:
        w = write(fd, buf.data(), n);
        break;
      case 1:
        w = send(fd, buf.data(), n, 0);
        break;
      case 2: {
        size_t cut = n / 2;
        iovec iov[2] = {{buf.data(), cut}, {buf.data() + cut, n - cut}};
        w = writev(fd, iov, 2);
        break;
      }
      default: {
        iovec iov{buf.data(), n};
        msghdr m{};
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        w = sendmsg(fd, &m, MSG_NOSIGNAL);
      }
    }
    if (w < 0 && errno == EINTR) {
      ++eintr;
      continue;
    }
    if (w <= 0) {
      fprintf(stderr, "send at %lu: %s\n", static_cast<unsigned long>(off), strerror(errno));
      return 1;
    }
    Tee(buf.data(), static_cast<size_t>(w));
    off += static_cast<uint64_t>(w);
  }
  StopStorm();
  shutdown(fd, SHUT_WR);
  char c;
  if (read(fd, &c, 1) < 0) {  // the receiver's close
  }
  close(fd);
  fprintf(stderr, "sent %lu bytes, signals %d, eintr %lu\n", static_cast<unsigned long>(off),
          static_cast<int>(g_signals), static_cast<unsigned long>(eintr));
  return 0;
}

int Recv(int port, uint64_t total, uint64_t seed) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a = Addr(port);
  if (bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(l, 1) != 0) {
    perror("listen");
    return 1;
  }
  fprintf(stderr, "listening\n");
  int fd = accept(l, nullptr, nullptr);
  if (fd < 0) {
    perror("accept");
    return 1;
  }
  SignalStorm(false);
  Rng rng{seed * 13 + 5};
  std::vector<unsigned char> buf(1 << 20), want(1 << 20);
  uint64_t off = 0, eintr = 0, peeks = 0, short_waitall = 0;
  for (;;) {
    size_t n = rng.Size();
    unsigned kind = static_cast<unsigned>(rng.Next() % 6);
    ssize_t r;
    switch (kind) {
      case 0:
        r = read(fd, buf.data(), n);
        break;
      case 1:
        r = recv(fd, buf.data(), n, 0);
        break;
      case 2: {
        size_t cut = n / 3;
        iovec iov[2] = {{buf.data(), cut}, {buf.data() + cut, n - cut}};
        r = readv(fd, iov, 2);
        break;
      }
      case 3:
        r = recv(fd, buf.data(), n, MSG_WAITALL);
        break;
      case 4: {
        iovec iov{buf.data(), n};
        msghdr m{};
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        r = recvmsg(fd, &m, 0);
        break;
      }
      default:
        r = recv(fd, buf.data(), n, MSG_PEEK);
        break;
    }
    if (r < 0 && errno == EINTR) {
      ++eintr;
      continue;
    }
    if (r < 0) {
      fprintf(stderr, "recv at %lu: %s\n", static_cast<unsigned long>(off), strerror(errno));
      return 1;
    }
    if (r == 0) break;
    size_t got = static_cast<size_t>(r);
    Fill(seed, off, want.data(), got);
    if (memcmp(buf.data(), want.data(), got) != 0) {
      size_t j = 0;
      while (buf[j] == want[j]) ++j;
      fprintf(stderr, "%s: wrong byte at offset %lu\n", kind == 5 ? "peek" : "read",
              static_cast<unsigned long>(off + j));
      return 1;
    }
    if (kind == 5) {
      ++peeks;
      continue;  // peeked bytes are read again by a later call
    }
    // (A short MSG_WAITALL is allowed: a signal was caught, and this
    // handler has no SA_RESTART.)
    if (kind == 3 && got < n && off + got < total) ++short_waitall;
    Tee(buf.data(), got);
    off += got;
  }
  StopStorm();
  close(fd);
  close(l);
  fprintf(stderr,
          "received %lu bytes, every byte checked, signals %d, eintr %lu, peeks %lu, "
          "MSG_WAITALL cut short by a signal %lu\n",
          static_cast<unsigned long>(off), static_cast<int>(g_signals),
          static_cast<unsigned long>(eintr), static_cast<unsigned long>(peeks),
          static_cast<unsigned long>(short_waitall));
  return off == total ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5 && argc != 6) {
    fprintf(stderr, "usage: %s recv|send PORT BYTES SEED [tee]\n", argv[0]);
    return 2;
  }
  g_tee = argc == 6 && strcmp(argv[5], "tee") == 0;
  int port = atoi(argv[2]);
  uint64_t total = strtoull(argv[3], nullptr, 10);
  uint64_t seed = strtoull(argv[4], nullptr, 10);
  if (strcmp(argv[1], "recv") == 0) return Recv(port, total, seed);
  if (strcmp(argv[1], "send") == 0) return Send(port, total, seed);
  return 2;
}

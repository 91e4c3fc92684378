// A hostile doorway peer (issue 10, DESIGN §5 "untrusted peer"): speaks the
// door handshake like the runtime does, then attacks the shared segment of
// the victim, a real program running under doorway.
//
//   hostile_peer client DOOR_DIR PORT SEED ROUNDS
//       connects ROUNDS times to the door of 127.0.0.1:PORT (the victim is
//       an echo server); each connection proves the victim accepted it
//       (one echoed line through the rings), then runs one attack.
//   hostile_peer server DOOR_DIR PORT SEED CONNS
//       opens the door of 127.0.0.1:PORT itself and attacks the CONNS
//       victim clients that connect (they send lines and expect echoes).
//   hostile_peer die-client|die-server DOOR_DIR PORT SEED STEP
//       kills itself (SIGKILL) at crash point STEP of the handshake or the
//       first exchange, as a client of PORT or as the server of its door
//       (see DieAsClient/DieAsServer), for the crash test.
//
// A third of the attacked connections are kept open until the end (the
// victim must not need the peer's close to go on serving others); the rest
// are closed after their attack. Exits 0 when every attack ran, 1 if the
// victim never accepted an accelerated connection (the handshake below no
// longer matches runtime/accel.cc), 2 on usage errors. Whether the victim
// survived is for the calling test to judge. Every loop is bounded in time.
//
// The Hello layout is a copy of the one in runtime/accel.cc (it is private
// there): if that changes, the proof-of-acceptance step fails loudly.
#include <fcntl.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "transport/internal/layout.h"
#include "transport/segment.h"
#include "transport/wait.h"

namespace {

using doorway::transport::Ring;
using doorway::transport::RingStats;
using doorway::transport::Role;
using doorway::transport::Segment;
namespace layout = doorway::transport::internal;

// ---- the door protocol (copies of runtime/endpoint.h and runtime/accel.cc)
struct Endpoint {
  std::uint16_t family = 0;
  std::uint16_t port = 0;  // host byte order
  std::uint32_t scope_id = 0;
  std::uint8_t addr[16] = {};
};
struct Hello {
  static constexpr std::uint32_t kMagic = 0x4F4C4548;  // "HELO"
  static constexpr std::uint32_t kVersion = 2;
  std::uint32_t magic;
  std::uint32_t version;
  Endpoint client;
  Endpoint server;
  std::uint64_t segment_offset;  // of the segment in the memfd (an arena slot)
};
static_assert(sizeof(Endpoint) == 24 && sizeof(Hello) == 64);

Endpoint Loopback(std::uint16_t port) {
  Endpoint e;
  e.family = AF_INET;
  e.port = port;
  e.addr[0] = 127;
  e.addr[3] = 1;
  return e;
}

std::int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

void SleepUs(long us) {
  timespec ts{us / 1000000, (us % 1000000) * 1000};
  nanosleep(&ts, nullptr);
}

struct Rng {
  std::uint64_t s;
  std::uint64_t Next() {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  std::uint64_t Below(std::uint64_t n) { return Next() % n; }
};

int SendWithFds(int sock, const void* buf, size_t len, const int* fds, int nfds) {
  iovec iov{const_cast<void*>(buf), len};
  alignas(cmsghdr) char control[CMSG_SPACE(8 * sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
  }
  return sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 ? -errno : 0;
}

int DoorAddr(const char* dir, int port, sockaddr_un* sun) {
  memset(sun, 0, sizeof(*sun));
  sun->sun_family = AF_UNIX;
  int n = snprintf(sun->sun_path, sizeof(sun->sun_path), "%s/tcp4-127.0.0.1-%d", dir, port);
  return n > 0 && static_cast<size_t>(n) < sizeof(sun->sun_path) ? 0 : -ENAMETOOLONG;
}

int Knock(const char* dir, int port) {
  sockaddr_un sun;
  if (DoorAddr(dir, port, &sun) != 0) return -1;
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// One accelerated connection as the peer sees it: our tx ring is the
// victim's rx ring and vice versa.
struct Conn {
  int sock = -1;
  Segment seg;
  Role role = Role::kClient;
  RingStats tx_stats, rx_stats;
  Ring tx, rx;

  layout::SegmentPrefix* prefix() const { return static_cast<layout::SegmentPrefix*>(seg.base()); }
  layout::RingControl& victim_rx() const {  // the ring the victim consumes
    return prefix()->ring[doorway::transport::TxRingIndex(role)];
  }
  layout::RingControl& victim_tx() const {
    return prefix()->ring[doorway::transport::RxRingIndex(role)];
  }
  void Doorbell() {
    if (tx.TakeDoorbell() | rx.TakeDoorbell()) {
      char d = 'd';
      (void)send(sock, &d, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
  }
  // Writes bytes the victim will read; the victim's wait may be in the
  // kernel (poll/epoll engines), so ring its doorbell too, unconditionally:
  // after a scribble the armed flags mean nothing.
  void Poke(const char* what) {
    (void)tx.Write(what, strlen(what));
    Doorbell();
    char d = 'd';
    (void)send(sock, &d, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    for (auto* w : {&victim_rx().data_wait, &victim_tx().space_wait}) {
      w->seq.fetch_add(1);
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(&w->seq), FUTEX_WAKE, INT_MAX, nullptr,
              nullptr, 0);
    }
  }
  // Drains whatever the victim sent (it may be echoing); never blocks.
  void Drain() {
    char buf[4096];
    while (rx.Read(buf, sizeof(buf)) > 0) {
    }
    Doorbell();
  }
};

// Waits (at most timeout_ms) for `want` bytes to come back through rx.
bool ReadEcho(Conn& c, const char* want, int timeout_ms) {
  std::string got;
  std::int64_t end = NowMs() + timeout_ms;
  size_t n = strlen(want);
  while (got.size() < n && NowMs() < end) {
    char buf[256];
    std::int64_t r = c.rx.Read(buf, sizeof(buf));
    if (r > 0) {
      got.append(buf, static_cast<size_t>(r));
      c.Doorbell();
      continue;
    }
    if (r != -EAGAIN) return false;
    doorway::transport::WaitOptions w;
    w.timeout_ns = 20'000'000;
    w.liveness_fd = c.sock;
    (void)doorway::transport::WaitReadable(c.rx, w, nullptr);
    c.rx.ArmReadDoorbell();
  }
  return got.compare(0, n, want) == 0;
}

// ---------------------------------------------------------------- attacks

// Random bytes at random places of the header and both control blocks.
void ScribbleRandom(Conn& c, Rng& rng) {
  auto* base = reinterpret_cast<unsigned char*>(c.prefix());
  for (int i = 0; i < 400; ++i) {
    size_t off = rng.Below(sizeof(layout::SegmentPrefix) - 8);
    switch (rng.Below(3)) {
      case 0:
        base[off] = static_cast<unsigned char>(rng.Next());
        break;
      case 1: {
        std::uint32_t v = static_cast<std::uint32_t>(rng.Next());
        memcpy(base + (off & ~size_t{3}), &v, 4);
        break;
      }
      default: {
        std::uint64_t v = rng.Next();
        memcpy(base + (off & ~size_t{7}), &v, 8);
      }
    }
    if (i % 20 == 0) {
      c.Poke("scribble\n");
      SleepUs(500);
      c.Drain();
    }
  }
}

// Indices beyond capacity, behind the other index, wrapping lengths.
void BoundaryIndices(Conn& c, Rng& rng) {
  layout::RingControl& in = c.victim_rx();
  layout::RingControl& out = c.victim_tx();
  const std::uint64_t cap = c.tx.capacity();
  const std::uint64_t head = in.cons.index.load();
  const std::uint64_t deltas[] = {cap + 1,
                                  2 * cap,
                                  ~std::uint64_t{0},
                                  std::uint64_t{1} << 63,
                                  cap - 1 + (std::uint64_t{1} << 32),
                                  cap,
                                  1};
  for (std::uint64_t d : deltas) {
    in.prod.index.store(head + d);
    c.Poke("");
    SleepUs(2000);
  }
  for (std::uint64_t abs : {std::uint64_t{0}, ~std::uint64_t{0}, rng.Next()}) {
    in.prod.index.store(abs);
    in.cons.index.store(rng.Next());
    c.Poke("");
    SleepUs(2000);
  }
  // The victim's producer side: head ahead of its tail, far behind, garbage
  // in its private working tail.
  const std::uint64_t tail = out.prod.index.load();
  for (std::uint64_t v : {tail + 1, tail - cap - 1, ~std::uint64_t{0}, rng.Next()}) {
    out.cons.index.store(v);
    out.prod_lock.index.store(rng.Next());
    c.Poke("boundary\n");
    SleepUs(2000);
  }
  // Meta lines (capacity, data offset) that a careless reader would re-read.
  in.meta.capacity = ~std::uint64_t{0};
  in.meta.data_offset = std::uint64_t{1} << 40;
  out.meta.capacity = 3;
  c.prefix()->header.segment_size = 1;
  c.Poke("meta\n");
  SleepUs(2000);
}

// Shutdown-state words flipped to every boundary value.
void FlipStates(Conn& c, Rng& rng) {
  const std::uint32_t values[] = {
      3, 0xffffffffu, layout::kStateReset, layout::kStateClosed, layout::kStateOpen, 0x80000000u};
  for (int i = 0; i < 40; ++i) {
    std::uint32_t v = values[rng.Below(sizeof(values) / sizeof(values[0]))];
    auto& ring = rng.Below(2) ? c.victim_rx() : c.victim_tx();
    (rng.Below(2) ? ring.state.writer : ring.state.reader).store(v);
    c.Poke("state\n");
    SleepUs(1000);
    c.Drain();
  }
}

// Futex words and waiter flags spammed for a while, with doorbells.
void FutexSpam(Conn& c, Rng& rng) {
  std::int64_t end = NowMs() + 300;
  layout::WaitLine* lines[] = {&c.victim_rx().data_wait, &c.victim_rx().space_wait,
                               &c.victim_tx().data_wait, &c.victim_tx().space_wait};
  while (NowMs() < end) {
    for (auto* w : lines) {
      w->seq.store(static_cast<std::uint32_t>(rng.Next()));
      w->sleeping.store(static_cast<std::uint32_t>(rng.Below(3)));
      w->armed.store(static_cast<std::uint32_t>(rng.Below(3)));
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(&w->seq), FUTEX_WAKE, INT_MAX, nullptr,
              nullptr, 0);
    }
    for (auto* l : {&c.victim_rx().cons_lock.word, &c.victim_tx().prod_lock.word}) {
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(l), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
    }
    char bells[64];
    memset(bells, 'd', sizeof(bells));
    (void)send(c.sock, bells, sizeof(bells), MSG_DONTWAIT | MSG_NOSIGNAL);
    c.Drain();
    SleepUs(200);
  }
}

// The victim's own end locks, which live in the segment too: held "by" a
// live thread (ours) and by a tid that does not exist.
void StealLocks(Conn& c, Rng& rng) {
  const std::uint32_t live = static_cast<std::uint32_t>(syscall(SYS_gettid)) | 0x80000000u;
  for (std::uint32_t v : {live, 0x3fffffffu | 0x80000000u, 1u}) {
    c.victim_rx().cons_lock.word.store(v);
    c.victim_tx().prod_lock.word.store(v);
    c.Poke("locked\n");
    SleepUs(300'000);
    c.Drain();
  }
  (void)rng;
}

// What the peer can do to the memfd itself: the seals must hold.
void AttackMemfd(Conn& c, Rng& rng) {
  int fd = c.seg.fd();
  struct stat st {};
  fstat(fd, &st);
  bool fail = false;
  if (ftruncate(fd, 0) == 0) fail = true;
  if (ftruncate(fd, st.st_size * 2) == 0) fail = true;
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE) == 0) fail = true;
  if (fail) fprintf(stderr, "hostile_peer: memfd seals did not hold\n");
  // Holes read back as zeroes: header, indices and states all become 0
  // under the victim's feet.
  (void)fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, st.st_size);
  c.Poke("punched\n");
  SleepUs(5000);
  // A fresh mapping at another address, written through: same pages.
  void* p = mmap(nullptr, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p != MAP_FAILED) {
    memset(p, 0xff, sizeof(layout::SegmentPrefix));
    c.Poke("ff\n");
    SleepUs(5000);
    munmap(p, st.st_size);
  }
  (void)rng;
}

// Garbage on the door socket: doorbell floods, file descriptors, a second
// Hello with another segment.
void SocketSpam(Conn& c, Rng& rng) {
  char junk[512];
  for (auto& b : junk) b = static_cast<char>(rng.Next());
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int fds[3] = {devnull, devnull, devnull};
  for (int i = 0; i < 200; ++i) {
    (void)send(c.sock, junk, 1 + rng.Below(sizeof(junk)), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (i % 10 == 0 && devnull >= 0) (void)SendWithFds(c.sock, junk, 8, fds, 3);
    if (i % 50 == 0) {
      Segment other;
      doorway::transport::SegmentOptions so;
      if (Segment::Create(so, &other) == 0) {
        Hello h{Hello::kMagic, Hello::kVersion, Loopback(1), Loopback(2), 0};
        int f = other.fd();
        (void)SendWithFds(c.sock, &h, sizeof(h), &f, 1);
      }
    }
    c.Poke("");
    c.Drain();
  }
  if (devnull >= 0) close(devnull);
}

const char* g_dir = nullptr;
int g_port = 0;

// The same segment under a second connection (and, after the twin's close,
// the victim may hold it in its reuse cache while the first still uses it).
void Twin(Conn& c, Rng& rng) {
  for (int i = 0; i < 3; ++i) {
    int s = Knock(g_dir, g_port);
    if (s < 0) return;
    Hello h{Hello::kMagic, Hello::kVersion, Loopback(static_cast<uint16_t>(43000 + i)),
            Loopback(static_cast<uint16_t>(g_port)), 0};
    int fd = c.seg.fd();
    (void)SendWithFds(s, &h, sizeof(h), &fd, 1);
    c.Poke("twin\n");
    SleepUs(20'000);
    c.Drain();
    if (rng.Below(2)) c.prefix()->header.generation = static_cast<uint32_t>(rng.Next());
    close(s);
  }
}

using Attack = void (*)(Conn&, Rng&);
constexpr Attack kAttacks[] = {ScribbleRandom, BoundaryIndices, FlipStates, FutexSpam,
                               StealLocks,     AttackMemfd,     SocketSpam};
constexpr const char* kAttackNames[] = {
    "scribble", "boundary-indices", "states", "futex-spam", "lock-steal",
    "memfd",    "socket-spam",      "twin"};
constexpr int kAttackCount = sizeof(kAttacks) / sizeof(kAttacks[0]);

// Handshakes that must be refused (the victim drops them and carries on).
void BadHandshake(const char* dir, int port, int kind) {
  int s = Knock(dir, port);
  if (s < 0) return;
  Hello h{Hello::kMagic, Hello::kVersion, Loopback(40000), Loopback(static_cast<uint16_t>(port)),
          0};
  Segment seg;
  doorway::transport::SegmentOptions so;
  (void)Segment::Create(so, &seg);
  int fd = seg.fd();
  switch (kind) {
    case 0:
      h.magic = 0xdeadbeef;
      (void)SendWithFds(s, &h, sizeof(h), &fd, 1);
      break;
    case 1:
      (void)SendWithFds(s, &h, sizeof(h), nullptr, 0);
      break;   // no fd
    case 2: {  // an unsealed memfd
      int m = memfd_create("unsealed", MFD_CLOEXEC);
      if (m >= 0 && ftruncate(m, 1 << 21) == 0) (void)SendWithFds(s, &h, sizeof(h), &m, 1);
      if (m >= 0) close(m);
      break;
    }
    case 3: {  // a pipe
      int p[2];
      if (pipe2(p, O_CLOEXEC) == 0) {
        (void)SendWithFds(s, &h, sizeof(h), p, 1);
        close(p[0]);
        close(p[1]);
      }
      break;
    }
    case 4: {  // many fds
      int fds[8];
      for (int& f : fds) f = fd;
      (void)SendWithFds(s, &h, sizeof(h), fds, 8);
      break;
    }
    case 5:
      (void)SendWithFds(s, &h, 10, &fd, 1);
      break;   // short
    case 6: {  // a sealed memfd with a corrupt header
      auto* p = static_cast<layout::SegmentPrefix*>(seg.base());
      p->header.ring_control_offset[1] = 4096 * 1000;
      (void)SendWithFds(s, &h, sizeof(h), &fd, 1);
      break;
    }
    case 7:
      h.client.family = 7;
      (void)SendWithFds(s, &h, sizeof(h), &fd, 1);
      break;
    default:
      break;  // connect and say nothing
  }
  SleepUs(20'000);
  close(s);
}
constexpr int kBadHandshakes = 9;

int Client(const char* dir, int port, Rng& rng, int rounds) {
  for (int k = 0; k < kBadHandshakes; ++k) BadHandshake(dir, port, k);
  fprintf(stderr, "hostile_peer: %d refused handshakes sent\n", kBadHandshakes);
  std::vector<Conn*> kept;
  int accepted = 0;
  std::int64_t deadline = NowMs() + 40'000;
  for (int r = 0; r < rounds && NowMs() < deadline; ++r) {
    auto* c = new Conn;
    c->role = Role::kClient;
    c->sock = Knock(dir, port);
    doorway::transport::SegmentOptions so;
    if (c->sock < 0 || Segment::Create(so, &c->seg) != 0) {
      fprintf(stderr, "hostile_peer: round %d: cannot knock (%s)\n", r, strerror(errno));
      return 1;
    }
    c->tx = c->seg.MakeTxRing(Role::kClient, &c->tx_stats);
    c->rx = c->seg.MakeRxRing(Role::kClient, &c->rx_stats);
    Hello h{Hello::kMagic, Hello::kVersion, Loopback(static_cast<uint16_t>(41000 + r)),
            Loopback(static_cast<uint16_t>(port)), 0};
    int fd = c->seg.fd();
    if (SendWithFds(c->sock, &h, sizeof(h), &fd, 1) != 0) return 1;
    char line[64];
    snprintf(line, sizeof(line), "hello %d\n", r);
    c->Poke(line);
    if (!ReadEcho(*c, line, 10'000)) {
      fprintf(stderr, "hostile_peer: round %d: no echo: the victim did not take the segment\n", r);
      return 1;
    }
    ++accepted;
    int a = r % kAttackCount;
    kAttacks[a](*c, rng);
    fprintf(stderr, "hostile_peer: round %d: %s done\n", r, kAttackNames[a]);
    if (rng.Below(3) == 0) {
      kept.push_back(c);
    } else {
      close(c->sock);
      delete c;
    }
  }
  fprintf(stderr, "hostile_peer: %d connections attacked, %zu kept open until exit\n", accepted,
          kept.size());
  printf("ATTACKED %d\n", accepted);
  return accepted > 0 ? 0 : 1;
}

int Server(const char* dir, int port, Rng& rng, int conns) {
  sockaddr_un sun;
  if (DoorAddr(dir, port, &sun) != 0) return 2;
  unlink(sun.sun_path);
  int door = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (door < 0 || bind(door, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) != 0 ||
      listen(door, 64) != 0) {
    perror("hostile_peer: door");
    return 2;
  }
  printf("listening\n");
  fflush(stdout);
  std::vector<Conn*> kept;
  int attacked = 0;
  bool memfd_attacked = false;
  std::int64_t deadline = NowMs() + 40'000;
  for (int r = 0; r < conns && NowMs() < deadline; ++r) {
    pollfd p{door, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(deadline - NowMs())) <= 0) break;
    auto* c = new Conn;
    c->role = Role::kServer;
    c->sock = accept4(door, nullptr, nullptr, SOCK_CLOEXEC);
    if (c->sock < 0) continue;
    Hello h{};
    alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))] = {};
    iovec iov{&h, sizeof(h)};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    int memfd = -1;
    if (recvmsg(c->sock, &msg, MSG_CMSG_CLOEXEC) == sizeof(h)) {
      cmsghdr* cm = CMSG_FIRSTHDR(&msg);
      if (cm != nullptr && cm->cmsg_type == SCM_RIGHTS) memcpy(&memfd, CMSG_DATA(cm), sizeof(int));
    }
    if (memfd < 0 || Segment::AttachAt(memfd, h.segment_offset, &c->seg) != 0) {
      // The victim's connections to us share an arena (segment.h
      // "Arenas"): our memfd attack punched and overwrote all of it, also
      // the segment of a connection the victim was opening meanwhile.
      if (memfd >= 0 && memfd_attacked) {
        fprintf(stderr, "hostile_peer: connection %d: its segment was hit by our memfd attack\n",
                r);
        close(memfd);
        close(c->sock);
        delete c;
        continue;
      }
      fprintf(stderr, "hostile_peer: connection %d: bad hello from the victim\n", r);
      return 1;
    }
    c->tx = c->seg.MakeTxRing(Role::kServer, &c->tx_stats);
    c->rx = c->seg.MakeRxRing(Role::kServer, &c->rx_stats);
    // Echo the victim's first line, so that it has seen a working connection.
    std::string got;
    std::int64_t end = NowMs() + 10'000;
    while (got.find('\n') == std::string::npos && NowMs() < end) {
      char buf[256];
      std::int64_t n = c->rx.Read(buf, sizeof(buf));
      if (n > 0) {
        got.append(buf, static_cast<size_t>(n));
        continue;
      }
      doorway::transport::WaitOptions w;
      w.timeout_ns = 20'000'000;
      w.liveness_fd = c->sock;
      (void)doorway::transport::WaitReadable(c->rx, w, nullptr);
    }
    c->Poke(got.c_str());
    ++attacked;
    int a = r % kAttackCount;
    kAttacks[a](*c, rng);
    memfd_attacked = memfd_attacked || kAttacks[a] == AttackMemfd;
    fprintf(stderr, "hostile_peer: connection %d: %s done\n", r, kAttackNames[a]);
    if (rng.Below(3) == 0) {
      kept.push_back(c);
    } else {
      close(c->sock);
      delete c;
    }
  }
  close(door);
  unlink(sun.sun_path);
  fprintf(stderr, "hostile_peer: %d connections attacked, %zu kept open until exit\n", attacked,
          kept.size());
  printf("ATTACKED %d\n", attacked);
  return attacked > 0 ? 0 : 1;
}

// Crash points of the handshake and the first exchange (kill -9 of
// ourselves at a chosen step, for the crash test).
[[noreturn]] void Die() {
  raise(SIGKILL);
  _exit(9);
}

// Client side: 0 door connected, nothing sent; 1 Hello sent; 2 half a line
// written; 3 the server's ring filled; 4 after a full echo exchange.
int DieAsClient(const char* dir, int port, int step) {
  Conn c;
  c.sock = Knock(dir, port);
  if (c.sock < 0) return 1;
  if (step == 0) Die();
  doorway::transport::SegmentOptions so;
  if (Segment::Create(so, &c.seg) != 0) return 1;
  c.tx = c.seg.MakeTxRing(Role::kClient, &c.tx_stats);
  c.rx = c.seg.MakeRxRing(Role::kClient, &c.rx_stats);
  Hello h{Hello::kMagic, Hello::kVersion, Loopback(42000), Loopback(static_cast<uint16_t>(port)),
          0};
  int fd = c.seg.fd();
  if (SendWithFds(c.sock, &h, sizeof(h), &fd, 1) != 0) return 1;
  if (step == 1) Die();
  if (step == 2) {
    c.Poke("half");
    Die();
  }
  if (step == 3) {
    std::vector<char> block(64 * 1024, 'f');
    std::int64_t end = NowMs() + 2000;
    while (NowMs() < end && c.tx.Write(block.data(), block.size()) != -EAGAIN) c.Doorbell();
    Die();
  }
  c.Poke("whole\n");
  if (!ReadEcho(c, "whole\n", 10'000)) return 1;
  Die();
}

// Server side: 0 door connection accepted, Hello not read; 1 Hello read,
// segment not mapped; 2 segment mapped, nothing answered; 3 after echoing
// the client's first line.
int DieAsServer(const char* dir, int port, int step) {
  sockaddr_un sun;
  if (DoorAddr(dir, port, &sun) != 0) return 2;
  unlink(sun.sun_path);
  int door = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (door < 0 || bind(door, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) != 0 ||
      listen(door, 8) != 0) {
    return 2;
  }
  // A TCP listener too, as a real server has: a client whose handshake
  // fails falls back to it (and gets a reset when we die).
  int tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(static_cast<uint16_t>(port));
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int one = 1;
  setsockopt(tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (tcp < 0 || bind(tcp, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0 ||
      listen(tcp, 8) != 0) {
    return 2;
  }
  printf("listening\n");
  pollfd p{door, POLLIN, 0};
  if (poll(&p, 1, 20'000) <= 0) return 1;
  Conn c;
  c.role = Role::kServer;
  c.sock = accept4(door, nullptr, nullptr, SOCK_CLOEXEC);
  if (c.sock < 0) return 1;
  if (step == 0) Die();
  Hello h{};
  alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))] = {};
  iovec iov{&h, sizeof(h)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  int memfd = -1;
  if (recvmsg(c.sock, &msg, MSG_CMSG_CLOEXEC) == sizeof(h)) {
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    if (cm != nullptr && cm->cmsg_type == SCM_RIGHTS) memcpy(&memfd, CMSG_DATA(cm), sizeof(int));
  }
  if (step == 1) Die();
  if (memfd < 0 || Segment::AttachAt(memfd, h.segment_offset, &c.seg) != 0) return 1;
  c.tx = c.seg.MakeTxRing(Role::kServer, &c.tx_stats);
  c.rx = c.seg.MakeRxRing(Role::kServer, &c.rx_stats);
  if (step == 2) Die();
  std::string got;
  std::int64_t end = NowMs() + 10'000;
  while (got.find('\n') == std::string::npos && NowMs() < end) {
    char buf[256];
    std::int64_t n = c.rx.Read(buf, sizeof(buf));
    if (n > 0) {
      got.append(buf, static_cast<size_t>(n));
      continue;
    }
    doorway::transport::WaitOptions w;
    w.timeout_ns = 20'000'000;
    w.liveness_fd = c.sock;
    (void)doorway::transport::WaitReadable(c.rx, w, nullptr);
  }
  c.Poke(got.c_str());
  SleepUs(50'000);
  Die();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s client|server|die-client|die-server DOOR_DIR PORT SEED COUNT|STEP\n",
            argv[0]);
    return 2;
  }
  setvbuf(stdout, nullptr, _IOLBF, 0);
  Rng rng{strtoull(argv[4], nullptr, 10)};
  int port = atoi(argv[3]);
  g_dir = argv[2];
  g_port = port;
  int count = atoi(argv[5]);
  if (strcmp(argv[1], "client") == 0) return Client(argv[2], port, rng, count);
  if (strcmp(argv[1], "server") == 0) return Server(argv[2], port, rng, count);
  if (strcmp(argv[1], "die-client") == 0) return DieAsClient(argv[2], port, count);
  if (strcmp(argv[1], "die-server") == 0) return DieAsServer(argv[2], port, count);
  return 2;
}

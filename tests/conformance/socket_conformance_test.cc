// Socket conformance suite: written once, run natively and under the
// preload (see BUILD). Each case asserts the exact return values and errno
// that Linux gives for the connection kind; the preloaded run must agree.
// Later issues add accelerated kinds to kKinds.
#include <arpa/inet.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "abi/doorway.h"
#include "gtest/gtest.h"

namespace {

enum class Kind { kTcp4, kTcp6, kUnix };

std::string KindName(const testing::TestParamInfo<Kind>& info) {
  switch (info.param) {
    case Kind::kTcp4:
      return "Tcp4";
    case Kind::kTcp6:
      return "Tcp6";
    case Kind::kUnix:
      return "Unix";
  }
  return "?";
}

using InfoFn = int (*)(int, doorway_socket_info*);

// doorway's introspection hook if the runtime is loaded, else nullptr.
InfoFn DoorwayInfo() { return reinterpret_cast<InfoFn>(dlsym(RTLD_DEFAULT, "doorway_fd_info")); }

#if defined(__SANITIZE_THREAD__)
constexpr bool kUnderTsan = true;
#else
constexpr bool kUnderTsan = false;
#endif

bool ExpectLoaded() {
  const char* v = getenv("DOORWAY_EXPECT_LOADED");
  return v != nullptr && strcmp(v, "1") == 0;
}

// Under the preload, every socket the test makes must be in doorway's
// table with the expected origin; natively there is nothing to check.
// accelerated: 1 if the connection must travel over shared memory, 0 if it
// must not, -1 if either is fine (a socket before connect).
void ExpectTracked(int fd, int origin, int accelerated = -1) {
  InfoFn info = DoorwayInfo();
  if (info == nullptr) return;
  doorway_socket_info i{};
  ASSERT_EQ(info(fd, &i), 0) << "fd " << fd << " not tracked by doorway";
  EXPECT_EQ(i.origin, origin);
  EXPECT_EQ(i.type, SOCK_STREAM);
  if (accelerated >= 0) {
    EXPECT_EQ(i.accelerated, accelerated) << "fd " << fd;
  }
}

TEST(Environment, DoorwayPresenceAsExpected) {
  EXPECT_EQ(DoorwayInfo() != nullptr, ExpectLoaded())
      << "DOORWAY_EXPECT_LOADED=" << (ExpectLoaded() ? 1 : 0);
}

class Conformance : public testing::TestWithParam<Kind> {
 protected:
  void SetUp() override {
    Kind k = GetParam();
    if (k == Kind::kTcp6) {
      int probe = socket(AF_INET6, SOCK_STREAM, 0);
      sockaddr_in6 a{};
      a.sin6_family = AF_INET6;
      a.sin6_addr = in6addr_loopback;
      bool ok = probe >= 0 && bind(probe, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
      if (probe >= 0) close(probe);
      if (!ok) GTEST_SKIP() << "no IPv6 loopback on this machine";
    }
    listener_ = MakeListener();
  }

  void TearDown() override {
    for (int fd : {listener_, client_, server_}) {
      if (fd >= 0) close(fd);
    }
    if (!unix_path_.empty()) unlink(unix_path_.c_str());
  }

  int Domain() const {
    switch (GetParam()) {
      case Kind::kTcp4:
        return AF_INET;
      case Kind::kTcp6:
        return AF_INET6;
      case Kind::kUnix:
        return AF_UNIX;
    }
    return -1;
  }
  bool IsTcp() const { return GetParam() != Kind::kUnix; }

  int MakeListener() {
    int fd = socket(Domain(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(fd, 0);
    if (GetParam() == Kind::kUnix) {
      sockaddr_un a{};
      a.sun_family = AF_UNIX;
      // Not under TEST_TMPDIR: sun_path holds only 108 bytes. A directory
      // of our own: test runs in sandboxes can share a pid.
      static const std::string dir = [] {
        char tmpl[] = "/tmp/doorway-conf.XXXXXX";
        const char* d = mkdtemp(tmpl);
        return std::string(d != nullptr ? d : "/tmp");
      }();
      unix_path_ = dir + "/" + std::to_string(counter_++);
      unlink(unix_path_.c_str());
      strncpy(a.sun_path, unix_path_.c_str(), sizeof(a.sun_path) - 1);
      addr_len_ = sizeof(a);
      memcpy(&addr_, &a, sizeof(a));
    } else if (GetParam() == Kind::kTcp4) {
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr_len_ = sizeof(a);
      memcpy(&addr_, &a, sizeof(a));
    } else {
      sockaddr_in6 a{};
      a.sin6_family = AF_INET6;
      a.sin6_addr = in6addr_loopback;
      addr_len_ = sizeof(a);
      memcpy(&addr_, &a, sizeof(a));
    }
    EXPECT_EQ(bind(fd, Addr(), addr_len_), 0) << strerror(errno);
    EXPECT_EQ(listen(fd, 16), 0);
    socklen_t len = sizeof(addr_);
    EXPECT_EQ(getsockname(fd, Addr(), &len), 0);
    if (GetParam() != Kind::kUnix) {
      EXPECT_EQ(len, addr_len_);
    }
    return fd;
  }

  sockaddr* Addr() { return reinterpret_cast<sockaddr*>(&addr_); }

  // client_ connected to server_ (accepted).
  void Connect() {
    client_ = socket(Domain(), SOCK_STREAM, 0);
    ASSERT_GE(client_, 0);
    ASSERT_EQ(connect(client_, Addr(), addr_len_), 0) << strerror(errno);
    server_ = accept(listener_, nullptr, nullptr);
    ASSERT_GE(server_, 0);
  }

  // Connect(), counting in *reused the client sockets whose inode an
  // earlier one in *seen had (doorway's door socket reuse keeps it).
  void ConnectNoticingReuse(std::vector<ino_t>* seen, int* reused) {
    Connect();
    struct stat st {};
    ASSERT_EQ(fstat(client_, &st), 0);
    if (std::find(seen->begin(), seen->end(), st.st_ino) != seen->end()) ++*reused;
    seen->push_back(st.st_ino);
  }

  // Under doorway over TCP (reuse on) at least `at_least` reused; natively
  // none can be.
  void ExpectDoorReuse(int reused, int at_least) {
    const char* reuse = getenv("DOORWAY_REUSE_DOORS");
    if (DoorwayInfo() != nullptr && IsTcp() && (reuse == nullptr || strcmp(reuse, "0") != 0)) {
      EXPECT_GE(reused, at_least) << "door sockets were not reused";
    } else {
      EXPECT_EQ(reused, 0);
    }
  }

  // Forks a client process, then makes the listener (one made before the
  // fork is shared with the child, and doorway keeps no door sockets for
  // it). The child gets the listener's address, its end of a pipe from the
  // parent (`from_parent`) and of one to it (`to_parent`), runs `client`,
  // and exits 0 if that returned true. Returns the child's pid; *to_child
  // and *from_child: the parent's ends.
  pid_t ForkClientThenListen(
      const std::function<bool(const sockaddr*, socklen_t, int from_parent, int to_parent)>& client,
      int* to_child, int* from_child) {
    close(std::exchange(listener_, -1));
    int down[2], up[2];
    if (pipe(down) != 0 || pipe(up) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
      close(down[1]);
      close(up[0]);
      sockaddr_storage a{};
      socklen_t alen = 0;
      bool ok = read(down[0], &alen, sizeof(alen)) == sizeof(alen) &&
                read(down[0], &a, sizeof(a)) == sizeof(a);
      ok = ok && client(reinterpret_cast<sockaddr*>(&a), alen, down[0], up[1]);
      _exit(ok ? 0 : 1);
    }
    close(down[0]);
    close(up[1]);
    *to_child = down[1];
    *from_child = up[0];
    if (pid < 0) return -1;
    listener_ = MakeListener();
    if (write(down[1], &addr_len_, sizeof(addr_len_)) != static_cast<ssize_t>(sizeof(addr_len_)) ||
        write(down[1], &addr_, sizeof(addr_)) != static_cast<ssize_t>(sizeof(addr_))) {
      return -1;
    }
    return pid;
  }

  // Writes 64 KiB chunks to the non-blocking client_ until a write fails
  // (bounded); returns the bytes written. The caller checks errno (EAGAIN).
  size_t FillClient(char c) {
    std::vector<char> chunk(65536, c);
    size_t sent = 0;
    for (int i = 0; i < 100000; ++i) {
      ssize_t r = write(client_, chunk.data(), chunk.size());
      if (r < 0) break;
      sent += static_cast<size_t>(r);
    }
    return sent;
  }

  // Reads up to `bytes` from server_, stopping at EOF or an error; returns
  // the bytes read.
  size_t DrainServer(size_t bytes) {
    std::vector<char> in(65536);
    size_t got = 0;
    while (got < bytes) {
      ssize_t r = read(server_, in.data(), in.size());
      if (r <= 0) break;
      got += static_cast<size_t>(r);
    }
    return got;
  }

  // Under doorway over TCP: the path of the current listener's (addr_'s)
  // door file, or with prefix "wake2." of its wake FIFO, named as
  // runtime/door.cc names them.
  std::string DoorFile(const char* prefix) const {
    char host[INET6_ADDRSTRLEN] = {};
    unsigned port = 0;
    if (Domain() == AF_INET) {
      const auto* a = reinterpret_cast<const sockaddr_in*>(&addr_);
      inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
      port = ntohs(a->sin_port);
    } else {
      const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr_);
      inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
      port = ntohs(a->sin6_port);
    }
    const char* dir = getenv("DOORWAY_DIR");
    return (dir != nullptr && dir[0] != '\0' ? std::string(dir)
                                             : "/tmp/doorway-" + std::to_string(geteuid())) +
           "/" + prefix +
           (Domain() == AF_INET ? "tcp4-" + std::string(host) + "-"
                                : "tcp6-[" + std::string(host) + "]-") +
           std::to_string(port);
  }

  // Waits (bounded) until fd is readable.
  static void WaitReadable(int fd) {
    pollfd p{fd, POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 5000), 1);
  }

  int listener_ = -1;
  int client_ = -1;
  int server_ = -1;
  sockaddr_storage addr_{};
  socklen_t addr_len_ = 0;
  std::string unix_path_;
  static inline int counter_ = 0;
};

TEST_P(Conformance, ConnectAcceptAddresses) {
  client_ = socket(Domain(), SOCK_STREAM, 0);
  ASSERT_GE(client_, 0);
  ExpectTracked(client_, DOORWAY_ORIGIN_SOCKET);
  ASSERT_EQ(connect(client_, Addr(), addr_len_), 0);
  sockaddr_storage peer{};
  socklen_t peer_len = sizeof(peer);
  server_ = accept4(listener_, reinterpret_cast<sockaddr*>(&peer), &peer_len,
                    SOCK_NONBLOCK | SOCK_CLOEXEC);
  ASSERT_GE(server_, 0);
  // Under doorway, loopback TCP between two doorway sockets is accelerated;
  // Unix sockets never are.
  ExpectTracked(client_, DOORWAY_ORIGIN_SOCKET, IsTcp() ? 1 : 0);
  ExpectTracked(server_, DOORWAY_ORIGIN_ACCEPT, IsTcp() ? 1 : 0);
  EXPECT_EQ(fcntl(server_, F_GETFL) & O_NONBLOCK, O_NONBLOCK);
  EXPECT_EQ(fcntl(server_, F_GETFD), FD_CLOEXEC);
  EXPECT_EQ(fcntl(client_, F_GETFD), 0);
  EXPECT_EQ(peer.ss_family, Domain());
  sockaddr_storage local{};
  socklen_t local_len = sizeof(local);
  ASSERT_EQ(getsockname(client_, reinterpret_cast<sockaddr*>(&local), &local_len), 0);
  if (IsTcp()) {
    EXPECT_EQ(peer_len, local_len);
    EXPECT_EQ(memcmp(&peer, &local, peer_len), 0) << "accept's peer address != client's name";
    sockaddr_storage srv_peer{};
    socklen_t srv_peer_len = sizeof(srv_peer);
    ASSERT_EQ(getpeername(client_, reinterpret_cast<sockaddr*>(&srv_peer), &srv_peer_len), 0);
    EXPECT_EQ(srv_peer_len, addr_len_);
    EXPECT_EQ(memcmp(&srv_peer, &addr_, addr_len_), 0);
  } else {
    EXPECT_EQ(peer_len, sizeof(sa_family_t));  // unnamed client
  }
  int v = -1;
  socklen_t vl = sizeof(v);
  ASSERT_EQ(getsockopt(server_, SOL_SOCKET, SO_TYPE, &v, &vl), 0);
  EXPECT_EQ(v, SOCK_STREAM);
  ASSERT_EQ(getsockopt(server_, SOL_SOCKET, SO_DOMAIN, &v, &vl), 0);
  EXPECT_EQ(v, Domain());
  ASSERT_EQ(getsockopt(server_, SOL_SOCKET, SO_PROTOCOL, &v, &vl), 0);
  EXPECT_EQ(v, IsTcp() ? IPPROTO_TCP : 0);
  ASSERT_EQ(getsockopt(server_, SOL_SOCKET, SO_ERROR, &v, &vl), 0);
  EXPECT_EQ(v, 0);
}

TEST_P(Conformance, PartialReads) {
  Connect();
  char out[100];
  for (int i = 0; i < 100; ++i) out[i] = static_cast<char>(i);
  ASSERT_EQ(write(client_, out, sizeof(out)), 100);
  char in[100] = {};
  size_t got = 0;
  // The first read may return fewer than 40 only if the data is not all
  // there yet; loopback delivers before write() returns, so it is exact.
  WaitReadable(server_);
  ASSERT_EQ(read(server_, in, 40), 40);
  got = 40;
  ASSERT_EQ(read(server_, in + got, sizeof(in) - got), 60);
  EXPECT_EQ(memcmp(in, out, sizeof(out)), 0);
}

TEST_P(Conformance, PeekDoesNotConsume) {
  Connect();
  ASSERT_EQ(send(client_, "hello", 5, 0), 5);
  WaitReadable(server_);
  char buf[16] = {};
  ASSERT_EQ(recv(server_, buf, 3, MSG_PEEK), 3);
  EXPECT_EQ(std::string(buf, 3), "hel");
  ASSERT_EQ(recv(server_, buf, sizeof(buf), MSG_PEEK), 5);
  ASSERT_EQ(recv(server_, buf, sizeof(buf), 0), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");
  EXPECT_EQ(recv(server_, buf, sizeof(buf), MSG_DONTWAIT), -1);
  EXPECT_EQ(errno, EAGAIN);
}

TEST_P(Conformance, NonBlockingReadsGiveEagain) {
  Connect();
  char buf[8];
  errno = 0;
  EXPECT_EQ(recv(server_, buf, sizeof(buf), MSG_DONTWAIT), -1);
  EXPECT_EQ(errno, EAGAIN);
  int on = 1;
  ASSERT_EQ(ioctl(server_, FIONBIO, &on), 0);
  EXPECT_EQ(fcntl(server_, F_GETFL) & O_NONBLOCK, O_NONBLOCK);
  errno = 0;
  EXPECT_EQ(read(server_, buf, sizeof(buf)), -1);
  EXPECT_EQ(errno, EAGAIN);
  ASSERT_EQ(fcntl(server_, F_SETFL, 0), 0);
  EXPECT_EQ(fcntl(server_, F_GETFL) & O_NONBLOCK, 0);
}

TEST_P(Conformance, ShutdownWriteIsHalfClose) {
  Connect();
  ASSERT_EQ(write(client_, "abc", 3), 3);
  ASSERT_EQ(shutdown(client_, SHUT_WR), 0);
  char buf[8];
  ASSERT_EQ(read(server_, buf, sizeof(buf)), 3);
  EXPECT_EQ(read(server_, buf, sizeof(buf)), 0);  // EOF
  EXPECT_EQ(read(server_, buf, sizeof(buf)), 0);  // and stays EOF
  // The other direction still works.
  ASSERT_EQ(write(server_, "xyz", 3), 3);
  ASSERT_EQ(read(client_, buf, sizeof(buf)), 3);
  EXPECT_EQ(std::string(buf, 3), "xyz");
  // Writing after our own SHUT_WR is EPIPE.
  signal(SIGPIPE, SIG_IGN);
  errno = 0;
  EXPECT_EQ(write(client_, "q", 1), -1);
  EXPECT_EQ(errno, EPIPE);
  signal(SIGPIPE, SIG_DFL);
  EXPECT_EQ(shutdown(client_, 42), -1);
  EXPECT_EQ(errno, EINVAL);
}

TEST_P(Conformance, ReceiveTimeout) {
  Connect();
  timeval tv{0, 20000};
  ASSERT_EQ(setsockopt(server_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
  timeval back{};
  socklen_t len = sizeof(back);
  ASSERT_EQ(getsockopt(server_, SOL_SOCKET, SO_RCVTIMEO, &back, &len), 0);
  EXPECT_EQ(back.tv_sec, 0);
  EXPECT_EQ(back.tv_usec, 20000);
  char buf[4];
  errno = 0;
  EXPECT_EQ(read(server_, buf, sizeof(buf)), -1);
  EXPECT_EQ(errno, EAGAIN);
}

TEST_P(Conformance, FionreadCountsPendingBytes) {
  Connect();
  int n = -1;
  ASSERT_EQ(ioctl(server_, FIONREAD, &n), 0);
  EXPECT_EQ(n, 0);
  std::vector<char> data(1234, 'z');
  ASSERT_EQ(write(client_, data.data(), data.size()), 1234);
  WaitReadable(server_);
  ASSERT_EQ(ioctl(server_, FIONREAD, &n), 0);
  EXPECT_EQ(n, 1234);
  char buf[34];
  ASSERT_EQ(read(server_, buf, sizeof(buf)), 34);
  ASSERT_EQ(ioctl(server_, FIONREAD, &n), 0);
  EXPECT_EQ(n, 1200);
}

TEST_P(Conformance, EofAfterPeerClose) {
  Connect();
  ASSERT_EQ(write(client_, "bye", 3), 3);
  ASSERT_EQ(close(client_), 0);
  client_ = -1;
  char buf[8];
  ASSERT_EQ(read(server_, buf, sizeof(buf)), 3);
  EXPECT_EQ(read(server_, buf, sizeof(buf)), 0);
  pollfd p{server_, POLLIN | POLLRDHUP, 0};
  ASSERT_EQ(poll(&p, 1, 0), 1);
  EXPECT_TRUE(p.revents & POLLIN);
  EXPECT_TRUE(p.revents & POLLRDHUP);
}

std::atomic<int> g_sigpipes{0};

TEST_P(Conformance, WriteToClosedPeerIsEpipeWithSigpipe) {
  Connect();
  ASSERT_EQ(close(server_), 0);
  server_ = -1;
  struct sigaction sa {};
  sa.sa_handler = [](int) { g_sigpipes.fetch_add(1); };
  struct sigaction old {};
  ASSERT_EQ(sigaction(SIGPIPE, &sa, &old), 0);
  g_sigpipes = 0;
  // TCP accepts the first write after the peer's FIN (the peer answers it
  // with RST); Unix sockets fail at once. Either way EPIPE arrives within a
  // few writes.
  ssize_t r = 0;
  int tries = 0;
  for (; tries < 200; ++tries) {
    r = send(client_, "x", 1, MSG_NOSIGNAL);
    if (r < 0) break;
    usleep(1000);
  }
  ASSERT_EQ(r, -1);
  EXPECT_EQ(errno, EPIPE);
  EXPECT_EQ(g_sigpipes.load(), 0);  // MSG_NOSIGNAL
  errno = 0;
  EXPECT_EQ(write(client_, "x", 1), -1);
  EXPECT_EQ(errno, EPIPE);
  EXPECT_EQ(g_sigpipes.load(), 1);
  ASSERT_EQ(sigaction(SIGPIPE, &old, nullptr), 0);
}

TEST_P(Conformance, CloseWithUnreadDataResetsPeer) {
  Connect();
  ASSERT_EQ(write(client_, "unread", 6), 6);
  WaitReadable(server_);
  ASSERT_EQ(close(server_), 0);
  server_ = -1;
  char buf[8];
  pollfd p{client_, POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 5000), 1);
  errno = 0;
  EXPECT_EQ(read(client_, buf, sizeof(buf)), -1);
  EXPECT_EQ(errno, ECONNRESET);
  EXPECT_EQ(read(client_, buf, sizeof(buf)), 0);
}

TEST_P(Conformance, WaitallCollectsEveryByte) {
  Connect();
  std::thread writer([&] {
    for (int i = 0; i < 4; ++i) {
      usleep(2000);
      ASSERT_EQ(write(client_, "0123456789", 10), 10);
    }
  });
  char buf[40];
  EXPECT_EQ(recv(server_, buf, sizeof(buf), MSG_WAITALL), 40);
  writer.join();
  EXPECT_EQ(std::string(buf, 10), "0123456789");
}

TEST_P(Conformance, NonBlockingWritesArePartialThenEagain) {
  Connect();
  int sz = 16384;
  ASSERT_EQ(setsockopt(client_, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)), 0);
  ASSERT_EQ(fcntl(client_, F_SETFL, O_NONBLOCK), 0);
  auto pattern = [](size_t pos) { return static_cast<char>((pos * 7) ^ (pos >> 9)); };
  std::vector<char> chunk(65536);
  size_t sent = 0;
  ssize_t r = 0;
  for (int i = 0; i < 10000; ++i) {
    for (size_t j = 0; j < chunk.size(); ++j) chunk[j] = pattern(sent + j);
    r = write(client_, chunk.data(), chunk.size());
    if (r < 0) break;
    sent += static_cast<size_t>(r);
  }
  ASSERT_EQ(r, -1);
  EXPECT_EQ(errno, EAGAIN);
  EXPECT_GT(sent, 0u);
  // Everything accepted arrives, in order.
  std::vector<char> in(65536);
  size_t got = 0;
  while (got < sent) {
    ssize_t n = read(server_, in.data(), in.size());
    ASSERT_GT(n, 0);
    for (ssize_t i = 0; i < n; ++i) ASSERT_EQ(in[i], pattern(got + i)) << "at " << got + i;
    got += static_cast<size_t>(n);
  }
  EXPECT_EQ(got, sent);
}

TEST_P(Conformance, NonBlockingConnect) {
  client_ = socket(Domain(), SOCK_STREAM | SOCK_NONBLOCK, 0);
  ASSERT_GE(client_, 0);
  int r = connect(client_, Addr(), addr_len_);
  // TCP says EINPROGRESS (even on loopback); Unix completes at once.
  if (IsTcp()) {
    ASSERT_EQ(r, -1);
    ASSERT_EQ(errno, EINPROGRESS);
  } else {
    ASSERT_EQ(r, 0);
  }
  pollfd p{client_, POLLOUT, 0};
  ASSERT_EQ(poll(&p, 1, 5000), 1);
  EXPECT_EQ(p.revents, POLLOUT);
  int err = -1;
  socklen_t len = sizeof(err);
  ASSERT_EQ(getsockopt(client_, SOL_SOCKET, SO_ERROR, &err, &len), 0);
  EXPECT_EQ(err, 0);
  // After EINPROGRESS, Linux reports the completed connection once with 0;
  // from then on connect() says EISCONN.
  if (IsTcp()) {
    EXPECT_EQ(connect(client_, Addr(), addr_len_), 0);
  }
  errno = 0;
  EXPECT_EQ(connect(client_, Addr(), addr_len_), -1);
  EXPECT_EQ(errno, EISCONN);
}

TEST_P(Conformance, ConnectToNobodyIsRefused) {
  close(listener_);
  listener_ = -1;
  client_ = socket(Domain(), SOCK_STREAM, 0);
  errno = 0;
  EXPECT_EQ(connect(client_, Addr(), addr_len_), -1);
  EXPECT_EQ(errno, ECONNREFUSED);
}

TEST_P(Conformance, DupSharesTheConnection) {
  Connect();
  int d = dup(client_);
  ASSERT_GE(d, 0);
  ExpectTracked(d, DOORWAY_ORIGIN_SOCKET);
  ASSERT_EQ(close(client_), 0);
  client_ = d;
  ASSERT_EQ(write(d, "dup", 3), 3);
  char buf[4];
  ASSERT_EQ(read(server_, buf, sizeof(buf)), 3);
  int d2 = fcntl(server_, F_DUPFD_CLOEXEC, 50);
  ASSERT_GE(d2, 50);
  ExpectTracked(d2, DOORWAY_ORIGIN_ACCEPT);
  EXPECT_EQ(fcntl(d2, F_GETFD), FD_CLOEXEC);
  ASSERT_EQ(write(d2, "ok", 2), 2);
  ASSERT_EQ(read(client_, buf, sizeof(buf)), 2);
  close(d2);
}

TEST_P(Conformance, ReadvWritevSendmsgRecvmsg) {
  Connect();
  char a[] = "abc", b[] = "defgh";
  iovec out[2] = {{a, 3}, {b, 5}};
  ASSERT_EQ(writev(client_, out, 2), 8);
  msghdr m{};
  m.msg_iov = out;
  m.msg_iovlen = 2;
  ASSERT_EQ(sendmsg(client_, &m, 0), 8);
  char x[5] = {}, y[11] = {};
  iovec in[2] = {{x, 5}, {y, 11}};
  WaitReadable(server_);
  ASSERT_EQ(readv(server_, in, 2), 16);
  EXPECT_EQ(std::string(x, 5) + std::string(y, 11), "abcdefghabcdefgh");
  ASSERT_EQ(send(client_, "zz", 2, 0), 2);
  msghdr rm{};
  iovec ri{x, 5};
  rm.msg_iov = &ri;
  rm.msg_iovlen = 1;
  WaitReadable(server_);
  ASSERT_EQ(recvmsg(server_, &rm, 0), 2);
  EXPECT_EQ(rm.msg_flags, 0);
}

std::atomic<int> g_alarms{0};

// A blocking read interrupted by a signal: restarted if the handler has
// SA_RESTART and the socket has no timeout, EINTR otherwise (signal(7)).
class SignalCase {
 public:
  SignalCase(int sa_flags) {
    struct sigaction sa {};
    sa.sa_handler = [](int) { g_alarms.fetch_add(1); };
    sa.sa_flags = sa_flags;
    sigaction(SIGALRM, &sa, &old_);
    g_alarms = 0;
  }
  ~SignalCase() { sigaction(SIGALRM, &old_, nullptr); }

  // Arms a one-shot SIGALRM for this thread's process and starts a thread
  // (with SIGALRM blocked) that writes `data` to fd after the signal ran.
  std::thread WriteAfterSignal(int fd, std::string data) {
    sigset_t block, prev;
    sigemptyset(&block);
    sigaddset(&block, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &block, &prev);
    std::thread t([fd, data] {
      for (int i = 0; i < 5000 && g_alarms.load() == 0; ++i) usleep(1000);
      usleep(20000);
      EXPECT_EQ(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    });
    pthread_sigmask(SIG_SETMASK, &prev, nullptr);
    itimerval it{};
    it.it_value.tv_usec = 20000;
    setitimer(ITIMER_REAL, &it, nullptr);
    return t;
  }

 private:
  struct sigaction old_ {};
};

TEST_P(Conformance, SignalWithRestartRestartsRead) {
  Connect();
  SignalCase sc(SA_RESTART);
  std::thread t = sc.WriteAfterSignal(client_, "late");
  char buf[8];
  EXPECT_EQ(read(server_, buf, sizeof(buf)), 4);
  t.join();
  EXPECT_EQ(g_alarms.load(), 1);
}

// A fault handler without SA_RESTART (crash reporters, sanitizers) beside
// it changes nothing: a fault signal cannot be what interrupted the read.
TEST_P(Conformance, SignalWithRestartRestartsReadBesideAFaultHandler) {
  Connect();
  struct sigaction fault {
  }, old_fault{};
  fault.sa_handler = [](int) { _exit(99); };
  sigaction(SIGBUS, &fault, &old_fault);
  SignalCase sc(SA_RESTART);
  std::thread t = sc.WriteAfterSignal(client_, "late");
  char buf[8];
  EXPECT_EQ(read(server_, buf, sizeof(buf)), 4);
  t.join();
  EXPECT_EQ(g_alarms.load(), 1);
  sigaction(SIGBUS, &old_fault, nullptr);
}

TEST_P(Conformance, SignalWithoutRestartInterruptsRead) {
  Connect();
  SignalCase sc(0);
  std::thread t = sc.WriteAfterSignal(client_, "late");
  char buf[8];
  errno = 0;
  EXPECT_EQ(read(server_, buf, sizeof(buf)), -1);
  EXPECT_EQ(errno, EINTR);
  t.join();
  EXPECT_EQ(read(server_, buf, sizeof(buf)), 4);  // nothing was lost
}

TEST_P(Conformance, SignalWithRestartButTimeoutInterruptsRead) {
  Connect();
  timeval tv{10, 0};
  ASSERT_EQ(setsockopt(server_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
  SignalCase sc(SA_RESTART);
  std::thread t = sc.WriteAfterSignal(client_, "late");
  char buf[8];
  errno = 0;
  EXPECT_EQ(read(server_, buf, sizeof(buf)), -1);
  EXPECT_EQ(errno, EINTR);
  t.join();
  EXPECT_EQ(read(server_, buf, sizeof(buf)), 4);
}

// poll and epoll_wait are never restarted after a handler, SA_RESTART or
// not (signal(7)). (Run with a long DOORWAY_SPIN_NS too, so that under
// doorway the signal lands while the wait spins, not in a system call.)
TEST_P(Conformance, SignalInterruptsPollEvenWithRestart) {
  Connect();
  SignalCase sc(SA_RESTART);
  std::thread t = sc.WriteAfterSignal(client_, "late");
  pollfd p{server_, POLLIN, 0};
  errno = 0;
  EXPECT_EQ(poll(&p, 1, 5000), -1);
  EXPECT_EQ(errno, EINTR);
  t.join();
  EXPECT_EQ(poll(&p, 1, 5000), 1);
  char buf[8];
  EXPECT_EQ(read(server_, buf, sizeof(buf)), 4);
}

TEST_P(Conformance, SignalInterruptsEpollWaitEvenWithRestart) {
  Connect();
  int ep = epoll_create1(EPOLL_CLOEXEC);
  ASSERT_GE(ep, 0);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 7;
  ASSERT_EQ(epoll_ctl(ep, EPOLL_CTL_ADD, server_, &ev), 0);
  SignalCase sc(SA_RESTART);
  std::thread t = sc.WriteAfterSignal(client_, "late");
  epoll_event out[2];
  errno = 0;
  EXPECT_EQ(epoll_wait(ep, out, 2, 5000), -1);
  EXPECT_EQ(errno, EINTR);
  t.join();
  ASSERT_EQ(epoll_wait(ep, out, 2, 5000), 1);
  EXPECT_EQ(out[0].data.u64, 7u);
  close(ep);
}

// sigaction reports the program's own handler, whatever doorway does with it.
TEST_P(Conformance, SigactionReportsTheProgramsHandler) {
  struct sigaction act {
  }, old{};
  act.sa_handler = +[](int) {};
  sigemptyset(&act.sa_mask);
  act.sa_flags = SA_RESTART;
  ASSERT_EQ(sigaction(SIGUSR2, &act, &old), 0);
  struct sigaction now {};
  ASSERT_EQ(sigaction(SIGUSR2, nullptr, &now), 0);
  EXPECT_EQ(now.sa_handler, act.sa_handler);
  EXPECT_EQ(now.sa_flags & SA_SIGINFO, 0);
  EXPECT_NE(now.sa_flags & SA_RESTART, 0);
  auto prev = signal(SIGUSR2, SIG_IGN);
  EXPECT_EQ(prev, act.sa_handler);
  ASSERT_EQ(sigaction(SIGUSR2, &old, nullptr), 0);
}

// ---- epoll (DESIGN §7): events event for event, as the kernel gives them.

class Epoll {
 public:
  Epoll() : fd_(epoll_create1(EPOLL_CLOEXEC)) {}
  ~Epoll() { close(fd_); }
  int fd() const { return fd_; }
  int Ctl(int op, int fd, uint32_t events, uint64_t data) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(fd_, op, fd, &ev);
  }
  // Returns the events; *data gets the data of the first one.
  std::vector<epoll_event> Wait(int timeout_ms) {
    epoll_event ev[8];
    int n = epoll_wait(fd_, ev, 8, timeout_ms);
    EXPECT_GE(n, 0) << strerror(errno);
    return std::vector<epoll_event>(ev, ev + (n > 0 ? n : 0));
  }

 private:
  int fd_;
};

TEST_P(Conformance, EpollLevelTriggered) {
  Connect();
  Epoll ep;
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 42), 0);
  EXPECT_EQ(ep.Wait(0).size(), 0u);
  ASSERT_EQ(write(client_, "0123456789", 10), 10);
  auto ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLIN));
  EXPECT_EQ(ev[0].data.u64, 42u);
  char buf[16];
  ASSERT_EQ(read(server_, buf, 4), 4);
  EXPECT_EQ(ep.Wait(0).size(), 1u);  // still readable
  ASSERT_EQ(read(server_, buf, sizeof(buf)), 6);
  EXPECT_EQ(ep.Wait(0).size(), 0u);
  errno = 0;
  EXPECT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 1), -1);
  EXPECT_EQ(errno, EEXIST);
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_DEL, server_, 0, 0), 0);
  errno = 0;
  EXPECT_EQ(ep.Ctl(EPOLL_CTL_MOD, server_, EPOLLIN, 1), -1);
  EXPECT_EQ(errno, ENOENT);
  ASSERT_EQ(write(client_, "x", 1), 1);
  EXPECT_EQ(ep.Wait(50).size(), 0u);  // deleted
}

TEST_P(Conformance, EpollEdgeTriggered) {
  Connect();
  Epoll ep;
  ASSERT_EQ(fcntl(server_, F_SETFL, O_NONBLOCK), 0);
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN | EPOLLET, 7), 0);
  ASSERT_EQ(write(client_, "abc", 3), 3);
  auto ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLIN));
  EXPECT_EQ(ep.Wait(0).size(), 0u);  // no new edge
  char buf[16];
  ASSERT_EQ(read(server_, buf, sizeof(buf)), 3);
  EXPECT_EQ(read(server_, buf, sizeof(buf)), -1);  // drained to EAGAIN
  EXPECT_EQ(errno, EAGAIN);
  ASSERT_EQ(write(client_, "de", 2), 2);
  ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 7u);
}

TEST_P(Conformance, EpollOneshotNeedsRearm) {
  Connect();
  Epoll ep;
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN | EPOLLONESHOT, 9), 0);
  ASSERT_EQ(write(client_, "a", 1), 1);
  ASSERT_EQ(ep.Wait(5000).size(), 1u);
  EXPECT_EQ(ep.Wait(20).size(), 0u);  // disabled until re-armed
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_MOD, server_, EPOLLIN | EPOLLONESHOT, 10), 0);
  auto ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 10u);
}

TEST_P(Conformance, EpollOutFollowsBufferSpace) {
  Connect();
  Epoll ep;
  ASSERT_EQ(fcntl(client_, F_SETFL, O_NONBLOCK), 0);
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, client_, EPOLLOUT, 5), 0);
  auto ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLOUT));
  size_t sent = FillClient('o');
  ASSERT_EQ(errno, EAGAIN);
  EXPECT_EQ(ep.Wait(0).size(), 0u);  // full: not writable
  // Drain everything on the other side: writable again.
  ASSERT_EQ(DrainServer(sent), sent);
  ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLOUT));
}

TEST_P(Conformance, EpollRdhupAndMixedFds) {
  Connect();
  Epoll ep;
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN | EPOLLRDHUP, 1), 0);
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, p[0], EPOLLIN, 2), 0);
  ASSERT_EQ(write(p[1], "p", 1), 1);
  auto ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 2u);
  ASSERT_EQ(shutdown(client_, SHUT_WR), 0);
  ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 2u);
  uint32_t sock_events = ev[0].data.u64 == 1 ? ev[0].events : ev[1].events;
  EXPECT_EQ(sock_events, static_cast<uint32_t>(EPOLLIN | EPOLLRDHUP));
  close(p[0]);
  close(p[1]);
}

TEST_P(Conformance, EpollExclusiveRules) {
  Connect();
  Epoll ep;
  errno = 0;
  EXPECT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN | EPOLLEXCLUSIVE | EPOLLRDHUP, 1), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN | EPOLLEXCLUSIVE | EPOLLONESHOT, 1), -1);
  EXPECT_EQ(errno, EINVAL);
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN | EPOLLEXCLUSIVE, 1), 0);
  errno = 0;
  EXPECT_EQ(ep.Ctl(EPOLL_CTL_MOD, server_, EPOLLIN, 2), -1);  // registered exclusive
  EXPECT_EQ(errno, EINVAL);
  ASSERT_EQ(write(client_, "x", 1), 1);
  auto ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLIN));
  EXPECT_EQ(ev[0].data.u64, 1u);
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_DEL, server_, 0, 0), 0);
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 3), 0);
  errno = 0;
  EXPECT_EQ(ep.Ctl(EPOLL_CTL_MOD, server_, EPOLLIN | EPOLLEXCLUSIVE, 3), -1);
  EXPECT_EQ(errno, EINVAL);
}

TEST_P(Conformance, EpollOneSocketInTwoSets) {
  Connect();
  Epoll a, b;
  ASSERT_EQ(a.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 1), 0);
  ASSERT_EQ(b.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN | EPOLLET, 2), 0);
  EXPECT_TRUE(a.Wait(0).empty());
  EXPECT_TRUE(b.Wait(0).empty());
  ASSERT_EQ(write(client_, "xy", 2), 2);
  auto ea = a.Wait(5000);
  auto eb = b.Wait(5000);
  ASSERT_EQ(ea.size(), 1u);
  ASSERT_EQ(eb.size(), 1u);
  EXPECT_EQ(ea[0].data.u64, 1u);
  EXPECT_EQ(eb[0].data.u64, 2u);
  EXPECT_EQ(a.Wait(0).size(), 1u);  // level-triggered: still readable
  EXPECT_TRUE(b.Wait(0).empty());   // edge-triggered: reported once
}

TEST_P(Conformance, EpollSetInheritedAcrossFork) {
  Connect();
  Epoll ep;
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 42), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    epoll_event out[2];
    int n = epoll_wait(ep.fd(), out, 2, 5000);
    char buf[4];
    bool ok = n == 1 && out[0].data.u64 == 42 && out[0].events == EPOLLIN &&
              read(server_, buf, sizeof(buf)) == 3;
    _exit(ok ? 0 : 1);
  }
  ASSERT_EQ(write(client_, "abc", 3), 3);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

// An epoll set inside another: the outer set reports the inner one readable
// (EPOLLIN, its own data) when a member of the inner set is, either order of
// adding; edge-triggered on the outer set, once per edge.
TEST_P(Conformance, EpollNestedSets) {
  Connect();
  Epoll inner, outer, outer_et;
  ASSERT_EQ(outer.Ctl(EPOLL_CTL_ADD, inner.fd(), EPOLLIN, 10), 0);  // before the member
  ASSERT_EQ(inner.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 1), 0);
  ASSERT_EQ(outer_et.Ctl(EPOLL_CTL_ADD, inner.fd(), EPOLLIN | EPOLLET, 20), 0);  // after
  EXPECT_TRUE(outer.Wait(0).empty());
  EXPECT_TRUE(outer_et.Wait(0).empty());
  ASSERT_EQ(write(client_, "n", 1), 1);
  auto ev = outer.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 10u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLIN));
  ev = outer_et.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 20u);
  EXPECT_TRUE(outer_et.Wait(0).empty());  // the same edge
  EXPECT_EQ(outer.Wait(0).size(), 1u);    // level: still ready
  ev = inner.Wait(0);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 1u);
  char c;
  ASSERT_EQ(read(server_, &c, 1), 1);
  EXPECT_TRUE(inner.Wait(0).empty());
  EXPECT_TRUE(outer.Wait(0).empty());
  // A sleeping outer wait wakes for the inner member.
  std::thread t([this] {
    usleep(50000);
    EXPECT_EQ(write(client_, "m", 1), 1);
  });
  ev = outer.Wait(5000);
  t.join();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 10u);
  ASSERT_EQ(outer.Ctl(EPOLL_CTL_DEL, inner.fd(), 0, 0), 0);
  EXPECT_TRUE(outer.Wait(0).empty());
}

// After the peer's close was reported on an edge-triggered member, a wait
// sleeps until its timeout: 0 events, and (the point under doorway) no CPU
// burnt meanwhile (CPU time, not wall time: bounded far above a healthy
// wait's bounded spin).
TEST_P(Conformance, EpollEdgeTriggeredHangupThenQuiet) {
  Connect();
  Epoll ep;
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN | EPOLLRDHUP | EPOLLET, 5), 0);
  ASSERT_EQ(close(client_), 0);
  client_ = -1;
  auto ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_TRUE(ev[0].events & EPOLLRDHUP) << ev[0].events;
  rusage before{}, after{};
  getrusage(RUSAGE_THREAD, &before);
  EXPECT_TRUE(ep.Wait(300).empty());
  getrusage(RUSAGE_THREAD, &after);
  auto us = [](const rusage& r) {
    return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1000000L + r.ru_utime.tv_usec +
           r.ru_stime.tv_usec;
  };
  EXPECT_LT(us(after) - us(before), 150000) << "the wait kept the CPU busy";
  // The registration is still there as far as the program can tell.
  errno = 0;
  EXPECT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 6), -1);
  EXPECT_EQ(errno, EEXIST);
  EXPECT_EQ(ep.Ctl(EPOLL_CTL_MOD, server_, EPOLLIN | EPOLLRDHUP, 7), 0);
  ev = ep.Wait(1000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 7u);
  EXPECT_EQ(ep.Ctl(EPOLL_CTL_DEL, server_, 0, 0), 0);
  EXPECT_TRUE(ep.Wait(0).empty());
}

// Edge-triggered: new data is a new edge even if the program did not read
// up to EAGAIN (nginx reads a whole request and waits for the next one).
TEST_P(Conformance, EpollEdgeTriggeredNewDataIsAnEdge) {
  Connect();
  Epoll ep;
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN | EPOLLOUT | EPOLLET, 9), 0);
  auto ev = ep.Wait(5000);  // writable
  ASSERT_EQ(ev.size(), 1u);
  ASSERT_EQ(write(client_, "req1", 4), 4);
  ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_TRUE(ev[0].events & EPOLLIN);
  char buf[4];
  ASSERT_EQ(read(server_, buf, 4), 4);  // exactly the request: no EAGAIN seen
  EXPECT_TRUE(ep.Wait(0).empty());
  ASSERT_EQ(write(client_, "req2", 4), 4);
  ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_TRUE(ev[0].events & EPOLLIN) << ev[0].events;
  ASSERT_EQ(write(client_, "req3", 4), 4);  // unread data plus more: an edge again
  ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_TRUE(ev[0].events & EPOLLIN) << ev[0].events;
}

// ---- epoll with many members (O(ready) waits under doorway: idle members
// stay armed across waits and only woken or recently ready ones are looked
// at; these cases check that nothing is lost or reported twice that way).

// More connections to the same listener: clients[i] connected to servers[i].
struct Pairs {
  std::vector<int> clients, servers;
  ~Pairs() {
    for (int fd : clients) close(fd);
    for (int fd : servers) {
      if (fd >= 0) close(fd);
    }
  }
};

void MakePairs(int n, int domain, sockaddr* addr, socklen_t len, int listener, Pairs* p) {
  for (int i = 0; i < n; ++i) {
    int c = socket(domain, SOCK_STREAM, 0);
    ASSERT_GE(c, 0);
    ASSERT_EQ(connect(c, addr, len), 0) << strerror(errno);
    p->clients.push_back(c);
    int s = accept(listener, nullptr, nullptr);
    ASSERT_GE(s, 0);
    p->servers.push_back(s);
  }
}

std::vector<uint64_t> Datas(const std::vector<epoll_event>& ev) {
  std::vector<uint64_t> d;
  for (const auto& e : ev) d.push_back(e.data.u64);
  std::sort(d.begin(), d.end());
  return d;
}

// Many idle members, one turns ready: exactly that one is reported, before
// and after the set slept; a level-triggered member still ready after a
// sleep is reported again; members drained by read() are not.
TEST_P(Conformance, EpollManyMembersOnlyTheReadyOne) {
  Pairs p;
  MakePairs(16, Domain(), Addr(), addr_len_, listener_, &p);
  Epoll ep;
  for (int i = 0; i < 16; ++i) ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, p.servers[i], EPOLLIN, i), 0);
  EXPECT_TRUE(ep.Wait(0).empty());
  EXPECT_TRUE(ep.Wait(30).empty());  // sleeps
  ASSERT_EQ(write(p.clients[7], "seven", 5), 5);
  auto ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 7u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLIN));
  // A sleeping wait wakes for another member; the first is still ready.
  std::thread t([&] {
    usleep(50000);
    EXPECT_EQ(write(p.clients[3], "three", 5), 5);
  });
  ev = ep.Wait(5000);
  if (ev.size() == 1) {  // woke for 7 alone (level): once more for 3
    EXPECT_EQ(ev[0].data.u64, 7u);
    t.join();
    ev = ep.Wait(5000);
    EXPECT_EQ(Datas(ev), (std::vector<uint64_t>{3, 7}));
  } else {
    t.join();
    EXPECT_EQ(Datas(ev), (std::vector<uint64_t>{3, 7}));
  }
  char buf[16];
  ASSERT_EQ(read(p.servers[7], buf, sizeof(buf)), 5);
  ev = ep.Wait(0);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 3u);
  ASSERT_EQ(read(p.servers[3], buf, sizeof(buf)), 5);
  EXPECT_TRUE(ep.Wait(0).empty());
  EXPECT_TRUE(ep.Wait(30).empty());
  // Both go back to sleep and still wake the set.
  ASSERT_EQ(write(p.clients[7], "again", 5), 5);
  ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 7u);
  ASSERT_EQ(read(p.servers[7], buf, sizeof(buf)), 5);
  ASSERT_EQ(write(p.clients[3], "again", 5), 5);
  ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 3u);
}

// A member drained by read() between waits is not reported; when data
// comes again while the set sleeps, it is.
TEST_P(Conformance, EpollMemberDrainedBetweenWaits) {
  Connect();
  Epoll ep;
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 1), 0);
  ASSERT_EQ(write(client_, "abc", 3), 3);
  ASSERT_EQ(ep.Wait(5000).size(), 1u);
  char buf[8];
  ASSERT_EQ(read(server_, buf, sizeof(buf)), 3);
  EXPECT_TRUE(ep.Wait(0).empty());
  EXPECT_TRUE(ep.Wait(30).empty());
  std::thread t([this] {
    usleep(30000);
    EXPECT_EQ(write(client_, "d", 1), 1);
  });
  auto ev = ep.Wait(5000);
  t.join();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLIN));
}

// EPOLL_CTL_MOD of a member the set slept on (armed for EPOLLIN only):
// the new events and data apply at once.
TEST_P(Conformance, EpollModOfAnArmedMember) {
  Connect();
  Epoll ep;
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 1), 0);
  EXPECT_TRUE(ep.Wait(30).empty());
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_MOD, server_, EPOLLIN | EPOLLOUT, 2), 0);
  auto ev = ep.Wait(0);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLOUT));
  EXPECT_EQ(ev[0].data.u64, 2u);
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_MOD, server_, EPOLLIN | EPOLLET, 3), 0);
  EXPECT_TRUE(ep.Wait(30).empty());
  ASSERT_EQ(write(client_, "x", 1), 1);
  ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLIN));
  EXPECT_EQ(ev[0].data.u64, 3u);
  EXPECT_TRUE(ep.Wait(0).empty());  // edge-triggered: once
}

// close() of a member the set slept on: it is gone from the set, the
// others still wake it, and its fd number reused by a new connection and
// added again reports with the new data.
TEST_P(Conformance, EpollCloseOfAnArmedMember) {
  Pairs p;
  MakePairs(4, Domain(), Addr(), addr_len_, listener_, &p);
  Epoll ep;
  for (int i = 0; i < 4; ++i) ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, p.servers[i], EPOLLIN, i), 0);
  EXPECT_TRUE(ep.Wait(30).empty());
  client_ = socket(Domain(), SOCK_STREAM, 0);
  ASSERT_GE(client_, 0);
  ASSERT_EQ(connect(client_, Addr(), addr_len_), 0) << strerror(errno);
  int closed = p.servers[2];
  ASSERT_EQ(close(closed), 0);
  p.servers[2] = -1;
  EXPECT_TRUE(ep.Wait(30).empty());
  ASSERT_EQ(write(p.clients[1], "one", 3), 3);
  auto ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 1u);
  server_ = accept(listener_, nullptr, nullptr);
  ASSERT_GE(server_, 0);
  if (server_ != closed) {  // the closed number, for the new connection
    ASSERT_EQ(dup2(server_, closed), closed);
    close(server_);
    server_ = closed;
  }
  errno = 0;
  EXPECT_EQ(ep.Ctl(EPOLL_CTL_MOD, server_, EPOLLIN, 9), -1);
  EXPECT_EQ(errno, ENOENT);
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 20), 0);
  ASSERT_EQ(write(client_, "new", 3), 3);
  for (int i = 0; i < 100; ++i) {  // TCP may take a moment to deliver
    ev = ep.Wait(5000);
    if (ev.size() == 2) break;
  }
  EXPECT_EQ(Datas(ev), (std::vector<uint64_t>{1, 20}));
}

// shutdown(SHUT_RD) by the program on a member the set slept on makes it
// readable (no data from the peer involved).
TEST_P(Conformance, EpollShutdownOfAnArmedMember) {
  Connect();
  Epoll ep;
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 4), 0);
  EXPECT_TRUE(ep.Wait(30).empty());
  ASSERT_EQ(shutdown(server_, SHUT_RD), 0);
  auto ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLIN));
  EXPECT_EQ(ev[0].data.u64, 4u);
}

// A writer's set sleeps on a full buffer; the reader drains it from
// another thread: EPOLLOUT wakes the set.
TEST_P(Conformance, EpollOutWakesASleeperWhenRoomArrives) {
  Connect();
  Epoll ep;
  ASSERT_EQ(fcntl(client_, F_SETFL, O_NONBLOCK), 0);
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, client_, EPOLLOUT, 5), 0);
  size_t sent = FillClient('o');
  ASSERT_EQ(errno, EAGAIN);
  EXPECT_TRUE(ep.Wait(30).empty());
  std::thread t([&] {
    usleep(30000);
    EXPECT_EQ(DrainServer(sent), sent);
  });
  auto ev = ep.Wait(5000);
  t.join();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLOUT));
}

// Edge-triggered EPOLLOUT on a member the set slept on while it was
// writable: filling the buffer to EAGAIN and the reader draining it while
// the set sleeps is a new edge that wakes it.
TEST_P(Conformance, EpollEdgeTriggeredOutAfterEagainWakesASleeper) {
  Connect();
  Epoll ep;
  ASSERT_EQ(fcntl(client_, F_SETFL, O_NONBLOCK), 0);
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, client_, EPOLLOUT | EPOLLET, 6), 0);
  auto ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLOUT));
  EXPECT_TRUE(ep.Wait(30).empty());  // the same edge
  size_t sent = FillClient('e');
  ASSERT_EQ(errno, EAGAIN);
  EXPECT_TRUE(ep.Wait(30).empty());
  std::thread t([&] {
    usleep(30000);
    EXPECT_EQ(DrainServer(sent), sent);
  });
  ev = ep.Wait(5000);
  t.join();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLOUT));
  EXPECT_EQ(ev[0].data.u64, 6u);
}

// Request/response through epoll: each round the client writes a request
// and waits in its set; the server thread answers after a delay that
// varies from none to longer than any spin (under doorway a member written
// to since its last reply spins longer before the set sleeps: epoll.cc
// kSpinDueMaxNs). Every reply is one EPOLLIN event, with its data, whether
// it came while the set spun or slept. Then waits that time out while the
// reply is due (the spin budget is halved each time) still see the late
// reply.
TEST_P(Conformance, EpollReplyDueWakesWhetherSpinningOrAsleep) {
  Connect();
  Epoll ep;
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, client_, EPOLLIN, 77), 0);
  constexpr int kRounds = 12;
  constexpr useconds_t kDelayUs[] = {0, 200, 3000, 20000};
  std::atomic<bool> late_go{false};
  std::thread srv([&] {
    char req[8];
    for (int i = 0; i <= kRounds; ++i) {
      if (read(server_, req, sizeof(req)) != static_cast<ssize_t>(sizeof(req))) return;
      if (i < kRounds) {
        usleep(kDelayUs[i % 4]);
      } else {
        for (int w = 0; w < 5000 && !late_go.load(); ++w) usleep(1000);  // bounded: 5 s
      }
      req[0] = 'R';
      if (write(server_, req, sizeof(req)) != static_cast<ssize_t>(sizeof(req))) return;
    }
  });
  char buf[8];
  auto client = [&] {
    for (int i = 0; i < kRounds; ++i) {
      char req[8] = {'Q', static_cast<char>('a' + i), 0, 0, 0, 0, 0, 0};
      ASSERT_EQ(write(client_, req, sizeof(req)), 8);
      auto ev = ep.Wait(5000);
      ASSERT_EQ(ev.size(), 1u) << "round " << i;
      EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLIN));
      EXPECT_EQ(ev[0].data.u64, 77u);
      ASSERT_EQ(read(client_, buf, sizeof(buf)), 8);
      EXPECT_EQ(buf[0], 'R');
      EXPECT_EQ(buf[1], 'a' + i);
      EXPECT_TRUE(ep.Wait(0).empty());
    }
    char last[8] = {'Q', 'z', 0, 0, 0, 0, 0, 0};
    ASSERT_EQ(write(client_, last, sizeof(last)), 8);
    for (int i = 0; i < 4; ++i) EXPECT_TRUE(ep.Wait(3).empty()) << "timeout " << i;
    late_go.store(true);
    auto ev = ep.Wait(5000);
    ASSERT_EQ(ev.size(), 1u);
    EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLIN));
    ASSERT_EQ(read(client_, buf, sizeof(buf)), 8);
    EXPECT_EQ(buf[1], 'z');
  };
  client();
  if (HasFatalFailure()) shutdown(client_, SHUT_RDWR);  // the server thread's read ends
  late_go.store(true);
  srv.join();
}

// Both ends waiting in epoll sets on one CPU (under doorway each wait
// publishes its CPU and does not spin when its peer waits on the same one,
// epoll.cc SpinHint): a ping-pong still gets every message, event for
// event.
TEST_P(Conformance, EpollPingPongOnOneCpu) {
  Connect();
  cpu_set_t old;
  ASSERT_EQ(pthread_getaffinity_np(pthread_self(), sizeof(old), &old), 0);
  int cpu = sched_getcpu();
  ASSERT_GE(cpu, 0);
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  ASSERT_EQ(pthread_setaffinity_np(pthread_self(), sizeof(one), &one), 0);
  constexpr int kRounds = 200;
  std::thread srv([&] {
    (void)pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
    Epoll sep;
    ASSERT_EQ(sep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 2), 0);
    for (int i = 0; i < kRounds; ++i) {
      auto ev = sep.Wait(5000);
      ASSERT_EQ(ev.size(), 1u) << "server round " << i;
      EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLIN));
      EXPECT_EQ(ev[0].data.u64, 2u);
      char b[4];
      ASSERT_EQ(read(server_, b, sizeof(b)), 4);
      ASSERT_EQ(write(server_, b, sizeof(b)), 4);
    }
  });
  Epoll ep;
  auto client = [&] {
    ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, client_, EPOLLIN, 1), 0);
    for (int i = 0; i < kRounds; ++i) {
      int32_t v = i;
      ASSERT_EQ(write(client_, &v, sizeof(v)), 4);
      auto ev = ep.Wait(5000);
      ASSERT_EQ(ev.size(), 1u) << "client round " << i;
      EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLIN));
      EXPECT_EQ(ev[0].data.u64, 1u);
      int32_t got = -1;
      ASSERT_EQ(read(client_, &got, sizeof(got)), 4);
      ASSERT_EQ(got, i);
    }
  };
  client();
  if (HasFatalFailure()) shutdown(client_, SHUT_RDWR);  // the server thread's wait ends
  srv.join();
  ASSERT_EQ(pthread_setaffinity_np(pthread_self(), sizeof(old), &old), 0);
}

// A set that slept with several members armed and woke for one of them
// (under doorway it takes back the arming of the others, epoll.cc "Taking
// the arming back") still sees each of them turn ready later: while it is
// awake between waits, while it spins, and after it slept again.
TEST_P(Conformance, EpollWokenSetStillSeesItsOtherMembers) {
  Pairs p;
  MakePairs(6, Domain(), Addr(), addr_len_, listener_, &p);
  Epoll ep;
  for (int i = 0; i < 6; ++i) ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, p.clients[i], EPOLLIN, i), 0);
  // Every member hot first (ready once), so that the sleeps arm them all.
  for (int i = 0; i < 6; ++i) ASSERT_EQ(write(p.servers[i], "h", 1), 1);
  char b[8];
  size_t seen = 0;
  for (int w = 0; w < 12 && seen < 6; ++w) {
    auto ev = ep.Wait(5000);
    for (auto& e : ev) ASSERT_EQ(read(p.clients[e.data.u64], b, sizeof(b)), 1);
    seen += ev.size();
  }
  ASSERT_EQ(seen, 6u);
  for (int round = 0; round < 3; ++round) {
    const int first = round, second = 5 - round;
    // The set sleeps; the first member wakes it.
    std::thread w1([&] {
      usleep(30000);
      EXPECT_EQ(write(p.servers[first], "a", 1), 1);
    });
    auto ev = ep.Wait(5000);
    w1.join();
    ASSERT_EQ(Datas(ev), (std::vector<uint64_t>{static_cast<uint64_t>(first)}));
    ASSERT_EQ(read(p.clients[first], b, sizeof(b)), 1);
    // Another member turns ready while the program is away from the set.
    ASSERT_EQ(write(p.servers[second], "b", 1), 1);
    ev = ep.Wait(5000);
    ASSERT_EQ(Datas(ev), (std::vector<uint64_t>{static_cast<uint64_t>(second)}));
    ASSERT_EQ(read(p.clients[second], b, sizeof(b)), 1);
    // And one while the set waits again (spinning or asleep).
    std::thread w2([&] {
      usleep(round == 0 ? 0 : 30000);
      EXPECT_EQ(write(p.servers[(first + 2) % 6], "c", 1), 1);
    });
    ev = ep.Wait(5000);
    w2.join();
    ASSERT_EQ(Datas(ev), (std::vector<uint64_t>{static_cast<uint64_t>((first + 2) % 6)}));
    ASSERT_EQ(read(p.clients[(first + 2) % 6], b, sizeof(b)), 1);
    EXPECT_TRUE(ep.Wait(0).empty());
  }
}

// Two threads asleep in one set; a member's data wakes one of them, which
// returns it. The other may still sleep on the arming the first one's
// sleep did: under doorway the woken thread must not take that arming back
// (epoll.cc Revoke, only for a set with one waiter), or the other member's
// data below would not wake the sleeper. (The kernel usually wakes both
// threads for the level-triggered doorbell, and the second then arms the
// members again; without the one-waiter rule this fails only when the
// second re-armed before the first took the arming back.)
TEST_P(Conformance, EpollTwoSleepersOneWokenOtherStillWakes) {
  Pairs p;
  MakePairs(2, Domain(), Addr(), addr_len_, listener_, &p);
  Epoll ep;
  for (int i = 0; i < 2; ++i) ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, p.clients[i], EPOLLIN, i), 0);
  std::atomic<int> done{0};
  std::vector<uint64_t> got[2];
  auto waiter = [&](int t) {
    epoll_event ev[4];
    int n = epoll_wait(ep.fd(), ev, 4, 5000);
    for (int i = 0; i < n; ++i) got[t].push_back(ev[i].data.u64);
    done.fetch_add(1);
  };
  std::thread a(waiter, 0);
  usleep(50000);  // a sleeps (a spin lasts at most a few ms)
  std::thread b(waiter, 1);
  usleep(50000);
  EXPECT_EQ(write(p.servers[0], "y", 1), 1);
  for (int i = 0; i < 500 && done.load() == 0; ++i) usleep(1000);
  usleep(20000);
  char c;
  EXPECT_EQ(read(p.clients[0], &c, 1), 1);
  const bool one_left = done.load() == 1;  // the kernel may have woken both
  EXPECT_EQ(write(p.servers[1], "x", 1), 1);
  a.join();
  b.join();
  std::vector<uint64_t> all = got[0];
  all.insert(all.end(), got[1].begin(), got[1].end());
  std::sort(all.begin(), all.end());
  if (one_left) {
    EXPECT_EQ(all, (std::vector<uint64_t>{0, 1}));
  } else {
    EXPECT_EQ(all, (std::vector<uint64_t>{0, 0}));
  }
}

// One set, two threads waiting in it, edge-triggered members turning ready
// one after the other while they sleep: every edge is reported exactly
// once, to one of the threads.
TEST_P(Conformance, EpollTwoThreadsOneSetEachEdgeOnce) {
  Pairs p;
  MakePairs(6, Domain(), Addr(), addr_len_, listener_, &p);
  Epoll ep;
  for (int i = 0; i < 6; ++i) {
    ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, p.servers[i], EPOLLIN | EPOLLET, i), 0);
  }
  std::atomic<int> seen{0};
  std::vector<uint64_t> got[2];
  auto waiter = [&](int t) {
    // Bounded: at most 50 waits of 100 ms.
    for (int round = 0; round < 50 && seen.load() < 6; ++round) {
      epoll_event ev[8];
      int n = epoll_wait(ep.fd(), ev, 8, 100);
      for (int i = 0; i < n; ++i) got[t].push_back(ev[i].data.u64);
      if (n > 0) seen.fetch_add(n);
    }
  };
  std::thread a(waiter, 0), b(waiter, 1);
  for (int i = 0; i < 6; ++i) {
    usleep(20000);
    EXPECT_EQ(write(p.clients[i], "e", 1), 1);  // not ASSERT: the threads must be joined
  }
  a.join();
  b.join();
  std::vector<uint64_t> all = got[0];
  all.insert(all.end(), got[1].begin(), got[1].end());
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, (std::vector<uint64_t>{0, 1, 2, 3, 4, 5}));
}

// Two sets (and a poll) on one socket, each after sleeping on it: whoever
// is woken first, the others still see the data.
TEST_P(Conformance, EpollDoorbellSeenByEveryWaiter) {
  Connect();
  Epoll a, b;
  ASSERT_EQ(a.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 1), 0);
  ASSERT_EQ(b.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 2), 0);
  EXPECT_TRUE(a.Wait(30).empty());
  EXPECT_TRUE(b.Wait(30).empty());
  ASSERT_EQ(write(client_, "x", 1), 1);
  pollfd pf{server_, POLLIN, 0};
  ASSERT_EQ(poll(&pf, 1, 5000), 1);
  auto ea = a.Wait(5000);
  auto eb = b.Wait(5000);
  ASSERT_EQ(ea.size(), 1u);
  ASSERT_EQ(eb.size(), 1u);
  EXPECT_EQ(ea[0].data.u64, 1u);
  EXPECT_EQ(eb[0].data.u64, 2u);
  char c;
  ASSERT_EQ(read(server_, &c, 1), 1);
  EXPECT_TRUE(a.Wait(30).empty());
  EXPECT_TRUE(b.Wait(30).empty());
  ASSERT_EQ(write(client_, "y", 1), 1);
  ASSERT_EQ(b.Wait(5000).size(), 1u);
  ASSERT_EQ(a.Wait(5000).size(), 1u);
}

// A set the parent slept on, inherited by a child that consumes an event:
// the parent's later waits still see new data.
TEST_P(Conformance, EpollSetSleptOnBeforeFork) {
  Connect();
  Epoll ep;
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 42), 0);
  EXPECT_TRUE(ep.Wait(30).empty());
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    epoll_event out[2];
    int n = epoll_wait(ep.fd(), out, 2, 5000);
    char buf[4];
    bool ok = n == 1 && out[0].data.u64 == 42 && read(server_, buf, sizeof(buf)) == 3;
    _exit(ok ? 0 : 1);
  }
  ASSERT_EQ(write(client_, "abc", 3), 3);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_TRUE(ep.Wait(30).empty());
  ASSERT_EQ(write(client_, "z", 1), 1);
  auto ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 42u);
}

// A one-shot member re-armed by EPOLL_CTL_MOD after it fired wakes a set
// that sleeps (not only one that finds it ready at once). Asked of the
// kernel (poll on the epoll fd, which doorway passes through): doorway
// finds the event after a timeout anyway.
TEST_P(Conformance, EpollOneshotRearmedKernelSetWakes) {
  Connect();
  Epoll ep;
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN | EPOLLONESHOT, 1), 0);
  ASSERT_EQ(write(client_, "a", 1), 1);
  ASSERT_EQ(ep.Wait(5000).size(), 1u);
  char c;
  ASSERT_EQ(read(server_, &c, 1), 1);
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_MOD, server_, EPOLLIN | EPOLLONESHOT, 2), 0);
  EXPECT_TRUE(ep.Wait(30).empty());
  ASSERT_EQ(write(client_, "b", 1), 1);
  pollfd p{ep.fd(), POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 5000), 1);  // the kernel's set woke
  auto ev = ep.Wait(0);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLIN));
  EXPECT_EQ(ev[0].data.u64, 2u);
}

// EPOLL_CTL_DEL then EPOLL_CTL_ADD of the same socket, as redis's event
// loop does around every request (doorway keeps the kernel's part of the
// registration meanwhile): the kernel's answers, and the re-added member
// wakes a sleeping set.
TEST_P(Conformance, EpollDelThenAddAgainKernelSetWakes) {
  Connect();
  Epoll ep;
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 1), 0);
  EXPECT_TRUE(ep.Wait(30).empty());
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_DEL, server_, 0, 0), 0);
  errno = 0;
  EXPECT_EQ(ep.Ctl(EPOLL_CTL_DEL, server_, 0, 0), -1);
  EXPECT_EQ(errno, ENOENT);
  errno = 0;
  EXPECT_EQ(ep.Ctl(EPOLL_CTL_MOD, server_, EPOLLIN, 9), -1);
  EXPECT_EQ(errno, ENOENT);
  ASSERT_EQ(write(client_, "a", 1), 1);
  WaitReadable(server_);
  EXPECT_TRUE(ep.Wait(30).empty());  // not a member
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN | EPOLLOUT, 2), 0);
  errno = 0;
  EXPECT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 9), -1);
  EXPECT_EQ(errno, EEXIST);
  auto ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLIN | EPOLLOUT));
  EXPECT_EQ(ev[0].data.u64, 2u);
  char c;
  ASSERT_EQ(read(server_, &c, 1), 1);
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_MOD, server_, EPOLLIN, 3), 0);
  EXPECT_TRUE(ep.Wait(30).empty());
  ASSERT_EQ(write(client_, "b", 1), 1);
  pollfd p{ep.fd(), POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 5000), 1);  // the kernel's set woke
  ev = ep.Wait(0);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLIN));
  EXPECT_EQ(ev[0].data.u64, 3u);
  // Deleted and added with other events, several times in a row.
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(ep.Ctl(EPOLL_CTL_DEL, server_, 0, 0), 0);
    ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLOUT, 10 + i), 0);
    ev = ep.Wait(5000);
    ASSERT_EQ(ev.size(), 1u);
    EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLOUT));
    EXPECT_EQ(ev[0].data.u64, static_cast<uint64_t>(10 + i));
  }
}

// A deleted socket whose fd is closed while a duplicate keeps it open
// leaves nothing in the set: when its peer hangs up, the epoll fd itself
// does not turn readable (asked of the kernel: poll on an epoll fd).
TEST_P(Conformance, EpollDelThenCloseOfADuplicateLeavesNothing) {
  Connect();
  Epoll ep;
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 1), 0);
  EXPECT_TRUE(ep.Wait(30).empty());
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_DEL, server_, 0, 0), 0);
  int dupfd = dup(server_);
  ASSERT_GE(dupfd, 0);
  ASSERT_EQ(close(server_), 0);
  server_ = dupfd;
  ASSERT_EQ(close(client_), 0);
  client_ = -1;
  WaitReadable(server_);  // the hang-up arrived
  pollfd p{ep.fd(), POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 30), 0);
  EXPECT_TRUE(ep.Wait(30).empty());
}

// EPOLL_CTL_DEL, then fork; the child closes the socket and exits; the
// parent adds it again: the set still wakes for it.
TEST_P(Conformance, EpollDelThenForkThenAddAgainKernelSetWakes) {
  Connect();
  Epoll ep;
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 1), 0);
  EXPECT_TRUE(ep.Wait(30).empty());
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_DEL, server_, 0, 0), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(server_);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, server_, EPOLLIN, 2), 0);
  EXPECT_TRUE(ep.Wait(30).empty());
  ASSERT_EQ(write(client_, "a", 1), 1);
  pollfd p{ep.fd(), POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 5000), 1);  // the kernel's set woke
  auto ev = ep.Wait(0);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 2u);
}

// A sleeping set woken by something it then does not report (here the
// doorbell of a member the program deleted, whose kernel registration
// doorway kept) still wakes for its other members afterwards: the wake
// took the arming of the member it slept on back (doorway's revocation),
// and the wait must arm it again before it sleeps or returns. Asked of the
// kernel afterwards (poll on the epoll fd).
TEST_P(Conformance, EpollWokenForNothingKernelSetWakes) {
  Pairs p;
  MakePairs(2, Domain(), Addr(), addr_len_, listener_, &p);
  Epoll ep;
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, p.clients[0], EPOLLIN, 1), 0);
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_ADD, p.clients[1], EPOLLIN, 2), 0);
  EXPECT_TRUE(ep.Wait(30).empty());  // both armed by the sleep
  ASSERT_EQ(ep.Ctl(EPOLL_CTL_DEL, p.clients[1], 0, 0), 0);
  // Member 1 turns ready and is read: it is looked at (and armed for the
  // set's next sleep) again.
  ASSERT_EQ(write(p.servers[0], "a", 1), 1);
  auto ev = ep.Wait(5000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 1u);
  char c;
  ASSERT_EQ(read(p.clients[0], &c, 1), 1);
  // While the set sleeps, the deleted one turns readable.
  std::thread t([&] {
    usleep(20000);
    EXPECT_EQ(write(p.servers[1], "b", 1), 1);
  });
  EXPECT_TRUE(ep.Wait(100).empty());
  t.join();
  ASSERT_EQ(write(p.servers[0], "c", 1), 1);
  pollfd pf{ep.fd(), POLLIN, 0};
  EXPECT_EQ(poll(&pf, 1, 5000), 1);  // the kernel's set woke
  ev = ep.Wait(0);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data.u64, 1u);
  EXPECT_EQ(ev[0].events, static_cast<uint32_t>(EPOLLIN));
}

TEST_P(Conformance, LongIoVectors) {
  Connect();
  // More iovecs than doorway copies at once (64): all of them are used.
  constexpr int kN = 300;
  std::vector<char> out(kN), in(kN, 0);
  std::vector<iovec> ov(kN), iv(kN);
  for (int i = 0; i < kN; ++i) {
    out[i] = static_cast<char>(i * 13);
    ov[i] = {&out[i], 1};
    iv[i] = {&in[i], 1};
  }
  ASSERT_EQ(writev(client_, ov.data(), kN), kN);
  WaitReadable(server_);
  int avail = 0;
  for (int i = 0; i < 100 && avail < kN; ++i) {  // loopback TCP may take a moment
    ASSERT_EQ(ioctl(server_, FIONREAD, &avail), 0);
    if (avail < kN) usleep(1000);
  }
  ASSERT_EQ(readv(server_, iv.data(), kN), kN);
  EXPECT_EQ(in, out);
}

TEST_P(Conformance, BadDescriptors) {
  char buf[4];
  errno = 0;
  EXPECT_EQ(read(-1, buf, 1), -1);
  EXPECT_EQ(errno, EBADF);
  EXPECT_EQ(send(-1, buf, 1, 0), -1);
  EXPECT_EQ(errno, EBADF);
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  EXPECT_EQ(send(p[1], buf, 1, 0), -1);
  EXPECT_EQ(errno, ENOTSOCK);
  EXPECT_EQ(accept(p[0], nullptr, nullptr), -1);
  EXPECT_EQ(errno, ENOTSOCK);
  close(p[0]);
  close(p[1]);
  EXPECT_EQ(close(1 << 20), -1);
  EXPECT_EQ(errno, EBADF);
}

// Many connections to one listener in a row, each closed a different way:
// every one must behave as a new connection (data, EOF, reset), whatever
// doorway reuses between them (runtime/reuse.h: the door socket pair of a
// closed connection carries the next one). Under doorway the reuse must
// happen (a reused door socket keeps its inode); natively it cannot.
TEST_P(Conformance, RepeatedConnectionsEachNew) {
  std::vector<ino_t> seen;
  int reused = 0;
  for (int i = 0; i < 40; ++i) {
    SCOPED_TRACE("connection " + std::to_string(i));
    ASSERT_NO_FATAL_FAILURE(ConnectNoticingReuse(&seen, &reused));
    // Both directions, sizes varying per connection.
    const size_t n = 1 + (static_cast<size_t>(i) * 7919) % 20000;
    std::vector<char> out(n), in(n);
    for (size_t k = 0; k < n; ++k) out[k] = static_cast<char>(k * 31 + i);
    ASSERT_EQ(write(client_, out.data(), n), static_cast<ssize_t>(n));
    size_t got = 0;
    while (got < n) {
      ssize_t r = read(server_, in.data() + got, n - got);
      ASSERT_GT(r, 0);
      got += static_cast<size_t>(r);
    }
    ASSERT_EQ(in, out);
    ASSERT_EQ(write(server_, "pong", 4), 4);
    char buf[8];
    ASSERT_EQ(read(client_, buf, sizeof(buf)), 4);
    switch (i % 4) {
      case 0:  // the client closes first: the server reads EOF
        close(std::exchange(client_, -1));
        EXPECT_EQ(read(server_, buf, sizeof(buf)), 0);
        break;
      case 1:  // the server closes first: the client reads EOF
        close(std::exchange(server_, -1));
        EXPECT_EQ(read(client_, buf, sizeof(buf)), 0);
        break;
      case 2: {  // closed with unread data: the peer is reset
        ASSERT_EQ(write(server_, "unread", 6), 6);
        WaitReadable(client_);
        close(std::exchange(client_, -1));
        errno = 0;
        EXPECT_EQ(read(server_, buf, sizeof(buf)), -1);
        EXPECT_EQ(errno, ECONNRESET);
        break;
      }
      default: {  // half-closes first, then both close
        ASSERT_EQ(shutdown(client_, SHUT_WR), 0);
        EXPECT_EQ(read(server_, buf, sizeof(buf)), 0);
        ASSERT_EQ(write(server_, "last", 4), 4);
        EXPECT_EQ(read(client_, buf, sizeof(buf)), 4);
        ASSERT_EQ(shutdown(server_, SHUT_WR), 0);
        EXPECT_EQ(read(client_, buf, sizeof(buf)), 0);
        pollfd p{client_, POLLIN | POLLRDHUP, 0};
        EXPECT_EQ(poll(&p, 1, 5000), 1);
        EXPECT_EQ(p.revents & (POLLIN | POLLRDHUP), POLLIN | POLLRDHUP);
        break;
      }
    }
    for (int* fd : {&client_, &server_}) {
      if (*fd >= 0) close(std::exchange(*fd, -1));
    }
  }
  ExpectDoorReuse(reused, 20);
}

// A new connection's file flags are a new socket's (O_RDWR, blocking, no
// O_ASYNC), whatever the previous connection's were: doorway's kept door
// sockets carry their last connection's flags, and the next connection
// changes them only where they differ (reuse.h), so flags it does not track
// must keep the socket from being reused.
TEST_P(Conformance, RepeatedConnectionsStartWithFreshFlags) {
  std::vector<ino_t> seen;
  int reused = 0;
  for (int i = 0; i < 24; ++i) {
    SCOPED_TRACE("connection " + std::to_string(i));
    ASSERT_NO_FATAL_FAILURE(ConnectNoticingReuse(&seen, &reused));
    for (int fd : {client_, server_}) {
      EXPECT_EQ(fcntl(fd, F_GETFL), O_RDWR);
      EXPECT_EQ(fcntl(fd, F_GETFD), 0);
    }
    ASSERT_EQ(write(client_, "ping", 4), 4);
    char buf[8];
    ASSERT_EQ(read(server_, buf, sizeof(buf)), 4);  // blocking: waits if need be
    int on = 1;
    switch (i % 4) {
      case 0:
        ASSERT_EQ(fcntl(client_, F_SETFL, O_RDWR | O_NONBLOCK), 0);
        ASSERT_EQ(fcntl(server_, F_SETFL, O_RDWR | O_NONBLOCK), 0);
        break;
      case 1:
        ASSERT_EQ(ioctl(client_, FIONBIO, &on), 0);
        ASSERT_EQ(ioctl(server_, FIONBIO, &on), 0);
        break;
      case 2:
        ASSERT_EQ(fcntl(client_, F_SETFL, O_RDWR | O_NONBLOCK | O_ASYNC), 0);
        ASSERT_EQ(ioctl(server_, FIOASYNC, &on), 0);
        break;
      default: {
        // Flags left as they were; the server's connection is in an epoll
        // set when it closes (doorway then closes its door socket end
        // instead of keeping it: the next connect must notice and take the
        // door).
        int ep = epoll_create1(EPOLL_CLOEXEC);
        ASSERT_GE(ep, 0);
        epoll_event ev{};
        ev.events = EPOLLIN;
        ASSERT_EQ(epoll_ctl(ep, EPOLL_CTL_ADD, server_, &ev), 0);
        close(std::exchange(client_, -1));
        close(std::exchange(server_, -1));
        close(ep);
        continue;
      }
    }
    close(std::exchange(client_, -1));
    close(std::exchange(server_, -1));
  }
  ExpectDoorReuse(reused, 8);
}

// A listener closed after connections came and went: the next connect is
// refused, as for any closed port (doorway's kept door sockets to it are
// closed with it, and the connect finds no door).
// A process that has connected to many listeners still reuses door
// sockets for the next one: doorway's client keeps a segment arena per
// listener, at most 32, never freed; past that, connections went outside
// arenas and their door sockets were never kept (reuse.h), for the rest of
// the process's life. 40 listeners in turn, one connection to each; each
// listener's door file is held open (O_PATH) after the listener closes, so
// that no later door reuses its inode (the arena's key); then the last
// listener again.
TEST_P(Conformance, DoorReuseContinuesPastManyListeners) {
  std::vector<int> held;
  for (int i = 0; i < 40; ++i) {
    if (i > 0) listener_ = MakeListener();
    ASSERT_NO_FATAL_FAILURE(Connect());
    close(std::exchange(server_, -1));
    close(std::exchange(client_, -1));
    if (i == 39) break;
    if (DoorwayInfo() != nullptr && IsTcp()) {
      const std::string door = DoorFile("");
      int h = open(door.c_str(), O_PATH | O_CLOEXEC);
      ASSERT_GE(h, 0) << door << ": " << strerror(errno);
      held.push_back(h);
    }
    close(std::exchange(listener_, -1));
  }
  std::vector<ino_t> seen;
  int reused = 0;
  for (int i = 0; i < 6; ++i) {
    ASSERT_NO_FATAL_FAILURE(ConnectNoticingReuse(&seen, &reused));
    close(std::exchange(server_, -1));
    close(std::exchange(client_, -1));
  }
  for (int h : held) close(h);
  ExpectDoorReuse(reused, 3);
}

// Once the server has accepted, the client's socket is connected for every
// thread of the client process, even while the connecting thread has not
// returned from connect() yet: TCP's client is established before the
// server's accept can return. Another thread that reads or polls the
// client's fd right then sees nothing to read, room to write and no
// hang-up. (CPython's TCPCloserTest.testClose does this: its server thread
// accepts, closes, then selects and reads the client socket.) Doorway
// announced the connection before the fd was the connection, so that
// thread saw a socket that never connected (POLLHUP, ENOTCONN).
TEST_P(Conformance, ClientIsConnectedForOtherThreadsOnceAccepted) {
  // The two threads are ordered only by the kernel (the server's accept
  // follows the client's connect), which TSAN does not see: it reports the
  // client fd's use in both threads, and the segment the client wrote and
  // the server reads, as races.
  if (kUnderTsan) GTEST_SKIP() << "ordered by the kernel only, which TSAN does not model";
  for (int i = 0; i < 200; ++i) {
    SCOPED_TRACE("connection " + std::to_string(i));
    client_ = socket(Domain(), SOCK_STREAM, 0);
    ASSERT_GE(client_, 0);
    int connect_errno = -1;
    std::thread connector(
        [&] { connect_errno = connect(client_, Addr(), addr_len_) == 0 ? 0 : errno; });
    server_ = accept(listener_, nullptr, nullptr);
    char c;
    errno = 0;
    const ssize_t r = recv(client_, &c, 1, MSG_DONTWAIT);
    const int recv_errno = errno;
    pollfd p{client_, POLLIN | POLLOUT | POLLRDHUP, 0};
    const int pr = poll(&p, 1, 0);
    connector.join();
    ASSERT_GE(server_, 0) << strerror(errno);
    ASSERT_EQ(connect_errno, 0) << strerror(connect_errno);
    EXPECT_EQ(r, -1);
    EXPECT_EQ(recv_errno, EAGAIN) << strerror(recv_errno);
    EXPECT_EQ(pr, 1);
    EXPECT_EQ(p.revents, POLLOUT);
    close(std::exchange(server_, -1));
    EXPECT_EQ(recv(client_, &c, 1, 0), 0);
    close(std::exchange(client_, -1));
    if (HasFailure()) break;
  }
}

// Connections made while the server does not accept are all accepted
// later, each with its own bytes. Under doorway, connections over kept door
// sockets are announced by records in the listener's wake FIFO (reuse.h);
// the FIFO is shrunk to one page here (39 records) so that the later
// connections find it full and must take the door instead, after their fd
// already became the connection.
TEST_P(Conformance, ConnectionsBeyondAFullWakeFifoAreAccepted) {
  // 48 connections open at once, then closed: doorway keeps their door
  // sockets for the next connections (reuse.h keeps up to 64).
  ASSERT_EQ(listen(listener_, 64), 0);
  {
    std::vector<int> fds;
    for (int i = 0; i < 48; ++i) {
      int c = socket(Domain(), SOCK_STREAM | SOCK_CLOEXEC, 0);
      ASSERT_GE(c, 0);
      fds.push_back(c);
      ASSERT_EQ(connect(c, Addr(), addr_len_), 0) << strerror(errno);
      int s = accept(listener_, nullptr, nullptr);
      ASSERT_GE(s, 0) << strerror(errno);
      fds.push_back(s);
    }
    for (int fd : fds) close(fd);
  }
  if (DoorwayInfo() != nullptr && IsTcp()) {
    const std::string fifo = DoorFile("wake2.");
    int w = open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    ASSERT_GE(w, 0) << fifo << ": " << strerror(errno);
    EXPECT_EQ(fcntl(w, F_SETPIPE_SZ, 4096), 4096) << strerror(errno);
    close(w);
  }
  // 44: past the 39 records; the kernel's backlog must hold them all.
  constexpr int kConnections = 44;
  std::vector<int> clients;
  for (int i = 0; i < kConnections; ++i) {
    int c = socket(Domain(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(c, 0);
    clients.push_back(c);
    ASSERT_EQ(connect(c, Addr(), addr_len_), 0) << "connection " << i << ": " << strerror(errno);
    const char b = static_cast<char>(i);
    ASSERT_EQ(write(c, &b, 1), 1);
  }
  std::vector<bool> seen(kConnections, false);
  // Non-blocking accepts: a lost connection fails the test instead of
  // hanging it.
  ASSERT_EQ(fcntl(listener_, F_SETFL, O_NONBLOCK), 0);
  for (int i = 0, looks = 0; i < kConnections; ++i) {
    int s = accept(listener_, nullptr, nullptr);
    if (s < 0 && errno == EAGAIN && ++looks < 200) {
      pollfd p{listener_, POLLIN, 0};
      poll(&p, 1, 50);
      --i;
      continue;
    }
    ASSERT_GE(s, 0) << "only " << i << " connections were accepted: " << strerror(errno);
    ASSERT_EQ(fcntl(s, F_SETFL, 0), 0);
    char b = -1;
    EXPECT_EQ(read(s, &b, 1), 1);
    ASSERT_TRUE(b >= 0 && b < kConnections && !seen[b]) << static_cast<int>(b);
    seen[b] = true;
    // Both directions work: the reply reaches the right client.
    ASSERT_EQ(write(s, &b, 1), 1);
    char r = -1;
    EXPECT_EQ(read(clients[b], &r, 1), 1);
    EXPECT_EQ(r, b);
    close(s);
  }
  for (int c : clients) close(c);
}

TEST_P(Conformance, ConnectAfterListenerClosedIsRefused) {
  for (int i = 0; i < 3; ++i) {
    Connect();
    ASSERT_EQ(write(client_, "x", 1), 1);
    char c;
    ASSERT_EQ(read(server_, &c, 1), 1);
    close(std::exchange(client_, -1));
    close(std::exchange(server_, -1));
  }
  close(std::exchange(listener_, -1));
  client_ = socket(Domain(), SOCK_STREAM, 0);
  ASSERT_GE(client_, 0);
  errno = 0;
  EXPECT_EQ(connect(client_, Addr(), addr_len_), -1);
  EXPECT_EQ(errno, ECONNREFUSED);  // a Unix socket's file is still there
}

// A client process starts connections (data, then close) and exits before
// the server accepts them: they are still accepted, each with its data and
// then end of file, as from a TCP backlog. Under doorway they go over door
// sockets the client kept (reuse.h): their wake records wait in the FIFO
// while their ends hang up, and the ends must not be reaped meanwhile.
TEST_P(Conformance, ConnectionsOfAnExitedClientAreAccepted) {
  constexpr int kConns = 12;  // within the listen backlog (16)
  // Round 1: kConns at once, closed after the server closed its ends (so
  // that doorway keeps them all); round 2: kConns one after the other,
  // each on a kept socket, and exit without waiting.
  auto client = [&](const sockaddr* a, socklen_t alen, int from_parent, int to_parent) {
    std::vector<ino_t> seen;
    int c[kConns];
    bool ok = true;
    for (int i = 0; ok && i < kConns; ++i) {
      c[i] = socket(Domain(), SOCK_STREAM, 0);
      char x = 'a';
      ok = c[i] >= 0 && connect(c[i], a, alen) == 0 && write(c[i], &x, 1) == 1;
      struct stat st {};
      if (ok && fstat(c[i], &st) == 0) seen.push_back(st.st_ino);
    }
    char g = 0;
    ok = ok && read(from_parent, &g, 1) == 1;
    for (int i = 0; ok && i < kConns; ++i) {
      char x;
      ok = read(c[i], &x, 1) == 0;  // the server's close
      close(c[i]);
    }
    unsigned char reused = 0;
    for (int i = 0; ok && i < kConns; ++i) {
      int d = socket(Domain(), SOCK_STREAM, 0);
      char x = 'b';
      ok = d >= 0 && connect(d, a, alen) == 0 && write(d, &x, 1) == 1;
      struct stat st {};
      if (ok && fstat(d, &st) == 0 && std::find(seen.begin(), seen.end(), st.st_ino) != seen.end())
        ++reused;
      if (d >= 0) close(d);
    }
    unsigned char r[2] = {static_cast<unsigned char>(ok ? 'k' : 'f'), reused};
    return write(to_parent, r, 2) == 2 && ok;
  };
  int to_child = -1, from_child = -1;
  pid_t pid = ForkClientThenListen(client, &to_child, &from_child);
  ASSERT_GT(pid, 0);
  for (int i = 0; i < kConns; ++i) {
    int s = accept(listener_, nullptr, nullptr);
    ASSERT_GE(s, 0) << strerror(errno);
    char x;
    ASSERT_EQ(read(s, &x, 1), 1);
    EXPECT_EQ(x, 'a');
    close(s);
  }
  ASSERT_EQ(write(to_child, "g", 1), 1);
  unsigned char r[2] = {};
  EXPECT_EQ(read(from_child, r, 2), 2);
  EXPECT_EQ(r[0], 'k');
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  close(to_child);
  close(from_child);
  // The client is gone; its second round is still to be accepted
  // (non-blocking: a lost connection fails here instead of hanging).
  ASSERT_EQ(fcntl(listener_, F_SETFL, O_NONBLOCK), 0);
  for (int i = 0; i < kConns; ++i) {
    SCOPED_TRACE("connection " + std::to_string(i));
    pollfd p{listener_, POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 5000), 1);
    int s = accept(listener_, nullptr, nullptr);
    ASSERT_GE(s, 0) << strerror(errno);
    char x[2];
    EXPECT_EQ(read(s, x, 2), 1);
    EXPECT_EQ(x[0], 'b');
    EXPECT_EQ(read(s, x, 2), 0);
    close(s);
  }
  pollfd p{listener_, POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 100), 0) << "revents " << p.revents;
  ExpectDoorReuse(r[1], kConns / 2);
}

// A client process that kept door sockets to the listener exits: nothing
// is pending, so the listener must not look readable (a program told it is
// calls a blocking accept and hangs: iperf3 -s -1 did, when doorway's kept
// ends were watched by the listener itself).
TEST_P(Conformance, ListenerQuietAfterClientExits) {
  auto client = [&](const sockaddr* a, socklen_t alen, int, int to_parent) {
    bool ok = true;
    for (int i = 0; ok && i < 5; ++i) {
      int c = socket(Domain(), SOCK_STREAM, 0);
      char x = 'x';
      ok = c >= 0 && connect(c, a, alen) == 0 && write(c, &x, 1) == 1 && read(c, &x, 1) == 1;
      if (c >= 0) close(c);
    }
    char r = ok ? 'k' : 'f';
    return write(to_parent, &r, 1) == 1 && ok;
  };
  int to_child = -1, from_child = -1;
  pid_t pid = ForkClientThenListen(client, &to_child, &from_child);
  ASSERT_GT(pid, 0);
  for (int i = 0; i < 5; ++i) {
    int s = accept(listener_, nullptr, nullptr);
    ASSERT_GE(s, 0) << strerror(errno);
    char x;
    ASSERT_EQ(read(s, &x, 1), 1);
    ASSERT_EQ(write(s, &x, 1), 1);
    // Wait for the client's close before ours (its end is kept first).
    EXPECT_EQ(read(s, &x, 1), 0);
    close(s);
  }
  char r = 0;
  EXPECT_EQ(read(from_child, &r, 1), 1);
  EXPECT_EQ(r, 'k');
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  close(to_child);
  close(from_child);
  pollfd p{listener_, POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 200), 0) << "revents " << p.revents;
  ASSERT_EQ(fcntl(listener_, F_SETFL, O_NONBLOCK), 0);
  errno = 0;
  EXPECT_EQ(accept(listener_, nullptr, nullptr), -1);
  EXPECT_EQ(errno, EAGAIN);
}

// ---- passing sockets with SCM_RIGHTS (runtime/pass.h)

// Sends fd over the Unix socket sock with `data` as the message's bytes.
bool SendFd(int sock, int fd, const void* data, size_t len) {
  iovec iov{const_cast<void*>(data), len};
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))] = {};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = ctl;
  m.msg_controllen = sizeof(ctl);
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof(int));
  return sendmsg(sock, &m, 0) == static_cast<ssize_t>(len);
}

// Receives one fd (and up to len bytes into data) from sock; -1 if none.
int RecvFd(int sock, void* data, size_t len) {
  iovec iov{data, len};
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))] = {};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = ctl;
  m.msg_controllen = sizeof(ctl);
  if (recvmsg(sock, &m, MSG_CMSG_CLOEXEC) <= 0) return -1;
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  if (c == nullptr || c->cmsg_type != SCM_RIGHTS) return -1;
  int fd = -1;
  memcpy(&fd, CMSG_DATA(c), sizeof(int));
  return fd;
}

// Reads exactly n bytes (bounded waits); false on EOF, error or timeout.
bool ReadFully(int fd, char* buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 10000) != 1) return false;
    ssize_t r = read(fd, buf + got, n - got);
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

// A connection accepted here and sent to a worker process (forked before
// the connection existed) goes on in the worker: both processes hold the
// same socket, the sender's close does not end it, the receiver's does.
// Node's cluster module and Python's multiprocessing.reduction hand
// connections to workers this way.
TEST_P(Conformance, PassedConnectionWorksInTheReceiver) {
  int sp[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(sp[0]);
    close(listener_);
    sockaddr_storage want_peer{};
    int fd = RecvFd(sp[1], &want_peer, sizeof(want_peer));
    // The exit status names the first check that failed.
    int failed = fd < 0 ? 1 : 0;
    int v = -1;
    socklen_t vl = sizeof(v);
    if (!failed && !(getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &vl) == 0 && v == SOCK_STREAM)) {
      failed = 2;
    }
    if (!failed && !(getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &v, &vl) == 0 && v == Domain())) {
      failed = 3;
    }
    if (!failed && IsTcp()) {
      // The client's address, as the accepted socket had it, and its port
      // (under doorway: when the relay could bind it; another socket of
      // the machine may hold that number, runtime/relay.h).
      sockaddr_storage peer{};
      socklen_t pl = sizeof(peer);
      if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0 || pl != addr_len_) {
        failed = 4;
      } else if (Domain() == AF_INET) {
        sockaddr_in got, want;
        memcpy(&got, &peer, sizeof(got));
        memcpy(&want, &want_peer, sizeof(want));
        if (got.sin_addr.s_addr != want.sin_addr.s_addr) failed = 5;
        if (!failed && DoorwayInfo() == nullptr && got.sin_port != want.sin_port) failed = 6;
      } else {
        sockaddr_in6 got, want;
        memcpy(&got, &peer, sizeof(got));
        memcpy(&want, &want_peer, sizeof(want));
        if (memcmp(&got.sin6_addr, &want.sin6_addr, sizeof(got.sin6_addr)) != 0) failed = 5;
        if (!failed && DoorwayInfo() == nullptr && got.sin6_port != want.sin6_port) failed = 6;
      }
      sockaddr_storage local{};
      socklen_t ll = sizeof(local);
      if (!failed && !(getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) == 0 &&
                       ll == addr_len_ && local.ss_family == Domain())) {
        failed = 7;
      }
    }
    char buf[5];
    if (!failed && !(ReadFully(fd, buf, 5) && memcmp(buf, "hello", 5) == 0)) failed = 8;
    if (!failed && write(fd, "HELLO", 5) != 5) failed = 9;
    if (fd >= 0) close(fd);
    _exit(failed);
  }
  close(sp[1]);
  Connect();
  ExpectTracked(server_, DOORWAY_ORIGIN_ACCEPT, IsTcp() ? 1 : 0);
  sockaddr_storage name{};
  socklen_t nl = sizeof(name);
  ASSERT_EQ(getsockname(client_, reinterpret_cast<sockaddr*>(&name), &nl), 0);
  ASSERT_TRUE(SendFd(sp[0], server_, &name, sizeof(name))) << strerror(errno);
  // The sender's fd is still the connection.
  ASSERT_EQ(write(server_, "p", 1), 1);
  ASSERT_EQ(close(std::exchange(server_, -1)), 0);
  char buf[8];
  EXPECT_TRUE(ReadFully(client_, buf, 1));
  EXPECT_EQ(buf[0], 'p');
  ASSERT_EQ(write(client_, "hello", 5), 5);
  if (ReadFully(client_, buf, 5)) {
    EXPECT_EQ(memcmp(buf, "HELLO", 5), 0);
    // The receiver closed: EOF.
    pollfd p{client_, POLLIN, 0};
    EXPECT_EQ(poll(&p, 1, 10000), 1);
    EXPECT_EQ(read(client_, buf, sizeof(buf)), 0);
  } else {
    ADD_FAILURE() << "no reply (the sender's close ended the connection, or the worker failed: "
                     "see its status)";
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "worker status " << status << " (exit code: the check that failed)";
  close(sp[0]);
}

// A listener sent to a worker: the worker accepts the connections made
// before the pass (one on a door socket kept from an earlier connection,
// one new, both waiting to be accepted) and after it.
TEST_P(Conformance, PassedListenerAcceptsEarlierAndLaterConnections) {
  // The worker first, then the listener (not shared by fork).
  close(std::exchange(listener_, -1));
  int sp[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(sp[0]);
    sockaddr_storage want{};
    int l = RecvFd(sp[1], &want, sizeof(want));
    bool ok = l >= 0;
    int v = -1;
    socklen_t vl = sizeof(v);
    ok = ok && getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &v, &vl) == 0 && v == 1;
    ok = ok && getsockopt(l, SOL_SOCKET, SO_TYPE, &v, &vl) == 0 && v == SOCK_STREAM;
    sockaddr_storage name{};
    socklen_t nl = sizeof(name);
    ok = ok && getsockname(l, reinterpret_cast<sockaddr*>(&name), &nl) == 0 &&
         name.ss_family == Domain();
    // A Unix name's length is its path's.
    if (IsTcp()) ok = ok && nl == addr_len_ && memcmp(&name, &want, nl) == 0;
    ok = ok && (fcntl(l, F_GETFL) & O_NONBLOCK) == 0;
    for (int i = 0; ok && i < 3; ++i) {
      pollfd p{l, POLLIN, 0};
      int c = poll(&p, 1, 10000) == 1 ? accept(l, nullptr, nullptr) : -1;
      char x = 0;
      ok = c >= 0 && ReadFully(c, &x, 1);
      x = static_cast<char>(x - 'a' + 'A');
      ok = ok && write(c, &x, 1) == 1;
      if (c >= 0) close(c);
    }
    _exit(ok ? 0 : 1);
  }
  close(sp[1]);
  listener_ = MakeListener();
  // An earlier connection, closed by both (the server first): doorway
  // keeps its door socket for the next one.
  std::vector<ino_t> seen;
  int reused = 0;
  ConnectNoticingReuse(&seen, &reused);
  close(std::exchange(server_, -1));
  char x = 0;
  WaitReadable(client_);
  ASSERT_EQ(read(client_, &x, 1), 0);
  close(std::exchange(client_, -1));
  int before[2];
  for (int i = 0; i < 2; ++i) {
    before[i] = socket(Domain(), SOCK_STREAM, 0);
    ASSERT_GE(before[i], 0);
    ASSERT_EQ(connect(before[i], Addr(), addr_len_), 0) << strerror(errno);
    ExpectTracked(before[i], DOORWAY_ORIGIN_SOCKET, IsTcp() ? 1 : 0);
    struct stat st {};
    ASSERT_EQ(fstat(before[i], &st), 0);
    if (std::find(seen.begin(), seen.end(), st.st_ino) != seen.end()) ++reused;
    ASSERT_EQ(write(before[i], i == 0 ? "b" : "c", 1), 1);
  }
  // Under doorway the first of them usually takes the kept door socket (a
  // record in the listener's wake FIFO announces it), but that is not
  // guaranteed (in a process with many earlier connections, as the linked
  // run of this suite under load, it did not happen once): not asserted.
  if (DoorwayInfo() == nullptr || !IsTcp()) EXPECT_EQ(reused, 0);
  ASSERT_TRUE(SendFd(sp[0], listener_, &addr_, sizeof(addr_))) << strerror(errno);
  ASSERT_EQ(close(std::exchange(listener_, -1)), 0);
  int after = socket(Domain(), SOCK_STREAM, 0);
  ASSERT_GE(after, 0);
  ASSERT_EQ(connect(after, Addr(), addr_len_), 0) << strerror(errno);
  ASSERT_EQ(write(after, "d", 1), 1);
  const char want[3] = {'B', 'C', 'D'};
  const int fds[3] = {before[0], before[1], after};
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE("connection " + std::to_string(i));
    char r = 0;
    EXPECT_TRUE(ReadFully(fds[i], &r, 1));
    EXPECT_EQ(r, want[i]);
    close(fds[i]);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  close(sp[0]);
}

// The same with sendmmsg: the connection goes in the second message of
// two.
TEST_P(Conformance, PassedWithSendmmsg) {
  int sp[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(sp[0]);
    close(listener_);
    char x[2] = {};
    bool ok = read(sp[1], x, 2) == 1 && x[0] == '1';
    int fd = ok ? RecvFd(sp[1], x, 2) : -1;
    char buf[5];
    ok = fd >= 0 && x[0] == '2' && ReadFully(fd, buf, 5) && memcmp(buf, "hello", 5) == 0 &&
         write(fd, "HELLO", 5) == 5;
    if (fd >= 0) close(fd);
    _exit(ok ? 0 : 1);
  }
  close(sp[1]);
  Connect();
  ExpectTracked(server_, DOORWAY_ORIGIN_ACCEPT, IsTcp() ? 1 : 0);
  iovec iov[2] = {{const_cast<char*>("1"), 1}, {const_cast<char*>("2"), 1}};
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))] = {};
  mmsghdr mm[2] = {};
  mm[0].msg_hdr.msg_iov = &iov[0];
  mm[0].msg_hdr.msg_iovlen = 1;
  mm[1].msg_hdr.msg_iov = &iov[1];
  mm[1].msg_hdr.msg_iovlen = 1;
  mm[1].msg_hdr.msg_control = ctl;
  mm[1].msg_hdr.msg_controllen = sizeof(ctl);
  cmsghdr* c = CMSG_FIRSTHDR(&mm[1].msg_hdr);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &server_, sizeof(int));
  ASSERT_EQ(sendmmsg(sp[0], mm, 2, 0), 2) << strerror(errno);
  ASSERT_EQ(close(std::exchange(server_, -1)), 0);
  ASSERT_EQ(write(client_, "hello", 5), 5);
  char buf[8];
  EXPECT_TRUE(ReadFully(client_, buf, 5));
  EXPECT_EQ(memcmp(buf, "HELLO", 5), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  pollfd p{client_, POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 10000), 1);
  EXPECT_EQ(read(client_, buf, sizeof(buf)), 0);
  close(sp[0]);
}

// The sender goes on watching the listener it passed in its epoll set:
// both processes share the listener, and a new connection makes it
// readable in the sender too.
TEST_P(Conformance, PassedListenerStaysInTheSendersEpollSet) {
  close(std::exchange(listener_, -1));
  int sp[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(sp[0]);
    char x = 0;
    int l = RecvFd(sp[1], &x, 1);
    // Holds the listener without accepting until the parent is done.
    bool ok = l >= 0 && read(sp[1], &x, 1) == 1;
    _exit(ok ? 0 : 1);
  }
  close(sp[1]);
  listener_ = MakeListener();
  int ep = epoll_create1(EPOLL_CLOEXEC);
  ASSERT_GE(ep, 0);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0x1234567890ull;
  ASSERT_EQ(epoll_ctl(ep, EPOLL_CTL_ADD, listener_, &ev), 0);
  ASSERT_TRUE(SendFd(sp[0], listener_, "l", 1)) << strerror(errno);
  client_ = socket(Domain(), SOCK_STREAM, 0);
  ASSERT_GE(client_, 0);
  ASSERT_EQ(connect(client_, Addr(), addr_len_), 0) << strerror(errno);
  epoll_event got{};
  ASSERT_EQ(epoll_wait(ep, &got, 1, 10000), 1);
  EXPECT_EQ(got.data.u64, 0x1234567890ull);
  EXPECT_EQ(got.events, static_cast<std::uint32_t>(EPOLLIN));
  // Adding it again: the set still has it.
  EXPECT_EQ(epoll_ctl(ep, EPOLL_CTL_ADD, listener_, &ev), -1);
  EXPECT_EQ(errno, EEXIST);
  server_ = accept(listener_, nullptr, nullptr);
  ASSERT_GE(server_, 0) << strerror(errno);
  ASSERT_EQ(write(client_, "x", 1), 1);
  char x = 0;
  ASSERT_TRUE(ReadFully(server_, &x, 1));
  ASSERT_EQ(write(sp[0], "g", 1), 1);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  close(ep);
  close(sp[0]);
}

// The sender's epoll set goes on watching a connection it passed (both
// processes share the socket).
TEST_P(Conformance, PassedConnectionStaysInTheSendersEpollSet) {
  int sp[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(sp[0]);
    close(listener_);
    char x = 0;
    int fd = RecvFd(sp[1], &x, 1);
    // Holds the connection without using it until the parent is done.
    bool ok = fd >= 0 && read(sp[1], &x, 1) == 1;
    _exit(ok ? 0 : 1);
  }
  close(sp[1]);
  Connect();
  ExpectTracked(server_, DOORWAY_ORIGIN_ACCEPT, IsTcp() ? 1 : 0);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  ASSERT_GE(ep, 0);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.u64 = 0xfeedbeefull;
  ASSERT_EQ(epoll_ctl(ep, EPOLL_CTL_ADD, server_, &ev), 0);
  epoll_event got{};
  ASSERT_EQ(epoll_wait(ep, &got, 1, 0), 0);
  ASSERT_TRUE(SendFd(sp[0], server_, "c", 1)) << strerror(errno);
  EXPECT_EQ(epoll_wait(ep, &got, 1, 100), 0);
  ASSERT_EQ(write(client_, "x", 1), 1);
  ASSERT_EQ(epoll_wait(ep, &got, 1, 10000), 1);
  EXPECT_EQ(got.data.u64, 0xfeedbeefull);
  EXPECT_EQ(got.events, static_cast<std::uint32_t>(EPOLLIN));
  char x = 0;
  ASSERT_EQ(read(server_, &x, 1), 1);
  EXPECT_EQ(epoll_wait(ep, &got, 1, 100), 0);
  // Still registered: the set has the number.
  EXPECT_EQ(epoll_ctl(ep, EPOLL_CTL_ADD, server_, &ev), -1);
  EXPECT_EQ(errno, EEXIST);
  EXPECT_EQ(epoll_ctl(ep, EPOLL_CTL_DEL, server_, nullptr), 0);
  ASSERT_EQ(write(sp[0], "g", 1), 1);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  close(ep);
  close(sp[0]);
}

// TCP passes no descriptors: SCM_RIGHTS on a TCP socket is ignored (Linux
// 6.x sends the bytes, no descriptor arrives), on an accelerated
// connection too, and the descriptor named stays what it was.
TEST_P(Conformance, RightsOverTcpAreIgnored) {
  if (!IsTcp()) GTEST_SKIP() << "Unix sockets pass descriptors";
  Connect();
  ASSERT_TRUE(SendFd(client_, server_, "ab", 2)) << strerror(errno);
  char buf[4] = {};
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))] = {};
  iovec iov{buf, sizeof(buf)};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = ctl;
  m.msg_controllen = sizeof(ctl);
  WaitReadable(server_);
  ASSERT_EQ(recvmsg(server_, &m, 0), 2);
  EXPECT_EQ(memcmp(buf, "ab", 2), 0);
  EXPECT_EQ(m.msg_controllen, 0u);
  ExpectTracked(server_, DOORWAY_ORIGIN_ACCEPT, 1);
  ASSERT_EQ(write(server_, "c", 1), 1);
  ASSERT_EQ(read(client_, buf, 1), 1);
  EXPECT_EQ(buf[0], 'c');
}

INSTANTIATE_TEST_SUITE_P(Kinds, Conformance, testing::Values(Kind::kTcp4, Kind::kTcp6, Kind::kUnix),
                         KindName);

}  // namespace

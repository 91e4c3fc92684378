// The engine on traffic that really leaves loopback: two network namespaces
// made by this test, joined by a veth pair, with 10.213.7.1 and 10.213.7.2
// inside them. Nothing is sent anywhere else. Root only; skipped otherwise.
// The namespaces (and with them the veth pair) are removed at the end, also
// when a check fails. Every wait is bounded.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "transport/uring/engine.h"

namespace doorway::transport::uring {
namespace {

constexpr const char* kServerIp = "10.213.7.2";
constexpr const char* kClientIp = "10.213.7.1";
constexpr int kPort = 7420;
constexpr size_t kStreamBytes = 32 << 20;

int Sh(const std::string& cmd) {
  std::string quiet = cmd + " >/dev/null 2>&1";
  return system(quiet.c_str());
}

// Two namespaces and the veth pair between them, removed on destruction.
class Netns {
 public:
  Netns() {
    std::string id = std::to_string(getpid());
    a_ = "dwuring-a-" + id;
    b_ = "dwuring-b-" + id;
    std::string va = "dwua" + id, vb = "dwub" + id;  // <= 15 characters
    if (Sh("ip netns add " + a_) != 0) return;
    if (Sh("ip netns add " + b_) != 0) return;
    ok_ = Sh("ip link add " + va + " netns " + a_ + " type veth peer name " + vb + " netns " +
             b_) == 0 &&
          Sh("ip -n " + a_ + " addr add " + kClientIp + "/24 dev " + va) == 0 &&
          Sh("ip -n " + b_ + " addr add " + kServerIp + "/24 dev " + vb) == 0 &&
          Sh("ip -n " + a_ + " link set " + va + " up") == 0 &&
          Sh("ip -n " + b_ + " link set " + vb + " up") == 0 &&
          Sh("ip -n " + a_ + " link set lo up") == 0 && Sh("ip -n " + b_ + " link set lo up") == 0;
  }
  ~Netns() {
    // Deleting a namespace deletes the veth end inside it, and the pair.
    Sh("ip netns del " + a_);
    Sh("ip netns del " + b_);
  }
  bool ok() const { return ok_; }
  const std::string& a() const { return a_; }
  const std::string& b() const { return b_; }

 private:
  std::string a_, b_;
  bool ok_ = false;
};

bool Enter(const std::string& ns) {
  std::string path = "/run/netns/" + ns;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = setns(fd, CLONE_NEWNET) == 0;
  close(fd);
  return ok;
}

char Pattern(size_t i) { return static_cast<char>((i * 131) ^ (i >> 13)); }

// Receives exactly n bytes through the engine (bounded by the byte count).
bool RecvAll(int fd, char* buf, size_t n) {
  ssize_t r = Recv(fd, buf, n, MSG_WAITALL);
  return r == static_cast<ssize_t>(n);
}

// Server, in namespace b: echoes 64-byte messages, then checks a stream,
// then sends 4 bytes after a pause (the client's blocking receive).
int Server(const std::string& ns) {
  if (!Enter(ns)) return 20;
  alarm(60);  // bounded whatever happens
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(kPort);
  inet_pton(AF_INET, kServerIp, &a.sin_addr);
  if (bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(l, 1) != 0) return 21;
  int s = accept(l, nullptr, nullptr);
  if (s < 0) return 22;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  char msg[64];
  for (int i = 0; i < 1000; ++i) {
    if (!RecvAll(s, msg, sizeof(msg))) return 23;
    if (Send(s, msg, sizeof(msg), 0) != static_cast<ssize_t>(sizeof(msg))) return 24;
  }
  std::vector<char> in(1 << 16);
  size_t got = 0;
  while (got < kStreamBytes) {  // bounded: every round moves bytes or fails
    ssize_t r = Recv(s, in.data(), in.size(), 0);
    if (r <= 0) return 25;
    for (ssize_t i = 0; i < r; ++i) {
      if (in[i] != Pattern(got + i)) return 26;
    }
    got += static_cast<size_t>(r);
  }
  if (Send(s, "done", 4, 0) != 4) return 27;
  usleep(50000);
  if (Send(s, "late", 4, 0) != 4) return 28;
  char c;
  if (Recv(s, &c, 1, 0) != 0) return 29;  // the client's close
  if (GetThreadStats().calls == 0) return 30;
  close(s);
  close(l);
  return 0;
}

int Client(const std::string& ns) {
  if (!Enter(ns)) return 40;
  alarm(60);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(kPort);
  inet_pton(AF_INET, kServerIp, &a.sin_addr);
  int c = -1;
  for (int i = 0; i < 200; ++i) {  // the server may not listen yet
    c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) break;
    close(c);
    c = -1;
    usleep(10000);
  }
  if (c < 0) return 41;
  int one = 1;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  char out[64], back[64];
  for (int i = 0; i < 1000; ++i) {
    memset(out, 'a' + i % 26, sizeof(out));
    if (Send(c, out, sizeof(out), 0) != static_cast<ssize_t>(sizeof(out))) return 42;
    if (!RecvAll(c, back, sizeof(back))) return 43;
    if (memcmp(out, back, sizeof(out)) != 0) return 44;
  }
  // A blocking stream in large writes: each returns only when all is sent.
  std::vector<char> chunk(1 << 20);
  for (size_t off = 0; off < kStreamBytes; off += chunk.size()) {
    for (size_t i = 0; i < chunk.size(); ++i) chunk[i] = Pattern(off + i);
    if (Send(c, chunk.data(), chunk.size(), 0) != static_cast<ssize_t>(chunk.size())) return 45;
  }
  char word[4];
  if (!RecvAll(c, word, 4) || memcmp(word, "done", 4) != 0) return 46;
  // Non-blocking: EAGAIN now (io_uring alone would wait), the data later.
  int fl = fcntl(c, F_GETFL);
  fcntl(c, F_SETFL, fl | O_NONBLOCK);
  if (Recv(c, word, 4, 0) != -EAGAIN) return 47;
  fcntl(c, F_SETFL, fl);
  if (!RecvAll(c, word, 4) || memcmp(word, "late", 4) != 0) return 48;
  ThreadStats s = GetThreadStats();
  if (s.calls == 0 || s.blocked == 0) return 49;
  close(c);
  return 0;
}

// Waits (bounded) for a child; kills it when it overstays.
int Reap(pid_t pid) {
  int status = 0;
  for (int i = 0; i < 9000; ++i) {  // 90 s
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
    usleep(10000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return 99;
}

TEST(Netns, EngineOverVethPair) {
  Support s = Initialize();
  if (!s.ok) GTEST_SKIP() << "io_uring engine unsupported: " << s.reason;
  if (geteuid() != 0) GTEST_SKIP() << "needs root to make network namespaces";
  if (Sh("ip -V") != 0) GTEST_SKIP() << "no ip(8) (iproute2)";
  Netns net;
  if (!net.ok()) GTEST_SKIP() << "cannot make network namespaces and a veth pair here";
  pid_t server = fork();
  ASSERT_GE(server, 0);
  if (server == 0) _exit(Server(net.b()));
  pid_t client = fork();
  ASSERT_GE(client, 0);
  if (client == 0) _exit(Client(net.a()));
  int client_status = Reap(client);
  int server_status = Reap(server);
  EXPECT_EQ(client_status, 0) << "client failed at step " << client_status;
  EXPECT_EQ(server_status, 0) << "server failed at step " << server_status;
}

}  // namespace
}  // namespace doorway::transport::uring

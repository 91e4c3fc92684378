// The io_uring engine against the kernel's own answers: every case states
// what the direct system call returns and checks that the engine returns the
// same, over TCP loopback and Unix stream sockets. Loops are bounded; no
// assertion is about time.
#include "transport/uring/engine.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace doorway::transport::uring {
namespace {

enum class Kind { kTcp, kUnix };

// The whole binary runs in one engine mode: URING_TEST_SQPOLL=1 (set by the
// engine_sqpoll_test target) selects SQPOLL rings.
Support Init() {
  const char* v = getenv("URING_TEST_SQPOLL");
  Options o;
  o.sqpoll = v != nullptr && strcmp(v, "1") == 0;
  return Initialize(o);
}

void SleepMs(int ms) { usleep(static_cast<useconds_t>(ms) * 1000); }

class Engine : public testing::TestWithParam<Kind> {
 protected:
  void SetUp() override {
    Support s = Init();
    if (!s.ok) GTEST_SKIP() << "io_uring engine unsupported here: " << s.reason;
    if (GetParam() == Kind::kUnix) {
      int sv[2];
      ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
      a_ = sv[0];
      b_ = sv[1];
      return;
    }
    int l = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(l, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(l, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(listen(l, 4), 0);
    socklen_t len = sizeof(addr);
    ASSERT_EQ(getsockname(l, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    a_ = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_EQ(connect(a_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    b_ = accept(l, nullptr, nullptr);
    ASSERT_GE(b_, 0);
    close(l);
  }
  void TearDown() override {
    if (a_ >= 0) close(a_);
    if (b_ >= 0) close(b_);
  }

  int a_ = -1;
  int b_ = -1;
};

TEST_P(Engine, RoundTripAndCounters) {
  ThreadStats before = GetThreadStats();
  EXPECT_EQ(Send(a_, "hello", 5, 0), 5);
  char buf[16] = {};
  EXPECT_EQ(Recv(b_, buf, sizeof(buf), 0), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");
  ThreadStats after = GetThreadStats();
  EXPECT_TRUE(after.has_ring);
  EXPECT_EQ(after.calls, before.calls + 2);
  EXPECT_EQ(after.blocked, before.blocked);  // the data was there
}

TEST_P(Engine, ZeroLengthAndOddFlagsAreLeftToTheKernel) {
  char c;
  EXPECT_EQ(Recv(b_, &c, 0, 0), kNotHandled);
  EXPECT_EQ(Send(a_, &c, 0, 0), kNotHandled);
  EXPECT_EQ(Recv(b_, &c, 1, MSG_ERRQUEUE), kNotHandled);
  EXPECT_EQ(Recv(b_, &c, 1, MSG_PEEK | MSG_WAITALL), kNotHandled);
}

// io_uring alone would park this request until data came: the engine must
// answer EAGAIN like recv(2) on an O_NONBLOCK socket.
TEST_P(Engine, NonBlockingSocketGivesEagain) {
  ASSERT_EQ(fcntl(b_, F_SETFL, O_NONBLOCK), 0);
  char buf[8];
  EXPECT_EQ(Recv(b_, buf, sizeof(buf), 0), -EAGAIN);
  iovec iov{buf, sizeof(buf)};
  EXPECT_EQ(Readv(b_, &iov, 1), -EAGAIN);
  ASSERT_EQ(fcntl(b_, F_SETFL, 0), 0);
  EXPECT_EQ(Recv(b_, buf, sizeof(buf), MSG_DONTWAIT), -EAGAIN);
}

TEST_P(Engine, PeekDoesNotConsume) {
  ASSERT_EQ(write(a_, "abcdef", 6), 6);
  pollfd p{b_, POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 5000), 1);
  char buf[8] = {};
  EXPECT_EQ(Recv(b_, buf, 3, MSG_PEEK), 3);
  EXPECT_EQ(Recv(b_, buf, sizeof(buf), 0), 6);
  EXPECT_EQ(std::string(buf, 6), "abcdef");
}

TEST_P(Engine, BlockingReceiveWaitsForData) {
  ThreadStats before = GetThreadStats();
  std::thread writer([&] {
    SleepMs(20);
    ASSERT_EQ(write(a_, "late", 4), 4);
  });
  char buf[8] = {};
  EXPECT_EQ(Recv(b_, buf, sizeof(buf), 0), 4);
  writer.join();
  EXPECT_EQ(std::string(buf, 4), "late");
  EXPECT_GT(GetThreadStats().blocked, before.blocked);
}

TEST_P(Engine, WaitallCollectsEveryByte) {
  std::thread writer([&] {
    for (int i = 0; i < 4; ++i) {
      SleepMs(2);
      ASSERT_EQ(write(a_, "0123456789", 10), 10);
    }
  });
  char buf[40];
  EXPECT_EQ(Recv(b_, buf, sizeof(buf), MSG_WAITALL), 40);
  writer.join();
  EXPECT_EQ(std::string(buf + 30, 10), "0123456789");
}

TEST_P(Engine, EofAndReset) {
  ASSERT_EQ(write(a_, "x", 1), 1);
  ASSERT_EQ(shutdown(a_, SHUT_WR), 0);
  char buf[4];
  EXPECT_EQ(Recv(b_, buf, sizeof(buf), 0), 1);
  EXPECT_EQ(Recv(b_, buf, sizeof(buf), 0), 0);
  EXPECT_EQ(Recv(b_, buf, sizeof(buf), MSG_WAITALL), 0);
}

// Non-blocking writes are partial, then EAGAIN, and everything accepted
// arrives in order.
TEST_P(Engine, NonBlockingWritesArePartialThenEagain) {
  int sz = 16384;
  ASSERT_EQ(setsockopt(a_, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)), 0);
  ASSERT_EQ(fcntl(a_, F_SETFL, O_NONBLOCK), 0);
  std::vector<char> chunk(1 << 20);
  for (size_t i = 0; i < chunk.size(); ++i) chunk[i] = static_cast<char>(i * 7);
  ssize_t first = Send(a_, chunk.data(), chunk.size(), 0);
  ASSERT_GT(first, 0);
  ASSERT_LT(static_cast<size_t>(first), chunk.size());
  // TCP loopback moves data to the peer's receive buffer meanwhile, so a few
  // more partial writes may fit before EAGAIN.
  size_t sent = static_cast<size_t>(first);
  ssize_t r = 0;
  for (int i = 0; i < 1000; ++i) {
    r = Send(a_, chunk.data() + sent % chunk.size(), chunk.size() - sent % chunk.size(), 0);
    if (r < 0) break;
    sent += static_cast<size_t>(r);
  }
  EXPECT_EQ(r, -EAGAIN);
  std::vector<char> in(sent);
  ASSERT_EQ(recv(b_, in.data(), in.size(), MSG_WAITALL), static_cast<ssize_t>(sent));
  for (size_t i = 0; i < sent; ++i) ASSERT_EQ(in[i], chunk[i % chunk.size()]) << i;
}

// A blocking send of more than the socket buffer holds returns only when all
// of it is sent (io_uring's own inline attempt would return a partial count).
TEST_P(Engine, BlockingSendIsComplete) {
  constexpr size_t kBytes = 8 << 20;
  std::vector<char> out(kBytes);
  for (size_t i = 0; i < kBytes; ++i) out[i] = static_cast<char>(i ^ (i >> 11));
  std::vector<char> in(kBytes);
  std::thread reader([&] { ASSERT_EQ(recv(b_, in.data(), kBytes, MSG_WAITALL), ssize_t{kBytes}); });
  EXPECT_EQ(Send(a_, out.data(), kBytes, 0), ssize_t{kBytes});
  reader.join();
  EXPECT_EQ(memcmp(in.data(), out.data(), kBytes), 0);
}

TEST_P(Engine, VectorsAndSendmsg) {
  char x[] = "abc", y[] = "defgh";
  iovec out[2] = {{x, 3}, {y, 5}};
  EXPECT_EQ(Writev(a_, out, 2), 8);
  msghdr m{};
  m.msg_iov = out;
  m.msg_iovlen = 2;
  EXPECT_EQ(Sendmsg(a_, &m, MSG_NOSIGNAL), 8);
  char p[5], q[11];
  iovec in[2] = {{p, 5}, {q, 11}};
  int pending = 0;
  for (int i = 0; i < 500 && pending < 16; ++i) {  // both messages in (bounded)
    ASSERT_EQ(ioctl(b_, FIONREAD, &pending), 0);
    if (pending < 16) SleepMs(1);
  }
  ASSERT_EQ(pending, 16);
  EXPECT_EQ(Readv(b_, in, 2), 16);
  EXPECT_EQ(std::string(p, 5) + std::string(q, 11), "abcdefghabcdefgh");
}

TEST_P(Engine, ReceiveTimeoutIsEagain) {
  timeval tv{0, 20000};
  ASSERT_EQ(setsockopt(b_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
  char buf[4];
  EXPECT_EQ(Recv(b_, buf, sizeof(buf), 0), -EAGAIN);
  // A partial MSG_WAITALL receive that times out returns what it has.
  ASSERT_EQ(write(a_, "ab", 2), 2);
  EXPECT_EQ(Recv(b_, buf, sizeof(buf), MSG_WAITALL), 2);
}

TEST_P(Engine, SendTimeoutIsPartialThenEagain) {
  int sz = 16384;
  ASSERT_EQ(setsockopt(a_, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)), 0);
  timeval tv{0, 20000};
  ASSERT_EQ(setsockopt(a_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)), 0);
  std::vector<char> big(16 << 20);
  ssize_t r = Send(a_, big.data(), big.size(), 0);
  ASSERT_GT(r, 0);
  EXPECT_LT(static_cast<size_t>(r), big.size());
  // As with the non-blocking case, TCP may take a few more partial writes.
  for (int i = 0; i < 1000 && r > 0; ++i) r = Send(a_, big.data(), big.size(), 0);
  EXPECT_EQ(r, -EAGAIN);
}

TEST_P(Engine, EpipeRaisesSigpipeUnlessNosignal) {
  static std::atomic<int> sigpipes{0};
  struct sigaction sa {};
  sa.sa_handler = [](int) { sigpipes.fetch_add(1); };
  struct sigaction old {};
  ASSERT_EQ(sigaction(SIGPIPE, &sa, &old), 0);
  ASSERT_EQ(close(b_), 0);
  b_ = -1;
  sigpipes = 0;
  ssize_t r = 0;
  for (int i = 0; i < 200; ++i) {  // TCP takes the first write after FIN
    r = Send(a_, "x", 1, MSG_NOSIGNAL);
    if (r < 0) break;
    SleepMs(1);
  }
  EXPECT_EQ(r, -EPIPE);
  EXPECT_EQ(sigpipes.load(), 0);
  EXPECT_EQ(Send(a_, "x", 1, 0), -EPIPE);
  EXPECT_EQ(sigpipes.load(), 1);
  ASSERT_EQ(sigaction(SIGPIPE, &old, nullptr), 0);
}

// Signals while a request is in flight.
std::atomic<int> g_handled{0};
std::atomic<ssize_t> g_nested{0};
int g_nested_fd = -1;

void CountingHandler(int) { g_handled.fetch_add(1); }

void NestingHandler(int) {
  // A handler that does I/O while its thread is blocked in the engine: the
  // engine declines, and the caller would use the direct syscall.
  g_nested.store(Send(g_nested_fd, "!", 1, 0));
  g_handled.fetch_add(1);
}

// ThreadSanitizer delivers asynchronous signals only when the thread next
// passes through one of its interceptors; the engine blocks in raw futex and
// io_uring_enter syscalls it cannot see, so handlers would not run while a
// call is blocked. The signal cases are meaningful only without it.
#if defined(__SANITIZE_THREAD__)
#define SKIP_UNDER_TSAN() GTEST_SKIP() << "TSan defers signal handlers past raw syscalls"
#else
#define SKIP_UNDER_TSAN() (void)0
#endif

void Install(void (*fn)(int), int flags, struct sigaction* old) {
  struct sigaction sa {};
  sa.sa_handler = fn;
  sa.sa_flags = flags;
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR1, &sa, old), 0);
}

// Sends SIGUSR1 to `target` (blocked by then, most likely) until the handler
// has run once; waits for each signal's handler before sending another.
void SignalUntilHandled(pthread_t target) {
  for (int i = 0; i < 50 && g_handled.load() == 0; ++i) {
    SleepMs(10);
    pthread_kill(target, SIGUSR1);
    for (int j = 0; j < 1000 && g_handled.load() == 0; ++j) SleepMs(1);
  }
}

TEST_P(Engine, SignalWithoutSaRestartIsEintrAndLosesNothing) {
  SKIP_UNDER_TSAN();
  struct sigaction old {};
  Install(CountingHandler, 0, &old);
  g_handled = 0;
  pthread_t self = pthread_self();
  std::thread killer([&] { SignalUntilHandled(self); });
  char buf[8];
  ssize_t r = Recv(b_, buf, sizeof(buf), 0);
  killer.join();
  EXPECT_EQ(r, -EINTR);
  EXPECT_GE(GetThreadStats().cancelled, 1u);
  // The cancelled request did not swallow data sent afterwards.
  ASSERT_EQ(write(a_, "after", 5), 5);
  EXPECT_EQ(Recv(b_, buf, sizeof(buf), 0), 5);
  EXPECT_EQ(std::string(buf, 5), "after");
  ASSERT_EQ(sigaction(SIGUSR1, &old, nullptr), 0);
}

TEST_P(Engine, SignalWithSaRestartResumesTheWait) {
  SKIP_UNDER_TSAN();
  struct sigaction old {};
  Install(CountingHandler, SA_RESTART, &old);
  g_handled = 0;
  pthread_t self = pthread_self();
  std::thread killer([&] {
    SignalUntilHandled(self);
    SleepMs(10);
    ASSERT_EQ(write(a_, "data", 4), 4);
  });
  char buf[8];
  ssize_t r = Recv(b_, buf, sizeof(buf), 0);
  killer.join();
  EXPECT_EQ(r, 4);
  EXPECT_EQ(g_handled.load(), 1);
  ASSERT_EQ(sigaction(SIGUSR1, &old, nullptr), 0);
}

// signal(7): with SO_RCVTIMEO set, socket calls fail with EINTR even under
// SA_RESTART.
TEST_P(Engine, SignalDuringTimedWaitIsEintrEvenWithSaRestart) {
  SKIP_UNDER_TSAN();
  struct sigaction old {};
  Install(CountingHandler, SA_RESTART, &old);
  g_handled = 0;
  timeval tv{30, 0};
  ASSERT_EQ(setsockopt(b_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
  pthread_t self = pthread_self();
  std::thread killer([&] { SignalUntilHandled(self); });
  char buf[8];
  EXPECT_EQ(Recv(b_, buf, sizeof(buf), 0), -EINTR);
  killer.join();
  ASSERT_EQ(sigaction(SIGUSR1, &old, nullptr), 0);
}

TEST_P(Engine, SignalAfterPartialWaitallReturnsThePart) {
  SKIP_UNDER_TSAN();
  struct sigaction old {};
  Install(CountingHandler, 0, &old);
  g_handled = 0;
  ASSERT_EQ(write(a_, "abc", 3), 3);
  pthread_t self = pthread_self();
  std::thread killer([&] { SignalUntilHandled(self); });
  char buf[10];
  EXPECT_EQ(Recv(b_, buf, sizeof(buf), MSG_WAITALL), 3);
  killer.join();
  EXPECT_EQ(std::string(buf, 3), "abc");
  ASSERT_EQ(sigaction(SIGUSR1, &old, nullptr), 0);
}

TEST_P(Engine, HandlerReenteringTheEngineIsDeclined) {
  SKIP_UNDER_TSAN();
  struct sigaction old {};
  Install(NestingHandler, SA_RESTART, &old);
  g_handled = 0;
  g_nested = 0;
  g_nested_fd = a_;
  pthread_t self = pthread_self();
  std::thread killer([&] {
    SignalUntilHandled(self);
    SleepMs(5);
    ASSERT_EQ(write(a_, "ok", 2), 2);
  });
  char buf[8];
  ssize_t r = Recv(b_, buf, sizeof(buf), 0);
  killer.join();
  EXPECT_EQ(g_nested.load(), kNotHandled);
  EXPECT_EQ(r, 2);
  ASSERT_EQ(sigaction(SIGUSR1, &old, nullptr), 0);
}

TEST_P(Engine, ForkChildBuildsItsOwnRing) {
  ASSERT_EQ(Send(a_, "p", 1, 0), 1);  // the parent's ring exists
  char c;
  ASSERT_EQ(Recv(b_, &c, 1, 0), 1);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Fresh state in the child (the page was wiped), then a working ring.
    ThreadStats s = GetThreadStats();
    if (s.calls != 0 || s.has_ring) _exit(10);
    if (Send(a_, "c", 1, 0) != 1) _exit(11);
    char d = 0;
    if (Recv(b_, &d, 1, 0) != 1 || d != 'c') _exit(12);
    if (!GetThreadStats().has_ring) _exit(13);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  // The parent's ring still works.
  EXPECT_EQ(Send(a_, "q", 1, 0), 1);
  EXPECT_EQ(Recv(b_, &c, 1, 0), 1);
  EXPECT_EQ(c, 'q');
}

// A vfork child shares the parent's memory (and so its ThreadRing) but not
// its registered ring: the kernel refuses the submission, the engine
// withdraws it and declines, and the parent's ring is unharmed.
TEST_P(Engine, VforkChildIsDeclinedWithoutHarm) {
  SKIP_UNDER_TSAN();  // and TSan turns vfork into fork
  ASSERT_EQ(Send(a_, "p", 1, 0), 1);
  char c;
  ASSERT_EQ(Recv(b_, &c, 1, 0), 1);
  static volatile ssize_t child_result = 0;
  child_result = 0;
  pid_t pid = vfork();
  if (pid == 0) {
    child_result = Send(a_, "v", 1, 0);
    _exit(0);
  }
  ASSERT_GT(pid, 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  // With SQPOLL the parent's poller thread takes the child's submission (no
  // system call is made), so the child's send simply happens — also right:
  // the parent is suspended meanwhile and the ring is drained again.
  if (child_result == 1) {
    ASSERT_EQ(Recv(b_, &c, 1, 0), 1);
    EXPECT_EQ(c, 'v');
  } else {
    EXPECT_EQ(child_result, kNotHandled);
  }
  EXPECT_EQ(Send(a_, "q", 1, 0), 1);
  EXPECT_EQ(Recv(b_, &c, 1, 0), 1);
  EXPECT_EQ(c, 'q');
}

INSTANTIATE_TEST_SUITE_P(Kinds, Engine, testing::Values(Kind::kTcp, Kind::kUnix),
                         [](const testing::TestParamInfo<Kind>& i) {
                           return i.param == Kind::kTcp ? "Tcp" : "Unix";
                         });

int CountFds(const char* what) {
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent* e = readdir(d)) {
    char path[300], target[256];
    snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
    ssize_t len = readlink(path, target, sizeof(target) - 1);
    if (len <= 0) continue;
    target[len] = '\0';
    if (what == nullptr || strstr(target, what) != nullptr) ++n;
  }
  closedir(d);
  return n;
}

// Rings are invisible to the program (no fd) and go away with their thread.
TEST(EngineLifecycle, RingsHoldNoFdAndDieWithTheirThread) {
  if (!Init().ok) GTEST_SKIP() << Init().reason;
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  int fds_before = CountFds(nullptr);
  for (int i = 0; i < 50; ++i) {
    std::thread t([&] {
      ASSERT_EQ(Send(sv[0], "t", 1, 0), 1);
      char c;
      ASSERT_EQ(Recv(sv[1], &c, 1, 0), 1);
      EXPECT_TRUE(GetThreadStats().has_ring);
    });
    t.join();
  }
  EXPECT_EQ(CountFds("io_uring"), 0);
  EXPECT_EQ(CountFds(nullptr), fds_before);
  close(sv[0]);
  close(sv[1]);
}

// A kernel fd and a futex in shared memory, waited on together; the waker
// of the futex is another process.
TEST(EngineWait, FdOrSharedFutexAcrossProcesses) {
  Support s = Init();
  if (!s.ok || !s.futex_wait) GTEST_SKIP() << "no IORING_OP_FUTEX_WAIT here";
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(page, MAP_FAILED);
  auto* word = static_cast<std::uint32_t*>(page);
  *word = 0;
  short rev = -1;
  bool woken = true;
  EXPECT_EQ(WaitFdOrFutex(p[0], POLLIN, word, 0, 10, &rev, &woken), 0);  // timeout
  EXPECT_EQ(rev, 0);
  EXPECT_FALSE(woken);
  __atomic_store_n(word, 1, __ATOMIC_SEQ_CST);  // already changed: no sleep
  EXPECT_EQ(WaitFdOrFutex(p[0], POLLIN, word, 0, 5000, &rev, &woken), 1);
  EXPECT_TRUE(woken);
  ASSERT_EQ(write(p[1], "x", 1), 1);  // the fd
  EXPECT_EQ(WaitFdOrFutex(p[0], POLLIN, word, 1, 5000, &rev, &woken), 1);
  EXPECT_TRUE(rev & POLLIN);
  EXPECT_FALSE(woken);
  char c;
  ASSERT_EQ(read(p[0], &c, 1), 1);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {  // another process wakes the shared futex
    usleep(20000);
    __atomic_store_n(word, 2, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, word, FUTEX_WAKE, 1, nullptr, nullptr, 0);
    _exit(0);
  }
  EXPECT_EQ(WaitFdOrFutex(p[0], POLLIN, word, 1, 5000, &rev, &woken), 1);
  EXPECT_TRUE(woken);
  EXPECT_EQ(rev, 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_EQ(WaitFdOrFutex(-1, POLLIN, word, 2, 10, &rev, &woken), 1);  // bad fd
  EXPECT_EQ(rev, POLLNVAL);
  // The ring is clean for ordinary calls afterwards.
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  EXPECT_EQ(Send(sv[0], "ok", 2, 0), 2);
  char buf[2];
  EXPECT_EQ(Recv(sv[1], buf, 2, 0), 2);
  close(sv[0]);
  close(sv[1]);
  close(p[0]);
  close(p[1]);
  munmap(page, 4096);
}

// recvmsg through io_uring writes the header back like the syscall:
// SCM_RIGHTS arrives with msg_controllen set, and a blocking recvmsg waits.
TEST(EngineMsg, RecvmsgCarriesRightsAndHeader) {
  if (!Init().ok) GTEST_SKIP() << Init().reason;
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  std::thread sender([&] {
    SleepMs(20);  // the receiver is blocked by then, most likely
    char cb[CMSG_SPACE(sizeof(int))] = {};
    iovec iov{const_cast<char*>("R"), 1};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cb;
    m.msg_controllen = sizeof(cb);
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &p[1], sizeof(int));
    ASSERT_EQ(sendmsg(sv[0], &m, 0), 1);
  });
  char data[4];
  char cb[256];
  iovec iov{data, sizeof(data)};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = cb;
  m.msg_controllen = sizeof(cb);
  m.msg_flags = 0x5a5a;
  EXPECT_EQ(Recvmsg(sv[1], &m, MSG_CMSG_CLOEXEC), 1);
  sender.join();
  // recvmsg(2) reports MSG_CMSG_CLOEXEC back in msg_flags (the kernel starts
  // msg_flags from it); io_uring's write-back is the same code.
  EXPECT_EQ(m.msg_flags, MSG_CMSG_CLOEXEC);
  ASSERT_EQ(m.msg_controllen, CMSG_SPACE(sizeof(int)));
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(c->cmsg_type, SCM_RIGHTS);
  int got = -1;
  memcpy(&got, CMSG_DATA(c), sizeof(int));
  EXPECT_EQ(fcntl(got, F_GETFD), FD_CLOEXEC);
  ASSERT_EQ(write(got, "w", 1), 1);  // the received fd is the pipe's end
  char w;
  ASSERT_EQ(read(p[0], &w, 1), 1);
  EXPECT_EQ(Recvmsg(sv[1], &m, MSG_WAITALL), kNotHandled);
  close(got);
  close(p[0]);
  close(p[1]);
  close(sv[0]);
  close(sv[1]);
}

TEST(EngineMsg, UdpRecvfromAndTruncation) {
  if (!Init().ok) GTEST_SKIP() << Init().reason;
  int rx = socket(AF_INET, SOCK_DGRAM, 0), tx = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(rx, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  socklen_t len = sizeof(a);
  ASSERT_EQ(getsockname(rx, reinterpret_cast<sockaddr*>(&a), &len), 0);
  sockaddr_in txa{};
  txa.sin_family = AF_INET;
  txa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(tx, reinterpret_cast<sockaddr*>(&txa), sizeof(txa)), 0);
  socklen_t txl = sizeof(txa);
  ASSERT_EQ(getsockname(tx, reinterpret_cast<sockaddr*>(&txa), &txl), 0);
  ASSERT_EQ(sendto(tx, "hello world", 11, 0, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 11);
  ASSERT_EQ(sendto(tx, "again", 5, 0, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 5);
  sockaddr_storage from{};
  socklen_t fl = sizeof(from);
  char buf[8];
  EXPECT_EQ(Recvfrom(rx, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &fl), 8);
  ASSERT_EQ(fl, sizeof(sockaddr_in));
  EXPECT_EQ(reinterpret_cast<sockaddr_in*>(&from)->sin_port, txa.sin_port);
  iovec iov{buf, 3};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  EXPECT_EQ(Recvmsg(rx, &m, 0), 3);
  EXPECT_EQ(m.msg_flags, MSG_TRUNC);
  EXPECT_EQ(Recvfrom(rx, buf, sizeof(buf), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &fl),
            -EAGAIN);
  close(rx);
  close(tx);
}

TEST(EngineLifecycle, UdpSendtoWithAddress) {
  if (!Init().ok) GTEST_SKIP() << Init().reason;
  int rx = socket(AF_INET, SOCK_DGRAM, 0), tx = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(rx, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  socklen_t len = sizeof(a);
  ASSERT_EQ(getsockname(rx, reinterpret_cast<sockaddr*>(&a), &len), 0);
  EXPECT_EQ(Sendto(tx, "dgram", 5, 0, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 5);
  char buf[3];
  // A datagram longer than the buffer is truncated, as recv(2) does.
  EXPECT_EQ(Recv(rx, buf, sizeof(buf), 0), 3);
  EXPECT_EQ(Recv(rx, buf, sizeof(buf), MSG_DONTWAIT), -EAGAIN);
  EXPECT_EQ(Send(tx, "x", 1, 0), -EDESTADDRREQ);
  close(rx);
  close(tx);
}

}  // namespace
}  // namespace doorway::transport::uring

// The bookkeeping calls, driven directly (no preload): each must return what
// the kernel returns (or -errno) and leave the shadow table matching the
// kernel's fd table.
#include "runtime/sockets.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <netinet/in.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "gtest/gtest.h"
#include "runtime/real.h"

namespace doorway::runtime {
namespace {

bool Tracked(int fd, SocketFile* f = nullptr) {
  SocketFile tmp;
  return Describe(fd, f != nullptr ? f : &tmp);
}

TEST(Sockets, SocketIsTrackedWithItsKind) {
  int fd = Socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  ASSERT_GE(fd, 0);
  SocketFile f;
  ASSERT_TRUE(Tracked(fd, &f));
  EXPECT_EQ(f.domain, AF_INET);
  EXPECT_EQ(f.type, SOCK_STREAM);
  EXPECT_EQ(f.origin, Origin::kSocket);
  EXPECT_EQ(Close(fd), 0);
  EXPECT_FALSE(Tracked(fd));
}

TEST(Sockets, FailuresReturnNegativeErrnoAndTrackNothing) {
  EXPECT_EQ(Socket(12345, SOCK_STREAM, 0), -EAFNOSUPPORT);
  EXPECT_EQ(Close(-1), -EBADF);
  EXPECT_EQ(Dup(-1), -EBADF);
  int sv[2];
  EXPECT_EQ(Socketpair(AF_INET, SOCK_STREAM, 0, sv), -EOPNOTSUPP);
}

TEST(Sockets, SocketpairTracksBothEnds) {
  int sv[2];
  ASSERT_EQ(Socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
  SocketFile a, b;
  ASSERT_TRUE(Tracked(sv[0], &a));
  ASSERT_TRUE(Tracked(sv[1], &b));
  EXPECT_EQ(a.type, SOCK_SEQPACKET);
  EXPECT_EQ(b.origin, Origin::kSocketpair);
  Close(sv[0]);
  Close(sv[1]);
}

TEST(Sockets, DupFamilySharesTheEntry) {
  int fd = Socket(AF_INET6, SOCK_DGRAM, 0);
  ASSERT_GE(fd, 0);
  int d1 = Dup(fd);
  ASSERT_GE(d1, 0);
  int d2 = Fcntl(fd, F_DUPFD_CLOEXEC, 100, false);
  ASSERT_GE(d2, 100);
  int d3 = Fcntl(fd, F_DUPFD, 200, true);
  ASSERT_GE(d3, 200);
  ASSERT_EQ(Dup2(fd, 300), 300);
  ASSERT_EQ(Dup3(fd, 301, O_CLOEXEC), 301);
  for (int d : {d1, d2, d3, 300, 301}) {
    SocketFile f;
    ASSERT_TRUE(Tracked(d, &f)) << d;
    EXPECT_EQ(f.domain, AF_INET6);
  }
  // Closing one duplicate leaves the others.
  EXPECT_EQ(Close(fd), 0);
  EXPECT_TRUE(Tracked(d1));
  // dup2 of a non-socket over a tracked fd drops the entry, as the kernel
  // closes the old file.
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  ASSERT_EQ(Dup2(pipefd[0], 300), 300);
  EXPECT_FALSE(Tracked(300));
  // dup2 onto itself changes nothing.
  EXPECT_EQ(Dup2(301, 301), 301);
  EXPECT_TRUE(Tracked(301));
  // Non-dup fcntl commands pass through and return the kernel's answer.
  EXPECT_EQ(Fcntl(301, F_GETFD, 0, false), FD_CLOEXEC);
  EXPECT_EQ(Fcntl(-1, F_GETFD, 0, false), -EBADF);
  for (int d : {d1, d2, d3, 300, 301, pipefd[0], pipefd[1]}) Close(d);
}

TEST(Sockets, CloseRangeRemovesUnlessCloexec) {
  int fds[3];
  for (int& fd : fds) fd = Socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_EQ(Dup2(fds[0], 500), 500);
  ASSERT_EQ(Dup2(fds[1], 501), 501);
  ASSERT_EQ(Dup2(fds[2], 502), 502);
  ASSERT_EQ(CloseRange(500, 501, CLOSE_RANGE_CLOEXEC), 0);
  EXPECT_TRUE(Tracked(500));
  EXPECT_EQ(Fcntl(500, F_GETFD, 0, false), FD_CLOEXEC);
  ASSERT_EQ(CloseRange(500, 501, 0), 0);
  EXPECT_FALSE(Tracked(500));
  EXPECT_FALSE(Tracked(501));
  EXPECT_TRUE(Tracked(502));
  EXPECT_EQ(CloseRange(10, 5, 0), -EINVAL);
  Closefrom(502);
  EXPECT_FALSE(Tracked(502));
  EXPECT_EQ(fcntl(502, F_GETFD), -1);
  for (int fd : fds) Close(fd);
}

TEST(Sockets, AcceptedSocketsAreTracked) {
  int l = Socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(l, 4), 0);
  socklen_t len = sizeof(a);
  ASSERT_EQ(getsockname(l, reinterpret_cast<sockaddr*>(&a), &len), 0);
  int c = Socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  sockaddr_in peer{};
  len = sizeof(peer);
  int s = Accept4(l, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
  ASSERT_GE(s, 0);
  SocketFile f;
  ASSERT_TRUE(Tracked(s, &f));
  EXPECT_EQ(f.origin, Origin::kAccept);
  EXPECT_EQ(f.protocol, IPPROTO_TCP);
  EXPECT_EQ(len, sizeof(sockaddr_in));
  int flags = fcntl(l, F_GETFL);
  fcntl(l, F_SETFL, flags | O_NONBLOCK);
  EXPECT_EQ(Accept(l, nullptr, nullptr), -EAGAIN);
  Close(s);
  Close(c);
  Close(l);
}

TEST(Sockets, ReceivedRightsAreTracked) {
  int sv[2];
  ASSERT_EQ(Socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  // A socket made behind the runtime's back, sent over the pair.
  int hidden = static_cast<int>(syscall(SYS_socket, AF_INET, SOCK_DGRAM, 0));
  ASSERT_GE(hidden, 0);
  EXPECT_FALSE(Tracked(hidden));
  char byte = 'x';
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &hidden, sizeof(int));
  ASSERT_EQ(sendmsg(sv[0], &msg, 0), 1);
  alignas(cmsghdr) char rcontrol[CMSG_SPACE(sizeof(int))] = {};
  msghdr rmsg{};
  rmsg.msg_iov = &iov;
  rmsg.msg_iovlen = 1;
  rmsg.msg_control = rcontrol;
  rmsg.msg_controllen = sizeof(rcontrol);
  ASSERT_EQ(Recvmsg(sv[1], &rmsg, 0), 1);
  int got;
  memcpy(&got, CMSG_DATA(CMSG_FIRSTHDR(&rmsg)), sizeof(int));
  SocketFile f;
  ASSERT_TRUE(Tracked(got, &f));
  EXPECT_EQ(f.origin, Origin::kReceived);
  EXPECT_EQ(f.type, SOCK_DGRAM);
  Close(got);
  syscall(SYS_close, hidden);
  Close(sv[0]);
  Close(sv[1]);
}

TEST(Sockets, DiscoverAndScanFindHiddenSockets) {
  int hidden = static_cast<int>(syscall(SYS_socket, AF_UNIX, SOCK_DGRAM, 0));
  ASSERT_GE(hidden, 0);
  int hidden2 = static_cast<int>(syscall(SYS_socket, AF_INET, SOCK_STREAM, 0));
  int file = open("/proc/self/status", O_RDONLY);
  ASSERT_GE(file, 0);
  EXPECT_FALSE(Tracked(hidden));
  errno = 4242;
  Discover(hidden);
  Discover(file);
  EXPECT_EQ(errno, 4242);  // the runtime's own calls leave errno alone
  SocketFile f;
  ASSERT_TRUE(Tracked(hidden, &f));
  EXPECT_EQ(f.origin, Origin::kDiscovered);
  EXPECT_FALSE(Tracked(file));
  EXPECT_GE(ScanInheritedSockets(), 1);  // hidden2; hidden is tracked already
  ASSERT_TRUE(Tracked(hidden2, &f));
  EXPECT_EQ(f.origin, Origin::kInherited);
  EXPECT_FALSE(Tracked(file));
  Close(hidden);
  Close(hidden2);
  close(file);
}

TEST(Sockets, ForkChildSeesTheSameTable) {
  int fd = Socket(AF_INET, SOCK_STREAM, 0);
  pid_t pid = Fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) _exit(Tracked(fd) ? 0 : 1);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  Close(fd);
}

TEST(Real, ResolvesToLibc) {
  EXPECT_EQ(reinterpret_cast<void*>(DOORWAY_REAL(close)), reinterpret_cast<void*>(&::close));
  real::ResolveAll();
}

}  // namespace
}  // namespace doorway::runtime

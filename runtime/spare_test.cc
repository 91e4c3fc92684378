#include "runtime/spare.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gtest/gtest.h"

namespace doorway::runtime {
namespace {

ino_t Inode(int fd) {
  struct stat st {};
  return fstat(fd, &st) == 0 ? st.st_ino : 0;
}

// Keeps a fresh TCP socket of `domain` as a spare (as an accelerated
// connect does before the door socket takes its fd); returns its inode.
ino_t KeepOne(int domain, bool nonblock) {
  int s = socket(domain, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
  EXPECT_GE(s, 0);
  ino_t ino = Inode(s);
  int spare = DuplicateForSpare(s);
  EXPECT_GE(spare, 0);
  close(s);
  KeepSpareSocket(spare, domain, nonblock);
  return ino;
}

void DrainAll() {
  for (int d : {AF_INET, AF_INET6}) {
    for (int fd; (fd = TakeSpareSocket(d, 0)) >= 0;) close(fd);
  }
}

TEST(Spare, TakenAtTheLowestFreeFdWithTheAskedFlags) {
  DrainAll();
  ino_t ino = KeepOne(AF_INET, /*nonblock=*/true);
  int spares[kSpareSockets];
  ASSERT_EQ(SpareSocketFds(spares, kSpareSockets), 1);
  EXPECT_GE(spares[0], 3);
  int probe = open("/dev/null", O_RDONLY);  // the lowest free fd
  ASSERT_GE(probe, 0);
  close(probe);
  EXPECT_EQ(TakeSpareSocket(AF_INET6, 0), -1);  // another family
  int fd = TakeSpareSocket(AF_INET, SOCK_CLOEXEC);
  ASSERT_EQ(fd, probe);
  EXPECT_EQ(Inode(fd), ino);
  EXPECT_EQ(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);  // was non-blocking, asked blocking
  EXPECT_EQ(fcntl(fd, F_GETFD), FD_CLOEXEC);
  EXPECT_EQ(SpareSocketFds(spares, kSpareSockets), 0);
  EXPECT_EQ(TakeSpareSocket(AF_INET, 0), -1);  // handed out once only
  // As good as new: it connects (the kernel's answer for a closed port).
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  int l = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(listen(l, 1), 0);
  socklen_t len = sizeof a;
  ASSERT_EQ(getsockname(l, reinterpret_cast<sockaddr*>(&a), &len), 0);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  close(fd);
  close(l);
}

TEST(Spare, BoundedAndFlagsConverted) {
  DrainAll();
  for (int i = 0; i < kSpareSockets + 2; ++i) {
    int s = socket(AF_INET6, SOCK_STREAM, 0);
    int spare = DuplicateForSpare(s);
    close(s);
    if (spare >= 0) KeepSpareSocket(spare, AF_INET6, false);
  }
  int spares[kSpareSockets + 2];
  EXPECT_EQ(SpareSocketFds(spares, kSpareSockets + 2), kSpareSockets);
  int fd = TakeSpareSocket(AF_INET6, SOCK_NONBLOCK);
  ASSERT_GE(fd, 0);
  EXPECT_NE(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
  EXPECT_EQ(fcntl(fd, F_GETFD), 0);
  close(fd);
  DrainAll();
}

TEST(Spare, ClosedBehindItsBackIsForgotten) {
  // A program closing fds it does not know (a daemon closing everything)
  // closes a spare; the number may then hold something else.
  DrainAll();
  KeepOne(AF_INET, false);
  int spares[kSpareSockets];
  ASSERT_EQ(SpareSocketFds(spares, kSpareSockets), 1);
  close(spares[0]);
  int other = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(dup2(other, spares[0]), spares[0]);
  close(other);
  EXPECT_EQ(TakeSpareSocket(AF_INET, 0), -1);
  // Not ours: still open.
  EXPECT_EQ(fcntl(spares[0], F_GETFD) >= 0, true);
  close(spares[0]);
}

TEST(Spare, ForkChildDropsThem) {
  DrainAll();
  KeepOne(AF_INET, false);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int fds[kSpareSockets];
    _exit(SpareSocketFds(fds, kSpareSockets) == 0 && TakeSpareSocket(AF_INET, 0) == -1 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  int fd = TakeSpareSocket(AF_INET, 0);  // the parent's is still there
  EXPECT_GE(fd, 0);
  close(fd);
}

TEST(Spare, SynthesizedPortsAreEphemeralAndVary) {
  unsigned lo = 32768, hi = 60999;
  if (FILE* f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
    if (fscanf(f, "%u %u", &lo, &hi) != 2) lo = 32768, hi = 60999;
    fclose(f);
  }
  std::uint16_t first = SynthesizedPort();
  bool varied = false;
  for (int i = 0; i < 100; ++i) {
    std::uint16_t p = SynthesizedPort();
    EXPECT_GE(p, lo);
    EXPECT_LE(p, hi);
    varied = varied || p != first;
  }
  EXPECT_TRUE(varied);
}

}  // namespace
}  // namespace doorway::runtime

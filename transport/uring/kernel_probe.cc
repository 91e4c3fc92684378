// Prints how this kernel's io_uring treats socket requests, the facts the
// engine is built around (docs/fallback.md, "What io_uring does with socket
// calls"). Run it on any kernel: bazel run //transport/uring:kernel_probe
// Every wait is bounded (100-300 ms); pending requests are cancelled.
#include <arpa/inet.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

namespace {

io_uring ring;
constexpr int kPending = 1 << 30;

void TcpPair(int* c, int* s) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  listen(l, 4);
  getsockname(l, reinterpret_cast<sockaddr*>(&a), &len);
  *c = socket(AF_INET, SOCK_STREAM, 0);
  connect(*c, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  *s = accept(l, nullptr, nullptr);
  close(l);
}

// Submits sqe, waits up to ms; returns its result or, if it is still
// pending then, cancels it and returns kPending (*after_cancel = its result).
int Run(io_uring_sqe* sqe, int ms, int* after_cancel = nullptr) {
  sqe->user_data = 1;
  io_uring_submit(&ring);
  __kernel_timespec ts{ms / 1000, (ms % 1000) * 1000000LL};
  io_uring_cqe* cqe = nullptr;
  if (io_uring_wait_cqe_timeout(&ring, &cqe, &ts) == 0) {
    int res = cqe->res;
    io_uring_cqe_seen(&ring, cqe);
    return res;
  }
  io_uring_sqe* c = io_uring_get_sqe(&ring);
  io_uring_prep_cancel64(c, 1, 0);
  c->user_data = 2;
  io_uring_submit(&ring);
  for (int seen = 0; seen < 2;) {
    if (io_uring_wait_cqe(&ring, &cqe) != 0) continue;
    if (cqe->user_data == 1 && after_cancel != nullptr) *after_cancel = cqe->res;
    ++seen;
    io_uring_cqe_seen(&ring, cqe);
  }
  return kPending;
}

const char* Show(int r) {
  static char buf[64];
  if (r == kPending) return "still pending (parked on an internal poll)";
  if (r < 0) {
    snprintf(buf, sizeof(buf), "-%s", strerrordesc_np(-r));
  } else {
    snprintf(buf, sizeof(buf), "%d", r);
  }
  return buf;
}

volatile sig_atomic_t g_sigpipes = 0;

}  // namespace

int main() {
  utsname u{};
  uname(&u);
  printf("kernel %s\n", u.release);
  if (int r = io_uring_queue_init(8, &ring, 0); r < 0) {
    printf("io_uring_setup: %s\n", strerror(-r));
    return 0;
  }
  int c, s;
  TcpPair(&c, &s);
  char buf[64];
  fcntl(s, F_SETFL, O_NONBLOCK);
  io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  io_uring_prep_recv(sqe, s, buf, sizeof(buf), 0);
  printf("RECV on an O_NONBLOCK socket, no data:          %s\n", Show(Run(sqe, 100)));
  sqe = io_uring_get_sqe(&ring);
  io_uring_prep_read(sqe, s, buf, sizeof(buf), -1);
  printf("READ on an O_NONBLOCK socket, no data:          %s\n", Show(Run(sqe, 100)));
  sqe = io_uring_get_sqe(&ring);
  io_uring_prep_recv(sqe, s, buf, sizeof(buf), MSG_DONTWAIT);
  printf("RECV with MSG_DONTWAIT, no data:                %s\n", Show(Run(sqe, 100)));
  fcntl(s, F_SETFL, 0);
  timeval tv{0, 50000};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sqe = io_uring_get_sqe(&ring);
  io_uring_prep_recv(sqe, s, buf, sizeof(buf), 0);
  printf("RECV with SO_RCVTIMEO 50 ms, after 300 ms:      %s\n", Show(Run(sqe, 300)));
  tv = {0, 0};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (write(c, "abc", 3) != 3) return 1;
  int partial = 0;
  sqe = io_uring_get_sqe(&ring);
  io_uring_prep_recv(sqe, s, buf, 10, MSG_WAITALL);
  int r = Run(sqe, 100, &partial);
  printf("RECV MSG_WAITALL 10 with 3 there, cancelled:    %s", Show(r));
  printf(" -> result after cancel %s\n", Show(partial));
  int u1 = socket(AF_INET, SOCK_DGRAM, 0), u2 = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  bind(u1, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  getsockname(u1, reinterpret_cast<sockaddr*>(&a), &len);
  sendto(u2, "hello world", 11, 0, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  sockaddr_storage from{};
  iovec iov{buf, 5};
  msghdr m{};
  m.msg_name = &from;
  m.msg_namelen = sizeof(from);
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_flags = 0x5a5a;
  sqe = io_uring_get_sqe(&ring);
  io_uring_prep_recvmsg(sqe, u1, &m, 0);
  r = Run(sqe, 100);
  printf(
      "RECVMSG of 11-byte datagram into 5 bytes:       %s; msg_namelen %u (syscall: %zu), "
      "msg_flags 0x%x (syscall: MSG_TRUNC 0x%x)\n",
      Show(r), m.msg_namelen, sizeof(sockaddr_in), m.msg_flags, MSG_TRUNC);
  {
    int sp[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sp);
    char cb[CMSG_SPACE(sizeof(int))] = {};
    iovec si{const_cast<char*>("x"), 1};
    msghdr sm{};
    sm.msg_iov = &si;
    sm.msg_iovlen = 1;
    sm.msg_control = cb;
    sm.msg_controllen = sizeof(cb);
    cmsghdr* cm = CMSG_FIRSTHDR(&sm);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    int fd0 = 0;
    memcpy(CMSG_DATA(cm), &fd0, sizeof(fd0));
    sendmsg(sp[0], &sm, 0);
    char rb[256];
    iovec ri{buf, 8};
    msghdr rm{};
    rm.msg_iov = &ri;
    rm.msg_iovlen = 1;
    rm.msg_control = rb;
    rm.msg_controllen = sizeof(rb);
    sqe = io_uring_get_sqe(&ring);
    io_uring_prep_recvmsg(sqe, sp[1], &rm, 0);
    r = Run(sqe, 100);
    printf(
        "RECVMSG with SCM_RIGHTS into 256 bytes:         %s; msg_controllen %zu (syscall: %zu)\n",
        Show(r), static_cast<size_t>(rm.msg_controllen), CMSG_SPACE(sizeof(int)));
  }
  signal(SIGPIPE, [](int) { g_sigpipes = g_sigpipes + 1; });
  close(s);
  usleep(10000);
  for (int i = 0; i < 5; ++i) {
    sqe = io_uring_get_sqe(&ring);
    io_uring_prep_send(sqe, c, "x", 1, 0);
    r = Run(sqe, 100);
    if (r < 0) break;
    usleep(2000);
  }
  printf("SEND to a closed peer without MSG_NOSIGNAL:     %s, SIGPIPE raised %d time(s)\n", Show(r),
         static_cast<int>(g_sigpipes));
  int c2, s2;
  TcpPair(&c2, &s2);
  struct sigaction sa {};
  sa.sa_handler = [](int) {};
  sa.sa_flags = SA_RESTART;
  sigaction(SIGALRM, &sa, nullptr);
  sqe = io_uring_get_sqe(&ring);
  io_uring_prep_recv(sqe, s2, buf, sizeof(buf), 0);
  sqe->user_data = 1;
  io_uring_submit(&ring);
  ualarm(50000, 0);
  io_uring_cqe* cqe = nullptr;
  __kernel_timespec ts{1, 0};
  r = io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
  printf("io_uring_enter wait hit by an SA_RESTART signal: %s (the request stays in flight)\n",
         Show(r));
  return 0;
}

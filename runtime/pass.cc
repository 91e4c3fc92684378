#include "runtime/pass.h"

#include <fcntl.h>
#include <sys/epoll.h>

#include <cerrno>
#include <cstring>

#include "fdtable/fdtable.h"
#include "runtime/accel.h"
#include "runtime/epoll.h"
#include "runtime/fallback.h"
#include "runtime/log.h"
#include "runtime/real.h"
#include "runtime/relay.h"
#include "runtime/sockets.h"

namespace doorway::runtime {

namespace {

using fdtable::GlobalTable;
using fdtable::Ref;

// The program's epoll registrations of one number of a connection.
struct NumberRegs {
  int fd;
  int n;
  EpollProgramReg regs[8];
};

// The accelerated connection at fd goes to a relay; the process's other
// numbers for it (dup) become the same kernel socket, and the epoll sets
// that watched any of them watch the kernel socket instead.
int PassConnection(int fd) {
  Ref r = GlobalTable().Get(fd);
  const Connection* c = r.As<Connection>();
  if (c == nullptr) return 0;
  int others[64];
  int n = 0;
  GlobalTable().ForEach([&](int other, const Ref& o) {
    if (other != fd && o.As<Connection>() == c && n < 64) others[n++] = other;
  });
  // The numbers in sets are few (usually the one): at most 8 noted.
  NumberRegs regs[8];
  int nr = 0;
  for (int i = -1; i < n && nr < 8; ++i) {
    const int num = i < 0 ? fd : others[i];
    regs[nr].fd = num;
    regs[nr].n = EpollTakeConnection(num, regs[nr].regs, 8);
    if (regs[nr].n > 0) ++nr;
  }
  // Through the process's relay server; a relay of its own if that fails.
  int rc = RelayConnectionShared(fd);
  if (rc != 0) rc = RelayConnection(fd, "to be passed with SCM_RIGHTS");
  if (rc == 0) {
    for (int i = 0; i < n; ++i) {
      int fdflags = DOORWAY_REAL(fcntl)(others[i], F_GETFD);
      Dup3(fd, others[i], (fdflags > 0 && (fdflags & FD_CLOEXEC)) ? O_CLOEXEC : 0);
    }
  }
  // Back in the sets: the kernel socket now, or the connection itself if
  // the relay failed (then through doorway's sets again).
  for (int k = 0; k < nr; ++k) {
    for (int j = 0; j < regs[k].n; ++j) {
      EpollProgramReg& g = regs[k].regs[j];
      int e = rc == 0 ? (DOORWAY_REAL(epoll_ctl)(g.epfd, EPOLL_CTL_ADD, regs[k].fd, &g.ev) == 0
                             ? 0
                             : -errno)
                      : EpollCtl(g.epfd, EPOLL_CTL_ADD, regs[k].fd, &g.ev);
      if (e != 0) {
        DOORWAY_LOG(kWarn, "fd %d: not registered again in epoll set %d (%s)", regs[k].fd, g.epfd,
                    strerror(-e));
      }
    }
  }
  return rc;
}

// Whether the kernel would pass descriptors over sock: a Unix socket (or
// one doorway does not know).
bool MayPass(int sock) {
  SocketFile f;
  bool accelerated = false;
  if (!Describe(sock, &f, &accelerated)) return true;
  return !accelerated && f.domain == AF_UNIX;
}

}  // namespace

int PrepareRights(int sock, const msghdr* msg) {
  if (msg == nullptr || msg->msg_control == nullptr || msg->msg_controllen < sizeof(cmsghdr)) {
    return 0;
  }
  bool checked = false;
  for (cmsghdr* cm = CMSG_FIRSTHDR(const_cast<msghdr*>(msg)); cm != nullptr;
       cm = CMSG_NXTHDR(const_cast<msghdr*>(msg), cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    if (cm->cmsg_len < CMSG_LEN(0)) break;
    size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* data = CMSG_DATA(cm);
    for (size_t i = 0; i < n; ++i) {
      int fd;
      memcpy(&fd, data + i * sizeof(int), sizeof(int));
      std::uint32_t tag = GlobalTable().Tag(fd);
      if (tag != kTagConnection && tag != kTagListener) continue;
      if (!checked) {
        if (!MayPass(sock)) return 0;
        checked = true;
      }
      int rc = tag == kTagConnection ? PassConnection(fd) : UnaccelerateListener(fd);
      if (rc != 0) {
        DOORWAY_LOG(kWarn, "fd %d: cannot pass an accelerated socket with SCM_RIGHTS (%s)", fd,
                    strerror(-rc));
        return rc;
      }
      DOORWAY_LOG(kDebug, "fd %d: accelerated %s given back to the kernel to be passed", fd,
                  tag == kTagConnection ? "connection" : "listener");
    }
  }
  return 0;
}

ssize_t SendmsgWithRights(int sock, const msghdr* msg, int flags) {
  if (int rc = PrepareRights(sock, msg); rc != 0) return rc;
  ssize_t r = fallback::Sendmsg(sock, msg, flags);
  return r < 0 ? -errno : r;
}

int SendmmsgWithRights(int sock, mmsghdr* msgs, unsigned n, int flags) {
  for (unsigned i = 0; msgs != nullptr && i < n; ++i) {
    if (int rc = PrepareRights(sock, &msgs[i].msg_hdr); rc != 0) return rc;
  }
  int r = DOORWAY_REAL(sendmmsg)(sock, msgs, n, flags);
  return r < 0 ? -errno : r;
}

}  // namespace doorway::runtime

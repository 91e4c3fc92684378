#include "runtime/relay.h"

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <new>
#include <utility>

#include "fdtable/fdtable.h"
#include "runtime/accel.h"
#include "runtime/inherit.h"
#include "runtime/log.h"
#include "runtime/poll.h"
#include "runtime/real.h"
#include "runtime/sockets.h"
#include "runtime/spare.h"

extern "C" char** environ;

namespace doorway::runtime {

namespace {

using fdtable::GlobalTable;
using fdtable::Ref;

constexpr char kPreloadVar[] = "LD_PRELOAD=";

const char* PreloadValue(char* const* envp) {
  for (char* const* e = envp; e != nullptr && *e != nullptr; ++e) {
    if (strncmp(*e, kPreloadVar, sizeof(kPreloadVar) - 1) == 0) {
      return *e + sizeof(kPreloadVar) - 1;
    }
  }
  return nullptr;
}

// The kernel runs set-uid/set-gid images and images with file capabilities
// in secure mode (AT_SECURE), where ld.so ignores an LD_PRELOAD path with a
// slash and loads others only from system directories.
bool SecureMode(int fd, const struct stat& st) {
  if ((st.st_mode & S_ISUID) != 0 && st.st_uid != geteuid()) return true;
  if ((st.st_mode & S_ISGID) != 0 && st.st_gid != getegid()) return true;
  return fgetxattr(fd, "security.capability", nullptr, 0) > 0;
}

int OpenImage(const char* path) { return open(path, O_RDONLY | O_CLOEXEC); }

bool ImageLoadsPreload(int fd, int depth);

// "#!interpreter [arg]": the interpreter decides.
bool ScriptLoadsPreload(const char* head, ssize_t n, int depth) {
  if (depth > 2) return false;  // the kernel allows a few levels; be conservative
  char interp[PATH_MAX];
  ssize_t i = 2;
  while (i < n && (head[i] == ' ' || head[i] == '\t')) ++i;
  size_t k = 0;
  while (i < n && head[i] != ' ' && head[i] != '\t' && head[i] != '\n' && k + 1 < sizeof(interp)) {
    interp[k++] = head[i++];
  }
  interp[k] = '\0';
  if (k == 0) return false;
  int ifd = OpenImage(interp);
  if (ifd < 0) return false;
  bool r = ImageLoadsPreload(ifd, depth + 1);
  close(ifd);
  return r;
}

template <typename Ehdr, typename Phdr>
bool ElfHasInterpreter(int fd) {
  Ehdr eh;
  if (pread(fd, &eh, sizeof(eh), 0) != static_cast<ssize_t>(sizeof(eh))) return false;
  if (eh.e_phentsize != sizeof(Phdr) || eh.e_phnum == 0 || eh.e_phnum > 512) return false;
  for (unsigned i = 0; i < eh.e_phnum; ++i) {
    Phdr ph;
    off_t at = static_cast<off_t>(eh.e_phoff + i * sizeof(Phdr));
    if (pread(fd, &ph, sizeof(ph), at) != static_cast<ssize_t>(sizeof(ph))) return false;
    if (ph.p_type == PT_INTERP) return true;
  }
  return false;  // statically linked: ld.so never runs, LD_PRELOAD has no effect
}

bool ImageLoadsPreload(int fd, int depth) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || SecureMode(fd, st)) return false;
  char head[256];
  ssize_t n = pread(fd, head, sizeof(head), 0);
  if (n >= 2 && head[0] == '#' && head[1] == '!') return ScriptLoadsPreload(head, n, depth);
  if (n < EI_NIDENT || memcmp(head, ELFMAG, SELFMAG) != 0) return false;
  if (head[EI_CLASS] == ELFCLASS64) return ElfHasInterpreter<Elf64_Ehdr, Elf64_Phdr>(fd);
  if (head[EI_CLASS] == ELFCLASS32) return ElfHasInterpreter<Elf32_Ehdr, Elf32_Phdr>(fd);
  return false;
}

// What execvp would run: the first PATH entry with an executable file.
int OpenSearched(const char* file) {
  const char* path = getenv("PATH");
  if (path == nullptr) path = "/bin:/usr/bin";
  char buf[PATH_MAX];
  for (const char* p = path;; ++p) {
    const char* end = strchrnul(p, ':');
    int n = end == p ? snprintf(buf, sizeof(buf), "%s", file)
                     : snprintf(buf, sizeof(buf), "%.*s/%s", static_cast<int>(end - p), p, file);
    if (n > 0 && static_cast<size_t>(n) < sizeof(buf) && access(buf, X_OK) == 0) {
      int fd = OpenImage(buf);
      if (fd >= 0) return fd;
    }
    if (*end == '\0') return -1;
    p = end;
  }
}

// Where this code was loaded from (libdoorway.so, or the program it is
// linked into).
bool OwnObjectPath(char* out, size_t size) {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&RelayLoop), &info) == 0 || info.dli_fname == nullptr) {
    return false;
  }
  return snprintf(out, size, "%s", info.dli_fname) < static_cast<int>(size);
}

// doorway-relay beside libdoorway.so, if doorway was preloaded.
bool FindRelayBinary(char* lib, size_t lib_size, char* relay, size_t relay_size) {
  if (!OwnObjectPath(lib, lib_size) || strstr(lib, "libdoorway") == nullptr) return false;
  const char* slash = strrchr(lib, '/');
  int dir = slash == nullptr ? 0 : static_cast<int>(slash - lib);
  int n = slash == nullptr ? snprintf(relay, relay_size, "doorway-relay")
                           : snprintf(relay, relay_size, "%.*s/doorway-relay", dir, lib);
  return n > 0 && static_cast<size_t>(n) < relay_size && access(relay, X_OK) == 0;
}

// Binds the kernel socket s to ep (with SO_REUSEADDR); false if it cannot
// (the address is taken or not local): s stays unbound.
bool BindTo(int s, const Endpoint& ep) {
  int one = 1;
  DOORWAY_REAL(setsockopt)(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_storage ss;
  socklen_t len = EndpointToSockaddr(ep, &ss);
  return DOORWAY_REAL(bind)(s, reinterpret_cast<sockaddr*>(&ss), len) == 0;
}

// A connected pair of kernel TCP sockets of c's family: out[0] for the
// program, out[1] for the relay. The program's end is the accepted one, so
// that its getpeername names c's peer when that address can be bound (a
// server's connection: the client's address and port, which no kernel
// socket holds, doorway's connect synthesizes it); its getsockname has c's
// local address but another port (the real one belongs to the listener).
int TcpPair(const Connection& c, int out[2]) {
  const int family = c.local.family == AF_INET6 ? AF_INET6 : AF_INET;
  Endpoint local = c.local;
  local.port = 0;
  sockaddr_storage ss{};
  socklen_t len;
  int l = DOORWAY_REAL(socket)(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l < 0) return -errno;
  if (!BindTo(l, local)) {
    // Not a local address any more: the loopback.
    DOORWAY_REAL(close)(l);
    if ((l = DOORWAY_REAL(socket)(family, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) return -errno;
    if (family == AF_INET6) {
      auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
      s6->sin6_family = AF_INET6;
      s6->sin6_addr = in6addr_loopback;
      len = sizeof(*s6);
    } else {
      auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
      s4->sin_family = AF_INET;
      s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      len = sizeof(*s4);
    }
    if (DOORWAY_REAL(bind)(l, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
      int e = errno;
      DOORWAY_REAL(close)(l);
      return -e;
    }
  }
  len = sizeof(ss);
  int a = -1, b = -1, e = 0;
  if (DOORWAY_REAL(listen)(l, 1) != 0 ||
      DOORWAY_REAL(getsockname)(l, reinterpret_cast<sockaddr*>(&ss), &len) != 0 ||
      (a = DOORWAY_REAL(socket)(family, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) {
    e = errno;
  }
  if (e == 0 && !BindTo(a, c.peer)) {
    // The peer's address is taken (a client connection's peer is a
    // listener): any port.
    DOORWAY_REAL(close)(a);
    if ((a = DOORWAY_REAL(socket)(family, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) e = errno;
  }
  if (e == 0 && (DOORWAY_REAL(connect)(a, reinterpret_cast<sockaddr*>(&ss), len) != 0 ||
                 (b = DOORWAY_REAL(accept4)(l, nullptr, nullptr, SOCK_CLOEXEC)) < 0)) {
    e = errno;
  }
  DOORWAY_REAL(close)(l);
  if (e != 0) {
    if (a >= 0) DOORWAY_REAL(close)(a);
    return -e;
  }
  out[0] = b;
  out[1] = a;
  return 0;
}

// The kernel socket is abandoned with a reset (the program reads
// ECONNRESET), as the peer's reset arrived on the rings.
void ResetKernel(int fd) {
  linger lg{1, 0};
  DOORWAY_REAL(setsockopt)(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  DOORWAY_REAL(close)(fd);
}

// ... and the accelerated connection likewise (SO_LINGER 0: close resets).
void ResetConnection(int fd) {
  linger lg{1, 0};
  ManagedSetsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  Close(fd);
}

// In a process just forked from the program to relay: the program's
// connections (but `mine`) and listeners become shared, so that this
// process's exit shuts none of them down or removes their doors; every fd
// but keep[0..n) is closed, 0-2 are /dev/null; signals are default and
// unblocked.
void DetachFromProgram(const Connection* mine, const int* keep, int n) {
  GlobalTable().ForEach([&](int, const Ref& r) {
    if (Connection* c = const_cast<Ref&>(r).As<Connection>(); c != nullptr && c != mine) {
      c->shared.store(true, std::memory_order_relaxed);
    }
    if (Listener* l = const_cast<Ref&>(r).As<Listener>(); l != nullptr) {
      l->shared.store(true, std::memory_order_relaxed);
    }
  });
  int sorted[2];
  for (int i = 0; i < n; ++i) sorted[i] = keep[i];
  if (n == 2 && sorted[0] > sorted[1]) std::swap(sorted[0], sorted[1]);
  unsigned from = 0;
  for (int i = 0; i < n; ++i) {
    const auto k = static_cast<unsigned>(sorted[i]);
    if (k > from) CloseRange(from, k - 1, 0);
    from = k + 1;
  }
  CloseRange(from, ~0U, 0);
  for (int i = 0; i < 3; ++i) {
    if (std::find(keep, keep + n, i) != keep + n) continue;
    int null = open("/dev/null", O_RDWR);  // lowest free number: i
    if (null >= 0 && null != i) DOORWAY_REAL(close)(null);
  }
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; ++s) sigaction(s, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
}

// The environment to exec doorway-relay with: ours, with LD_PRELOAD set to
// this libdoorway.so (lib) and, if drop_inherit, without DOORWAY_INHERIT.
// In mmap'ed memory (a forked child of a threaded program must not
// malloc); nullptr if there is none.
char** RelayEnvironment(const char* lib, bool drop_inherit) {
  size_t count = 0;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) ++count;
  size_t bytes = (count + 2) * sizeof(char*) + sizeof(kPreloadVar) + strlen(lib) + 1;
  void* mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return nullptr;
  char** env = static_cast<char**>(mem);
  char* preload = reinterpret_cast<char*>(env + count + 2);
  snprintf(preload, sizeof(kPreloadVar) + strlen(lib), "%s%s", kPreloadVar, lib);
  size_t k = 0;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    if (strncmp(*e, kPreloadVar, sizeof(kPreloadVar) - 1) == 0) continue;
    if (drop_inherit && strncmp(*e, "DOORWAY_INHERIT=", 16) == 0) continue;
    env[k++] = *e;
  }
  env[k++] = preload;
  env[k] = nullptr;
  return env;
}

// In the relay process: closes what belongs to the program (without
// shutting down its connections or removing its doors), then either execs
// doorway-relay or relays itself.
[[noreturn]] void BecomeRelay(int fd, int tcp, Connection* conn, bool was_shared, const char* lib,
                              const char* relay) {
  const int keep[] = {fd, tcp};
  DetachFromProgram(conn, keep, 2);
  conn->shared.store(was_shared, std::memory_order_relaxed);
  if (relay != nullptr) {
    // (DOORWAY_INHERIT is added by ExecEnv for fd.)
    if (char** env = RelayEnvironment(lib, false); env != nullptr) {
      // Both survive the exec (a connection the program accepted with
      // SOCK_CLOEXEC too: ExecEnv passes only those that survive).
      DOORWAY_REAL(fcntl)(tcp, F_SETFD, 0);
      DOORWAY_REAL(fcntl)(fd, F_SETFD, 0);
      char fd_arg[16], tcp_arg[16];
      snprintf(fd_arg, sizeof(fd_arg), "%d", fd);
      snprintf(tcp_arg, sizeof(tcp_arg), "%d", tcp);
      char* argv[] = {const_cast<char*>("doorway-relay"), fd_arg, tcp_arg, nullptr};
      ExecEnv exec_env(env);
      DOORWAY_REAL(execve)(relay, argv, exec_env.envp());
      exec_env.Release(true);
      DOORWAY_LOG(kWarn, "cannot exec %s (%s); relaying in the forked process", relay,
                  strerror(errno));
    }
  }
  _exit(RelayLoop(fd, tcp));
}

}  // namespace

bool WillLoadDoorway(const ExecTarget& t, char* const* envp) {
  const char* preload = PreloadValue(envp);
  if (preload == nullptr || strstr(preload, "libdoorway") == nullptr) return false;
  int fd = -1;
  bool own = true;
  if (t.fd >= 0 && (t.path == nullptr || t.path[0] == '\0')) {
    fd = t.fd;
    own = false;
  } else if (t.path == nullptr) {
    return false;
  } else if (t.search && strchr(t.path, '/') == nullptr) {
    fd = OpenSearched(t.path);
  } else {
    fd = openat(t.dirfd, t.path, O_RDONLY | O_CLOEXEC);
  }
  if (fd < 0) return false;
  bool r = ImageLoadsPreload(fd, 0);
  if (own) close(fd);
  return r;
}

namespace {

// Starts a relay process between the accelerated connection c at fd and
// the kernel socket relay_tcp (which it takes; connected, or connecting:
// the relay waits for the connect). From then on the relay holds the
// connection: the caller may drop fd without shutting it down.
int StartRelay(int fd, Connection* c, int relay_tcp) {
  char lib[PATH_MAX], relay[PATH_MAX];
  bool have_relay = FindRelayBinary(lib, sizeof(lib), relay, sizeof(relay));
  bool was_shared = c->shared.exchange(true, std::memory_order_relaxed);
  pid_t pid = DOORWAY_REAL(fork)();
  if (pid < 0) {
    int e = errno;
    c->shared.store(was_shared, std::memory_order_relaxed);
    return -e;
  }
  if (pid == 0) {
    // Double fork: the relay is reparented at once, so the program never
    // finds an unknown child in wait() (nor does one started by exec).
    pid_t relay_pid = DOORWAY_REAL(fork)();
    if (relay_pid != 0) _exit(relay_pid < 0 ? 1 : 0);
    pollfd p{relay_tcp, POLLOUT, 0};
    int err = 0;
    socklen_t el = sizeof(err);
    // Bounded: a connect the kernel gives up on reports its error sooner.
    if (syscall(SYS_poll, &p, 1, 60000) != 1 ||
        DOORWAY_REAL(getsockopt)(relay_tcp, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0) {
      // No kernel connection to hand the bytes to: the peer sees a reset,
      // as a client whose connection a listener dropped from its backlog.
      c->shared.store(was_shared, std::memory_order_relaxed);
      ResetConnection(fd);
      _exit(1);
    }
    BecomeRelay(fd, relay_tcp, c, was_shared, lib, have_relay ? relay : nullptr);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return 0;
}

}  // namespace

namespace {

// fd (the accelerated connection c, now relayed) becomes the kernel socket
// sock (which this closes), with c's O_NONBLOCK and fd's FD_CLOEXEC.
int TakeKernelSocket(int fd, Connection* c, int sock, const char* purpose) {
  int rc = 0;
  int fdflags = DOORWAY_REAL(fcntl)(fd, F_GETFD);
  if (c->nonblocking.load(std::memory_order_relaxed)) {
    DOORWAY_REAL(fcntl)(sock, F_SETFL, O_NONBLOCK);
  }
  // dup3 replaces the door socket atomically: fd is never closed meanwhile.
  if (DOORWAY_REAL(dup3)(sock, fd, (fdflags & FD_CLOEXEC) ? O_CLOEXEC : 0) != fd) {
    rc = -errno;
  }
  DOORWAY_REAL(close)(sock);
  if (rc != 0) return rc;  // the relay has the connection; this fd keeps the door socket
  SocketFile sf;
  sf.domain = c->local.family == AF_INET6 ? AF_INET6 : AF_INET;
  sf.type = SOCK_STREAM;
  sf.protocol = IPPROTO_TCP;
  sf.origin = c->role == transport::Role::kServer ? Origin::kAccept : Origin::kSocket;
  Ref obj = fdtable::Make<SocketFile>(sf);
  bool ok = false;
  Ref old = GlobalTable().Install(fd, std::move(obj), &ok, kTagPlain);
  if (old) OnFdDetached(old);
  DOORWAY_LOG(kDebug, "fd %d: accelerated connection handed to a relay %s", fd, purpose);
  return 0;
}

}  // namespace

namespace {

// What the sender tells the relay server with each connection (the fds
// go with it: the Unix socket, the segment's memfd, the kernel socket).
struct Handover {
  std::uint64_t offset;
  int role;
  int shared;
  Endpoint local, peer;
};

// The relay server of this process (RelayConnectionShared): the sender's
// end of its control socket (hidden), and the process that made it (a
// fork child makes its own).
int g_server_ctl = -1;
pid_t g_server_owner = 0;
std::uint64_t g_server_ino = 0;  // the control socket's inode

// Whether g_server_ctl still is our control socket: the program may have
// closed the number (close() by number is not prevented) and reused it.
bool ServerCtlIsOurs() {
  struct stat st;
  return g_server_ctl >= 0 && fstat(g_server_ctl, &st) == 0 && st.st_ino == g_server_ino;
}

// Forgets the control socket, closing it only if it is still ours.
void DropServerCtl() {
  if (ServerCtlIsOurs()) DOORWAY_REAL(close)(g_server_ctl);
  g_server_ctl = -1;
}
std::atomic<bool> g_server_busy{false};

// In the server process: closes what belongs to the program (without
// shutting down its connections or removing its doors), then execs
// `doorway-relay serve CTL` or serves itself.
[[noreturn]] void BecomeServer(int ctl, const char* lib, const char* relay) {
  DetachFromProgram(nullptr, &ctl, 1);
  if (relay != nullptr) {
    if (char** env = RelayEnvironment(lib, true); env != nullptr) {
      DOORWAY_REAL(fcntl)(ctl, F_SETFD, 0);
      char ctl_arg[16];
      snprintf(ctl_arg, sizeof(ctl_arg), "%d", ctl);
      char* argv[] = {const_cast<char*>("doorway-relay"), const_cast<char*>("serve"), ctl_arg,
                      nullptr};
      DOORWAY_REAL(execve)(relay, argv, env);
      DOORWAY_LOG(kWarn, "cannot exec %s (%s); serving relays in the forked process", relay,
                  strerror(errno));
    }
  }
  _exit(RelayServe(ctl));
}

// This process's relay server's control socket, started if needed; -errno.
int ServerControl() {
  if (g_server_ctl >= 0 && g_server_owner == getpid() && ServerCtlIsOurs()) return g_server_ctl;
  // None yet, closed by the program, or inherited across fork (the
  // parent's): ours is made below.
  if (g_server_ctl >= 0) DropServerCtl();
  int sv[2];
  if (DOORWAY_REAL(socketpair)(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return -errno;
  char lib[PATH_MAX], relay[PATH_MAX];
  bool have_relay = FindRelayBinary(lib, sizeof(lib), relay, sizeof(relay));
  pid_t pid = DOORWAY_REAL(fork)();
  if (pid < 0) {
    int e = errno;
    DOORWAY_REAL(close)(sv[0]);
    DOORWAY_REAL(close)(sv[1]);
    return -e;
  }
  if (pid == 0) {
    // Double fork, as StartRelay.
    pid_t server = DOORWAY_REAL(fork)();
    if (server != 0) _exit(server < 0 ? 1 : 0);
    DOORWAY_REAL(close)(sv[0]);
    BecomeServer(sv[1], lib, have_relay ? relay : nullptr);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  DOORWAY_REAL(close)(sv[1]);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    DOORWAY_REAL(close)(sv[0]);
    return -ECHILD;
  }
  int ctl = HideFd(sv[0]);
  if (ctl < 0) return ctl;
  struct stat st;
  if (fstat(ctl, &st) != 0) {
    DOORWAY_REAL(close)(ctl);
    return -EBADF;
  }
  g_server_ctl = ctl;
  g_server_ino = st.st_ino;
  g_server_owner = getpid();
  return ctl;
}

// Hands c (at fd) to this process's relay server with the relay's end of
// a kernel pair; 0 once the server relays it, -errno if it did not take
// it (nothing changed then).
int HandToServer(int fd, Connection* c, int relay_tcp) {
  bool expected = false;
  if (!g_server_busy.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
    return -EBUSY;  // another thread is handing one over: the caller relays its own
  }
  int rc = ServerControl();
  if (rc >= 0) {
    const int ctl = rc;
    rc = 0;
    const bool was_shared = c->shared.exchange(true, std::memory_order_relaxed);
    Handover h{};
    h.offset = c->seg.offset();
    h.role = static_cast<int>(c->role);
    h.shared = was_shared ? 1 : 0;
    h.local = c->local;
    h.peer = c->peer;
    const int fds[3] = {fd, c->seg.fd(), relay_tcp};
    iovec iov{&h, sizeof(h)};
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(fds))] = {};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof(cbuf);
    cmsghdr* cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(fds));
    memcpy(CMSG_DATA(cm), fds, sizeof(fds));
    if (DOORWAY_REAL(sendmsg)(ctl, &m, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof(h))) {
      // Not sent: the server is gone (or the program closed our socket).
      rc = -errno;
      DropServerCtl();
    } else {
      // The answer. After a sent handover, anything but a clear 'n' counts
      // as taken: two relays on one connection would be worse than a
      // connection lost with a server that died.
      char ack = 0;
      pollfd p{ctl, POLLIN, 0};
      if (syscall(SYS_poll, &p, 1, 10000) == 1 && DOORWAY_REAL(recv)(ctl, &ack, 1, 0) == 1 &&
          ack == 'n') {
        rc = -ENOMEM;
      }
    }
    if (rc != 0) c->shared.store(was_shared, std::memory_order_relaxed);
  }
  g_server_busy.store(false, std::memory_order_release);
  return rc;
}

}  // namespace

int RelayServerFd() { return g_server_owner == getpid() && ServerCtlIsOurs() ? g_server_ctl : -1; }

namespace {

// The connection at fd goes to a relay that `start` gives the relay's end
// of a kernel TCP pair (a new relay process, or the relay server); fd
// becomes the other end.
int RelayVia(int fd, int (*start)(int, Connection*, int), const char* purpose) {
  Ref r = GlobalTable().Get(fd);
  Connection* c = r.As<Connection>();
  if (c == nullptr) return -EINVAL;
  int pair[2] = {-1, -1};
  int rc = TcpPair(*c, pair);
  if (rc != 0) return rc;
  rc = start(fd, c, pair[1]);
  DOORWAY_REAL(close)(pair[1]);
  if (rc != 0) {
    DOORWAY_REAL(close)(pair[0]);
    return rc;
  }
  return TakeKernelSocket(fd, c, pair[0], purpose);
}

}  // namespace

int RelayConnectionShared(int fd) {
  return RelayVia(fd, &HandToServer, "to the relay server, to be passed with SCM_RIGHTS");
}

int RelayConnection(int fd, const char* purpose) { return RelayVia(fd, &StartRelay, purpose); }

int RelayConnectionTo(int fd, const Endpoint& dest) {
  Ref r = GlobalTable().Get(fd);
  Connection* c = r.As<Connection>();
  if (c == nullptr) return -EINVAL;
  const int family = dest.family == AF_INET6 ? AF_INET6 : AF_INET;
  int t = DOORWAY_REAL(socket)(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (t < 0) return -errno;
  // The connection the listener's accept returns then names the client.
  if (!BindTo(t, c->peer)) {
    DOORWAY_REAL(close)(t);
    t = DOORWAY_REAL(socket)(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (t < 0) return -errno;
  }
  sockaddr_storage ss;
  socklen_t len = EndpointToSockaddr(dest, &ss);
  if (DOORWAY_REAL(connect)(t, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    if (errno != EINPROGRESS) {
      int e = errno;
      DOORWAY_REAL(close)(t);
      return -e;
    }
    // A loopback connect completes at once unless the backlog is full: the
    // connection is then queued at the listener before the caller goes on,
    // as it was at the door. Otherwise the relay waits for it.
    pollfd p{t, POLLOUT, 0};
    (void)syscall(SYS_poll, &p, 1, 1000);
  }
  int rc = StartRelay(fd, c, t);
  DOORWAY_REAL(close)(t);
  if (rc == 0) {
    DOORWAY_LOG(kDebug, "fd %d: accelerated connection handed to a relay into the listener", fd);
  }
  return rc;
}

namespace {

// One relayed connection: the accelerated connection conn and the kernel
// socket tcp, with a buffer each way.
struct RelayPair {
  int conn = -1, tcp = -1;
  char* up = nullptr;    // conn -> tcp
  char* down = nullptr;  // tcp -> conn
  size_t up_off = 0, up_len = 0, down_off = 0, down_len = 0;
  bool conn_eof = false, tcp_eof = false;
};
constexpr size_t kRelayBuffer = 64 << 10;

// What to wait for (pfd[0]: conn, pfd[1]: tcp); false when both directions
// are finished.
bool RelayEvents(const RelayPair& r, pollfd* pfd) {
  pfd[0] = {r.conn, 0, 0};
  pfd[1] = {r.tcp, 0, 0};
  if (!r.conn_eof && r.up_len == 0) pfd[0].events |= POLLIN;
  if (r.down_len > 0) pfd[0].events |= POLLOUT;
  if (!r.tcp_eof && r.down_len == 0) pfd[1].events |= POLLIN;
  if (r.up_len > 0) pfd[1].events |= POLLOUT;
  return pfd[0].events != 0 || pfd[1].events != 0;
}

// Moves what can move without waiting. False if the pair ended with an
// error (both sides are closed then, reset where the other side was).
bool RelayStep(RelayPair& r) {
  const int conn = r.conn, tcp = r.tcp;
  if (!r.conn_eof && r.up_len == 0) {
    iovec iov{r.up, kRelayBuffer};
    ssize_t n = ManagedRecv(conn, &iov, 1, MSG_DONTWAIT, nullptr);
    if (n > 0) {
      r.up_off = 0;
      r.up_len = static_cast<size_t>(n);
    } else if (n == 0) {
      r.conn_eof = true;
      DOORWAY_REAL(shutdown)(tcp, SHUT_WR);
    } else if (n != -EAGAIN && n != -EINTR) {
      ResetKernel(tcp);
      Close(conn);
      return false;
    }
  }
  if (r.up_len > 0) {
    ssize_t w = DOORWAY_REAL(send)(tcp, r.up + r.up_off, r.up_len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w > 0) {
      r.up_off += static_cast<size_t>(w);
      r.up_len -= static_cast<size_t>(w);
    } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
      ResetConnection(conn);  // the program is gone: the peer's writes fail
      DOORWAY_REAL(close)(tcp);
      return false;
    }
  }
  if (!r.tcp_eof && r.down_len == 0) {
    ssize_t n = DOORWAY_REAL(recv)(tcp, r.down, kRelayBuffer, MSG_DONTWAIT);
    if (n > 0) {
      r.down_off = 0;
      r.down_len = static_cast<size_t>(n);
    } else if (n == 0) {
      r.tcp_eof = true;
      ManagedShutdown(conn, SHUT_WR);
    } else if (errno != EAGAIN && errno != EINTR) {
      ResetConnection(conn);
      DOORWAY_REAL(close)(tcp);
      return false;
    }
  }
  if (r.down_len > 0) {
    iovec iov{r.down + r.down_off, r.down_len};
    ssize_t w = ManagedSend(conn, &iov, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w > 0) {
      r.down_off += static_cast<size_t>(w);
      r.down_len -= static_cast<size_t>(w);
    } else if (w < 0 && w != -EAGAIN && w != -EINTR) {
      ResetKernel(tcp);
      Close(conn);
      return false;
    }
  }
  return true;
}

void SetNonblocking(int fd) {
  int fl = DOORWAY_REAL(fcntl)(fd, F_GETFL);
  DOORWAY_REAL(fcntl)(fd, F_SETFL, (fl < 0 ? 0 : fl) | O_NONBLOCK);
}

}  // namespace

int RelayLoop(int conn, int tcp) {
  static char up[kRelayBuffer], down[kRelayBuffer];
  RelayPair r;
  r.conn = conn;
  r.tcp = tcp;
  r.up = up;
  r.down = down;
  SetNonblocking(tcp);
  for (;;) {
    pollfd p[2];
    if (!RelayEvents(r, p)) break;  // both directions finished
    int n = EnginePoll(p, 2, -1, nullptr);
    if (n < 0 && n != -EINTR) break;
    if (!RelayStep(r)) return 1;
  }
  Close(conn);
  DOORWAY_REAL(close)(tcp);
  return 0;
}

// ---------------------------------------------------------------- the relay server

namespace {

// Takes one connection from ctl and answers 'k' (relayed from now on) or
// 'n'. False if ctl hung up.
bool AdoptFromSender(int ctl, RelayPair** pairs, int* npairs, int* cap) {
  Handover h{};
  iovec iov{&h, sizeof(h)};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(3 * sizeof(int))] = {};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = cbuf;
  m.msg_controllen = sizeof(cbuf);
  ssize_t n = DOORWAY_REAL(recvmsg)(ctl, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n == 0) return false;
  if (n < 0) return errno == EAGAIN || errno == EINTR;
  int fds[3] = {-1, -1, -1};
  int nfds = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k && nfds < 3; ++i) memcpy(&fds[nfds++], CMSG_DATA(c) + i * 4, 4);
  }
  bool ok = n == static_cast<ssize_t>(sizeof(h)) && nfds == 3 && (h.role == 0 || h.role == 1);
  transport::Segment seg;
  ok = ok && transport::Segment::AttachAt(fds[1], h.offset, &seg) == 0;
  Ref obj = ok ? fdtable::Make<Connection>() : Ref();
  if (ok && *npairs == *cap) {
    int ncap = *cap == 0 ? 16 : *cap * 2;
    auto* grown = new (std::nothrow) RelayPair[ncap];
    if (grown != nullptr) {
      for (int i = 0; i < *npairs; ++i) grown[i] = (*pairs)[i];
      delete[] * pairs;
      *pairs = grown;
      *cap = ncap;
    }
  }
  char* bufs = ok && *npairs < *cap ? new (std::nothrow) char[2 * kRelayBuffer] : nullptr;
  if (!obj || bufs == nullptr) {
    // Not taken: the sender keeps the connection (our copies go; its own
    // Unix socket keeps the peer from seeing a hang-up).
    delete[] bufs;
    for (int i = 0; i < nfds; ++i) {
      if (i == 1 && seg.valid()) continue;  // the segment owns it now
      DOORWAY_REAL(close)(fds[i]);
    }
    (void)DOORWAY_REAL(send)(ctl, "n", 1, MSG_NOSIGNAL);
    return true;
  }
  Connection& c = *obj.As<Connection>();
  InitInheritedConnection(c, std::move(seg), static_cast<transport::Role>(h.role), h.local, h.peer,
                          h.shared != 0, fds[0]);
  OnFdAttached(obj);
  GlobalTable().Install(fds[0], std::move(obj), nullptr, kTagConnection).Reset();
  RelayPair& r = (*pairs)[(*npairs)++];
  r = RelayPair{};
  r.conn = fds[0];
  r.tcp = fds[2];
  r.up = bufs;
  r.down = bufs + kRelayBuffer;
  SetNonblocking(r.tcp);
  (void)DOORWAY_REAL(send)(ctl, "k", 1, MSG_NOSIGNAL);
  return true;
}

}  // namespace

int RelayServe(int ctl) {
  RelayPair* pairs = nullptr;
  int npairs = 0, cap = 0;
  bool ctl_open = true;
  pollfd* pfd = nullptr;
  int pfd_cap = 0;
  for (;;) {
    // Finished pairs go; the rest are watched.
    for (int i = 0; i < npairs;) {
      pollfd two[2];
      if (RelayEvents(pairs[i], two)) {
        ++i;
        continue;
      }
      Close(pairs[i].conn);
      DOORWAY_REAL(close)(pairs[i].tcp);
      delete[] pairs[i].up;
      pairs[i] = pairs[--npairs];
    }
    if (!ctl_open && npairs == 0) break;
    if (pfd_cap < 2 * npairs + 1) {
      delete[] pfd;
      pfd_cap = 2 * cap + 1;
      pfd = new (std::nothrow) pollfd[pfd_cap];
      if (pfd == nullptr) break;
    }
    int n = 0;
    if (ctl_open) pfd[n++] = {ctl, POLLIN, 0};
    for (int i = 0; i < npairs; ++i) {
      RelayEvents(pairs[i], pfd + n);
      n += 2;
    }
    int r = EnginePoll(pfd, static_cast<nfds_t>(n), -1, nullptr);
    if (r < 0 && r != -EINTR) break;
    if (ctl_open && pfd[0].revents != 0 && !AdoptFromSender(ctl, &pairs, &npairs, &cap)) {
      ctl_open = false;
      DOORWAY_REAL(close)(ctl);
    }
    for (int i = 0; i < npairs;) {
      if (RelayStep(pairs[i])) {
        ++i;
        continue;
      }
      delete[] pairs[i].up;  // both sides closed by RelayStep
      pairs[i] = pairs[--npairs];
    }
  }
  return 0;
}

}  // namespace doorway::runtime

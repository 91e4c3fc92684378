// Accelerated connections across an exec into a program that will not load
// doorway (DESIGN §9, issue 6).
//
// An accelerated connection's fd is the door's Unix socket; its bytes are in
// shared-memory rings that only doorway reads. A program without doorway (a
// static binary, a set-uid one, an environment without LD_PRELOAD) would see
// a socket that never delivers the peer's bytes, and the peer would wait
// forever. So before such an exec, each accelerated connection that survives
// it is handed to a relay process, and its fd number becomes a kernel TCP
// socket (loopback) connected to the relay: the new program reads and writes
// an ordinary TCP socket; the relay copies between it and the rings, passes
// on half-closes, and turns a reset on either side into a reset on the
// other; it exits when both directions are finished. Slower than acceleration,
// but the program works and the peer never hangs.
//
// The relay is a double-forked process (reparented to init, so the new
// program never sees an unexpected child) that execs `doorway-relay` from
// the directory of libdoorway.so under the preload, so that it does not keep
// the old program's memory alive; without that binary (linked-in mode), the
// forked process relays itself.
#ifndef DOORWAY_RUNTIME_RELAY_H_
#define DOORWAY_RUNTIME_RELAY_H_

#include <fcntl.h>

#include "runtime/endpoint.h"

namespace doorway::runtime {

// What an exec call names: a path (searched in PATH if `search` and it has
// no slash), relative to dirfd, or an open fd (fexecve, execveat with an
// empty path).
struct ExecTarget {
  const char* path = nullptr;
  bool search = false;
  int dirfd = AT_FDCWD;
  int fd = -1;
};

// Whether the program that exec of `target` with envp starts will load
// doorway: LD_PRELOAD in envp names libdoorway, and the image (or the
// interpreter of a #! script) is a dynamically linked ELF file that the
// kernel does not run in secure mode (set-uid, set-gid, file capabilities).
// When in doubt (unreadable file): false.
bool WillLoadDoorway(const ExecTarget& target, char* const* envp);

// Replaces the accelerated connection at fd by a kernel TCP socket relayed
// to it by a new relay process. Returns 0, or -errno (fd unchanged).
// Also before an accelerated connection is sent to another process with
// SCM_RIGHTS (runtime/pass.h). The kernel socket's getpeername is the
// connection's peer when that address is free to bind (a server's
// connection: the client's), its getsockname the local address with
// another port.
// purpose: for the debug log ("for exec").
int RelayConnection(int fd, const char* purpose = "for exec");

// Hands the accelerated connection at fd to a new relay process that
// connects a kernel TCP socket to dest (a listener of this host) and relays
// between them: the connection then waits in that listener's backlog as a
// kernel TCP connection from the client's address. fd stays an accelerated
// connection that the caller closes (it no longer shuts the connection
// down). Returns 0, or -errno (nothing changed).
int RelayConnectionTo(int fd, const Endpoint& dest);

// The relay loop: copies between the accelerated connection at conn_fd and
// the kernel socket tcp_fd until both directions are finished. Returns the
// process exit status to use.
int RelayLoop(int conn_fd, int tcp_fd);

// The same for many connections, in one process per program (the relay
// server): RelayConnectionShared hands each over with its fds on the
// control socket ctl (SOCK_SEQPACKET), and gets 'k' once the server relays
// it ('n': not taken). The server exits when ctl hangs up (the program
// exited, or exec'd: the socket is close-on-exec) and its last connection
// is finished. Returns the exit status.
int RelayServe(int ctl);

// RelayConnection through this process's relay server (started by the
// first call, again after fork in the child): no fork per connection. The
// server's handover costs a round trip on its control socket. -errno if
// the server did not take the connection (fd unchanged; -EBUSY: another
// thread is handing one over): the caller then uses RelayConnection.
int RelayConnectionShared(int fd);

// The control socket of this process's relay server (for close_range and
// closefrom to leave alone), or -1.
int RelayServerFd();

}  // namespace doorway::runtime

#endif  // DOORWAY_RUNTIME_RELAY_H_

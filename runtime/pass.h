// Passing accelerated sockets to another process with SCM_RIGHTS.
//
// An accelerated connection's fd is the door's Unix socket, and its bytes
// are in rings only this process's doorway knows of; an accelerated
// listener's fd is an epoll fd. Sent as they are, the receiver would get a
// socket that never delivers the peer's bytes, or an epoll fd where it
// expects a listener, and the sender's close would end the connection.
// So before a sendmsg/sendmmsg whose SCM_RIGHTS carry such an fd, doorway
// gives it back to the kernel:
//   connection  handed to the process's relay server (relay.h
//               RelayConnectionShared; a relay of its own if that fails):
//               the fd number becomes a kernel TCP socket relayed to the
//               rings, so both processes share one kernel socket, which
//               stays open until the last of them closes it. That
//               connection then runs below kernel TCP speed (two loopback
//               hops and the relay's copy); the handover costs ~150 µs.
//   listener    UnaccelerateListener (accel.h): the fd number becomes the
//               kernel listener; the door refuses new clients (they use
//               TCP) and the door connections already made are relayed
//               into the kernel listener's backlog, so none is lost.
// The kernel passes descriptors only over Unix sockets (TCP ignores
// SCM_RIGHTS, and so does an accelerated connection): other sockets change
// nothing.
#ifndef DOORWAY_RUNTIME_PASS_H_
#define DOORWAY_RUNTIME_PASS_H_

#include <sys/socket.h>

namespace doorway::runtime {

// Converts the accelerated fds in msg's SCM_RIGHTS, if sock may pass them.
// Returns 0, or -errno if one could not be converted (the send must not
// happen: the receiver would get a socket that does not work).
int PrepareRights(int sock, const msghdr* msg);

// sendmsg/sendmmsg on a socket that is not accelerated, with msg_control.
ssize_t SendmsgWithRights(int sock, const msghdr* msg, int flags);
int SendmmsgWithRights(int sock, mmsghdr* msgs, unsigned n, int flags);

}  // namespace doorway::runtime

#endif  // DOORWAY_RUNTIME_PASS_H_

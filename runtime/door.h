// Doors: the Unix-domain rendezvous beside each accelerated TCP listener
// (DESIGN §4).
//
// A listener on address A, port P opens a SOCK_SEQPACKET listener named
// "<door dir>/tcp4-A-P" (or tcp6-[A]-P); a dual-stack listener on [::] also
// opens tcp4-0.0.0.0-P. A client connecting to A:P tries the door of A, then
// the wildcard door of A's family. The door directory is DOORWAY_DIR or
// /tmp/doorway-<uid>; it is trusted only if it is a real directory (not a
// symlink) owned by us or an allowed uid and not writable by others, and a
// door only if it is a socket owned by an allowed uid. After connecting, the
// kernel's SO_PEERCRED must name an allowed uid too. A door whose listener
// died refuses connections (ECONNREFUSED): clients skip it, and the next
// listener on the same address removes it.
#ifndef DOORWAY_RUNTIME_DOOR_H_
#define DOORWAY_RUNTIME_DOOR_H_

#include <sys/types.h>

#include <cstddef>

#include "runtime/endpoint.h"

namespace doorway::runtime {

inline constexpr std::size_t kDoorPathMax = 108;  // sizeof(sockaddr_un::sun_path)

// Our uid, or one listed in DOORWAY_ALLOW_UIDS.
bool UidAllowed(uid_t uid);
// Our effective uid as of the runtime's start (cached: no system call).
bool IsOwnUid(uid_t uid);

// Fills out with the trusted door directory, creating it (mode 0700) if
// needed. Returns 0 or -errno (-EPERM: exists but is not trustworthy).
// Clients rely on an earlier successful check; listeners check every time.
int DoorDirectory(char* out, std::size_t size, bool for_listener);

// Server side: binds and listens on the door for ep. Returns the door fd
// (non-blocking, close-on-exec) and its path, or -errno: -EADDRINUSE if a
// live door already has that name (another process listens with
// SO_REUSEPORT), -ENAMETOOLONG, -EPERM (untrusted directory).
int OpenDoor(const Endpoint& ep, char* path, std::size_t size);

// Client side, in two steps so that a client can prepare its side of the
// connection between them (the server wakes when the door connects, and
// should find the Hello already there):
// FindDoors lists the doors that may serve dest, best first (those whose
// file looks trustworthy; nothing is connected yet). Returns how many.
struct DoorCandidates {
  char path[2][kDoorPathMax];
  uid_t owner[2];  // the door file's owner
  // The door file's identity (st_dev, st_ino mixed): names the listener for
  // the segment arenas (a client's connections to one listener share them).
  std::uint64_t id[2];
  int count = 0;
  // The wildcard door is looked at (one lstat, ~2 µs) only if the
  // address's own door is missing, or by EnterDoor if that one fails.
  bool later = false;
  Endpoint later_ep;
};
int FindDoors(const Endpoint& dest, DoorCandidates* out);
// The wake FIFO beside a door (runtime/reuse.h): "wake2.<door's name>" in
// the door's directory ("wake2": fixed-size records; "wake." carried single
// bytes, which must not mix with them). False if it does not fit in size.
bool WakePath(const char* door_path, char* out, std::size_t size);
// EnterDoor connects to the first candidate that answers and whose listener
// (SO_PEERCRED) is an allowed uid, looking at the wildcard door only then if
// FindDoors left it for later: a connected Unix socket (non-blocking,
// close-on-exec), or -ENOENT. The listener's uid goes to *peer_uid if given.
int EnterDoor(DoorCandidates& doors, uid_t* peer_uid, int* index = nullptr);

// Both steps at once: connects to a door that can serve dest. Returns a connected
// Unix socket (non-blocking, close-on-exec) whose peer is an allowed uid, or
// -ENOENT when no usable door exists (the caller then uses TCP). The
// listener's uid (SO_PEERCRED) goes to *peer_uid if given.
int KnockDoor(const Endpoint& dest, uid_t* peer_uid = nullptr);

// Whether a destination is worth looking for a door at all: a loopback or
// local interface address, or any address when DOORWAY_DIR is set.
bool MayHaveDoor(const Endpoint& dest);

}  // namespace doorway::runtime

#endif  // DOORWAY_RUNTIME_DOOR_H_

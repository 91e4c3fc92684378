#include "runtime/door.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "runtime/config.h"
#include "runtime/log.h"
#include "runtime/real.h"

namespace doorway::runtime {

namespace {

bool MakeAddr(const char* path, sockaddr_un* sun, socklen_t* len) {
  size_t n = strlen(path);
  if (n >= sizeof(sun->sun_path)) return false;
  memset(sun, 0, sizeof(*sun));
  sun->sun_family = AF_UNIX;
  memcpy(sun->sun_path, path, n + 1);
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n + 1);
  return true;
}

int DoorPath(const Endpoint& ep, char* out, size_t size, bool for_listener) {
  char dir[kDoorPathMax];
  int rc = DoorDirectory(dir, sizeof(dir), for_listener);
  if (rc != 0) return rc;
  char name[80];
  if (!DoorName(ep, name, sizeof(name))) return -ENAMETOOLONG;
  int n = snprintf(out, size, "%s/%s", dir, name);
  if (n < 0 || static_cast<size_t>(n) >= size) return -ENAMETOOLONG;
  return 0;
}

// Connects a fresh SOCK_SEQPACKET socket to path. Returns the fd or -errno.
int ConnectUnix(const char* path) {
  sockaddr_un sun;
  socklen_t len;
  if (!MakeAddr(path, &sun, &len)) return -ENAMETOOLONG;
  int fd = DOORWAY_REAL(socket)(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (DOORWAY_REAL(connect)(fd, reinterpret_cast<sockaddr*>(&sun), len) != 0) {
    int e = errno;
    DOORWAY_REAL(close)(fd);
    return -e;
  }
  return fd;
}

}  // namespace

namespace {
// geteuid() costs a system call; doorway does not follow a process that
// changes its uid after start (its doors would be another user's anyway).
uid_t Euid() {
  static const uid_t euid = geteuid();
  return euid;
}
}  // namespace

bool UidAllowed(uid_t uid) {
  if (uid == Euid()) return true;
  const Config& c = GetConfig();
  for (int i = 0; i < c.allowed_uid_count; ++i) {
    if (c.allowed_uids[i] == uid) return true;
  }
  return false;
}

int DoorDirectory(char* out, size_t size, bool for_listener) {
  const char* configured = GetConfig().door_dir;
  int n = configured != nullptr
              ? snprintf(out, size, "%s", configured)
              : snprintf(out, size, "/tmp/doorway-%u", static_cast<unsigned>(Euid()));
  if (n < 0 || static_cast<size_t>(n) >= size) return -ENAMETOOLONG;
  // Checked once per process while it stays good: a directory that was
  // trustworthy stays so unless its owner (us) changes it. Listeners, which
  // create it, check every time (it may have been removed meanwhile).
  static std::atomic<bool> trusted{false};
  if (trusted.load(std::memory_order_relaxed) && !for_listener) return 0;
  if (mkdir(out, 0700) != 0 && errno != EEXIST) return -errno;
  struct stat st;
  if (lstat(out, &st) != 0) return -errno;
  // A squatter could have made the directory (or a symlink to theirs)
  // first: use it only if it is ours (or an allowed uid's) and nobody else
  // can plant doors in it.
  if (!S_ISDIR(st.st_mode) || !UidAllowed(st.st_uid) || (st.st_mode & 0022) != 0) {
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true)) {
      RawLog(LogLevel::kWarn,
             "door directory %s is not trustworthy (owner %u, mode %o); "
             "connections will use plain TCP",
             out, static_cast<unsigned>(st.st_uid), static_cast<unsigned>(st.st_mode & 07777));
    }
    return -EPERM;
  }
  trusted.store(true, std::memory_order_relaxed);
  return 0;
}

int OpenDoor(const Endpoint& ep, char* path, size_t size) {
  int rc = DoorPath(ep, path, size, true);
  if (rc != 0) return rc;
  sockaddr_un sun;
  socklen_t len;
  if (!MakeAddr(path, &sun, &len)) return -ENAMETOOLONG;
  int fd = DOORWAY_REAL(socket)(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  for (int attempt = 0;; ++attempt) {
    if (DOORWAY_REAL(bind)(fd, reinterpret_cast<sockaddr*>(&sun), len) == 0) break;
    int e = errno;
    if (e != EADDRINUSE || attempt > 0) {
      DOORWAY_REAL(close)(fd);
      return -e;
    }
    // Someone's door is there. If it still answers, another listener owns
    // this address (SO_REUSEPORT in another process): leave it. If it
    // refuses, its listener is gone: remove the stale door and retry.
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISSOCK(st.st_mode)) {
      DOORWAY_REAL(close)(fd);
      return -EADDRINUSE;
    }
    int probe = ConnectUnix(path);
    if (probe >= 0) {
      DOORWAY_REAL(close)(probe);
      DOORWAY_REAL(close)(fd);
      return -EADDRINUSE;
    }
    if (probe != -ECONNREFUSED) {
      DOORWAY_REAL(close)(fd);
      return probe;
    }
    DOORWAY_LOG(kDebug, "removing stale door %s", path);
    unlink(path);
  }
  if (DOORWAY_REAL(listen)(fd, SOMAXCONN) != 0) {
    int e = errno;
    unlink(path);
    DOORWAY_REAL(close)(fd);
    return -e;
  }
  return fd;
}

bool MayHaveDoor(const Endpoint& dest) {
  if (dest.port == 0) return false;
  return IsLoopback(dest) || IsLocalInterfaceAddress(dest) || GetConfig().door_dir != nullptr;
}

bool IsOwnUid(uid_t uid) { return uid == Euid(); }

namespace {
// Whether the door of ep exists and looks trustworthy (a socket owned by an
// allowed uid); its path and owner go to path and *owner.
bool LookAtDoor(const Endpoint& ep, char* path, uid_t* owner, std::uint64_t* id) {
  if (DoorPath(ep, path, kDoorPathMax, false) != 0) return false;
  struct stat st;
  if (lstat(path, &st) != 0) return false;
  if (!S_ISSOCK(st.st_mode) || !UidAllowed(st.st_uid)) {
    DOORWAY_LOG(kDebug, "ignoring untrusted door %s", path);
    return false;
  }
  *owner = st.st_uid;
  *id = static_cast<std::uint64_t>(st.st_ino) ^ (static_cast<std::uint64_t>(st.st_dev) << 40);
  return true;
}
}  // namespace

int FindDoors(const Endpoint& in, DoorCandidates* out) {
  Endpoint dest = Unmapped(in);
  Endpoint candidates[2];
  int n = 0;
  candidates[n++] = dest;
  if (IsLoopback(dest) || IsLocalInterfaceAddress(dest)) {
    Endpoint any;
    any.family = dest.family;
    any.port = dest.port;
    if (!IsWildcard(dest)) candidates[n++] = any;
  }
  out->count = 0;
  out->later = false;
  for (int i = 0; i < n; ++i) {
    if (out->count > 0) {
      out->later = true;
      out->later_ep = candidates[i];
      break;
    }
    if (LookAtDoor(candidates[i], out->path[out->count], &out->owner[out->count],
                   &out->id[out->count])) {
      ++out->count;
    }
  }
  return out->count;
}

bool WakePath(const char* door_path, char* out, size_t size) {
  const char* slash = strrchr(door_path, '/');
  if (slash == nullptr) return false;
  int n = snprintf(out, size, "%.*swake2.%s", static_cast<int>(slash + 1 - door_path), door_path,
                   slash + 1);
  return n > 0 && static_cast<size_t>(n) < size;
}

int EnterDoor(DoorCandidates& doors, uid_t* peer_uid, int* index) {
  for (int i = 0; i < doors.count || doors.later; ++i) {
    if (i == doors.count) {
      doors.later = false;
      if (doors.count == 2 || !LookAtDoor(doors.later_ep, doors.path[doors.count],
                                          &doors.owner[doors.count], &doors.id[doors.count])) {
        break;
      }
      ++doors.count;
    }
    const char* path = doors.path[i];
    int fd = ConnectUnix(path);
    if (fd < 0) {
      // ECONNREFUSED: stale (left to the next listener to remove); EAGAIN:
      // the door's backlog is full; either way TCP will do.
      continue;
    }
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (DOORWAY_REAL(getsockopt)(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
        !UidAllowed(cred.uid)) {
      DOORWAY_LOG(kDebug, "door %s is served by uid %u: not accelerating", path,
                  static_cast<unsigned>(cred.uid));
      DOORWAY_REAL(close)(fd);
      continue;
    }
    if (peer_uid != nullptr) *peer_uid = cred.uid;
    if (index != nullptr) *index = i;
    return fd;
  }
  return -ENOENT;
}

int KnockDoor(const Endpoint& dest, uid_t* peer_uid) {
  DoorCandidates doors;
  if (FindDoors(dest, &doors) == 0) return -ENOENT;
  return EnterDoor(doors, peer_uid);
}

}  // namespace doorway::runtime

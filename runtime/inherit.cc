#include "runtime/inherit.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "fdtable/fdtable.h"
#include "runtime/accel.h"
#include "runtime/log.h"
#include "runtime/real.h"
#include "runtime/relay.h"
#include "runtime/sockets.h"

extern "C" char** environ;

namespace doorway::runtime {

namespace {

using fdtable::GlobalTable;
using fdtable::Ref;

constexpr char kVar[] = "DOORWAY_INHERIT=";
constexpr int kMaxInherited = 64;

// One connection, as text: fd,memfd,offset,role,shared,<local hex>,<peer hex>;
constexpr size_t kEntryMax = 16 + 16 + 21 + 4 + 4 + 2 * 2 * sizeof(Endpoint) + 8;

void Hex(const void* p, size_t n, char* out) {
  static constexpr char kDigits[] = "0123456789abcdef";
  const unsigned char* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kDigits[b[i] >> 4];
    out[2 * i + 1] = kDigits[b[i] & 15];
  }
  out[2 * n] = '\0';
}

bool Unhex(const char* s, size_t n, void* p) {
  unsigned char* b = static_cast<unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) {
    int v = 0;
    for (int k = 0; k < 2; ++k) {
      char c = s[2 * i + k];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) return false;
      v = v * 16 + d;
    }
    b[i] = static_cast<unsigned char>(v);
  }
  return true;
}

}  // namespace

namespace {

// Hands every accelerated connection that would survive the exec to a
// relay; its other fd numbers (dup) follow the first.
void RelaySurvivors() {
  struct Seen {
    const Connection* c;
    int fd;
    bool survives;
  } seen[kMaxInherited];
  int n = 0;
  GlobalTable().ForEach([&](int fd, const Ref& r) {
    const Connection* c = r.As<Connection>();
    if (c == nullptr || n == kMaxInherited) return;
    int fdflags = DOORWAY_REAL(fcntl)(fd, F_GETFD);
    seen[n++] = Seen{c, fd, fdflags >= 0 && (fdflags & FD_CLOEXEC) == 0};
  });
  for (int i = 0; i < n; ++i) {
    bool survives = false, first = true;
    for (int j = 0; j < n; ++j) {
      if (seen[j].c != seen[i].c) continue;
      survives = survives || seen[j].survives;
      if (j < i) first = false;
    }
    if (!survives || !first) continue;
    if (int rc = RelayConnection(seen[i].fd); rc != 0) {
      DOORWAY_LOG(kWarn, "fd %d: no relay for the exec (%s)", seen[i].fd, strerror(-rc));
      continue;
    }
    for (int j = i + 1; j < n; ++j) {
      if (seen[j].c != seen[i].c) continue;
      int fdflags = DOORWAY_REAL(fcntl)(seen[j].fd, F_GETFD);
      Dup3(seen[i].fd, seen[j].fd, (fdflags & FD_CLOEXEC) ? O_CLOEXEC : 0);
    }
  }
}

}  // namespace

ExecEnv::ExecEnv(char* const* envp, const ExecTarget* target) : envp_(envp) {
  bool any = false;
  GlobalTable().ForEach([&](int, const Ref& r) { any = any || r.As<Connection>() != nullptr; });
  if (!any) return;
  if (target != nullptr && !WillLoadDoorway(*target, envp)) {
    RelaySurvivors();
    return;
  }
  struct Entry {
    int fd, memfd;
    unsigned long long offset;  // of the segment in memfd (an arena slot)
    int role, shared;
    Endpoint local, peer;
  } entries[kMaxInherited];
  int n = 0;
  GlobalTable().ForEach([&](int fd, const Ref& r) {
    const Connection* c = r.As<Connection>();
    if (c == nullptr || n == kMaxInherited) return;
    int fdflags = DOORWAY_REAL(fcntl)(fd, F_GETFD);
    if (fdflags < 0 || (fdflags & FD_CLOEXEC)) return;
    // A copy of the segment's memfd that survives the exec.
    int copy = DOORWAY_REAL(fcntl)(c->seg.fd(), F_DUPFD, 0);
    if (copy < 0) return;
    copies_[ncopies_++] = copy;
    entries[n++] = Entry{fd,
                         copy,
                         c->seg.offset(),
                         static_cast<int>(c->role),
                         c->shared.load(std::memory_order_relaxed) ? 1 : 0,
                         c->local,
                         c->peer};
  });
  if (n == 0) return;
  size_t count = 0;
  size_t bytes = sizeof(kVar) + static_cast<size_t>(n) * kEntryMax;
  for (char* const* e = envp; e != nullptr && *e != nullptr; ++e) {
    ++count;
    bytes += 0;
  }
  mem_size_ = (count + 2) * sizeof(char*) + bytes;
  void* mem = mmap(nullptr, mem_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    mem_size_ = 0;
    return;  // the exec proceeds; the new program sees plain sockets
  }
  mem_ = mem;
  char** out = static_cast<char**>(mem);
  char* text = reinterpret_cast<char*>(out + count + 2);
  size_t k = 0;
  for (char* const* e = envp; e != nullptr && *e != nullptr; ++e) {
    if (strncmp(*e, kVar, sizeof(kVar) - 1) != 0) out[k++] = *e;
  }
  char* p = text;
  p += snprintf(p, bytes, "%s", kVar);
  for (int i = 0; i < n; ++i) {
    char local[2 * sizeof(Endpoint) + 1], peer[2 * sizeof(Endpoint) + 1];
    Hex(&entries[i].local, sizeof(Endpoint), local);
    Hex(&entries[i].peer, sizeof(Endpoint), peer);
    p += snprintf(p, bytes - static_cast<size_t>(p - text), "%d,%d,%llu,%d,%d,%s,%s;",
                  entries[i].fd, entries[i].memfd, entries[i].offset, entries[i].role,
                  entries[i].shared, local, peer);
  }
  out[k++] = text;
  out[k] = nullptr;
  envp_ = out;
}

void ExecEnv::Release(bool close_copies) {
  if (close_copies) {
    for (int i = 0; i < ncopies_; ++i) DOORWAY_REAL(close)(copies_[i]);
  }
  ncopies_ = 0;
  if (mem_ != nullptr) munmap(mem_, mem_size_);
  mem_ = nullptr;
}

int AdoptInheritedConnections() {
  const char* v = getenv("DOORWAY_INHERIT");
  if (v == nullptr) return 0;
  int adopted = 0;
  const char* p = v;
  while (*p != '\0') {
    int fd = -1, memfd = -1, role = -1, shared = 0, used = 0;
    unsigned long long offset = 0;
    char local[2 * sizeof(Endpoint) + 1] = {}, peer[2 * sizeof(Endpoint) + 1] = {};
    if (sscanf(p, "%d,%d,%llu,%d,%d,%48[0-9a-f],%48[0-9a-f];%n", &fd, &memfd, &offset, &role,
               &shared, local, peer, &used) < 7 ||
        used == 0) {
      RawLog(LogLevel::kWarn, "DOORWAY_INHERIT is malformed; inherited connections not adopted");
      break;
    }
    p += used;
    Endpoint l, r;
    struct stat st;
    transport::Segment seg;
    bool ok = (role == 0 || role == 1) && Unhex(local, sizeof(Endpoint), &l) &&
              Unhex(peer, sizeof(Endpoint), &r) && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) &&
              transport::Segment::AttachAt(memfd, offset, &seg) == 0;
    Ref obj = ok ? fdtable::Make<Connection>() : Ref();
    if (!obj) {
      if (memfd >= 0 && !seg.valid()) DOORWAY_REAL(close)(memfd);
      DOORWAY_LOG(kWarn, "fd %d: inherited connection could not be adopted", fd);
      continue;
    }
    Connection& c = *obj.As<Connection>();
    InitInheritedConnection(c, std::move(seg), static_cast<transport::Role>(role), l, r,
                            shared != 0, fd);
    OnFdAttached(obj);
    GlobalTable().Install(fd, std::move(obj), nullptr, kTagConnection).Reset();
    DOORWAY_LOG(kDebug, "fd %d: accelerated connection inherited across exec", fd);
    ++adopted;
  }
  unsetenv("DOORWAY_INHERIT");
  return adopted;
}

}  // namespace doorway::runtime

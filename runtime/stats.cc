#include "runtime/stats.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "runtime/accel.h"
#include "runtime/door.h"
#include "runtime/log.h"
#include "runtime/stats_format.h"

namespace doorway::runtime {

namespace {

using stats::ProcessHeader;
using stats::Slot;

enum FileState : int {
  kUnconfigured = 0,  // before Initialise: nothing is created
  kArmed = 1,         // created on first use
  kCreating = 2,
  kReady = 3,
  kOff = 4,     // DOORWAY_STATS=off, or creation failed
  kForked = 5,  // a fork child: counters in a private copy, published on first use
};

constinit std::atomic<int> g_state{kUnconfigured};
constinit std::atomic<ProcessHeader*> g_header{nullptr};
constinit bool g_summary = false;
// StatsNoteAccelerated's counts (not in the file: only the exit summary
// prints them; a fork child starts again at zero, as its file does).
constinit std::atomic<std::uint64_t> g_accel_connects{0};
constinit std::atomic<std::uint64_t> g_accel_accepts{0};
// The file's name, for removal at exit, and the pid that may remove it
// (a fork child that could not make its own file must not remove its
// parent's).
constinit char g_path[kDoorPathMax + 32] = {};
constinit pid_t g_path_owner = 0;

class ErrnoSaver {
 public:
  ErrnoSaver() : saved_(errno) {}
  ~ErrnoSaver() { errno = saved_; }
  ErrnoSaver(const ErrnoSaver&) = delete;
  ErrnoSaver& operator=(const ErrnoSaver&) = delete;

 private:
  int saved_;
};

std::int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

// Appends the decimal form of v to out (no snprintf: this runs in fork
// children of multithreaded programs).
char* AppendUnsigned(char* out, char* end, unsigned long v) {
  char digits[24];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0 && out < end) *out++ = digits[--n];
  return out;
}

char* AppendString(char* out, char* end, const char* s) {
  while (*s != '\0' && out < end) *out++ = *s++;
  return out;
}

// "<dir>/<prefix><pid><suffix>"; false if it does not fit.
bool MakePath(char* out, std::size_t size, const char* dir, const char* prefix, pid_t pid,
              const char* suffix) {
  char* p = out;
  char* end = out + size - 1;
  p = AppendString(p, end, dir);
  p = AppendString(p, end, "/");
  p = AppendString(p, end, prefix);
  p = AppendUnsigned(p, end, static_cast<unsigned long>(pid));
  p = AppendString(p, end, suffix);
  if (p >= end) return false;
  *p = '\0';
  return true;
}

// Field 22 of /proc/self/stat (the start time in clock ticks), 0 if unknown.
std::uint64_t StartTicks() {
  int fd = static_cast<int>(
      syscall(SYS_openat, AT_FDCWD, "/proc/self/stat", O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd < 0) return 0;
  char buf[1024];
  long n = syscall(SYS_read, fd, buf, sizeof(buf) - 1);
  syscall(SYS_close, fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  // The command (field 2) is in parentheses and may contain anything: count
  // fields from the last ')'.
  const char* p = nullptr;
  for (long i = n - 1; i >= 0; --i) {
    if (buf[i] == ')') {
      p = buf + i + 1;
      break;
    }
  }
  if (p == nullptr) return 0;
  int field = 2;
  std::uint64_t v = 0;
  while (*p != '\0') {
    if (*p == ' ') {
      ++field;
      ++p;
      continue;
    }
    if (field == 22) {
      while (*p >= '0' && *p <= '9') v = v * 10 + static_cast<std::uint64_t>(*p++ - '0');
      return v;
    }
    ++p;
  }
  return 0;
}

// Opens "<dir>/.stats.<pid>.tmp" exclusively (never through a symlink) and
// sizes it. Returns the fd or -1; *tmp gets the name.
int CreateTemp(const char* dir, pid_t pid, char* tmp, std::size_t size) {
  if (!MakePath(tmp, size, dir, ".stats.", pid, ".tmp")) return -1;
  for (int attempt = 0; attempt < 2; ++attempt) {
    int fd = static_cast<int>(syscall(SYS_openat, AT_FDCWD, tmp,
                                      O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (fd >= 0) {
      if (syscall(SYS_ftruncate, fd, static_cast<long>(stats::kFileSize)) == 0) return fd;
      syscall(SYS_close, fd);
      unlink(tmp);
      return -1;
    }
    // A leftover of a process with our pid that died while creating its
    // file (the directory is ours: nobody else can have put it there).
    if (errno != EEXIST) return -1;
    unlink(tmp);
  }
  return -1;
}

// The inode in "pid:[4026531836]", the target of /proc/self/ns/pid; 0 if unknown.
std::uint64_t PidNamespace() {
  char buf[64];
  long n = syscall(SYS_readlinkat, AT_FDCWD, "/proc/self/ns/pid", buf, sizeof(buf) - 1);
  if (n <= 0) return 0;
  buf[n] = '\0';
  std::uint64_t v = 0;
  for (const char* p = buf; *p != '\0'; ++p) {
    if (*p >= '0' && *p <= '9') v = v * 10 + static_cast<std::uint64_t>(*p - '0');
  }
  return v;
}

void FillIdentity(ProcessHeader* h) {
  h->pid = static_cast<std::int32_t>(syscall(SYS_getpid));
  h->uid = static_cast<std::uint32_t>(geteuid());
  h->start_ticks = StartTicks();
  h->pid_namespace = PidNamespace();
  h->created_ns = MonotonicNs();
}

bool CreateFile() {
  char dir[kDoorPathMax];
  if (DoorDirectory(dir, sizeof(dir), true) != 0) return false;
  pid_t pid = static_cast<pid_t>(syscall(SYS_getpid));
  char tmp[sizeof(g_path)];
  char path[sizeof(g_path)];
  if (!MakePath(path, sizeof(path), dir, stats::kFilePrefix, pid, "")) return false;
  int fd = CreateTemp(dir, pid, tmp, sizeof(tmp));
  if (fd < 0) return false;
  void* base = mmap(nullptr, stats::kFileSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  syscall(SYS_close, fd);
  if (base == MAP_FAILED) {
    unlink(tmp);
    return false;
  }
  auto* h = static_cast<ProcessHeader*>(base);
  h->magic = stats::kMagic;
  h->version = stats::kVersion;
  h->header_size = sizeof(ProcessHeader);
  h->slot_size = sizeof(Slot);
  h->slot_count = stats::kSlots;
  FillIdentity(h);
  strncpy(h->command, program_invocation_short_name, sizeof(h->command) - 1);
  const Config& c = GetConfig();
  h->accelerate = c.accelerate ? 1 : 0;
  h->fallback = static_cast<std::uint8_t>(c.fallback);
  // The name appears only now, with the header complete; it replaces the
  // file of an earlier program of this pid (before an exec) or a stale one.
  if (rename(tmp, path) != 0) {
    unlink(tmp);
    munmap(base, stats::kFileSize);
    return false;
  }
  memcpy(g_path, path, sizeof(path));
  g_path_owner = pid;
  g_header.store(h, std::memory_order_release);
  return true;
}

void PublishForkCopy();

ProcessHeader* Header() {
  // Acquire pairs with the release stores of g_state below: a thread that
  // sees kReady sees the mapping and its header.
  int s = g_state.load(std::memory_order_acquire);
  if (s == kReady) return g_header.load(std::memory_order_relaxed);
  if (s != kArmed && s != kForked && s != kCreating) return nullptr;
  int expected = s == kCreating ? kArmed : s;
  if (g_state.compare_exchange_strong(expected, kCreating, std::memory_order_acq_rel)) {
    ErrnoSaver saver;
    if (s == kForked) {
      // The copy stays usable (unpublished) if the file cannot be made.
      PublishForkCopy();
      g_state.store(kReady, std::memory_order_release);
      return g_header.load(std::memory_order_relaxed);
    }
    bool ok = CreateFile();
    if (!ok) DOORWAY_LOG(kInfo, "no stats file (connections will not show in stat)");
    g_state.store(ok ? kReady : kOff, std::memory_order_release);
    return ok ? g_header.load(std::memory_order_relaxed) : nullptr;
  }
  // Another thread is creating it (tens of microseconds). Bounded: a signal
  // handler that interrupted the creator on this very thread must not wait
  // for it; its connection is then simply not shown.
  for (int i = 0; i < 1000 && g_state.load(std::memory_order_acquire) == kCreating; ++i) {
    sched_yield();
  }
  return g_state.load(std::memory_order_acquire) == kReady
             ? g_header.load(std::memory_order_relaxed)
             : nullptr;
}

std::uint32_t HighWater(const ProcessHeader* h) {
  std::uint32_t hw = h->high_water.load(std::memory_order_acquire);
  return hw < stats::kSlots ? hw : stats::kSlots;
}

bool TryClaim(Slot& s) {
  std::uint32_t expected = stats::kFree;
  if (s.state.load(std::memory_order_relaxed) != stats::kFree) return false;
  return s.state.compare_exchange_strong(expected, stats::kOpening, std::memory_order_acq_rel);
}

Slot* Claim(ProcessHeader* h) {
  Slot* slots = stats::Slots(h);
  std::uint32_t hw = HighWater(h);
  std::uint32_t start = h->hint.load(std::memory_order_relaxed);
  for (std::uint32_t i = 0; i < hw; ++i) {
    std::uint32_t idx = (start + i) % hw;
    if (TryClaim(slots[idx])) {
      h->hint.store(idx + 1, std::memory_order_relaxed);
      return &slots[idx];
    }
  }
  // Every used slot is taken: use a new one.
  for (;;) {
    std::uint32_t idx = h->high_water.load(std::memory_order_relaxed);
    if (idx >= stats::kSlots) return nullptr;
    if (h->high_water.compare_exchange_weak(idx, idx + 1, std::memory_order_acq_rel) &&
        TryClaim(slots[idx])) {
      return &slots[idx];
    }
  }
}

void ZeroCounters(transport::RingStats& s) {
  for (std::atomic<std::uint64_t>* c :
       {&s.bytes, &s.ops, &s.futex_wakes, &s.futex_waits, &s.spin_hits, &s.spin_misses,
        &s.corruptions, &s.doorbells}) {
    c->store(0, std::memory_order_relaxed);
  }
}

void CopyAddress(const Endpoint& ep, stats::Address* out) {
  out->family = ep.family;
  out->port = ep.port;
  memcpy(out->addr, ep.addr, sizeof(out->addr));
}

std::uint64_t Load(const std::atomic<std::uint64_t>& v) {
  return v.load(std::memory_order_relaxed);
}

// Both processes after a fork: their connections are now shared.
void MarkLiveShared(ProcessHeader* h) {
  Slot* slots = stats::Slots(h);
  std::uint32_t hw = HighWater(h);
  for (std::uint32_t i = 0; i < hw; ++i) {
    if (slots[i].state.load(std::memory_order_relaxed) != stats::kFree) slots[i].shared = 1;
  }
}

// A fork child must not write into its parent's file. Right after fork it
// swaps the mapping for a private copy at the same address (every RingStats
// pointer stays valid) and publishes the copy as its own file
// (PublishForkCopy): at once if it inherited live accelerated connections
// (a forking server's child must show up with the connection it serves),
// else the first time it opens an Internet socket or a connection, so that
// the usual fork+exec makes no file. Its counters restart at zero.
void ForkChild() {
  ProcessHeader* h = g_header.load(std::memory_order_relaxed);
  g_path_owner = 0;  // the inherited name is the parent's
  std::size_t used = sizeof(ProcessHeader) + std::size_t{HighWater(h)} * sizeof(Slot);
  void* copy =
      mmap(nullptr, stats::kFileSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  bool moved = false;
  if (copy != MAP_FAILED) {
    memcpy(copy, h, used);
    moved = syscall(SYS_mremap, copy, stats::kFileSize, stats::kFileSize,
                    MREMAP_MAYMOVE | MREMAP_FIXED, h) == reinterpret_cast<long>(h);
    if (!moved) munmap(copy, stats::kFileSize);
  }
  if (!moved) {
    // Fresh zero pages in place: slot states are lost (the child's
    // counters may then be mis-attributed), but the parent's are safe.
    if (mmap(h, stats::kFileSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
             -1, 0) != h) {
      g_state.store(kOff, std::memory_order_release);  // cannot happen: h was mapped
      return;
    }
    return;  // not worth publishing
  }
  h->opened.store(0, std::memory_order_relaxed);
  h->slots_full.store(0, std::memory_order_relaxed);
  h->closed.store(0, std::memory_order_relaxed);
  h->closed_tx_bytes.store(0, std::memory_order_relaxed);
  h->closed_tx_msgs.store(0, std::memory_order_relaxed);
  h->closed_rx_bytes.store(0, std::memory_order_relaxed);
  h->closed_rx_msgs.store(0, std::memory_order_relaxed);
  Slot* slots = stats::Slots(h);
  for (std::uint32_t i = 0; i < HighWater(h); ++i) {
    ZeroCounters(slots[i].tx);
    ZeroCounters(slots[i].rx);
  }
  MarkLiveShared(h);
  bool inherited = false;
  for (std::uint32_t i = 0; i < HighWater(h) && !inherited; ++i) {
    inherited = slots[i].state.load(std::memory_order_relaxed) == stats::kLive;
  }
  if (inherited) {
    PublishForkCopy();
    g_state.store(kReady, std::memory_order_release);
  } else {
    g_state.store(kForked, std::memory_order_release);
  }
}

// Makes the fork child's private copy its own file: written out, then
// mapped over the copy (MAP_FIXED, same address). Counts other threads add
// between the two are lost; nothing else is.
void PublishForkCopy() {
  ProcessHeader* h = g_header.load(std::memory_order_relaxed);
  pid_t pid = static_cast<pid_t>(syscall(SYS_getpid));
  char dir[kDoorPathMax];
  char tmp[sizeof(g_path)];
  char path[sizeof(g_path)];
  if (DoorDirectory(dir, sizeof(dir), true) != 0 ||
      !MakePath(path, sizeof(path), dir, stats::kFilePrefix, pid, "")) {
    return;
  }
  int fd = CreateTemp(dir, pid, tmp, sizeof(tmp));
  if (fd < 0) return;
  FillIdentity(h);
  std::size_t used = sizeof(ProcessHeader) + std::size_t{HighWater(h)} * sizeof(Slot);
  const char* p = reinterpret_cast<const char*>(h);
  std::size_t done = 0;
  while (done < used) {
    long n = syscall(SYS_write, fd, p + done, used - done);
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
  bool ok = done == used &&
            mmap(h, stats::kFileSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == h;
  syscall(SYS_close, fd);
  if (!ok || rename(tmp, path) != 0) {
    unlink(tmp);
    return;
  }
  memcpy(g_path, path, sizeof(path));
  g_path_owner = pid;
}

void PrintSummary(ProcessHeader* h) {
  std::uint64_t tx_bytes = Load(h->closed_tx_bytes), tx_msgs = Load(h->closed_tx_msgs);
  std::uint64_t rx_bytes = Load(h->closed_rx_bytes), rx_msgs = Load(h->closed_rx_msgs);
  unsigned live = 0;
  Slot* slots = stats::Slots(h);
  for (std::uint32_t i = 0; i < HighWater(h); ++i) {
    if (slots[i].state.load(std::memory_order_acquire) != stats::kLive) continue;
    ++live;
    tx_bytes += Load(slots[i].tx.bytes);
    tx_msgs += Load(slots[i].tx.ops);
    rx_bytes += Load(slots[i].rx.bytes);
    rx_msgs += Load(slots[i].rx.ops);
  }
  RawLog(LogLevel::kInfo,
         "stats: %llu accelerated connection(s) (%u still open at exit; %llu connect(s) and %llu "
         "accept(s) accelerated), sent %llu bytes in %llu writes, received %llu bytes in %llu "
         "reads%s",
         static_cast<unsigned long long>(Load(h->opened)), live,
         static_cast<unsigned long long>(Load(g_accel_connects)),
         static_cast<unsigned long long>(Load(g_accel_accepts)),
         static_cast<unsigned long long>(tx_bytes), static_cast<unsigned long long>(tx_msgs),
         static_cast<unsigned long long>(rx_bytes), static_cast<unsigned long long>(rx_msgs),
         Load(h->slots_full) != 0 ? " (some connections not counted: stats file full)" : "");
}

__attribute__((destructor)) void StatsAtExit() {
  ErrnoSaver saver;
  int s = g_state.load(std::memory_order_acquire);
  if (g_summary) {
    ProcessHeader* h =
        s == kReady || s == kForked ? g_header.load(std::memory_order_relaxed) : nullptr;
    // Only processes that used Internet sockets have a file: the shells
    // and tools around the program stay quiet.
    if (h != nullptr) PrintSummary(h);
  }
  if (s == kReady && g_path_owner != 0 && g_path_owner == syscall(SYS_getpid)) {
    unlink(g_path);
    g_path_owner = 0;
  }
}

}  // namespace

void StatsConfigure(const Config& config) {
  g_summary = config.stats == StatsMode::kExit;
  if (config.stats != StatsMode::kOff) {
    // A file under our pid is not ours: the program this process ran
    // before exec left it (its slots would linger if this one never uses a
    // socket), or a dead process whose pid we got. unlink never follows a
    // symlink; the name is simply gone until we publish ours.
    char dir[kDoorPathMax];
    char path[sizeof(g_path)];
    char* p = dir;
    char* end = dir + sizeof(dir) - 1;
    if (config.door_dir != nullptr) {
      p = AppendString(p, end, config.door_dir);
    } else {
      p = AppendString(p, end, "/tmp/doorway-");
      p = AppendUnsigned(p, end, static_cast<unsigned long>(geteuid()));
    }
    *p = '\0';
    if (p < end && MakePath(path, sizeof(path), dir, stats::kFilePrefix,
                            static_cast<pid_t>(syscall(SYS_getpid)), "")) {
      ErrnoSaver saver;
      unlink(path);
    }
  }
  int expected = kUnconfigured;
  g_state.compare_exchange_strong(expected, config.stats == StatsMode::kOff ? kOff : kArmed,
                                  std::memory_order_acq_rel);
}

void StatsNoteSocket() {
  int s = g_state.load(std::memory_order_relaxed);
  if (s == kArmed || s == kForked) (void)Header();
}

void StatsOpen(Connection& c) {
  c.stats = nullptr;
  ProcessHeader* h = Header();
  if (h == nullptr) return;
  Slot* s = Claim(h);
  if (s == nullptr) {
    h->slots_full.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  ErrnoSaver saver;
  s->generation.fetch_add(1, std::memory_order_relaxed);
  s->role = static_cast<std::uint8_t>(c.role);
  const transport::Placement& pl = c.seg.placement();
  s->pages = static_cast<std::uint8_t>(pl.pages);
  s->page_size = pl.page_size;
  s->numa_node[0] = static_cast<std::int16_t>(pl.numa_node[0]);
  s->numa_node[1] = static_cast<std::int16_t>(pl.numa_node[1]);
  s->shared = 0;
  s->fd = -1;
  s->segment_fd = c.seg.fd();
  struct stat st;
  if (c.seg.ino() != 0) {
    s->segment_dev = c.seg.dev();
    s->segment_ino = c.seg.ino();
  } else if (fstat(c.seg.fd(), &st) == 0) {
    s->segment_dev = st.st_dev;
    s->segment_ino = st.st_ino;
  } else {
    s->segment_dev = s->segment_ino = 0;
  }
  s->socket_ino = 0;
  s->segment_generation = c.seg.generation();
  s->segment_offset_pages = static_cast<std::uint32_t>(c.seg.offset() / 4096);
  s->capacity[0] = c.seg.layout().ring_capacity[0];
  s->capacity[1] = c.seg.layout().ring_capacity[1];
  s->opened_ns = MonotonicNs();
  ZeroCounters(s->tx);
  ZeroCounters(s->rx);
  h->opened.fetch_add(1, std::memory_order_relaxed);
  c.stats = s;
}

transport::RingStats* StatsTx(Connection& c) {
  return c.stats != nullptr ? &c.stats->tx : &c.tx_stats;
}

transport::RingStats* StatsRx(Connection& c) {
  return c.stats != nullptr ? &c.stats->rx : &c.rx_stats;
}

void StatsPublish(Connection& c, int fd) {
  Slot* s = c.stats;
  if (s == nullptr) return;
  ErrnoSaver saver;
  CopyAddress(c.local, &s->local);
  CopyAddress(c.peer, &s->peer);
  s->fd = fd;
  s->shared = c.shared.load(std::memory_order_relaxed) ? 1 : 0;
  if (c.socket_ino == 0) {
    struct stat st;
    c.socket_ino = fstat(fd, &st) == 0 ? st.st_ino : 0;
  }
  s->socket_ino = c.socket_ino;
  // Release pairs with the tool's acquire load of state: it sees the
  // description complete.
  s->state.store(stats::kLive, std::memory_order_release);
}

void StatsClose(Connection& c) {
  Slot* s = c.stats;
  if (s == nullptr) return;
  c.stats = nullptr;
  ProcessHeader* h = g_header.load(std::memory_order_relaxed);
  if (h != nullptr) {
    h->closed.fetch_add(1, std::memory_order_relaxed);
    h->closed_tx_bytes.fetch_add(Load(s->tx.bytes), std::memory_order_relaxed);
    h->closed_tx_msgs.fetch_add(Load(s->tx.ops), std::memory_order_relaxed);
    h->closed_rx_bytes.fetch_add(Load(s->rx.bytes), std::memory_order_relaxed);
    h->closed_rx_msgs.fetch_add(Load(s->rx.ops), std::memory_order_relaxed);
  }
  s->generation.fetch_add(1, std::memory_order_relaxed);
  // Release: a later claimer (another thread) sees the slot's last use done.
  s->state.store(stats::kFree, std::memory_order_release);
}

void StatsNoteAccelerated(bool accepted) {
  (accepted ? g_accel_accepts : g_accel_connects).fetch_add(1, std::memory_order_relaxed);
}

void StatsMarkShared() {
  int s = g_state.load(std::memory_order_acquire);
  if (s == kReady || s == kForked) MarkLiveShared(g_header.load(std::memory_order_relaxed));
}

void StatsAfterFork(pid_t pid) {
  if (pid == 0) {
    g_accel_connects.store(0, std::memory_order_relaxed);
    g_accel_accepts.store(0, std::memory_order_relaxed);
  }
  int s = g_state.load(std::memory_order_acquire);
  if (s != kReady && s != kForked) return;
  ErrnoSaver saver;
  if (pid == 0) {
    ForkChild();
  } else {
    MarkLiveShared(g_header.load(std::memory_order_relaxed));
  }
}

}  // namespace doorway::runtime

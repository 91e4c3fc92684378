// bazel run //tools:stat [-- options]   (or bazel-bin/tools/stat)
//
// Lists the live accelerated connections of the processes running doorway
// that the caller may see, with their counters, and per-process totals.
// No daemon: every process publishes "<door dir>/stats.<pid>"
// (runtime/stats_format.h), which this tool maps read-only. Per connection:
//   * the two processes (a connection shared after fork has several on one
//     side), their fd numbers (every fd of the process that refers to the
//     connection's socket, found in /proc/<pid>/fd), the addresses;
//   * bytes and messages each way: bytes from the segment's rings (their
//     free-running counters, read through /proc/<pid>/fd/<memfd> with a
//     read-only mapping) when the tool may open it, else from the sender's
//     counters; messages are the sender's write calls;
//   * ring capacity and fill (from the rings), futex wake-ups and sleeps,
//     spin hits, page kind and NUMA node, age.
// Per process: accelerated connections open and opened since start, bytes
// sent and received through them (closed ones included), and the plain
// kernel TCP sockets it holds (fallback and pass-through; from
// /proc/<pid>/net/tcp*).
//
// Reading never slows the data path: the tool takes no lock and writes
// nothing the runtime reads; it reads the owners' counters racily.
// Stale files (their process is gone, or the pid now names another process)
// are ignored, and removed when they belong to the caller.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "runtime/stats_format.h"
#include "transport/observe.h"
#include "transport/segment.h"

namespace {

using doorway::stats::ProcessHeader;
using doorway::stats::Slot;
namespace stats = doorway::stats;
namespace transport = doorway::transport;

const char kUsage[] =
    "usage: stat [--json] [--watch[=SECONDS]] [--count=N] [--dir=DIR]... [--pid=PID]\n"
    "Lists the live accelerated connections of the processes running doorway\n"
    "that you may see (your own; root: everybody's), and per-process totals.\n"
    "\n"
    "  --json            one JSON document (with --watch: one per line)\n"
    "  --watch[=SECS]    refresh every SECS seconds (default 1) until interrupted\n"
    "  --count=N         with --watch: stop after N refreshes\n"
    "  --dir=DIR         door directory to read (repeatable); default: $DOORWAY_DIR\n"
    "                    if set, else every /tmp/doorway-* directory you may read\n"
    "  --pid=PID         only connections and totals of this process\n"
    "  --help            this text\n"
    "\n"
    "Connection columns: CLIENT and SERVER are pid/command[fds]; C>S and S>C are\n"
    "bytes and messages (write calls) each way (with --watch also bytes per\n"
    "second since the previous refresh); RING is the capacity each way,\n"
    "FILL the bytes waiting in each ring; WAKE/SLEEP count futex wake-ups sent\n"
    "and sleeps, SPIN waits that ended while spinning; PAGES the segment's page\n"
    "kind (4k, thp, huge) and NUMA nodes the rings are bound to ('-': not bound).\n"
    "Processes: ACCEL open/opened accelerated connections, SENT/RECEIVED bytes\n"
    "through them (closed ones included), TCP/LISTEN the plain kernel TCP\n"
    "connections and listeners it holds (fallback and pass-through); 'local'\n"
    "counts TCP connections to this host that were not accelerated (the peer\n"
    "does not run doorway, is another uid, or DOORWAY_ACCELERATE=0).\n";

struct Options {
  bool json = false;
  bool watch = false;
  double interval = 1.0;
  long count = -1;
  std::vector<std::string> dirs;
  long pid = -1;
};

// ------------------------------------------------------------- small helpers

std::int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

bool ReadSmallFile(const std::string& path, std::string* out, size_t max = 1 << 20) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  out->clear();
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    out->append(buf, static_cast<size_t>(n));
    if (out->size() > max) break;
  }
  close(fd);
  return true;
}

// Field 22 of /proc/<pid>/stat, 0 if the process does not exist.
std::uint64_t StartTicks(long pid) {
  std::string s;
  if (!ReadSmallFile("/proc/" + std::to_string(pid) + "/stat", &s)) return 0;
  size_t p = s.rfind(')');
  if (p == std::string::npos) return 0;
  int field = 2;
  std::uint64_t v = 0;
  for (size_t i = p + 1; i < s.size(); ++i) {
    if (s[i] == ' ') {
      ++field;
      continue;
    }
    if (field == 22) {
      while (i < s.size() && s[i] >= '0' && s[i] <= '9') v = v * 10 + (s[i++] - '0');
      return v;
    }
  }
  return 0;
}

std::uint64_t OwnPidNamespace() {
  static const std::uint64_t ns = [] {
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? static_cast<std::uint64_t>(st.st_ino) : 0;
  }();
  return ns;
}

// The pid namespaces of every process whose /proc/<pid>/ns/pid we may read
// (built at most once per refresh, only if a file from another namespace
// turns up; Collect forgets it).
std::set<std::uint64_t>* g_live_namespaces = nullptr;

const std::set<std::uint64_t>& LivePidNamespaces() {
  std::set<std::uint64_t>*& live = g_live_namespaces;
  if (live != nullptr) return *live;
  live = new std::set<std::uint64_t>;
  DIR* d = opendir("/proc");
  if (d == nullptr) return *live;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    struct stat st;
    if (stat((std::string("/proc/") + e->d_name + "/ns/pid").c_str(), &st) == 0) {
      live->insert(static_cast<std::uint64_t>(st.st_ino));
    }
  }
  closedir(d);
  return *live;
}

std::string Command(long pid, const char* fallback, size_t fallback_size) {
  std::string s;
  if (ReadSmallFile("/proc/" + std::to_string(pid) + "/comm", &s, 256)) {
    while (!s.empty() && (s.back() == '\n' || s.back() == '\0')) s.pop_back();
    if (!s.empty()) return s;
  }
  return std::string(fallback, strnlen(fallback, fallback_size));
}

std::string AddressString(const stats::Address& a) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (a.family == AF_INET || a.family == AF_INET6) {
    if (inet_ntop(a.family, a.addr, host, sizeof(host)) == nullptr) strcpy(host, "?");
  } else {
    return "?";
  }
  if (a.family == AF_INET6) return "[" + std::string(host) + "]:" + std::to_string(a.port);
  return std::string(host) + ":" + std::to_string(a.port);
}

const char* PagesName(std::uint8_t k) {
  switch (k) {
    case static_cast<std::uint8_t>(transport::PageKind::kSmall):
      return "4k";
    case static_cast<std::uint8_t>(transport::PageKind::kTransparentHuge):
      return "thp";
    case static_cast<std::uint8_t>(transport::PageKind::kHugeTlb):
      return "huge";
  }
  return "?";
}

std::string Bytes(std::uint64_t v) {  // capacities: 1M, 64K
  if (v >= (1ull << 30) && v % (1ull << 30) == 0) return std::to_string(v >> 30) + "G";
  if (v >= (1ull << 20) && v % (1ull << 20) == 0) return std::to_string(v >> 20) + "M";
  if (v >= (1ull << 10) && v % (1ull << 10) == 0) return std::to_string(v >> 10) + "K";
  return std::to_string(v);
}

std::string Age(std::int64_t ns) {
  if (ns < 0) ns = 0;
  std::int64_t s = ns / 1000000000;
  char buf[32];
  if (s < 60) {
    snprintf(buf, sizeof(buf), "%.1fs", static_cast<double>(ns) / 1e9);
  } else if (s < 3600) {
    snprintf(buf, sizeof(buf), "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
  } else {
    snprintf(buf, sizeof(buf), "%" PRId64 "h%02" PRId64 "m", s / 3600, (s / 60) % 60);
  }
  return buf;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch < 0x20 || ch >= 0x7f) {
      char buf[8];
      snprintf(buf, sizeof(buf), "\\u%04x", ch);
      out += buf;
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out + "\"";
}

// ------------------------------------------------------------------ model

struct Counters {
  std::uint64_t bytes = 0, ops = 0, futex_wakes = 0, futex_waits = 0, spin_hits = 0,
                spin_misses = 0, corruptions = 0, doorbells = 0;
  void Load(const transport::RingStats& s) {
    bytes = s.bytes.load(std::memory_order_relaxed);
    ops = s.ops.load(std::memory_order_relaxed);
    futex_wakes = s.futex_wakes.load(std::memory_order_relaxed);
    futex_waits = s.futex_waits.load(std::memory_order_relaxed);
    spin_hits = s.spin_hits.load(std::memory_order_relaxed);
    spin_misses = s.spin_misses.load(std::memory_order_relaxed);
    corruptions = s.corruptions.load(std::memory_order_relaxed);
    doorbells = s.doorbells.load(std::memory_order_relaxed);
  }
};

// A copy of a slot's description (taken under the seqlock check).
struct SlotCopy {
  std::uint8_t role = 0, pages = 0, shared = 0;
  std::int32_t fd = -1, segment_fd = -1;
  std::int16_t numa_node[2] = {-1, -1};
  std::uint64_t segment_dev = 0, segment_ino = 0, socket_ino = 0, page_size = 0;
  std::uint32_t segment_generation = 0;
  std::uint32_t segment_offset_pages = 0;
  std::uint64_t capacity[2] = {0, 0};
  std::int64_t opened_ns = 0;
  stats::Address local{}, peer{};
  Counters tx, rx;
};

struct End {
  long pid = 0;
  std::string command;
  std::vector<int> fds;
  SlotCopy slot;
};

struct Conn {
  std::uint64_t dev = 0, ino = 0;
  std::uint32_t generation = 0;
  std::uint32_t offset_pages = 0;  // of the segment in its memfd (an arena slot)
  std::vector<End> ends;           // client ends first
  bool have_rings = false;
  transport::RingSnapshot rings[2];
  // --watch: bytes per second each way since the previous refresh; < 0:
  // unknown (first refresh, or the connection is new).
  double rate[2] = {-1, -1};
};

// A connection: its segment (st_dev, st_ino, offset in pages) and the
// segment's generation.
using ConnKey = std::tuple<std::uint64_t, std::uint64_t, std::uint32_t, std::uint32_t>;

struct Proc {
  long pid = 0;
  unsigned uid = 0;
  std::string command;
  std::string dir;
  bool fds_readable = false;
  unsigned accel_live = 0;
  std::uint64_t opened = 0, slots_full = 0, closed = 0;
  std::uint64_t sent_bytes = 0, sent_msgs = 0, received_bytes = 0, received_msgs = 0;
  unsigned plain_tcp = 0, plain_tcp_local = 0, tcp_listen = 0;
  bool accelerate = true;
};

struct Snapshot {
  bool watching = false;
  std::int64_t taken_ns = 0;
  std::vector<Proc> procs;
  std::vector<Conn> conns;
  std::vector<std::string> dirs;
};

// socket inode -> fd numbers of a process; false if /proc/<pid>/fd is not ours to read.
bool SocketFds(long pid, std::map<std::uint64_t, std::vector<int>>* out) {
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return false;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    char link[128];
    ssize_t n = readlinkat(dirfd(d), e->d_name, link, sizeof(link) - 1);
    if (n <= 0) continue;
    link[n] = '\0';
    unsigned long long ino = 0;
    if (sscanf(link, "socket:[%llu]", &ino) == 1) (*out)[ino].push_back(atoi(e->d_name));
  }
  closedir(d);
  for (auto& [ino, fds] : *out) std::sort(fds.begin(), fds.end());
  return true;
}

struct TcpSocket {
  int state = 0;            // hex field "st": 0A is LISTEN
  bool local_peer = false;  // the peer is on this host (loopback, or our own address)
};

// "0100007F:1F90" (IPv4, bytes of each 32-bit word in host order) or 32 hex
// digits (IPv6): a loopback address, or IPv4-mapped loopback.
bool LoopbackHex(const std::string& ip) {
  if (ip.size() == 8) return ip.compare(6, 2, "7F") == 0;
  if (ip.size() == 32) {
    return ip == "00000000000000000000000001000000" ||
           (ip.compare(0, 24, "0000000000000000FFFF0000") == 0 && ip.compare(30, 2, "7F") == 0);
  }
  return false;
}

// inode -> TCP socket from the process's network namespace.
std::map<std::uint64_t, TcpSocket> TcpSockets(long pid) {
  std::map<std::uint64_t, TcpSocket> out;
  for (const char* f : {"tcp", "tcp6"}) {
    std::string s;
    if (!ReadSmallFile("/proc/" + std::to_string(pid) + "/net/" + f, &s, 64 << 20)) continue;
    size_t pos = s.find('\n');  // header line
    while (pos != std::string::npos && pos + 1 < s.size()) {
      size_t end = s.find('\n', pos + 1);
      std::string line =
          s.substr(pos + 1, end == std::string::npos ? std::string::npos : end - pos - 1);
      pos = end;
      // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
      char local[128], rem[128];
      unsigned st = 0;
      unsigned long long ino = 0;
      unsigned long dummy;
      if (sscanf(line.c_str(), " %lu: %127s %127s %x %*s %*s %*s %*u %*u %llu", &dummy, local, rem,
                 &st, &ino) == 5 &&
          ino != 0) {
        std::string l(local), r(rem);
        l = l.substr(0, l.find(':'));
        r = r.substr(0, r.find(':'));
        out[ino] = TcpSocket{static_cast<int>(st), LoopbackHex(r) || r == l};
      }
    }
  }
  return out;
}

bool ValidSlot(const SlotCopy& s) {
  if (s.role > 1 || s.pages > 2) return false;
  for (std::uint64_t cap : s.capacity) {
    if (cap < transport::kMinRingCapacity || cap > transport::kMaxRingCapacity ||
        (cap & (cap - 1)) != 0) {
      return false;
    }
  }
  return true;
}

// Seqlock read: the description counts only if the slot was live and not
// reclaimed while we copied it.
bool CopySlot(const Slot& s, SlotCopy* out) {
  std::uint32_t st1 = s.state.load(std::memory_order_acquire);
  std::uint32_t g1 = s.generation.load(std::memory_order_acquire);
  if (st1 != stats::kLive) return false;
  out->role = s.role;
  out->pages = s.pages;
  out->shared = s.shared;
  out->fd = s.fd;
  out->segment_fd = s.segment_fd;
  out->numa_node[0] = s.numa_node[0];
  out->numa_node[1] = s.numa_node[1];
  out->segment_dev = s.segment_dev;
  out->segment_ino = s.segment_ino;
  out->segment_generation = s.segment_generation;
  out->segment_offset_pages = s.segment_offset_pages;
  out->socket_ino = s.socket_ino;
  out->page_size = s.page_size;
  out->capacity[0] = s.capacity[0];
  out->capacity[1] = s.capacity[1];
  out->opened_ns = s.opened_ns;
  out->local = s.local;
  out->peer = s.peer;
  out->tx.Load(s.tx);
  out->rx.Load(s.rx);
  std::atomic_thread_fence(std::memory_order_acquire);
  return s.state.load(std::memory_order_relaxed) == stats::kLive &&
         s.generation.load(std::memory_order_relaxed) == g1 && ValidSlot(*out);
}

// Maps the connection's segment read-only through one of its processes'
// fds and reads the rings' counters.
bool ReadRings(Conn& c) {
  for (const End& e : c.ends) {
    if (e.slot.segment_fd < 0) continue;
    std::string path =
        "/proc/" + std::to_string(e.pid) + "/fd/" + std::to_string(e.slot.segment_fd);
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat st;
    bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_ino == c.ino &&
              st.st_dev == c.dev && st.st_size > 0 &&
              static_cast<std::uint64_t>(st.st_size) <= transport::kMaxSegmentSize;
    void* base = ok ? mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0)
                    : MAP_FAILED;
    close(fd);
    if (base == MAP_FAILED) continue;
    // The segment may serve another connection by now (reuse): read it
    // only if its generation is the connection's, before and after.
    const void* seg = nullptr;
    std::uint64_t size = 0;
    ok = transport::SegmentAt(base, static_cast<std::uint64_t>(st.st_size),
                              std::uint64_t{c.offset_pages} * 4096, &seg, &size) &&
         transport::SegmentGeneration(seg, size) == c.generation &&
         transport::SnapshotSegment(seg, size, c.rings) == 0 &&
         transport::SegmentGeneration(seg, size) == c.generation;
    munmap(base, static_cast<size_t>(st.st_size));
    if (ok) {
      c.have_rings = true;
      return true;
    }
  }
  return false;
}

void ReadProcessFile(const std::string& dir, int dfd, const char* name, const Options& opt,
                     Snapshot* snap, std::map<ConnKey, Conn>* conns, std::uint64_t* anon) {
  char* endp = nullptr;
  long pid = strtol(name + strlen(stats::kFilePrefix), &endp, 10);
  if (endp == nullptr || *endp != '\0' || pid <= 0) return;
  if (opt.pid > 0 && pid != opt.pid) return;
  int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return;
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
      static_cast<std::uint64_t>(st.st_size) != stats::kFileSize) {
    close(fd);
    return;
  }
  void* base = mmap(nullptr, stats::kFileSize, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (base == MAP_FAILED) return;
  const auto* h = static_cast<const ProcessHeader*>(base);
  bool valid = h->magic == stats::kMagic && h->version == stats::kVersion &&
               h->header_size == sizeof(ProcessHeader) && h->slot_size == sizeof(Slot) &&
               h->slot_count == stats::kSlots && h->pid == pid;
  bool foreign = valid && h->pid_namespace != 0 && OwnPidNamespace() != 0 &&
                 h->pid_namespace != OwnPidNamespace();
  if (foreign && LivePidNamespaces().count(h->pid_namespace) != 0) {
    // Another pid namespace (a container sharing the directory) that still
    // has processes: its pids mean nothing here, so the file is neither
    // shown nor judged. Leave it alone.
    munmap(base, stats::kFileSize);
    return;
  }
  // A foreign namespace no visible process is in any more (a sandbox that
  // ended) is stale: its writer, a process of the file's owner, would be
  // visible to the owner if it were alive.
  std::uint64_t ticks = valid && !foreign ? StartTicks(pid) : 0;
  if (!valid || ticks == 0 || ticks != h->start_ticks) {
    // Stale (or not ours to understand). Remove it if it is the caller's
    // and the name still refers to the file we judged.
    struct stat now;
    if (valid && st.st_uid == geteuid() && fstatat(dfd, name, &now, AT_SYMLINK_NOFOLLOW) == 0 &&
        now.st_ino == st.st_ino && now.st_dev == st.st_dev) {
      unlinkat(dfd, name, 0);
    }
    munmap(base, stats::kFileSize);
    return;
  }
  // A file speaks only for a process of its owner (root reading every
  // user's directory must not believe one user's file about another's
  // process).
  struct stat proc_st;
  if (stat(("/proc/" + std::to_string(pid)).c_str(), &proc_st) != 0 ||
      proc_st.st_uid != st.st_uid) {
    munmap(base, stats::kFileSize);
    return;
  }
  Proc p;
  p.pid = pid;
  p.uid = h->uid;
  p.dir = dir;
  p.command = Command(pid, h->command, sizeof(h->command));
  p.accelerate = h->accelerate != 0;
  p.opened = h->opened.load(std::memory_order_relaxed);
  p.slots_full = h->slots_full.load(std::memory_order_relaxed);
  p.closed = h->closed.load(std::memory_order_relaxed);
  p.sent_bytes = h->closed_tx_bytes.load(std::memory_order_relaxed);
  p.sent_msgs = h->closed_tx_msgs.load(std::memory_order_relaxed);
  p.received_bytes = h->closed_rx_bytes.load(std::memory_order_relaxed);
  p.received_msgs = h->closed_rx_msgs.load(std::memory_order_relaxed);
  std::map<std::uint64_t, std::vector<int>> fds;
  p.fds_readable = SocketFds(pid, &fds);
  std::set<std::uint64_t> accel_sockets;
  std::uint32_t hw = h->high_water.load(std::memory_order_acquire);
  if (hw > stats::kSlots) hw = stats::kSlots;
  const Slot* slots = stats::Slots(h);
  for (std::uint32_t i = 0; i < hw; ++i) {
    End e;
    if (!CopySlot(slots[i], &e.slot)) continue;
    e.pid = pid;
    e.command = p.command;
    if (p.fds_readable) {
      auto it = fds.find(e.slot.socket_ino);
      // No fd of the process refers to it any more (closed just now, or the
      // program exec'd something that does not run doorway): not live.
      if (e.slot.socket_ino == 0 || it == fds.end()) continue;
      e.fds = it->second;
      accel_sockets.insert(e.slot.socket_ino);
    } else if (e.slot.fd >= 0) {
      e.fds.push_back(e.slot.fd);
    }
    ++p.accel_live;
    p.sent_bytes += e.slot.tx.bytes;
    p.sent_msgs += e.slot.tx.ops;
    p.received_bytes += e.slot.rx.bytes;
    p.received_msgs += e.slot.rx.ops;
    ConnKey key{e.slot.segment_dev, e.slot.segment_ino, e.slot.segment_offset_pages,
                e.slot.segment_generation};
    if (e.slot.segment_ino == 0) key = {~0ull, (*anon)++, 0, 0};
    Conn& c = (*conns)[key];
    c.dev = std::get<0>(key);
    c.ino = std::get<1>(key);
    c.offset_pages = std::get<2>(key);
    c.generation = std::get<3>(key);
    c.ends.push_back(std::move(e));
  }
  munmap(base, stats::kFileSize);
  if (p.fds_readable) {
    std::map<std::uint64_t, TcpSocket> tcp = TcpSockets(pid);
    for (const auto& [ino, list] : fds) {
      auto it = tcp.find(ino);
      if (it == tcp.end() || accel_sockets.count(ino) != 0) continue;
      if (it->second.state == 0x0A) {
        p.tcp_listen += 1;
      } else {
        p.plain_tcp += 1;
        if (it->second.local_peer) p.plain_tcp_local += 1;
      }
    }
  }
  snap->procs.push_back(std::move(p));
}

std::vector<std::string> DefaultDirs() {
  std::vector<std::string> dirs;
  if (const char* d = getenv("DOORWAY_DIR"); d != nullptr && d[0] == '/') {
    dirs.emplace_back(d);
    return dirs;
  }
  DIR* t = opendir("/tmp");
  if (t == nullptr) return dirs;
  while (dirent* e = readdir(t)) {
    if (strncmp(e->d_name, "doorway-", 8) == 0) dirs.push_back(std::string("/tmp/") + e->d_name);
  }
  closedir(t);
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

Snapshot Collect(const Options& opt) {
  delete g_live_namespaces;
  g_live_namespaces = nullptr;
  Snapshot snap;
  snap.watching = opt.watch;
  snap.taken_ns = MonotonicNs();
  snap.dirs = opt.dirs.empty() ? DefaultDirs() : opt.dirs;
  std::map<ConnKey, Conn> conns;
  std::uint64_t anon = 0;
  for (const std::string& dir : snap.dirs) {
    int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) continue;  // another user's: not ours to see
    DIR* d = fdopendir(dfd);
    if (d == nullptr) {
      close(dfd);
      continue;
    }
    std::vector<std::string> names;
    while (dirent* e = readdir(d)) {
      if (strncmp(e->d_name, stats::kFilePrefix, strlen(stats::kFilePrefix)) == 0) {
        names.emplace_back(e->d_name);
      }
    }
    for (const std::string& n : names) {
      ReadProcessFile(dir, dirfd(d), n.c_str(), opt, &snap, &conns, &anon);
    }
    closedir(d);
  }
  for (auto& [key, c] : conns) {
    std::stable_sort(c.ends.begin(), c.ends.end(), [](const End& a, const End& b) {
      return a.slot.role != b.slot.role ? a.slot.role < b.slot.role : a.pid < b.pid;
    });
    ReadRings(c);
    snap.conns.push_back(std::move(c));
  }
  std::sort(snap.procs.begin(), snap.procs.end(),
            [](const Proc& a, const Proc& b) { return a.pid < b.pid; });
  return snap;
}

// ------------------------------------------------------------------ output

struct Dir {  // one direction of a connection, as shown
  std::uint64_t bytes = 0, msgs = 0;
  bool have_fill = false;
  std::uint64_t fill = 0, capacity = 0;
};

// dir 0: client -> server.
Dir Direction(const Conn& c, int ring) {
  Dir d;
  std::uint64_t sent = 0;
  for (const End& e : c.ends) {
    // The sender of ring 0 is the client (role 0), of ring 1 the server.
    if (e.slot.role == ring) {
      d.msgs += e.slot.tx.ops;
      sent += e.slot.tx.bytes;
    }
    d.capacity = e.slot.capacity[ring];
  }
  if (c.have_rings) {
    d.bytes = c.rings[ring].tail;
    d.have_fill = true;
    d.fill = c.rings[ring].fill();
    d.capacity = c.rings[ring].capacity;
  } else {
    d.bytes = sent;
  }
  return d;
}

std::string Side(const Conn& c, int role) {
  std::string out;
  for (const End& e : c.ends) {
    if (e.slot.role != role) continue;
    if (!out.empty()) out += ",";
    out += std::to_string(e.pid) + "/" + e.command + "[";
    for (size_t i = 0; i < e.fds.size(); ++i) out += (i ? "," : "") + std::to_string(e.fds[i]);
    out += "]";
  }
  return out.empty() ? "?" : out;
}

// The client's and the server's address (from whichever end we see).
void Addresses(const Conn& c, std::string* client, std::string* server) {
  *client = *server = "?";
  for (const End& e : c.ends) {
    const stats::Address& mine = e.slot.local;
    const stats::Address& theirs = e.slot.peer;
    *client = AddressString(e.slot.role == 0 ? mine : theirs);
    *server = AddressString(e.slot.role == 0 ? theirs : mine);
    if (e.slot.role == 0) break;
  }
}

std::string Numa(const End& e) {
  auto one = [](std::int16_t n) { return n < 0 ? std::string("-") : std::to_string(n); };
  return one(e.slot.numa_node[0]) + "/" + one(e.slot.numa_node[1]);
}

void PrintTable(const std::vector<std::vector<std::string>>& rows, std::string* out) {
  std::vector<size_t> width;
  for (const auto& r : rows) {
    if (width.size() < r.size()) width.resize(r.size(), 0);
    for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      std::string cell = r[i];
      bool last = i + 1 == r.size();
      if (!last) cell.resize(width[i], ' ');
      line += cell;
      if (!last) line += "  ";
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    *out += line + "\n";
  }
}

std::string Rate(double bytes_per_s) {
  if (bytes_per_s < 0) return "-";
  char buf[32];
  const char* unit[] = {"", "K", "M", "G", "T"};
  int u = 0;
  while (bytes_per_s >= 1000 && u < 4) {
    bytes_per_s /= 1000;
    ++u;
  }
  snprintf(buf, sizeof(buf), u == 0 ? "%.0f%s" : "%.1f%s", bytes_per_s, unit[u]);
  return buf;
}

// --watch: each connection's rate from the bytes of the previous refresh.
void ComputeRates(const Snapshot& prev, Snapshot* cur);

std::string FormatText(const Snapshot& snap) {
  std::string out;
  std::int64_t now = MonotonicNs();
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"CLIENT", "SERVER", "CLIENT ADDR", "SERVER ADDR", "C>S BYTES", "MSGS",
                  "S>C BYTES", "MSGS", "RING", "FILL", "WAKE", "SLEEP", "SPIN", "PAGES", "AGE"});
  if (snap.watching) rows.back().insert(rows.back().begin() + 8, {"C>S/s", "S>C/s"});
  for (const Conn& c : snap.conns) {
    Dir c2s = Direction(c, 0), s2c = Direction(c, 1);
    std::string caddr, saddr;
    Addresses(c, &caddr, &saddr);
    std::uint64_t wakes = 0, sleeps = 0, spins = 0;
    std::int64_t opened = now;
    for (const End& e : c.ends) {
      for (const Counters* k : {&e.slot.tx, &e.slot.rx}) {
        wakes += k->futex_wakes;
        sleeps += k->futex_waits;
        spins += k->spin_hits;
      }
      opened = std::min(opened, e.slot.opened_ns);
    }
    const End& first = c.ends.front();
    std::string fill =
        c2s.have_fill ? std::to_string(c2s.fill) + "/" + std::to_string(s2c.fill) : "-";
    rows.push_back({Side(c, 0), Side(c, 1), caddr, saddr, std::to_string(c2s.bytes),
                    std::to_string(c2s.msgs), std::to_string(s2c.bytes), std::to_string(s2c.msgs),
                    Bytes(c2s.capacity) + "/" + Bytes(s2c.capacity), fill, std::to_string(wakes),
                    std::to_string(sleeps), std::to_string(spins),
                    std::string(PagesName(first.slot.pages)) + " " + Numa(first),
                    Age(now - opened)});
    if (snap.watching)
      rows.back().insert(rows.back().begin() + 8, {Rate(c.rate[0]), Rate(c.rate[1])});
  }
  if (snap.conns.empty()) {
    out += "no accelerated connections\n";
  } else {
    PrintTable(rows, &out);
  }
  out += "\n";
  rows.clear();
  rows.push_back(
      {"PID", "COMMAND", "ACCEL", "SENT", "MSGS", "RECEIVED", "MSGS", "TCP", "LISTEN", "DIR"});
  for (const Proc& p : snap.procs) {
    std::string accel = std::to_string(p.accel_live) + "/" + std::to_string(p.opened);
    if (!p.accelerate) accel = "off";
    if (p.slots_full != 0) accel += " (+" + std::to_string(p.slots_full) + " unlisted)";
    rows.push_back({std::to_string(p.pid), p.command, accel, std::to_string(p.sent_bytes),
                    std::to_string(p.sent_msgs), std::to_string(p.received_bytes),
                    std::to_string(p.received_msgs),
                    p.fds_readable ? std::to_string(p.plain_tcp) + " (" +
                                         std::to_string(p.plain_tcp_local) + " local)"
                                   : "?",
                    p.fds_readable ? std::to_string(p.tcp_listen) : "?", p.dir});
  }
  if (snap.procs.empty()) {
    if (snap.dirs.size() == 1) {
      out += "no processes running doorway in " + snap.dirs[0] + "\n";
    } else {
      out += "no processes running doorway found (" + std::to_string(snap.dirs.size()) +
             " door directories searched)\n";
    }
  } else {
    PrintTable(rows, &out);
  }
  return out;
}

std::string JsonCounters(const Counters& k) {
  char buf[512];
  snprintf(buf, sizeof(buf),
           "{\"bytes\": %" PRIu64 ", \"msgs\": %" PRIu64 ", \"futex_wakes\": %" PRIu64
           ", \"futex_waits\": %" PRIu64 ", \"spin_hits\": %" PRIu64 ", \"spin_misses\": %" PRIu64
           ", \"doorbells\": %" PRIu64 ", \"corruptions\": %" PRIu64 "}",
           k.bytes, k.ops, k.futex_wakes, k.futex_waits, k.spin_hits, k.spin_misses, k.doorbells,
           k.corruptions);
  return buf;
}

std::string FormatJson(const Snapshot& snap) {
  std::int64_t now = MonotonicNs();
  timespec rt;
  clock_gettime(CLOCK_REALTIME, &rt);
  std::string out = "{\"version\": 1, \"time\": " + std::to_string(rt.tv_sec) + ", \"dirs\": [";
  for (size_t i = 0; i < snap.dirs.size(); ++i) out += (i ? ", " : "") + JsonString(snap.dirs[i]);
  out += "], \"processes\": [";
  for (size_t i = 0; i < snap.procs.size(); ++i) {
    const Proc& p = snap.procs[i];
    char buf[1024];
    snprintf(buf, sizeof(buf),
             "{\"pid\": %ld, \"uid\": %u, \"command\": %s, \"dir\": %s, \"accelerate\": %s, "
             "\"accelerated\": %u, \"opened\": %" PRIu64 ", \"closed\": %" PRIu64
             ", \"unlisted\": %" PRIu64 ", \"sent\": {\"bytes\": %" PRIu64 ", \"msgs\": %" PRIu64
             "}, \"received\": {\"bytes\": %" PRIu64 ", \"msgs\": %" PRIu64
             "}, \"plain_tcp\": %s, \"plain_tcp_local\": %s, \"tcp_listen\": %s}",
             p.pid, p.uid, JsonString(p.command).c_str(), JsonString(p.dir).c_str(),
             p.accelerate ? "true" : "false", p.accel_live, p.opened, p.closed, p.slots_full,
             p.sent_bytes, p.sent_msgs, p.received_bytes, p.received_msgs,
             p.fds_readable ? std::to_string(p.plain_tcp).c_str() : "null",
             p.fds_readable ? std::to_string(p.plain_tcp_local).c_str() : "null",
             p.fds_readable ? std::to_string(p.tcp_listen).c_str() : "null");
    out += (i ? ", " : "") + std::string(buf);
  }
  out += "], \"connections\": [";
  for (size_t i = 0; i < snap.conns.size(); ++i) {
    const Conn& c = snap.conns[i];
    Dir d[2] = {Direction(c, 0), Direction(c, 1)};
    std::string caddr, saddr;
    Addresses(c, &caddr, &saddr);
    out += i ? ", " : "";
    out += "{\"segment\": \"" + std::to_string(c.dev) + ":" + std::to_string(c.ino) + ":" +
           std::to_string(c.generation) + "\"";
    out += ", \"client\": " + JsonString(caddr) + ", \"server\": " + JsonString(saddr);
    const char* names[2] = {"c2s", "s2c"};
    for (int r = 0; r < 2; ++r) {
      out += std::string(", \"") + names[r] + "\": {\"bytes\": " + std::to_string(d[r].bytes) +
             ", \"msgs\": " + std::to_string(d[r].msgs) +
             ", \"capacity\": " + std::to_string(d[r].capacity) +
             ", \"fill\": " + (d[r].have_fill ? std::to_string(d[r].fill) : "null") +
             ", \"from_rings\": " + (c.have_rings ? "true" : "false");
      if (snap.watching) {
        out += ", \"rate_bps\": " +
               (c.rate[r] >= 0 ? std::to_string(static_cast<std::uint64_t>(c.rate[r])) : "null");
      }
      out += "}";
    }
    out += ", \"ends\": [";
    for (size_t j = 0; j < c.ends.size(); ++j) {
      const End& e = c.ends[j];
      out += j ? ", " : "";
      out += "{\"role\": \"" + std::string(e.slot.role == 0 ? "client" : "server") + "\"";
      out += ", \"pid\": " + std::to_string(e.pid) + ", \"command\": " + JsonString(e.command);
      out += ", \"fds\": [";
      for (size_t k = 0; k < e.fds.size(); ++k) out += (k ? ", " : "") + std::to_string(e.fds[k]);
      out += "], \"local\": " + JsonString(AddressString(e.slot.local)) +
             ", \"peer\": " + JsonString(AddressString(e.slot.peer));
      out += ", \"shared\": " + std::string(e.slot.shared ? "true" : "false");
      out +=
          ", \"sent\": " + JsonCounters(e.slot.tx) + ", \"received\": " + JsonCounters(e.slot.rx);
      out += ", \"pages\": \"" + std::string(PagesName(e.slot.pages)) +
             "\", \"page_size\": " + std::to_string(e.slot.page_size);
      out += ", \"numa_node\": [" + std::to_string(e.slot.numa_node[0]) + ", " +
             std::to_string(e.slot.numa_node[1]) + "]";
      char age[32];
      snprintf(age, sizeof(age), "%.3f", static_cast<double>(now - e.slot.opened_ns) / 1e9);
      out += ", \"age_s\": " + std::string(age) + "}";
    }
    out += "]}";
  }
  out += "]}\n";
  return out;
}

void ComputeRates(const Snapshot& prev, Snapshot* cur) {
  double secs = static_cast<double>(cur->taken_ns - prev.taken_ns) / 1e9;
  if (secs <= 0) return;
  std::map<ConnKey, const Conn*> before;
  for (const Conn& c : prev.conns) before[ConnKey{c.dev, c.ino, c.offset_pages, c.generation}] = &c;
  for (Conn& c : cur->conns) {
    auto it = before.find(ConnKey{c.dev, c.ino, c.offset_pages, c.generation});
    if (it == before.end()) continue;
    for (int r = 0; r < 2; ++r) {
      std::uint64_t now = Direction(c, r).bytes, then = Direction(*it->second, r).bytes;
      // A process of the connection that came or went changes the sum of
      // the senders' counters (when the rings were not readable): unknown.
      if (now >= then) c.rate[r] = static_cast<double>(now - then) / secs;
    }
  }
}

bool ParseOptions(int argc, char** argv, Options* opt) {
  static const option kLong[] = {{"json", no_argument, nullptr, 'j'},
                                 {"watch", optional_argument, nullptr, 'w'},
                                 {"count", required_argument, nullptr, 'c'},
                                 {"dir", required_argument, nullptr, 'd'},
                                 {"pid", required_argument, nullptr, 'p'},
                                 {"help", no_argument, nullptr, 'h'},
                                 {nullptr, 0, nullptr, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "", kLong, nullptr)) != -1) {
    char* end = nullptr;
    switch (ch) {
      case 'j':
        opt->json = true;
        break;
      case 'w':
        opt->watch = true;
        if (optarg != nullptr) {
          opt->interval = strtod(optarg, &end);
          if (*end != '\0' || !(opt->interval > 0)) {
            fprintf(stderr, "stat: --watch=%s: not a number of seconds\n", optarg);
            return false;
          }
        }
        break;
      case 'c':
        opt->count = strtol(optarg, &end, 10);
        if (*end != '\0' || opt->count <= 0) {
          fprintf(stderr, "stat: --count=%s: not a positive number\n", optarg);
          return false;
        }
        break;
      case 'd':
        opt->dirs.emplace_back(optarg);
        break;
      case 'p':
        opt->pid = strtol(optarg, &end, 10);
        if (*end != '\0' || opt->pid <= 0) {
          fprintf(stderr, "stat: --pid=%s: not a pid\n", optarg);
          return false;
        }
        break;
      case 'h':
        fputs(kUsage, stdout);
        exit(0);
      default:
        fputs(kUsage, stderr);
        return false;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "stat: unexpected argument %s\n", argv[optind]);
    fputs(kUsage, stderr);
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  if (!ParseOptions(argc, argv, &opt)) return 2;
  Snapshot prev;
  for (long n = 0;; ++n) {
    Snapshot snap = Collect(opt);
    if (n > 0) ComputeRates(prev, &snap);
    std::string text = opt.json ? FormatJson(snap) : FormatText(snap);
    if (opt.watch && !opt.json && isatty(STDOUT_FILENO)) text = "\033[H\033[2J" + text;
    if (opt.watch && !opt.json && !isatty(STDOUT_FILENO) && n > 0) text = "\n" + text;
    fwrite(text.data(), 1, text.size(), stdout);
    fflush(stdout);
    if (opt.watch) prev = std::move(snap);
    if (!opt.watch || (opt.count > 0 && n + 1 >= opt.count)) break;
    timespec ts;
    ts.tv_sec = static_cast<time_t>(opt.interval);
    ts.tv_nsec = static_cast<long>((opt.interval - static_cast<double>(ts.tv_sec)) * 1e9);
    nanosleep(&ts, nullptr);
  }
  return 0;
}

#include "transport/segment.h"

#include <fcntl.h>
#include <numa.h>
#include <numaif.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "transport/internal/check.h"
#include "transport/internal/layout.h"

namespace doorway::transport {

namespace {

using internal::kRingCount;
using internal::RingControl;
using internal::RingControlOffset;
using internal::SegmentHeader;
using internal::SegmentPrefix;

constexpr uint64_t kSmallPage = 4096;
constexpr unsigned kRequiredSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

constexpr bool IsPow2(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }
constexpr uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

// Reads a small text file into buf (NUL-terminated). Returns length or -1.
// Raw open/read: no stdio, no allocation.
ssize_t ReadSmallFile(const char* path, char* buf, size_t cap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, cap - 1);
  close(fd);
  if (n < 0) return -1;
  buf[n] = '\0';
  return n;
}

// Value of "Key:   123 kB" in /proc/meminfo text, in bytes when the line
// ends in kB. 0 if absent.
uint64_t MeminfoValue(const char* text, const char* key) {
  const char* p = std::strstr(text, key);
  if (p == nullptr) return 0;
  p += std::strlen(key);
  while (*p == ' ' || *p == '\t' || *p == ':') ++p;
  char* end = nullptr;
  unsigned long long v = std::strtoull(p, &end, 10);
  while (end != nullptr && *end == ' ') ++end;
  if (end != nullptr && end[0] == 'k' && end[1] == 'B') v *= 1024;
  return v;
}

}  // namespace

uint64_t RingCapacityFor(uint64_t requested) {
  if (requested == 0) return kDefaultRingCapacity;
  if (requested <= kMinRingCapacity) return kMinRingCapacity;
  if (requested >= kMaxRingCapacity) return kMaxRingCapacity;
  uint64_t c = kMinRingCapacity;
  while (c < requested) c <<= 1;
  return c;
}

const char* PageKindName(PageKind k) {
  switch (k) {
    case PageKind::kSmall:
      return "small";
    case PageKind::kTransparentHuge:
      return "thp";
    case PageKind::kHugeTlb:
      return "hugetlb";
  }
  return "?";
}

PageSupport DetectPageSupport() {
  PageSupport s;
  char buf[8192];
  if (ReadSmallFile("/proc/meminfo", buf, sizeof buf) > 0) {
    s.hugetlb_free_pages = MeminfoValue(buf, "HugePages_Free");
    uint64_t rsvd = MeminfoValue(buf, "HugePages_Rsvd");
    s.hugetlb_available_pages = s.hugetlb_free_pages > rsvd ? s.hugetlb_free_pages - rsvd : 0;
    s.hugetlb_page_size = MeminfoValue(buf, "Hugepagesize");
  }
  // The selected mode is bracketed: "always within_size advise [never] deny force".
  if (ReadSmallFile("/sys/kernel/mm/transparent_hugepage/shmem_enabled", buf, 256) > 0) {
    const char* open = std::strchr(buf, '[');
    if (open != nullptr) {
      s.shmem_thp = std::strncmp(open, "[always]", 8) == 0 ||
                    std::strncmp(open, "[within_size]", 13) == 0 ||
                    std::strncmp(open, "[advise]", 8) == 0 || std::strncmp(open, "[force]", 7) == 0;
    }
  }
  return s;
}

namespace {

// DetectPageSupport reads /proc/meminfo and a sysfs file: on this machine
// those reads were most of an accelerated connection's set-up cost (two
// segments' worth per connection, one on each side). The answer changes
// only when an administrator resizes the huge-page pool or the THP setting,
// so kAuto placements reuse a reading for up to a second; a stale "pool has
// pages" only costs a failed hugetlb attempt (kAuto falls back), a stale
// "no pool" a second of small pages. A forced kHugeTlb always reads afresh.
// Racy by design: each field is an independent relaxed atomic, and any mix
// of two readings is a reading that was true within the last second.
struct PageReading {
  std::atomic<int64_t> read_at{INT64_MIN / 2};
  std::atomic<uint64_t> free_pages{0}, available_pages{0}, page_size{0};
  std::atomic<bool> thp{false};
};
PageReading g_reading;

PageSupport RecentPageSupport(bool fresh) {
  PageReading& r = g_reading;
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  int64_t now = static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  if (fresh || now - r.read_at.load(std::memory_order_relaxed) > 1000000000) {
    PageSupport sup = DetectPageSupport();
    r.free_pages.store(sup.hugetlb_free_pages, std::memory_order_relaxed);
    r.available_pages.store(sup.hugetlb_available_pages, std::memory_order_relaxed);
    r.page_size.store(sup.hugetlb_page_size, std::memory_order_relaxed);
    r.thp.store(sup.shmem_thp, std::memory_order_relaxed);
    r.read_at.store(now, std::memory_order_relaxed);
    return sup;
  }
  PageSupport sup;
  sup.hugetlb_free_pages = r.free_pages.load(std::memory_order_relaxed);
  sup.hugetlb_available_pages = r.available_pages.load(std::memory_order_relaxed);
  sup.hugetlb_page_size = r.page_size.load(std::memory_order_relaxed);
  sup.shmem_thp = r.thp.load(std::memory_order_relaxed);
  return sup;
}

// Keeps the reading close to the truth between two reads of /proc: a
// segment that took n huge pages leaves n fewer (so the next ones do not
// try a pool this process just emptied), and a failed attempt means the
// reading was wrong (read again next time).
void NoteHugePagesTaken(uint64_t n) {
  uint64_t v = g_reading.available_pages.load(std::memory_order_relaxed);
  while (!g_reading.available_pages.compare_exchange_weak(v, v > n ? v - n : 0,
                                                          std::memory_order_relaxed)) {
  }
}
void ForgetPageReading() { g_reading.read_at.store(INT64_MIN / 2, std::memory_order_relaxed); }

// numa_available() is a get_mempolicy system call each time; NUMA support
// does not come and go while a process runs.
bool NumaAvailable() {
  static std::atomic<int> cached{-1};  // -1 unknown, 0 no, 1 yes
  int v = cached.load(std::memory_order_relaxed);
  if (v < 0) {
    v = numa_available() >= 0 ? 1 : 0;
    cached.store(v, std::memory_order_relaxed);
  }
  return v == 1;
}

}  // namespace

int ComputeLayout(const uint64_t capacity[2], uint64_t data_align, uint64_t total_align,
                  SegmentLayout* out) {
  if (!IsPow2(data_align) || !IsPow2(total_align) || data_align < kSmallPage) return -EINVAL;
  for (uint32_t i = 0; i < kRingCount; ++i) {
    if (!IsPow2(capacity[i]) || capacity[i] < kMinRingCapacity || capacity[i] > kMaxRingCapacity)
      return -EINVAL;
  }
  SegmentLayout l;
  uint64_t off = AlignUp(sizeof(SegmentPrefix), data_align);
  for (uint32_t i = 0; i < kRingCount; ++i) {
    l.ring_capacity[i] = capacity[i];
    l.ring_data_offset[i] = off;
    off = AlignUp(off + capacity[i], data_align);
  }
  l.segment_size = AlignUp(off, total_align);
  if (l.segment_size > kMaxSegmentSize) return -EINVAL;
  *out = l;
  return 0;
}

int CreateSegmentMemfd(uint64_t size, bool hugetlb, int* fd_out) {
  unsigned flags = MFD_CLOEXEC | MFD_ALLOW_SEALING | (hugetlb ? MFD_HUGETLB : 0u);
  int fd = memfd_create("doorway", flags);
  if (fd < 0) return -errno;
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  *fd_out = fd;
  return 0;
}

int SealSegmentFd(int fd) {
  if (fcntl(fd, F_ADD_SEALS, kRequiredSeals) != 0) return -errno;
  return 0;
}

int CheckSegmentFd(int fd, uint64_t* size_out, uint64_t* block_out) {
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) return errno == EINVAL ? -EINVAL : -errno;  // EINVAL: not a memfd
  if ((static_cast<unsigned>(seals) & kRequiredSeals) != kRequiredSeals) return -EINVAL;
#ifdef F_SEAL_FUTURE_WRITE
  if (seals & F_SEAL_FUTURE_WRITE) return -EINVAL;
#endif
  if (seals & F_SEAL_WRITE) return -EINVAL;
  struct stat st;
  if (fstat(fd, &st) != 0) return -errno;
  if (!S_ISREG(st.st_mode)) return -EINVAL;
  uint64_t size = static_cast<uint64_t>(st.st_size);
  uint64_t block = st.st_blksize > 0 ? static_cast<uint64_t>(st.st_blksize) : kSmallPage;
  if (!IsPow2(block) || block < kSmallPage) return -EINVAL;
  if (size < sizeof(SegmentPrefix) || size > kMaxSegmentSize || size % block != 0) return -EINVAL;
  *size_out = size;
  if (block_out != nullptr) *block_out = block;
  return 0;
}

int MapSegmentFd(int fd, uint64_t size, void** base_out) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return -errno;
  *base_out = p;
  return 0;
}

namespace {
// memfd_create + ftruncate, seals, mmap; on failure nothing is left.
int CreateSealedMapping(uint64_t size, bool hugetlb, int* fd_out, void** base_out) {
  int fd = -1;
  int rc = CreateSegmentMemfd(size, hugetlb, &fd);
  if (rc != 0) return rc;
  rc = SealSegmentFd(fd);
  if (rc == 0) rc = MapSegmentFd(fd, size, base_out);
  if (rc != 0) {
    close(fd);
    return rc;
  }
  *fd_out = fd;
  return 0;
}
}  // namespace

void InitializeSegment(void* base, const SegmentLayout& layout, PageKind kind,
                       uint32_t generation) {
  auto* prefix = static_cast<SegmentPrefix*>(base);
  // Fresh memfd pages are zero already; clear anyway (a caller may reuse memory).
  std::memset(static_cast<void*>(prefix), 0, sizeof(SegmentPrefix));
  for (uint32_t i = 0; i < kRingCount; ++i) {
    RingControl& rc = prefix->ring[i];
    rc.meta.capacity = layout.ring_capacity[i];
    rc.meta.data_offset = layout.ring_data_offset[i];
    prefix->header.ring_control_offset[i] = RingControlOffset(i);
  }
  prefix->header.version = internal::kSegmentVersion;
  prefix->header.prefix_size = sizeof(SegmentPrefix);
  prefix->header.segment_size = layout.segment_size;
  prefix->header.ring_count = kRingCount;
  prefix->header.page_kind = static_cast<uint32_t>(kind);
  prefix->header.generation = generation;
  // The magic last; the segment is handed over with SCM_RIGHTS afterwards,
  // which orders these plain stores before the peer's reads.
  prefix->header.magic = internal::kSegmentMagic;
}

int ValidateSegmentHeader(const void* base, uint64_t size, SegmentLayout* out) {
  if (size < sizeof(SegmentPrefix) || size > kMaxSegmentSize) return -EINVAL;
  // One copy of everything we use: the peer may change the shared bytes while
  // we look at them, so validate and use only the local copy.
  SegmentHeader h;
  std::memcpy(&h, base, sizeof h);
  if (h.magic != internal::kSegmentMagic) return -EPROTO;
  if (h.version != internal::kSegmentVersion) return -EPROTO;
  if (h.prefix_size != sizeof(SegmentPrefix)) return -EINVAL;
  if (h.segment_size != size) return -EINVAL;
  if (h.ring_count != kRingCount) return -EINVAL;
  SegmentLayout l;
  l.segment_size = size;
  for (uint32_t i = 0; i < kRingCount; ++i) {
    if (h.ring_control_offset[i] != RingControlOffset(i)) return -EINVAL;
    internal::RingMeta m;
    std::memcpy(&m, static_cast<const std::byte*>(base) + RingControlOffset(i), sizeof m);
    if (!IsPow2(m.capacity) || m.capacity < kMinRingCapacity || m.capacity > kMaxRingCapacity)
      return -EINVAL;
    if (m.data_offset % kSmallPage != 0) return -EINVAL;
    if (m.data_offset < sizeof(SegmentPrefix)) return -EINVAL;
    if (m.data_offset > size || m.capacity > size - m.data_offset) return -EINVAL;
    l.ring_capacity[i] = m.capacity;
    l.ring_data_offset[i] = m.data_offset;
  }
  // Disjoint data areas (each already lies after the prefix and inside).
  uint64_t a0 = l.ring_data_offset[0], a1 = l.ring_data_offset[1];
  if (a0 < a1 + l.ring_capacity[1] && a1 < a0 + l.ring_capacity[0]) return -EINVAL;
  *out = l;
  return 0;
}

bool SegmentAt(const void* base, uint64_t size, uint64_t offset, const void** slot,
               uint64_t* slot_size) {
  if (offset % kSmallPage != 0 || offset >= size || size - offset < sizeof(SegmentPrefix)) {
    return false;
  }
  const auto* p = static_cast<const std::byte*>(base) + offset;
  uint64_t n = 0;
  std::memcpy(&n, p + offsetof(SegmentHeader, segment_size), sizeof n);
  if (n > size - offset) return false;
  *slot = p;
  *slot_size = n;
  return true;
}

int BindRingToNode(void* base, const SegmentLayout& layout, uint32_t ring, int node,
                   Placement* placement) {
  DOORWAY_CHECK(ring < kRingCount);
  placement->numa_available = NumaAvailable();
  if (!placement->numa_available) {
    placement->numa_error[ring] = ENOSYS;
    return -ENOSYS;
  }
  if (node < 0) {
    int cpu = sched_getcpu();
    node = cpu >= 0 ? numa_node_of_cpu(cpu) : -1;
    if (node < 0) node = 0;
  }
  if (node > numa_max_node()) {
    placement->numa_error[ring] = EINVAL;
    return -EINVAL;
  }
  unsigned long mask[16] = {};
  if (static_cast<size_t>(node) >= sizeof(mask) * 8) {
    placement->numa_error[ring] = EINVAL;
    return -EINVAL;
  }
  mask[node / (8 * sizeof(unsigned long))] |= 1ul << (node % (8 * sizeof(unsigned long)));
  void* start = static_cast<std::byte*>(base) + layout.ring_data_offset[ring];
  long r = mbind(start, layout.ring_capacity[ring], MPOL_PREFERRED, mask, sizeof(mask) * 8,
                 MPOL_MF_MOVE);
  if (r != 0) {
    int e = errno;
    placement->numa_error[ring] = e;
    placement->numa_node[ring] = -1;
    return -e;
  }
  placement->numa_error[ring] = 0;
  placement->numa_node[ring] = node;
  return 0;
}

// ------------------------------------------------------------------ reuse

namespace {

struct PoolEntry {
  int fd = -1;  // written under the lock through atomic_ref (ReusePoolFds reads it without)
  void* base = nullptr;
  uint64_t size = 0;
  SegmentLayout layout;
  Placement placement;
  uint32_t generation = 0;
  PagePolicy policy = PagePolicy::kAuto;
  uint64_t dev = 0, ino = 0;
  uint64_t stamp = 0;  // smaller is older
};

// One pool per role. The lock is try-only: Recycle may run in a signal
// handler (close() there) that interrupted a thread inside the pool.
struct ReusePool {
  std::atomic_flag busy = ATOMIC_FLAG_INIT;
  PoolEntry entry[kReceiverPoolSize];
  int size = kReceiverPoolSize;  // entries in use: kCreatorPoolSize for the creator
  uint64_t clock = 0;
  // acquire/release: entries written by the previous holder are visible.
  bool TryLock() { return !busy.test_and_set(std::memory_order_acquire); }
  void Unlock() { busy.clear(std::memory_order_release); }
};

// [Role::kClient]: creator pool; [Role::kServer]: receiver cache.
ReusePool g_pool[2];
static_assert(kCreatorPoolSize <= kReceiverPoolSize);
[[maybe_unused]] const bool g_sized = (g_pool[0].size = kCreatorPoolSize, true);

void StoreFd(PoolEntry& e, int fd) {
  std::atomic_ref<int>(e.fd).store(fd, std::memory_order_relaxed);
}

void Destroy(PoolEntry& e) {
  if (e.base != nullptr) munmap(e.base, e.size);
  if (e.fd >= 0) close(e.fd);
}

SegmentHeader* HeaderOf(void* base) { return &static_cast<SegmentPrefix*>(base)->header; }

// A forked child must not reuse what it inherited: the parent may hand the
// same segment to another connection. Only this thread exists in the child,
// so the locks are simply reset.
void DropPoolsInChild() {
  for (ReusePool& pool : g_pool) {
    for (PoolEntry& e : pool.entry) {
      Destroy(e);
      e = PoolEntry{};
    }
    pool.busy.clear(std::memory_order_relaxed);
  }
}

[[maybe_unused]] const int g_atfork = pthread_atfork(nullptr, nullptr, DropPoolsInChild);

// Moves e into the pool (replacing a free or the oldest entry); on
// contention, or for the evicted entry, unmaps and closes.
void PutInPool(ReusePool& pool, PoolEntry e) {
  if (!pool.TryLock()) {
    Destroy(e);
    return;
  }
  int slot = 0;
  for (int i = 0; i < pool.size; ++i) {
    if (pool.entry[i].base == nullptr) {
      slot = i;
      break;
    }
    if (pool.entry[i].stamp < pool.entry[slot].stamp) slot = i;
  }
  PoolEntry old = pool.entry[slot];
  e.stamp = ++pool.clock;
  pool.entry[slot] = e;
  StoreFd(pool.entry[slot], e.fd);
  pool.Unlock();
  // After unlocking: munmap and close are slow, and the old fd is no longer
  // listed (a close_range meanwhile would close a number we still use).
  Destroy(old);
}

// Takes the first entry for which match(e) holds, or returns false.
template <typename Match>
bool TakeFromPool(ReusePool& pool, Match match, PoolEntry* out) {
  if (!pool.TryLock()) return false;
  bool found = false;
  for (PoolEntry& e : pool.entry) {
    if (e.base != nullptr && match(e)) {
      *out = e;
      StoreFd(e, -1);
      e = PoolEntry{};
      found = true;
      break;
    }
  }
  pool.Unlock();
  return found;
}

}  // namespace

// ------------------------------------------------------------------ arenas

// An arena's mapping (segment.h "Arenas"), in the creator (its memfd and
// slots) or in a receiver (a peer's arena, mapped once for all its slots).
// refs counts the live Segments on it plus one for the table that lists
// it; the last Unref unmaps it.
struct SharedMap {
  std::atomic<int32_t> refs{1};
  int fd = -1;  // creator only: the receiver's Segments keep the fds they got
  std::byte* base = nullptr;
  uint64_t size = 0;
  uint64_t dev = 0, ino = 0;
  Placement placement;
  uint64_t stamp = 0;  // receiver: for eviction, smaller is older
  // Creator only.
  // SegmentOptions::arena_key; changed when the table is full and another
  // listener needs an arena (GrowArenas), hence atomic.
  std::atomic<uint64_t> key{0};
  PagePolicy policy = PagePolicy::kAuto;
  SegmentLayout layout;  // of one slot
  uint32_t slots = 0;
  // Per slot: generation << 8 | state, in one word so that taking a slot
  // (compare-exchange) cannot succeed on a generation that changed since it
  // was checked for release. Generation 0: never used.
  std::atomic<uint64_t> slot[kArenaSlots] = {};
  // Where the next search for a free slot starts: slots come back in about
  // the order they went out, so this finds one at once.
  std::atomic<uint32_t> cursor{0};
};

namespace {

constexpr uint64_t kSlotFree = 0;  // recycled by its creator (or never used)
constexpr uint64_t kSlotHeld = 1;
constexpr uint64_t kSlotRetired = 2;  // never reused (not recycled)

void Unref(SharedMap* m) {
  // acq_rel: every use of the mapping by other holders happens before the
  // last one unmaps it.
  if (m->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  munmap(m->base, m->size);
  if (m->fd >= 0) close(m->fd);
  delete m;
}

// The creator's arenas: only ever added (up to kMaxArenas) while the
// process lives; g_arena_grow is held (try-lock) by the one adding.
std::atomic<SharedMap*> g_arenas[kMaxArenas];
std::atomic_flag g_arena_grow = ATOMIC_FLAG_INIT;

// The receiver's mapped arenas, looked up by (dev, ino) under a try-lock
// (Attach may run in a signal handler that interrupted a holder: then it
// maps the arena for itself).
constexpr int kRemoteArenas = 2 * kMaxArenas;
struct RemoteTable {
  std::atomic_flag busy = ATOMIC_FLAG_INIT;
  SharedMap* entry[kRemoteArenas] = {};
  uint64_t clock = 0;
  bool TryLock() { return !busy.test_and_set(std::memory_order_acquire); }
  void Unlock() { busy.clear(std::memory_order_release); }
};
RemoteTable g_remote;

// A forked child allocates nothing from its parent's arenas and forgets the
// peers' arenas it had mapped; the segments of connections it inherited
// keep their mappings until they go.
void DropArenasInChild() {
  for (std::atomic<SharedMap*>& a : g_arenas) {
    if (SharedMap* m = a.exchange(nullptr, std::memory_order_relaxed)) Unref(m);
  }
  g_arena_grow.clear(std::memory_order_relaxed);
  for (SharedMap*& m : g_remote.entry) {
    if (m != nullptr) Unref(std::exchange(m, nullptr));
  }
  g_remote.busy.clear(std::memory_order_relaxed);
}

[[maybe_unused]] const int g_arena_atfork = pthread_atfork(nullptr, nullptr, DropArenasInChild);

// The most bytes either ring of a segment carried: its free-running
// producer counters (a hint; a peer that lies only costs itself reuse).
uint64_t MostCarried(void* base) {
  uint64_t carried = 0;
  for (const RingControl& rc : static_cast<SegmentPrefix*>(base)->ring) {
    carried = std::max(carried, rc.prod.index.load(std::memory_order_relaxed));
  }
  return carried;
}

// An arena slot's side is done with its connection: the second side to be
// done frees the slot's data pages before the release that lets the creator
// reuse the slot, if its rings carried much, or anything at all in a slot
// past the first kWarmSlots of its arena. So what an idle arena keeps in
// memory is its headers and at most kWarmSlots x 2 x kReuseMaxBytes of
// data pages (a burst of connections that each touched a few pages would
// otherwise leave them all resident), while the slots a steady stream of
// connections cycles through keep their pages (no fault per connection).
constexpr uint64_t kWarmSlots = 8;

void FinishSlotEnd(void* base, const SegmentLayout& layout, uint64_t offset) {
  const uint64_t carried = MostCarried(base);
  uint32_t before =
      std::atomic_ref<uint32_t>(HeaderOf(base)->ends_done).fetch_add(1, std::memory_order_acq_rel);
  const bool warm = offset / layout.segment_size < kWarmSlots;
  if (before != 1 || carried == 0 || (warm && carried <= kReuseMaxBytes)) return;
  for (uint32_t i = 0; i < kRingCount; ++i) {
    madvise(static_cast<std::byte*>(base) + layout.ring_data_offset[i], layout.ring_capacity[i],
            MADV_REMOVE);
  }
}

// Validates the segment at `offset` of a mapped file of `size` bytes from an
// untrusted peer; its size comes from its header.
int ValidateSlot(const std::byte* base, uint64_t size, uint64_t offset, SegmentLayout* out) {
  const void* slot = nullptr;
  uint64_t slot_size = 0;
  if (!SegmentAt(base, size, offset, &slot, &slot_size) || slot_size % kSmallPage != 0) {
    return -EINVAL;
  }
  return ValidateSegmentHeader(slot, slot_size, out);
}

// A new arena for segments of `layout`, published in a free entry of
// g_arenas, or null.
SharedMap* GrowArenas(const SegmentLayout& layout, const SegmentOptions& opts, bool thp) {
  const PagePolicy policy = opts.pages;
  const uint64_t slots = std::min<uint64_t>(kArenaSlots, kArenaMaxBytes / layout.segment_size);
  if (slots < 4 || g_arena_grow.test_and_set(std::memory_order_acquire)) return nullptr;
  SharedMap* made = nullptr;
  for (std::atomic<SharedMap*>& a : g_arenas) {
    if (a.load(std::memory_order_relaxed) != nullptr) continue;
    int fd = -1;
    void* base = nullptr;
    const uint64_t size = slots * layout.segment_size;
    if (CreateSealedMapping(size, false, &fd, &base) != 0) break;
    auto* m = new (std::nothrow) SharedMap;
    struct stat st;
    if (m == nullptr || fstat(fd, &st) != 0) {
      delete m;
      munmap(base, size);
      close(fd);
      break;
    }
    m->fd = fd;
    m->base = static_cast<std::byte*>(base);
    m->size = size;
    m->dev = static_cast<uint64_t>(st.st_dev);
    m->ino = static_cast<uint64_t>(st.st_ino);
    m->key.store(opts.arena_key, std::memory_order_relaxed);
    m->policy = policy;
    m->layout = layout;
    m->slots = static_cast<uint32_t>(slots);
    if (policy != PagePolicy::kSmall && thp && madvise(base, size, MADV_HUGEPAGE) == 0) {
      m->placement.pages = PageKind::kTransparentHuge;
    }
    m->placement.numa_available = NumaAvailable();
    // release: the fields above are visible to whoever loads the entry.
    a.store(m, std::memory_order_release);
    made = m;
    break;
  }
  if (made == nullptr) {
    // The table is full: each listener this process ever connected to took
    // an arena, and they are never freed (a connect may be using one without
    // a reference yet). Without this, every connection to a later listener
    // went outside arenas, so its door socket was never kept for reuse, for
    // the rest of the process's life (a client whose servers restart; the
    // conformance suite, flakily). The arena with the fewest references
    // (segments and kept sockets in it) and the same page policy and slot
    // layout now serves the new listener too. Nothing breaks: slots are
    // taken only once released, and each side names an arena by its memfd;
    // only the one-arena-per-listener separation between listeners of this
    // uid goes (arenas are made only for servers of our own uid).
    SharedMap* best = nullptr;
    int32_t best_refs = INT32_MAX;
    for (std::atomic<SharedMap*>& a : g_arenas) {
      SharedMap* m = a.load(std::memory_order_acquire);
      if (m == nullptr || m->policy != policy || m->layout.segment_size != layout.segment_size ||
          m->layout.ring_capacity[0] != layout.ring_capacity[0] ||
          m->layout.ring_capacity[1] != layout.ring_capacity[1]) {
        continue;
      }
      const int32_t r = m->refs.load(std::memory_order_relaxed);
      if (r < best_refs) {
        best = m;
        best_refs = r;
      }
    }
    if (best != nullptr) {
      best->key.store(opts.arena_key, std::memory_order_relaxed);
      made = best;
    }
  }
  g_arena_grow.clear(std::memory_order_release);
  return made;
}

// Takes a free, released slot of arena m for a new connection, or false.
bool TakeSlot(SharedMap* m, uint32_t* slot_out, uint32_t* generation_out) {
  // The slots after the cursor went out longest ago, so they are the ones
  // a receiver released first: if a few of them are still unreleased (a
  // receiver that lags), the rest are too, and each look at a slot's header
  // is a cache and TLB miss (measured: 5% of a connect with 128 looks).
  constexpr int kMaxUnreleased = 4;
  int unreleased = 0;
  const uint32_t start = m->cursor.load(std::memory_order_relaxed);
  for (uint32_t k = 0; k < m->slots && unreleased < kMaxUnreleased; ++k) {
    const uint32_t i = (start + k) % m->slots;
    uint64_t w = m->slot[i].load(std::memory_order_relaxed);
    if ((w & 0xff) != kSlotFree) continue;
    const auto gen = static_cast<uint32_t>(w >> 8);
    // Claimed first, then checked: the header is only ever read by the
    // slot's holder (another thread may be re-initialising a slot it just
    // took). acquire: pairs with the release that freed the slot (the
    // previous holder's accesses, its page freeing, happen before ours).
    if (!m->slot[i].compare_exchange_strong(w, uint64_t{gen} << 8 | kSlotHeld,
                                            std::memory_order_acquire)) {
      continue;
    }
    std::byte* base = m->base + uint64_t{i} * m->layout.segment_size;
    // acquire: pairs with the receiver's release in Recycle (as for the pool).
    if (gen != 0 &&
        std::atomic_ref<uint32_t>(HeaderOf(base)->released).load(std::memory_order_acquire) !=
            gen) {
      m->slot[i].store(w, std::memory_order_release);  // back, untouched
      ++unreleased;
      continue;
    }
    const uint32_t next = gen + 1 == 0 ? 1 : gen + 1;
    m->slot[i].store(uint64_t{next} << 8 | kSlotHeld, std::memory_order_relaxed);
    m->cursor.store((i + 1) % m->slots, std::memory_order_relaxed);
    *slot_out = i;
    *generation_out = next;
    return true;
  }
  // Next time, look further: slots whose receiver died without releasing
  // them must not hide the others for good.
  m->cursor.store((start + kMaxUnreleased) % m->slots, std::memory_order_relaxed);
  return false;
}

}  // namespace

// The arena that last had a free slot: the search starts there.
namespace {
std::atomic<int> g_arena_hint{0};
}  // namespace

int Segment::CreateInArena(const SegmentOptions& opts, const SegmentLayout& layout, bool thp,
                           Segment* out) {
  for (int pass = 0; pass < 2; ++pass) {
    const int first = g_arena_hint.load(std::memory_order_relaxed);
    for (int k = 0; k < kMaxArenas; ++k) {
      const int ai = (first + k) % kMaxArenas;
      SharedMap* m = g_arenas[ai].load(std::memory_order_acquire);
      if (m == nullptr || m->key.load(std::memory_order_relaxed) != opts.arena_key ||
          m->policy != opts.pages || m->layout.ring_capacity[0] != layout.ring_capacity[0] ||
          m->layout.ring_capacity[1] != layout.ring_capacity[1]) {
        continue;
      }
      uint32_t slot = 0, gen = 0;
      if (!TakeSlot(m, &slot, &gen)) continue;
      g_arena_hint.store(ai, std::memory_order_relaxed);
      m->refs.fetch_add(1, std::memory_order_relaxed);
      const uint64_t offset = uint64_t{slot} * layout.segment_size;
      InitializeSegment(m->base + offset, layout, m->placement.pages, gen);
      AssembleSlot(m, offset, layout, gen, out);
      out->policy_ = opts.pages;
      out->slot_ = slot;
      out->slot_owner_ = true;
      return 0;
    }
    if (pass == 0 && GrowArenas(layout, opts, thp) == nullptr) break;
  }
  return -ENOSPC;
}

void Segment::Discard() && {
  if (map_ != nullptr && slot_owner_) {
    // Never sent: no receiver will release it; it is free at once.
    std::atomic_ref<uint32_t>(HeaderOf(base_)->released)
        .store(generation_, std::memory_order_relaxed);
    map_->slot[slot_].store(uint64_t{generation_} << 8 | kSlotFree, std::memory_order_release);
    Unref(std::exchange(map_, nullptr));
    slot_owner_ = false;
    fd_ = -1;
    base_ = nullptr;
  }
  *this = Segment();
}

void Segment::Recycle(Role self) && {
  if (!valid()) return;
  if (map_ != nullptr) {
    FinishSlotEnd(base_, layout_, offset_);
    if (self == Role::kServer) {
      // release: as below; also orders FinishSlotEnd's page freeing first.
      std::atomic_ref<uint32_t>(HeaderOf(base_)->released)
          .store(generation_, std::memory_order_release);
    } else if (slot_owner_) {
      map_->slot[slot_].store(uint64_t{generation_} << 8 | kSlotFree, std::memory_order_release);
    }
    Unref(std::exchange(map_, nullptr));
    slot_owner_ = false;
    fd_ = -1;
    base_ = nullptr;
    return;
  }
  const bool light = MostCarried(base_) <= kReuseMaxBytes;
  PoolEntry e;
  e.fd = fd_;
  e.base = base_;
  e.size = size_;
  e.layout = layout_;
  e.placement = placement_;
  e.generation = generation_;
  e.policy = policy_;
  e.dev = dev_;
  e.ino = ino_;
  if (self == Role::kServer) {
    e.fd = -1;  // the mapping is enough (see segment.h)
    // release: all of this process's accesses to the segment for this
    // connection happen before the creator's acquire load in Create, after
    // which it re-initialises the segment for another connection.
    std::atomic_ref<uint32_t>(HeaderOf(base_)->released)
        .store(generation_, std::memory_order_release);
  }
  if (!light) return;  // the destructor unmaps and closes
  if (self == Role::kServer) close(fd_);
  fd_ = -1;
  base_ = nullptr;
  PutInPool(g_pool[static_cast<int>(self)], e);
}

int ReusePoolFds(int* out, int max) {
  int n = 0;
  for (ReusePool& pool : g_pool) {
    for (PoolEntry& e : pool.entry) {
      int fd = std::atomic_ref<int>(e.fd).load(std::memory_order_relaxed);
      if (fd >= 0 && n < max) out[n++] = fd;
    }
  }
  for (std::atomic<SharedMap*>& a : g_arenas) {
    SharedMap* m = a.load(std::memory_order_acquire);
    if (m != nullptr && n < max) out[n++] = m->fd;
  }
  // The peers' arenas kept mapped hold an fd each. A bounded wait for the
  // table: its holder may be the thread this runs on (a signal handler).
  for (int tries = 0; tries < 10000; ++tries) {
    if (!g_remote.TryLock()) {
      sched_yield();
      continue;
    }
    for (SharedMap* m : g_remote.entry) {
      if (m != nullptr && n < max) out[n++] = m->fd;
    }
    g_remote.Unlock();
    break;
  }
  return n;
}

// ------------------------------------------------------------------ Segment

ArenaSlotRef Segment::SlotRef() const {
  ArenaSlotRef w;
  if (map_ == nullptr) return w;
  map_->refs.fetch_add(1, std::memory_order_relaxed);  // as AssembleSlot's callers
  w.map_ = map_;
  w.offset_ = offset_;
  w.slot_ = slot_;
  w.generation_ = generation_;
  return w;
}

ArenaSlotRef::~ArenaSlotRef() {
  if (map_ != nullptr) Unref(map_);
}

ArenaSlotRef::ArenaSlotRef(ArenaSlotRef&& o) noexcept
    : map_(std::exchange(o.map_, nullptr)),
      offset_(o.offset_),
      slot_(o.slot_),
      generation_(o.generation_) {}

ArenaSlotRef& ArenaSlotRef::operator=(ArenaSlotRef&& o) noexcept {
  if (this != &o) {
    this->~ArenaSlotRef();
    new (this) ArenaSlotRef(std::move(o));
  }
  return *this;
}

bool ArenaSlotRef::SameArena(const Segment& seg) const {
  return map_ != nullptr && seg.map_ == map_;
}

SlotIdentity ArenaSlotRef::Identity() const {
  SlotIdentity id;
  if (map_ == nullptr) return id;
  id.dev = map_->dev;
  id.ino = map_->ino;
  id.offset = offset_;
  id.generation = generation_;
  return id;
}

int Segment::AttachBeside(const ArenaSlotRef& beside, uint64_t offset, Segment* out) {
  SharedMap* m = beside.map_;
  if (m == nullptr) return -EINVAL;
  SegmentLayout layout;
  int rc = ValidateSlot(m->base, m->size, offset, &layout);
  if (rc != 0) return rc;
  m->refs.fetch_add(1, std::memory_order_relaxed);  // *out's
  AssembleSlot(m, offset, layout, 0, out);
  return 0;
}

bool ArenaSlotRef::Released() const {
  if (map_ == nullptr) return false;
  // A slot handed out again (a later generation) was released before:
  // TakeSlot checks that under the same word. acquire: pairs with the
  // release stores of TakeSlot's caller and of Recycle.
  const uint64_t w = map_->slot[slot_].load(std::memory_order_acquire);
  if (static_cast<uint32_t>(w >> 8) != generation_) return true;
  // acquire: pairs with the receiver's release store in Recycle, so that
  // whatever it did before releasing (the runtime parks its end of the door
  // socket) happens before what the caller does next.
  return std::atomic_ref<uint32_t>(HeaderOf(map_->base + offset_)->released)
             .load(std::memory_order_acquire) == generation_;
}

Segment::~Segment() {
  if (map_ != nullptr) {
    // Not recycled (shared by fork, or given up): never handed out again.
    if (slot_owner_) {
      map_->slot[slot_].store(uint64_t{generation_} << 8 | kSlotRetired, std::memory_order_release);
    }
    Unref(map_);
    return;
  }
  if (base_ != nullptr) munmap(base_, size_);
  if (fd_ >= 0) close(fd_);
}

Segment::Segment(Segment&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)),
      base_(std::exchange(o.base_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      layout_(o.layout_),
      placement_(o.placement_),
      generation_(o.generation_),
      policy_(o.policy_),
      dev_(o.dev_),
      ino_(o.ino_),
      map_(std::exchange(o.map_, nullptr)),
      slot_(o.slot_),
      slot_owner_(std::exchange(o.slot_owner_, false)),
      offset_(std::exchange(o.offset_, 0)) {}

Segment& Segment::operator=(Segment&& o) noexcept {
  if (this != &o) {
    this->~Segment();
    new (this) Segment(std::move(o));
  }
  return *this;
}

namespace {

int LayoutFor(const SegmentOptions& opts, bool hugetlb, uint64_t huge_page, SegmentLayout* layout) {
  uint64_t total_align = hugetlb ? huge_page : kSmallPage;
  // Rings of at least a huge page get huge-page aligned data (so each can be
  // NUMA-bound on its own); smaller ones are packed into shared pages.
  uint64_t data_align = kSmallPage;
  if (hugetlb && opts.ring_capacity[0] >= huge_page && opts.ring_capacity[1] >= huge_page)
    data_align = huge_page;
  return ComputeLayout(opts.ring_capacity, data_align, total_align, layout);
}

int TryCreate(const SegmentOptions& opts, bool hugetlb, uint64_t huge_page, int* fd_out,
              void** base_out, SegmentLayout* layout) {
  int rc = LayoutFor(opts, hugetlb, huge_page, layout);
  if (rc != 0) return rc;
  return CreateSealedMapping(layout->segment_size, hugetlb, fd_out, base_out);
}

}  // namespace

int Segment::Create(const SegmentOptions& opts, Segment* out) {
  if (opts.reuse && opts.arena && opts.pages != PagePolicy::kHugeTlb) {
    // Not where hugetlb pages may be had: those segments stay single.
    PageSupport sup = RecentPageSupport(false);
    SegmentLayout l;
    if ((opts.pages != PagePolicy::kAuto || sup.hugetlb_available_pages == 0) &&
        LayoutFor(opts, false, 0, &l) == 0 && CreateInArena(opts, l, sup.shmem_thp, out) == 0) {
      return 0;
    }
  }
  PoolEntry reused;
  if (opts.reuse && TakeFromPool(
                        g_pool[static_cast<int>(Role::kClient)],
                        [&](const PoolEntry& e) {
                          // acquire: pairs with the receiver's release in Recycle.
                          return e.policy == opts.pages &&
                                 e.layout.ring_capacity[0] == opts.ring_capacity[0] &&
                                 e.layout.ring_capacity[1] == opts.ring_capacity[1] &&
                                 std::atomic_ref<uint32_t>(HeaderOf(e.base)->released)
                                         .load(std::memory_order_acquire) == e.generation;
                        },
                        &reused)) {
    uint32_t gen = reused.generation + 1 == 0 ? 1 : reused.generation + 1;
    InitializeSegment(reused.base, reused.layout, reused.placement.pages, gen);
    Assemble(reused.fd, reused.base, reused.size, reused.layout, reused.placement, gen, out);
    out->policy_ = reused.policy;
    out->dev_ = reused.dev;
    out->ino_ = reused.ino;
    return 0;
  }
  PageSupport sup = RecentPageSupport(opts.pages == PagePolicy::kHugeTlb);
  int fd = -1;
  void* base = nullptr;
  SegmentLayout layout;
  Placement pl;
  int rc = -ENOMEM;
  const bool huge_ok = sup.hugetlb_page_size >= kSmallPage && IsPow2(sup.hugetlb_page_size);
  bool want_hugetlb = opts.pages == PagePolicy::kHugeTlb;
  if (opts.pages == PagePolicy::kAuto && huge_ok && sup.hugetlb_available_pages > 0) {
    // Only if the pool has the pages this segment needs, not yet reserved by
    // other mappings: the kernel reserves them all at mmap, so with fewer
    // the attempt (memfd_create, ftruncate, mmap) fails anyway. A reading up
    // to a second old may still be wrong either way; a failure falls back.
    SegmentLayout l;
    want_hugetlb = LayoutFor(opts, true, sup.hugetlb_page_size, &l) == 0 &&
                   sup.hugetlb_available_pages >= l.segment_size / sup.hugetlb_page_size;
  }
  if (want_hugetlb && huge_ok) {
    rc = TryCreate(opts, true, sup.hugetlb_page_size, &fd, &base, &layout);
    if (rc == 0) {
      pl.pages = PageKind::kHugeTlb;
      pl.page_size = sup.hugetlb_page_size;
      NoteHugePagesTaken(layout.segment_size / sup.hugetlb_page_size);
    } else {
      ForgetPageReading();
    }
  }
  if (rc != 0) {
    if (opts.pages == PagePolicy::kHugeTlb) return rc == -EINVAL ? rc : -ENOMEM;
    rc = TryCreate(opts, false, 0, &fd, &base, &layout);
    if (rc != 0) return rc;
    pl.pages = PageKind::kSmall;
    pl.page_size = kSmallPage;
    if (opts.pages != PagePolicy::kSmall && sup.shmem_thp &&
        madvise(base, layout.segment_size, MADV_HUGEPAGE) == 0) {
      pl.pages = PageKind::kTransparentHuge;
    }
  }
  InitializeSegment(base, layout, pl.pages);
  pl.numa_available = NumaAvailable();
  Assemble(fd, base, layout.segment_size, layout, pl, 1, out);
  out->policy_ = opts.pages;
  // Its identity, once: the stats name a connection by it, and a reused
  // segment keeps it (no fstat per connection).
  struct stat st;
  if (fstat(fd, &st) == 0) {
    out->dev_ = static_cast<uint64_t>(st.st_dev);
    out->ino_ = static_cast<uint64_t>(st.st_ino);
  }
  return 0;
}

int Segment::AttachAt(int fd, uint64_t offset, Segment* out, bool hugetlb) {
  struct stat st;
  if (fstat(fd, &st) != 0) return -errno;
  auto dev = static_cast<uint64_t>(st.st_dev);
  auto ino = static_cast<uint64_t>(st.st_ino);
  PoolEntry cached;
  // A memfd we mapped before and still have mapped (so its inode cannot
  // have been reused): it passed CheckSegmentFd then, and its seals and size
  // cannot have changed since (F_SEAL_SEAL, F_SEAL_GROW, F_SEAL_SHRINK).
  if (offset == 0 &&
      TakeFromPool(
          g_pool[static_cast<int>(Role::kServer)],
          [&](const PoolEntry& e) { return e.dev == dev && e.ino == ino; }, &cached)) {
    if (!hugetlb && cached.placement.pages == PageKind::kHugeTlb) {
      Destroy(cached);
      return -EPERM;
    }
    SegmentLayout layout;
    int rc = ValidateSegmentHeader(cached.base, cached.size, &layout);
    if (rc != 0) {
      Destroy(cached);
      return rc;
    }
    Assemble(fd, cached.base, cached.size, layout, cached.placement, 0, out);
    out->dev_ = dev;
    out->ino_ = ino;
    return 0;
  }
  // An arena we have mapped (the same reasoning): one of our own (a
  // connection within this process: one mapping for both ends, which also
  // keeps TSAN's view of their synchronisation whole), or a peer's.
  SharedMap* m = nullptr;
  for (std::atomic<SharedMap*>& a : g_arenas) {
    SharedMap* own = a.load(std::memory_order_acquire);
    if (own != nullptr && own->dev == dev && own->ino == ino) {
      // Never freed while listed (only a fork child drops them).
      own->refs.fetch_add(1, std::memory_order_relaxed);
      m = own;
      break;
    }
  }
  bool table_locked = m == nullptr && g_remote.TryLock();
  if (table_locked) {
    for (SharedMap* e : g_remote.entry) {
      if (e != nullptr && e->dev == dev && e->ino == ino) {
        m = e;
        m->refs.fetch_add(1, std::memory_order_relaxed);
        m->stamp = ++g_remote.clock;
        break;
      }
    }
    g_remote.Unlock();
  }
  if (m != nullptr) {
    SegmentLayout layout;
    int rc = ValidateSlot(m->base, m->size, offset, &layout);
    if (rc != 0) {
      Unref(m);
      return rc;
    }
    close(fd);  // the arena's first fd serves (ownership taken on success)
    AssembleSlot(m, offset, layout, 0, out);
    return 0;
  }
  uint64_t size = 0, block = 0;
  int rc = CheckSegmentFd(fd, &size, &block);
  if (rc != 0) return rc;
  if (!hugetlb && block > kSmallPage) return -EPERM;
  if (offset % block != 0) return -EINVAL;
  void* base = nullptr;
  rc = MapSegmentFd(fd, size, &base);
  if (rc != 0) return rc;
  SegmentLayout layout;
  rc = ValidateSlot(static_cast<std::byte*>(base), size, offset, &layout);
  if (rc != 0) {
    munmap(base, size);
    return rc;
  }
  Placement pl;
  if (block > kSmallPage) {
    pl.pages = PageKind::kHugeTlb;
    pl.page_size = block;
  } else if (RecentPageSupport(false).shmem_thp && madvise(base, size, MADV_HUGEPAGE) == 0) {
    pl.pages = PageKind::kTransparentHuge;
  }
  pl.numa_available = NumaAvailable();
  if (offset == 0 && layout.segment_size == size) {
    Assemble(fd, base, size, layout, pl, 0, out);
    out->dev_ = dev;
    out->ino_ = ino;
    return 0;
  }
  // An arena: the mapping is shared by its slots, and kept for the next
  // ones (in the table, evicting the oldest entry no segment uses).
  m = new (std::nothrow) SharedMap;
  if (m == nullptr) {
    munmap(base, size);
    return -ENOMEM;
  }
  m->fd = fd;
  m->base = static_cast<std::byte*>(base);
  m->size = size;
  m->dev = dev;
  m->ino = ino;
  m->placement = pl;
  m->refs.store(1, std::memory_order_relaxed);  // this segment's
  SharedMap* evicted = nullptr;
  if (table_locked && g_remote.TryLock()) {
    int free_at = -1;
    for (int i = 0; i < kRemoteArenas; ++i) {
      SharedMap* e = g_remote.entry[i];
      if (e == nullptr) {
        free_at = i;
        break;
      }
      // refs 1: only the table holds it, and only this (locked) code adds.
      if (e->refs.load(std::memory_order_acquire) == 1 &&
          (free_at < 0 || e->stamp < g_remote.entry[free_at]->stamp)) {
        free_at = i;
      }
    }
    if (free_at >= 0) {
      evicted = g_remote.entry[free_at];
      m->refs.fetch_add(1, std::memory_order_relaxed);  // the table's
      m->stamp = ++g_remote.clock;
      g_remote.entry[free_at] = m;
    }
    g_remote.Unlock();
  }
  if (evicted != nullptr) Unref(evicted);
  AssembleSlot(m, offset, layout, 0, out);
  return 0;
}

void Segment::AssembleSlot(SharedMap* m, uint64_t offset, const SegmentLayout& layout,
                           uint32_t generation, Segment* out) {
  Assemble(m->fd, m->base + offset, layout.segment_size, layout, m->placement, generation, out);
  out->dev_ = m->dev;
  out->ino_ = m->ino;
  out->map_ = m;  // the caller's reference on m goes to *out
  out->offset_ = offset;
}

void Segment::Assemble(int fd, void* base, uint64_t size, const SegmentLayout& layout,
                       const Placement& placement, uint32_t generation, Segment* out) {
  Segment s;
  s.fd_ = fd;
  s.base_ = base;
  s.size_ = size;
  s.layout_ = layout;
  s.placement_ = placement;
  // 0: the receiver's view, the generation the creator wrote (untrusted;
  // only echoed back in Recycle).
  s.generation_ =
      generation != 0
          ? generation
          : std::atomic_ref<uint32_t>(HeaderOf(base)->generation).load(std::memory_order_relaxed);
  *out = std::move(s);
}

int Segment::BindIncomingRing(Role self, int node) {
  DOORWAY_CHECK(valid());
  return BindRingToNode(base_, layout_, RxRingIndex(self), node, &placement_);
}

Ring Segment::MakeRing(uint32_t ring, RingStats* stats) const {
  DOORWAY_CHECK(valid() && ring < kRingCount);
  auto* prefix = static_cast<SegmentPrefix*>(base_);
  return Ring(&prefix->ring[ring], static_cast<std::byte*>(base_) + layout_.ring_data_offset[ring],
              layout_.ring_capacity[ring], stats);
}

ShmMutex Segment::ProducerLock(uint32_t ring) const {
  DOORWAY_CHECK(valid() && ring < kRingCount);
  return ShmMutex(&static_cast<SegmentPrefix*>(base_)->ring[ring].prod_lock.word);
}

ShmMutex Segment::ConsumerLock(uint32_t ring) const {
  DOORWAY_CHECK(valid() && ring < kRingCount);
  return ShmMutex(&static_cast<SegmentPrefix*>(base_)->ring[ring].cons_lock.word);
}

void Segment::MarkDoorDropped() const {
  if (base_ == nullptr) return;
  // release/acquire: nothing to publish but the value; kept symmetrical
  // with `released`.
  std::atomic_ref<uint32_t>(HeaderOf(base_)->door_dropped)
      .store(generation_, std::memory_order_release);
}

bool Segment::DoorDropped() const {
  if (base_ == nullptr || generation_ == 0) return false;
  return std::atomic_ref<uint32_t>(HeaderOf(base_)->door_dropped).load(std::memory_order_acquire) ==
         generation_;
}

void Segment::MarkPeerGone(Role self) const {
  Ring rx = MakeRxRing(self, nullptr);
  Ring tx = MakeTxRing(self, nullptr);
  rx.MarkWriterGone();
  tx.MarkReaderGone();
}

}  // namespace doorway::transport

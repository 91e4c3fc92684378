// A connection's shared-memory segment: one sealed memfd holding a header and
// two byte rings, ring 0 client->server and ring 1 server->client
// (internal/layout.h has the byte layout).
//
// Life cycle:
//   creator (the connecting side)            receiver (the accepting side)
//   Segment::Create(opts) ------- fd via SCM_RIGHTS ------> Segment::Attach(fd)
//     CreateSegmentMemfd  (memfd_create, ftruncate)          CheckSegmentFd   (seals, size)
//     SealSegmentFd       (F_SEAL_SHRINK|GROW|SEAL)          MapSegmentFd
//     MapSegmentFd        (mmap MAP_SHARED)                  ValidateSegmentHeader (untrusted)
//     InitializeSegment   (header, control blocks)
//   then each side: BindIncomingRing (NUMA node of the consumer) and
//   MakeTxRing/MakeRxRing for its Ring views.
//
// The memfd has no name in any file system: when both processes have closed
// it (or died), the kernel frees it. Nothing is left in /dev/shm.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>

#include "transport/ring.h"
#include "transport/shm_mutex.h"

namespace doorway::transport {

enum class Role : uint8_t { kClient = 0, kServer = 1 };
inline constexpr uint32_t kClientToServer = 0;  // ring index
inline constexpr uint32_t kServerToClient = 1;
inline constexpr uint32_t TxRingIndex(Role r) { return r == Role::kClient ? 0 : 1; }
inline constexpr uint32_t RxRingIndex(Role r) { return r == Role::kClient ? 1 : 0; }

// Ring capacity limits, and the default. 1 MiB per direction: in the
// streaming benchmark (docs/transport.md §7, §9) 64 KiB chunks through a
// 256 KiB ring reach less than half the throughput of a 1 MiB ring (the two
// cores then hand the same lines back and forth through their L2s), and 4 MiB
// gains nothing over 1 MiB. The cost is up to 2 MiB of shared memory per busy
// connection (pages are allocated on first use).
inline constexpr uint64_t kMinRingCapacity = 4096;
inline constexpr uint64_t kMaxRingCapacity = uint64_t{1} << 30;
inline constexpr uint64_t kDefaultRingCapacity = uint64_t{1} << 20;
inline constexpr uint64_t kMaxSegmentSize = uint64_t{3} << 30;

// The ring capacity for a requested buffer size (SO_SNDBUF/SO_RCVBUF):
// rounded up to a power of two and clamped to [kMinRingCapacity,
// kMaxRingCapacity]; 0 gives the default.
uint64_t RingCapacityFor(uint64_t requested_bytes);

enum class PageKind : uint8_t {
  kSmall = 0,            // 4 KiB pages
  kTransparentHuge = 1,  // shmem THP requested with MADV_HUGEPAGE
  kHugeTlb = 2,          // MFD_HUGETLB from the huge-page pool
};
const char* PageKindName(PageKind k);

enum class PagePolicy : uint8_t {
  kAuto = 0,       // hugetlb if a pool has free pages, else THP if shmem allows, else small
  kSmall = 1,      // always 4 KiB pages
  kNoHugeTlb = 2,  // THP if allowed, else small
  kHugeTlb = 3,    // hugetlb or fail (-ENOMEM)
};

// What the system offers (read from /proc and /sys each call).
struct PageSupport {
  uint64_t hugetlb_free_pages = 0;       // HugePages_Free (reserved ones included)
  uint64_t hugetlb_available_pages = 0;  // HugePages_Free - HugePages_Rsvd
  uint64_t hugetlb_page_size = 0;        // Hugepagesize, bytes
  bool shmem_thp = false;                // shmem_enabled is always/within_size/advise/force
};
PageSupport DetectPageSupport();

// What a segment got. Process-local (the creator's and the receiver's views
// may differ in the NUMA part: each side binds the ring it consumes).
struct Placement {
  PageKind pages = PageKind::kSmall;
  uint64_t page_size = 4096;  // mapping granularity
  bool numa_available = false;
  int numa_node[2] = {-1, -1};  // node a ring's data was bound to, -1 = not bound
  int numa_error[2] = {0, 0};   // errno of a failed mbind, 0 = ok / not tried
};

struct SegmentOptions {
  uint64_t ring_capacity[2] = {kDefaultRingCapacity, kDefaultRingCapacity};
  PagePolicy pages = PagePolicy::kAuto;
  // Create may hand out a segment of an earlier connection that its
  // receiver has released (see "Reuse" below). Only for a peer that may see
  // this process's memory anyway (same uid): the previous peer still has the
  // segment mapped.
  bool reuse = false;
  // With reuse: Create may carve the segment out of an arena shared with
  // other connections of this process (see "Arenas" below) made with the
  // same arena_key (the runtime: the listener's door), so that a peer only
  // ever maps the segments of connections to itself.
  bool arena = false;
  uint64_t arena_key = 0;
};

// Validated geometry, copied out of the header once (never re-read).
struct SegmentLayout {
  uint64_t segment_size = 0;
  uint64_t ring_capacity[2] = {0, 0};
  uint64_t ring_data_offset[2] = {0, 0};
};

// ---- building blocks (each tested on its own) ----

// Computes the layout for the given capacities (powers of two within limits,
// else -EINVAL): data areas aligned to `data_align`, the total rounded up to
// `total_align` (the page size of the memfd).
int ComputeLayout(const uint64_t capacity[2], uint64_t data_align, uint64_t total_align,
                  SegmentLayout* out);
// memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING [| MFD_HUGETLB]) + ftruncate.
int CreateSegmentMemfd(uint64_t size, bool hugetlb, int* fd_out);
// Applies F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL.
int SealSegmentFd(int fd);
// Checks an fd from an untrusted peer: a memfd (F_GET_SEALS works) carrying
// SHRINK, GROW and SEAL but no write seals, a regular file whose size is a
// multiple of its block size (4 KiB, or the huge page size for hugetlb) and
// within limits. Returns 0 and the size and block size, or -EINVAL/-errno.
int CheckSegmentFd(int fd, uint64_t* size_out, uint64_t* block_out);
// mmap(PROT_READ|PROT_WRITE, MAP_SHARED). Returns 0 or -errno.
int MapSegmentFd(int fd, uint64_t size, void** base_out);
// Writes the header and zeroes the control blocks (creator only; does not
// touch the data areas, so they get their pages on first use by the side that
// touches them, after NUMA binding). `generation` distinguishes the
// connections that reuse one segment (never 0).
void InitializeSegment(void* base, const SegmentLayout& layout, PageKind kind,
                       uint32_t generation = 1);
// Validates a mapped segment of `size` bytes from an untrusted peer: magic,
// version, prefix size, segment size, ring count, control offsets, capacities
// (power of two, limits), data offsets (aligned, inside, disjoint from each
// other and from the prefix). Reads the header once into a local copy.
// Returns 0 and the layout, or -EPROTO (bad magic/version) / -EINVAL.
int ValidateSegmentHeader(const void* base, uint64_t size, SegmentLayout* out);
// The segment at `offset` of a mapped memfd of `size` bytes (an arena slot,
// see "Arenas"; offset 0 for a single segment): its start and its size as
// its header states it (untrusted: only checked to lie inside). False if it
// cannot be a segment there. ValidateSegmentHeader(*slot, *slot_size)
// validates the rest.
bool SegmentAt(const void* base, uint64_t size, uint64_t offset, const void** slot,
               uint64_t* slot_size);
// Binds the data pages of `ring` to `node` (mbind MPOL_PREFERRED, moving pages
// already faulted). node < 0: the node of the calling CPU. Returns 0 or
// -errno (-ENOSYS without NUMA support); records the result in *placement.
int BindRingToNode(void* base, const SegmentLayout& layout, uint32_t ring, int node,
                   Placement* placement);

// ---- the owning object ----
//
// Reuse. Creating a segment (memfd_create, ftruncate, seals, mmap, first-touch
// page faults, and later munmap and close) is about a third of the cost of
// setting up an accelerated connection, and the receiver's mmap and munmap
// as much again on its side. So a closed connection's segment may be kept
// for the next one (Recycle):
//   * the creator keeps it in a small per-process pool and hands it out
//     again (Create with opts.reuse) only once the receiver has stored the
//     segment's generation into `released`, i.e. promised never to touch it
//     again for that connection; it then re-initialises it with the next
//     generation;
//   * the receiver, when its connection ends, releases it and keeps its
//     mapping (and its fd, so that the inode cannot be reused) in a small
//     cache: an Attach of a memfd for the same file reuses the mapping.
// Both pools are bounded (the oldest entry goes when a new one comes), per
// process (a forked child drops what it inherited), and take their lock with
// try-lock only, so that Recycle from a signal handler never deadlocks (the
// segment is then just destroyed). The creator's pool holds an fd per entry
// (it sends it again), kCreatorPoolSize of them at most; the receiver's
// cache holds mappings only (a mapping keeps the file, so its inode cannot
// be reused while cached), more of them, because a client that opens
// connections faster than its server accepts them is ahead by that many
// segments. Only segments whose rings carried at most kReuseMaxBytes each
// way are kept: short connections are the ones whose set-up cost matters,
// and their segments have few pages in memory.
inline constexpr int kCreatorPoolSize = 8;
inline constexpr int kReceiverPoolSize = 32;
inline constexpr uint64_t kReuseMaxBytes = 64 << 10;

// Arenas. The pool above only helps while the receiver keeps up: a client
// that connects faster than its server accepts (a server preempted on a
// loaded machine is hundreds behind) finds every pooled segment still
// unreleased, and then both sides pay the whole cost again per connection
// (measured: 73% of connects created a memfd, the rate fell 2.5x), which
// slows the server further. So a creator with opts.arena carves segments
// out of arenas: one sealed memfd holding up to kArenaSlots segments of one
// geometry and key (one listener), at page-aligned offsets, mapped once by
// each side (the
// receiver keeps a few arenas mapped, refcounted by their live segments).
// A slot is handed out again once this process recycled it and the
// receiver released it (as above); a slot of a connection that was not
// recycled (shared by fork, or the receiver never released it) is never
// reused. A slot whose rings carried more than kReuseMaxBytes, or carried
// anything and is not among the first 8 of its arena, has its data pages
// freed (MADV_REMOVE) by whichever side finishes second, so an idle arena
// holds its headers and at most 8 slots' worth of small data pages. A forked child allocates no
// slot from arenas it inherited. Without a free slot or room for another arena, Create falls back
// to the pool and to a segment of its own. A server preempted on a loaded machine was measured
// thousands of connections behind (its door's backlog is SOMAXCONN): up to 4 096 slots of the
// default geometry (2 MiB, 1 MiB rings), 8 GiB of address space but only a header page each in
// memory.
inline constexpr uint32_t kArenaSlots = 128;
inline constexpr int kMaxArenas = 32;
inline constexpr uint64_t kArenaMaxBytes = uint64_t{256} << 20;  // of address space per arena
// The fds ReusePoolFds may list.
inline constexpr int kMaxReuseFds = kCreatorPoolSize + 3 * kMaxArenas;

struct SharedMap;  // an arena mapping (segment.cc)
class Segment;

// Which arena slot, as both peers name it: the arena memfd's identity, the
// slot's offset in it and the generation of the connection on it. The
// runtime's wake records (runtime/reuse.h) carry the client's to the
// server, which finds the door socket it parked for that connection.
struct SlotIdentity {
  uint64_t dev = 0;
  uint64_t ino = 0;
  uint64_t offset = 0;
  uint32_t generation = 0;
  uint32_t unused = 0;
  bool operator==(const SlotIdentity&) const = default;
};

// A reference to an arena slot of a connection, kept after the connection
// ends (it holds a reference on the arena's mapping). The runtime reuses a
// connection's door socket pair for the next connection (runtime/reuse.h):
//   * the creator asks Released(): whether the receiver has released the
//     slot (stored its generation into `released`, "Reuse" above), after
//     which it never touches it for that connection again (the runtime's
//     server parks its end of the door socket before releasing);
//   * the receiver attaches the next connection's slot in the same arena
//     without its memfd (Segment::AttachBeside): the client sends none when
//     it is the arena of the socket's previous connection.
class ArenaSlotRef {
 public:
  ArenaSlotRef() = default;
  ~ArenaSlotRef();
  ArenaSlotRef(ArenaSlotRef&& o) noexcept;
  ArenaSlotRef& operator=(ArenaSlotRef&& o) noexcept;
  ArenaSlotRef(const ArenaSlotRef&) = delete;
  ArenaSlotRef& operator=(const ArenaSlotRef&) = delete;

  bool valid() const { return map_ != nullptr; }
  // The creator's view only.
  bool Released() const;
  // Whether seg is a slot of the same arena.
  bool SameArena(const Segment& seg) const;
  // Its connection's slot (zero if !valid()).
  SlotIdentity Identity() const;

 private:
  friend class Segment;
  SharedMap* map_ = nullptr;
  uint64_t offset_ = 0;
  uint32_t slot_ = 0;
  uint32_t generation_ = 0;
};

class Segment {
  friend class ArenaSlotRef;

 public:
  Segment() = default;
  ~Segment();
  Segment(Segment&& o) noexcept;
  Segment& operator=(Segment&& o) noexcept;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  // Creates, seals, maps and initialises a new segment, picking pages by
  // opts.pages with fallback (hugetlb -> THP -> small, for kAuto).
  static int Create(const SegmentOptions& opts, Segment* out);
  // Validates and maps a segment received from a peer. Takes ownership of fd
  // on success only (on failure the caller still owns it).
  // hugetlb: whether a segment on huge pages (hugetlbfs) is accepted;
  // -EPERM if not. A peer that holds such a segment can punch a hole in it
  // and take every free huge page: our next access then faults with SIGBUS
  // (reliability.md). So only a peer that could kill us anyway (same uid)
  // may hand us one.
  static int Attach(int fd, Segment* out, bool hugetlb = true) {
    return AttachAt(fd, 0, out, hugetlb);
  }
  // The same for the segment at `offset` in fd's file (an arena slot:
  // offset() of the creator's Segment). Takes ownership of fd on success.
  static int AttachAt(int fd, uint64_t offset, Segment* out, bool hugetlb = true);

  bool valid() const { return base_ != nullptr; }
  // The memfd (for an arena slot, the arena's: shared with the other
  // connections on it, and owned by the arena).
  int fd() const { return fd_; }
  // Where this segment starts in fd's file (0 unless an arena slot).
  uint64_t offset() const { return offset_; }
  // Whether the memfd holds other connections' segments too (an arena).
  bool in_arena() const { return map_ != nullptr; }
  void* base() const { return base_; }
  const SegmentLayout& layout() const { return layout_; }
  const Placement& placement() const { return placement_; }
  // 1 for a new segment, higher each time it is reused.
  uint32_t generation() const { return generation_; }
  // The memfd's identity (st_dev, st_ino); 0 if unknown.
  uint64_t dev() const { return dev_; }
  uint64_t ino() const { return ino_; }

  // Binds the ring that `self` consumes to `node` (< 0: current CPU's node).
  int BindIncomingRing(Role self, int node = -1);

  // Views of the rings. A Ring keeps process-local caches: make one per end
  // and keep it (threads sharing it serialise with the lock of that end).
  Ring MakeRing(uint32_t ring, RingStats* stats) const;
  // The end views also advertise that this side's waiters fence (fence.h),
  // the producer on space_wait, the consumer on data_wait, if this process
  // registered: from the start, so that the peer publishes cheaply also on
  // the line whose waiters have not waited yet (a ping-pong's producer never
  // waits for space, yet every Read publishes the head).
  Ring MakeTxRing(Role self, RingStats* stats) const {
    Ring r = MakeRing(TxRingIndex(self), stats);
    AdvertiseFence(r.control()->space_wait);
    return r;
  }
  Ring MakeRxRing(Role self, RingStats* stats) const {
    Ring r = MakeRing(RxRingIndex(self), stats);
    AdvertiseFence(r.control()->data_wait);
    return r;
  }
  ShmMutex ProducerLock(uint32_t ring) const;
  ShmMutex ConsumerLock(uint32_t ring) const;

  // Gives the segment back for reuse (see above) instead of unmapping and
  // closing it. Only when this process will never touch it again for this
  // connection and no other process holds it through this process (fork,
  // exec): the receiver's release is a promise for all of them.
  void Recycle(Role self) &&;
  // A creator's segment that was never handed to a receiver (the door did
  // not answer): an arena slot is free again at once; anything else is
  // destroyed.
  void Discard() &&;

  // For an arena slot: a reference to it (invalid for anything else).
  ArenaSlotRef SlotRef() const;
  // The receiver's attach of the slot at `offset` of the arena `beside` is a
  // slot of (see ArenaSlotRef): validated as AttachAt does.
  static int AttachBeside(const ArenaSlotRef& beside, uint64_t offset, Segment* out);

  // The peer is gone (its door socket hung up): its writer becomes closed
  // (EOF after our Reads drain the data) and its reader too (our Writes get
  // -EPIPE), and our waiters are woken.
  void MarkPeerGone(Role self) const;

  // Door socket reuse (runtime/reuse.h): the receiver says it closes its
  // end of the connection's door socket instead of keeping it, so that the
  // creator does not keep its own end for a next connection (a hint
  // between peers of the same uid: the creator's keeping checks the socket
  // again before use). DoorDropped: whether the receiver said so for this
  // connection (the creator's view).
  void MarkDoorDropped() const;
  bool DoorDropped() const;

 private:
  int fd_ = -1;
  void* base_ = nullptr;
  uint64_t size_ = 0;
  SegmentLayout layout_;
  Placement placement_;
  uint32_t generation_ = 0;                // the header's generation when created/attached
  PagePolicy policy_ = PagePolicy::kAuto;  // creator: the policy it was made with
  uint64_t dev_ = 0, ino_ = 0;             // the memfd's identity (0: unknown)
  SharedMap* map_ = nullptr;               // the arena this is a slot of (else null)
  uint32_t slot_ = 0;
  bool slot_owner_ = false;  // the creator's view (it hands the slot out again)
  uint64_t offset_ = 0;

  // A slot of an arena (segment.h "Arenas"), or -ENOSPC.
  static int CreateInArena(const SegmentOptions& opts, const SegmentLayout& layout, bool thp,
                           Segment* out);
  // The slot at `offset` of arena m, into *out (which takes over a
  // reference on m that the caller holds).
  static void AssembleSlot(SharedMap* m, uint64_t offset, const SegmentLayout& layout,
                           uint32_t generation, Segment* out);
  // What Create and Attach built, into *out (replacing what it held).
  static void Assemble(int fd, void* base, uint64_t size, const SegmentLayout& layout,
                       const Placement& placement, uint32_t generation, Segment* out);
};

// The fds held by the creator's reuse pool and arenas (so that close_range
// and closefrom in the program leave them alone): at most kMaxReuseFds.
// Returns how many were written (at most max).
int ReusePoolFds(int* out, int max);

}  // namespace doorway::transport

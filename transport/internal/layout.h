// The bytes of a doorway segment, as both processes see them.
//
// Everything here lives in a memfd mapped by two mutually untrusting
// processes. Rules (CONVENTIONS.md "Shared memory"):
//   * offsets, never pointers;
//   * every field the peer can write is validated before use; immutable
//     fields (sizes, offsets) are validated once when the segment is attached
//     and then copied into process-local objects, never read again;
//   * the layout is fixed by static_asserts so that both sides (and future
//     versions) agree byte for byte.
//
//   offset 0      SegmentHeader       magic, version, sizes, ring offsets
//   offset 64     guard line
//   offset 128    RingControl[0]      client -> server ring control block
//   offset 128+R  RingControl[1]      server -> client ring control block
//   page aligned  ring 0 data         capacity[0] bytes (power of two)
//   page aligned  ring 1 data         capacity[1] bytes (power of two)
//
// A RingControl follows DPDK's rte_ring (lib/ring/rte_ring_core.h): the
// metadata line, then the producer's and the consumer's lines, each followed
// by a guard line (RTE_CACHE_GUARD) so that the adjacent-line prefetcher does
// not drag a line the other core is writing into a false-sharing pair.
// Lines that are written on every operation (the two indices) are separate
// from lines written only on rare events (shutdown state, waiter counts,
// locks), so that the hot path of one side keeps the rarely written lines of
// the other side in its cache (reading them is a hit).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace doorway::transport::internal {

inline constexpr size_t kCacheLine = 64;

// Values of StateLine::writer / StateLine::reader. Anything else read from
// shared memory is corruption (-EIO).
inline constexpr uint32_t kStateOpen = 0;
inline constexpr uint32_t kStateClosed = 1;  // writer: FIN (EOF after drain); reader: gone
inline constexpr uint32_t kStateReset = 2;   // abortive close: ECONNRESET for the other side

struct alignas(kCacheLine) GuardLine {
  std::byte pad[kCacheLine];
};

// Written by the creator before the segment is handed over; afterwards
// read-only by convention, but a hostile peer may still scribble on it, so the
// attaching side validates it once and keeps a local copy.
struct alignas(kCacheLine) RingMeta {
  uint64_t capacity;     // bytes, power of two
  uint64_t data_offset;  // from the segment base, page aligned
};

// A free-running 64-bit byte counter, masked with (capacity - 1) on access.
// prod.index ("tail") is written only by the producer side; cons.index
// ("head") only by the consumer side. 64 bits never wrap in practice
// (2^64 bytes at 100 GB/s is 5 years).
struct alignas(kCacheLine) IndexLine {
  std::atomic<uint64_t> index;
};

// Shutdown state of the ring, written once or twice per connection lifetime.
struct alignas(kCacheLine) StateLine {
  std::atomic<uint32_t> writer;  // written by the producer side
  std::atomic<uint32_t> reader;  // written by the consumer side
};

// A semaphore-like wake-up channel: `seq` is the futex word; `sleeping` is
// set by a thread that is about to sleep on it and cleared by the waker that
// wakes it. Wakers bump `seq` and call FUTEX_WAKE only when they clear a set
// flag, so a sleep costs the other side exactly one syscall, however many
// operations happen before the sleeper runs again (see wait.h).
//
// `armed` is the same idea for waits outside this library: a side about to
// wait in poll/epoll on its door socket arms the line; the other side's next
// publish clears it and tells its caller to send a one-byte doorbell.
//
// `cpu` (data_wait only) is 1 + the CPU that the ring's consumer side last
// waited on, 0 if unknown: the peer reads it to learn whether the two sides
// share a core (wait.h "Sharing a core"). A hint; a hostile value only
// changes whether the peer spins.
//
// `fenced` != 0: the waiters and armers of this line issue the heavy fence
// (transport/fence.h) between their flag store and their recheck, so a
// registered waker may publish with a plain store. Set by a waiting side
// whose process registered; never cleared while the connection lives (a
// waker that read it may be preempted before its store). Added without a
// version change: older builds leave it 0 and never read it, which is safe
// both ways (fence.h). A hostile value only costs the waiters a fence or
// loses the hostile side its own wake-ups.
struct alignas(kCacheLine) WaitLine {
  std::atomic<uint32_t> seq;
  std::atomic<uint32_t> sleeping;
  std::atomic<uint32_t> armed;
  std::atomic<uint32_t> cpu;
  std::atomic<uint32_t> fenced;
};
static_assert(offsetof(WaitLine, sleeping) == 4 && offsetof(WaitLine, armed) == 8);
static_assert(offsetof(WaitLine, cpu) == 12 && offsetof(WaitLine, fenced) == 16);
static_assert(sizeof(WaitLine) == kCacheLine);

// A cross-process mutex word (see shm_mutex.h) serialising the threads and
// processes that share one end of a ring.
//
// The same line is the end's private scratch line: the consumer never reads
// the producer's lock line, so the producer keeps its own copy of the tail
// here (`index`). Reading the tail back from the published IndexLine, which
// the consumer polls, cost a cache-line transfer per message (measured: a
// 64 B ping-pong took 25% longer); this line stays in the producer's cache.
struct alignas(kCacheLine) LockLine {
  std::atomic<uint32_t> word;
  uint32_t pad;
  std::atomic<uint64_t> index;  // prod_lock: the producer's working tail (untrusted, validated)
};

struct RingControl {
  RingMeta meta;        // line 0
  GuardLine guard0;     // line 1
  IndexLine prod;       // line 2: tail, hot, written by the producer
  GuardLine guard1;     // line 3
  IndexLine cons;       // line 4: head, hot, written by the consumer
  GuardLine guard2;     // line 5
  StateLine state;      // line 6: shutdown flags (rare)
  GuardLine guard3;     // line 7
  WaitLine data_wait;   // line 8: consumers waiting for data (rare)
  GuardLine guard4;     // line 9
  WaitLine space_wait;  // line 10: producers waiting for space (rare)
  GuardLine guard5;     // line 11
  LockLine prod_lock;   // line 12: serialises producers (written per op when shared)
  GuardLine guard6;     // line 13
  LockLine cons_lock;   // line 14: serialises consumers
  GuardLine guard7;     // line 15
};

static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic<uint32_t>::is_always_lock_free);
static_assert(sizeof(std::atomic<uint64_t>) == 8 && sizeof(std::atomic<uint32_t>) == 4);
static_assert(offsetof(RingControl, meta) == 0 * kCacheLine);
static_assert(offsetof(RingControl, prod) == 2 * kCacheLine);
static_assert(offsetof(RingControl, cons) == 4 * kCacheLine);
static_assert(offsetof(RingControl, state) == 6 * kCacheLine);
static_assert(offsetof(RingControl, data_wait) == 8 * kCacheLine);
static_assert(offsetof(RingControl, space_wait) == 10 * kCacheLine);
static_assert(offsetof(RingControl, prod_lock) == 12 * kCacheLine);
static_assert(offsetof(RingControl, cons_lock) == 14 * kCacheLine);
static_assert(sizeof(RingControl) == 16 * kCacheLine);
static_assert(offsetof(LockLine, word) == 0 && offsetof(LockLine, index) == 8);
static_assert(alignof(RingControl) == kCacheLine);

inline constexpr uint64_t kSegmentMagic = 0x59415752'4f4f4421ull;  // "!DOORWAY", little endian
// 2: producer's working tail in prod_lock; 3: generation and released (reuse);
// 4: arena slots (segment_size may be less than the memfd's) and ends_done
inline constexpr uint32_t kSegmentVersion = 4;
inline constexpr uint32_t kRingCount = 2;

struct alignas(kCacheLine) SegmentHeader {
  uint64_t magic;
  uint32_t version;
  uint32_t prefix_size;                      // sizeof(SegmentPrefix)
  uint64_t segment_size;                     // the memfd's size, or an arena slot's
  uint32_t ring_count;                       // kRingCount
  uint32_t page_kind;                        // creator's placement, informational only (untrusted)
  uint64_t ring_control_offset[kRingCount];  // must equal the fixed offsets below
  // Reuse of a segment for a later connection (segment.h, "Reuse"). The
  // creator bumps `generation` each time it initialises the segment; the
  // receiver stores that value into `released` (std::atomic_ref, release)
  // once it will never touch the segment again for that connection. Both
  // are hints between peers that trust each other (same uid) and are never
  // used to index memory.
  uint32_t generation;
  uint32_t released;
  // Arena slots (segment.h "Arenas"): each side adds 1 when it is done with
  // the connection; the second frees the rings' pages if they carried much.
  uint32_t ends_done;
  // The receiver closes its end of the door socket for the connection of
  // this generation (Segment::MarkDoorDropped; a hint, like `released`).
  // Was padding: older peers leave it 0, which no generation is.
  uint32_t door_dropped;
};

struct SegmentPrefix {
  SegmentHeader header;  // line 0
  GuardLine guard;       // line 1
  RingControl ring[kRingCount];
};

static_assert(offsetof(SegmentHeader, magic) == 0);
static_assert(offsetof(SegmentHeader, version) == 8);
static_assert(offsetof(SegmentHeader, prefix_size) == 12);
static_assert(offsetof(SegmentHeader, segment_size) == 16);
static_assert(offsetof(SegmentHeader, ring_count) == 24);
static_assert(offsetof(SegmentHeader, page_kind) == 28);
static_assert(offsetof(SegmentHeader, ring_control_offset) == 32);
static_assert(offsetof(SegmentHeader, generation) == 48);
static_assert(offsetof(SegmentHeader, released) == 52);
static_assert(offsetof(SegmentHeader, ends_done) == 56);
static_assert(sizeof(SegmentHeader) == kCacheLine);
static_assert(offsetof(SegmentPrefix, ring) == 2 * kCacheLine);
static_assert(sizeof(SegmentPrefix) == 2 * kCacheLine + kRingCount * sizeof(RingControl));
static_assert(sizeof(SegmentPrefix) <= 4096, "the prefix must fit in the first page");

inline constexpr uint64_t RingControlOffset(uint32_t ring) {
  return 2 * kCacheLine + ring * sizeof(RingControl);
}
static_assert(RingControlOffset(1) == offsetof(SegmentPrefix, ring) + sizeof(RingControl));

}  // namespace doorway::transport::internal

// The bytes of a process's stats file, shared by the runtime that writes it
// (runtime/stats.h) and //tools:stat, which reads it.
//
// One file per process, "<door dir>/stats.<pid>", mapped MAP_SHARED by its
// process; the tool maps it read-only. It holds a ProcessHeader and an
// array of Slots, one per live accelerated connection of the process.
//
// Who writes what:
//   * header identity fields: once, by the process, before the file gets its
//     name (rename), so a reader never sees a half-written header;
//   * header totals: rarely (a connection opens or closes), atomic adds;
//   * a slot's description: by the thread that claims it (kOpening), then
//     state = kLive (release); rewritten only after the slot was freed;
//   * a slot's RingStats: on every ring operation, by the process that owns
//     the connection: they are the very counters transport::Ring bumps (its
//     RingStats pointer points into the slot), so publishing costs the data
//     path nothing beyond the relaxed stores it made anyway.
// Readers are racy by design: counters are read with relaxed loads, and a
// description is used only if `state` and `generation` read the same before
// and after copying it (a seqlock without writer-side cost).
//
// Everything here is untrusted for the reader (another process of the same
// uid wrote it): sizes and counts are checked against the file size, strings
// are bounded.
#ifndef DOORWAY_RUNTIME_STATS_FORMAT_H_
#define DOORWAY_RUNTIME_STATS_FORMAT_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "transport/ring.h"

namespace doorway::stats {

inline constexpr std::uint64_t kMagic = 0x5354'4154'5357'4f44ull;  // "DOWSTATS" little endian
inline constexpr std::uint32_t kVersion = 1;
// Slots per file. A slot is 256 bytes; the file is sparse, so only the
// pages of slots ever used take memory (a process that never had more
// than 16 connections at once uses one page of slots). A process with more
// live connections than this counts the extra ones in slots_full.
inline constexpr std::uint32_t kSlots = 4096;
inline constexpr char kFilePrefix[] = "stats.";

enum SlotState : std::uint32_t { kFree = 0, kOpening = 1, kLive = 2 };

// An address and port as the program sees it (getsockname/getpeername).
struct Address {
  std::uint16_t family;  // AF_INET or AF_INET6
  std::uint16_t port;    // host byte order
  std::uint8_t addr[16];
};
static_assert(sizeof(Address) == 20);

struct alignas(64) ProcessHeader {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t header_size;  // sizeof(ProcessHeader)
  std::uint32_t slot_size;    // sizeof(Slot)
  std::uint32_t slot_count;   // kSlots
  std::int32_t pid;
  std::uint32_t uid;
  // Field 22 of /proc/<pid>/stat at creation: with pid, names the process
  // (a recycled pid has another start time). The tool ignores files whose
  // pid is gone or has another start time (stale: the process was killed
  // and could not remove its file).
  std::uint64_t start_ticks;
  std::int64_t created_ns;  // CLOCK_MONOTONIC
  char command[32];         // comm at creation (the tool prefers /proc's)
  std::uint8_t accelerate;  // DOORWAY_ACCELERATE
  std::uint8_t fallback;    // runtime::FallbackMode
  std::uint8_t pad0[6];
  // The inode of /proc/self/ns/pid: a reader in another pid namespace (a
  // container sharing the door directory) cannot check the pid, and leaves
  // the file alone.
  std::uint64_t pid_namespace;
  // Slots at or above this index were never used (lets a reader, and the
  // copy made for a fork child, skip the untouched tail).
  alignas(64) std::atomic<std::uint32_t> high_water;
  std::atomic<std::uint32_t> hint;        // where the next free-slot search starts
  std::atomic<std::uint64_t> opened;      // accelerated connections registered
  std::atomic<std::uint64_t> slots_full;  // connections not shown: no free slot
  // The counters of connections already closed in this process (bytes and
  // messages it sent and received through them).
  std::atomic<std::uint64_t> closed;
  std::atomic<std::uint64_t> closed_tx_bytes;
  std::atomic<std::uint64_t> closed_tx_msgs;
  std::atomic<std::uint64_t> closed_rx_bytes;
  std::atomic<std::uint64_t> closed_rx_msgs;
};

struct alignas(64) Slot {
  std::atomic<std::uint32_t> state;       // SlotState
  std::atomic<std::uint32_t> generation;  // bumped when claimed and when freed
  std::uint8_t role;                      // transport::Role: 0 client, 1 server
  std::uint8_t pages;                     // transport::PageKind
  std::uint8_t shared;                    // shared with another process (fork)
  std::uint8_t pad0;
  std::int32_t fd;            // the fd the connection was installed at
  std::int32_t segment_fd;    // the segment's memfd in this process
  std::int16_t numa_node[2];  // node ring 0 / ring 1 data is bound to, -1: not bound
  // The segment's memfd (st_dev, st_ino): the same for both ends, so the
  // tool pairs the client's slot with the server's; and a check that
  // /proc/<pid>/fd/<segment_fd> is still that memfd before mapping it.
  std::uint64_t segment_dev;
  std::uint64_t segment_ino;
  // The door socket at `fd` (st_ino): the tool finds every fd number of the
  // connection (dups) by this inode in /proc/<pid>/fd.
  std::uint64_t socket_ino;
  std::uint64_t page_size;
  std::uint64_t capacity[2];  // ring 0 (client->server), ring 1 (server->client)
  std::int64_t opened_ns;     // CLOCK_MONOTONIC
  Address local, peer;
  // transport::Segment::generation(): a reused segment (same memfd) serves
  // one connection after another; with dev and ino this names the connection.
  std::uint32_t segment_generation;
  // Where the segment starts in its memfd, in 4 KiB pages (an arena slot,
  // transport/segment.h "Arenas"); with dev and ino it names the segment.
  std::uint32_t segment_offset_pages;
  // Written on the data path by this process (transport::Ring).
  alignas(64) transport::RingStats tx;
  alignas(64) transport::RingStats rx;
};

static_assert(std::is_standard_layout_v<ProcessHeader>);
static_assert(std::is_standard_layout_v<Slot>);
static_assert(sizeof(transport::RingStats) == 64);
static_assert(sizeof(ProcessHeader) == 192);
static_assert(offsetof(ProcessHeader, pid) == 24 && offsetof(ProcessHeader, pid_namespace) == 88);
static_assert(sizeof(Slot) == 256);
static_assert(offsetof(Slot, tx) == 128 && offsetof(Slot, rx) == 192);

inline constexpr std::size_t kFileSize = sizeof(ProcessHeader) + std::size_t{kSlots} * sizeof(Slot);

inline Slot* Slots(ProcessHeader* h) {
  return reinterpret_cast<Slot*>(reinterpret_cast<char*>(h) + sizeof(ProcessHeader));
}
inline const Slot* Slots(const ProcessHeader* h) {
  return reinterpret_cast<const Slot*>(reinterpret_cast<const char*>(h) + sizeof(ProcessHeader));
}

}  // namespace doorway::stats

#endif  // DOORWAY_RUNTIME_STATS_FORMAT_H_

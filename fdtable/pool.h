// Type-stable object pool for the shadow fd table.
//
// How the pieces fit: FdTable slots hold Node pointers. A Node is a block of
// memory that, once mapped, is never returned to the system and always starts
// with the same header (reference count, destructor). That is what lets
// FdTable::Get take a reference without a lock: a reader that races with the
// last Unref may touch the count of a node that was just freed or even reused,
// which is harmless because the memory is still a Node; it then re-checks the
// slot and drops the reference if the slot moved on. This is the Linux
// kernel's SLAB_TYPESAFE_BY_RCU + get_file_rcu() pattern.
//
// Every operation is async-signal-safe: no mutex, no malloc. New memory comes
// from mmap; the free list is a Treiber stack of node indices whose head
// carries a tag against ABA.
#ifndef DOORWAY_FDTABLE_POOL_H_
#define DOORWAY_FDTABLE_POOL_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>
#include <utility>

namespace doorway::fdtable {

inline constexpr std::size_t kPayloadBytes = 960;

// 1 KiB aligned: FdTable keeps a few tag bits in the low bits of a slot.
struct alignas(1024) Node {
  // Zero while free (or being constructed); TryRef only succeeds from > 0.
  std::atomic<std::uint32_t> refs;
  // Index of the next free node + 1 (0 = end); only meaningful while free.
  std::atomic<std::uint32_t> next_free;
  // Index of this node in the pool, fixed at creation.
  std::uint32_t index;
  std::uint32_t type_tag;
  void (*destroy)(void* payload);
  alignas(16) unsigned char payload[kPayloadBytes];
};
static_assert(sizeof(Node) == 1024, "Node layout changed; check kPayloadBytes");
static_assert(offsetof(Node, payload) % 16 == 0);

// Allocates and frees Nodes. Process-wide; constant-initialised so it is usable
// before main and from signal handlers.
class Pool {
 public:
  constexpr Pool() = default;

  // Returns a node with refs == 0, or nullptr if memory is exhausted.
  Node* Allocate();
  // Returns a node whose refs reached zero to the free list.
  void Free(Node* node);

  // Number of nodes ever mapped (for tests).
  std::uint32_t Capacity() const {
    return chunks_used_.load(std::memory_order_acquire) * kNodesPerChunk;
  }

 private:
  static constexpr std::uint32_t kNodesPerChunk = 64;  // 64 KiB per chunk
  static constexpr std::uint32_t kMaxChunks = 32768;   // up to 2 M nodes

  Node* NodeAt(std::uint32_t index) const;
  bool Grow();
  void Push(Node* first, Node* last);

  // Tagged head: high 32 bits = tag, low 32 bits = index + 1 (0 = empty).
  std::atomic<std::uint64_t> head_{0};
  std::atomic<std::uint32_t> chunks_used_{0};
  std::atomic<std::uint32_t> chunks_reserved_{0};
  std::atomic<Node*> chunks_[kMaxChunks]{};
};

Pool& GlobalPool();

}  // namespace doorway::fdtable

#endif  // DOORWAY_FDTABLE_POOL_H_

#include "fdtable/pool.h"

#include <sys/mman.h>

namespace doorway::fdtable {

namespace {
constinit Pool g_pool;
}  // namespace

Pool& GlobalPool() { return g_pool; }

Node* Pool::NodeAt(std::uint32_t index) const {
  // Acquire pairs with the release store in Grow (G1): the chunk's nodes are
  // initialised before their chunk pointer is visible.
  Node* chunk = chunks_[index / kNodesPerChunk].load(std::memory_order_acquire);
  return chunk + (index % kNodesPerChunk);
}

void Pool::Push(Node* first, Node* last) {
  std::uint64_t head = head_.load(std::memory_order_relaxed);
  for (;;) {
    // Relaxed store: published by the release CAS below (P1).
    last->next_free.store(static_cast<std::uint32_t>(head), std::memory_order_relaxed);
    std::uint64_t tag = (head >> 32) + 1;
    std::uint64_t next = (tag << 32) | (first->index + 1);
    // P1: release pairs with the acquire load/CAS in Allocate (A1), so the
    // popper sees next_free and the node's freed state.
    if (head_.compare_exchange_weak(head, next, std::memory_order_release,
                                    std::memory_order_relaxed)) {
      return;
    }
  }
}

bool Pool::Grow() {
  std::uint32_t n = chunks_reserved_.fetch_add(1, std::memory_order_relaxed);
  if (n >= kMaxChunks) {
    chunks_reserved_.fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  void* mem = mmap(nullptr, sizeof(Node) * kNodesPerChunk, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return false;
  Node* nodes = static_cast<Node*>(mem);
  for (std::uint32_t i = 0; i < kNodesPerChunk; ++i) {
    Node* node = new (&nodes[i]) Node{};
    node->index = n * kNodesPerChunk + i;
    node->next_free.store(i + 1 < kNodesPerChunk ? node->index + 2 : 0, std::memory_order_relaxed);
  }
  // G1: release pairs with the acquire in NodeAt.
  chunks_[n].store(nodes, std::memory_order_release);
  chunks_used_.fetch_add(1, std::memory_order_release);
  Push(&nodes[0], &nodes[kNodesPerChunk - 1]);
  return true;
}

Node* Pool::Allocate() {
  for (;;) {
    // A1: acquire pairs with P1.
    std::uint64_t head = head_.load(std::memory_order_acquire);
    while (static_cast<std::uint32_t>(head) != 0) {
      Node* node = NodeAt(static_cast<std::uint32_t>(head) - 1);
      // The node may be popped and reused by another thread between these
      // two loads; next_free is then garbage but the tag makes the CAS fail.
      std::uint64_t next_index = node->next_free.load(std::memory_order_relaxed);
      std::uint64_t tag = (head >> 32) + 1;
      if (head_.compare_exchange_weak(head, (tag << 32) | next_index, std::memory_order_acquire,
                                      std::memory_order_acquire)) {
        return node;
      }
    }
    if (!Grow()) return nullptr;
  }
}

void Pool::Free(Node* node) { Push(node, node); }

}  // namespace doorway::fdtable

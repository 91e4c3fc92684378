// The shadow fd table: fd number -> reference-counted object.
//
// How the pieces fit: the runtime creates an object with Make<T>() (memory
// from the type-stable Pool, see pool.h) and installs it at an fd number with
// Install(); interposed calls look it up with Get(), which takes no lock and
// returns a Ref that keeps the object alive for the duration of the call even
// if another thread closes the fd meanwhile. Remove()/Install() hand back the
// reference they displaced; the caller drops it after it is done with the
// kernel (so a slot never points at a dead object).
//
// Layout: a fixed top-level array of bucket pointers, each bucket one page of
// slots, mapped on first use and published with a release CAS (gVisor's
// fd_table_unsafe.go is the model). Writers do not take a mutex either — close()
// and accept() must be callable from a signal handler (DESIGN §9), and a
// handler that interrupted a writer holding a mutex would deadlock — so slots
// are updated with atomic exchange; two threads racing on one fd number get
// the kernel's own answer for the fd and one of them wins the slot, exactly as
// with the kernel's table.
#ifndef DOORWAY_FDTABLE_FDTABLE_H_
#define DOORWAY_FDTABLE_FDTABLE_H_

#include <atomic>
#include <cstdint>
#include <new>
#include <type_traits>
#include <utility>

#include "fdtable/pool.h"

namespace doorway::fdtable {

// A counted reference to a Node. Move-only; async-signal-safe.
class Ref {
 public:
  Ref() = default;
  explicit Ref(Node* node) : node_(node) {}  // adopts one reference
  Ref(const Ref&) = delete;
  Ref& operator=(const Ref&) = delete;
  Ref(Ref&& other) noexcept : node_(std::exchange(other.node_, nullptr)) {}
  Ref& operator=(Ref&& other) noexcept {
    if (this != &other) {
      Reset();
      node_ = std::exchange(other.node_, nullptr);
    }
    return *this;
  }
  ~Ref() { Reset(); }

  explicit operator bool() const { return node_ != nullptr; }
  Node* node() const { return node_; }
  // References to the object, this one included (fd slots hold one each);
  // a snapshot.
  std::uint32_t use_count() const {
    return node_ != nullptr ? node_->refs.load(std::memory_order_relaxed) : 0;
  }
  std::uint32_t type_tag() const { return node_->type_tag; }

  // The object, if it was made as T (checked by tag); nullptr otherwise.
  template <class T>
  T* As() const {
    if (node_ == nullptr || node_->type_tag != T::kTypeTag) return nullptr;
    return std::launder(reinterpret_cast<T*>(node_->payload));
  }

  // A second reference to the same object.
  Ref Clone() const;
  // Releases ownership without dropping the reference.
  Node* Release() { return std::exchange(node_, nullptr); }
  // Drops a reference taken with FdTable::GetUncontended, under the same
  // conditions, without a locked instruction while they hold (else as
  // Reset: a thread may have been made meanwhile).
  void ResetUncontended(bool single_threaded) {
    Node* node = node_;
    if (node == nullptr || !single_threaded) {
      Reset();
      return;
    }
    node_ = nullptr;
    const std::uint32_t refs = node->refs.load(std::memory_order_relaxed);
    node->refs.store(refs - 1, std::memory_order_relaxed);
    if (refs == 1) Destroy(node);
  }
  // Inline: every interposed data call drops one reference.
  void Reset() {
    Node* node = std::exchange(node_, nullptr);
    if (node == nullptr) return;
    // U1: release so our uses of the object happen before its destruction;
    // the acquire half makes the thread that drops the last reference see
    // every other holder's uses (pairs with U1 in those threads). acq_rel
    // rather than release + acquire fence because TSAN does not model
    // standalone fences.
    if (node->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) Destroy(node);
  }

 private:
  static void Destroy(Node* node);  // the last reference went
  Node* node_ = nullptr;
};

// Constructs a T in a pool node and returns the only reference to it. T needs
// a `static constexpr std::uint32_t kTypeTag` (non-zero) and a destructor that
// is async-signal-safe (it may run in whichever thread drops the last
// reference, including a signal handler): no free(), no locks.
template <class T, class... Args>
Ref Make(Args&&... args) {
  static_assert(sizeof(T) <= kPayloadBytes, "object too large for an fd table node");
  static_assert(alignof(T) <= 16, "object over-aligned for an fd table node");
  static_assert(T::kTypeTag != 0);
  Node* node = GlobalPool().Allocate();
  if (node == nullptr) return Ref();
  new (node->payload) T(std::forward<Args>(args)...);
  node->type_tag = T::kTypeTag;
  node->destroy = [](void* p) { std::launder(reinterpret_cast<T*>(p))->~T(); };
  // M1: release pairs with the acquire CAS in TryRef (T1): a reader that
  // sees refs > 0 sees the constructed object, tag and destroy hook.
  node->refs.store(1, std::memory_order_release);
  return Ref(node);
}

class FdTable {
 public:
  // A few bits stored beside each entry, readable with one load (Tag()) so
  // that hot paths can decide how to route an fd without taking a reference.
  static constexpr std::uint32_t kTagMask = 0x3ff;

  static constexpr int kSlotsPerBucket = 512;  // one 4 KiB page of slots
  static constexpr int kMaxFds = 1 << 20;      // Linux's default fs.nr_open

  constexpr FdTable() = default;

  // The object installed at fd, or an empty Ref. Lock-free.
  Ref Get(int fd) const;
  // Get for a caller that no other thread and no signal handler can race
  // with until it drops the reference (ResetUncontended): a process with
  // one thread, inside a section where signal handlers are deferred. The
  // count is changed with a plain load and store: a locked instruction
  // waits for the store buffer to drain, and on the data path the buffer
  // holds the ring index store whose line the peer polls (a cross-core
  // transfer per call).
  Ref GetUncontended(int fd) const;
  // Puts obj at fd, with `tag` (< kTagMask) beside it; returns what was
  // there. Fails (returns obj back, with *ok = false) only for fds beyond
  // kMaxFds or when memory is exhausted.
  Ref Install(int fd, Ref obj, bool* ok = nullptr, std::uint32_t tag = 0);
  // Makes sure an Install at fd cannot fail for lack of memory (the slot's
  // bucket exists). False beyond kMaxFds or when memory is exhausted.
  bool Prepare(int fd);
  // Empties the slot; returns what was there.
  Ref Remove(int fd);
  // Whether something is installed at fd: one load, no reference taken, so
  // the answer may be stale by the time the caller acts on it.
  bool Occupied(int fd) const;
  // The tag installed with fd's entry, 0 if none; one load, no reference, so
  // possibly stale (see Occupied).
  std::uint32_t Tag(int fd) const;
  // Whether fd's entry is `node` with tag `tag`: one load, no reference
  // taken (possibly stale, see Occupied). For callers that hold a reference
  // to node already and ask whether fd still refers to it.
  bool Holds(int fd, const Node* node, std::uint32_t tag) const;
  // Calls fn(fd, const Ref&) for every entry, in fd order. Entries installed
  // or removed concurrently may or may not be visited.
  template <class Fn>
  void ForEach(Fn&& fn) const;
  // Empties every slot in [first, last] (close_range); calls fn(fd, Ref&&)
  // for each removed object.
  template <class Fn>
  void RemoveRange(int first, int last, Fn&& fn);

 private:
  // Each slot holds a Node pointer (1 KiB aligned) or'ed with its tag.
  struct Bucket {
    std::atomic<std::uintptr_t> slots[kSlotsPerBucket];
  };
  static Node* NodeOf(std::uintptr_t v) {
    return reinterpret_cast<Node*>(v & ~std::uintptr_t{kTagMask});
  }
  static constexpr int kBuckets = kMaxFds / kSlotsPerBucket;

  Bucket* BucketFor(int fd, bool create);
  // Takes a reference only if the count is not already zero (T1).
  static bool TryRef(Node* node);

  std::atomic<Bucket*> buckets_[kBuckets]{};
};

namespace internal {
// Not hidden here: the library's tests link it as a shared object (the
// definition is hidden by the library's -fvisibility=hidden).
extern constinit FdTable g_table;
}  // namespace internal

// The process-wide table.
inline FdTable& GlobalTable() { return internal::g_table; }

// Get and Tag are inline: every interposed call makes one or both.
inline bool FdTable::TryRef(Node* node) {
  // A zero count means the node is free or under construction; the memory
  // is still a Node (type-stable), so reading the count is always safe.
  std::uint32_t refs = node->refs.load(std::memory_order_relaxed);
  while (refs != 0) {
    // T1: acquire pairs with M1 (construction) and with U1 (prior unrefs).
    if (node->refs.compare_exchange_weak(refs, refs + 1, std::memory_order_acquire,
                                         std::memory_order_relaxed)) {
      return true;
    }
  }
  return false;
}

inline Ref FdTable::Get(int fd) const {
  if (static_cast<unsigned>(fd) >= static_cast<unsigned>(kMaxFds)) return Ref();
  Bucket* b = buckets_[fd / kSlotsPerBucket].load(std::memory_order_acquire);  // B1
  if (b == nullptr) return Ref();
  const std::atomic<std::uintptr_t>& slot = b->slots[fd % kSlotsPerBucket];
  for (;;) {
    // S1: acquire pairs with the release half of the exchange in Install (S2).
    std::uintptr_t v = slot.load(std::memory_order_acquire);
    Node* node = NodeOf(v);
    if (node == nullptr) return Ref();
    if (!TryRef(node)) continue;  // dying: the slot has moved on or will
    // The node may have been freed and reused since we loaded it; if the
    // slot still holds it, our reference is to the installed object.
    if (NodeOf(slot.load(std::memory_order_acquire)) == node) return Ref(node);
    Ref(node).Reset();
  }
}

inline Ref FdTable::GetUncontended(int fd) const {
  if (static_cast<unsigned>(fd) >= static_cast<unsigned>(kMaxFds)) return Ref();
  Bucket* b = buckets_[fd / kSlotsPerBucket].load(std::memory_order_acquire);
  if (b == nullptr) return Ref();
  Node* node = NodeOf(b->slots[fd % kSlotsPerBucket].load(std::memory_order_acquire));
  if (node == nullptr) return Ref();
  // Installed, so the slot's own reference keeps it above zero.
  node->refs.store(node->refs.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  return Ref(node);
}

inline std::uint32_t FdTable::Tag(int fd) const {
  if (static_cast<unsigned>(fd) >= static_cast<unsigned>(kMaxFds)) return 0;
  Bucket* b = buckets_[fd / kSlotsPerBucket].load(std::memory_order_acquire);  // B1
  if (b == nullptr) return 0;
  // Relaxed: a routing hint; see Occupied.
  return static_cast<std::uint32_t>(b->slots[fd % kSlotsPerBucket].load(std::memory_order_relaxed) &
                                    kTagMask);
}

inline bool FdTable::Holds(int fd, const Node* node, std::uint32_t tag) const {
  if (static_cast<unsigned>(fd) >= static_cast<unsigned>(kMaxFds) || node == nullptr) return false;
  Bucket* b = buckets_[fd / kSlotsPerBucket].load(std::memory_order_acquire);  // B1
  if (b == nullptr) return false;
  // Relaxed: a hint; see Occupied.
  return b->slots[fd % kSlotsPerBucket].load(std::memory_order_relaxed) ==
         (reinterpret_cast<std::uintptr_t>(node) | (tag & kTagMask));
}

template <class Fn>
void FdTable::RemoveRange(int first, int last, Fn&& fn) {
  if (first < 0) first = 0;
  if (last >= kMaxFds) last = kMaxFds - 1;
  for (int fd = first; fd <= last;) {
    Bucket* b = buckets_[fd / kSlotsPerBucket].load(std::memory_order_acquire);
    if (b == nullptr) {
      fd = (fd / kSlotsPerBucket + 1) * kSlotsPerBucket;
      continue;
    }
    Node* n = NodeOf(b->slots[fd % kSlotsPerBucket].exchange(0, std::memory_order_acq_rel));
    if (n != nullptr) fn(fd, Ref(n));
    ++fd;
  }
}

template <class Fn>
void FdTable::ForEach(Fn&& fn) const {
  for (int bi = 0; bi < kBuckets; ++bi) {
    if (buckets_[bi].load(std::memory_order_acquire) == nullptr) continue;
    for (int i = 0; i < kSlotsPerBucket; ++i) {
      int fd = bi * kSlotsPerBucket + i;
      Ref r = Get(fd);
      if (r) fn(fd, static_cast<const Ref&>(r));
    }
  }
}

}  // namespace doorway::fdtable

#endif  // DOORWAY_FDTABLE_FDTABLE_H_

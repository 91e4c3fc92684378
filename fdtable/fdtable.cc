#include "fdtable/fdtable.h"

#include <sys/mman.h>

#include <cstdlib>

namespace doorway::fdtable {

namespace internal {
constinit FdTable g_table;
}  // namespace internal

void Ref::Destroy(Node* node) {
  node->destroy(node->payload);
  node->type_tag = 0;
  GlobalPool().Free(node);
}

Ref Ref::Clone() const {
  if (node_ == nullptr) return Ref();
  // Relaxed: we already hold a reference, so the object cannot go away and
  // no ordering is needed to take another (as with shared_ptr copies).
  node_->refs.fetch_add(1, std::memory_order_relaxed);
  return Ref(node_);
}

FdTable::Bucket* FdTable::BucketFor(int fd, bool create) {
  std::atomic<Bucket*>& top = buckets_[fd / kSlotsPerBucket];
  // B1: acquire pairs with the release CAS below: slots are zeroed before use.
  Bucket* b = top.load(std::memory_order_acquire);
  if (b != nullptr || !create) return b;
  void* mem =
      mmap(nullptr, sizeof(Bucket), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return nullptr;
  Bucket* fresh = static_cast<Bucket*>(mem);  // anonymous memory is zeroed
  if (top.compare_exchange_strong(b, fresh, std::memory_order_acq_rel, std::memory_order_acquire)) {
    return fresh;
  }
  munmap(mem, sizeof(Bucket));  // another thread published first; use theirs
  return b;
}

bool FdTable::Occupied(int fd) const {
  if (fd < 0 || fd >= kMaxFds) return false;
  Bucket* b = buckets_[fd / kSlotsPerBucket].load(std::memory_order_acquire);  // B1
  // Relaxed: a hint only; the caller takes a reference with Get() to act on it.
  return b != nullptr && b->slots[fd % kSlotsPerBucket].load(std::memory_order_relaxed) != 0;
}

Ref FdTable::Install(int fd, Ref obj, bool* ok, std::uint32_t tag) {
  Bucket* b = (fd >= 0 && fd < kMaxFds) ? BucketFor(fd, true) : nullptr;
  if (ok != nullptr) *ok = b != nullptr;
  if (b == nullptr) return obj;
  // S2: release publishes the object to readers (S1); acquire so that the
  // displaced reference is handed back with its writer's history.
  std::uintptr_t v = reinterpret_cast<std::uintptr_t>(obj.Release());
  if (v != 0) v |= tag & kTagMask;
  return Ref(NodeOf(b->slots[fd % kSlotsPerBucket].exchange(v, std::memory_order_acq_rel)));
}

bool FdTable::Prepare(int fd) { return fd >= 0 && fd < kMaxFds && BucketFor(fd, true) != nullptr; }

Ref FdTable::Remove(int fd) {
  Bucket* b = (fd >= 0 && fd < kMaxFds) ? BucketFor(fd, false) : nullptr;
  if (b == nullptr) return Ref();
  return Ref(NodeOf(b->slots[fd % kSlotsPerBucket].exchange(0, std::memory_order_acq_rel)));
}

}  // namespace doorway::fdtable

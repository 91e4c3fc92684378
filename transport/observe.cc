#include "transport/observe.h"

#include "transport/internal/layout.h"

namespace doorway::transport {

namespace {

EndState StateOf(uint32_t v) {
  switch (v) {
    case internal::kStateOpen:
      return EndState::kOpen;
    case internal::kStateClosed:
      return EndState::kClosed;
    case internal::kStateReset:
      return EndState::kReset;
  }
  return EndState::kCorrupt;
}

}  // namespace

uint32_t SegmentGeneration(const void* base, uint64_t size) {
  SegmentLayout layout;
  if (ValidateSegmentHeader(base, size, &layout) != 0) return 0;
  const auto* h = static_cast<const internal::SegmentHeader*>(base);
  // The mapping is read-only: atomic_ref's load does not write.
  return std::atomic_ref<uint32_t>(const_cast<uint32_t&>(h->generation))
      .load(std::memory_order_acquire);
}

int SnapshotSegment(const void* base, uint64_t size, RingSnapshot out[2]) {
  SegmentLayout layout;
  if (int rc = ValidateSegmentHeader(base, size, &layout); rc != 0) return rc;
  const auto* prefix = static_cast<const internal::SegmentPrefix*>(base);
  for (uint32_t r = 0; r < internal::kRingCount; ++r) {
    const internal::RingControl& c = prefix->ring[r];
    out[r].capacity = layout.ring_capacity[r];
    // Head first, then tail (the acquire keeps that order): the consumer
    // never passes the producer, so a tail read later is >= the head read
    // earlier, and the fill is never negative unless the memory is corrupt.
    out[r].head = c.cons.index.load(std::memory_order_acquire);
    out[r].tail = c.prod.index.load(std::memory_order_acquire);
    out[r].writer = StateOf(c.state.writer.load(std::memory_order_relaxed));
    out[r].reader = StateOf(c.state.reader.load(std::memory_order_relaxed));
  }
  return 0;
}

}  // namespace doorway::transport

// Read-only views of a segment for observers (//tools:stat): a process that
// mapped another process's segment with PROT_READ reads the rings' counters
// without taking part in the protocol (no locks, no waiter flags, no writes).
//
// The producer and consumer indices are free-running byte counters (ring.h),
// so they are the connection's bytes each way since it opened, and their
// difference is the ring's fill. Reading them costs the data path at most a
// cache-line transfer per observation (the owner's next store takes the line
// back), which at a human refresh rate is nothing.
#pragma once

#include <cstdint>

#include "transport/ring.h"
#include "transport/segment.h"

namespace doorway::transport {

struct RingSnapshot {
  uint64_t capacity = 0;
  uint64_t tail = 0;  // bytes ever written (prod.index)
  uint64_t head = 0;  // bytes ever consumed (cons.index)
  EndState writer = EndState::kOpen;
  EndState reader = EndState::kOpen;
  // tail - head, or 0 if the snapshot was inconsistent (raced, corrupt).
  uint64_t fill() const { return tail >= head && tail - head <= capacity ? tail - head : 0; }
};

// The generation of the connection a segment serves (segments are reused,
// segment.h "Reuse"), or 0 if the header is not valid.
uint32_t SegmentGeneration(const void* base, uint64_t size);

// base/size: a read-only mapping of a whole segment (untrusted: the header is
// validated as Segment::Attach does). Fills out[kClientToServer] and
// out[kServerToClient]. Returns 0, or -EINVAL/-EPROTO.
int SnapshotSegment(const void* base, uint64_t size, RingSnapshot out[2]);

}  // namespace doorway::transport

// Single-producer/single-consumer byte ring in shared memory.
//
// A Ring is a process-local *view* of one direction of a segment: pointers to
// the control block and the data area in this process's mapping, plus the
// capacity (validated once when the segment was attached, then never re-read
// from shared memory) and a few process-local caches. The shared memory holds
// only free-running 64-bit counters (layout.h).
//
// One side of the connection uses the producer half (Write/Reserve/Commit/
// ShutdownWrite), the other the consumer half (Read/Peek/Acquire/Release/
// ShutdownRead). If several threads or processes share one end, they
// serialise with the end's ShmMutex (segment.h) around every call; the calls
// themselves are SPSC.
//
// Untrusted peer: every index and state word read from shared memory is
// checked (0 <= tail - head <= capacity, state in {open, closed, reset});
// corruption returns -EIO and no byte outside [data, data + capacity) is ever
// touched, whatever the peer writes.
//
// Memory ordering (labels are referred to in ring.cc and wait.cc):
//   R1  producer: tail.store(seq_cst)      pairs with A2 (consumer sees the bytes)
//                 (release on a fenced line, F1/F2 below)
//   A1  producer: head.load(acquire)       pairs with R2 (consumer is done with the bytes)
//   R2  consumer: head.store(seq_cst)      pairs with A1 (release on a fenced line)
//   A2  consumer: tail.load(acquire)       pairs with R1
//   R3  shutdown: state.store(seq_cst)     pairs with A3
//   A3  state.load(acquire)                pairs with R3 (EOF seen only after the last data)
//   D1/D2  the seq_cst parts of R1/R2/R3 and the waiter count form the Dekker
//       pair with the waiter's registration W1 (wait.cc): either the waker
//       sees sleeping != 0, or the waiter's recheck sees the new index/state.
//   F1/F2  the asymmetric variant (fence.h): on a wait line whose waiters
//       fence (`fenced`, F2, read by the waker before its store) a registered
//       waker publishes R1/R2 with a release store and loads the flags after a
//       compiler barrier; the waiter's HeavyFence between W1 and its recheck
//       (F1) stands in for the waker's full fence. R3 always stays seq_cst.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>

#include "transport/fence.h"
#include "transport/internal/copy.h"
#include "transport/internal/layout.h"

// The per-message helpers below are small and called once or twice per
// operation; gcc -O2 kept them out of line (a call and a return each, ~20% of
// a 64 B Write+Read in one thread).
#define DOORWAY_RING_HOT inline __attribute__((always_inline))

namespace doorway::transport {

// Process-local counters (never in shared memory; the peer cannot forge them).
// Relaxed atomics so that threads sharing a Ring under its lock, and waiters
// that run without the lock, can bump them without a data race.
struct RingStats {
  std::atomic<uint64_t> bytes{0};        // bytes written (producer) or consumed (consumer)
  std::atomic<uint64_t> ops{0};          // successful Write/Commit or Read/Release calls
  std::atomic<uint64_t> futex_wakes{0};  // FUTEX_WAKE syscalls made by this side
  std::atomic<uint64_t> futex_waits{0};  // FUTEX_WAIT syscalls made by this side
  std::atomic<uint64_t> spin_hits{0};    // waits satisfied while spinning
  std::atomic<uint64_t> spin_misses{0};  // waits that went to sleep
  std::atomic<uint64_t> corruptions{0};  // -EIO results
  std::atomic<uint64_t> doorbells{0};    // doorbells this side was asked to send
};

inline void StatAdd(std::atomic<uint64_t>& c, uint64_t v = 1) {
  // Relaxed load+store, not fetch_add: the counters are statistics, a lost
  // increment between two racing threads is acceptable, a locked RMW on the
  // data path is not.
  c.store(c.load(std::memory_order_relaxed) + v, std::memory_order_relaxed);
}

// Up to two contiguous pieces of the ring (the second is non-empty only when
// the region wraps around the end of the data area).
struct RingSpan {
  std::byte* data[2] = {nullptr, nullptr};
  size_t len[2] = {0, 0};
  size_t size() const { return len[0] + len[1]; }
};

// Shutdown state of one half of a ring, as read from shared memory.
enum class EndState : uint8_t { kOpen = 0, kClosed = 1, kReset = 2, kCorrupt = 3 };

class Ring {
 public:
  Ring() = default;
  // `ctrl` and `data` point into this process's mapping; `capacity` is a
  // power of two >= 64 that the caller validated (Segment does). Checked.
  Ring(internal::RingControl* ctrl, std::byte* data, uint64_t capacity, RingStats* stats);

  bool valid() const { return ctrl_ != nullptr; }
  uint64_t capacity() const { return cap_; }
  internal::RingControl* control() const { return ctrl_; }
  // Where this ring's consumer side publishes the CPU it waits on (wait.h
  // "Sharing a core").
  std::atomic<uint32_t>* waiter_cpu() const { return &ctrl_->data_wait.cpu; }
  RingStats* stats() const { return stats_; }
  // The lock words of the two ends (Segment::ProducerLock/ConsumerLock of
  // this ring), without a call: the data path takes one per operation.
  std::atomic<uint32_t>* producer_lock_word() const { return &ctrl_->prod_lock.word; }
  std::atomic<uint32_t>* consumer_lock_word() const { return &ctrl_->cons_lock.word; }

  // ---------------------------------------------------------------- producer
  // Copies as many bytes of `iov` as fit (a partial write is normal).
  // Returns the number copied (> 0), 0 if iov is empty, -EAGAIN if the ring
  // is full, -EPIPE if this side shut down writing or the reader closed,
  // -ECONNRESET if the reader reset, -EIO on corrupt shared state.
  int64_t Write(const struct iovec* iov, int iovcnt);
  int64_t Write(const void* buf, size_t len);
  // All of buf or nothing, for the runtime's one-frame write() path: len
  // when every byte was copied and published (as Write), 0 when they do
  // not all fit, len is 0 or larger than the capacity, either end is shut
  // down or the indices are corrupt; then nothing happened (no byte, no
  // counter), and the caller takes Write's path for the exact result.
  int64_t WriteWhole(const void* buf, size_t len);
  // Zero-copy: exposes up to `max` free bytes. Returns the size (> 0, also in
  // span) or the same errors as Write. The bytes are published by Commit.
  int64_t Reserve(size_t max, RingSpan* span);
  // Publishes the first n reserved bytes (n <= reserved, else -EINVAL) and
  // wakes a sleeping consumer. Returns 0 or -EIO.
  int Commit(size_t n);
  // Free space (>= 0) or -errno as for Write. Refreshes the producer's
  // cache: under the end's lock only (else Queued).
  int64_t Writable();
  // Marks the write side closed (FIN: the reader gets EOF after draining) or
  // reset (the reader gets ECONNRESET), and wakes everyone waiting.
  void ShutdownWrite(bool reset);

  // ---------------------------------------------------------------- consumer
  // Copies up to the iovec size of readable bytes and consumes them. Returns
  // the number copied (> 0), 0 at EOF (writer closed and ring drained, or this
  // side shut down reading) or when iov is empty, -EAGAIN if empty,
  // -ECONNRESET if the writer reset, -EIO on corrupt shared state.
  int64_t Read(const struct iovec* iov, int iovcnt);
  int64_t Read(void* buf, size_t len);
  // Read when it copies bytes (> 0, as Read), else 0 with no effect (empty,
  // EOF, reset, corrupt, len 0): the caller then takes Read's path for the
  // exact result. For the runtime's one-frame read() path.
  int64_t ReadSome(void* buf, size_t len);
  // Like Read but starts `offset` bytes past the head and consumes nothing.
  // Returns -EAGAIN if fewer than offset+1 bytes are readable (and no EOF).
  int64_t Peek(size_t offset, const struct iovec* iov, int iovcnt);
  // Zero-copy: exposes up to `max` readable bytes (return value and span as
  // Read). The bytes stay in shared memory that the peer can still write:
  // treat them as untrusted and volatile. Consumed by Release.
  int64_t Acquire(size_t max, RingSpan* span);
  // Consumes the first n acquired bytes (n <= acquired, else -EINVAL) and
  // wakes a sleeping producer. Returns 0 or -EIO.
  int Release(size_t n);
  // Readable bytes (>= 0) or -EIO. Does not look at the shutdown state.
  // Refreshes the consumer's cache: under the end's lock only (else Queued).
  int64_t Readable();
  // Marks the read side closed (the writer gets EPIPE) or reset (the writer
  // gets ECONNRESET), and wakes everyone waiting.
  void ShutdownRead(bool reset);

  // ------------------------------------------------------------------ both
  // Bytes in the ring (published tail - head) at one instant, for either
  // end and without the end's lock: FIONREAD, SIOCOUTQ, the unread-data
  // check at close, beside readers and writers of both ends in other
  // threads or processes. Reads only the shared indices (no cache of this
  // view is touched, so no data race with the lock holder). Returns
  // [0, capacity], or -EIO if the indices are corrupt.
  int64_t Queued() const;

  // Peer gone (its process died): mark the *peer's* half as closed so that the
  // normal semantics follow (reader: data then EOF; writer: EPIPE). Only moves
  // a state from open to closed; idempotent.
  void MarkWriterGone();
  void MarkReaderGone();

  // The shutdown states (acquire loads, A3), e.g. for TCP's CLOSE_WAIT
  // (reader closed, writer open) or poll's POLLRDHUP. Values other than
  // open/closed/reset read from shared memory are reported as kCorrupt.
  EndState WriterState() const;
  EndState ReaderState() const;

  // Readiness predicates used by the waits (wait.h); seq_cst loads (D2).
  // ReadReady: Read would not return -EAGAIN. WriteReady: Write of `min`
  // bytes (clamped to capacity) would not return -EAGAIN.
  bool ReadReady() const;
  bool WriteReady(size_t min) const;
  // A consumer's poll while it spins (wait.cc): ReadReady, with a prefetch
  // of the line the next Read starts in issued beside the tail load. A hop
  // moves two lines, the tail's and the payload's; without the prefetch the
  // payload's miss starts only once the poll has seen the new tail, with it
  // the two transfers overlap (64 B ping-pong ~8% faster, docs/transport.md
  // "sixth session"). A hint, not a C++ access (no data race with the
  // producer's stores); the own head is masked, so even a value the peer
  // scribbled there names a line of this ring's data area.
  bool ReadReadyPrefetch() const {
    __builtin_prefetch(data_ + (ctrl_->cons.index.load(std::memory_order_relaxed) & mask_), 0, 3);
    return ReadReady();
  }

  // Wakes every waiter of the given kind, unconditionally (for local events
  // such as a close by another thread of this process).
  void WakeConsumers();
  void WakeProducers();

  // ------------------------------------------------------------ doorbells
  // Kernel-visible readiness for poll/epoll (DESIGN.md §4, §7): before a side
  // waits in poll/epoll on the door socket it arms the ring; the other side's
  // next operation that makes the armed condition true clears the flag and
  // reports (TakeDoorbell) that one byte must be sent on the door socket.
  // Same Dekker pattern as the futex sleepers (W1/D1/D2): arming is a seq_cst
  // store followed by a seq_cst recheck.
  //
  // Consumer: arm "data available". Returns true if Read would not return
  // -EAGAIN already (then do not wait: the doorbell may never come). Issues
  // the heavy fence (fence.h) when the line's waiters fence.
  // `bit` says whose arming it is: kArmSticky stays until the peer rings
  // (a plain store: it may absorb a revocable bit, which then rings too);
  // kArmRevocable may be taken back by DisarmReadDoorbell (an epoll set
  // that woke and looks at the member from the ring again). The peer rings
  // while any bit is set, so a revocation never takes away another
  // waiter's arming.
  static constexpr uint32_t kArmSticky = 1;
  static constexpr uint32_t kArmRevocable = 2;
  bool ArmReadDoorbell(uint32_t bit = kArmSticky);
  // Takes back a kArmRevocable "data available" arming. True if it was
  // still set (the peer will not ring for it), false if the peer consumed
  // it (a doorbell was or will be sent) or it was never set.
  bool DisarmReadDoorbell();
  // Producer: arm "space available" (for EPOLLOUT). Returns true if a Write
  // of `min` bytes would not return -EAGAIN already.
  bool ArmWriteDoorbell(size_t min);
  // Two-step arming for callers that arm many rings before one wait (poll,
  // epoll), so that they pay one heavy fence instead of one per ring: store
  // every flag with these, then, if any returned true, call
  // ArmFence() once, then recheck each ring (ReadReady/WriteReady or the
  // caller's own reading of it). Returns whether the recheck needs the fence.
  bool ArmReadDoorbellNoFence(uint32_t bit = kArmSticky);
  bool ArmWriteDoorbellNoFence();
  // The fence of the two-step arming. False if it failed (fence.h "Rules"):
  // then the rechecks prove nothing; treat the armed rings as ready (do not
  // sleep).
  static bool ArmFence() { return HeavyFence(); }
  // True once after one of this side's operations (Write/Commit/Read/Release/
  // Shutdown*) consumed the peer's armed flag: the caller sends one byte on
  // the door socket. Process-local; call it under the end's lock if shared.
  bool TakeDoorbell() {
    // Tested before the store: this runs after every operation, and a
    // store per call costs a store-buffer entry behind the index store.
    if (!doorbell_pending_) return false;
    doorbell_pending_ = false;
    return true;
  }

 private:
  // Loads the own index and the peer's index and checks 0 <= tail-head <= cap.
  int64_t LoadUsedForProducer(uint64_t* tail, size_t want);
  int64_t LoadAvailForConsumer(uint64_t* head, size_t want);
  int CheckWriteState() const;
  int64_t EmptyResult();
  // The consumer's prologue: the writer's state, then how many of `want`
  // bytes are readable (> 0), or what Read/Acquire return instead (0 at EOF
  // or for want == 0, -EAGAIN, -ECONNRESET, -EIO).
  int64_t AvailToConsume(uint64_t want, uint64_t* head);
  // The producer's prologue: the ends' states, then how many of `want`
  // bytes fit (> 0), or what Write/Reserve return instead (0 for want == 0,
  // -EAGAIN, -EPIPE, -ECONNRESET, -EIO).
  int64_t RoomToProduce(uint64_t want, uint64_t* tail);
  // Publish the n bytes written from `tail` (read from `head`) and count
  // them.
  void PublishTail(uint64_t tail, uint64_t n);
  void PublishHead(uint64_t head, uint64_t n);
  void Notify(internal::WaitLine& w);
  void NotifyFenced(internal::WaitLine& w);
  void Publish(std::atomic<uint64_t>& index, internal::WaitLine& w, uint64_t value);
  void TakeArmed(internal::WaitLine& w);
  void Corrupt() const;
  void FillSpan(uint64_t index, uint64_t n, RingSpan* span) const;
  // Copy len (<= capacity) bytes to / from the ring at free-running `index`,
  // across the wrap.
  void CopyIn(uint64_t index, const std::byte* src, uint64_t len);
  void CopyOut(uint64_t index, std::byte* dst, uint64_t len) const;

  internal::RingControl* ctrl_ = nullptr;
  std::byte* data_ = nullptr;
  uint64_t cap_ = 0;
  uint64_t mask_ = 0;
  // Process-local caches of the peer's index: monotonic, so a stale value is
  // a safe lower bound (less free space / less data than really present).
  uint64_t cached_head_ = 0;  // producer's view of cons.index
  uint64_t cached_tail_ = 0;  // consumer's view of prod.index
  uint64_t reserved_ = 0;     // outstanding Reserve (producer)
  uint64_t acquired_ = 0;     // outstanding Acquire (consumer)
  bool doorbell_pending_ = false;
  RingStats* stats_ = nullptr;
};

namespace internal {

inline bool ValidState(uint32_t s) { return s <= kStateReset; }

// The sleeper is registered: clear the flag and wake it (out of line: rare).
__attribute__((cold)) void WakeSleepers(WaitLine& w, RingStats* stats);

DOORWAY_RING_HOT void WakeIfWaitingInline(internal::WaitLine& w, RingStats* stats) {
  // D1: the caller's seq_cst store (R1/R2/R3) precedes this seq_cst load in
  // the single total order; the waiter's W1 (sleeping = 1) precedes its own
  // seq_cst recheck. So either we see sleeping != 0 here, or the waiter's
  // recheck sees our store. Cache hit in the common case: the line is
  // written only when somebody goes to sleep.
  if (w.sleeping.load(std::memory_order_seq_cst) != 0) WakeSleepers(w, stats);
}

}  // namespace internal

// ---------------------------------------------------------------- hot path
// The single-buffer Write and Read and the per-message helpers they use are
// defined here, inline, so that the runtime's read()/write() path compiles
// into one function without calls (each call's prologue saved and restored
// the callee-saved registers: stores, and the producer's stores wait in the
// store buffer behind its index store, docs/transport.md "seventh
// session"). Rare paths (waking a sleeper, taking a doorbell, the empty-ring
// analysis) stay out of line in ring.cc.

DOORWAY_RING_HOT void Ring::Notify(internal::WaitLine& w) {
  internal::WakeIfWaitingInline(w, stats_);
  // D1 for the doorbell: the caller's seq_cst store precedes this load. The
  // flag shares the wait line, so this is a hit when the line was just read.
  if (w.armed.load(std::memory_order_seq_cst) != 0) TakeArmed(w);
}

DOORWAY_RING_HOT void Ring::NotifyFenced(internal::WaitLine& w) {
  // F1 (fence.h): the caller published with a release store. The compiler
  // barrier keeps the flag loads after that store in program order; the CPU
  // may still perform them before the store leaves its store buffer, and the
  // waiter's HeavyFence between its W1 and its recheck is what orders the two
  // sides. Relaxed loads: the ordering comes from that fence, not from C++.
  std::atomic_signal_fence(std::memory_order_seq_cst);
  if (w.sleeping.load(std::memory_order_relaxed) != 0) internal::WakeSleepers(w, stats_);
  if (w.armed.load(std::memory_order_relaxed) != 0) TakeArmed(w);
}

DOORWAY_RING_HOT void Ring::CopyIn(uint64_t index, const std::byte* src, uint64_t len) {
  uint64_t pos = index & mask_;
  uint64_t first = cap_ - pos;  // room before the end of the data area
  if (first > len) first = len;
  internal::CopyBytes(data_ + pos, src, first);
  if (len > first) internal::CopyBytes(data_, src + first, len - first);
}

DOORWAY_RING_HOT void Ring::CopyOut(uint64_t index, std::byte* dst, uint64_t len) const {
  uint64_t pos = index & mask_;
  uint64_t first = cap_ - pos;
  if (first > len) first = len;
  internal::CopyBytes(dst, data_ + pos, first);
  if (len > first) internal::CopyBytes(dst + first, data_, len - first);
}

DOORWAY_RING_HOT int Ring::CheckWriteState() const {
  // Own state: relaxed, only this end writes it (and a handover between
  // threads/processes of this end goes through the end's lock).
  uint32_t w = ctrl_->state.writer.load(std::memory_order_relaxed);
  // A3 pairs with R3 in ShutdownRead/MarkReaderGone.
  uint32_t r = ctrl_->state.reader.load(std::memory_order_acquire);
  if (!internal::ValidState(w) || !internal::ValidState(r)) {
    Corrupt();
    return -EIO;
  }
  if (r == internal::kStateReset) return -ECONNRESET;
  if (r != internal::kStateOpen || w != internal::kStateOpen) return -EPIPE;
  return 0;
}

DOORWAY_RING_HOT int64_t Ring::LoadUsedForProducer(uint64_t* tail_out, size_t want) {
  // Own working tail from the end's private line (layout.h, LockLine):
  // relaxed, written only by this end, handed between threads/processes of
  // the end by its lock. Still validated against the head below, since the
  // peer can scribble on it.
  uint64_t tail = ctrl_->prod_lock.index.load(std::memory_order_relaxed);
  uint64_t used = tail - cached_head_;
  if (used > cap_ || cap_ - used < want) {
    // A1 pairs with R2: once we see the consumer's head, its reads of the
    // bytes before head are complete and we may overwrite them.
    cached_head_ = ctrl_->cons.index.load(std::memory_order_acquire);
    used = tail - cached_head_;
    if (used > cap_) {  // head > tail or tail - head > capacity
      Corrupt();
      return -EIO;
    }
  }
  *tail_out = tail;
  return static_cast<int64_t>(used);
}

// Stores a published index (R1 in PublishTail, R2 in PublishHead: release)
// and wakes or rings for whoever waits on w, the other side's wait line.
DOORWAY_RING_HOT void Ring::Publish(std::atomic<uint64_t>& index, internal::WaitLine& w,
                                    uint64_t value) {
  // F2 (fence.h): the other side's waiters fence and this process is
  // registered, so the publish needs no full fence of its own. Acquire
  // (pairs with nothing: `fenced` carries no data) keeps the flag loads in
  // NotifyFenced after this load. The wait line is read on every publish
  // anyway (the flags), so this is a hit.
  if (internal::FastPublish() && w.fenced.load(std::memory_order_acquire) != 0) {
    index.store(value, std::memory_order_release);  // a plain mov on x86
    NotifyFenced(w);
  } else {
    // seq_cst for D1 (Dekker with the waiter's W1 in wait.cc); on x86 this
    // is one xchg.
    index.store(value, std::memory_order_seq_cst);
    Notify(w);
  }
}

DOORWAY_RING_HOT void Ring::PublishTail(uint64_t tail, uint64_t n) {
  tail += n;
  // The working copy first (relaxed: only this end reads it), then the
  // published tail.
  ctrl_->prod_lock.index.store(tail, std::memory_order_relaxed);
  // R1 pairs with A2 (the consumer's acquire load of the tail): the bytes
  // copied above are visible before the new tail.
  Publish(ctrl_->prod.index, ctrl_->data_wait, tail);
  internal::PrefetchForWrite(data_ + (tail & mask_));
  StatAdd(stats_->bytes, n);
  StatAdd(stats_->ops);
}

// The single-buffer calls are the hot path of small messages (a 64 B
// ping-pong or a pipelined stream of small writes): they do the iovec
// version's work without the iovec loop, and the helpers they call are
// visible here for inlining.
DOORWAY_RING_HOT int64_t Ring::RoomToProduce(uint64_t want, uint64_t* tail) {
  if (int rc = CheckWriteState(); rc != 0) return rc;
  if (want == 0) return 0;
  int64_t used = LoadUsedForProducer(tail, want);
  if (used < 0) return used;
  uint64_t n = cap_ - static_cast<uint64_t>(used);
  if (n == 0) return -EAGAIN;
  return static_cast<int64_t>(n < want ? n : want);
}

DOORWAY_RING_HOT int64_t Ring::Write(const void* buf, size_t len) {
  uint64_t tail;
  int64_t n = RoomToProduce(len < cap_ ? len : cap_, &tail);
  if (n <= 0) return n;
  CopyIn(tail, static_cast<const std::byte*>(buf), static_cast<uint64_t>(n));
  PublishTail(tail, static_cast<uint64_t>(n));
  return n;
}

DOORWAY_RING_HOT int64_t Ring::WriteWhole(const void* buf, size_t len) {
  // CheckWriteState's loads (A3 pairs with R3), without its counter.
  uint32_t w = ctrl_->state.writer.load(std::memory_order_relaxed);  // own
  uint32_t r = ctrl_->state.reader.load(std::memory_order_acquire);
  if (w != internal::kStateOpen || r != internal::kStateOpen || len == 0 || len > cap_) return 0;
  // LoadUsedForProducer without its counter: a corrupt head makes
  // used > cap_, and then the test below fails as well.
  uint64_t tail = ctrl_->prod_lock.index.load(std::memory_order_relaxed);  // own, as there
  uint64_t used = tail - cached_head_;
  if (used > cap_ || cap_ - used < len) {
    cached_head_ = ctrl_->cons.index.load(std::memory_order_acquire);  // A1 pairs with R2
    used = tail - cached_head_;
    if (used > cap_ || cap_ - used < len) return 0;
  }
  CopyIn(tail, static_cast<const std::byte*>(buf), len);
  PublishTail(tail, len);
  return static_cast<int64_t>(len);
}

DOORWAY_RING_HOT int64_t Ring::LoadAvailForConsumer(uint64_t* head_out, size_t want) {
  // Own index: relaxed, written only by this end; validated below.
  uint64_t head = ctrl_->cons.index.load(std::memory_order_relaxed);
  uint64_t avail = cached_tail_ - head;
  if (avail > cap_ || avail < want) {
    // A2 pairs with R1: the bytes before the tail are visible.
    cached_tail_ = ctrl_->prod.index.load(std::memory_order_acquire);
    avail = cached_tail_ - head;
    if (avail > cap_) {
      Corrupt();
      return -EIO;
    }
  }
  *head_out = head;
  return static_cast<int64_t>(avail);
}

DOORWAY_RING_HOT void Ring::PublishHead(uint64_t head, uint64_t n) {
  // R2 pairs with A1: our reads of the consumed bytes happen before the
  // producer may overwrite them.
  Publish(ctrl_->cons.index, ctrl_->space_wait, head + n);
  StatAdd(stats_->bytes, n);
  StatAdd(stats_->ops);
}

DOORWAY_RING_HOT int64_t Ring::AvailToConsume(uint64_t want, uint64_t* head) {
  // A3 pairs with R3: a reset discards whatever is still queued (as TCP's RST).
  uint32_t w = ctrl_->state.writer.load(std::memory_order_acquire);
  if (!internal::ValidState(w)) {
    Corrupt();
    return -EIO;
  }
  if (w == internal::kStateReset) return -ECONNRESET;
  if (want == 0) return 0;
  int64_t avail = LoadAvailForConsumer(head, want);
  if (avail != 0) return avail;
  int64_t r = EmptyResult();
  if (r != -EAGAIN ||
      ctrl_->state.writer.load(std::memory_order_acquire) != internal::kStateClosed) {
    return r;
  }
  // FIN raced with the last data: take it now (bounded: one retry).
  avail = LoadAvailForConsumer(head, want);
  return avail;
}

DOORWAY_RING_HOT int64_t Ring::Read(void* buf, size_t len) {
  uint64_t total = len < cap_ ? len : cap_;
  uint64_t head;
  int64_t avail = AvailToConsume(total, &head);
  if (avail <= 0) return avail;
  uint64_t n = static_cast<uint64_t>(avail) < total ? static_cast<uint64_t>(avail) : total;
  CopyOut(head, static_cast<std::byte*>(buf), n);
  PublishHead(head, n);
  return static_cast<int64_t>(n);
}

DOORWAY_RING_HOT int64_t Ring::ReadSome(void* buf, size_t len) {
  // AvailToConsume's checks without its results for the other cases.
  uint32_t w = ctrl_->state.writer.load(std::memory_order_acquire);  // A3 pairs with R3
  if (w == internal::kStateReset || !internal::ValidState(w) || len == 0) return 0;
  uint64_t head = ctrl_->cons.index.load(std::memory_order_relaxed);  // own, as there
  uint64_t avail = cached_tail_ - head;
  if (avail > cap_ || avail < len) {
    cached_tail_ = ctrl_->prod.index.load(std::memory_order_acquire);  // A2 pairs with R1
    avail = cached_tail_ - head;
    if (avail > cap_) return 0;
  }
  if (avail == 0) return 0;
  uint64_t n = avail < len ? avail : len;
  CopyOut(head, static_cast<std::byte*>(buf), n);
  PublishHead(head, n);
  return static_cast<int64_t>(n);
}

// Wakes the sleepers of `w` if one registered since the last wake. The caller
// has just done a seq_cst store (D1) of the state the sleepers wait for.
void WakeIfWaiting(internal::WaitLine& w, RingStats* stats);

// The waiting side's half of fence.h, for the waiters (wait.cc) and armers of
// `w`. Before W1: if this process is registered, mark the line's waiters as
// fencing (relaxed load and store: when the mark becomes visible does not
// matter, a waker that does not see it yet uses the seq_cst store; it is
// never cleared).
inline void AdvertiseFence(internal::WaitLine& w) {
  if (internal::FastPublish() && w.fenced.load(std::memory_order_relaxed) == 0) {
    w.fenced.store(1, std::memory_order_relaxed);
  }
}
// After W1 and before the recheck (F1): issues the heavy fence if the line's
// waiters fence. Returns 0 (no fence needed), 1 (fenced) or -1 (needed and
// failed: the recheck proves nothing, see fence.h). seq_cst load after the
// seq_cst W1: a waker that saw `fenced` and loads the flag before W1 is
// visible implies that this load sees `fenced` (fence.h "Rules").
inline int FenceAfterArming(internal::WaitLine& w) {
  if (w.fenced.load(std::memory_order_seq_cst) == 0) return 0;
  return HeavyFence() ? 1 : -1;
}

}  // namespace doorway::transport

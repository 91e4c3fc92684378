#include "transport/ring.h"

#include <cerrno>
#include <climits>
#include <cstring>

#include "transport/internal/check.h"
#include "transport/internal/copy.h"
#include "transport/internal/futex.h"

// The per-message helpers are in ring.h (inline); rare paths stay out of
// line on purpose.
#define DOORWAY_COLD __attribute__((noinline, cold))

namespace doorway::transport {

namespace {

using internal::kStateClosed;
using internal::kStateOpen;
using internal::kStateReset;

RingStats g_unused_stats;  // sink for Rings built without stats

using internal::ValidState;

// Sum of iovec lengths, saturated at `limit` (callers pass the capacity, so
// a huge or overflowing iovec array cannot matter).
inline uint64_t IovTotal(const struct iovec* iov, int iovcnt, uint64_t limit) {
  uint64_t total = 0;
  for (int i = 0; i < iovcnt && total < limit; ++i) {
    uint64_t l = iov[i].iov_len;
    total = (l > limit - total) ? limit : total + l;
  }
  return total;
}

}  // namespace

Ring::Ring(internal::RingControl* ctrl, std::byte* data, uint64_t capacity, RingStats* stats)
    : ctrl_(ctrl),
      data_(data),
      cap_(capacity),
      mask_(capacity - 1),
      stats_(stats != nullptr ? stats : &g_unused_stats) {
  DOORWAY_CHECK(ctrl != nullptr && data != nullptr);
  DOORWAY_CHECK(capacity >= 64 && (capacity & (capacity - 1)) == 0);
  DOORWAY_CHECK(capacity <= (uint64_t{1} << 40));
  // The caches start at the current indices (they are lower bounds; any value
  // <= the real one is safe, and a corrupt one is re-read before use).
  cached_head_ = ctrl_->cons.index.load(std::memory_order_acquire);  // A1
  cached_tail_ = ctrl_->prod.index.load(std::memory_order_acquire);  // A2
}

void Ring::Corrupt() const { StatAdd(stats_->corruptions); }

// The sleeper is registered: clear the flag and wake it (out of line: rare).
DOORWAY_COLD void internal::WakeSleepers(internal::WaitLine& w, RingStats* stats) {
  // Only the waker that clears the flag makes the syscall: the sleeper may
  // take ~20 µs to run again, and the operations in between must not each
  // pay a FUTEX_WAKE.
  if (w.sleeping.exchange(0, std::memory_order_seq_cst) == 0) return;
  // Change the futex word, so that a waiter that registered but has not yet
  // entered FUTEX_WAIT returns -EAGAIN from it instead of sleeping (no lost
  // wake-up); wake all sleepers, since they all registered through one flag.
  w.seq.fetch_add(1, std::memory_order_seq_cst);
  internal::FutexWake(&w.seq, INT_MAX);
  if (stats != nullptr) StatAdd(stats->futex_wakes);
}

void WakeIfWaiting(internal::WaitLine& w, RingStats* stats) {
  internal::WakeIfWaitingInline(w, stats);
}

DOORWAY_COLD void Ring::TakeArmed(internal::WaitLine& w) {
  if (w.armed.exchange(0, std::memory_order_seq_cst) != 0) {
    doorbell_pending_ = true;
    StatAdd(stats_->doorbells);
  }
}

bool Ring::ArmReadDoorbellNoFence(uint32_t bit) {
  internal::WaitLine& w = ctrl_->data_wait;
  AdvertiseFence(w);
  if (bit == kArmSticky) {
    // W1 pairs with D1 in Notify (F1 in NotifyFenced).
    w.armed.store(kArmSticky, std::memory_order_seq_cst);
  } else {
    // An RMW, so that another waiter's sticky bit survives a later
    // DisarmReadDoorbell; seq_cst: W1 as the store.
    w.armed.fetch_or(bit, std::memory_order_seq_cst);
  }
  // F2: read after W1; whether the recheck must wait for the heavy fence.
  return w.fenced.load(std::memory_order_seq_cst) != 0;
}

bool Ring::ArmWriteDoorbellNoFence() {
  internal::WaitLine& w = ctrl_->space_wait;
  AdvertiseFence(w);
  w.armed.store(1, std::memory_order_seq_cst);  // W1 pairs with D1 in Notify (F1 in NotifyFenced)
  return w.fenced.load(std::memory_order_seq_cst) != 0;  // F2, after W1
}

bool Ring::ArmReadDoorbell(uint32_t bit) {
  if (ArmReadDoorbellNoFence(bit) && !HeavyFence()) return true;  // F1; failed: assume ready
  return ReadReady();                                             // D2
}

bool Ring::DisarmReadDoorbell() {
  return (ctrl_->data_wait.armed.fetch_and(~kArmRevocable, std::memory_order_relaxed) &
          kArmRevocable) != 0;
}

bool Ring::ArmWriteDoorbell(size_t min) {
  if (ArmWriteDoorbellNoFence() && !HeavyFence()) return true;  // F1; failed: assume ready
  return WriteReady(min);                                       // D2
}

// --------------------------------------------------------------- producer

int64_t Ring::Write(const struct iovec* iov, int iovcnt) {
  uint64_t tail;
  int64_t room = RoomToProduce(IovTotal(iov, iovcnt, cap_), &tail);
  if (room <= 0) return room;
  const auto n = static_cast<uint64_t>(room);
  uint64_t done = 0;
  for (int i = 0; done < n; ++i) {
    DOORWAY_CHECK(i < iovcnt);  // n <= the iovec total, so this cannot fire
    uint64_t len = iov[i].iov_len;
    if (len > n - done) len = n - done;
    if (len == 0) continue;  // iov_base may be null
    CopyIn(tail + done, static_cast<const std::byte*>(iov[i].iov_base), len);
    done += len;
  }
  PublishTail(tail, n);
  return room;
}

int64_t Ring::Reserve(size_t max, RingSpan* span) {
  *span = RingSpan{};
  uint64_t tail;
  int64_t n = RoomToProduce(max < cap_ ? max : cap_, &tail);
  if (n <= 0) return n;
  FillSpan(tail, static_cast<uint64_t>(n), span);
  reserved_ = static_cast<uint64_t>(n);
  return n;
}

void Ring::FillSpan(uint64_t index, uint64_t n, RingSpan* span) const {
  // The n bytes at free-running `index`: up to the end of the data area,
  // then the rest from its start.
  uint64_t pos = index & mask_;
  uint64_t first = cap_ - pos;
  if (first > n) first = n;
  span->data[0] = data_ + pos;
  span->len[0] = first;
  span->data[1] = n > first ? data_ : nullptr;
  span->len[1] = n - first;
}

int Ring::Commit(size_t n) {
  if (n > reserved_) return -EINVAL;
  if (n == 0) return 0;
  // Own working tail, relaxed (see LoadUsedForProducer).
  uint64_t tail = ctrl_->prod_lock.index.load(std::memory_order_relaxed);
  reserved_ -= n;
  PublishTail(tail, n);
  return 0;
}

int64_t Ring::Writable() {
  if (int rc = CheckWriteState(); rc != 0) return rc;
  uint64_t tail;
  int64_t used = LoadUsedForProducer(&tail, cap_);
  if (used < 0) return used;
  return static_cast<int64_t>(cap_ - static_cast<uint64_t>(used));
}

namespace {
// Raises a state word open -> closed -> reset, never lowers it. Returns true
// if it changed. R3: seq_cst store (release part pairs with A3; seq_cst part
// is D1 for the waiters).
bool RaiseState(std::atomic<uint32_t>& s, uint32_t to) {
  uint32_t cur = s.load(std::memory_order_relaxed);
  while (!(cur >= to && cur <= kStateReset)) {
    if (s.compare_exchange_weak(cur, to, std::memory_order_seq_cst, std::memory_order_relaxed))
      return true;
  }
  return false;
}
}  // namespace

void Ring::ShutdownWrite(bool reset) {
  RaiseState(ctrl_->state.writer, reset ? kStateReset : kStateClosed);  // R3
  Notify(ctrl_->data_wait);                                             // the reader: EOF / reset
  WakeIfWaiting(ctrl_->space_wait, stats_);  // other writers of this end (local): EPIPE
}

void Ring::MarkReaderGone() {
  RaiseState(ctrl_->state.reader, kStateClosed);  // R3
  WakeIfWaiting(ctrl_->space_wait, stats_);
  WakeIfWaiting(ctrl_->data_wait, stats_);
}

// --------------------------------------------------------------- consumer

DOORWAY_COLD int64_t Ring::EmptyResult() {
  // Called when no byte is readable; states were checked before the tail load.
  uint32_t r = ctrl_->state.reader.load(std::memory_order_relaxed);  // own
  if (r != kStateOpen) return 0;
  // A3 pairs with R3. This value is at least as new as the one read before
  // the tail load; if it says closed, the tail we read may predate the FIN,
  // so look at the tail once more (A2) before declaring EOF.
  uint32_t w = ctrl_->state.writer.load(std::memory_order_acquire);
  if (!ValidState(w)) {
    Corrupt();
    return -EIO;
  }
  if (w == kStateReset) return -ECONNRESET;
  if (w == kStateClosed) {
    uint64_t head = ctrl_->cons.index.load(std::memory_order_relaxed);
    uint64_t tail = ctrl_->prod.index.load(std::memory_order_acquire);  // A2
    if (tail == head) return 0;
    if (tail - head > cap_) {
      Corrupt();
      return -EIO;
    }
    return -EAGAIN;  // data raced in before the FIN; caller retries (never 0 here)
  }
  return -EAGAIN;
}

int64_t Ring::Read(const struct iovec* iov, int iovcnt) {
  uint64_t total = IovTotal(iov, iovcnt, cap_);
  uint64_t head;
  int64_t avail = AvailToConsume(total, &head);
  if (avail <= 0) return avail;
  uint64_t n = static_cast<uint64_t>(avail) < total ? static_cast<uint64_t>(avail) : total;
  uint64_t done = 0;
  for (int i = 0; done < n; ++i) {
    DOORWAY_CHECK(i < iovcnt);  // n <= the iovec total, so this cannot fire
    uint64_t len = iov[i].iov_len;
    if (len > n - done) len = n - done;
    if (len == 0) continue;  // iov_base may be null
    CopyOut(head + done, static_cast<std::byte*>(iov[i].iov_base), len);
    done += len;
  }
  PublishHead(head, n);
  return static_cast<int64_t>(n);
}

int64_t Ring::Peek(size_t offset, const struct iovec* iov, int iovcnt) {
  uint32_t w = ctrl_->state.writer.load(std::memory_order_acquire);  // A3 pairs with R3
  if (!ValidState(w)) {
    Corrupt();
    return -EIO;
  }
  if (w == kStateReset) return -ECONNRESET;
  uint64_t total = IovTotal(iov, iovcnt, cap_);
  if (total == 0) return 0;
  uint64_t head;
  uint64_t want = offset < cap_ ? offset + 1 : cap_;
  int64_t avail = LoadAvailForConsumer(&head, want);
  if (avail < 0) return avail;
  if (static_cast<uint64_t>(avail) <= offset) {
    if (avail == 0) return EmptyResult();
    // Some data, but none at `offset`: EOF if no more can come, else wait.
    if (ctrl_->state.reader.load(std::memory_order_relaxed) != kStateOpen) return 0;  // own
    uint32_t w2 = ctrl_->state.writer.load(std::memory_order_acquire);  // A3 pairs with R3
    if (w2 == kStateClosed) {
      uint64_t tail = ctrl_->prod.index.load(std::memory_order_acquire);  // A2 pairs with R1
      if (tail - head == static_cast<uint64_t>(avail)) return 0;
    }
    return -EAGAIN;
  }
  uint64_t n = static_cast<uint64_t>(avail) - offset;
  if (n > total) n = total;
  uint64_t done = 0;
  for (int i = 0; done < n; ++i) {
    DOORWAY_CHECK(i < iovcnt);  // n <= the iovec total, so this cannot fire
    uint64_t len = iov[i].iov_len;
    if (len > n - done) len = n - done;
    if (len == 0) continue;  // iov_base may be null
    CopyOut(head + offset + done, static_cast<std::byte*>(iov[i].iov_base), len);
    done += len;
  }
  return static_cast<int64_t>(n);
}

int64_t Ring::Acquire(size_t max, RingSpan* span) {
  *span = RingSpan{};
  uint64_t want = max < cap_ ? max : cap_;
  uint64_t head;
  int64_t avail = AvailToConsume(want, &head);
  if (avail <= 0) return avail;
  uint64_t n = static_cast<uint64_t>(avail) < want ? static_cast<uint64_t>(avail) : want;
  FillSpan(head, n, span);
  acquired_ = n;
  return static_cast<int64_t>(n);
}

int Ring::Release(size_t n) {
  if (n > acquired_) return -EINVAL;
  if (n == 0) return 0;
  uint64_t head = ctrl_->cons.index.load(std::memory_order_relaxed);  // own index
  acquired_ -= n;
  PublishHead(head, n);
  return 0;
}

int64_t Ring::Readable() {
  uint64_t head;
  return LoadAvailForConsumer(&head, cap_);
}

int64_t Ring::Queued() const {
  // Head and tail are read at two different moments; with a reader and a
  // writer running meanwhile, (tail - head) of two arbitrary reads may
  // exceed the capacity (tail read after the reader consumed and the writer
  // refilled) or be negative (head read after the tail). So: head, tail,
  // head again. Both indices only grow, so an unchanged head was the head
  // when the tail was read, and the pair is a state the ring really had.
  // seq_cst loads (plain loads on x86). The bound does not need the stores
  // R1/R2 to be seq_cst (they are release stores in the fenced mode,
  // fence.h): the tail load synchronises with its release store, after which
  // the producer had seen head >= tail - capacity (A1), so the second head
  // load sees at least that (coherence); symmetrically the first head load
  // synchronises with R2, after which the consumer had seen tail >= head. Bounded: if the head
  // keeps moving, the last pair is used and clamped (any value in [0, capacity] the ring passed
  // through is as good as another to a caller that races with a reader).
  uint64_t used = 0;
  for (int attempt = 0; attempt < 64; ++attempt) {
    uint64_t head = ctrl_->cons.index.load(std::memory_order_seq_cst);
    uint64_t tail = ctrl_->prod.index.load(std::memory_order_seq_cst);
    used = tail - head;  // tail read after head: >= 0 unless corrupt
    if (ctrl_->cons.index.load(std::memory_order_seq_cst) != head) continue;
    if (used > cap_) return -EIO;  // a consistent pair out of range: the peer wrote it
    return static_cast<int64_t>(used);
  }
  if (used > (uint64_t{1} << 63)) return -EIO;  // "negative": only corruption does that
  return static_cast<int64_t>(used < cap_ ? used : cap_);
}

void Ring::ShutdownRead(bool reset) {
  RaiseState(ctrl_->state.reader, reset ? kStateReset : kStateClosed);  // R3
  Notify(ctrl_->space_wait);                // the writer: EPIPE / ECONNRESET
  WakeIfWaiting(ctrl_->data_wait, stats_);  // other readers of this end (local): EOF
}

void Ring::MarkWriterGone() {
  RaiseState(ctrl_->state.writer, kStateClosed);  // R3
  WakeIfWaiting(ctrl_->data_wait, stats_);
  WakeIfWaiting(ctrl_->space_wait, stats_);
}

// ------------------------------------------------------------------- both

namespace {
EndState ToEndState(uint32_t s) {
  return s <= kStateReset ? static_cast<EndState>(s) : EndState::kCorrupt;
}
}  // namespace

EndState Ring::WriterState() const {
  return ToEndState(ctrl_->state.writer.load(std::memory_order_acquire));  // A3 pairs with R3
}

EndState Ring::ReaderState() const {
  return ToEndState(ctrl_->state.reader.load(std::memory_order_acquire));  // A3 pairs with R3
}

bool Ring::ReadReady() const {
  // D2: seq_cst loads, after the waiter's W1 in the total order. The tail
  // first: it is the value that changes in the common case (and the one a
  // spinning waiter polls); the own head is an L1 hit.
  uint64_t tail = ctrl_->prod.index.load(std::memory_order_seq_cst);
  uint64_t head = ctrl_->cons.index.load(std::memory_order_seq_cst);
  if (tail != head) return true;  // data, or corrupt indices: Read answers either way
  uint32_t w = ctrl_->state.writer.load(std::memory_order_seq_cst);
  uint32_t r = ctrl_->state.reader.load(std::memory_order_seq_cst);
  return w != kStateOpen || r != kStateOpen;  // EOF, reset or corrupt: Read answers
}

bool Ring::WriteReady(size_t min) const {
  uint32_t w = ctrl_->state.writer.load(std::memory_order_seq_cst);  // D2
  uint32_t r = ctrl_->state.reader.load(std::memory_order_seq_cst);
  if (w != kStateOpen || r != kStateOpen) return true;
  uint64_t tail = ctrl_->prod.index.load(std::memory_order_seq_cst);
  uint64_t head = ctrl_->cons.index.load(std::memory_order_seq_cst);
  uint64_t used = tail - head;
  if (used > cap_) return true;  // corrupt: Write returns -EIO
  uint64_t need = min == 0 ? 1 : (min < cap_ ? min : cap_);
  return cap_ - used >= need;
}

void Ring::WakeConsumers() {
  ctrl_->data_wait.seq.fetch_add(1, std::memory_order_seq_cst);
  internal::FutexWake(&ctrl_->data_wait.seq, INT_MAX);
  StatAdd(stats_->futex_wakes);
}

void Ring::WakeProducers() {
  ctrl_->space_wait.seq.fetch_add(1, std::memory_order_seq_cst);
  internal::FutexWake(&ctrl_->space_wait.seq, INT_MAX);
  StatAdd(stats_->futex_wakes);
}

}  // namespace doorway::transport

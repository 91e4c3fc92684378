// Accelerated TCP: connections whose bytes travel through a shared-memory
// segment (//transport) instead of the loopback stack, and the listeners
// that accept them (DESIGN §4-§6).
//
// How the pieces fit:
//   listen(fd)   The kernel listener moves to a hidden fd; a door (door.h)
//                opens beside it; an epoll fd watching both takes the
//                program's fd number, so poll/select/epoll on the listener
//                wake for either kind of connection without doorway being
//                involved in the wait. The Listener object is installed at
//                the fd with tag kTagListener.
//   connect(fd)  To an address with a door: knock (door.h), create a segment,
//                send a Hello with the segment's memfd (SCM_RIGHTS), and put
//                the door connection's Unix socket on the program's fd number
//                (dup3), replacing the TCP socket. The connection is usable at
//                once; the server maps the segment when it accepts. Without a
//                door, or if anything fails, the kernel's connect.
//   accept(fd)   Door connections and TCP connections, whichever is pending.
//   data         Connection::Read/Write move bytes through the rings; a
//                blocking call spins, then sleeps on the ring's futex
//                (transport/wait.h), watching the Unix socket for the peer's
//                death. The poll and epoll engines (poll.h, epoll.h) compute
//                readiness from the rings; when they must sleep in the
//                kernel they arm the rings, and the peer then sends a
//                one-byte doorbell on the Unix socket when data or room
//                arrives. Nothing else listens to that socket: a wait that
//                bypasses libc (io_uring, raw syscalls) does not see
//                accelerated readiness.
//   close        The last fd of a Connection in this process shuts its rings
//                down (reset if unread data remained), unless the connection
//                is shared with another process since a fork: then the peer
//                learns of the close when the last process closes the Unix
//                socket (POLLHUP on the door connection).
#ifndef DOORWAY_RUNTIME_ACCEL_H_
#define DOORWAY_RUNTIME_ACCEL_H_

#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cstdint>

#include "fdtable/fdtable.h"
#include "runtime/config.h"
#include "runtime/door.h"
#include "runtime/endpoint.h"
#include "transport/lock_bias.h"
#include "transport/segment.h"
#include "transport/wait.h"

namespace doorway::stats {
struct Slot;
}

namespace doorway::runtime {

// Routing tags beside fd table entries (fdtable::FdTable::Tag).
enum FdTag : std::uint32_t {
  kTagPlain = 0,       // a kernel socket doorway only tracks
  kTagConnection = 1,  // an accelerated connection
  kTagListener = 2,    // an accelerated listener
  kTagEpoll = 3,       // an epoll fd with accelerated or nested members (runtime/epoll.h)
  kTagEpollPlain = 4,  // an epoll fd with neither (yet): the kernel answers for it
};

// Socket options that are answered from a snapshot taken from the kernel
// (the client's TCP socket at connect, the listener at listen) and updated
// by setsockopt.
struct OptionSnapshot {
  static constexpr int kCount = 20;
  std::atomic<int> value[kCount];
  std::atomic<bool> known[kCount];
  std::atomic<std::int64_t> rcvtimeo_ns{0};  // 0 = none
  std::atomic<std::int64_t> sndtimeo_ns{0};
  std::atomic<int> linger_onoff{0};
  std::atomic<int> linger_secs{0};
  void CopyFrom(const OptionSnapshot& o);
  void ReadFrom(int kernel_fd);  // getsockopt on a kernel TCP socket
  // Kernel defaults for a fresh socket of `domain`, then the options in
  // `mask` (OptionBit) read from kernel_fd.
  void ReadChanged(int kernel_fd, int domain, std::uint32_t mask);

 private:
  void ReadTimeoutsAndLinger(int kernel_fd);
};

// The bit NoteOptionSet records for (level, name).
std::uint32_t OptionBit(int level, int name);

// A connection's wait policy: the transport's adaptive default, or the
// fixed budget that DOORWAY_SPIN_NS asks for.
inline transport::SpinPolicy ConnSpinPolicy() {
  long long ns = GetConfig().spin_ns;
  return ns < 0 ? transport::SpinPolicy() : transport::SpinPolicy(ns, ns, ns);
}

struct Connection {
  static constexpr std::uint32_t kTypeTag = 0x434F4E4E;  // "CONN"
  Connection() = default;
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  transport::Segment seg;
  transport::Role role = transport::Role::kClient;
  transport::RingStats tx_stats, rx_stats;
  transport::Ring tx, rx;
  transport::SpinPolicy rx_spin = ConnSpinPolicy(), tx_spin = ConnSpinPolicy();
  Endpoint local, peer;
  OptionSnapshot opts;
  std::atomic<int> fds{0};  // fd numbers of this process that refer to it
  std::atomic<bool> nonblocking{false};
  // The program set file flags other than O_NONBLOCK (O_ASYNC, O_APPEND...)
  // or a signal owner: the door socket is not kept for reuse, whose next
  // connection sets only O_NONBLOCK, and only if it differs.
  std::atomic<bool> odd_flags{false};
  // This end ever armed a doorbell (poll, select, epoll): only then can the
  // peer have sent doorbells that a kept door socket must drain before its
  // next connection (reuse.h).
  std::atomic<bool> ever_armed{false};
  std::atomic<bool> shut_rd{false};
  std::atomic<bool> shut_wr{false};
  std::atomic<bool> reset_reported{false};
  std::atomic<bool> shared{false};  // another process may hold it (fork)
  // The biased locks in front of the ends' ShmMutexes (consumer end of rx,
  // producer end of tx; transport/lock_bias.h): the thread that uses an
  // end locks it with plain stores until another thread wants it. Never
  // biased when shared (MarkAllShared revokes them before a fork).
  transport::LockBias rx_bias, tx_bias;
  // The segment may be reused for a later connection when this one ends
  // (transport/segment.h, "Reuse"): the peer has our uid (it may read our
  // memory anyway), and no other process got the connection (fork, exec).
  bool recyclable = false;
  std::atomic<int> connect_state{0};  // 1: EINPROGRESS reported, 2: completion reported
  // Bumped each time a read or write found the ring empty / full and said
  // EAGAIN: an edge-triggered epoll owes the program a new edge after that.
  std::atomic<std::uint32_t> rx_eagain_gen{0};
  std::atomic<std::uint32_t> tx_eagain_gen{0};
  // Epoll memberships of this connection in this process (runtime/epoll.cc
  // EpollSet::Add/Remove): when not 0, a change the peer does not ring for
  // (close, shutdown here) or a doorbell taken by another waiter is
  // reported to the sets (NoteEpollChange). Relaxed everywhere: a count
  // read while a set adds or drops c concurrently (a race in the program
  // itself) errs either way harmlessly: a new member starts on its set's
  // check list, a dropped one needs no note.
  std::atomic<int> epoll_regs{0};
  // An EPOLL_CTL_DEL the kernel was not told of (runtime/epoll.cc
  // "Parking"): ((epfd + 1) << 32) | fd of the registration it left in the
  // kernel's set, or 0. At most one per connection; whoever exchanges it to
  // 0 owns the kernel registration (a re-ADD reuses it; a close of the
  // connection's fd deletes it first, EpollDropParked).
  std::atomic<std::uint64_t> epoll_parked{0};
  // close() of the last fd while calls of this process wait on the
  // connection (another thread blocked in read or write): the kernel keeps
  // a socket open while a system call holds its file, so the release waits
  // for the last such call, and held_fd (a duplicate of the Unix socket)
  // keeps the peer from seeing a hang-up and stands in for the closed
  // number in the waits' liveness checks.
  std::atomic<int> waiting{0};  // calls that waited (counted until they return)
  std::atomic<bool> release_pending{false};
  std::atomic<int> held_fd{-1};
  // The connection's slot in the process's stats file (runtime/stats.h);
  // the rings count into it. Null: counted in tx_stats/rx_stats, unpublished.
  // Door socket reuse (runtime/reuse.h). socket_ino: the door socket's
  // inode (set by Install). Client: the destination (unmapped) and door
  // identity the socket leads to. Server: the listener it came from
  // (g_listeners index and serial, 0: none).
  std::uint64_t socket_ino = 0;
  // A hidden duplicate (close-on-exec) of the door socket kept from the
  // set-up on a kept socket until the close, where it is the end that is
  // kept again: saves the close of the hidden number at set-up and the dup
  // at close, on each side (accel.cc TakeDoorDup). -1: none. Closed with
  // the connection when it is not kept (the peer then sees the hang-up).
  std::atomic<int> door_dup{-1};
  Endpoint door_dest;
  std::uint64_t door_id = 0;
  uid_t door_uid = 0;
  int listener_index = -1;
  std::uint64_t listener_serial = 0;
  uid_t peer_uid = 0;  // server: the client's credentials (SO_PEERCRED)
  pid_t peer_pid = 0;
  stats::Slot* stats = nullptr;
  // Next time a caller that does not wait may look for the peer's death
  // (accel.cc PeerGoneRarely), CLOCK_MONOTONIC ns.
  std::atomic<std::int64_t> next_liveness_ns{0};
  // How far into its first lap this process populated the tx ring's pages
  // ahead of its writes (accel.cc PopulateAhead); the capacity once done.
  std::atomic<std::uint64_t> tx_populated{0};
};

struct Listener {
  static constexpr std::uint32_t kTypeTag = 0x4C53544E;  // "LSTN"
  Listener() {
    for (auto& p : pending) p.store(-1, std::memory_order_relaxed);
    for (int& m : retry_memfd) m = -1;
  }
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  int tcp_fd = -1;            // the kernel listener (hidden, non-blocking)
  int door_fd[2] = {-1, -1};  // doors (hidden); [1] only for dual-stack [::]
  char door_path[2][kDoorPathMax] = {};
  Endpoint local;
  int domain = 0;
  pid_t creator = 0;
  OptionSnapshot opts;  // inherited by accepted connections
  std::atomic<int> fds{0};
  std::atomic<bool> shared{false};
  // The last look into the wake FIFO found a record (reuse.h): the next
  // accept reads it first, without the flags query and the epoll_wait (a
  // client that runs ahead has several queued). A hint.
  std::atomic<bool> wake_records{false};
  std::atomic<unsigned> turn{0};  // alternates door/TCP so neither starves
  // How long a blocking accept that finds nothing looks again before it
  // sleeps (ManagedAccept): adapted to the gaps between connections.
  std::atomic<std::int64_t> accept_spin_ns{0};
  // Door connections accepted before their Hello arrived (the client sends
  // it just after connecting, but a loaded machine can delay it): watched
  // by the listener's epoll fd and completed by a later accept, so that an
  // accept never waits for one client's Hello. -1: free slot.
  // Also the server ends of door sockets kept for reuse (runtime/reuse.h),
  // marked in pending_reused (bit i for slot i; set or cleared by the slot's
  // claimer before the slot publishes its fd).
  static constexpr int kMaxPending = 64;
  std::atomic<int> pending[kMaxPending];
  std::atomic<std::uint64_t> pending_reused{0};
  // Door socket reuse (reuse.h): kept ends are parked in pending slots
  // but watched by no epoll set: a kept end hangs up when its client
  // exits, and the listener must not look readable for that (a program
  // told so calls a blocking accept). A client that starts a connection on
  // a kept socket writes a fixed-size record into the listener's wake FIFO
  // (wake2.<door>, wake_rd in the listener's epoll set; wake_wr is our own
  // writer, so that the FIFO never reads as hung up): which parked end (by
  // its previous connection's arena slot, reused_key) and the Hello; accept
  // takes one record per connection, so the listener is readable exactly
  // while some are pending. Parked ends whose client hung up are closed by
  // ReapKeptEnds now and then. registry_index: the g_listeners entry (-1:
  // none, e.g. inherited across exec).
  int wake_rd = -1;
  int wake_wr = -1;
  int registry_index = -1;
  // Accepts between reading a wake record and claiming its parked end
  // (accel.cc ReapKeptEnds must not close that end meanwhile).
  std::atomic<int> records_inflight{0};
  // Per pending slot holding a kept end: what the accept of the next
  // connection on it needs (the arena of the socket's previous connection,
  // for a Hello without memfd; the client's credentials; the socket's
  // inode). Allocated with ep_fd (too big for the fd table's node).
  struct Reused {
    transport::ArenaSlotRef arena;
    uid_t uid = 0;
    pid_t pid = 0;
    std::uint64_t ino = 0;
    bool nonblock = false;  // O_NONBLOCK on the parked end's file
    int dup = -1;           // accept: the hidden end, for Connection::door_dup
  };
  Reused* reused = nullptr;
  // Per slot holding a kept end: a hash of its arena slot's identity
  // (accel.cc SlotKey), written before the slot publishes its fd, so that a
  // record's end is found without claiming every slot (the claim checks
  // the whole identity).
  std::atomic<std::uint64_t>* reused_key = nullptr;
  std::uint64_t serial = 0;  // its g_listeners entry's serial
  // A parked connection whose Hello did arrive but which could not be set
  // up for lack of memory (accept said ENOMEM, as the kernel's does, and
  // the client's connection waits, as in a TCP backlog): its memfd (>= 0)
  // and the Hello's addresses, until a later accept completes it. Written
  // before the slot's pending[] store that publishes the connection, read
  // after the exchange that claims it. Only the first kMaxRetry slots hold
  // such connections (the fd table node has no room for more); when they
  // are taken, a connection that cannot be set up is dropped (reset).
  static constexpr int kMaxRetry = 4;
  int retry_memfd[kMaxRetry];
  Endpoint retry_client[kMaxRetry];
  Endpoint retry_server[kMaxRetry];
  std::uint64_t retry_offset[kMaxRetry] = {};  // Hello::segment_offset
};

// In a fork child: the door connections still waiting for their Hello
// belong to the parent (which accepted them); the child's copies close, as
// do its copies of the connections' Connection::door_dup.
void ForgetPendingHellos();

// Called by the bookkeeping in sockets.cc when an fd number stops or starts
// referring to a managed object (close, dup2 over it, close_range; dup).
void OnFdAttached(const fdtable::Ref& ref);
// fd: the number going away, still open (close() passes it, so that a
// connection another thread waits on can be held open); -1 if unknown.
void OnFdDetached(const fdtable::Ref& ref, int fd = -1);
// The descriptors doorway itself holds (segment memfds, listeners' kernel
// sockets and doors) within [first, last], sorted; at most max. Returns
// how many.
int CollectOwnFds(unsigned first, unsigned last, int* out, int max);
// Before fork: every managed object becomes shared between the processes.
void MarkAllShared();
// After exec (runtime/inherit.h): a connection rebuilt from its segment.
void InitInheritedConnection(Connection& c, transport::Segment seg, transport::Role role,
                             const Endpoint& local, const Endpoint& peer, bool shared, int fd);

// ---- the calls abi/ routes here; each returns the result or -errno ----
int Listen(int fd, int backlog);
int Connect(int fd, const sockaddr* addr, socklen_t len);
// For fds whose tag is not kTagPlain:
int ManagedAccept(int fd, sockaddr* addr, socklen_t* len, int flags, bool accept4);
ssize_t ManagedRecv(int fd, const iovec* iov, int iovcnt, int flags, msghdr* msg);
ssize_t ManagedSend(int fd, const iovec* iov, int iovcnt, int flags);
// ManagedRecv/ManagedSend of one buffer without a msghdr (read, recv,
// write, send): the same, on a shorter path.
ssize_t ManagedRead(int fd, void* buf, size_t n, int flags);
ssize_t ManagedWrite(int fd, const void* buf, size_t n, int flags);
int ManagedRecvmmsg(int fd, mmsghdr* msgs, unsigned n, int flags, timespec* timeout);
int ManagedSendmmsg(int fd, mmsghdr* msgs, unsigned n, int flags);
ssize_t ManagedSendfile(int out_fd, int in_fd, off_t* offset, size_t count);
ssize_t ManagedSplice(int fd_in, loff_t* off_in, int fd_out, loff_t* off_out, size_t len,
                      unsigned flags);
int ManagedShutdown(int fd, int how);
int ManagedGetsockname(int fd, sockaddr* addr, socklen_t* len, bool peer);
int ManagedGetsockopt(int fd, int level, int name, void* value, socklen_t* len);
int ManagedSetsockopt(int fd, int level, int name, const void* value, socklen_t len);
int ManagedIoctl(int fd, unsigned long request, void* arg);
int ManagedFcntl(int fd, int cmd, unsigned long arg, bool fcntl64);
int ManagedBind(int fd, const sockaddr* addr, socklen_t len);

// For doorway_fd_info and tests.
bool IsAccelerated(int fd);

// The accelerated listener at fd becomes its kernel listener again (before
// it is sent to another process with SCM_RIGHTS, runtime/pass.h): the door
// closes to new clients (they connect over TCP), the door connections
// already made are relayed into the kernel listener's backlog, and fd (and
// any duplicate) becomes the kernel listener. Returns 0 or -errno.
int UnaccelerateListener(int fd);

// ---- readiness, for the poll engine (runtime/poll.h) ----
// The poll(2) events of an accelerated connection, computed from its rings:
// POLLIN/POLLRDNORM, POLLOUT/POLLWRNORM, POLLRDHUP, POLLHUP, POLLERR.
// With the connection's fd, a connection with nothing to report also looks
// for the peer's death on the door socket, at most every 10 ms (for poll
// with a zero timeout, which never sleeps on that socket).
// asked: the events the caller waits for (poll's or epoll's mask; POLLOUT
// and POLLWRNORM have the same values as EPOLLOUT and EPOLLWRNORM). Without
// either of those, POLLOUT may be missing from the result, which then costs
// no look at the peer's consumer index (accel.cc QuickPollEvents).
short ConnPollEvents(Connection& c, int fd = -1, short asked = POLLOUT);
// Before sleeping in the kernel on c's Unix socket for `events` (POLLIN,
// POLLOUT): arms c's rings so that the peer sends a doorbell when they
// become ready. Returns true if c is ready already (do not sleep then).
bool ArmDoorbells(Connection& c, short events);
// Records that c armed a doorbell (Connection::ever_armed).
inline void NoteArmed(Connection& c) {
  if (!c.ever_armed.load(std::memory_order_relaxed)) {
    c.ever_armed.store(true, std::memory_order_relaxed);
  }
}
// The same in two steps, for poll and epoll, which arm many connections
// before one sleep and should pay one heavy fence (transport/fence.h), not
// one per ring: ArmDoorbellsNoFence stores the flags of each connection and
// returns whether a fence is needed; then, if any said so, one
// transport::HeavyFence() (if it fails, treat every armed connection as
// ready); then ArmedReady rechecks each connection (true: do not sleep).
bool ArmDoorbellsNoFence(Connection& c, short events);
bool ArmedReady(Connection& c, short events);
// After such a sleep: takes the doorbells off the socket fd. Returns how
// many were there.
// *hung_up (optional): whether the peer hung up (an empty message, EOF, came
// after the doorbells).
int DrainDoorbells(int fd, bool* hung_up = nullptr);
// Blocks (spin, then futex) until c has one of `events` (POLLIN or POLLOUT)
// or timeout_ns passes (-ETIMEDOUT) or a signal arrives (-EINTR). fd is the
// connection's fd (its Unix socket shows the peer's death).
int ConnWait(Connection& c, int fd, short events, std::int64_t timeout_ns);
// The peer's socket hung up: whatever the rings say, the peer is gone.
void NotePeerHangup(Connection& c);

}  // namespace doorway::runtime

#endif  // DOORWAY_RUNTIME_ACCEL_H_

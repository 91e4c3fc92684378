// Door socket reuse: the Unix socket pair of a closed accelerated connection
// carries the next connection between the same client process and listener.
//
// Why: a door connection costs the client socket + connect + close and the
// server accept4 + close of a Unix socket, ~60% of an accelerated
// connection's set-up once segments come from arenas (docs/accelerated-tcp.md).
// Kernel TCP pays the same kind of objects, so the set-up could not get much
// cheaper than TCP's while each connection made its own.
//
// How: when the program closes a connection, each side keeps its end of the
// door socket instead of closing it (the rings' shutdown flags, not the
// socket's hang-up, tell the peer, plus a doorbell for a peer waiting in
// poll/epoll). The server parks its end with the listener, as a door
// connection whose Hello has not arrived yet (Listener::pending), and then
// releases the connection's segment; the client keeps its end here, with a
// watch on that release. A later connect to the same destination takes an
// end whose server released (so the server's end is parked, or closed: a
// hang-up, and the connect takes the door as usual) and writes a record
// into the listener's wake FIFO naming the parked end (by the arena slot
// of the socket's previous connection) with the Hello; the listener's
// accept claims that end. Nothing goes on the socket itself unless the new
// segment is in another arena (then the Hello with its memfd follows the
// record). Stale doorbells of the old connection are drained.
//
// A connect that finds no released end but at least four
// still with their server waits for a release (up to 100 µs, adaptive,
// reuse.cc kWaitDepth) instead of entering the door, so that a client
// running ahead of its server does not fall back to new socket pairs, the
// dearer set-up for both sides. Each kept end remembers its O_NONBLOCK and
// whether its connection ever armed a doorbell: the next connection sets
// the flags only if they differ and drains doorbells only if some can have
// come (else it polls for the server end's hang-up); a
// connection whose program set other file flags (O_ASYNC...) or a signal
// owner is not kept.
//
// Only for connections on arena segments (same uid), not shared with another
// process (fork, exec, spawn, SCM_RIGHTS), closed by their last fd while no
// call waits on them; the server's listener must be alive and not shared.
// DOORWAY_REUSE_DOORS=0 turns it off.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>

#include "runtime/endpoint.h"
#include "transport/segment.h"

namespace doorway::runtime {

inline constexpr int kReusedDoors = 64;
// Listeners whose wake FIFO a process keeps open at once.
inline constexpr int kMaxDoorWakes = 16;

// Keeps `fd` (the client end of a closed connection's door socket, a
// duplicate the caller made: close-on-exec, out of the program's way) for a
// later connect to `dest`, or closes it. `ino` is the socket's inode (checked
// again before reuse), `door_id` the listener's door identity (the arena key)
// and `server_uid` the server's uid. Async-signal-safe (try-lock).
// `nonblock`: whether the socket's file has O_NONBLOCK now (its connection's
// last flags), so that the next connect sets the flags only if they differ.
// `armed`: the connection ever armed a doorbell (Connection::ever_armed);
// if not, the server sent none, and the next connect need not drain any.
void KeepClientDoor(int fd, std::uint64_t ino, const Endpoint& dest, std::uint64_t door_id,
                    uid_t server_uid, transport::ArenaSlotRef slot, bool nonblock, bool armed);

// A kept door socket to `dest` whose server is done with its previous
// connection and parked its end (a server end closed meanwhile shows as a
// hang-up here: -1 then), or -1. Its stale doorbells are drained. *prev:
// that connection's slot, which names the socket to the server in the wake
// record (a Hello for a slot of the same arena goes in the record, without
// the memfd: the server holds that arena for the socket). *wake: the
// listener's wake FIFO (Listener::wake_rd), where the record goes
// (WakeListener).
// On -1 the outputs mean nothing (some may be set).
int TakeClientDoor(const Endpoint& dest, std::uint64_t* ino, std::uint64_t* door_id,
                   uid_t* server_uid, transport::ArenaSlotRef* prev, int* wake, bool* nonblock);

// Opens (once per listener) the wake FIFO beside the door at door_path,
// whose identity is door_id; false if there is none (then connections
// through that door are not kept for reuse).
bool NoteDoorWake(std::uint64_t door_id, const char* door_path);

// Writes a wake record (accel.cc WakeRecord: a connection on a kept door
// socket, with its Hello or announcing one sent on the socket) into its
// listener's wake FIFO, whole or not at all; false if not written (the
// FIFO is full: the listener is that far behind).
inline constexpr std::size_t kWakeRecordMax = 128;
bool WakeListener(int wake, const void* record, std::size_t size);

// The kept sockets' and wake FIFOs' fds (at most kReusedDoors +
// kMaxDoorWakes), so that close_range/closefrom leave them alone.
int ClientDoorFds(int* out, int max);

}  // namespace doorway::runtime

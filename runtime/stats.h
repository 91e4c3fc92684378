// Live per-connection statistics for //tools:stat, published without a
// daemon (DESIGN §11; the file format is stats_format.h).
//
// How it works: the first time a process uses an Internet socket (or gets
// an accelerated connection), it creates "<door dir>/stats.<pid>" (mode
// 0600, O_EXCL|O_NOFOLLOW under a temporary name, renamed into place once
// its header is complete) and maps it. Each accelerated connection claims a
// slot there; the connection's transport::RingStats *are* the slot's
// counters (the rings bump them as they always did), so the data path pays
// nothing to publish. The tool maps the file read-only and reads racily.
//
// Life cycle:
//   StatsConfigure    from Initialise, once the settings are known
//   StatsOpen         InitConnection: claim a slot, describe the segment
//   StatsTx/StatsRx   the counters to hand to Segment::MakeTxRing/MakeRxRing
//   StatsPublish      once the connection has its fd and addresses: visible
//   StatsClose        ~Connection: counters go to the process totals, slot freed
//   StatsAfterFork    the child gets a copy of its own (its counters restart
//                     at zero), so the two processes never write the same
//                     counters, published as its file at once if it has live
//                     connections, else at its first socket; both processes
//                     mark their connections shared
//   at exit           the file is removed (a destructor); a process killed
//                     before that leaves a stale file, which the tool
//                     recognises (pid gone or started at another time),
//                     ignores and removes.
// Everything here is async-signal-safe (system calls and atomics only) and
// never fails a socket call: without a file, connections simply are not
// shown.
#ifndef DOORWAY_RUNTIME_STATS_H_
#define DOORWAY_RUNTIME_STATS_H_

#include <sys/types.h>

#include "runtime/config.h"
#include "transport/ring.h"

namespace doorway::runtime {

struct Connection;

void StatsConfigure(const Config& config);
// An Internet socket appeared in this process: make sure the file exists,
// so that the process and its plain sockets are listed even before it has
// an accelerated connection.
void StatsNoteSocket();
void StatsOpen(Connection& c);
transport::RingStats* StatsTx(Connection& c);
transport::RingStats* StatsRx(Connection& c);
void StatsPublish(Connection& c, int fd);
void StatsClose(Connection& c);
// Called in both processes right after fork (child: pid == 0).
void StatsAfterFork(pid_t pid);
// Every live connection is now shared with another process (posix_spawn
// hands them to the child without a fork of ours).
void StatsMarkShared();
// A connect (client) or an accept (server) returned an accelerated
// connection: counted where the debug log says so, for the exit summary
// (DOORWAY_STATS=exit), so that a benchmark can prove acceleration without
// paying a log write per connection. Process-local, async-signal-safe.
void StatsNoteAccelerated(bool accepted);

}  // namespace doorway::runtime

#endif  // DOORWAY_RUNTIME_STATS_H_

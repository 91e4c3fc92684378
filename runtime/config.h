// Settings read from DOORWAY_* environment variables, once, at
// initialisation (getenv is not safe earlier). See docs/configuration.md.
#ifndef DOORWAY_RUNTIME_CONFIG_H_
#define DOORWAY_RUNTIME_CONFIG_H_

#include "runtime/log.h"

namespace doorway::runtime {

// How the I/O of sockets that are not accelerated is carried (DESIGN §8).
enum class FallbackMode : int {
  kPassthrough = 0,  // the direct libc call
  kUring = 1,        // the io_uring engine (transport/uring)
  kUringSqpoll = 2,  // the same with SQPOLL rings (opt-in; cores to spare)
};

// What the runtime publishes for //tools:stat (runtime/stats.h).
enum class StatsMode : int {
  kOff = 0,   // nothing
  kOn = 1,    // a stats file per process under the door directory
  kExit = 2,  // the same, plus one summary line per process at exit (the log's destination)
};

struct Config {
  // DOORWAY_DISABLE=1: track nothing, accelerate nothing; pure pass-through.
  bool disabled = false;
  // DOORWAY_ACCELERATE=0: interpose and track as usual, but open no doors
  // and knock on none (every connection stays kernel TCP). For measuring
  // the pass-through cost, and for ruling acceleration out when debugging.
  bool accelerate = true;
  // DOORWAY_LOG=off|error|warn|info|debug.
  LogLevel log_level = LogLevel::kOff;
  // DOORWAY_LOG_FILE=path: append log lines there instead of stderr.
  const char* log_file = nullptr;
  // DOORWAY_DIR=path: the door directory (default /tmp/doorway-<uid>). When
  // set, a door for the exact destination address is tried for any address,
  // so containers sharing the directory find each other across namespaces.
  const char* door_dir = nullptr;
  // DOORWAY_ALLOW_UIDS=uid,uid,...: peers of these uids are accelerated too
  // (default: only our own uid).
  static constexpr int kMaxAllowedUids = 16;
  unsigned allowed_uids[kMaxAllowedUids] = {};
  int allowed_uid_count = 0;
  // DOORWAY_FALLBACK=passthrough|uring|uring-sqpoll: the path of kernel sockets
  // that are not accelerated. Default chosen by measurement (docs/fallback.md).
  FallbackMode fallback = FallbackMode::kPassthrough;
  // DOORWAY_STATS=on|off|exit.
  StatsMode stats = StatsMode::kOn;
  // DOORWAY_SPIN_NS=N (0..1000000000): every wait spins for exactly N ns
  // before it sleeps (blocking calls on accelerated connections and the
  // poll/select/epoll engines), instead of the adaptive default. For
  // studying the spin-versus-sleep policy (docs/benchmarks.md). -1: unset.
  long long spin_ns = -1;
  // DOORWAY_REUSE_DOORS=0: every accelerated connection makes its own door
  // connection (runtime/reuse.h), as before door sockets were reused.
  bool reuse_doors = true;
  // DOORWAY_ASYMMETRIC_FENCE=0: never register for membarrier(2); this
  // process's wakers always publish ring indices with a full fence and its
  // waiters never ask for the cheap publish (transport/fence.h). For A/B
  // measurements, and for programs that deny membarrier with seccomp after
  // start-up.
  bool asymmetric_fence = true;

  // Variables reported as bad by ParseConfig (pointers into envp, name
  // lengths), for ForgetReportedSettings.
  static constexpr int kMaxReported = 16;
  const char* reported[kMaxReported] = {};
  unsigned long reported_len[kMaxReported] = {};
  int reported_count = 0;
};

// The names of the settings ParseConfig reads (null-terminated); every one
// is in docs/configuration.md's table (config_test).
extern const char* const kSettingNames[];

// Parses the environment. A bad value, or a DOORWAY_* name that is not a
// setting (a typo), is reported on stderr and the default is used: the
// program must still run. Every setting is parsed here and listed in
// docs/configuration.md (config_test checks that the two agree).
Config ParseConfig(const char* const* envp);

// Takes the reported variables out of the process's environment (unsetenv),
// so that the programs it starts use the same defaults without repeating
// the message: a bad setting is reported once per program tree, by the
// first process that loads doorway.
void ForgetReportedSettings(const Config& config);

// The process's settings (valid after initialisation).
const Config& GetConfig();
void SetConfig(const Config& config);

}  // namespace doorway::runtime

#endif  // DOORWAY_RUNTIME_CONFIG_H_

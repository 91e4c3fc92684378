#include "runtime/runtime.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "runtime/config.h"
#include "runtime/endpoint.h"
#include "runtime/fallback.h"
#include "runtime/inherit.h"
#include "runtime/log.h"
#include "runtime/real.h"
#include "runtime/sockets.h"
#include "runtime/stats.h"
#include "transport/fence.h"

namespace doorway::runtime {

namespace {

// 0 = not started, 1 = running, 2 = done.
constinit std::atomic<int> g_init_state{0};

}  // namespace

bool Initialised() { return g_init_state.load(std::memory_order_acquire) == 2; }

void Initialise() {
  int expected = 0;
  if (!g_init_state.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) return;
  real::ResolveAll();
  Config config = ParseConfig(environ);
  if (config.log_file != nullptr) {
    int fd =
        static_cast<int>(syscall(SYS_openat, AT_FDCWD, config.log_file,
                                 O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (fd >= 0) {
      g_log_fd.store(fd, std::memory_order_relaxed);
    } else {
      RawLog(LogLevel::kWarn, "cannot open DOORWAY_LOG_FILE=%s (%s); logging to stderr",
             config.log_file, strerror(errno));
      // Like a bad setting: reported once, and the programs this one starts
      // log to stderr without repeating the message.
      unsetenv("DOORWAY_LOG_FILE");
    }
  }
  g_log_level.store(static_cast<int>(config.log_level), std::memory_order_relaxed);
  SetConfig(config);
  // Before any ring exists, and while the process most likely has one
  // thread (registering a multi-threaded one costs an RCU grace period).
  // The biased end locks' fence too (transport/lock_bias.h), under the
  // same switch.
  if (!config.disabled && config.asymmetric_fence) {
    (void)transport::EnableAsymmetricFence();
    (void)transport::EnableProcessFence();
  }
  ForgetReportedSettings(config);
  StatsConfigure(config);
  SetTrackingEnabled(!config.disabled);
  fallback::Configure(config.disabled ? FallbackMode::kPassthrough : config.fallback);
  // Accelerated connections first, so that the scan does not take their
  // Unix sockets for plain ones.
  int adopted = config.disabled ? 0 : AdoptInheritedConnections();
  int inherited = config.disabled ? 0 : ScanInheritedSockets();
  DOORWAY_LOG(kInfo, "loaded into %s%s; %d inherited socket(s), %d accelerated",
              program_invocation_short_name, config.disabled ? " (disabled)" : "", inherited,
              adopted);
  // A1: release pairs with the acquire in Initialised().
  g_init_state.store(2, std::memory_order_release);
}

namespace {
// Priority 101: as early as a constructor can run, so that sockets created
// by other constructors are seen by an initialised runtime.
__attribute__((constructor(101))) void InitialiseAtLoad() { Initialise(); }
}  // namespace

}  // namespace doorway::runtime

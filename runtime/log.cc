#include "runtime/log.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>

namespace doorway::runtime {

constinit std::atomic<int> g_log_level{static_cast<int>(LogLevel::kOff)};
constinit std::atomic<int> g_log_fd{2};

void RawLog(LogLevel level, const char* fmt, ...) {
  int saved_errno = errno;
  char buf[512];
  int n = snprintf(buf, sizeof(buf), "doorway[%ld]: ", static_cast<long>(syscall(SYS_getpid)));
  if (n < 0) n = 0;
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(buf + n, sizeof(buf) - static_cast<size_t>(n), fmt, ap);
  va_end(ap);
  if (m < 0) m = 0;
  size_t len = static_cast<size_t>(n) + static_cast<size_t>(m);
  if (len > sizeof(buf) - 1) len = sizeof(buf) - 1;
  if (len == 0 || buf[len - 1] != '\n') buf[len++] = '\n';
  (void)level;
  // One write per line: the kernel does not interleave one write(2) to a pipe
  // or an O_APPEND file with another process's write of at most PIPE_BUF.
  (void)syscall(SYS_write, g_log_fd.load(std::memory_order_relaxed), buf, len);
  errno = saved_errno;
}

}  // namespace doorway::runtime

// doorway's own diagnostics: off unless DOORWAY_LOG asks, written with raw
// write(2) system calls (never through the interposed write), one whole line
// per system call so that lines never interleave mid-line with the program's
// output. Usable before initialisation and from signal handlers (the
// formatting uses a stack buffer; nothing is allocated for the formats used).
#ifndef DOORWAY_RUNTIME_LOG_H_
#define DOORWAY_RUNTIME_LOG_H_

#include <atomic>

namespace doorway::runtime {

enum class LogLevel : int { kOff = 0, kError = 1, kWarn = 2, kInfo = 3, kDebug = 4 };

// Level and destination; set by the runtime's initialisation from config.
extern std::atomic<int> g_log_level;
extern std::atomic<int> g_log_fd;

inline bool LogEnabled(LogLevel level) {
  return static_cast<int>(level) <= g_log_level.load(std::memory_order_relaxed);
}

// Writes "doorway[pid]: <message>\n" unconditionally (DOORWAY_LOG checks the
// level first; fatal paths and bad settings call this directly). errno is
// preserved.
void RawLog(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

}  // namespace doorway::runtime

#define DOORWAY_LOG(level, ...)                                                     \
  do {                                                                              \
    if (::doorway::runtime::LogEnabled(::doorway::runtime::LogLevel::level)) {      \
      ::doorway::runtime::RawLog(::doorway::runtime::LogLevel::level, __VA_ARGS__); \
    }                                                                               \
  } while (0)

#endif  // DOORWAY_RUNTIME_LOG_H_

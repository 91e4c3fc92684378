// Small helpers shared by the benchmark programs (plain POSIX, nothing of
// doorway's: the programs must run unchanged with and without it).
#ifndef DOORWAY_TOOLS_BENCH_IO_UTIL_H_
#define DOORWAY_TOOLS_BENCH_IO_UTIL_H_

#include <time.h>
#include <unistd.h>

#include <cstddef>

namespace doorway::bench {

// read/write until n bytes moved; false on EOF or error.
inline bool ReadFull(int fd, char* buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

inline bool WriteFull(int fd, const char* buf, size_t n) {
  size_t put = 0;
  while (put < n) {
    ssize_t r = write(fd, buf + put, n - put);
    if (r <= 0) return false;
    put += static_cast<size_t>(r);
  }
  return true;
}

inline long NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

// CPU time of the whole process (all threads) so far.
inline long CpuNs() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

}  // namespace doorway::bench

#endif  // DOORWAY_TOOLS_BENCH_IO_UTIL_H_

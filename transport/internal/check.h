// Always-on invariant checks for transport/ (CONVENTIONS.md "Errors and
// checks"): a failed check writes one line to stderr with a raw syscall (no
// stdio, no malloc, async-signal-safe) and aborts. Used only for *our own*
// invariants (a caller passing an impossible argument, a local bookkeeping
// error); anything read from shared memory is validated and turned into an
// error code instead, never into a crash.
#pragma once

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace doorway::transport::internal {

[[noreturn]] inline void CheckFailed(const char* file, int line, const char* cond) {
  const char* parts[] = {
      "doorway transport: check failed at ", file, ":", nullptr, ": ", cond, "\n"};
  char num[16];
  int n = 0;
  char rev[16];
  unsigned v = static_cast<unsigned>(line);
  do {
    rev[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0 && n < 15);
  for (int i = 0; i < n; ++i) num[i] = rev[n - 1 - i];
  num[n] = '\0';
  parts[3] = num;
  for (const char* p : parts) syscall(SYS_write, 2, p, std::strlen(p));
  std::abort();
}

}  // namespace doorway::transport::internal

#define DOORWAY_CHECK(cond)                                                   \
  do {                                                                        \
    if (__builtin_expect(!(cond), 0))                                         \
      ::doorway::transport::internal::CheckFailed(__FILE__, __LINE__, #cond); \
  } while (0)
